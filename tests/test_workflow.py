"""The Snakemake workflow without running jobs: dry-run DAGs of both profiles, lint, config schema, profiles."""
import copy
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
TINY = yaml.safe_load((ROOT / "workflow" / "config" / "tiny.yaml").read_text())
PAPER = yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text())


def snakemake(*args, cwd=ROOT, check=True):
    """Snakemake on the project's Snakefile in a fresh, empty working directory (`-d`) unless the test names
    one, so a dry run plans from scratch whatever the checkout's results/ or .snakemake/ hold (issue 25)."""
    with tempfile.TemporaryDirectory() as fresh:
        workdir = [] if "-d" in args else ["-d", fresh]
        p = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *workdir, *args],
                           cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def job_stats(out: str) -> Counter:
    """The 'Job stats' table of a dry run -> rule -> count."""
    block = out.split("Job stats:")[1].split("\n\n")[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", block, re.M) if m[1] != "total"})


def expected_trainings(cfg) -> int:
    """Distinct (method, ktrain, seed) over the studies; a sweep cell equal to a plain method is that method."""
    plain = {(m["overrides"]["loss.alpha"], m["overrides"]["loss.beta"]): name for name, m in cfg["methods"].items()
             if not m.get("baseline") and set(m.get("overrides", {})) == {"loss.alpha", "loss.beta"}}
    runs = set()
    for name, s in cfg["studies"].items():
        if name == "sweep":
            cells = [plain.get((a, b), (a, b)) for a in s["alpha"] for b in s["beta"]]
        else:
            cells = [m for m in s["methods"] if not (cfg["methods"][m].get("official") or cfg["methods"][m].get("bound"))]
        runs |= {(c, k, seed) for c in cells for k in s["ktrain"] for seed in s["seeds"]}
    return len(runs)


def test_tiny_dry_run_builds_every_study():
    p = snakemake("-n", "--cores", "2", "--workflow-profile", "none", "-p")
    stats = job_stats(p.stdout)
    assert stats["train"] == expected_trainings(TINY)
    # the shipped base and evaluators (artefacts/tiny-places) are used, not trained
    assert "train_base" not in stats and "tiny_evaluators" not in stats and "ship" not in stats
    assert f'model.weights={ROOT / TINY["artefacts"] / "base"}' in p.stdout.replace('"', "").replace("'", "")
    assert f"--base {ROOT / TINY['artefacts'] / 'evaluators'}/metrics_config.json" in p.stdout
    bound_jobs = stats["sample_bound"] + stats["sample_base_bound"]
    assert stats["sample"] + bound_jobs == stats["evaluate"] > 0  # the bounds are scored too
    bounds = {(m, e) for s in TINY["studies"].values() for m in s.get("methods", []) if TINY["methods"][m].get("bound")
              for e in s["evalsets"]}
    assert bound_jobs == len(bounds) > 0  # once per (bound, evaluation set), whichever studies share it
    assert stats["sample_base_bound"] == len({e for m, e in bounds if TINY["methods"][m]["bound"] == "base"}) > 0
    assert f"--run {ROOT / TINY['artefacts']} --no-references" in p.stdout  # the shipped base, prompt alone
    assert {f"tables_{s}" for s in TINY["studies"]} <= set(stats)
    assert stats["gallery"] == 1  # the comparison gallery of every study (default target)
    # one (study, training) log job each: the studies' grids, trainings counted once per study
    bound = lambda m: bool(TINY["methods"][m].get("bound"))  # noqa: E731  logged once per study, not per seed
    per_study = sum(sum(1 if bound(m) else len(s["ktrain"]) * len(s["seeds"]) for m in s["methods"]) if n != "sweep"
                    else len(s["alpha"]) * len(s["beta"]) * len(s["ktrain"]) * len(s["seeds"])
                    for n, s in TINY["studies"].items())
    assert stats["mlflow_log"] == per_study


def test_retrain_switch_trains_the_base_and_evaluators_in_the_dag():
    stats = job_stats(snakemake("-n", "--cores", "2", "--workflow-profile", "none", "--config", "retrain=True").stdout)
    assert stats["train_base"] == 1 and stats["tiny_evaluators"] == 1 and stats["train"] == expected_trainings(TINY)
    stats = job_stats(snakemake("-n", "--cores", "2", "--workflow-profile", "none", "ship", "--config",
                                "retrain=True", "--forcerun", "ship").stdout)
    assert stats["ship"] == 1 and stats["train_base"] == 1 and "train" not in stats  # the shipping command


def test_missing_shipped_artefacts_are_named_with_the_command_that_makes_them(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["artefacts"] = "artefacts/none"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake("-n", "--configfile", str(tmp_path / "c.yaml"), check=False)
    assert p.returncode != 0
    assert f"{ROOT / 'artefacts/none/provenance.json'} not found" in p.stdout + p.stderr
    assert "snakemake --cores all ship --config retrain=True" in p.stdout + p.stderr


def test_dry_run_writes_nothing(tmp_path):
    """Parsing and planning have no side effects: the MLflow store and its generation id are written in
    `onstart`, which a dry run never reaches."""
    snakemake("-n", "--cores", "2", "--workflow-profile", "none", "-d", str(tmp_path))
    assert not (tmp_path / "results").exists()


def test_paper_dry_run_builds_the_full_dag_without_weights():
    assert not Path(PAPER["training"]["common"]["model.weights"]).exists()  # the dry run must not need them
    p = snakemake("-n", "--cores", "2", "--configfile", str(ROOT / "workflow" / "config" / "paper.yaml"), "-p")
    stats = job_stats(p.stdout)
    assert stats["train"] == expected_trainings(PAPER)
    assert "train_base" not in stats and "tiny_evaluators" not in stats  # FLUX.1-dev and published metrics
    official = [m for m, v in PAPER["methods"].items() if v.get("official")]
    for m in official:
        assert stats[f"sample_official_{m.replace('-', '_')}"] == 4  # the four benchmark evaluation sets
    assert stats["subjects200k_part"] == 3 and stats["collage_split"] > 0
    assert "--profile paper" in p.stdout  # the paper metrics config, not the tiny-world evaluators
    # every paper metric is planned: DPG and AES on XVerseBench, UnifiedReward on DreamBench in the main env,
    # HPSv3 by its own rule in its own env, merged into the DreamBench evaluations
    names = [m[1].split(",") for m in re.finditer(r"--metric-names (\S+)", p.stdout)]
    assert any({"DPG", "ID-Sim", "IP-Sim", "AES"} <= set(n) for n in names)
    assert any("UnifiedReward" in n for n in names) and not any("HPSv3" in n for n in names)
    dreambench = sum(1 for m in re.finditer(r"--evalset dreambench-\S+", p.stdout))
    assert stats["evaluate_hpsv3"] > 0 and p.stdout.count(f"--extra-table {PAPER['results']}/evals_env/HPSv3/") == dreambench
    assert "python -m metrics.hps_job" in p.stdout


def planned_paths(out: str) -> set[str]:
    """Every output, log and benchmark path of the jobs a dry run lists."""
    lines = re.findall(r"^    (?:output|log|benchmark): (.*)$", out, re.M)
    return {p.strip() for line in lines for p in line.split(",")}


def test_profiles_never_share_outputs(tmp_path):
    """The paper profile writes under its own folder, so running it where a tiny run lives plans no
    tiny job: no path of one DAG is, or lies inside, a path of the other."""
    assert TINY["results"] == "results" and PAPER["results"] != TINY["results"]
    tiny = planned_paths(snakemake("-n", "--cores", "2", "--workflow-profile", "none", "-d", str(tmp_path)).stdout)
    paper = planned_paths(snakemake("-n", "--cores", "2", "--configfile", str(ROOT / "workflow" / "config" / "paper.yaml")).stdout)
    assert "results/ablation.csv" in tiny and f"{PAPER['results']}/ablation.csv" in paper
    roots = {"tiny": {Path(p).parts[0] for p in tiny}, "paper": {Path(p).parts[0] for p in paper}}
    assert roots == {"tiny": {TINY["results"]}, "paper": {PAPER["results"]}}  # neither root inside the other


def test_lint_is_clean_for_both_profiles():
    for extra in ([], ["--configfile", str(ROOT / "workflow" / "config" / "paper.yaml")]):
        p = snakemake("--lint", *extra)
        out = p.stdout + p.stderr
        assert "Congratulations, your workflow is in a good condition!" in out, out[-3000:]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["studies"]["ablation"].update(seed=[0]), "'seed' was unexpected"),
    (lambda c: c.update(profil="tiny"), "'profil' was unexpected"),
    (lambda c: c["methods"]["scal"].update(overides={"loss.alpha": 0.4}), "'overides' was unexpected"),
    (lambda c: c["training"]["lora"].update({"trian.steps": 3}), "trian.steps"),
    (lambda c: c["evalsets"]["heldout"].update(metrics=["CLIP-X"]), "CLIP-X"),
    (lambda c: c["data"].update(kind="subjects200k"), "'subjects200k' is a required property"),
])
def test_schema_rejects_typos_with_the_key_named(mutate, message):
    validate(copy.deepcopy(TINY), SCHEMA)  # the shipped configs are valid
    validate(copy.deepcopy(PAPER), SCHEMA)
    bad = copy.deepcopy(TINY)
    mutate(bad)
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validate(bad, SCHEMA)


