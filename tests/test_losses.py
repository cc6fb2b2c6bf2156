"""SCAL/MDL against a naive reference: full [N x N] attention with the reference-isolation
mask, plain Python loops over samples, references and points."""
import itertools
import math
import pytest
import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from mosaic.losses import AttentionProbe, LossConfig, correspondence_losses
from mosaic.model.layout import TokenLayout

L, NT, NR, H, D, BLOCKS = 5, 12, 6, 2, 8, 3


def make_layout(k_max):
    return TokenLayout(n_text=L, n_target=NT, n_ref=NR, k_max=k_max)


def make_batch(gen, b, k_max, p_max, empty_refs=True):
    """Padded batch like mosaic.data.dataset.collate: K_b in 1..k_max (sample 0 has k_max),
    P_k in 0..p_max (a reference may have no points when empty_refs)."""
    ref_mask = torch.zeros(b, k_max, dtype=torch.bool)
    point_mask = torch.zeros(b, k_max, p_max, dtype=torch.bool)
    for i in range(b):
        k_b = k_max if i == 0 else int(torch.randint(1, k_max + 1, (1,), generator=gen))
        ref_mask[i, :k_b] = True
        for k in range(k_b):
            lo = 0 if (empty_refs and k > 0) else 1
            n = int(torch.randint(lo, p_max + 1, (1,), generator=gen))
            point_mask[i, k, :n] = True
    return {
        "ref_mask": ref_mask,
        "point_mask": point_mask,
        "ref_tokens": torch.randint(0, NR, (b, k_max, p_max), generator=gen) * point_mask,
        "target_tokens": torch.randint(0, NT, (b, k_max, p_max), generator=gen) * point_mask,
    }


def make_qk(gen, b, k_max, dtype):
    n = L + NT + k_max * NR
    return [(1.5 * torch.randn(b, H, n, D, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()
            for _ in range(2 * BLOCKS)]


def efficient(cfg, batch, qk, k_max, step=0, recompute=True):
    probe = AttentionProbe(cfg, batch, recompute)
    for i in range(BLOCKS):
        probe(i, qk[2 * i], qk[2 * i + 1], make_layout(k_max))
    return correspondence_losses(probe, batch, step)


# ---------------------------------------------------------------- naive reference

def kl(p, q, eps):
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum()


def naive(cfg, batch, qk, k_max):
    n = L + NT + k_max * NR
    ref_of = [None] * (L + NT) + [k for k in range(k_max) for _ in range(NR)]
    blocks = range(BLOCKS) if cfg.blocks is None else cfg.blocks
    scal_b, mdl_b = [], []
    for b in range(batch["ref_mask"].shape[0]):
        # mask: reference rows see text, target and their own reference; padded refs hidden from all
        allowed = torch.ones(n, n, dtype=torch.bool)
        for u in range(n):
            for v in range(L + NT, n):
                if not batch["ref_mask"][b, ref_of[v]] or (ref_of[u] is not None and ref_of[u] != ref_of[v]):
                    allowed[u, v] = False
        a = 0
        for i in blocks:
            q, k = qk[2 * i][b].to(torch.float64), qk[2 * i + 1][b].to(torch.float64)
            s = q @ k.mT / math.sqrt(D)  # [H, N, N]
            if cfg.normalize_over == "all":
                p = s.masked_fill(~allowed, float("-inf")).softmax(-1)[..., L:L + NT]
            else:
                p = s[..., L:L + NT].softmax(-1)
            a = a + p.mean(0)
        a = a / len(blocks)  # [N, NT]
        row = lambda k, t: L + NT + k * NR + int(t)
        pts = {k: [j for j in range(batch["point_mask"].shape[2]) if batch["point_mask"][b, k, j]]
               for k in range(k_max)}
        refs = [k for k in range(k_max) if pts[k]]
        per_ref = [sum(-torch.log(a[row(k, batch["ref_tokens"][b, k, j]), batch["target_tokens"][b, k, j]] + cfg.eps)
                       for j in pts[k]) / len(pts[k]) for k in refs]
        scal_b.append(sum(per_ref) / len(per_ref) if per_ref else torch.zeros((), dtype=torch.float64))
        if cfg.mdl_rows == "all":
            mdl_refs = [k for k in range(k_max) if batch["ref_mask"][b, k]]
            rows = {k: [row(k, t) for t in range(NR)] for k in mdl_refs}
        else:
            mdl_refs = refs
            rows = {k: [row(k, batch["ref_tokens"][b, k, j]) for j in pts[k]] for k in refs}
        dist = {}
        for k in mdl_refs:
            m = sum(a[u] for u in rows[k]) / len(rows[k])
            dist[k] = m / m.sum()
        divs = []
        for i, j in itertools.permutations(mdl_refs, 2):
            p, q = dist[i], dist[j]
            if cfg.divergence == "skl":
                divs.append(0.5 * (kl(p, q, cfg.eps) + kl(q, p, cfg.eps)))
            else:
                m = 0.5 * (p + q)
                divs.append(0.5 * (kl(p, m, cfg.eps) + kl(q, m, cfg.eps)))
        mdl_b.append(-sum(divs) / len(divs) if divs else torch.zeros((), dtype=torch.float64))
    return {"scal": sum(scal_b) / len(scal_b), "mdl": sum(mdl_b) / len(mdl_b)}


def grads(value, qk):
    if not value.requires_grad:  # the naive MDL is a constant 0 when K < 2
        return torch.cat([torch.zeros_like(t).flatten() for t in qk])
    g = torch.autograd.grad(value, qk, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(t) if gi is None else gi).flatten() for gi, t in zip(g, qk)])


