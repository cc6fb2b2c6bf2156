"""Pre-emption through the Snakemake workflow: a training killed at any point, then rerun, resumes from
its last checkpoint into the same MLflow run and ends bit-identical (CPU) to an uninterrupted run.

One working directory on a micro config (one method, one seed, 30 LoRA steps, a checkpoint every 4):
the uninterrupted run gives the reference LoRA; each scenario deletes the training's run folder
(its marker with it), kills the retraining one way, reruns Snakemake, and compares.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from mosaic.train import KILL_AT_STEP_ENV, checkpoint_step
from tests.workflow_helpers import micro_config, snakemake, snakemake_cmd, write_config

pytestmark = pytest.mark.slow
RUN = "results/runs/method~mosaic/ktrain~2/seed~0"
TARGET = f"{RUN}/done.json"
STEPS, EVERY = 30, 4


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(workdir, config, reference LoRA tensors) after one uninterrupted run."""
    work = tmp_path_factory.mktemp("preempt")
    c = micro_config()
    c["methods"] = {"mosaic": c["methods"]["mosaic"]}
    c["studies"]["ablation"].update(methods=["mosaic"], seeds=[0])
    c["training"]["common"]["train.checkpoint_every"] = EVERY
    c["training"]["lora"].update({"train.steps": STEPS, "eval.max_samples": 1})
    cfg = write_config(work, c)
    snakemake(work, cfg, TARGET)
    return work, cfg, load_file(work / RUN / "lora.safetensors")


def fresh(work):
    """Delete the training's run folder (and so its marker): the next run retrains it from scratch."""
    shutil.rmtree(work / RUN)


def start(work, cfg, env=None):
    return subprocess.Popen(snakemake_cmd(work, cfg, TARGET), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)


def trainer(proc) -> psutil.Process | None:
    """The training process Snakemake started for the run (python workflow/scripts/train.py)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "scripts/train.py" in cmd and "python" in child.name():
            return child
    return None


def wait_for(predicate, timeout=240.0, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


READ_RUNS = """
import json, sys
from mlflow import MlflowClient
c = MlflowClient(sys.argv[1])
print(json.dumps([{"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags,
                   "loss": [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "loss/total")]}
                  for r in c.search_runs([e.experiment_id for e in c.search_experiments()])]))
"""


def the_run(work) -> dict:
    """The one MLflow run in the training's own store (the workflow copies it into the study stores), read
    by a fresh process: MLflow caches a store per URI, and each scenario recreates the database file."""
    uri = f"sqlite:///{work / RUN / 'mlflow.db'}"
    p = subprocess.run([sys.executable, "-c", READ_RUNS, uri], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = json.loads(p.stdout)
    assert len(runs) == 1, [r["id"] for r in runs]
    return runs[0]


def assert_resumed_exactly(work, cfg, reference, resumed_from: int):
    assert not (work / RUN / "done.json").exists()  # the failed job left no marker of a finished run
    assert checkpoint_step(work / RUN) == (resumed_from or None)
    before = the_run(work)
    snakemake(work, cfg, TARGET)
    lora = load_file(work / RUN / "lora.safetensors")
    assert lora.keys() == reference.keys() and all(torch.equal(lora[k], reference[k]) for k in lora)
    run = the_run(work)
    assert run["id"] == before["id"] and run["status"] == "FINISHED"
    assert run["tags"].get(f"resumed_at_step_{resumed_from}") == "true"
    assert {step for step, _ in run["loss"]} == set(range(1, STEPS + 1))
    by_step = {}
    for step, value in run["loss"]:  # steps after the checkpoint ran twice: the same values (exact resume)
        assert by_step.setdefault(step, value) == value, step


def test_sigkill_after_the_first_checkpoint_resumes_from_it(work):
    work, cfg, reference = work
    kill_at = random.randint(EVERY + 1, STEPS - 1)
    print(f"SIGKILL at step {kill_at}")
    fresh(work)
    p = subprocess.run(snakemake_cmd(work, cfg, TARGET), capture_output=True, text=True,
                       env={**os.environ, KILL_AT_STEP_ENV: str(kill_at)})
    assert p.returncode != 0
    assert_resumed_exactly(work, cfg, reference, EVERY * (kill_at // EVERY))


def test_sigkill_before_the_first_checkpoint_restarts_cleanly(work):
    work, cfg, reference = work
    fresh(work)
    p = subprocess.run(snakemake_cmd(work, cfg, TARGET), capture_output=True, text=True,
                       env={**os.environ, KILL_AT_STEP_ENV: str(EVERY - 1)})
    assert p.returncode != 0
    assert_resumed_exactly(work, cfg, reference, 0)


def test_sigterm_saves_a_checkpoint_before_exit(work):
    """SIGTERM (what SLURM sends before pre-empting) mid-training: a checkpoint at the step it stopped,
    the MLflow run marked KILLED, the job failed; the rerun resumes from that checkpoint."""
    work, cfg, reference = work
    fresh(work)
    proc = start(work, cfg)
    wait_for(lambda: checkpoint_step(work / RUN) if (work / RUN).exists() else None, what="the first checkpoint")
    wait_for(lambda: trainer(proc), what="the training process").send_signal(signal.SIGTERM)
    assert proc.wait(timeout=240) != 0
    stopped = checkpoint_step(work / RUN)
    assert EVERY < stopped < STEPS, f"checkpoint {stopped}: SIGTERM arrived too late to test"
    assert the_run(work)["status"] == "KILLED"
    assert_resumed_exactly(work, cfg, reference, stopped)


def test_sigkill_of_the_whole_workflow_at_a_random_moment(work):
    """Snakemake and its job killed together (a node lost), at a random moment of the training job:
    the rerun (--rerun-incomplete) finishes it, bit-identical, with one MLflow run."""
    work, cfg, reference = work
    fresh(work)
    proc = start(work, cfg)
    wait_for(lambda: trainer(proc), what="the training process")
    time.sleep(random.uniform(0.0, 6.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    snakemake(work, cfg, "--unlock")  # a killed Snakemake leaves its lock behind
    snakemake(work, cfg, TARGET, "--rerun-incomplete")
    lora = load_file(work / RUN / "lora.safetensors")
    assert all(torch.equal(lora[k], reference[k]) for k in reference)
    assert the_run(work)["status"] == "FINISHED"
