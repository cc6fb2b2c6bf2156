"""Two processes under torchrun (gloo, CPU): ZeRO-2 partitions the optimizer state across ranks,
the data is sharded, and only rank 0 logs and exports."""
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from mosaic.data.synthetic import generate_dataset


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    data = generate_dataset(tmp_path / "train", 8, 0, "train", 1, 3)
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mosaic.cli", "train", "--config", "/dev/null"]
    for o in (f"data.train={data}", "model.flavour=debug", f"train.output_dir={out}", "train.steps=4",
              "train.batch_size=2", "train.checkpoint_every=2", f"tracking.tracking_uri={uri}"):
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "step_00000004"
    assert sorted(p.name for p in ckpt.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (out / "lora.safetensors").exists()
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/diff")] == [1, 2, 3, 4]
