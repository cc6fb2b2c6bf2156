"""Fused MOSAIC blocks: every layer runs once over the whole sequence [text | target | ref_1..ref_K].

Upstream MOSAIC (built on OminiControl) runs each branch (text, target, every reference) through
each layer separately in a Python loop, switching the condition LoRA on for reference branches and
modulating them with timestep 0, then joins the branches in one attention call with a dense mask.
Here the same computation is done once per layer:

  * base weights:   each diffusers Linear runs once over all tokens of its stream;
  * LoRA:           its low-rank delta is added to the reference tokens only (`lora.ref_only`);
  * modulation:     AdaLN-Zero shift/scale/gate are chosen per token: the timestep-t embedding
                    through the base `norm.linear` for text and target, the timestep-0 embedding
                    through the LoRA-adapted `norm.linear` for references;
  * attention:      no dense N x N mask. Text and target queries attend to every key in one SDPA
                    call (a key-padding mask hides padded references); all references go through
                    one batched SDPA call, reshaped to [B*K, H, Nr, d], each over [text, target, ref_k]
                    keys, so a reference never sees another reference.

The block bodies mirror diffusers `FluxTransformerBlock.forward` / `FluxSingleTransformerBlock.forward`
(0.42) and reuse their modules (norm1, attn.to_q/k/v, norm_q/k, add_*_proj, ff, ...). The fp16
clipping of diffusers is omitted (training runs in bf16/fp32). `per_branch.py` holds the slow,
literal per-branch form; tests prove both agree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from .layout import TokenLayout
from .lora import base_layer, ref_only


def per_token(p_t: torch.Tensor, p_0: torch.Tensor, split: int, n: int) -> torch.Tensor:
    """Per-token parameters [B, n, D]: p_t [B, D] for tokens < split (timestep t), p_0 for the rest."""
    if split >= n:
        return p_t[:, None]
    b, d = p_t.shape
    return torch.cat([p_t[:, None].expand(b, split, d), p_0[:, None].expand(b, n - split, d)], 1)


def modulation(norm_linear, temb_t, temb_0, split: int, n: int, chunks: int) -> list[torch.Tensor]:
    """AdaLN-Zero parameters per token: base `norm.linear` on temb(t) before `split`, the LoRA-adapted
    layer on temb(0) (the reference branch) from `split` on."""
    e_t = base_layer(norm_linear)(F.silu(temb_t)).chunk(chunks, dim=1)
    if split >= n:
        return [a[:, None] for a in e_t]
    e_0 = norm_linear(F.silu(temb_0)).chunk(chunks, dim=1)
    return [per_token(a, b, split, n) for a, b in zip(e_t, e_0)]


def heads(attn, x: torch.Tensor, norm) -> torch.Tensor:
    """[B, N, H*d] -> per-head RMS-normalised [B, N, H, d]."""
    return norm(x.unflatten(-1, (-1, attn.head_dim)))


def rope(x: torch.Tensor, freqs) -> torch.Tensor:
    """Rotary embedding on [B, N, H, d] -> [B, H, N, d] (the layout SDPA takes)."""
    return apply_rotary_emb(x, freqs, sequence_dim=1).transpose(1, 2)


def attention(q, k, v, layout: TokenLayout, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Reference-isolated joint attention. q, k, v [B, H, N, d] -> [B, N, H*d].

    Text+target queries see all keys (minus padded references, `key_mask` [B, N] True = keep);
    reference k's queries see [text, target, ref_k] only.
    """
    s, kmax, nr = layout.ref_start, layout.k_max, layout.n_ref
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = [F.scaled_dot_product_attention(q[:, :, :s], k, v, attn_mask=mask)]
    if kmax:
        b, h, _, d = q.shape

        def per_ref(x):  # [B, H, K*Nr, d] -> [B*K, H, Nr, d]
            return x[:, :, s:].unflatten(2, (kmax, nr)).transpose(1, 2).flatten(0, 1)

        def shared(x):  # text+target keys, repeated for every reference: [B*K, H, s, d]
            return x[:, :, :s].unsqueeze(1).expand(b, kmax, h, s, d).flatten(0, 1)

        o = F.scaled_dot_product_attention(per_ref(q), torch.cat([shared(k), per_ref(k)], 2),
                                           torch.cat([shared(v), per_ref(v)], 2))
        out.append(o.unflatten(0, (b, kmax)).transpose(1, 2).flatten(2, 3))
    return torch.cat(out, 2).transpose(1, 2).flatten(2)


