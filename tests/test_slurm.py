"""The SLURM path against a live single-node cluster (tests/cluster/start_slurm.sh; root, Debian's
slurmctld/slurmd/munge), through the real snakemake-executor-plugin-slurm. No mock of sbatch.

The test profile is derived from workflow/profiles/slurm (its rules, runtimes and options) with only
what this machine cannot give changed: the partition, no account, CPUs and memory that fit 2 cores,
no GPUs. Checks: the micro DAG's ablation.csv through SLURM equals the local run's exactly; a
training scancel'ed mid-run resumes on rerun and ends with the same LoRA; a job over its runtime is
reported failed with its SLURM log named; the multi-node launch form runs 2 processes through srun.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mosaic.train import checkpoint_step
from tests.workflow_helpers import ROOT, assert_same_ablation_tables, micro_config, snakemake, write_config
from workflow.lib.launch import launch_prefix

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
RUN = "results/runs/method~mosaic/ktrain~2/seed~0"


def slurm_test_profile(dest: Path, retries: int | None = None, **set_resources) -> Path:
    """A workflow profile folder: workflow/profiles/slurm on the test cluster (partition debug, no
    account, 1 CPU and 2 GB a job, no GPUs, squeue status polling); set_resources: per-rule extras."""
    prof = yaml.safe_load(PROFILE.read_text())
    for key in ("configfile", "software-deployment-method"):  # the test passes the micro config; no conda
        prof.pop(key)
    fit = {"slurm_partition": "debug", "cpus_per_task": 1, "mem_mb": 2000}
    prof["default-resources"] = {k: v for k, v in prof["default-resources"].items() if k != "slurm_account"} | fit
    for rule, res in prof["set-resources"].items():
        for gpu_key in ("gpu", "gpu_model"):
            res.pop(gpu_key, None)
        res.update(fit, **set_resources.get(rule, {}))
    for rule, res in set_resources.items():
        prof["set-resources"].setdefault(rule, dict(res))
    prof["set-threads"] = {rule: 1 for rule in prof["set-threads"]}  # the micro config's threads: 1
    prof.update({"slurm-no-account": True, "slurm-status-command": "squeue",
                 "slurm-init-seconds-before-status-checks": 2, "slurm-logdir": str(dest / "slurm-logs"),
                 "slurm-keep-successful-logs": True})
    if retries is not None:
        prof["retries"] = retries
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof))
    return dest


def sm_slurm(work: Path, cfg: Path, profile: Path, *targets) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(cfg), "--workflow-profile", str(profile), *targets]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout=1500) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The live cluster (SLURM_CONF set for this process and its children); skipped when it cannot start."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="no snakemake-executor-plugin-slurm (test extra)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (apt-get install slurmctld slurmd munge; slurmd)")
    state = Path(os.environ.get("MOSAIC_SLURM_DIR", "/tmp/mosaic-slurm"))
    p = subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "start_slurm.sh")], capture_output=True, text=True,
                       env={**os.environ, "MOSAIC_SLURM_DIR": str(state)}, timeout=900)
    if p.returncode != 0:
        pytest.skip(f"the SLURM test cluster did not start: {p.stderr.strip()[-800:]}")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "stop_slurm.sh")], capture_output=True,
                   env={**os.environ, "MOSAIC_SLURM_DIR": str(state)})


@pytest.fixture(scope="module")
def slurm_micro(cluster, micro_run, tmp_path_factory):
    """The micro DAG through SLURM, with (c)'s over-runtime job submitted beside it (it waits a minute
    for SLURM's time limit either way): (workdir, config, profile, the runtime run's (rc, output))."""
    over = tmp_path_factory.mktemp("slurm-runtime")
    c = micro_config()
    c["data"]["val"]["n"] = 10**6  # far more than a minute of collages
    over_cfg = write_config(over, c)
    over_prof = slurm_test_profile(over / "profile", retries=0, synthetic_split={"runtime": 1})
    over_proc = sm_slurm(over, over_cfg, over_prof, "results/data/synthetic/val")

    work = tmp_path_factory.mktemp("slurm-micro")
    cfg = write_config(work, micro_config())
    prof = slurm_test_profile(work / "profile", retries=0)
    rc, out = finish(sm_slurm(work, cfg, prof, "results/ablation.csv"))
    assert rc == 0, out[-6000:]
    return work, cfg, prof, finish(over_proc)


def slurm_time(minutes: int) -> str:
    """A time limit as squeue prints it (%l)."""
    days, rest = divmod(minutes, 1440)
    return f"{days}-{rest // 60:02}:{rest % 60:02}:00" if days else f"{rest // 60}:{rest % 60:02}:00"


def test_micro_dag_through_slurm_equals_the_local_run(slurm_micro, micro_run):
    work, _, _, _ = slurm_micro
    # every job ran as a SLURM job, with the real profile's runtime for its rule
    jobs = subprocess.run(["squeue", "-h", "--states=all", "-o", "%k|%l"], capture_output=True, text=True).stdout
    limits = {}
    for comment, limit in (line.split("|") for line in jobs.splitlines()):
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        limits.setdefault(rule, set()).add(limit)
    real = yaml.safe_load(PROFILE.read_text())
    for rule in ("train", "train_base", "sample", "evaluate", "tables_ablation"):
        runtime = real["set-resources"].get(rule, {}).get("runtime", real["default-resources"]["runtime"])
        assert limits.get(rule) == {slurm_time(runtime)}, (rule, limits)
    assert len(list((work / "profile" / "slurm-logs" / "rule_train").rglob("*.log"))) == 4  # 2 methods x 2 seeds
    assert_same_ablation_tables(micro_run[0] / "results", work / "results")  # every form, MLflow run ids aside


def running_train_job(timeout=300.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True, text=True).stdout
        ids = [i for i, _, comment in (line.partition("|") for line in out.splitlines()) if "rule_train" in comment]
        if ids:
            return ids[0]
        time.sleep(0.2)
    raise AssertionError("no running training job in squeue")


def test_scancel_mid_training_resumes_on_rerun_with_the_same_lora(slurm_micro):
    """A LoRA training of 30 steps (checkpoints every 4) trained locally for the reference, then through
    SLURM scancel'ed after its first checkpoint; the rerun resumes from the checkpoint in the same
    MLflow run and exports the identical LoRA."""
    work, _, prof, _ = slurm_micro
    c = micro_config()
    c["methods"]["mosaic"]["overrides"].update({"train.steps": 30, "train.checkpoint_every": 4})
    cfg = write_config(work, c, "long.yaml")
    target = f"{RUN}/done.json"
    snakemake(work, cfg, target)  # the local, uninterrupted reference
    reference = load_file(work / RUN / "lora.safetensors")
    shutil.rmtree(work / RUN)

    proc = sm_slurm(work, cfg, prof, target)
    job = running_train_job()
    end = time.monotonic() + 300
    while not ((work / RUN).exists() and checkpoint_step(work / RUN)):
        assert time.monotonic() < end and proc.poll() is None, "no checkpoint before the job ended"
        time.sleep(0.1)
    subprocess.run(["scancel", job], check=True)
    rc, out = finish(proc)
    assert rc != 0 and f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in out, out[-3000:]
    stopped = checkpoint_step(work / RUN)
    assert not (work / RUN / "done.json").exists() and 4 <= stopped < 30, stopped

    rc, out = finish(sm_slurm(work, cfg, prof, target))
    assert rc == 0, out[-4000:]
    lora = load_file(work / RUN / "lora.safetensors")
    assert lora.keys() == reference.keys() and all(torch.equal(lora[k], reference[k]) for k in lora)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / RUN / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags.get(f"resumed_at_step_{stopped}") == "true"


def test_job_over_its_runtime_is_reported_failed_with_its_slurm_log(slurm_micro):
    rc, out = slurm_micro[3]
    assert rc != 0, out[-3000:]
    assert "Error in rule synthetic_split" in out and "SLURM status is: 'TIMEOUT'" in out, out[-3000:]
    logs = [w for w in out.split() if w.strip("'\",.").endswith(".log") and "slurm-logs" in w]
    assert logs, out[-3000:]
    log = Path(logs[0].strip("'\",."))
    assert log.is_file() and "synthetic_split" in str(log)
    assert "DUE TO TIME LIMIT" in log.read_text()


def test_multi_node_launch_renders_srun_and_a_c10d_rendezvous():
    training = yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text())["training"]
    cmd = launch_prefix(training, gpus=16, nodes=2)
    assert cmd == ("srun --overlap --nodes 2 --ntasks-per-node 1 python -m torch.distributed.run --nnodes 2"
                   " --nproc_per_node 8 --rdzv_backend c10d --rdzv_id $SLURM_JOB_ID"
                   " --rdzv_endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1):29500")
    assert launch_prefix(training, gpus=8) == "python -m torch.distributed.run --standalone --nproc_per_node 8"
    assert launch_prefix(training, gpus=1) == "python"
    with pytest.raises(ValueError, match="do not split evenly over 2 nodes"):
        launch_prefix(training, gpus=9, nodes=2)


def test_the_multi_node_launcher_trains_two_processes_through_srun(cluster, tmp_path):
    """The configured multi-node form (srun + torch.distributed.run, rendezvous on the allocation's first
    host from scontrol) with 2 processes on the one node: a debug training that exports its LoRA."""
    from mlflow import MlflowClient

    from mosaic.data.synthetic import generate_dataset

    training = yaml.safe_load((ROOT / "workflow" / "config" / "tiny.yaml").read_text())["training"]
    launch = training["launch_nodes"].format(py=sys.executable, gpus=2, nodes=1)
    data = generate_dataset(tmp_path / "train", 8, 0, "train", 1, 3)
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = " ".join(f"--set {o}" for o in (f"data.train={data}", "model.flavour=debug", f"train.output_dir={out}",
                                           "train.steps=4", "train.batch_size=2", f"tracking.tracking_uri={uri}"))
    script = f"set -x\n{launch} -m mosaic.cli train --config /dev/null {sets}\n"
    log = tmp_path / "job.log"
    p = subprocess.run(["sbatch", "--wait", "--nodes", "1", "--ntasks", "1", "--cpus-per-task", "2", "--mem", "6000",
                        "-p", "debug", "-t", "10", "-o", str(log), "--wrap", script],
                       capture_output=True, text=True, timeout=900)
    text = log.read_text() if log.exists() else ""
    assert p.returncode == 0 and text, (p.stderr + text)[-4000:]  # sbatch --wait exits 0 for a job cancelled pending
    assert f"--rdzv_endpoint {socket.gethostname().split('.')[0]}:29500" in text  # resolved by scontrol
    assert (out / "lora.safetensors").is_file()
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
