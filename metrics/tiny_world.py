"""Tiny-world evaluators: a CLIP and a DINO trained on the synthetic world, and their check.

No pretrained CLIP or DINO weights exist offline, so the tiny profile trains its own through
the same classes the metrics load (open_clip `CLIP`, a timm `VisionTransformer`), on
train-split identities only:
- CLIP: contrastive on whole scenes captioned with their prompts and on subject crops
  captioned with their phrases. The crops (`train_clip`) come from scenes and from
  references pasted onto scene-sized canvases, at scales from tight to the whole image, on
  redrawn backgrounds and, half the time, recoloured: so a subject's embedding does not
  depend on its size or background (CLIP-I compares a whole generated scene with a
  reference; trained on references and whole scenes only, test reference-vs-scene AUC
  stayed at 0.76-0.81);
- DINO: self-distillation (student / EMA teacher, centring, sharpened teacher, 2 global and
  4 local crops), no labels. One deviation from DINO's recipe, recorded here: the two global
  crops come from two renderings of one subject (its reference and a single-subject scene)
  rather than from one photo, because the synthetic world can render a subject twice; with
  single-image crops the 2-core budget did not reach a useful model.
`check_evaluators` proves they mean something on test-split identities, which training
never saw: ROC-AUC of same- vs different-subject similarity over views (references and
single-subject scenes in other poses and backgrounds), and caption->image top-1 retrieval.
Their numbers are tiny-world numbers: comparable within this world only.
`train_evaluators(out)` writes `clip/` and `dino/` (loadable as `local-dir:` models),
`metrics_config.json` (the tiny profile's metrics config) and `validation.json`.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mosaic.data.synthetic import BACKGROUNDS, COLOURS, PATTERNS, SyntheticConfig, generate_sample, identities

from .clip import ClipModel
from .dino import CONFIG_FILE, IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_FILE, DinoModel, build_vit

CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 2, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
DINO_MODEL = "vit_tiny_patch16_224"
DINO_KWARGS: dict[str, Any] = {"img_size": 48, "patch_size": 8, "embed_dim": 96, "depth": 3, "num_heads": 3,
                               "dynamic_img_size": True}
DINO_PREPROCESS = {"resize": 48, "crop": 48, "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass
class View:
    image: np.ndarray  # uint8 [h, w, 3]
    caption: str
    subject_id: str  # "" for multi-subject targets
    phrase: str


def views(split: str, n: int, seed: int, k_max: int = 3, cfg: SyntheticConfig | None = None) -> list[View]:
    """References (phrase captions) and targets (prompt captions) of `n` synthetic samples;
    single-subject targets keep their subject id, so they count as views of it."""
    out = []
    for i in range(n):
        s = generate_sample(seed, split, i, 1 + i % k_max, cfg)
        out += [View(r.image, r.phrase, r.subject_id, r.phrase) for r in s.references]
        solo = s.k == 1
        out.append(View(s.target, s.prompt, s.references[0].subject_id if solo else "",
                        s.references[0].phrase if solo else ""))
    return out


@dataclass
class Canvas:
    """A target-sized training image for CLIP: a scene, or a reference pasted onto its own
    background; `masks` locate its subjects, `subjects[j]` names subject j's shape, pattern and
    colours, `prompt` (scenes only) describes the whole image."""
    image: np.ndarray  # uint8 [s, s, 3]
    masks: np.ndarray  # bool [k, s, s]
    subjects: list[dict[str, str]]  # shape, pattern, primary, secondary
    prompt: str = ""


def _an(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def captions(s: dict[str, str]) -> tuple[str, str]:
    """A subject's captions: its prompt phrase (as the world writes it), and the phrase with both colours."""
    phrase = _an(f"{s['primary']} {PATTERNS[s['pattern']]} {s['shape']}")
    return phrase, f"{phrase} in {s['primary']} and {s['secondary']}"


