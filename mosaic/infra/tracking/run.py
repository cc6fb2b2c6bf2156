"""MLflow logging for one training run, resumable across restarts of the same output folder.

Why it exists: every training is one MLflow run holding its resolved config (params), its
provenance (tags: variant, profile, git sha, seed, package versions), per-step metrics and
its artifacts. A restarted training must continue that run, not open a second one, so the
run id is stored in the output folder and reused. Metrics are buffered and written in
batches so logging does not slow the training loop. Every store call is retried while the sqlite
store is locked by another job (mosaic.infra.tracking.retry); creating the run is the one write that is not
idempotent, so a retried create first looks for the run an earlier attempt may have committed.
Experiments it creates, or finds without a kind, are marked as model-training experiments
(`mark_model_training`), MLflow 3's record of what an experiment holds (it is not GenAI traces). The UI
of MLflow 3.17 picks its view from its own GenAI / Model training switch (remembered by the browser, or
`?workflowType=machine_learning` in the URL), not from this tag.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from ..runfolder import RUN_ID_FILE, atomic_write
from . import retry

CREATE_TAG = "mosaic.create_id"  # tells a retried create_run which run its earlier attempt made
# MLflow 3's experiment kind (mlflow/server/js: ExperimentKind; the UI's "Machine learning" kind)
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
PACKAGES = ("torch", "diffusers", "peft", "deepspeed", "mlflow", "transformers")


def git_sha(path: str | os.PathLike = ".") -> str:
    """HEAD of the repository holding `path`, with "-dirty" if tracked files changed; "unknown" outside git."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance() -> dict[str, str]:
    """The tags every run carries: this checkout's git sha and the package versions ("version.<name>")."""
    return {"git_sha": git_sha(Path(__file__).parent), **{f"version.{k}": v for k, v in package_versions().items()}}


def resolve_tracking_uri(uri: str | None, output_dir: Path) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else an sqlite store inside the output folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def _artifact_location(uri: str) -> str | None:
    """Beside an sqlite store (MLflow's default would be ./mlruns in the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def mark_model_training(client, experiment) -> None:
    """Tag `experiment` (an mlflow Experiment) as model training unless it has a kind; safe to repeat."""
    if KIND_TAG not in experiment.tags:
        retry.call(client.tracking_uri, f"tag experiment {experiment.name!r}", client.set_experiment_tag,
                   experiment.experiment_id, KIND_TAG, MODEL_TRAINING)


class RunLogger:
    """One MLflow run per output folder: `start` creates it or reopens the stored one."""

    def __init__(self, tracking_uri: str, experiment: str, output_dir: Path):
        self.client = retry.client(tracking_uri)
        self.uri, self.experiment, self.output_dir = tracking_uri, experiment, Path(output_dir)
        self.run_id: str | None = None
        self._metrics: list[Any] = []

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """self.client.<method>(...), retried while the store is locked."""
        return retry.call(self.uri, method, getattr(self.client, method), *args, **kwargs)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._call("get_experiment_by_name", self.experiment)
        if exp is None:
            try:
                return self._call("create_experiment", self.experiment, tags={KIND_TAG: MODEL_TRAINING},
                                  artifact_location=_artifact_location(self.uri))
            except MlflowException:  # created meanwhile by a concurrent run
                exp = self._call("get_experiment_by_name", self.experiment)
                if exp is None:
                    raise
        mark_model_training(self.client, exp)
        return exp.experiment_id

    def start(self, run_name: str | None, params: dict[str, Any], tags: dict[str, str], step: int) -> str:
        """Reopen the run recorded in the output folder, or create one and log `params` to it."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        path = self.output_dir / RUN_ID_FILE
        if path.exists():
            self.run_id = path.read_text().strip()
            try:
                self._call("get_run", self.run_id)
            except MlflowException:
                raise FileNotFoundError(f"{path}: MLflow run {self.run_id} is not in the store {self.uri}; "
                                        f"use the tracking URI the run started with, or delete {path}") from None
            self._call("update_run", self.run_id, status="RUNNING")
            self.set_tag(f"resumed_at_step_{step}", "true")
            return self.run_id
        self.run_id = self._create_run(self._experiment_id(), run_name)
        self._call("log_batch", self.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                   tags=[RunTag(k, str(v)) for k, v in tags.items()])
        atomic_write(path, self.run_id)
        return self.run_id

    def _create_run(self, experiment_id: str, run_name: str | None) -> str:
        """create_run, retried without a duplicate: a retry reuses the run an earlier attempt committed."""
        from mlflow.entities import ViewType

        create_id, tried = uuid.uuid4().hex, []

        def attempt() -> str:
            if tried:
                found = self.client.search_runs([experiment_id], f"tags.`{CREATE_TAG}` = '{create_id}'",
                                                run_view_type=ViewType.ALL)
                if found:
                    return found[0].info.run_id
            tried.append(True)
            return self.client.create_run(experiment_id, run_name=run_name, tags={CREATE_TAG: create_id}).info.run_id

        return retry.call(self.uri, "create_run", attempt)

    def set_tag(self, key: str, value: str) -> None:
        self._call("set_tag", self.run_id, key, value)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        if self._metrics:
            self._call("log_batch", self.run_id, metrics=self._metrics)  # identical metrics are not written twice
            self._metrics = []

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self.run_id, str(path), artifact_path)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (an interrupted run that a restart will reopen)."""
        self.flush()
        self._call("set_terminated", self.run_id, status=status)