SWITCHES = list(itertools.product(["all", "target"], ["points", "all"], ["skl", "jsd"]))


@pytest.mark.parametrize("normalize_over,mdl_rows,divergence", SWITCHES)
@pytest.mark.parametrize("k_max", [1, 2, 3, 4])
def test_matches_naive_fp64(normalize_over, mdl_rows, divergence, k_max):
    gen = torch.Generator().manual_seed(k_max * 100 + SWITCHES.index((normalize_over, mdl_rows, divergence)))
    blocks = None if k_max % 2 else (0, 2)
    cfg = LossConfig(normalize_over=normalize_over, mdl_rows=mdl_rows, divergence=divergence, blocks=blocks)
    batch = make_batch(gen, 3, k_max, 4)
    qk = make_qk(gen, 3, k_max, torch.float64)
    got, ref = efficient(cfg, batch, qk, k_max, recompute=k_max < 3), naive(cfg, batch, qk, k_max)
    for name in ("scal", "mdl"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads(got[name], qk), grads(ref[name], qk), rtol=1e-5, atol=1e-5)
    if k_max >= 2:  # not vacuous: MDL really separates here
        assert got["mdl"] < 0


@pytest.mark.parametrize("preset", ["paper", "upstream-code"])
def test_matches_naive_fp32(preset):
    gen = torch.Generator().manual_seed(7)
    cfg = LossConfig.preset(preset)
    batch = make_batch(gen, 2, 3, 5)
    qk = make_qk(gen, 2, 3, torch.float32)
    got, ref = efficient(cfg, batch, qk, 3), naive(cfg, batch, qk, 3)
    for name in ("scal", "mdl"):
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name].double(), ref[name], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grads(got[name], qk), grads(ref[name], qk), rtol=1e-4, atol=1e-4)


def test_mdl_zero_below_two_references():
    gen = torch.Generator().manual_seed(1)
    for mdl_rows in ("points", "all"):
        batch = make_batch(gen, 2, 1, 4)
        qk = make_qk(gen, 2, 1, torch.float64)
        assert efficient(LossConfig(mdl_rows=mdl_rows), batch, qk, 1)["mdl"] == 0
    batch = make_batch(gen, 2, 3, 4)  # K=3 slots but only one reference has points
    batch["point_mask"][:, 1:] = False
    qk = make_qk(gen, 2, 3, torch.float64)
    assert efficient(LossConfig(), batch, qk, 3)["mdl"] == 0


@pytest.mark.parametrize("normalize_over", ["all", "target"])
def test_scal_minimal_when_attention_hits_the_annotated_tokens(normalize_over):
    gen = torch.Generator().manual_seed(2)
    k_max, p = 2, 3
    batch = make_batch(gen, 1, k_max, p, empty_refs=False)
    batch["point_mask"][:] = True
    batch["ref_tokens"] = torch.tensor([[[0, 1, 2], [3, 4, 5]]])
    batch["target_tokens"] = torch.tensor([[[0, 1, 2], [6, 7, 8]]])
    d = 16
    n = L + NT + k_max * NR

    def run(targets):
        q, k = torch.zeros(1, H, n, d, dtype=torch.float64), torch.zeros(1, H, n, d, dtype=torch.float64)
        k[0, :, L:L + NT, :NT] = 10 * torch.eye(NT, dtype=torch.float64)  # orthogonal target keys
        for kk in range(k_max):
            for j in range(p):
                q[0, :, L + NT + kk * NR + batch["ref_tokens"][0, kk, j], targets[0, kk, j]] = 10.0
        probe = AttentionProbe(LossConfig(normalize_over=normalize_over), batch)
        probe(0, q, k, make_layout(k_max))
        return float(correspondence_losses(probe, batch, 0)["scal"])

    hit = run(batch["target_tokens"])
    miss = run((batch["target_tokens"] + 1) % NT)
    qk = make_qk(gen, 1, k_max, torch.float64)
    rand = efficient(LossConfig(normalize_over=normalize_over), batch, qk, k_max)["scal"].item()
    assert -1e-7 <= hit < 1e-6  # SCAL >= 0 and ~0 at the optimum
    assert miss > 0.9 * -math.log(1e-8) and rand > 0.5  # a miss costs about -log(eps)