def text_modulation(norm_linear, temb_t, text_offset, chunks: int) -> list[torch.Tensor]:
    """Per-text-token AdaLN parameters [B, L, D] from temb_t + text_offset [B, L, D] (XVerse's token-specific
    modulation); the base layer only (a LoRA never acts on text tokens)."""
    return base_layer(norm_linear)(F.silu(temb_t[:, None] + text_offset)).chunk(chunks, dim=-1)


def double_block(blk, txt, img, temb_t, temb_0, freqs, layout: TokenLayout, key_mask, text_offset=None):
    """One FluxTransformerBlock over text stream `txt` [B, L, D] and image stream `img` = [target | refs].

    Returns (txt, img, q, k); q, k [B, H, N, d] are what enters attention (after RMSNorm and RoPE).
    """
    s, n = layout.n_target, img.shape[1]  # image-stream split: references start at Nt
    sh1, sc1, g1, sh2, sc2, g2 = modulation(blk.norm1.linear, temb_t, temb_0, s, n, 6)
    if text_offset is None:
        txt_h, c_g1, c_sh2, c_sc2, c_g2 = blk.norm1_context(txt, emb=temb_t)
        c_g1, c_sh2, c_sc2, c_g2 = (a[:, None] for a in (c_g1, c_sh2, c_sc2, c_g2))
    else:
        c_sh1, c_sc1, c_g1, c_sh2, c_sc2, c_g2 = text_modulation(blk.norm1_context.linear, temb_t, text_offset, 6)
        txt_h = blk.norm1_context.norm(txt) * (1 + c_sc1) + c_sh1
    h = blk.norm1.norm(img) * (1 + sc1) + sh1

    a = blk.attn
    q = torch.cat([heads(a, a.add_q_proj(txt_h), a.norm_added_q), heads(a, ref_only(a.to_q, h, s), a.norm_q)], 1)
    k = torch.cat([heads(a, a.add_k_proj(txt_h), a.norm_added_k), heads(a, ref_only(a.to_k, h, s), a.norm_k)], 1)
    v = torch.cat([a.add_v_proj(txt_h), ref_only(a.to_v, h, s)], 1).unflatten(-1, (-1, a.head_dim)).transpose(1, 2)
    q, k = rope(q, freqs), rope(k, freqs)
    o_txt, o_img = attention(q, k, v, layout, key_mask).split([txt.shape[1], n], dim=1)

    img = img + g1 * a.to_out[1](ref_only(a.to_out[0], o_img, s))
    h = blk.norm2(img) * (1 + sc2) + sh2
    act = blk.ff.net[0]
    h = act.gelu(ref_only(act.proj, h, s))
    for m in blk.ff.net[1:]:
        h = ref_only(m, h, s)
    img = img + g2 * h

    txt = txt + c_g1 * a.to_add_out(o_txt)
    txt = txt + c_g2 * blk.ff_context(blk.norm2_context(txt) * (1 + c_sc2) + c_sh2)
    return txt, img, q, k


def single_block(blk, x, temb_t, temb_0, freqs, layout: TokenLayout, key_mask, text_offset=None):
    """One FluxSingleTransformerBlock over the whole sequence x [B, N, D]."""
    s, n = layout.ref_start, x.shape[1]
    shift, scale, gate = modulation(blk.norm.linear, temb_t, temb_0, s, n, 3)
    if text_offset is not None:  # text tokens [0, L) get their own parameters
        nl, shape = text_offset.shape[1], (x.shape[0], n, x.shape[-1])
        shift, scale, gate = (torch.cat([t, p.expand(shape)[:, nl:]], 1) for t, p in
                              zip(text_modulation(blk.norm.linear, temb_t, text_offset, 3), (shift, scale, gate)))
    h = blk.norm.norm(x) * (1 + scale) + shift
    mlp = blk.act_mlp(ref_only(blk.proj_mlp, h, s))
    a = blk.attn
    q = rope(heads(a, ref_only(a.to_q, h, s), a.norm_q), freqs)
    k = rope(heads(a, ref_only(a.to_k, h, s), a.norm_k), freqs)
    v = ref_only(a.to_v, h, s).unflatten(-1, (-1, a.head_dim)).transpose(1, 2)
    o = attention(q, k, v, layout, key_mask)
    return x + gate * ref_only(blk.proj_out, torch.cat([o, mlp], dim=2), s)