def clip_canvases(split: str, n: int, seed: int, k_max: int = 3, cfg: SyntheticConfig | None = None) -> list[Canvas]:
    """Each sample's scene (its subjects located by the ground-truth masks) and each of its
    references pasted at a random place onto a scene-sized canvas of the reference's own plain
    background, so subject crops of either come at every scale the metrics meet."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for i in range(n):
        s = generate_sample(seed, split, i, 1 + i % k_max, cfg)
        subjects = [{k: m[k] for k in ("shape", "pattern", "primary", "secondary")} for m in s.meta["subjects"]]
        if any(captions(m)[0] != r.phrase for m, r in zip(subjects, s.references)):
            raise ValueError(f"{s.id}: captions() does not reproduce the world's subject phrases")
        out.append(Canvas(s.target, s.masks, subjects, s.prompt))
        size = s.target.shape[0]
        for r, m in zip(s.references, subjects):
            h, w = r.image.shape[:2]
            canvas = np.broadcast_to(r.image[0, 0], (size, size, 3)).copy()
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            canvas[y:y + h, x:x + w] = r.image
            mask = np.zeros((1, size, size), bool)
            mask[0, y:y + h, x:x + w] = (r.image != r.image[0, 0]).any(-1)
            out.append(Canvas(canvas, mask, [m]))
    return out


_COLOURS = {k: torch.tensor(v, dtype=torch.float32) / 255 for k, v in COLOURS.items()}


def _recolour(img: torch.Tensor, mask: torch.Tensor, s: dict[str, str], new: dict[str, str]) -> torch.Tensor:
    """The subject in `mask` repainted from colours (primary, secondary) to `new`'s: each pixel
    is primary + t (secondary - primary) for a texture value t, which is kept."""
    p, q = _COLOURS[s["primary"]][:, None], _COLOURS[s["secondary"]][:, None]
    pix = img[:, mask]
    t = (((pix - p) * (q - p)).sum(0) / ((q - p) ** 2).sum()).clamp(0, 1)
    out = img.clone()
    out[:, mask] = _COLOURS[new["primary"]][:, None] * (1 - t) + _COLOURS[new["secondary"]][:, None] * t
    return out


def held_out_combinations(cfg: SyntheticConfig | None = None) -> tuple[set, set]:
    """(shape, pattern, primary, secondary) keys and prompt phrases of the val and test
    identities: a recoloured training subject never becomes one of these."""
    held = [i for split in ("val", "test") for i in identities(split, cfg)]
    return ({(i.shape, i.pattern, i.primary, i.secondary) for i in held}, {i.phrase for i in held})


def recoloured(s: dict[str, str], exclude: tuple[set, set], gen: torch.Generator) -> dict[str, str] | None:
    """`s` with two random distinct colours, or None where that is a held-out identity's
    (shape, pattern, colours) or phrase (`exclude`, from `held_out_combinations`)."""
    colours = list(COLOURS)
    a, b = torch.randint(len(colours), (1,), generator=gen), torch.randint(1, len(colours), (1,), generator=gen)
    new = {**s, "primary": colours[int(a)], "secondary": colours[(int(a) + int(b)) % len(colours)]}
    key = (new["shape"], new["pattern"], new["primary"], new["secondary"])
    return None if key in exclude[0] or captions(new)[0] in exclude[1] else new


_BG = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 255


def _random_background(size: int, gen: torch.Generator) -> torch.Tensor:
    """A scene background as the world draws them: a pale colour, plain, noisy or shaded."""
    bg = _BG[int(torch.randint(len(_BG), (1,), generator=gen))][:, None, None].expand(3, size, size).clone()
    texture = int(torch.randint(3, (1,), generator=gen))
    if texture == 1:
        bg += torch.randint(-8, 9, (1, size, size), generator=gen) / 255
    elif texture == 2:
        bg += torch.linspace(-12, 12, size)[:, None] / 255
    return bg.clamp(0, 1)


def _subject_crop(img: torch.Tensor, mask: torch.Tensor, out: int, zoom: tuple[float, float], gen: torch.Generator
                  ) -> torch.Tensor:
    """A square crop around the subject in `mask` (side: the subject's extent times a random
    factor in `zoom`, capped at the image; centre jittered), resized to `out`, randomly flipped."""
    size = img.shape[-1]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    u = torch.rand(3, generator=gen)
    side = min(size, max(8, round(max(y1 - y0, x1 - x0) * (zoom[0] + (zoom[1] - zoom[0]) * float(u[0])))))
    cy = (y0 + y1) / 2 + (float(u[1]) - 0.5) * 0.2 * side
    cx = (x0 + x1) / 2 + (float(u[2]) - 0.5) * 0.2 * side
    top = min(max(0, round(cy - side / 2)), size - side)
    left = min(max(0, round(cx - side / 2)), size - side)
    crop = F.interpolate(img[None, :, top:top + side, left:left + side], size=(out, out), mode="bicubic",
                         align_corners=False, antialias=True)[0].clamp(0, 1)
    return crop.flip(-1) if torch.rand(1, generator=gen) < 0.5 else crop


# ---------------------------------------------------------------- saving

def save_clip(net, folder: str | os.PathLike, model_cfg: dict[str, Any] | None = None) -> Path:
    """An open_clip `local-dir:` folder: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg or CLIP_CFG, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def save_dino(net, folder: str | os.PathLike, model: str = DINO_MODEL, model_kwargs: dict[str, Any] | None = None,
              preprocess: dict[str, Any] | None = None) -> Path:
    """A `local-dir:` folder `metrics.dino` loads: dino_config.json + model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model": model, "model_kwargs": model_kwargs or DINO_KWARGS, "preprocess": preprocess or DINO_PREPROCESS}
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def new_clip(seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**copy.deepcopy(CLIP_CFG))


def new_vit(seed: int = 0):
    torch.manual_seed(seed)
    return build_vit(DINO_MODEL, DINO_KWARGS)


# ---------------------------------------------------------------- training

def _to_tensor(images: list[np.ndarray], size: int, mean, std) -> torch.Tensor:
    """uint8 images -> [N, 3, size, size] normalised (bicubic, as the eval transforms)."""
    x = [F.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, size=(size, size),
                       mode="bicubic", align_corners=False, antialias=True)[0] for a in images]
    x = torch.stack(x).clamp(0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _random_crops(x: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """A random resized crop (aspect 3/4..4/3) of each image, plus a random horizontal flip."""
    n, _, h, w = x.shape
    out = []
    for i in range(n):
        area = h * w * float(torch.empty(1).uniform_(*scale, generator=gen))
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)))
        ch, cw = min(h, round(math.sqrt(area / ratio))), min(w, round(math.sqrt(area * ratio)))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        crop = F.interpolate(x[i:i + 1, :, y0:y0 + ch, x0:x0 + cw], size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
        out.append(crop.flip(-1) if torch.rand(1, generator=gen) < 0.5 else crop)
    return torch.cat(out)


def _multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """CLIP's symmetric contrastive loss, except that every pair whose captions are equal is a
    positive (a batch often holds several views of one subject under one caption)."""
    codes = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    c = torch.tensor([codes[k] for k in keys])
    target = (c[:, None] == c[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    logits = scale * img @ txt.T
    return -((target * logits.log_softmax(1)).sum(1).mean() + (target * logits.T.log_softmax(1)).sum(1).mean()) / 2


def train_clip(data: list[Canvas], seconds: float = math.inf, seed: int = 0, batch: int = 64, lr: float = 1e-3,
               max_steps: int | None = None, p_prompt: float = 0.35, zoom: tuple[float, float] = (1.0, 3.0),
               crowd_zoom: float = 1.4, p_background: float = 0.5, p_recolour: float = 0.5,
               cfg: SyntheticConfig | None = None, log=print):
    """Contrastive training of the tiny CLIP (open_clip's loss, with every equal-caption pair a
    positive); returns the model. Each batch:
    - a `p_prompt` share: whole scenes captioned with their prompts, which name every subject
      (with fewer, painting a subject out of a scene lowered CLIP-I's minimum less often);
    - the rest: subject crops (of scenes and of pasted references) captioned with the
      subject's phrase, or half the time with the phrase plus both its colours. A crop's side
      is `zoom` times the subject's extent, at most `crowd_zoom` times in multi-subject
      scenes (so that a crop's caption describes it). A `p_background` share gets a redrawn
      background. A `p_recolour` share is repainted in two other colours (and captioned so),
      never into a val or test identity's colours or phrase (`held_out_combinations`): the
      200 train identities alone tie each colour to a few shapes and patterns, so the model
      learns identities rather than words."""
    import open_clip

    net = new_clip(seed).train()
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=CLIP_CFG["text_cfg"]["context_length"])
    size = CLIP_CFG["vision_cfg"]["image_size"]
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    images = [torch.from_numpy(c.image).permute(2, 0, 1).float() / 255 for c in data]
    masks = [torch.from_numpy(c.masks) for c in data]
    subjects = [(i, j) for i, c in enumerate(data) for j in range(len(c.subjects))]
    scenes = [i for i, c in enumerate(data) if c.prompt]
    cache: dict[str, torch.Tensor] = {}
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.1, fused=True)  # fused: 8x faster on CPU
    gen = torch.Generator().manual_seed(seed)
    n_prompt = round(batch * p_prompt) if scenes else 0
    exclude = held_out_combinations(cfg)

    def rand(n: int) -> int:
        return int(torch.randint(n, (1,), generator=gen))

    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds and (max_steps is None or step < max_steps):
        xs, keys = [], []
        for n in torch.randint(len(scenes), (n_prompt,), generator=gen).tolist():
            i = scenes[n]
            xs.append(_subject_crop(images[i], torch.ones_like(masks[i][0]), size, (0.85, 1.0), gen))
            keys.append(data[i].prompt)
        for n in torch.randint(len(subjects), (batch - n_prompt,), generator=gen).tolist():
            i, j = subjects[n]
            img, s = images[i], data[i].subjects[j]
            if torch.rand(1, generator=gen) < p_recolour and (new := recoloured(s, exclude, gen)):
                img, s = _recolour(img, masks[i][j], s, new), new
            if torch.rand(1, generator=gen) < p_background:
                img = torch.where(masks[i].any(0), img, _random_background(img.shape[-1], gen))
            z = zoom if len(data[i].subjects) == 1 else (zoom[0], min(zoom[1], crowd_zoom))
            xs.append(_subject_crop(img, masks[i][j], size, z, gen))
            keys.append(captions(s)[rand(2)])
        for k in keys:
            if k not in cache:
                cache[k] = tok([k])[0]
        img_f, txt_f, scale = net((torch.stack(xs) - mean) / std, torch.stack([cache[k] for k in keys]))[:3]
        loss = _multi_positive_loss(img_f, txt_f, scale, keys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            net.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % 50 == 0:
            log(f"clip step {step} loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)")
    return net.eval()


class DinoHead(torch.nn.Module):
    def __init__(self, dim: int, out_dim: int = 1024, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.GELU(), torch.nn.Linear(hidden, bottleneck))
        self.last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


def rendering_pairs(split: str, n: int, seed: int, cfg: SyntheticConfig | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two renderings of one subject per sample: its reference and a single-subject scene
    (another pose, scale and background). DINO's global views are crops of these two."""
    out = []
    for i in range(n):
        s = generate_sample(seed, split, i, 1, cfg)
        out.append((s.references[0].image, s.target))
    return out


def train_dino(pairs: list[tuple[np.ndarray, np.ndarray]], seconds: float = math.inf, seed: int = 0, batch: int = 64,
               lr: float = 5e-4, max_steps: int | None = None, n_local: int = 4, student_temp: float = 0.1,
               teacher_temp: float = 0.04, center_momentum: float = 0.9, ema: float = 0.99, log=print):
    """DINO self-distillation of the tiny ViT; returns the teacher backbone (as DINO does).

    The two global crops come from the two renderings of a pair (pass (x, x) for DINO's
    single-image crops); the student also sees `n_local` small crops; the teacher only the
    global ones. Loss: cross-entropy of the centred, sharpened teacher over the student."""
    student = torch.nn.Sequential(new_vit(seed), DinoHead(DINO_KWARGS["embed_dim"]))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    size = DINO_KWARGS["img_size"]
    first = _to_tensor([a for a, _ in pairs], size, IMAGENET_MEAN, IMAGENET_STD)
    second = _to_tensor([b for _, b in pairs], size, IMAGENET_MEAN, IMAGENET_STD)
    center = torch.zeros(1, student[1].last.out_features)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.04)
    gen = torch.Generator().manual_seed(seed)
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds and (max_steps is None or step < max_steps):
        idx = torch.randperm(len(pairs), generator=gen)[:batch]
        globals_ = [_random_crops(first[idx], size, (0.4, 1.0), gen), _random_crops(second[idx], size, (0.4, 1.0), gen)]
        locals_ = [_random_crops((first, second)[j % 2][idx], size // 2, (0.1, 0.4), gen) for j in range(n_local)]
        with torch.no_grad():
            t_out = [teacher(g) for g in globals_]
            t_prob = [F.softmax((t - center) / teacher_temp, dim=-1) for t in t_out]
        s_logp = [F.log_softmax(student(v) / student_temp, dim=-1) for v in globals_ + locals_]
        terms = [-(tp * sp).sum(-1).mean() for ti, tp in enumerate(t_prob) for si, sp in enumerate(s_logp) if si != ti]
        loss = torch.stack(terms).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(ema).add_(ps.detach(), alpha=1 - ema)
            center.mul_(center_momentum).add_(torch.cat(t_out).mean(0, keepdim=True), alpha=1 - center_momentum)
        step += 1
        if step % 50 == 0:
            log(f"dino step {step} loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)")
    return teacher[0].eval()


# ---------------------------------------------------------------- checking

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


def metrics_config(out: Path) -> dict[str, Any]:
    """The tiny profile's metrics config pointing at the evaluators in `out`."""
    clip = {"model": f"local-dir:{(out / 'clip').resolve()}", "world": "tiny"}
    return {"clip_i": clip, "clip_t": dict(clip), "dino": {"model": f"local-dir:{(out / 'dino').resolve()}", "world": "tiny"},
            "ip_sim": {"localiser": "masks", "max_instances": 3}, "mechanism": {}}


def train_evaluators(out: str | os.PathLike, clip_steps: int = 1200, dino_steps: int = 400, seed: int = 0,
                     n_train: int = 1500, cfg: SyntheticConfig | None = None, max_seconds: float | None = None,
                     overwrite: bool = False, log=print) -> Path:
    """Train both evaluators on train-split identities, check them on test identities, and
    write them with their config and check results into `out` (atomically). Step counts make
    a run reproducible; `max_seconds` optionally caps each trainer's wall time."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: evaluators already exist (pass overwrite=True to replace them)")
    cap = math.inf if max_seconds is None else max_seconds
    t0 = time.monotonic()
    data = clip_canvases("train", n_train, seed, cfg=cfg)
    pairs = rendering_pairs("train", n_train, seed, cfg)
    log(f"{len(data)} CLIP canvases, {len(pairs)} rendering pairs ({time.monotonic() - t0:.0f}s)")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t_clip = time.monotonic()
    save_clip(train_clip(data, cap, seed, max_steps=clip_steps, cfg=cfg, log=log), tmp / "clip")
    t_dino = time.monotonic()
    save_dino(train_dino(pairs, cap, seed, max_steps=dino_steps, log=log), tmp / "dino")
    t_end = time.monotonic()
    cfg_tmp = metrics_config(tmp)
    result = check_evaluators(ClipModel("clip_i", cfg_tmp["clip_i"]["model"]), DinoModel("dino", cfg_tmp["dino"]),
                              held_out_views(cfg=cfg))
    result.update(clip_steps=clip_steps, dino_steps=dino_steps, clip_seconds=round(t_dino - t_clip, 1),
                  dino_seconds=round(t_end - t_dino, 1), seed=seed, n_train_samples=n_train,
                  world="tiny: comparable within the synthetic world only")
    log(json.dumps(result, indent=2))
    (tmp / "validation.json").write_text(json.dumps(result, indent=2))
    (tmp / "metrics_config.json").write_text(json.dumps(metrics_config(out), indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metrics.tiny_world", description=train_evaluators.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--clip-steps", type=int, default=1200)
    p.add_argument("--dino-steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=1500, help="train-split samples rendered for training")
    p.add_argument("--max-seconds", type=float, help="cap on each trainer's wall time")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    train_evaluators(a.out, a.clip_steps, a.dino_steps, a.seed, a.n_train, max_seconds=a.max_seconds,
                     overwrite=a.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
