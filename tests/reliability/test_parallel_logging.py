"""Parallel logging into one MLflow sqlite store: concurrent writers lose and duplicate nothing,
and "database is locked" is retried with backoff, logged, and bounded (mosaic.infra.tracking.retry)."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from mosaic.infra.tracking import store as ms
from mosaic.infra.tracking import retry
from mosaic.infra.tracking.run import CREATE_TAG, RunLogger

N_PROC, STEPS, FLUSH_EVERY = 8, 100, 10  # the trainer's default tracking.log_every is 10


def expected(i: int) -> dict:
    return {"params": {"worker": str(i), "lr": str((i + 1) / 1000), "name": f"run-{i}"},
            "loss": [(s, i + s / 1000) for s in range(STEPS)],
            "eval": {f"m{j:03d}": i * 1000 + j + 0.25 for j in range(STEPS)},
            "artifact": f"worker {i}\n"}


def log_one(i: int, root: str, barrier=None) -> int:
    """What one job does: a training run through RunLogger, an evaluation record through log_record, and the
    training's copy into a study experiment through copy_run, all into the store under `root`. Returns the
    number of retries it logged."""
    retries = []
    handler = logging.Handler()
    handler.emit = retries.append
    logging.getLogger("mosaic.infra.tracking.retry").addHandler(handler)
    exp, uri, out = expected(i), ms.store_uri(root), Path(root) / f"job{i}"
    out.mkdir()
    (out / "artifact.txt").write_text(exp["artifact"])
    if barrier is not None:
        barrier.wait(timeout=300)  # all start writing together, after their imports
    run = RunLogger(uri, "parallel", out)
    run.start(f"w{i}", {"worker": i, "lr": (i + 1) / 1000, "name": f"run-{i}"}, {"worker": str(i)}, 0)
    for step, loss in exp["loss"]:
        run.log_metrics({"loss": loss}, step)
        if (step + 1) % FLUSH_EVERY == 0:
            run.flush()
    run.log_artifact(out / "artifact.txt")
    run.end("FINISHED")
    ms.log_record(uri, "eval", f"eval:{i}", f"e{i}", {"metrics": exp["eval"], "params": {"worker": i},
                                                      "artifacts": ["artifact.txt"]}, out, {"worker": str(i)})
    ms.copy_run(uri, run.run_id, uri, "training", f"train:{i}", {"worker": str(i)})
    return len(retries)


def _job(i: int, root: str, barrier, results) -> None:  # a spawned process
    try:
        results.put((i, log_one(i, root, barrier), None))
    except BaseException as e:  # reported to the test, which fails with it
        results.put((i, None, f"{type(e).__name__}: {e}"))


def run_jobs(root: Path, env: dict[str, str]) -> list[tuple[int, int | None, str | None]]:
    """N_PROC spawned processes log into the store under `root` at once; (job, retries, error) per job."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROC), ctx.Queue()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned processes
    try:
        procs = [ctx.Process(target=_job, args=(i, str(root), barrier, results)) for i in range(N_PROC)]
        for p in procs:
            p.start()
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    out = sorted(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return out


def check_store(root: Path) -> None:
    """Every job's runs, params, metric steps and artifacts are in the store, each exactly once."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(ms.store_uri(root))

    def runs(experiment: str) -> dict[int, object]:
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        found = client.search_runs([exp_id], max_results=1000)
        assert sorted(r.data.tags.get("worker", "none") for r in found) == [str(i) for i in range(N_PROC)], experiment
        return {int(r.data.tags["worker"]): r for r in found}

    def artifact(run) -> str:
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["artifact.txt"]
        return Path(client.download_artifacts(run.info.run_id, "artifact.txt", str(root / "dl" / run.info.run_id))
                    ).read_text()

    for experiment in ("parallel", "training"):  # the training runs and their copies in a study
        for i, run in runs(experiment).items():
            exp = expected(i)
            assert run.info.status == "FINISHED"
            assert {k: v for k, v in run.data.params.items() if k in exp["params"]} == exp["params"]
            history = client.get_metric_history(run.info.run_id, "loss")
            assert sorted((m.step, m.value) for m in history) == exp["loss"]  # 100 steps, none twice
            assert artifact(run) == exp["artifact"]
            assert (CREATE_TAG in run.data.tags) == (experiment == "parallel")  # not copied into the study
    for i, run in runs("eval").items():
        exp = expected(i)
        assert run.data.metrics == exp["eval"] and run.data.params == {"worker": str(i)}
        assert artifact(run) == exp["artifact"]
    assert len(client.search_runs([client.get_experiment_by_name("parallel").experiment_id],
                                  run_view_type=ViewType.ALL)) == N_PROC  # no duplicate run, not even a deleted one


# Short sqlite waits make the jobs collide on the lock often, so retried writes are exercised for real.
STRESS = {"MOSAIC_SQLITE_BUSY_TIMEOUT_S": "0.01", "MOSAIC_MLFLOW_ATTEMPTS": "60",
          "MOSAIC_MLFLOW_BACKOFF_S": "0.02", "MOSAIC_MLFLOW_BACKOFF_MAX_S": "0.5"}


@pytest.mark.slow
def test_eight_processes_log_every_run_and_value_into_one_store(tmp_path):
    ms.ensure_store(tmp_path, ["eval", "training"])
    results = run_jobs(tmp_path, STRESS)
    assert [err for _, _, err in results if err] == []
    print(f"retries logged by the {N_PROC} jobs: {sum(n for _, n, _ in results)}")
    check_store(tmp_path)


# ---- a lock held by another connection ----------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    ms.ensure_store(root, ["eval", "training"])
    return root


def hold_lock(db: Path, seconds: float | None):
    """Another connection takes `BEGIN EXCLUSIVE` on `db` (no one may read or write) for `seconds`, or until
    the returned event is set; returns (thread, release event) once the lock is held."""
    held, release = threading.Event(), threading.Event()

    def hold():
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        held.set()
        release.wait(seconds)
        con.execute("ROLLBACK")
        con.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(30)
    return thread, release


def settings(monkeypatch, attempts: int, busy: float, backoff: float, backoff_max: float) -> None:
    for name, value in (("ATTEMPTS", attempts), ("BACKOFF_S", backoff), ("BACKOFF_MAX_S", backoff_max)):
        monkeypatch.setenv(f"MOSAIC_MLFLOW_{name}", str(value))
    monkeypatch.setenv("MOSAIC_SQLITE_BUSY_TIMEOUT_S", str(busy))


def started(store: Path, name: str) -> RunLogger:
    run = RunLogger(ms.store_uri(store), "locks", store / name)
    (store / name).mkdir()
    run.start(name, {"p": 1}, {}, 0)
    return run


def retry_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mosaic.infra.tracking.retry" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("path", ["RunLogger", "log_record"])
def test_a_write_waits_out_a_lock_of_1_5_s_with_logged_retries(store, path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="mosaic.infra.tracking.retry")
    settings(monkeypatch, attempts=30, busy=0.1, backoff=0.1, backoff_max=0.4)  # a budget of about 10 s
    run = started(store, f"wait-{path}")
    run.log_metrics({"loss": 0.5}, 1)
    thread, _ = hold_lock(store / ms.DB_NAME, 1.5)
    if path == "RunLogger":
        run.flush()
        assert [(m.step, m.value) for m in run.client.get_metric_history(run.run_id, "loss")] == [(1, 0.5)]
    else:
        rid = ms.log_record(ms.store_uri(store), "eval", "eval:wait", "wait", {"metrics": {"m": 2.0}}, store)
        assert run.client.get_run(rid).data.metrics == {"m": 2.0}
    thread.join()
    warnings = retry_warnings(caplog)
    assert warnings, "the write did not meet the lock"
    what = "log_batch" if path == "RunLogger" else "get_experiment_by_name"  # the first call that meets the lock
    assert f"MLflow store {store / ms.DB_NAME}: {what}: database is locked (attempt 1 of 30); retrying in" \
        in warnings[0]


@pytest.mark.parametrize("path", ["RunLogger", "log_record"])
def test_a_lock_past_the_retry_budget_fails_clearly_after_exactly_the_set_attempts(store, path, monkeypatch,
                                                                                    caplog):
    caplog.set_level(logging.WARNING, logger="mosaic.infra.tracking.retry")
    settings(monkeypatch, attempts=3, busy=0.05, backoff=0.01, backoff_max=0.02)
    run = started(store, f"budget-{path}")
    calls, what = [], "log_batch" if path == "RunLogger" else "get_experiment_by_name"  # meets the lock first
    real = getattr(run.client, what)
    monkeypatch.setattr(type(run.client), what, lambda self, *a, **k: (calls.append(1), real(*a, **k))[1])
    run.log_metrics({"loss": 0.5}, 1)
    thread, release = hold_lock(store / ms.DB_NAME, None)
    try:
        with pytest.raises(retry.StoreLockedError) as err:
            if path == "RunLogger":
                run.flush()
            else:
                ms.log_record(ms.store_uri(store), "eval", "eval:budget", "budget", {"metrics": {"m": 1.0}}, store)
    finally:
        release.set()
        thread.join()
    assert len(calls) == 3 and len(retry_warnings(caplog)) == 2
    assert str(err.value).startswith(f"{store / ms.DB_NAME}: MLflow {what} failed after 3 attempts over ")
    assert "MOSAIC_MLFLOW_ATTEMPTS" in str(err.value)
    assert retry.is_locked(err.value.__cause__)
    if path == "RunLogger":  # the buffered metrics were kept: the next flush writes them
        run.flush()
        assert [(m.step, m.value) for m in run.client.get_metric_history(run.run_id, "loss")] == [(1, 0.5)]


# ---- retried writes that had committed before their error -------------------------------------------

def locked_after_commit(monkeypatch, client, method: str) -> None:
    """client.<method> writes, then fails once with "database is locked" (as if the commit's answer was lost)."""
    from mlflow.exceptions import MlflowException

    real, failed = getattr(client, method), []

    def flaky(self, *args, **kwargs):
        out = real(*args, **kwargs)
        if not failed:
            failed.append(True)
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return out

    monkeypatch.setattr(type(client), method, flaky)


def test_a_retried_create_run_leaves_one_run(store, monkeypatch):
    from mlflow.entities import ViewType

    monkeypatch.setenv("MOSAIC_MLFLOW_BACKOFF_S", "0")
    run = RunLogger(ms.store_uri(store), "dup", store / "dup")
    (store / "dup").mkdir()
    locked_after_commit(monkeypatch, run.client, "create_run")
    run.start("dup", {"p": 1}, {}, 0)
    found = run.client.search_runs([run._experiment_id()], run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in found] == [run.run_id]
    assert (store / "dup" / "mlflow_run_id").read_text() == run.run_id


def test_a_retried_log_record_leaves_one_active_run_under_its_key(store, monkeypatch):
    monkeypatch.setenv("MOSAIC_MLFLOW_BACKOFF_S", "0")
    client = retry.client(ms.store_uri(store))
    locked_after_commit(monkeypatch, client, "create_run")
    rid = ms.log_record(ms.store_uri(store), "eval", "eval:dup", "dup", {"metrics": {"m": 1.0}}, store)
    exp_id = client.get_experiment_by_name("eval").experiment_id
    assert [r.info.run_id for r in client.search_runs([exp_id], "tags.wf_key = 'eval:dup'")] == [rid]


def test_a_retried_log_batch_writes_each_metric_once(store, monkeypatch):
    monkeypatch.setenv("MOSAIC_MLFLOW_BACKOFF_S", "0")
    run = started(store, "batch")
    locked_after_commit(monkeypatch, run.client, "log_batch")
    for step in range(STEPS):
        run.log_metrics({"loss": step / 10}, step)
    run.flush()
    history = run.client.get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, s / 10) for s in range(STEPS)]


def test_other_errors_are_not_retried_and_bad_settings_name_the_variable(store, monkeypatch, caplog):
    from mlflow.exceptions import MlflowException

    client, calls = retry.client(ms.store_uri(store)), []

    def get_missing_run():
        calls.append(1)
        return client.get_run("0" * 32)

    with pytest.raises(MlflowException, match="not found"):
        retry.call(ms.store_uri(store), "get_run", get_missing_run)
    assert calls == [1] and not retry_warnings(caplog)
    monkeypatch.setenv("MOSAIC_MLFLOW_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="MOSAIC_MLFLOW_ATTEMPTS='0': expected an integer >= 1"):
        retry.call("sqlite:///x.db", "x", lambda: None)