def test_presets_and_beta_schedule():
    paper, up = LossConfig.preset("paper"), LossConfig.preset("upstream-code")
    assert (paper.alpha, paper.beta, paper.beta_warmup) == (0.4, 0.6, None)
    assert (paper.divergence, paper.mdl_rows, paper.normalize_over, paper.blocks) == ("skl", "points", "target", None)
    assert (up.alpha, up.divergence, up.mdl_rows, up.normalize_over) == (0.1, "jsd", "all", "target")
    assert [paper.beta_at(s) for s in (0, 10_500, 50_000)] == [0.6, 0.6, 0.6]
    for step in (0, 9_999, 10_000, 10_250, 10_500, 10_999, 11_000, 30_000):
        upstream = 0 if step < 10_000 else (step - 10_000) / 1000 if step < 11_000 else 1.0  # train.py's ramp
        assert up.beta_at(step) == pytest.approx(upstream)
    gen = torch.Generator().manual_seed(3)
    batch, qk = make_batch(gen, 2, 3, 4), make_qk(gen, 2, 3, torch.float64)
    early, late = efficient(up, batch, qk, 3, step=5_000), efficient(up, batch, qk, 3, step=10_500)
    torch.testing.assert_close(early["loss"], 0.1 * early["scal"])
    torch.testing.assert_close(late["loss"], 0.1 * late["scal"] + 0.5 * late["mdl"])


def test_params_and_bad_values():
    params = LossConfig.preset("upstream-code").to_params()
    assert params == {"alpha": 0.1, "beta": 1.0, "beta_warmup": "10000-11000", "normalize_over": "target",
                      "mdl_rows": "all", "divergence": "jsd", "blocks": "all", "eps": 1e-8,
                      "calibrate": "none", "calibrate_batches": 8}
    assert LossConfig.from_dict({"preset": "paper", "blocks": [0, 3]}).to_params()["blocks"] == "0,3"
    assert LossConfig.from_dict({"beta_warmup": [5, 10]}).beta_warmup == (5, 10)
    with pytest.raises(ValueError, match="loss.normalize_over"):
        LossConfig(normalize_over="keys")
    with pytest.raises(ValueError, match="loss.beta_warmup"):
        LossConfig(beta_warmup=(10, 5))
    with pytest.raises(ValueError, match="unknown key.*'gamma'"):
        LossConfig.from_dict({"gamma": 1})
    with pytest.raises(ValueError, match="loss.preset"):
        LossConfig.preset("nope")


def test_blocks_the_model_never_ran_are_an_error():
    gen = torch.Generator().manual_seed(4)
    batch, qk = make_batch(gen, 1, 2, 3), make_qk(gen, 1, 2, torch.float64)
    with pytest.raises(ValueError, match=r"loss.blocks: block\(s\) \[7\] never ran; .* 0..2"):
        efficient(LossConfig(blocks=(1, 7)), batch, qk, 2)
    with pytest.raises(ValueError, match=r"loss.blocks: block\(s\) \[7, 9\]"):
        efficient(LossConfig(blocks=(7, 9)), batch, qk, 2)
    with pytest.raises(RuntimeError, match="never called"):
        correspondence_losses(AttentionProbe(LossConfig(), batch), batch, 0)


def test_only_annotated_rows_are_computed():
    """Matmul FLOPs of the probe scale with the annotated points, not with the reference size."""
    gen = torch.Generator().manual_seed(5)
    k_max, p, b = 3, 2, 2
    batch, qk = make_batch(gen, b, k_max, p), make_qk(gen, b, k_max, torch.float64)
    for mdl_rows, rows in (("points", p), ("all", NR)):
        cfg = LossConfig(normalize_over="target", mdl_rows=mdl_rows)
        probe = AttentionProbe(cfg, batch, recompute=False)
        with FlopCounterMode(display=False) as fc:
            probe(0, qk[0], qk[1], make_layout(k_max))
        assert fc.get_total_flops() == 2 * b * H * k_max * rows * NT * D


