"""The tiny DAG run end to end on a micro config: tables match the MLflow runs they came from; reruns.

One run of the micro config (tests/workflow_helpers.py: two loss variants x two seeds, a few steps
each), then checks on its products and dry-run checks of the rerun rules: nothing changed ->
nothing to do; one variant's row changed -> only that variant's jobs and the table; the MLflow
store deleted -> only the logging jobs and the table, which rebuild it.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mosaic.infra.tracking.store import store_uri
from tests.workflow_helpers import ROOT, micro_config, micro_run_counts, snakemake, write_config
from workflow.lib import tables

pytestmark = pytest.mark.slow


def planned(out: str) -> list[tuple[str, str]]:
    """(rule, output) of every job of a dry run."""
    return re.findall(r"^rule (\S+):\n(?:.*\n)*?    output: (.*)$", out, re.M)


@pytest.fixture(scope="module")
def run(micro_run):
    return micro_run


def test_ablation_rows_match_the_mlflow_runs(run):
    work, _ = run
    table = pd.read_csv(work / "results" / "ablation.csv")  # the readable table
    tidy = pd.read_csv(work / "results" / "tables" / "ablation_tidy.csv", dtype={"seed": "string"})
    assert list(table["method"]) == ["ceiling", "base", "none", "mosaic", "floor"]  # the bounds frame the variants
    assert not [c for c in table.columns if c.endswith((" mean", " std", " se", " cells", " protocol", "_run_ids"))]
    assert {"leakage at chance (%)", "subject leakage at chance (%)", "notes", "label"} <= set(table.columns)
    uri = store_uri(work / "results" / "mlflow")
    evals = tables.load_runs(uri, "ablation").set_index("run_id")
    trains = tables.load_runs(uri, "ablation", kind="train").set_index("run_id")
    assert (len(evals), len(trains)) == micro_run_counts() == (7, 4)  # 2 variants x 2 seeds + the 3 bounds
    # the tidy table: one row per evaluation run x metric, each value the run's own
    assert set(tidy["eval_run_id"]) == set(evals.index) and not tidy.duplicated(["eval_run_id", "metric"]).any()
    assert tidy.groupby("eval_run_id").size().eq(11).all()  # 6 image + 5 mechanism metrics (with the chances)
    for r in tidy.itertuples():
        assert r.value == pytest.approx(evals.loc[r.eval_run_id, f"metrics.{r.key}"], nan_ok=True), r
        assert r.method == evals.loc[r.eval_run_id, "tags.method"]
    bounds = tidy[tidy["method"].isin(["ceiling", "base", "floor"])]
    assert bounds["train_run_id"].isna().all()
    assert (table.set_index("method").loc[["ceiling", "base", "floor"], "runs"] == 1).all()
    # the per-subject scores: the real targets carry their own references' colours, the empty backgrounds none
    own = tidy[tidy["metric"].str.startswith("Own-Ref")].set_index("method")["value"]
    assert own["ceiling"] > 80 and own["floor"] == 0
    md = (work / "results" / "tables" / "ablation.md").read_text()
    tex = (work / "results" / "tables" / "ablation.tex").read_text()
    for _, row in table[~table["method"].isin(["ceiling", "base", "floor"])].iterrows():
        mine = tidy[tidy["method"] == row["method"]]
        runs = evals.loc[mine["eval_run_id"].unique()]
        assert (runs["tags.method"] == row["method"]).all() and sorted(runs["tags.seed"]) == ["0", "1"]
        assert set(mine["train_run_id"]) == set(runs["tags.train_run_id"]) and set(mine["train_run_id"]) <= set(trains.index)
        for metric in ("CLIP-I (tiny-world)", "DINO (tiny-world)", "alignment acc (%)", "leakage (%)"):
            col = {"alignment acc (%)": "metrics.mech/alignment_acc", "leakage (%)": "metrics.mech/leakage"}.get(
                metric, f"metrics.img/{metric.split(' ')[0]}")
            shown = f"{runs[col].mean():.2f} ± {runs[col].std() / len(runs) ** 0.5:.2f}"  # straight from MLflow
            assert row[metric] == shown and f"| {shown} " in md and f"& {shown} " in tex, (row["method"], metric)
    # the training runs carry the trainer's per-step history, copied from the run folders
    from mlflow import MlflowClient

    tid = trains.index[0]
    assert len(MlflowClient(uri).get_metric_history(tid, "loss/diff")) == 6
    assert (work / "results" / "figures" / "attention" / "mosaic_sampled.png").is_file()


def test_rerun_with_nothing_changed_does_nothing(run):
    work, cfg = run
    out = snakemake(work, cfg, "-n", "results/ablation.csv")
    assert "Nothing to be done" in out, out[-2000:]


def test_changing_one_variant_reruns_only_its_jobs(run, tmp_path):
    work, _ = run
    changed = micro_config()
    changed["methods"]["none"]["overrides"]["train.lr"] = 0.002
    cfg = write_config(tmp_path, changed, "changed.yaml")
    jobs = planned(snakemake(work, cfg, "-n", "results/ablation.csv"))
    assert {r for r, _ in jobs} == {"train", "sample", "evaluate", "mlflow_log", "tables_ablation"}
    assert sum(r == "train" for r, _ in jobs) == 2  # its two seeds
    assert all("method~none" in out for r, out in jobs if r != "tables_ablation")


def test_paper_dry_run_beside_a_finished_tiny_run_plans_no_tiny_job(run, tmp_path):
    """The paper profile in a folder holding a finished tiny run: its jobs are all its own (under its
    results folder), none is planned for a changed param of a tiny training, and the tiny run stays done."""
    import yaml

    work, cfg = run
    paper = yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text())
    paper.update(benchmarks=str(ROOT.parent / "shared" / "benchmarks"),
                 paper_values=str(ROOT.parent / "shared" / "paper" / "mosaic_reported.csv"))
    out = snakemake(work, write_config(tmp_path, paper, "paper.yaml"), "-n")
    jobs = planned(out)
    assert len(jobs) > 100 and all(o.startswith(f"{paper['results']}/") for _, o in jobs), jobs[:5]
    assert "have changed" not in out.lower() and "results/runs/" not in out
    assert "Nothing to be done" in snakemake(work, cfg, "-n", "results/ablation.csv")


def test_deleted_store_is_rebuilt(run):
    work, cfg = run
    shutil.rmtree(work / "results" / "mlflow")
    jobs = planned(snakemake(work, cfg, "-n", "results/ablation.csv"))
    assert {r for r, _ in jobs} == {"mlflow_log", "mlflow_log_shared", "tables_ablation"}
    snakemake(work, cfg, "results/ablation.csv")
    tidy = pd.read_csv(work / "results" / "tables" / "ablation_tidy.csv")
    # a fresh process: this one's MLflow client caches a connection to the deleted database file
    uri = store_uri(work / "results" / "mlflow")
    ids = subprocess.run([sys.executable, "-c", f"from workflow.lib.tables import load_runs; "
                          f"print(' '.join(load_runs({uri!r}, 'ablation')['run_id']))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == micro_run_counts()[0] and set(tidy["eval_run_id"]) == set(ids)
