"""`mosaic plan`: exact parameter counts on the meta device, ZeRO partitioning, measured activations, the CLI."""
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mosaic import memory_plan as plan
from mosaic.cli import main
from mosaic.config import load_config
from mosaic.model import LoraSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.flavour=tiny", "data.train=x", "data.target_size=96", "data.ref_size=48", "model.lora_rank=8"]


def test_meta_counts_equal_a_real_tiny_model():
    for mode, lora in (("lora", LoraSpec(rank=8)), ("base", None)):
        cfg = load_config(None, [*TINY, f"train.mode={mode}"])
        counts = plan.count_parameters(cfg)
        real = build_model("tiny", lora=lora)
        trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
        assert counts.trainable == trainable > 0
        assert counts.frozen == sum(p.numel() for p in real.parameters()) - trainable
        assert counts.hidden == real.transformer.inner_dim and counts.double_blocks == 3 and counts.single_blocks == 2
    assert plan.count_parameters(load_config(None, [*TINY, "train.mode=base"])).frozen == 0


def test_zero_stages_partition_the_model_states():
    counts = plan.Counts(frozen=10_000, trainable=1_000, largest_block=500, hidden=64, double_blocks=2,
                         single_blocks=1)
    tokens, act = plan.Tokens(8, (4, 4), (2, 2), 2, 1), plan.Activations(20.0, 18.0)
    at = lambda s, g, **kw: plan.estimate(counts, tokens, act, stage=s, gpus=g, **kw)  # noqa: E731
    s0 = at(0, 1)
    assert s0.params == 11_000 * 2 and s0.grads == 1_000 * 2 and s0.optim == 1_000 * 16  # bf16 mixed precision
    for n in (2, 4, 8):
        assert at(0, n).states == s0.states  # no partitioning: every GPU holds everything
        assert at(1, n).optim == s0.optim / n and at(1, n).grads == s0.grads and at(1, n).params == s0.params
        assert at(2, n).grads == s0.grads / n and at(2, n).optim == s0.optim / n and at(2, n).params == s0.params
        assert at(3, n).states == pytest.approx(s0.states / n)
        assert at(3, n).workspace == 2 * 500 * 2 and at(2, n).workspace == 0
        assert at(3, n).activations == s0.activations  # data parallel: activations are per GPU
    fp32 = at(0, 1, bf16=False)
    assert fp32.params == 11_000 * 4 and fp32.optim == 1_000 * 8
    full = at(0, 1, checkpointing=False)
    n = tokens.n  # 8 + 16 + 2 x 4
    assert n == 32 and full.activations == n * (2 * 20.0 + 18.0) * 64 * 2
    assert s0.activations == n * 3 * 64 * 2 + 20.0 * n * 64 * 2 < full.activations  # inputs + one block
    with pytest.raises(ValueError, match="ZeRO stage"):
        at(4, 1)


def test_measured_activations_add_up_to_the_whole_model():
    """The per-block numbers (differences of 1- and 2-block models) predict what the full tiny model saves."""
    cfg = load_config(None, TINY)
    counts, tokens = plan.count_parameters(cfg), plan.token_counts(cfg, refs=3)
    assert tokens.n == 32 + 144 + 3 * 36
    act = plan.measure_activations(cfg, counts, tokens)
    assert 5 < act.single < act.double < 80  # hidden-width elements per token: the MLP alone saves 8
    model = build_model("tiny", lora=plan._lora_spec(cfg, rank=8))
    whole = plan._saved_elements(model, tokens)
    blocks = (counts.double_blocks * act.double + counts.single_blocks * act.single) * tokens.n * counts.hidden
    assert blocks == pytest.approx(whole, rel=0.15)  # the rest: embedders and the output layer


def test_cli_prints_the_table(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": {"flavour": "tiny", "lora_rank": 8, "gradient_checkpointing": True},
                                    "data": {"train": "x", "target_size": 96, "ref_size": 48}}))
    assert main(["plan", "--config", str(path), "--gpus", "1", "8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ZeRO")]
    assert len(rows) == 4 * 2 and "| 3 | 8 |" in out
    assert all(r.rstrip(" |").endswith("24, 40, 48, 80, 141") for r in rows)  # a tiny model fits every card


@pytest.mark.parametrize("content, message", [
    ("model: {flavor: tiny}\n", "model.flavor: unknown key"),
    ("train: [1, 2\n", "not valid YAML"),
])
def test_cli_names_the_bad_config_file(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["plan", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mosaic plan: error: ") and str(path) in err and message in err
    assert main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


def test_paper_profile_config_is_the_workflows():
    sys.path.insert(0, str(ROOT / "bench"))
    from memory_plan import profile_overrides

    cfg = load_config(None, profile_overrides(ROOT / "workflow" / "config" / "paper.yaml", 4))
    paper = yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text())["training"]
    assert cfg.model.flavour == paper["common"]["model.flavour"] == "flux-dev"
    assert cfg.model.lora_rank == paper["lora"]["model.lora_rank"] and cfg.model.gradient_checkpointing
    assert cfg.train.precision == "bf16" and cfg.data.target_size == 512 and cfg.data.train.endswith("train_k4")


@pytest.mark.slow
def test_flux_dev_estimate_matches_the_measured_h100_peaks():
    """FLUX.1-dev counted on the meta device; the ZeRO-2 single-GPU estimates within 10% of the H100 peaks."""
    cfg = load_config(None, ["model.flavour=flux-dev", "data.train=x", "data.target_size=512", "data.ref_size=512",
                             "model.gradient_checkpointing=true", "train.precision=bf16"])
    counts = plan.count_parameters(replace(cfg, model=replace(cfg.model, lora_rank=512)))
    assert round(counts.frozen / 1e9, 1) == 11.9 and round(counts.trainable / 1e9, 2) == 1.85  # gpu-notes.md
    table = plan.reference_check(cfg)
    ratios = [float(line.rsplit("|", 2)[1]) for line in table.splitlines()[2:]]
    assert len(ratios) == 3 and all(0.9 <= r <= 1.1 for r in ratios), table
