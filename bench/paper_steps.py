"""A 2-step paper-profile training and an 8-step sample through the real trainer and sampler.

The paper profile's MOSAIC LoRA training config (workflow/config/paper.yaml through the workflow's plan:
training.common, training.lora, the `mosaic` method's loss weights; bench/memory_plan.profile_overrides) with flavour `flux-dev-random`
(FLUX.1-dev's transformer at full size with random weights, a random FLUX-architecture VAE, hashed
prompt features of T5's shape: no weights anywhere), on a small synthetic dataset at the profile's image
sizes with K = 4 references (the data the paper trains on, Subjects200K collages, is not there). Then
`mosaic sample --run` (a fresh process, as the workflow runs it) samples one prompt with 8 steps.
MLflow tracking and the trainer's own validation are off (no mlflow on the GPU machines; the figure is
time and memory). Prints and (--json) records wall times, peak GPU memory and the outputs' sizes.

    python bench/paper_steps.py --out /tmp/paper_steps --json paper_steps.json    # GPU
    python bench/paper_steps.py --smoke --out /tmp/paper_steps                     # CPU, debug flavour
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_plan import ROOT, profile_overrides  # noqa: E402

from mosaic.config import load_config  # noqa: E402
from mosaic.data.synthetic import SyntheticConfig, generate_dataset  # noqa: E402
from mosaic.infra.runfolder import LORA_FILE, MANIFEST_FILE, atomic_write  # noqa: E402
from mosaic.train import train  # noqa: E402

SMOKE = ["model.flavour=debug", "model.lora_rank=4", "train.precision=fp32", "data.target_size=32",
         "data.ref_size=24"]


def config_items(profile: Path, data: Path, out: Path, steps: int, smoke: bool) -> list[str]:
    return [*profile_overrides(profile, 4), "model.flavour=flux-dev-random", f"data.train={data}", "data.val=null",
            f"train.output_dir={out}", f"train.steps={steps}", "train.checkpoint_every=0",
            "tracking.enabled=false", "eval.enabled=false", "variant=mosaic", "profile=paper",
            *(SMOKE if smoke else [])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="a scratch folder (dataset, run, samples)")
    ap.add_argument("--profile", type=Path, default=ROOT / "workflow" / "config" / "paper.yaml")
    ap.add_argument("--smoke", action="store_true", help="CPU, debug flavour")
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--sample-steps", type=int, default=8)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda and not a.smoke:
        raise SystemExit("no CUDA device visible (use --smoke on CPU)")
    if cuda:
        torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN attention failed in backward on FLUX shapes (gpu-notes)
    probe = load_config(None, config_items(a.profile, Path("x"), a.out / "run", a.train_steps, a.smoke))
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "flavour": probe.model.flavour, "lora_rank": probe.model.lora_rank,
                 "zero_stage": probe.train.zero_stage,
                 "precision": probe.train.precision, "gradient_checkpointing": probe.model.gradient_checkpointing,
                 "target_size": probe.data.target_size, "refs": 4}
    t0 = time.perf_counter()
    data = generate_dataset(a.out / "data", 2, 0, "train", 4, 4,
                            SyntheticConfig(target_size=probe.data.target_size, ref_size=probe.data.ref_size),
                            overwrite=True)
    res["data_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    result = train(load_config(None, config_items(a.profile, data, a.out / "run", a.train_steps, a.smoke)))
    res.update(train_s=round(time.perf_counter() - t0, 2), train_status=result.status, train_steps=result.step,
               lora_bytes=(a.out / "run" / LORA_FILE).stat().st_size)
    if cuda:
        res["train_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if cuda:  # the trainer's engine is gone with train(); the sampler process needs the memory
        gc.collect()
        torch.cuda.empty_cache()
        res["after_train_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    print(f"trained: {result.status}, {result.step} steps in {res['train_s']} s, LoRA {res['lora_bytes'] / 1e9:.2f} GB")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "mosaic.cli", "sample", "--run", str(a.out / "run"), "--dataset", str(data),
           "--limit", "1", "--steps", str(a.sample_steps), "--out", str(a.out / "samples"), "--overwrite",
           "--device", "cuda" if cuda else "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    res.update(sample_s=round(time.perf_counter() - t0, 2), sample_rc=p.returncode,
               sample_tail=(p.stdout + p.stderr)[-1500:], sample_steps=a.sample_steps)
    images = sorted((a.out / "samples" / "images").glob("*.png")) if p.returncode == 0 else []
    res["images"] = len(images)
    res["manifest"] = (a.out / "samples" / MANIFEST_FILE).is_file()
    print(f"sampled: rc {p.returncode}, {len(images)} image(s), {a.sample_steps} steps in {res['sample_s']} s")
    if a.json:
        atomic_write(a.json, json.dumps(res, indent=2))
    return 0 if result.status == "finished" and p.returncode == 0 and images else 1


if __name__ == "__main__":
    raise SystemExit(main())
