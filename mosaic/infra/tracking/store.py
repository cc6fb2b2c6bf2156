"""The workflow's MLflow store: created once, then filled by (re)logging finished runs into it.

Why it exists: parallel jobs racing on a fresh sqlite store's schema migration break it, so the
store (sqlite + artifacts under one folder) and its experiments are created once, before any
job (`ensure_store`, the Snakefile's `onstart`), as model-training experiments (MLflow 3's
experiment kind, mosaic.infra.tracking.run.mark_model_training). Jobs then only add runs. A training logs
into its own run folder's store (it keeps its per-step metrics there); `copy_run` copies that run
(params, tags, every metric's full history, artifacts, its start and end times) into a study's
experiment, and `log_record` logs an evaluation record (over the evaluation's own start and end times
when the record has them; the caller's tags nest it under its training run). Both are idempotent
through the `wf_key` tag: logging a key again first deletes the runs logged under it before, so a
rerun never duplicates runs and a deleted store is rebuilt by logging again from the run folders. The
workflow names each store by a generation id (file `generation`, renewed when the store is missing)
and passes it to every job that logs into the store, so those jobs rerun when the store is new
(`check_generation`). Every store call is retried while another job holds the sqlite lock
(mosaic.infra.tracking.retry); `_replace` (delete the key's runs, create one) is retried as a whole, so a
run an earlier attempt created is deleted again.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from . import retry
from .run import CREATE_TAG, KIND_TAG, MODEL_TRAINING, mark_model_training

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

KEY_TAG = "wf_key"
DB_NAME = "mlflow.db"
GENERATION_FILE = "generation"  # the store's id, written by the workflow when it finds no store
_BATCH = 100  # MLflow: at most 100 params or tags and 1000 metrics per log_batch


def store_uri(root: str | os.PathLike) -> str:
    return f"sqlite:///{(Path(root) / DB_NAME).resolve()}"


def ensure_store(root: str | os.PathLike, experiments: list[str]) -> str:
    """Create the sqlite store under `root` and the experiments (artifacts in root/artifacts/<name>); idempotent."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    uri = store_uri(root)
    client = retry.client(uri)  # opening the store runs the schema migration

    def create(name: str) -> None:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            client.create_experiment(name, artifact_location=(root / "artifacts" / name).resolve().as_uri(),
                                     tags={KIND_TAG: MODEL_TRAINING})
        else:  # a store made before experiments had a kind
            mark_model_training(client, exp)

    for name in experiments:
        retry.call(uri, f"create experiment {name!r}", create, name)
    return uri


def check_generation(root: str | os.PathLike, generation: str) -> None:
    """The store under `root` is the one the running workflow planned for (not recreated since)."""
    path = Path(root) / GENERATION_FILE
    found = path.read_text().strip() if path.is_file() else None
    if found != generation:
        raise RuntimeError(f"{path}: store generation {found!r}, expected {generation!r}: the store was deleted or "
                           f"recreated after this workflow run was planned; run snakemake again")


def _client(uri: str):
    return retry.client(uri)


def _call(client, method: str, *args: Any, **kwargs: Any) -> Any:
    """client.<method>(...), retried while the store is locked (only for calls that are safe to repeat)."""
    return retry.call(client.tracking_uri, method, getattr(client, method), *args, **kwargs)


def _experiment_id(client, name: str) -> str:
    exp = _call(client, "get_experiment_by_name", name)
    if exp is None:
        raise RuntimeError(f"{client.tracking_uri}: no experiment {name!r}; the store is created with its experiments "
                           f"by the workflow's onstart (mosaic.infra.tracking.store.ensure_store)")
    return exp.experiment_id


def _replace(client, experiment: str, key: str, run_name: str, tags: dict[str, str],
             start_time: int | None = None) -> str:
    """Delete the runs logged under `key` before; start a new one tagged with it (started at `start_time`, ms)."""
    exp_id = _experiment_id(client, experiment)

    def attempt() -> str:  # repeated whole: a run that a failed attempt created is deleted again
        for old in client.search_runs([exp_id], filter_string=f"tags.{KEY_TAG} = '{key}'"):
            client.delete_run(old.info.run_id)
        return client.create_run(exp_id, start_time=start_time, run_name=run_name,
                                 tags={**tags, KEY_TAG: key}).info.run_id

    return retry.call(client.tracking_uri, f"replace run {key!r}", attempt)


