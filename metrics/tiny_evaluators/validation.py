"""The check that the tiny-world evaluators mean something, on identities training never saw.

Why it exists: a trained evaluator is only worth its numbers if it separates subjects it was not
trained on. On test-split identities this measures the ROC-AUC of same- vs different-subject
similarity over views (references and single-subject scenes in other poses and backgrounds), and
CLIP's caption->image top-1 retrieval. Their numbers are tiny-world numbers: comparable within
this world only.
"""
from __future__ import annotations

import numpy as np

from mosaic.data.synthetic import SyntheticConfig

from ..clip import ClipModel
from ..dino import DinoModel
from .world import View, views


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC (ties count one half)."""
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def same_subject_auc(emb: np.ndarray, ids: list[str], kinds: list[str] | None = None,
                     pair: tuple[str, str] | None = None) -> float:
    """ROC-AUC of cosine similarity for same- vs different-subject pairs of views; `pair`
    restricts to pairs of those view kinds (e.g. ("reference", "scene"))."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim, ids = e @ e.T, np.asarray(ids)
    i, j = np.triu_indices(len(ids), 1)
    keep = np.ones(len(i), bool)
    if pair is not None:
        k = np.asarray(kinds)
        keep = ((k[i] == pair[0]) & (k[j] == pair[1])) | ((k[i] == pair[1]) & (k[j] == pair[0]))
    same = ids[i] == ids[j]
    return roc_auc(sim[i, j][keep & same], sim[i, j][keep & ~same])


def held_out_views(n_samples: int = 400, seed: int = 1, per_subject: int = 4,
                   cfg: SyntheticConfig | None = None) -> list[View]:
    """Up to `per_subject` views of each test identity: references and single-subject targets."""
    by_id: dict[str, list[View]] = {}
    for v in views("test", n_samples, seed, k_max=1, cfg=cfg):
        by_id.setdefault(v.subject_id, []).append(v)
    return [v for vs in by_id.values() for v in vs[:per_subject]]


def _auc_rows(name: str, emb: np.ndarray, held_out: list[View]) -> dict[str, float]:
    ids = [v.subject_id for v in held_out]
    kinds = ["reference" if v.caption == v.phrase else "scene" for v in held_out]
    return {f"{name}_auc_all_pairs": same_subject_auc(emb, ids),
            f"{name}_auc_reference_pairs": same_subject_auc(emb, ids, kinds, ("reference", "reference")),
            f"{name}_auc_reference_vs_scene": same_subject_auc(emb, ids, kinds, ("reference", "scene"))}


def check_clip(clip: ClipModel, held_out: list[View]) -> dict[str, float]:
    """Same-subject ROC-AUC over all view pairs, reference pairs and reference-scene pairs;
    caption->image top-1 over one reference per identity (with its chance level)."""
    emb = clip.embed([v.image for v in held_out])
    result = _auc_rows("clip", emb, held_out)
    gallery = {}  # one reference view per identity
    for v, e in zip(held_out, emb):
        if v.caption == v.phrase:
            gallery.setdefault(v.subject_id, (v.phrase, e))
    phrases = [p for p, _ in gallery.values()]
    queries = sorted(set(phrases))
    top = (clip.embed_text(queries) @ np.stack([e for _, e in gallery.values()]).T).argmax(1)
    result["clip_caption_top1"] = float(np.mean([phrases[t] == q for q, t in zip(queries, top)]))
    result["clip_caption_top1_chance"] = float(np.mean([phrases.count(q) / len(phrases) for q in queries]))
    result["n_queries"] = len(queries)
    return result


def check_evaluators(clip: ClipModel, dino: DinoModel, held_out: list[View]) -> dict[str, float]:
    """`check_clip`, and the same-subject ROC-AUCs of DINO, on held-out views."""
    result = check_clip(clip, held_out)
    result.update(_auc_rows("dino", dino.embed([v.image for v in held_out]), held_out))
    result.update(n_views=len(held_out), n_identities=len({v.subject_id for v in held_out}))
    return result
