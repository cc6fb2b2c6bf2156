"""Session fixtures shared across test folders."""
import pytest

from tests.workflow_helpers import ROOT, micro_config, snakemake, write_config

# What the README's main command leaves in the checkout; no test may read or write it (issue 25).
CHECKOUT_STATE = ("results", "results-paper", ".snakemake")


def checkout_state(root=ROOT) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under the checkout's run folders, by path."""
    out = {}
    for name in CHECKOUT_STATE:
        for f in sorted((root / name).rglob("*")) if (root / name).exists() else []:
            if f.is_file() and not f.is_symlink():
                st = f.stat()
                out[str(f.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session", autouse=True)
def checkout_left_as_found():
    """The test session leaves the checkout's results/, results-paper/ and .snakemake/ as it found them, so
    the README's main command and its test command can run in either order in one checkout."""
    before = checkout_state()
    yield
    after = checkout_state()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the tests changed the checkout's run folders ({len(changed)} files): {changed[:10]}"


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """(workdir, config path) of one finished `results/ablation.csv` run on the micro config, shared by
    the modules that inspect a finished DAG (test_workflow_run, reliability/test_determinism)."""
    work = tmp_path_factory.mktemp("wf")
    cfg = write_config(work, micro_config())
    snakemake(work, cfg, "results/ablation.csv")
    return work, cfg