def _log_batch(client, run_id: str, params=(), tags=(), metrics=()) -> None:
    """Safe to repeat: params of equal value, tags and identical metrics are not written twice."""
    params, tags, metrics = list(params), list(tags), list(metrics)
    for i in range(0, len(params), _BATCH):
        _call(client, "log_batch", run_id, params=params[i:i + _BATCH])
    for i in range(0, len(tags), _BATCH):
        _call(client, "log_batch", run_id, tags=tags[i:i + _BATCH])
    for i in range(0, len(metrics), 1000):
        _call(client, "log_batch", run_id, metrics=metrics[i:i + 1000])


def copy_run(src_uri: str, src_run_id: str, dst_uri: str, experiment: str, key: str,
             tags: dict[str, str] | None = None, run_name: str | None = None) -> str:
    """Copy a finished run (params, tags, full metric histories, artifacts, start and end times) into
    `experiment` of the store at `dst_uri`, tagged `source_run_id`, `source_store` and `tags`, named `run_name`
    (default: the source run's name); returns the new run id."""
    from mlflow.entities import Param

    src, dst = _client(src_uri), _client(dst_uri)
    run = _call(src, "get_run", src_run_id)
    own = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") and k != CREATE_TAG}
    run_id = _replace(dst, experiment, key, run_name or run.info.run_name,
                      {**own, **(tags or {}), "source_run_id": src_run_id, "source_store": src_uri},
                      run.info.start_time)
    history = [m for name in run.data.metrics for m in _call(src, "get_metric_history", src_run_id, name)]
    _log_batch(dst, run_id, params=[Param(k, v) for k, v in run.data.params.items()], metrics=history)
    with tempfile.TemporaryDirectory() as tmp:
        if _call(src, "list_artifacts", src_run_id):
            local = _call(src, "download_artifacts", src_run_id, "", tmp)
            _call(dst, "log_artifacts", run_id, local)
    _call(dst, "set_terminated", run_id, status=run.info.status, end_time=run.info.end_time)
    return run_id


def log_record(uri: str, experiment: str, key: str, run_name: str, record: dict[str, Any], folder: Path,
               tags: dict[str, str] | None = None) -> str:
    """Log an evaluation record ({"metrics", "params", "tags", "artifacts": paths relative to `folder`,
    optional "start_time" and "end_time": ms since the epoch}) as a run over the record's own times (else the
    time of logging)."""
    import time

    from mlflow.entities import Metric, Param

    client = _client(uri)
    now = int(time.time() * 1000)
    start, end = record_times(record, Path(folder) / "record.json") or (now, None)
    run_id = _replace(client, experiment, key, run_name, {**record.get("tags", {}), **(tags or {})}, start)
    _log_batch(client, run_id, params=[Param(k, str(v)[:6000]) for k, v in record.get("params", {}).items()],
               metrics=[Metric(k, float(v), end or now, 0) for k, v in record.get("metrics", {}).items()])
    for rel in record.get("artifacts", []):
        path = Path(folder) / rel
        folder_in_run = str(Path(rel).parent) if Path(rel).parent != Path(".") else None
        _call(client, "log_artifact", run_id, str(path), folder_in_run)
    _call(client, "set_terminated", run_id, status="FINISHED", end_time=end)
    return run_id


def record_times(record: dict[str, Any], where: str | os.PathLike) -> tuple[int, int] | None:
    """(start_time, end_time) of a record, ms since the epoch, checked; None if it has neither."""
    if "start_time" not in record and "end_time" not in record:
        return None
    times = tuple(record.get(k) for k in ("start_time", "end_time"))
    if not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in times) or times[1] <= times[0]:
        raise ValueError(f"{where}: fields start_time, end_time must be ms since the epoch with end_time > "
                         f"start_time, got {times[0]!r}, {times[1]!r}")
    return times
