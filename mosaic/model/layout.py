"""Where each branch sits in the joint token sequence, and its RoPE position ids.

Sequence order (shared by the model, the losses and the trainer):
    [text (L) | target (Nt) | ref_1 (Nr) | ... | ref_Kmax (Nr)]
All references in a batch share one size, so every reference span has Nr tokens.

RoPE ids (3 axes, FLUX convention (index, row, col)): text tokens are all 0 and the target is
(0, row, col). Reference k (0-based) is shifted by a scheme:
  - `left` (OminiControl / upstream MOSAIC): (0, row, col - (k+1)*W_ref), i.e. references tile
    to the left of the target;
  - `diagonal` (UNO's UnoPE, bytedance/UNO `uno/flux/sampling.py::prepare_multi_ip`, pe="d"): the
    shift starts at the target grid size and grows by each earlier reference's size on both axes:
    (0, row + H_t + k*H_ref, col + W_t + k*W_ref).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

POS_SCHEMES = ("left", "diagonal")


@dataclass(frozen=True)
class TokenLayout:
    n_text: int
    n_target: int
    n_ref: int
    k_max: int

    @property
    def ref_start(self) -> int:
        return self.n_text + self.n_target

    @property
    def n(self) -> int:
        return self.ref_start + self.k_max * self.n_ref

    @property
    def text(self) -> slice:
        return slice(0, self.n_text)

    @property
    def target(self) -> slice:
        return slice(self.n_text, self.ref_start)

    @property
    def refs(self) -> slice:
        return slice(self.ref_start, self.n)

    def ref(self, k: int) -> slice:
        if not 0 <= k < self.k_max:
            raise IndexError(f"reference {k} outside 0..{self.k_max - 1}")
        start = self.ref_start + k * self.n_ref
        return slice(start, start + self.n_ref)

    def ref_index(self, ref_tokens: torch.Tensor) -> torch.Tensor:
        """Local reference token indices [..., K, P] -> global sequence indices."""
        k = torch.arange(ref_tokens.shape[-2], device=ref_tokens.device)[:, None]
        return ref_tokens + self.ref_start + k * self.n_ref

    def target_index(self, target_tokens: torch.Tensor) -> torch.Tensor:
        """Local target token indices -> global sequence indices."""
        return target_tokens + self.n_text


def grid_ids(h: int, w: int, row0: int = 0, col0: int = 0) -> torch.Tensor:
    """(0, row0 + r, col0 + c) for a row-major h x w grid -> [h*w, 3]."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None] + row0
    ids[..., 2] = torch.arange(w)[None, :] + col0
    return ids.reshape(h * w, 3)


def ref_offset(scheme: str, k: int, target_grid: tuple[int, int], ref_grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) offset of reference k under a position scheme."""
    if scheme == "left":
        return 0, -(k + 1) * ref_grid[1]
    if scheme == "diagonal":
        return target_grid[0] + k * ref_grid[0], target_grid[1] + k * ref_grid[1]
    raise ValueError(f"unknown pos_scheme {scheme!r}; choose one of {POS_SCHEMES}")


def position_ids(layout: TokenLayout, target_grid: tuple[int, int], ref_grid: tuple[int, int] | None,
                 scheme: str) -> torch.Tensor:
    """RoPE ids [N, 3] for the whole sequence (the same for every sample of a batch)."""
    if target_grid[0] * target_grid[1] != layout.n_target:
        raise ValueError(f"target_grid {tuple(target_grid)} does not hold {layout.n_target} target tokens")
    parts = [torch.zeros(layout.n_text, 3), grid_ids(*target_grid)]
    if layout.k_max:
        if ref_grid is None or ref_grid[0] * ref_grid[1] != layout.n_ref:
            raise ValueError(f"ref_grid {ref_grid} does not hold {layout.n_ref} reference tokens")
        parts += [grid_ids(*ref_grid, *ref_offset(scheme, k, target_grid, ref_grid)) for k in range(layout.k_max)]
    elif scheme not in POS_SCHEMES:
        raise ValueError(f"unknown pos_scheme {scheme!r}; choose one of {POS_SCHEMES}")
    return torch.cat(parts)
