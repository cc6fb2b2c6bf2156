"""The fused reference-only LoRA's training step vs the no-LoRA step: time and peak memory, side by side.

Arms, interleaved step by step so drift hits both (medians, ratio to `no-lora`):
  no-lora  adapters off: forward + backward of the diffusion loss through every block, the gradient
           going to the input tokens only (no weight gradient, no optimizer) - the reference figures'
           "gradients to x_embedder" step;
  lora     the reference-only LoRA of mosaic.model.fused at --rank on the upstream targets, forward +
           backward + optimizer step: DeepSpeed ZeRO-2 with bf16 and the client AdamW, as mosaic.train
           builds it (mosaic.train.distributed.build_engine; one GPU: a world of one), or with
           --no-deepspeed torch AdamW on the LoRA weights as peft made them (the record names their dtype).
Peak memory is torch.cuda.max_memory_allocated over each arm's steps (the no-lora arm's includes the
resident LoRA weights and, after the first lora step, the optimizer state).

Profiles:
  --device cuda (default)  FLUX.1-dev transformer, random weights built on the GPU, bf16, gradient
                           checkpointing, 512 text tokens, 32x32 target tokens, K = 4 references of 32x32;
  --smoke                  the same code on CPU at the debug flavour, fp32, one step per arm (tests).
Targets (issue 15): lora at most 1.15x no-lora, peak at most 60 GiB (a LoRA on all tokens: 1.31x, 60.3 GiB).

    python bench/lora_step.py --json lora_step.json          # GPU
    python bench/lora_step.py --smoke                          # CPU, seconds
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mosaic.config import load_config
from mosaic.model import LoraSpec, build_model
from mosaic.infra.runfolder import atomic_write

PROFILES = {
    "cuda": dict(flavour="flux-dev", device="cuda", dtype=torch.bfloat16, text=512, grid=(32, 32), ref_grid=(32, 32),
                 refs=4, rank=512, steps=6, warmup=2),
    "smoke": dict(flavour="debug", device="cpu", dtype=torch.float32, text=8, grid=(4, 4), ref_grid=(3, 3), refs=3,
                  rank=4, steps=1, warmup=0),
}


def inputs(model, p, gen):
    c = model.transformer.config
    rnd = lambda *s: torch.randn(*s, generator=gen).to(p["device"], p["dtype"])  # noqa: E731
    nt, nr = p["grid"][0] * p["grid"][1], p["ref_grid"][0] * p["ref_grid"][1]
    x = dict(target=rnd(1, nt, c.in_channels), refs=rnd(1, p["refs"], nr, c.in_channels), ref_mask=None,
             text=rnd(1, p["text"], c.joint_attention_dim), pooled=rnd(1, c.pooled_projection_dim),
             timestep=torch.full((1,), 0.5, device=p["device"], dtype=p["dtype"]), target_grid=p["grid"],
             ref_grid=p["ref_grid"])
    return x, rnd(1, nt, c.in_channels).float()


def engine_for(model, p, deepspeed: bool):
    """(step function of the lora arm, what optimizes)."""
    if deepspeed:
        from mosaic.train.distributed import build_engine, setup_distributed

        setup_distributed()
        cfg = load_config(None, ["data.train=unused", "train.zero_stage=2", "train.batch_size=1",
                                 f"train.precision={'bf16' if p['dtype'] == torch.bfloat16 else 'fp32'}"])
        engine, *_ = build_engine(model, cfg, bf16=p["dtype"] == torch.bfloat16)

        def step(x, v):
            loss = F.mse_loss(engine(**x).float(), v)
            engine.backward(loss)
            engine.step()
        return step, "DeepSpeed ZeRO-2, client AdamW (fp32 master)"
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-6)

    def step(x, v):
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(**x).float(), v).backward()
        opt.step()
    return step, f"torch AdamW on the {str(params[0].dtype).removeprefix('torch.')} LoRA weights (no DeepSpeed)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, debug flavour, one step per arm")
    ap.add_argument("--rank", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--no-deepspeed", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    p = dict(PROFILES["smoke" if a.smoke else "cuda"])
    p.update({k: getattr(a, k) for k in ("rank", "steps") if getattr(a, k) is not None})
    cuda = p["device"] == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible (use --smoke on CPU)")
        torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN attention failed in backward on FLUX shapes (gpu-notes)
    t0 = time.perf_counter()
    model = build_model(p["flavour"], lora=LoraSpec(rank=p["rank"]), dtype=p["dtype"], device=p["device"],
                        gradient_checkpointing=True, max_refs=p["refs"])
    built = time.perf_counter() - t0
    model.train()
    lora_step, optimizer = engine_for(model, p, deepspeed=not a.no_deepspeed)
    x, v = inputs(model, p, torch.Generator().manual_seed(0))

    def no_lora_step(x, v):
        model.transformer.disable_adapters()
        try:
            xi = dict(x, target=x["target"].detach().requires_grad_(True))
            F.mse_loss(model(**xi).float(), v).backward()
        finally:
            model.transformer.enable_adapters()

    arms = {"no-lora": no_lora_step, "lora": lora_step}
    times, peak = {k: [] for k in arms}, dict.fromkeys(arms, 0.0)
    for s in range(p["warmup"] + p["steps"]):
        for name, fn in arms.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn(x, v)
            if cuda:
                torch.cuda.synchronize()
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated() / 2**30)
            if s >= p["warmup"]:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(t) for k, t in times.items()}
    trainable = sum(q.numel() for q in model.trainable_parameters())
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "flavour": p["flavour"], "dtype": str(p["dtype"]).removeprefix("torch."), "gradient_checkpointing": True,
              "text": p["text"], "target_grid": p["grid"], "refs": p["refs"], "ref_grid": p["ref_grid"],
              "rank": p["rank"], "trainable": trainable, "optimizer": optimizer, "build_s": round(built, 2),
              "steps": p["steps"], "warmup": p["warmup"], "median_s": med, "ratio": med["lora"] / med["no-lora"],
              "peak_gib": peak if cuda else None}
    print(f"{result['device']} {p['flavour']} {result['dtype']} checkpointing, text {p['text']}, target "
          f"{p['grid']}, K={p['refs']} x {p['ref_grid']}, LoRA rank {p['rank']} ({trainable / 1e9:.2f}B), {optimizer}")
    for name in arms:
        mem = f"{peak[name]:7.2f} GiB" if cuda else "      -"
        print(f"  {name:8s} {med[name]:8.3f} s  x{med[name] / med['no-lora']:.3f}  peak {mem}")
    if a.json:
        atomic_write(Path(a.json), json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
