"""Why is reference leakage bounded in the tiny world? Probes one trained run's attention, block by block.

MDL can only keep a reference's attention on its own subject if the reference's queries can tell
that subject's target tokens from the other subjects' by content (the reference does not know
where its subject is). This script measures, on a val split at timestep t, for every double block:

- key separability: nearest-centroid accuracy of target tokens to their subject, using only the
  position-free key dimensions (RoPE axis 0, whose id is 0 for every image token); chance 1/K;
- query -> own subject: how often the mean query of a reference's annotated tokens is closer (cosine,
  same dimensions) to its own subject's key centroid than to the others';
- learned subject leakage: the share of the reference's on-subject attention landing on other
  subjects (mosaic.inference.mechanism), for the run's own queries;
- oracle subject leakage: the same for the best content-only query one could give each reference,
  |q| * unit(own centroid - mean of the other centroids) in the position-free dimensions, at the
  query norm the model uses (its q/k RMSNorm fixes it). A bound on what a reference branch of this
  size could reach by content alone; the gap to the learned value is what training leaves.

    python bench/identity_probe.py RUN --val DATASET [--t 0.1] [--n 24]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from mosaic.config import load_config
from mosaic.data.dataset import collate
from mosaic.losses import reference_attention, reference_distributions
from mosaic.inference.attention_scores import mask_shares, subject_leakage
from mosaic.inference.sampler import Sampler
from mosaic.data.dataset import load_dataset
from mosaic.flow import encode_batch


def probe(run: Path, val: Path, t: float, n: int) -> list[dict[str, float]]:
    s = Sampler.from_run(run, "cpu")
    cfg = load_config(run / "config.yaml")
    ds = load_dataset(str(val), cfg, s.parts.codec, s.model.max_refs)
    b = collate([ds[i] for i in range(min(n, len(ds)))])
    enc = encode_batch(s.parts, b, b["prompt"], with_refs=True)
    seen = {}
    xt = (1 - t) * enc.x0 + t * torch.randn(enc.x0.shape, generator=torch.Generator().manual_seed(0))
    nb = len(xt)
    guidance = torch.full((nb,), s.guidance) if s.model.transformer.config.guidance_embeds else None
    with torch.no_grad():
        s.model(xt, enc.refs, enc.ref_mask, enc.text, enc.pooled, torch.full((nb,), t), guidance,
                target_grid=enc.target_grid, ref_grid=enc.ref_grid, attn_hook=lambda i, q, k, lay: seen.update(
                    {i: (q, k, lay)}), **(s.parts.ext.forward_kwargs(s.model, b, b["prompt"], enc) if s.parts.ext else {}))
    content = s.model.transformer.config.axes_dims_rope[0]
    masks, valid = b["token_masks"].flatten(2), b["point_mask"].any(-1)
    rows = []
    for i, (q, k, lay) in sorted(seen.items()):
        tgt = k[:, :, lay.n_text:lay.n_text + lay.n_target]  # [B, H, Nt, d]
        qn = q[:, :, lay.ref_start:].norm(dim=-1).mean()
        oracle = torch.zeros(masks.shape)
        sep = [0, 0]
        own_q = [0, 0]
        for j in range(nb):
            kk = int(b["ref_mask"][j].sum())
            own = masks[j, :kk].float()
            cent = torch.einsum("kn,hnd->khd", own, tgt[j]) / own.sum(-1).clamp_min(1)[:, None, None]
            cc = F.normalize(cent[..., :content].flatten(1), dim=-1)  # [K, H*c]
            single = own.sum(0) == 1
            feats = F.normalize(tgt[j][:, single, :content].permute(1, 0, 2).flatten(1), dim=-1)
            sep[0] += int(((feats @ cc.T).argmax(-1) == own[:, single].argmax(0)).sum())
            sep[1] += int(single.sum())
            for r in range(kk):
                pts = b["ref_tokens"][j, r][b["point_mask"][j, r]]
                if len(pts):
                    qr = q[j, :, lay.ref_start + r * lay.n_ref + pts, :content].mean(1).flatten()
                    own_q[0] += int((F.normalize(qr, dim=0) @ cc.T).argmax() == r)
                    own_q[1] += 1
                direction = cent[r] - (cent.sum(0) - cent[r]) / max(kk - 1, 1)
                direction[:, content:] = 0
                logits = torch.einsum("hd,hnd->hn", qn * F.normalize(direction, dim=-1), tgt[j]) / q.shape[-1] ** 0.5
                oracle[j, r] = logits.softmax(-1).mean(0)
        learned = reference_distributions(reference_attention(q, k, lay, b["ref_tokens"], "target"), b["point_mask"])
        row = {"block": i, "key_separability": sep[0] / max(sep[1], 1), "query_to_own": own_q[0] / max(own_q[1], 1)}
        for name, a in (("learned", learned), ("oracle", oracle)):
            leak, own_share = mask_shares(a, masks, b["ref_mask"], valid)
            row[f"{name}_subject_leakage"] = float(subject_leakage(leak, own_share).mean())
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a finished `mosaic train` output folder (LoRA mode)")
    p.add_argument("--val", type=Path, required=True, help="a dataset with K >= 2 subjects per sample")
    p.add_argument("--t", type=float, default=0.1)
    p.add_argument("--n", type=int, default=24, help="val samples")
    args = p.parse_args()
    rows = probe(args.run, args.val, args.t, args.n)
    print(f"{args.run} on {args.val}, t={args.t:g}, {args.n} samples (chance: separability and query->own 1/K, "
          "subject leakage (K-1)/K)")
    print(f"{'block':>5} {'key separability':>17} {'query->own':>11} {'learned subj.leak':>18} {'oracle subj.leak':>17}")
    for r in rows:
        print(f"{r['block']:>5} {r['key_separability']:>17.3f} {r['query_to_own']:>11.3f} "
              f"{r['learned_subject_leakage']:>18.3f} {r['oracle_subject_leakage']:>17.3f}")


if __name__ == "__main__":
    main()
