"""Per-branch reference forward: the slow, literal form of MOSAIC's reference conditioning (tests only).

This is how upstream MOSAIC/OminiControl computes it: every branch - the text, the target and each
reference - goes through every layer on its own, with its own LoRA switch (off for text and target,
on for references) and its own timestep embedding (t for text and target, 0 for references). The
branches meet only in attention: their q/k/v are concatenated and one SDPA call runs with an explicit
dense mask (text and target see everything; a reference sees text, target and itself). Samples are
processed one at a time with only their real references, so padding cannot matter here.

It calls the diffusers modules as they are (`norm1(x, emb=...)`, `ff(x)`, peft's LoRA forward),
which makes it an independent check of the fused decomposition in `fused.py`.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb


@contextmanager
def lora_enabled(model, on: bool):
    if model.lora_spec is None:
        yield
        return
    model.transformer.enable_adapters() if on else model.transformer.disable_adapters()
    try:
        yield
    finally:
        model.transformer.enable_adapters()


def branch_ids(kind: str, k: int, target_grid, ref_grid, scheme: str, n_text: int) -> torch.Tensor:
    """RoPE ids of one branch, written out literally."""
    if kind == "text":
        return torch.zeros(n_text, 3)
    h, w = target_grid if kind == "target" else ref_grid
    row0 = col0 = 0
    if kind == "ref" and scheme == "left":
        col0 = -(k + 1) * ref_grid[1]
    if kind == "ref" and scheme == "diagonal":
        row0, col0 = target_grid[0] + k * ref_grid[0], target_grid[1] + k * ref_grid[1]
    return torch.tensor([[0, row0 + r, col0 + c] for r in range(h) for c in range(w)], dtype=torch.float32)


def per_branch_forward(model, target, refs, ref_mask, text, pooled, timestep, guidance=None, *, target_grid,
                       ref_grid=None):
    outs = []
    for b in range(target.shape[0]):
        sample_refs = [] if refs is None else [
            (k, refs[b:b + 1, k]) for k in range(refs.shape[1]) if ref_mask is None or ref_mask[b, k]]
        g = None if guidance is None else guidance[b:b + 1]
        outs.append(_one_sample(model, target[b:b + 1], sample_refs, text[b:b + 1], pooled[b:b + 1],
                                timestep[b:b + 1], g, target_grid, ref_grid))
    return torch.cat(outs)


def _joint_attention(qkv, freqs, mask, sizes):
    """One SDPA over every branch: a list of (q, k, v) [1, n, H, d] per branch -> a list of outputs [1, n, H*d]."""
    q, k, v = (torch.cat([x[j] for x in qkv], 1) for j in range(3))
    q, k = apply_rotary_emb(q, freqs, sequence_dim=1), apply_rotary_emb(k, freqs, sequence_dim=1)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2).flatten(2).split(sizes, dim=1)


def split_heads(a, x):
    """[1, n, H*d] -> [1, n, H, d] for attention module `a`."""
    return x.unflatten(-1, (-1, a.head_dim))


def _one_sample(model, target, refs, text, pooled, timestep, guidance, target_grid, ref_grid):
    tr = model.transformer
    temb_t, temb_0 = model.time_embeddings(timestep, guidance, pooled)
    # branch = [kind, hidden states, LoRA on?, temb, RoPE ids, ref index]
    branches = [["text", tr.context_embedder(text), False, temb_t, None, -1]]
    with lora_enabled(model, False):
        branches.append(["target", tr.x_embedder(target), False, temb_t, None, -1])
    for k, r in refs:
        with lora_enabled(model, True):
            branches.append(["ref", tr.x_embedder(r), True, temb_0, None, k])
    for br in branches:
        br[4] = branch_ids(br[0], br[5], target_grid, ref_grid, model.pos_scheme, text.shape[1])
    freqs = tr.pos_embed(torch.cat([br[4] for br in branches]).to(target.device))
    sizes = [br[1].shape[1] for br in branches]
    owner = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    is_ref = torch.tensor([br[0] == "ref" for br in branches])[owner]
    mask = ~is_ref[:, None] | ~is_ref[None, :] | (owner[:, None] == owner[None, :])  # [N, N], True = attend
    joint_attention = partial(_joint_attention, freqs=freqs, mask=mask, sizes=sizes)

    for blk in tr.transformer_blocks:
        a, qkv, mods = blk.attn, [], []
        for kind, x, on, temb, _, _ in branches:
            with lora_enabled(model, on):
                if kind == "text":
                    h, *m = blk.norm1_context(x, emb=temb)
                    qkv.append((a.norm_added_q(split_heads(a, a.add_q_proj(h))),
                                a.norm_added_k(split_heads(a, a.add_k_proj(h))), split_heads(a, a.add_v_proj(h))))
                else:
                    h, *m = blk.norm1(x, emb=temb)
                    qkv.append((a.norm_q(split_heads(a, a.to_q(h))), a.norm_k(split_heads(a, a.to_k(h))),
                                split_heads(a, a.to_v(h))))
            mods.append(m)
        for br, o, (g1, sh2, sc2, g2) in zip(branches, joint_attention(qkv), mods):
            kind, x, on = br[0], br[1], br[2]
            with lora_enabled(model, on):
                if kind == "text":
                    x = x + g1[:, None] * a.to_add_out(o)
                    x = x + g2[:, None] * blk.ff_context(blk.norm2_context(x) * (1 + sc2[:, None]) + sh2[:, None])
                else:
                    x = x + g1[:, None] * a.to_out[1](a.to_out[0](o))
                    x = x + g2[:, None] * blk.ff(blk.norm2(x) * (1 + sc2[:, None]) + sh2[:, None])
            br[1] = x

    for blk in tr.single_transformer_blocks:
        a, qkv, keep = blk.attn, [], []
        for kind, x, on, temb, _, _ in branches:
            with lora_enabled(model, on):
                h, gate = blk.norm(x, emb=temb)
                keep.append((gate, blk.act_mlp(blk.proj_mlp(h))))
                qkv.append((a.norm_q(split_heads(a, a.to_q(h))), a.norm_k(split_heads(a, a.to_k(h))),
                            split_heads(a, a.to_v(h))))
        for br, o, (gate, mlp) in zip(branches, joint_attention(qkv), keep):
            with lora_enabled(model, br[2]):
                br[1] = br[1] + gate[:, None] * blk.proj_out(torch.cat([o, mlp], dim=2))

    return tr.proj_out(tr.norm_out(branches[1][1], temb_t))
