"""Does a trained LoRA read its references? Its diffusion loss with each scene's own references, with another
scene's, and with none.

    python bench/reference_use.py RUN [RUN ...] --data DIR [--n 48] [--t 0.3 0.6 0.9] [--seed 0]

For each run folder (`mosaic train` output) and each t, the flow-matching loss (velocity MSE, the trainer's) over
the first `n` scenes of a dataset folder (a seeded shuffle), with the same noise in every arm:
  own    the scene's own references (what training sees);
  other  the references of another scene of the batch (rolled by one);
  none   no references: the base's prompt-only prediction through the same model.
A LoRA that copies its references has own < none < other: its references lower the loss, and wrong ones
raise it. own ~ other ~ none means the references are ignored. Also printed: the share of the loss on the
subjects' tokens with no references (`subject share`, from the dataset's masks): what copying could remove
at most. Issue 22 used it to find why the tiny LoRAs did not copy (docs/tiny_base_design.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("own", "other", "none")


def other_scene(enc):
    """`enc` with every scene given the next scene's references (a batch of at least two)."""
    if enc.refs.shape[0] < 2:
        raise ValueError("the 'other' arm needs batches of at least two scenes")
    return dataclasses.replace(enc, refs=enc.refs.roll(1, 0), ref_mask=enc.ref_mask.roll(1, 0))


@torch.no_grad()
def reference_losses(sampler, dataset, n: int, ts, seed: int = 0, batch: int = 8) -> dict:
    """{(t, arm): mean velocity MSE} and {(t, "subject share"): share of the no-reference loss on subject tokens}."""
    from mosaic.data.dataset import collate
    from mosaic.flow import add_noise, encode_batch, guidance_for, velocity

    model, dev, dt = sampler.model, sampler.parts.device, sampler.parts.dtype
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    sums: dict = {}
    for j in range(0, len(order), batch):  # each batch is encoded once and noised once, for every t
        b = collate([dataset[i] for i in order[j:j + batch]])
        enc = encode_batch(sampler.parts, b, b["prompt"], with_refs=True)
        noise = torch.randn(enc.x0.shape, generator=torch.Generator().manual_seed(seed * 100003 + j)).to(enc.x0)
        arms = {"own": enc, "other": other_scene(enc) if len(b["prompt"]) > 1 else None,
                "none": dataclasses.replace(enc, refs=None, ref_mask=None, ref_grid=None)}
        on = b["token_masks"].any(1).flatten(1).to(enc.x0)  # [B, Nt]: tokens of some subject
        g = guidance_for(model, len(b["prompt"]), sampler.guidance, dev, dt)
        for t in ts:
            tt = torch.full((enc.x0.shape[0],), float(t), device=dev, dtype=dt)
            xt = add_noise(enc.x0, noise, tt)
            for arm, e in arms.items():
                if e is None:
                    continue
                err = ((velocity(model, e, xt, tt, g).float() - (noise - enc.x0).float()) ** 2).mean(-1)  # [B, Nt]
                sums[(t, arm)] = sums.get((t, arm), 0.0) + err.sum().item() / err.shape[1]
                if arm == "none":
                    sums[(t, "subject")] = sums.get((t, "subject"), 0.0) + (err * on).sum().item() / err.shape[1]
    out = {key: v / len(order) for key, v in sums.items() if key[1] != "subject"}
    for t in ts:
        out[(t, "subject share")] = sums[(t, "subject")] / sums[(t, "none")]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="`mosaic train` LoRA run folders")
    p.add_argument("--data", required=True, type=Path, help="a dataset folder (e.g. results/data/synthetic/val)")
    p.add_argument("--n", type=int, default=48, help="scenes (default 48)")
    p.add_argument("--t", type=float, nargs="+", default=[0.3, 0.6, 0.9], help="noise levels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mosaic.config import load_config
    from mosaic.data.dataset import load_dataset
    from mosaic.inference.sampler import Sampler

    print("| run | t | own | other | none | own / none - 1 | subject share |\n|---|---|---|---|---|---|---|")
    for run in args.runs:
        sampler = Sampler.from_run(run, "cpu")
        ds = load_dataset(args.data, load_config(run / "config.yaml"), sampler.parts.codec, sampler.model.max_refs)
        res = reference_losses(sampler, ds, args.n, args.t, args.seed)
        for t in args.t:
            own, other, none = (res.get((t, a), float("nan")) for a in ARMS)
            print(f"| {run} | {t:g} | {own:.4f} | {other:.4f} | {none:.4f} | {own / none - 1:+.1%} "
                  f"| {res[(t, 'subject share')]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
