"""The places world's shape classifier: which kind (or none) stands in a place.

Why it exists (issue 22): `Shape-Acc` (metrics.subjects) asks whether each prompted place holds the
prompted kind, and the base's acceptance compares that rate on its samples with the rate on the
real targets. A small CNN trained on real place crops of train-split scenes (with blur and noise,
so that softer generated subjects are not out of distribution) answers it; its held-out accuracy
on test-split scenes is recorded with it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mosaic.infra.artefacts import check_artefact
from mosaic.data.synthetic import SyntheticConfig, generate_sample, sample_k

EMPTY = "none"
CONFIG_FILE, WEIGHTS_FILE = "shape_config.json", "model.safetensors"


def place_crops(split: str, n: int, seed: int, cfg: SyntheticConfig) -> tuple[list[np.ndarray], list[str]]:
    """Every place of `n` scenes (1..max_k subjects): its crop and its kind (EMPTY where no subject stands)."""
    crops, labels = [], []
    for i in range(n):
        s = generate_sample(seed, split, i, sample_k(seed, split, i, 1, cfg.max_k), cfg)
        taken = {m["place"]: m["shape"] for m in s.meta["subjects"]}
        for name, (y0, x0, y1, x1) in cfg.places():
            crops.append(s.target[y0:y1, x0:x1])
            labels.append(taken.get(name, EMPTY))
    return crops, labels


class ShapeNet(nn.Module):
    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def _tensor(crops: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(np.stack([np.asarray(c) for c in crops])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False) if tuple(x.shape[-2:]) != size else x


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur half the batch (a 3x3 box), add noise to all, so softer generated subjects stay in distribution."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5
    x = torch.where(pick, blur, x)
    return x + 0.08 * torch.randn(x.shape, generator=gen)


class ShapeClassifier:
    """A trained ShapeNet with its classes and input size; `predict` takes uint8 place crops."""

    def __init__(self, net: ShapeNet, classes: list[str], size: tuple[int, int]):
        self.net, self.classes, self.size = net.eval(), classes, size

    @torch.no_grad()
    def predict(self, crops: list[np.ndarray]) -> list[str]:
        return [self.classes[i] for i in self.net(_tensor(crops, self.size)).argmax(1).tolist()]

    def accuracy(self, crops: list[np.ndarray], labels: list[str]) -> float:
        return float(np.mean([p == t for p, t in zip(self.predict(crops), labels)]))


def train_shape_classifier(cfg: SyntheticConfig, n: int = 1500, steps: int = 600, seed: int = 0,
                           log=print) -> tuple[ShapeClassifier, dict]:
    """Train on the places of `n` train-split scenes; check on 400 test-split scenes (unseen identities)."""
    if cfg.layout != "places":
        raise ValueError(f"the shape classifier needs the places layout, not {cfg.layout!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    crops, labels = place_crops("train", n, seed, cfg)
    classes = [*sorted(set(cfg.shapes)), EMPTY]
    size = tuple(int(v) for v in crops[0].shape[:2])
    x, y = _tensor(crops, size), torch.tensor([classes.index(lab) for lab in labels])
    net = ShapeNet(len(classes))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in range(steps):
        idx = torch.randint(len(x), (128,), generator=gen)
        loss = F.cross_entropy(net(_augment(x[idx], gen)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"shape classifier step {step}: loss {loss.item():.4f}")
    clf = ShapeClassifier(net, classes, size)
    test_crops, test_labels = place_crops("test", 400, seed + 1, cfg)
    report = {"shape_accuracy_train": clf.accuracy(crops, labels),
              "shape_accuracy_test": clf.accuracy(test_crops, test_labels),
              "shape_steps": steps, "shape_n_train_scenes": n}
    log(json.dumps(report))
    return clf, report


def save_shape_classifier(clf: ShapeClassifier, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(clf.net.state_dict(), str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"classes": clf.classes, "size": list(clf.size)}, indent=2))
    return folder


def load_shape_classifier(folder: str | os.PathLike) -> ShapeClassifier:
    """The classifier saved in `folder` (verified against its shipped provenance, if any); FileNotFoundError
    naming a missing file."""
    folder = Path(folder)
    check_artefact(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: the shape classifier's {name} is missing")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    net = ShapeNet(len(meta["classes"]))
    net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return ShapeClassifier(net, list(meta["classes"]), tuple(meta["size"]))
