"""Training-step cost of MOSAIC's attention losses, side by side, from one run.

Arms (each a full step: forward, loss, backward, AdamW on the reference LoRA):
  plain           the diffusion (flow-matching) loss only;
  mosaic          + SCAL/MDL from mosaic.losses, paper preset (annotated rows only);
  mosaic-upstream + SCAL/MDL from mosaic.losses, upstream-code preset (every reference row for MDL);
  upstream-style  + the public training code's recipe: fp32 maps for every reference token in
                  every double block, a Python loop of nll_loss over the annotated pairs, a loop
                  of JSD over reference pairs, batch size 1 (as upstream assumes).

Profiles:
  cpu (default)  tiny flavour at tiny-profile sizes (12x12 target, 6x6 references), fp32;
  --device cuda  FLUX.1-dev config, random weights, bf16, gradient checkpointing, 512 text tokens,
                 32x32 target, K = 2/4/6 references of 32x32, 256 points per reference;
  --dry/--smoke  the cuda profile's code path (bf16, checkpointing) on CPU at debug size, one step.
Steps interleave the arms so drift hits them equally; medians and ratios to `plain` are printed,
and peak memory (torch.cuda.max_memory_allocated) on GPU. Before timing, one no-grad forward
computes the losses of `mosaic-upstream` and `upstream-style` on the same attention: they must
agree (the points are distinct per reference, so per-reference and per-pair averaging coincide).

    python bench/loss_overhead.py --threads 1     # CPU, tiny (one thread: steadier on a busy machine)
    python bench/loss_overhead.py --device cuda   # GPU, FLUX.1-dev scale
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mosaic.losses import AttentionProbe, LossConfig, correspondence_losses
from mosaic.model import LoraSpec, build_model
from mosaic.infra.runfolder import atomic_write

PROFILES = {
    "cpu": dict(flavour="tiny", device="cpu", dtype=torch.float32, checkpointing=False, text=24, grid=(12, 12),
                ref_grid=(6, 6), ks=(2, 4), points=16, steps=10, warmup=2),
    "cuda": dict(flavour="flux-dev", device="cuda", dtype=torch.bfloat16, checkpointing=True, text=512,
                 grid=(32, 32), ref_grid=(32, 32), ks=(2, 4, 6), points=256, steps=10, warmup=3),
    "dry": dict(flavour="debug", device="cpu", dtype=torch.bfloat16, checkpointing=True, text=8, grid=(4, 4),
                ref_grid=(3, 3), ks=(2, 3), points=4, steps=1, warmup=0),
}
ARMS = ("plain", "mosaic", "mosaic-upstream", "upstream-style")


# ---------------------------------------------------------------- the upstream-style recipe

class UpstreamMaps:
    """attn_hook keeping, per double block, the fp32 head-mean softmax over target keys of EVERY
    reference token ([B, K*Nr, Nt]), as upstream does; under checkpointing its intermediates are
    recomputed in backward, as upstream computes them inside the checkpointed block."""

    def __init__(self, recompute: bool):
        self.recompute, self.maps = recompute, {}

    @staticmethod
    def _map(q_ref, k_tgt):
        scores = q_ref.float() @ k_tgt.float().transpose(-1, -2) / q_ref.shape[-1] ** 0.5
        return scores.softmax(-1).mean(1)

    def __call__(self, i, q, k, layout):
        args = (q[:, :, layout.ref_start:], k[:, :, layout.target])
        use_ckpt = self.recompute and torch.is_grad_enabled()
        a = checkpoint(self._map, *args, use_reentrant=False) if use_ckpt else self._map(*args)
        self.maps.setdefault(i, a)


def _jsd(p, q, eps=1e-8):
    m = 0.5 * (p + q)
    kl_pm = (p * (p.add(eps).log() - m.add(eps).log())).sum()
    kl_qm = (q * (q.add(eps).log() - m.add(eps).log())).sum()
    return 0.5 * (kl_pm + kl_qm)


def upstream_losses(maps: UpstreamMaps, coords: list[dict[int, int]], ref_len: int):
    """(align, sep) as upstream train.py computes them for one sample."""
    attn = torch.stack(list(maps.maps.values())).mean(0).squeeze(0)  # [K*Nr, Nt]
    losses = []
    for ref_idx, pairs in enumerate(coords):
        for local, tgt in pairs.items():
            pred = attn[ref_idx * ref_len + local]
            target = torch.tensor([tgt], device=pred.device)
            losses.append(F.nll_loss(torch.log(pred + 1e-9).unsqueeze(0), target))
    align = torch.stack(losses).mean()
    n = attn.shape[0] // ref_len
    avg = attn.view(n, ref_len, -1).mean(1)
    sep = sum(_jsd(avg[i], avg[j]) for i in range(n) for j in range(i + 1, n)) / (n * (n - 1) / 2)
    return align, -sep


# ---------------------------------------------------------------- one benchmark

def make_inputs(model, p, k, gen):
    dev, dt = p["device"], p["dtype"]
    nt, nr = p["grid"][0] * p["grid"][1], p["ref_grid"][0] * p["ref_grid"][1]
    tcfg = model.transformer.config
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dev, dt)  # noqa: E731
    ref_tokens = torch.stack([torch.randperm(nr, generator=gen)[:p["points"]] for _ in range(k)])[None]
    batch = {"ref_tokens": ref_tokens.to(dev),
             "target_tokens": torch.randint(0, nt, ref_tokens.shape, generator=gen).to(dev),
             "point_mask": torch.ones(ref_tokens.shape, dtype=torch.bool, device=dev),
             "ref_mask": torch.ones(1, k, dtype=torch.bool, device=dev)}
    coords = [dict(zip(r.tolist(), t.tolist())) for r, t in zip(batch["ref_tokens"][0], batch["target_tokens"][0])]
    x0, noise = rnd(1, nt, model.in_channels), rnd(1, nt, model.in_channels)
    t = torch.rand(1, generator=gen).to(dev, dt)
    inputs = dict(target=(1 - t) * x0 + t * noise, refs=rnd(1, k, nr, model.in_channels), ref_mask=batch["ref_mask"],
                  text=rnd(1, p["text"], tcfg.joint_attention_dim), pooled=rnd(1, tcfg.pooled_projection_dim),
                  timestep=t, target_grid=p["grid"], ref_grid=p["ref_grid"])
    return inputs, (noise - x0).float(), batch, coords, nr


def run_arm(arm, model, opt, inputs, velocity, batch, coords, nr, recompute):
    opt.zero_grad(set_to_none=True)
    hook = None
    if arm in ("mosaic", "mosaic-upstream"):
        cfg = LossConfig.preset("paper" if arm == "mosaic" else "upstream-code")
        hook = AttentionProbe(cfg, batch, recompute=recompute)
    elif arm == "upstream-style":
        hook = UpstreamMaps(recompute)
    loss = F.mse_loss(model(**inputs, attn_hook=hook).float(), velocity)
    if arm in ("mosaic", "mosaic-upstream"):
        loss = loss + correspondence_losses(hook, batch, step=20_000)["loss"]  # past the upstream beta ramp
    elif arm == "upstream-style":
        align, sep = upstream_losses(hook, coords, nr)
        loss = loss + 0.1 * align + 1.0 * sep
    loss.backward()
    opt.step()


@torch.no_grad()
def cross_check(model, inputs, batch, coords, nr):
    """Same forward, both recipes: the vectorised upstream-code preset vs the upstream loops."""
    probe, up = AttentionProbe(LossConfig.preset("upstream-code"), batch), UpstreamMaps(False)
    model(**inputs, attn_hook=lambda *a: (probe(*a), up(*a)))
    ours = correspondence_losses(probe, batch, step=20_000)
    align, sep = upstream_losses(up, coords, nr)
    return (ours["scal"].item(), align.item()), (ours["mdl"].item(), sep.item())


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dry", "--smoke", action="store_true",
                    help="the cuda profile's code path on CPU, debug size, one step")
    ap.add_argument("--json", type=Path, help="also write the figures (one row per K and arm) here")
    ap.add_argument("--ks", type=int, nargs="+", help="numbers of references (default: per profile)")
    ap.add_argument("--points", type=int, help="annotated points per reference")
    ap.add_argument("--steps", type=int, help="timed steps per arm")
    ap.add_argument("--warmup", type=int, help="untimed steps per arm first")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args(argv)
    p = dict(PROFILES["dry" if args.dry else args.device])
    for key in ("ks", "points", "steps", "warmup"):
        if getattr(args, key) is not None:
            p[key] = tuple(getattr(args, key)) if key == "ks" else getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = p["device"]
    if dev == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN attention failed in backward on FLUX shapes (gpu-notes)

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(p["dtype"])  # build the weights directly in the run dtype, on the run device
    try:
        model = build_model(p["flavour"], lora=LoraSpec(rank=args.lora_rank), dtype=p["dtype"], device=dev,
                            gradient_checkpointing=p["checkpointing"], max_refs=max(p["ks"]))
    finally:
        torch.set_default_dtype(default_dtype)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-6)
    nt, nr = p["grid"][0] * p["grid"][1], p["ref_grid"][0] * p["ref_grid"][1]
    print(f"device={torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'} ({torch.get_num_threads()} threads) "
          f"flavour={p['flavour']} dtype={str(p['dtype']).removeprefix('torch.')} checkpointing={p['checkpointing']} "
          f"text={p['text']} target={nt} tokens, refs of {nr} tokens, points/ref={p['points']}, batch 1, "
          f"lora rank {args.lora_rank}, {p['steps']} timed + {p['warmup']} warm-up steps per arm (medians)")
    print(f"{'K':>2} {'arm':<16} {'median s':>9} {'x plain':>8} {'peak GiB':>9}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for k in p["ks"]:
        inputs, velocity, batch, coords, nr = make_inputs(model, p, k, gen)
        (s_ours, s_up), (m_ours, m_up) = cross_check(model, inputs, batch, coords, nr)
        times = {a: [] for a in ARMS}
        peak = dict.fromkeys(ARMS, 0)
        for s in range(p["warmup"] + p["steps"]):
            for arm in ARMS:
                if dev == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync(dev)
                t0 = time.perf_counter()
                run_arm(arm, model, opt, inputs, velocity, batch, coords, nr, recompute=p["checkpointing"])
                sync(dev)
                if s >= p["warmup"]:
                    times[arm].append(time.perf_counter() - t0)
                if dev == "cuda":
                    peak[arm] = max(peak[arm], torch.cuda.max_memory_allocated() / 2**30)
        base = statistics.median(times["plain"])
        for arm in ARMS:
            med = statistics.median(times[arm])
            mem = f"{peak[arm]:9.2f}" if dev == "cuda" else f"{'-':>9}"
            print(f"{k:>2} {arm:<16} {med:9.4f} {med / base:8.3f} {mem}")
            rows.append({"k": k, "arm": arm, "median_s": med, "x_plain": med / base,
                         "peak_gib": peak[arm] if dev == "cuda" else None})
        print(f"   check (no grad): SCAL upstream-code preset {s_ours:.6f} vs upstream loop {s_up:.6f}; "
              f"MDL {m_ours:.6f} vs {m_up:.6f}")
    if args.json:
        info = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                "flavour": p["flavour"], "dtype": str(p["dtype"]).removeprefix("torch."), "lora_rank": args.lora_rank,
                "steps": p["steps"], "warmup": p["warmup"], "points": p["points"]}
        atomic_write(args.json, json.dumps({**info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
