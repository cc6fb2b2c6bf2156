"""Running the Snakemake workflow in tests: the micro config (the tiny profile shrunk to seconds per
job, two loss variants x two seeds) in a temporary working directory."""
import copy
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "workflow" / "config" / "tiny.yaml").read_text())
METRICS = ["CLIP-I", "CLIP-T", "DINO", "Own-Ref", "Other-Ref", "Shape-Acc"]  # the micro DAG's held-out metrics


def micro_config() -> dict:
    c = copy.deepcopy(TINY)
    c["benchmarks"] = str(ROOT.parent / "shared" / "benchmarks")
    c["retrain"] = True  # the micro base and evaluators are trained in the DAG, not the shipped ones
    c["data"].update(train={"n": 24, "k_min": 1, "k_max": 2}, base={"n": 24, "k_min": 1, "k_max": 2}, val={"n": 4, "k_min": 2, "k_max": 2}, test={"n": 2},
                     preview={"n": 2})
    c["training"]["base"] = {"train.steps": 8, "train.drop_text": 0.1}
    c["training"]["lora"].update({"train.steps": 6, "eval.max_samples": 2, "eval.timesteps": [0.5]})
    c["methods"] = {k: c["methods"][k] for k in ("none", "mosaic", "ceiling", "base", "floor")}
    c["evalsets"] = {"heldout": {"k": [2], "seeds": [0], "steps": 2, "metrics": METRICS}}
    c["metrics"] = {"evaluators": {"clip_steps": 4, "dino_steps": 2, "shape_steps": 4, "n_train": 12, "seed": 0},
                    "config": {}}
    c["studies"] = {"ablation": {"methods": ["ceiling", "base", "none", "mosaic", "floor"], "ktrain": [2],
                                 "seeds": [0, 1], "evalsets": ["heldout-k2"]}}
    return c


def micro_run_counts(cfg: dict | None = None) -> tuple[int, int]:
    """(evaluation runs, trainings) the ablation study of `cfg` (default: the micro config) logs: one training
    per trained method x ktrain x seed, evaluated on each of the study's sets, and one evaluation per untrained
    method (a bound or an official release, as workflow/lib/plan.py's `Plan.untrained`) and set. Derived here
    once, so a new bound or seed changes every test's count."""
    cfg = cfg or micro_config()
    study = cfg["studies"]["ablation"]
    untrained = [m for m in study["methods"] if any(cfg["methods"][m].get(k) for k in ("bound", "official"))]
    trains = (len(study["methods"]) - len(untrained)) * len(study["ktrain"]) * len(study["seeds"])
    return (trains + len(untrained)) * len(study["evalsets"]), trains


def snakemake_cmd(workdir: Path, config: Path, *args) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--configfile", str(config), "--cores", "2", "--workflow-profile", "none", *args]


def snakemake(workdir: Path, config: Path, *args, check=True, env=None):
    p = subprocess.run(snakemake_cmd(workdir, config, *args), capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        logs = "\n".join(f"== {f}\n{f.read_text()[-1500:]}" for f in (workdir / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stderr[-4000:]}\n{logs[-6000:]}")
    return p.stdout + p.stderr


def write_config(folder: Path, cfg: dict, name: str = "micro.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_same_ablation_tables(a: Path, b: Path) -> None:
    """The ablation table of two finished runs (their results folders) is the same in every form: the readable
    CSV, the tidy CSV (run ids aside), the Markdown and the LaTeX."""
    import pandas as pd

    from workflow.lib.tables import RUN_IDS  # the tidy table's MLflow ids: different by construction

    pd.testing.assert_frame_equal(pd.read_csv(a / "ablation.csv"), pd.read_csv(b / "ablation.csv"), check_exact=True)
    tidy = [pd.read_csv(r / "tables" / "ablation_tidy.csv").drop(columns=RUN_IDS) for r in (a, b)]
    pd.testing.assert_frame_equal(*tidy, check_exact=True)
    for name in ("ablation.md", "ablation.tex"):
        assert (a / "tables" / name).read_text() == (b / "tables" / name).read_text(), name
