"""The tiny-world CLIP: its architecture, its contrastive training loop, and its `local-dir:` folder.

Why it exists: no pretrained CLIP weights exist offline, so the tiny profile trains its own
open_clip `CLIP` (the class `metrics.clip` loads) on train-split identities only: whole scenes
captioned with their prompts, and subject crops captioned with their phrases. The crops come
from scenes and from references pasted onto scene-sized canvases (`world.clip_canvases`), at
scales from tight to the whole image, on redrawn backgrounds and, half the time, recoloured, so
a subject's embedding does not depend on its size or background (CLIP-I compares a whole
generated scene with a reference; trained on references and whole scenes only, test
reference-vs-scene AUC stayed at 0.76-0.81).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mosaic.data.synthetic import SyntheticConfig

from .world import Canvas, captions, held_out_combinations, random_background, recoloured, repaint, subject_crop

CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 2, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def new_clip(seed: int = 0):
    """The tiny CLIP, freshly initialised from `seed`."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**copy.deepcopy(CLIP_CFG))


def save_clip(net, folder: str | os.PathLike, model_cfg: dict[str, Any] | None = None) -> Path:
    """An open_clip `local-dir:` folder: open_clip_config.json + open_clip_model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg or CLIP_CFG, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """CLIP's symmetric contrastive loss, except that every pair whose captions are equal is a
    positive (a batch often holds several views of one subject under one caption)."""
    codes = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    c = torch.tensor([codes[k] for k in keys])
    target = (c[:, None] == c[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    logits = scale * img @ txt.T
    return -((target * logits.log_softmax(1)).sum(1).mean() + (target * logits.T.log_softmax(1)).sum(1).mean()) / 2


@dataclass(frozen=True)
class ClipTrainingConfig:
    """The tiny CLIP's training recipe (defaults: the tiny profile's). Each batch:
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

    batch: int = 64
    lr: float = 1e-3
    p_prompt: float = 0.35
    zoom: tuple[float, float] = (1.0, 3.0)
    crowd_zoom: float = 1.4
    p_background: float = 0.5
    p_recolour: float = 0.5


class _ClipBatches:
    """The batches `train_clip` trains on (crops and captions, as `ClipTrainingConfig` says), drawn from `gen`."""

    def __init__(self, data: list[Canvas], training: ClipTrainingConfig, cfg: SyntheticConfig | None,
                 gen: torch.Generator):
        self.data, self.training, self.gen = data, training, gen
        self.size = CLIP_CFG["vision_cfg"]["image_size"]
        self.images = [torch.from_numpy(c.image).permute(2, 0, 1).float() / 255 for c in data]
        self.masks = [torch.from_numpy(c.masks) for c in data]
        self.subjects = [(i, j) for i, c in enumerate(data) for j in range(len(c.subjects))]
        self.scenes = [i for i, c in enumerate(data) if c.prompt]
        self.n_prompt = round(training.batch * training.p_prompt) if self.scenes else 0
        self.exclude = held_out_combinations(cfg)

    def draw(self) -> tuple[list[torch.Tensor], list[str]]:
        """One batch: `n_prompt` whole scenes with their prompts, then subject crops with their captions."""
        xs, keys = [], []
        for n in torch.randint(len(self.scenes), (self.n_prompt,), generator=self.gen).tolist():
            i = self.scenes[n]
            xs.append(subject_crop(self.images[i], torch.ones_like(self.masks[i][0]), self.size, (0.85, 1.0), self.gen))
            keys.append(self.data[i].prompt)
        for n in torch.randint(len(self.subjects), (self.training.batch - self.n_prompt,), generator=self.gen).tolist():
            x, key = self._subject_view(*self.subjects[n])
            xs.append(x)
            keys.append(key)
        return xs, keys

    def _subject_view(self, i: int, j: int) -> tuple[torch.Tensor, str]:
        """Canvas i's subject j: maybe recoloured, maybe on a redrawn background, cropped, with a caption."""
        t, gen = self.training, self.gen
        img, s = self.images[i], self.data[i].subjects[j]
        if torch.rand(1, generator=gen) < t.p_recolour and (new := recoloured(s, self.exclude, gen)):
            img, s = repaint(img, self.masks[i][j], s, new), new
        if torch.rand(1, generator=gen) < t.p_background:
            img = torch.where(self.masks[i].any(0), img, random_background(img.shape[-1], gen))
        z = t.zoom if len(self.data[i].subjects) == 1 else (t.zoom[0], min(t.zoom[1], t.crowd_zoom))
        crop = subject_crop(img, self.masks[i][j], self.size, z, gen)
        return crop, captions(s)[int(torch.randint(2, (1,), generator=gen))]


def _tokenised(tok, cache: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """The captions' token ids [B, L], each caption tokenised once (`cache`)."""
    for k in keys:
        if k not in cache:
            cache[k] = tok([k])[0]
    return torch.stack([cache[k] for k in keys])


def _clip_step(net, opt: torch.optim.Optimizer, images: torch.Tensor, texts: torch.Tensor,
               keys: list[str]) -> torch.Tensor:
    """One optimiser step on a batch, then open_clip's logit-scale clamp; returns the loss."""
    img_f, txt_f, scale = net(images, texts)[:3]
    loss = _multi_positive_loss(img_f, txt_f, scale, keys)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        net.logit_scale.clamp_(0, math.log(100))
    return loss


def train_clip(data: list[Canvas], seconds: float = math.inf, seed: int = 0, *, max_steps: int | None = None,
               training: ClipTrainingConfig = ClipTrainingConfig(), cfg: SyntheticConfig | None = None, log=print):
    """Contrastive training of the tiny CLIP (open_clip's loss, with every equal-caption pair a
    positive) for `max_steps` steps or `seconds`, whichever ends first; returns the model. The
    batches and the optimiser follow `training` (`ClipTrainingConfig` describes each knob)."""
    import open_clip

    net = new_clip(seed).train()
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=CLIP_CFG["text_cfg"]["context_length"])
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    cache: dict[str, torch.Tensor] = {}
    opt = torch.optim.AdamW(net.parameters(), lr=training.lr, weight_decay=0.1, fused=True)  # fused: 8x faster on CPU
    batches = _ClipBatches(data, training, cfg, torch.Generator().manual_seed(seed))
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds and (max_steps is None or step < max_steps):
        xs, keys = batches.draw()
        loss = _clip_step(net, opt, (torch.stack(xs) - mean) / std, _tokenised(tok, cache, keys), keys)
        step += 1
        if step % 50 == 0:
            log(f"clip step {step} loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)")
    return net.eval()
