"""ZeRO-3's partitioned parameters: the slice each rank holds, and the whole tensors where they are needed.

Why it exists: under ZeRO stage 3 a rank holds only its slice of every parameter (`param.ds_tensor`;
`param.data` is empty outside the forward and backward that gather it), so what reads weights outside
them (the export, the EMA, the finite check) works on the local slices and gathers whole tensors
(`deepspeed.zero.GatheredParameters`) only to write them. The EMA of the slices is the slice of the
EMA (it is elementwise), so stages 0-3 export the same weights. Under stages 0-2 every function here
passes the ordinary parameters through. Gathering is collective: every rank calls these together.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist


def is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def local_tensors(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """This rank's part of each parameter: the parameter itself or, for a ZeRO-3 one, a Parameter sharing
    its slice's storage (so the EMA's copy_to / restore write the slice in place). Made anew per call:
    DeepSpeed may move a slice into another buffer."""
    return [torch.nn.Parameter(p.ds_tensor.data, requires_grad=p.requires_grad) if is_partitioned(p) else p
            for p in params]


def whole(local: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """The whole tensor from every rank's slice `local` of a ZeRO-3 parameter (collective); `local` itself
    for an ordinary parameter."""
    if not is_partitioned(param):
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)[:param.ds_numel].view(param.ds_shape)


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Inside the block every ZeRO-3 parameter of `params` is whole on every rank (read-only: changes to
    it are dropped on exit); a no-op without ZeRO-3."""
    parts = [p for p in params if is_partitioned(p)]
    if not parts:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(parts, modifier_rank=None):
        yield
