"""The metric registry and the per-evaluation context (shared models, reference cache).

A metric is a class registered in `METRICS` under its published name. It declares the
manifest inputs it reads and the config keys that choose its model and weights, and scores a
batch of items into rows: one per (image, reference), or one per image for image-level
metrics. A value that does not apply or cannot be computed is NaN with a reason; a protocol
zero (XVerse's "0 if no face") is a real 0 that still carries its reason.

The context loads each model once per evaluation (CLIP-I and IP-Sim may share one) and
caches reference embeddings: benchmark references repeat across prompts and seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable

import numpy as np

from mosaic.data.records import load_image
from mosaic.infra.registry import Registry

from .manifest import Item

METRICS: Registry[type["Metric"]] = Registry("metric")  # metric classes by published name
register = METRICS.register  # class decorator: registers the class under its `name`


@dataclass
class Row:
    item: int  # index in the evaluated batch
    reference: int | None  # None: an image-level value
    value: float
    reason: str = ""


class MetricUnavailable(RuntimeError):
    """A metric's model, weights or package is missing; the message names the config key."""


class Metric:
    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]  # manifest fields read: image, prompt, references, masks, attention
    config_key: ClassVar[str]  # its section in the metrics config
    model_keys: ClassVar[tuple[str, ...]] = ()  # keys of that section that choose model and weights
    # the named published protocols this metric implements (e.g. "xverse", "dreambench++"); the first is the
    # default, the section's `protocol` key chooses another; the name is recorded with every row and run
    protocols: ClassVar[tuple[str, ...]] = ("default",)

    def __init__(self, cfg: dict[str, Any], ctx: "Context"):
        self.cfg, self.ctx = cfg, ctx

    @classmethod
    def protocol_in(cls, cfg: dict[str, Any]) -> str:
        """The protocol `cfg`'s section names for this metric (the first of `protocols` if unset), read without
        building the metric (a metric whose model cannot load still records it); ValueError naming the section
        if unknown. A metric with its own rule (ID-Sim's old `backend` key) overrides this."""
        sec = cfg.get(cls.config_key)
        name = (sec or {}).get("protocol") or cls.protocols[0]
        if name not in cls.protocols:
            raise ValueError(f"metrics config section {cls.config_key!r}: protocol {name!r} is not one of "
                             f"{', '.join(cls.protocols)} ({cls.name})")
        return name

    @property
    def protocol(self) -> str:
        """This metric's protocol: `protocol_in` of its config."""
        return self.protocol_in(self.cfg)

    def identity(self) -> dict[str, str]:
        """Recorded with every row: `model`, `weights`, `protocol` (the name), `procedure` (what it does, in
        words) and `world` ("" or the evaluator world, e.g. "tiny")."""
        raise NotImplementedError

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        raise NotImplementedError


def section(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    sec = cfg.get(key)
    if not isinstance(sec, dict):
        raise MetricUnavailable(f"metrics config has no section {key!r}")
    return sec


def cosine100(a, b) -> np.ndarray:
    """Row-wise cosine x100 of two [N, D] arrays or tensors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return 100.0 * num / np.maximum(den, 1e-12)


class Context:
    """Models loaded once, and reference results cached, for one evaluation."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self._models: dict[Hashable, Any] = {}
        self._cache: dict[tuple[str, Hashable], Any] = {}
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}

    def model(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key not in self._models:
            self._models[key] = build()
        return self._models[key]

    def cached(self, namespace: str, keys: list[Hashable], compute: Callable[[list[Hashable]], list[Any]]) -> list[Any]:
        """Values for `keys`, computing only the missing ones (in one batched call)."""
        missing = list(dict.fromkeys(k for k in keys if (namespace, k) not in self._cache))
        self.hits[namespace] = self.hits.get(namespace, 0) + len(keys) - len(missing)
        self.misses[namespace] = self.misses.get(namespace, 0) + len(missing)  # = values computed
        if missing:
            for k, v in zip(missing, compute(missing)):
                self._cache[(namespace, k)] = v
        return [self._cache[(namespace, k)] for k in keys]

    def ref_embeddings(self, embedder, paths) -> list[np.ndarray]:
        """Embeddings of reference images, loaded and embedded only on a cache miss."""
        return self.cached(f"{embedder.id}|references", [str(p) for p in paths],
                           lambda keys: list(embedder.embed(load_refs(keys))))

    def image_embeddings(self, embedder, items: list[Item], images: list[np.ndarray]) -> list[np.ndarray]:
        """Embeddings of the batch's generated images (shared by metrics using the same model)."""
        by_key = {str(it.image): im for it, im in zip(items, images)}
        return self.cached(f"{embedder.id}|generated", [str(it.image) for it in items],
                           lambda keys: list(embedder.embed([by_key[k] for k in keys])))

    def cache_stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for ns in sorted(set(self.hits) | set(self.misses)):
            h, m = self.hits.get(ns, 0), self.misses.get(ns, 0)
            out[ns] = {"hits": h, "misses": m, "hit_rate": h / (h + m) if h + m else math.nan}
        return out


def load_refs(paths) -> list[np.ndarray]:
    return [load_image(p) for p in paths]