def test_snakefile_validates_the_config(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["studies"]["ablation"]["seed"] = bad["studies"]["ablation"].pop("seeds")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    p = snakemake("-n", "--configfile", str(cfg), check=False)
    assert p.returncode != 0
    assert "'seed' was unexpected" in p.stdout + p.stderr


def test_unknown_evaluation_set_is_named(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["studies"]["ablation"]["evalsets"] = ["heldout-k9"]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    p = snakemake("-n", "--configfile", str(cfg), check=False)
    assert p.returncode != 0 and "studies.ablation.evalsets: unknown evaluation set 'heldout-k9'" in p.stdout + p.stderr


def test_slurm_profile_gives_gpus_and_a_multi_gpu_launch(tmp_path):
    prof = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    res = prof["set-resources"]
    assert res["train"]["gpu"] > 1 and res["sample"]["gpu"] == 1 and res["evaluate"]["gpu"] == 1
    # everything but the plugin-specific keys, as a local dry run: the rule names and resources must resolve
    local = {k: v for k, v in prof.items() if k not in ("executor", "software-deployment-method", "jobs")}
    local["configfile"] = str(ROOT / local["configfile"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(local))
    p = snakemake("-n", "-p", "--cores", "8", "--workflow-profile", str(tmp_path))
    rules = set(job_stats(p.stdout))
    assert set(res) <= rules | {"train_base"}
    launch = f"-m torch.distributed.run --standalone --nproc_per_node {res['train']['gpu']}"
    train_cmds = [line for line in p.stdout.splitlines() if "workflow/scripts/train.py" in line]
    assert train_cmds and all(launch in line for line in train_cmds)


def test_default_profile_and_envs_parse():
    prof = yaml.safe_load((ROOT / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert prof["cores"] == "all"
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "mosaic.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = re.search(r"dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S)[1]
    assert pip == re.findall(r'"([^"]+)"', project)  # the rules' environment = the project's dependencies
