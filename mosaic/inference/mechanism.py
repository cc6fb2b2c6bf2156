"""Does the trained model attend where the correspondences say? Held-out mechanism evaluation.

Why it exists: SCAL should make each annotated reference token attend to its corresponding
target token, and MDL should keep each reference's attention off the other subjects. These
are measured directly on the val split after training, at fixed timesteps and seeded noise,
with the same attention map the losses use (head- and block-averaged, softmax over target
keys, the blocks of `loss.blocks`), scored by the pure functions of mosaic.inference.attention_scores:

- alignment accuracy: the share of annotated reference points whose argmax target token is
  within 1 token (Chebyshev distance on the token grid) of the ground-truth token;
- leakage: for each reference, a = the normalised mean of its annotated points' attention
  rows over the target (MDL's a^(k)); leakage is the share of a inside the target-token
  masks of the sample's other subjects (its own tokens excluded), averaged over references;
  `leakage_chance` is the same for a uniform distribution (the share other subjects cover),
  `own_share` the share of a inside the reference's own subject mask;
- subject leakage: leakage / (leakage + own share), the share of a reference's mass ON SUBJECTS
  that lands on the wrong ones, with `subject_leakage_chance` its value for uniform attention
  (the other subjects' share of all subject tokens, about (K-1)/K). Plain leakage rises whenever
  attention moves from the background onto subjects, grounded or not (SCAL does exactly that),
  so it cannot tell "attends to its own subject" from "attends to every subject"; subject
  leakage can: it sits at its chance value when a reference does not know which subject is its.

It also draws, for a few val samples, each reference's a^(k) over the target image
(ground-truth mask as a contour).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .attention_scores import mask_shares, point_hits, subject_leakage
from ..components import Components
from ..config import Config
from ..data.dataset import collate
from ..flow import add_noise, encode_batch, guidance_for, step_generator, velocity
from ..losses import AttentionProbe, LossConfig, reference_distributions
from ..infra.runfolder import ATTENTION_FIGURE, METRICS_FILE, atomic_file, atomic_write


@torch.no_grad()
def attention(model, enc, batch: dict[str, Any], t: float, blocks, g: torch.Generator, guidance, ext=None):
    """(point maps [B, K, P, Nt], per-reference distributions a [B, K, Nt]) at timestep t."""
    noise = torch.randn(enc.x0.shape, generator=g).to(enc.x0)
    xt = add_noise(enc.x0, noise, t)
    probe = AttentionProbe(LossConfig(normalize_over="target", blocks=blocks), batch)
    extra = ext.forward_kwargs(model, batch, batch["prompt"], enc) if ext is not None else {}
    velocity(model, enc, xt, torch.full((len(xt),), t, device=xt.device).to(xt), guidance, probe, extra)
    pm = probe.point_maps()
    return pm, reference_distributions(pm, batch["point_mask"].to(pm.device))


def evaluate(parts: Components, dataset, cfg: Config) -> tuple[dict[str, float], list]:
    """Metrics per timestep and overall, plus the figure rows (target, references, masks, a) of the
    first `eval.figure_samples` samples at the middle timestep."""
    model = parts.model
    n = len(dataset) if cfg.eval.max_samples is None else min(cfg.eval.max_samples, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=cfg.train.batch_size, collate_fn=collate)
    ts = cfg.eval.timesteps
    hits, counts, leaks, owns = np.zeros(len(ts)), np.zeros(len(ts)), [[] for _ in ts], [[] for _ in ts]
    chance, own_chance = [], []  # leakage / own share of a uniform distribution over the target
    figure = []
    was_training = model.training
    model.eval()
    for i, batch in enumerate(loader):
        enc = encode_batch(parts, batch, batch["prompt"], with_refs=True)
        valid = batch["point_mask"].any(-1)
        token_masks = batch["token_masks"].flatten(2)
        uniform = mask_shares(torch.ones(token_masks.shape), token_masks, batch["ref_mask"], valid)
        chance.append(uniform[0])
        own_chance.append(uniform[1])
        nb = len(batch["prompt"])
        guidance = guidance_for(model, nb, cfg.train.guidance, parts.device)
        for j, t in enumerate(ts):
            pm, a = attention(model, enc, batch, t, cfg.loss.blocks, step_generator(cfg.train.seed, 2**31 + i, j),
                              guidance, parts.ext)
            hit = point_hits(pm.cpu(), batch["target_tokens"], enc.target_grid) & batch["point_mask"]
            hits[j] += int(hit.sum())
            counts[j] += int(batch["point_mask"].sum())
            leak, own = mask_shares(a.cpu(), token_masks, batch["ref_mask"], valid)
            leaks[j].append(leak)
            owns[j].append(own)
            if j == len(ts) // 2 and len(figure) < cfg.eval.figure_samples:
                for b in range(min(nb, cfg.eval.figure_samples - len(figure))):
                    k = int(batch["ref_mask"][b].sum())
                    figure.append((batch["target"][b], batch["refs"][b, :k], batch["masks"][b, :k],
                                   a[b, :k].cpu().float().reshape(k, *enc.target_grid), valid[b, :k]))
    model.train(was_training)
    out: dict[str, float] = {}

    def subject(leak: list, own: list) -> float:
        return float(subject_leakage(torch.cat(leak), torch.cat(own)).mean()) if leak else float("nan")

    for j, t in enumerate(ts):
        out[f"mech/alignment_acc/t{t:g}"] = hits[j] / max(counts[j], 1)
        out[f"mech/leakage/t{t:g}"] = float(torch.cat(leaks[j]).mean()) if leaks[j] else float("nan")
        out[f"mech/subject_leakage/t{t:g}"] = subject(leaks[j], owns[j])
    out["mech/alignment_acc"] = float(hits.sum() / max(counts.sum(), 1))
    out["mech/leakage"] = float(torch.cat([x for l in leaks for x in l]).mean()) if any(leaks) else float("nan")
    out["mech/own_share"] = float(torch.cat([x for o in owns for x in o]).mean()) if any(owns) else float("nan")
    out["mech/leakage_chance"] = float(torch.cat(chance).mean()) if chance else float("nan")
    out["mech/own_share_chance"] = float(torch.cat(own_chance).mean()) if own_chance else float("nan")
    out["mech/subject_leakage"] = subject([x for l in leaks for x in l], [x for o in owns for x in o])
    out["mech/subject_leakage_chance"] = subject(chance * len(ts), own_chance * len(ts))
    out["mech/points"] = float(counts[0])
    out["mech/samples"] = float(n)
    return out, figure


def draw_figure(rows: list, path: Path, title: str) -> Path:
    """Two rows per sample: its references, and under each one the target with that reference's
    attention distribution a^(k) overlaid (a heat map, scaled to its maximum) and the subject's
    ground-truth mask as a contour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kmax = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(2 * len(rows), kmax, figsize=(1.8 * kmax, 3.6 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat_map = plt.get_cmap("inferno")
    for i, (target, refs, masks, a, valid) in enumerate(rows):
        grey = ((target.permute(1, 2, 0).numpy() + 1) / 2).mean(-1, keepdims=True)
        h, w = grey.shape[:2]
        for k in range(len(refs)):
            axes[2 * i, k].imshow(np.clip((refs[k].permute(1, 2, 0).numpy() + 1) / 2, 0, 1))
            axes[2 * i, k].set_title(f"sample {i} ref {k}", fontsize=7)
            if not valid[k]:
                continue
            heat = a[k].numpy() / max(float(a[k].max()), 1e-12)
            heat = np.kron(heat, np.ones((h // heat.shape[0], w // heat.shape[1])))
            ax = axes[2 * i + 1, k]
            ax.imshow(np.clip(0.4 * grey + 0.6 * heat_map(heat)[..., :3], 0, 1))
            ax.contour(masks[k].numpy().astype(float), levels=[0.5], colors=["cyan"], linewidths=1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path


def evaluate_run(parts: Components, dataset, cfg: Config, out: Path, logger) -> dict[str, float]:
    """Evaluate on the val dataset, write mechanism.json and the figure, log both to MLflow (`logger`: None or
    the run's MLflow logger)."""
    results, rows = evaluate(parts, dataset, cfg)
    atomic_write(out / METRICS_FILE, json.dumps(results, indent=2, sort_keys=True))
    fig = draw_figure(rows, out / ATTENTION_FIGURE, f"{cfg.variant}: reference -> target attention, "
                      f"t={cfg.eval.timesteps[len(cfg.eval.timesteps) // 2]:g}") if rows else None
    if logger:
        logger.log_metrics(results, cfg.train.steps)
        logger.flush()
        logger.log_artifact(out / METRICS_FILE)
        if fig:
            logger.log_artifact(fig)
    return results
