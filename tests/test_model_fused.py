"""The fused MOSAIC forward: equivalence with the per-branch form, padding, LoRA placement, hook, checkpointing."""
import pytest
import torch
from peft.tuners.lora import LoraLayer

from mosaic.model import LoraSpec, build_model, fused
from mosaic.model.lora import ALLOWED_TARGETS, base_layer
from mosaic.model.per_branch import per_branch_forward

TG, RG = (4, 4), (2, 2)  # debug sizes: 16 target tokens, 4 tokens per reference


def _model(scheme="left", dtype=torch.float64, seed=0, **kw):
    m = build_model("debug", pos_scheme=scheme, lora=LoraSpec(rank=4, alpha=8, targets=ALLOWED_TARGETS), **kw)
    m = m.to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_" in name:  # non-zero lora_B so the reference branch really differs from the base
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return m


def _inputs(b, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return dict(target=r(b, 16, 192), refs=r(b, k, 4, 192), ref_mask=torch.ones(b, k, dtype=torch.bool),
                text=r(b, 8, 16), pooled=r(b, 16), timestep=torch.rand(b, generator=g).to(dtype),
                guidance=torch.full((b,), 3.5, dtype=dtype))


@pytest.mark.parametrize("scheme", ["left", "diagonal"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_fused_equals_per_branch_with_padding(scheme, k):
    m = _model(scheme)
    x = _inputs(2, k)
    x["ref_mask"][1, 1:] = False  # sample 1 has one real reference, the rest is padding
    x["refs"][1, 1:] = 1e3  # padding content must not matter
    with torch.no_grad():
        fused_out = m(**x, target_grid=TG, ref_grid=RG)
        ref_out = per_branch_forward(m, **x, target_grid=TG, ref_grid=RG)
        alone = m(**{n: v[1:] for n, v in x.items() if n not in ("refs", "ref_mask")}, refs=x["refs"][1:, :1],
                  ref_mask=None, target_grid=TG, ref_grid=RG)
    assert fused_out.shape == (2, 16, 192)
    torch.testing.assert_close(fused_out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_out[1:], alone, atol=1e-10, rtol=0)  # padded refs have no effect


def test_fp32_equivalence():
    m = _model(dtype=torch.float32)
    x = _inputs(2, 3, dtype=torch.float32)
    x["ref_mask"][0, 2] = False
    with torch.no_grad():
        torch.testing.assert_close(m(**x, target_grid=TG, ref_grid=RG),
                                   per_branch_forward(m, **x, target_grid=TG, ref_grid=RG), atol=1e-5, rtol=1e-5)


def test_references_and_lora_matter():
    m = _model()
    x = _inputs(1, 2)
    with torch.no_grad():
        out = m(**x, target_grid=TG, ref_grid=RG)
        other = m(**{**x, "refs": x["refs"].flip(1)}, target_grid=TG, ref_grid=RG)
        m.transformer.disable_adapters()
        no_lora = m(**x, target_grid=TG, ref_grid=RG)
        m.transformer.enable_adapters()
    assert (out - other).abs().max() > 1e-3  # references condition the target (order matters via RoPE)
    assert (out - no_lora).abs().max() > 1e-3  # the LoRA acts (on the references, which the target attends to)


def test_no_refs_matches_diffusers_forward():
    m = _model()
    x = _inputs(2, 1)
    ids = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(16, 2)
    img_ids = torch.cat([torch.zeros(16, 1), ids], 1)
    with torch.no_grad():
        ours = m(x["target"], None, None, x["text"], x["pooled"], x["timestep"], x["guidance"], target_grid=TG)
        m.transformer.disable_adapters()  # diffusers would apply the LoRA to every token; ours has no reference
        theirs = m.transformer(hidden_states=x["target"], encoder_hidden_states=x["text"],
                               pooled_projections=x["pooled"], timestep=x["timestep"], img_ids=img_ids,
                               txt_ids=torch.zeros(8, 3), guidance=x["guidance"]).sample
        m.transformer.enable_adapters()
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)  # the base FLUX forward, LoRA inert


def test_lora_touches_only_reference_tokens(monkeypatch):
    """Layer level: every LoRA-wrapped layer's output at text/target positions equals its base layer's."""
    m = _model()
    seen = set()
    real_ref_only, real_modulation = fused.ref_only, fused.modulation

    def spy_ref_only(layer, x, start):
        y = real_ref_only(layer, x, start)
        if isinstance(layer, LoraLayer):
            seen.add(layer)
            torch.testing.assert_close(y[:, :start], base_layer(layer)(x)[:, :start], atol=1e-12, rtol=0)
            full = layer(x)  # peft's own forward: base + delta on every token
            torch.testing.assert_close(y[:, start:], full[:, start:], atol=1e-12, rtol=0)
            assert (full[:, :start] - y[:, :start]).abs().max() > 1e-6  # the delta is real, and kept out
        return y

    def spy_modulation(norm_linear, temb_t, temb_0, split, n, chunks):
        params = real_modulation(norm_linear, temb_t, temb_0, split, n, chunks)
        seen.add(norm_linear)
        base = base_layer(norm_linear)(torch.nn.functional.silu(temb_t)).chunk(chunks, 1)
        adapted = norm_linear(torch.nn.functional.silu(temb_0)).chunk(chunks, 1)
        for p, bt, a0 in zip(params, base, adapted):
            torch.testing.assert_close(p[:, :split], bt[:, None].expand(-1, split, -1), atol=1e-12, rtol=0)
            torch.testing.assert_close(p[:, split:], a0[:, None].expand(-1, n - split, -1), atol=1e-12, rtol=0)
        return params

    monkeypatch.setattr(fused, "ref_only", spy_ref_only)
    monkeypatch.setattr(fused, "modulation", spy_modulation)
    x = _inputs(2, 2)
    with torch.no_grad():
        m(**x, target_grid=TG, ref_grid=RG)
    wrapped = {mod for mod in m.modules() if isinstance(mod, LoraLayer)}
    assert seen == wrapped and len(wrapped) == 1 + 7 * 2 + 6 * 1  # every wrapped layer was checked


def test_hook_and_gradient_checkpointing():
    m = _model(dtype=torch.float32)
    x = _inputs(2, 2, dtype=torch.float32)
    x["ref_mask"][1, 1] = False

    def run(ckpt):
        m.gradient_checkpointing = ckpt
        m.zero_grad()
        calls = []

        def hook(i, q, k, layout):
            calls.append((i, q.shape, k.shape, layout.n))
            rows = q[:, :, layout.refs]  # a toy "loss" through the hook, like the attention losses
            hook.loss = hook.loss + (rows @ k[:, :, layout.target].transpose(-1, -2)).softmax(-1).max(-1)[0].mean()

        hook.loss = 0.0
        out = m(**x, target_grid=TG, ref_grid=RG, attn_hook=hook)
        (out.square().mean() + hook.loss).backward()
        return out.detach(), hook.loss.detach(), calls, [p.grad.clone() for p in m.trainable_parameters()]

    out0, l0, calls0, g0 = run(False)
    out1, l1, calls1, g1 = run(True)
    n = 8 + 16 + 2 * 4
    assert calls0 == calls1 == [(i, (2, 2, n, 16), (2, 2, n, 16), n) for i in range(2)]  # once per double block
    torch.testing.assert_close(out0, out1)
    torch.testing.assert_close(l0, l1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(g0) == len(trainable) > 0 and all("lora_" in n for n in trainable)


def test_hook_sees_what_enters_attention(monkeypatch):
    """The hook's q, k are exactly the tensors handed to attention in each double block."""
    m = _model()
    x = _inputs(1, 2)
    got = {}
    real_attention = fused.attention

    def spy(q, k, v, layout, key_mask):
        got.setdefault("sdpa_qk", []).append((q, k))
        return real_attention(q, k, v, layout, key_mask)

    monkeypatch.setattr(fused, "attention", spy)
    with torch.no_grad():
        m(**x, target_grid=TG, ref_grid=RG, attn_hook=lambda i, q, k, lay: got.setdefault("hook", []).append((q, k)))
    assert len(got["hook"]) == 2 and len(got["sdpa_qk"]) == 3  # 2 double blocks (hooked) + 1 single block
    for (hq, hk), (sq, sk) in zip(got["hook"], got["sdpa_qk"]):  # the double blocks come first
        assert torch.equal(hq, sq) and torch.equal(hk, sk)


def test_too_many_refs_and_bad_grid():
    m = _model()
    x = _inputs(1, 4)
    with pytest.raises(ValueError, match="max_refs=3"):
        m(**x, target_grid=TG, ref_grid=RG)
    with pytest.raises(ValueError, match="ref_grid"):
        m(**_inputs(1, 1), target_grid=TG, ref_grid=(3, 3))
