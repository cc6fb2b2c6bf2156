"""The training batches: curriculum stages, an exactly resumable order, and conditioning dropout.

Why it exists: batch `step` of a run must be a pure function of (seed, step), so a resumed run
sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..config import Config, ConfigError
from ..data.dataset import collate, load_dataset


def apply_dropout(batch: dict[str, Any], cfg: Config, g: torch.Generator) -> tuple[dict[str, Any], list[str]]:
    """Per sample, from one uniform u as upstream's Subjects200K dataset: u < p_image drops the references,
    then p_text the prompt (""), then p_both both.

    A dropped reference is, with train.drop_image_mode "zero" (upstream), flagged in `ref_zero`: its latents become
    zeros that stay tokens (mosaic.flow.encode_batch) and it still enters SCAL/MDL, as upstream's loss reads the
    points whatever was dropped; with "mask" it is masked out (`ref_mask`, `point_mask`) and conditions nothing.
    """
    tc = cfg.train
    u = torch.rand(len(batch["prompt"]), generator=g)
    image_only = u < tc.drop_image
    text_only = (u >= tc.drop_image) & (u < tc.drop_image + tc.drop_text)
    both = (u >= tc.drop_image + tc.drop_text) & (u < tc.drop_image + tc.drop_text + tc.drop_both)
    image, text = image_only | both, text_only | both
    if tc.drop_image_mode == "zero":
        batch = dict(batch, ref_zero=image)
    else:
        batch = dict(batch, ref_mask=batch["ref_mask"] & ~image[:, None],
                     point_mask=batch["point_mask"] & ~image[:, None, None])
    return batch, ["" if d else p for p, d in zip(batch["prompt"], text.tolist())]


class Batches:
    """Batch `step` of the run is a pure function of (seed, step): epoch e visits a (seed, e)-seeded
    permutation of the samples (DistributedSampler, this rank's shard), in full batches only."""

    def __init__(self, dataset, cfg: Config, rank: int, world: int):
        self.dataset, self.cfg = dataset, cfg
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed,
                                          drop_last=True)
        self.per_epoch = len(self.sampler) // cfg.train.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{dataset.root}: {len(dataset)} samples are fewer than train.batch_size "
                             f"({cfg.train.batch_size}) x {world} processes")

    def from_step(self, step: int):
        bs = self.cfg.train.batch_size
        epoch, skip = divmod(step, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[skip * bs: self.per_epoch * bs]
            yield from DataLoader(self.dataset, batch_size=bs, sampler=order, collate_fn=collate,
                                  num_workers=self.cfg.data.num_workers)
            epoch, skip = epoch + 1, 0


def data_stages(cfg: Config, codec, max_refs: int, rank: int, world: int) -> list[tuple[int, Batches]]:
    """(first step, batches) of each curriculum stage, then of data.train (all loaded and checked now)."""
    stages, start = [], 0
    for st in cfg.data.curriculum:
        stages.append((start, Batches(load_dataset(st.train, cfg, codec, max_refs, st.max_k), cfg, rank, world)))
        start += st.steps
    return stages + [(start, Batches(load_dataset(cfg.data.train, cfg, codec, max_refs), cfg, rank, world))]


def batch_stream(stages: list[tuple[int, Batches]], step: int, total: int):
    """The batches of steps step..total-1; a stage's batch s is its own batch s - start, so resume is exact."""
    ends = [min(start, total) for start, _ in stages[1:]] + [total]  # a stream may stop inside a stage
    for (start, batches), end in zip(stages, ends):
        if step < end:
            it = batches.from_step(max(step, start) - start)
            for _ in range(max(step, start), end):
                yield next(it)


def check_mdl_active(cfg: Config, datasets: list) -> None:
    """MDL separates the attention of two or more annotated references of one sample; on data where no
    sample has two (e.g. single-subject data), it is identically zero while beta > 0 says it trains.
    Refuse that up front, naming the data and its K distribution, unless train.allow_inactive_mdl."""
    if cfg.train.mode != "lora" or cfg.loss.beta <= 0 or cfg.train.allow_inactive_mdl:
        return
    ks, annotated = Counter(), 0
    for ds in datasets:
        for r in ds.records:
            ks[int(r["k"])] += 1
            annotated += sum(int(ref.get("num_points", 1)) > 0 for ref in r["references"]) >= 2
    if not annotated:
        roots = ", ".join(str(ds.root) for ds in datasets)
        raise ConfigError(f"{roots}: loss.beta = {cfg.loss.beta:g} but no sample has two or more references with "
                          f"correspondence points (samples per k: {dict(sorted(ks.items()))}), so MDL is "
                          f"identically zero; train on multi-subject data, set loss.beta=0, or accept it with "
                          f"train.allow_inactive_mdl=true")
