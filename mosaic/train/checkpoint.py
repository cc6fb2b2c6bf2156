"""Checkpoints and the export of the trained weights: what a run folder's training leaves behind.

Why it exists: a run may be killed at any moment, so a checkpoint counts only once complete
(`checkpoints/latest` is replaced atomically after every file is written), a bad state is never
saved, and the final LoRA (or base transformer folder) is written whole or not at all. Under ZeRO-3
the EMA lives in each rank's slices and is saved per rank (DeepSpeed writes one model-states file per
rank), and the export gathers the slices (mosaic.train.partitioned).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..infra.runfolder import BASE_DIR, CHECKPOINTS, LATEST, LORA_FILE, LORA_RAW_FILE, atomic_write
from .partitioned import gathered, is_partitioned, local_tensors, whole


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); the message names the step."""


def latest_checkpoint(output_dir: Path) -> str | None:
    path = Path(output_dir) / CHECKPOINTS / LATEST
    return path.read_text().strip() if path.exists() else None


def checkpoint_step(output_dir: Path) -> int | None:
    """The step of the latest checkpoint (from its tag `step_<n>`), or None."""
    tag = latest_checkpoint(output_dir)
    return int(tag.removeprefix("step_")) if tag else None


class Checkpointer:
    """Saves and restores the engine (model, optimizer, scheduler) and the EMA, and exports the weights."""

    def __init__(self, engine, ema, params, out: Path, keep: int, rank: int, lora_mode: bool):
        self.engine, self.ema, self.params, self.out = engine, ema, params, out
        self.keep, self.rank, self.lora_mode = keep, rank, lora_mode

    def load(self) -> int:
        """Restore the latest checkpoint, if any; returns its step (0 without one)."""
        if latest_checkpoint(self.out) is None:
            return 0
        _, client = self.engine.load_checkpoint(str(self.out / CHECKPOINTS), load_module_strict=not self.lora_mode)
        if self.ema is not None:
            self.ema.load_state_dict(client["ema"])
        return int(client["step"])

    def save(self, step: int) -> None:
        """Checkpoint `step_<n>` (refused if a trainable tensor is not finite); keeps the newest `keep`."""
        self.check_finite(step)
        state: dict[str, Any] = {"step": step, **({"ema": self.ema.state_dict()} if self.ema is not None else {})}
        ckpt = self.out / CHECKPOINTS
        tag = f"step_{step:08d}"
        try:
            self.engine.save_checkpoint(str(ckpt), tag=tag, client_state=state, save_latest=False,
                                        exclude_frozen_parameters=self.lora_mode)
            if self.rank == 0:
                atomic_write(ckpt / LATEST, tag)
        except (OSError, RuntimeError) as e:  # e.g. a full disk (torch.save reports it as a RuntimeError)
            if self.rank == 0:
                shutil.rmtree(ckpt / tag, ignore_errors=True)
            raise TrainingError(f"step {step}: writing checkpoint {ckpt / tag} failed ({str(e).strip()[:300]}); "
                                f"the previous checkpoint is intact: {latest_checkpoint(self.out) or 'none'}") from e
        if self.rank == 0:
            for old in sorted(p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("step_"))[:-self.keep]:
                shutil.rmtree(old)
        dist.barrier()

    @property
    def partitioned(self) -> bool:
        """ZeRO-3: the weights are sliced across ranks, so reading them whole is collective."""
        return any(is_partitioned(p) for p in self.params)

    def check_finite(self, step: int) -> None:
        """Every rank checks its slices (ZeRO-3) or its copies; all agree on the count (collective)."""
        flags = torch.stack([~torch.isfinite(t).all() for t in local_tensors(self.params)]).float()  # on the device
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = int(flags.sum())
        if bad:
            raise TrainingError(f"step {step}: {bad} trainable tensors hold NaN/inf after the update; no checkpoint "
                                f"written; last good checkpoint: {latest_checkpoint(self.out) or 'none'} in "
                                f"{self.out / CHECKPOINTS}")

    def export(self, ext=None) -> list[Path]:
        """The final weights (EMA weights when EMA is on): the LoRA safetensors or the base transformer
        folder, then the extension's files, then (LoRA with EMA) the trained LoRA before averaging, as upstream
        writes both. Every rank calls it (ZeRO-3 gathers the weights, and the EMA from each rank's slices,
        collectively); rank 0 writes and returns the paths, the others []."""
        model, ema, params, out = self.engine.module, self.ema, self.params, self.out
        with gathered(params):
            stored, raw = None, []
            if ema is not None and self.lora_mode and self.rank == 0:
                raw = [model.save_lora(out / LORA_RAW_FILE)]
            if ema is not None:
                averaged = [whole(s, p) for s, p in zip(ema.shadow_params, params)]
                stored = [p.data.to("cpu", copy=True) for p in params]
                for p, a in zip(params, averaged):
                    p.data.copy_(a)
            try:
                if self.rank != 0:
                    return []
                paths = [model.save_lora(out / LORA_FILE) if self.lora_mode else model.save_base(out / BASE_DIR)]
                return paths + (list(ext.export(model, out)) if ext is not None else []) + raw
            except Exception as e:  # e.g. a full disk (OSError, or safetensors' own error); no partial file is left
                raise TrainingError(f"{out / (LORA_FILE if self.lora_mode else BASE_DIR)}: exporting the trained "
                                    f"weights failed ({str(e).strip()[:300]}); the final checkpoint "
                                    f"{latest_checkpoint(out)} is intact: rerun with the same output folder to "
                                    f"export it") from e
            finally:
                for p, c in zip(params, stored or []):
                    p.data.copy_(c)
