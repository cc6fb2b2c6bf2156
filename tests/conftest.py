"""Session fixtures shared across test folders."""
import pytest

from tests.workflow_helpers import micro_config, snakemake, write_config


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """(workdir, config path) of one finished `results/ablation.csv` run on the micro config, shared by
    the modules that inspect a finished DAG (test_workflow_run, reliability/test_determinism)."""
    work = tmp_path_factory.mktemp("wf")
    cfg = write_config(work, micro_config())
    snakemake(work, cfg, "results/ablation.csv")
    return work, cfg
