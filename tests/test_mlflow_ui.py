"""The MLflow UI on the micro DAG's store, opened as a researcher opens it (headless Chromium).

`mlflow server` on a free port serves the micro run's sqlite store; the page is driven through the clicks
docs/mlflow.md gives: "Model training" (MLflow 3.17 opens in its GenAI view otherwise; the browser remembers the
choice), then the "ablation" experiment. What a person checks there: the runs table (not the GenAI overview),
one top-level row per training plus the bounds, each training's evaluation runs nested (expandable) under it,
and durations that are the jobs' real ones, read from the Duration column. A screenshot of the expanded
table goes to $MOSAIC_SCREENSHOTS/mlflow_runs.png when that variable is set. The store itself is checked too:
the experiment kinds, the start and end times against their sources, metric names grouped by prefix.
"""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mosaic.infra.tracking.run import KIND_TAG, MODEL_TRAINING
from mosaic.infra.tracking.store import store_uri
from tests.browser_helpers import browser
from tests.workflow_helpers import micro_run_counts
from workflow.scripts.mlflow_log import PARENT_TAG

pytestmark = pytest.mark.slow

NAME_CELL, DURATION_CELL = '[col-id="attributes.`Run Name`"]', '[col-id="duration"]'
UNITS_MS = {"ms": 1, "s": 1e3, "min": 6e4, "h": 3.6e6, "d": 8.64e7}  # MLflow's formatDuration units


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(uri: str, log: Path):
    """`mlflow server` over the store at `uri` on a free local port; its URL once it answers; killed on exit."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not answer on {url}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def shown_ms(text: str) -> tuple[float, float]:
    """A Duration cell ("27ms", "1.3s", "2.5min", ...) -> (ms, half its last digit in ms)."""
    m = re.fullmatch(r"([\d.]+)(ms|s|min|h|d)", text.strip())
    assert m, f"Duration cell {text!r} is not a duration"
    unit = UNITS_MS[m[2]]
    return float(m[1]) * unit, (0.5 if m[2] == "ms" else 0.05 * unit)


@pytest.fixture(scope="module")
def study(micro_run):
    """(store uri, ablation experiment, its runs by id) of the micro run."""
    from mlflow import MlflowClient

    work, _ = micro_run
    uri = store_uri(work / "results" / "mlflow")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ablation")
    return uri, exp, {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}


def test_the_store_holds_real_times_nesting_and_grouped_metric_names(study):
    from mlflow import MlflowClient

    uri, exp, runs = study
    client = MlflowClient(uri)
    assert exp.tags[KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment_by_name("shared").tags[KIND_TAG] == MODEL_TRAINING
    kinds = {k: [r for r in runs.values() if r.data.tags["kind"] == k] for k in ("train", "eval")}
    assert (len(kinds["eval"]), len(kinds["train"])) == micro_run_counts()
    for run in kinds["train"]:  # the copy runs over the training's own time, in the run folder's store
        src = MlflowClient(run.data.tags["source_store"]).get_run(run.data.tags["source_run_id"]).info
        assert (run.info.start_time, run.info.end_time) == (src.start_time, src.end_time)
        assert run.info.end_time > run.info.start_time
    for run in kinds["eval"]:  # over the evaluation job's own time; under its training, bounds top-level
        record = json.loads((Path(run.data.tags["eval_dir"]) / "record.json").read_text())
        assert (run.info.start_time, run.info.end_time) == (record["start_time"], record["end_time"])
        assert run.info.end_time > run.info.start_time
        if run.data.tags["method"] in ("ceiling", "base", "floor"):
            assert PARENT_TAG not in run.data.tags
        else:
            assert run.data.tags[PARENT_TAG] == run.data.tags["train_run_id"]
            assert runs[run.data.tags[PARENT_TAG]].data.tags["kind"] == "train"
    ungrouped = {m for r in runs.values() for m in r.data.metrics if "/" not in m}
    assert not ungrouped, f"metrics without a group prefix: {sorted(ungrouped)}"
    groups = {m.split("/")[0] for r in runs.values() for m in r.data.metrics}
    assert {"img", "mech", "count", "loss", "train"} <= groups


def test_the_runs_table_nests_evaluations_under_trainings_with_real_durations(study, tmp_path):
    uri, exp, runs = study
    parent = {rid: r.data.tags.get(PARENT_TAG) for rid, r in runs.items()}
    top = {rid for rid, p in parent.items() if not p}
    with mlflow_server(uri, tmp_path / "server.log") as url, browser() as b:
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/")
        page.get_by_text("Model training", exact=True).first.click()  # click 1 of docs/mlflow.md's
        page.get_by_role("link", name="ablation", exact=True).first.click()  # click 2
        left = page.locator(".ag-pinned-left-cols-container .ag-row[row-id]")
        page.locator(f'.ag-row[row-id="{next(iter(top))}"]').first.wait_for()

        def visible() -> list[str]:
            """The row ids in display order (ag-grid's row-index, not the DOM's order)."""
            rows = left.evaluate_all("rows => rows.map(r => [+r.getAttribute('row-index'), r.getAttribute('row-id')])")
            return [rid for _, rid in sorted(rows)]

        # the Model training view: its runs table, not the GenAI overview (traces, token usage)
        assert page.get_by_text("matching runs").is_visible()
        assert page.locator('[data-testid="sort-header-Duration"]').is_visible()
        assert page.get_by_text("Token Usage").count() == 0
        # collapsed: the trainings and the bounds, no evaluation of a training
        assert sorted(visible()) == sorted(top)
        for rid in top:
            name = page.locator(f'.ag-pinned-left-cols-container .ag-row[row-id="{rid}"] {NAME_CELL}')
            assert name.get_by_role("link").inner_text().strip() == runs[rid].info.run_name
            expander = name.locator("button")
            children = [c for c, p in parent.items() if p == rid]
            assert expander.count() == (1 if children else 0), runs[rid].info.run_name
            if children:
                expander.click()
                page.locator(f'.ag-row[row-id="{children[0]}"]').first.wait_for()
        rows = visible()
        assert sorted(rows) == sorted(runs)
        for i, rid in enumerate(rows):  # each evaluation right below its training (or a sibling of it)
            if parent[rid]:
                above = rows[i - 1]
                assert parent[rid] in (above, parent[above]), f"{runs[rid].info.run_name} is not under its training"
        for rid in rows:  # durations as the table shows them: the runs' real ones, never the logging time
            cell = page.locator(f'.ag-center-cols-container .ag-row[row-id="{rid}"] {DURATION_CELL}')
            ms, tol = shown_ms(cell.inner_text())
            real = runs[rid].info.end_time - runs[rid].info.start_time
            assert ms > 0 and abs(ms - real) <= tol, (runs[rid].info.run_name, cell.inner_text(), real)
        if os.environ.get("MOSAIC_SCREENSHOTS"):
            close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if close.count():  # the assistant panel hides the table's right-hand columns
                close.first.click()
            page.evaluate("document.activeElement && document.activeElement.blur()")
            shots = Path(os.environ["MOSAIC_SCREENSHOTS"])
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "mlflow_runs.png"))
        # docs/mlflow.md's direct link opens the same view in a browser that never chose it
        fresh = b.new_page(viewport={"width": 1600, "height": 1000})
        fresh.goto(f"{url}/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
        fresh.locator(f'.ag-row[row-id="{next(iter(top))}"]').first.wait_for(timeout=60_000)
        assert fresh.get_by_text("Token Usage").count() == 0
