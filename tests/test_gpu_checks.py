"""bench/gpu_checks.py, the prepared GPU run of issue 15: its CPU smoke path end to end, its timeouts,
and the benches-only flavour it trains (flux-dev-random: FLUX.1-dev's shapes, no weights)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mosaic.model import build_codec, build_text_encoder, get_flavour

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_checks  # noqa: E402


def test_flux_dev_random_has_flux_dev_shapes_and_needs_no_weights():
    fl, dev = get_flavour("flux-dev-random"), get_flavour("flux-dev")
    assert fl.transformer == dev.transformer and fl.prediction == dev.prediction == "velocity"
    codec = build_codec(fl)  # a random VAE of FLUX's architecture
    assert (codec.downsample, codec.latent_channels, codec.channels) == (8, 16, fl.transformer["in_channels"])
    tokens = codec.encode(torch.zeros(1, 3, 32, 32))
    assert tokens.shape == (1, 4, 64) and torch.isfinite(tokens).all()
    text, pooled = build_text_encoder(fl).encode(["a red ball"])
    assert text.shape == (1, 512, fl.transformer["joint_attention_dim"]) and pooled.shape == (1, 768)
    with pytest.raises(FileNotFoundError, match="needs VAE weights"):
        build_codec("flux-dev")  # the real flavour still refuses to run without its weights


def test_a_part_past_its_timeout_is_killed(tmp_path):
    res = gpu_checks.run_part([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                              1.0, {}, tmp_path / "log")
    assert res["timed_out"] and res["rc"] != 0 and res["seconds"] < 30 and "started" in res["log_tail"]


def test_a_spent_budget_skips_the_parts(tmp_path):
    out = tmp_path / "checks.json"
    assert gpu_checks.main(["--smoke", "--budget", "0", "--json", str(out)]) == 1
    rec = json.loads(out.read_text())
    assert set(rec["parts"]) == {"loss_overhead", "lora_step", "paper_steps"}
    assert all("budget" in p["skipped"] for p in rec["parts"].values()) and rec["versions"]["torch"]


def test_gpu_commands_are_the_issues_checks(tmp_path):
    cmds = gpu_checks.parts(False, tmp_path, deepspeed=False)
    assert cmds["loss_overhead"][2:6] == ["--device", "cuda", "--ks", "4"]
    assert "--no-deepspeed" in cmds["lora_step"] and "--no-deepspeed" not in gpu_checks.parts(False, tmp_path, True)[
        "lora_step"]
    assert sum(gpu_checks.PART_S.values()) <= gpu_checks.BUDGET_S < 600  # one device command, with room to rerun
    assert gpu_checks.targets("lora_step", {"ratio": 1.2, "peak_gib": {"lora": 59.0}}) == {
        "ratio": 1.2, "at_most_1.15x": False, "peak_gib": 59.0, "peak_at_most_60": True}


@pytest.mark.slow
def test_smoke_run_of_every_part(tmp_path):
    """Every part's --smoke path (CPU, debug flavour) through the script itself, as the GPU run calls them."""
    out = tmp_path / "checks.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_checks.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    rec = json.loads(out.read_text())
    parts = rec["parts"]
    assert p.returncode == 0, {k: v.get("log_tail") for k, v in parts.items()}
    assert all(v["rc"] == 0 and not v["timed_out"] for v in parts.values())
    lo, ls, ps = (parts[k]["figures"] for k in ("loss_overhead", "lora_step", "paper_steps"))
    assert len(lo["rows"]) == 2 * 4 and {r["arm"] for r in lo["rows"]} == {"plain", "mosaic", "mosaic-upstream",
                                                                           "upstream-style"}
    assert ls["rank"] == 4 and ls["median_s"]["lora"] > 0 and ls["optimizer"].startswith("DeepSpeed ZeRO-2")
    assert ps["train_status"] == "finished" and ps["train_steps"] == 2 and ps["images"] == 1 and ps["manifest"]
    assert ps["sample_steps"] == 8 and ps["lora_rank"] == 4 and ps["zero_stage"] == 2
    assert parts["paper_steps"]["targets"] == {"finished": True, "sampled": True}