class ToyBlocks(torch.nn.Module):
    """Two attention blocks with learnable q/k projections that call the hook like the model."""

    def __init__(self, n_ref_max):
        super().__init__()
        self.layout = make_layout(n_ref_max)
        self.wq = torch.nn.ModuleList(torch.nn.Linear(H * D, H * D) for _ in range(2))
        self.wk = torch.nn.ModuleList(torch.nn.Linear(H * D, H * D) for _ in range(2))

    def block(self, i, x, hook):
        heads = lambda t: t.unflatten(-1, (H, D)).transpose(1, 2)
        q, k = heads(self.wq[i](x)), heads(self.wk[i](x))
        hook(i, q, k, self.layout)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, heads(x))
        return x + out.transpose(1, 2).flatten(2)

    def forward(self, x, hook, use_checkpoint):
        for i in range(2):
            x = checkpoint(self.block, i, x, hook, use_reentrant=False) if use_checkpoint else self.block(i, x, hook)
        return x


@pytest.mark.parametrize("preset", ["paper", "upstream-code"])
def test_gradient_checkpointing_gives_same_values_and_gradients(preset):
    torch.manual_seed(6)
    k_max = 3
    model = ToyBlocks(k_max).double()
    batch = make_batch(torch.Generator().manual_seed(6), 2, k_max, 4)
    x = torch.randn(2, L + NT + k_max * NR, H * D, dtype=torch.float64)
    cfg = LossConfig.preset(preset, beta_warmup=None)
    results = []
    for use_checkpoint in (False, True):
        model.zero_grad()
        probe = AttentionProbe(cfg, batch)
        calls = []
        hook = lambda *args: (calls.append(args[0]), probe(*args))
        out = model(x, hook, use_checkpoint)
        losses = correspondence_losses(probe, batch, 0)
        maps = probe.maps().detach()
        (out.square().mean() + losses["loss"]).backward()
        assert sorted(calls) == ([0, 0, 1, 1] if use_checkpoint else [0, 1])  # backward recomputes both blocks
        assert probe.seen == [0, 1] and torch.equal(probe.maps(), maps)  # ...without recording them twice
        results.append((losses["scal"].detach(), losses["mdl"].detach(),
                        [p.grad.clone() for p in model.parameters()]))
    (s0, m0, g0), (s1, m1, g1) = results
    torch.testing.assert_close(s1, s0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m1, m0, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in g0)


def test_probe_as_attn_hook_of_the_debug_model():
    """With the real fused model: same losses and LoRA gradients with or without gradient
    checkpointing and map recomputation, and SCAL/MDL alone reach the LoRA."""
    from mosaic.model import build_model

    model = build_model("debug", seed=0)
    gen = torch.Generator().manual_seed(8)
    b, k_max, text_len, grid, ref_grid = 2, 3, 8, (4, 4), (3, 3)
    batch = {"ref_mask": torch.tensor([[True, True, True], [True, True, False]]),
             "ref_tokens": torch.randint(0, 9, (b, k_max, 4), generator=gen),
             "target_tokens": torch.randint(0, 16, (b, k_max, 4), generator=gen),
             "point_mask": torch.ones(b, k_max, 4, dtype=torch.bool)}
    batch["point_mask"][1, 2] = False
    c = model.in_channels
    args = (torch.randn(b, 16, c, generator=gen), torch.randn(b, k_max, 9, c, generator=gen), batch["ref_mask"], torch.randn(b, text_len, 16, generator=gen), torch.randn(b, 16, generator=gen),
            torch.rand(b, generator=gen))
    results = []
    for use_checkpoint, recompute in ((False, False), (True, True), (True, False)):
        model.gradient_checkpointing = use_checkpoint
        model.zero_grad()
        probe = AttentionProbe(LossConfig(), batch, recompute=recompute)
        model(*args, target_grid=grid, ref_grid=ref_grid, attn_hook=probe)
        losses = correspondence_losses(probe, batch, 0)
        losses["loss"].backward()
        assert probe.seen == list(range(model.num_double_blocks))
        results.append([losses["scal"].detach(), losses["mdl"].detach()]
                       + [p.grad.clone() for p in model.trainable_parameters() if p.grad is not None])
    assert sum(g.abs().sum() for g in results[0][2:]) > 0 and results[0][1] < 0
    for other in results[1:]:
        assert len(other) == len(results[0])
        for x, y in zip(other, results[0]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
