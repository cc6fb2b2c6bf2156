"""Building models: flavours, weights loading (and its errors), LoRA spec checks, LoRA and base I/O."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from mosaic.model import FLAVOURS, LoraSpec, build_model, get_flavour


def test_flux_dev_flavour_is_flux1_dev():
    cfg = FLAVOURS["flux-dev"].transformer
    with torch.device("meta"):
        n = sum(p.numel() for p in FluxTransformer2DModel(**cfg).parameters())
    assert 11.8e9 < n < 12.0e9  # FLUX.1-dev's transformer has ~11.9B parameters
    assert cfg["guidance_embeds"] and sum(cfg["axes_dims_rope"]) == cfg["attention_head_dim"]
    for name in ("tiny", "debug"):
        t = FLAVOURS[name].transformer
        assert sum(t["axes_dims_rope"]) == t["attention_head_dim"] and t["in_channels"] == 192
    with pytest.raises(ValueError, match="unknown model flavour 'huge'"):
        get_flavour("huge")


def test_lora_spec_validation_and_targets():
    with pytest.raises(ValueError, match="double.attn.add_q_proj"):
        LoraSpec(targets=("double.attn.add_q_proj",))  # text stream: never sees reference tokens
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)
    m = build_model("debug", lora=LoraSpec(rank=2))  # upstream targets
    wrapped = {n.removesuffix(".lora_A") for n, _ in m.transformer.named_modules() if n.endswith(".lora_A")}
    assert "x_embedder" in wrapped and "proj_out" not in wrapped and "norm_out.linear" not in wrapped
    assert "transformer_blocks.0.ff.net.2" in wrapped and "transformer_blocks.0.ff_context.net.2" not in wrapped
    assert "single_transformer_blocks.0.proj_out" in wrapped
    assert "transformer_blocks.1.norm1_context.linear" not in wrapped
    assert len(wrapped) == 1 + 6 * 2 + 6 * 1
    again, other = build_model("debug", lora=LoraSpec(rank=2)), build_model("debug", lora=LoraSpec(rank=2), seed=1)
    a, b, c = (list(x.lora_state_dict().values()) for x in (m, again, other))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))


def test_missing_and_mismatched_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no-such-folder")):
        build_model("debug", weights=tmp_path / "no-such-folder")
    with pytest.raises(FileNotFoundError, match="cache"):
        build_model("flux-dev", weights="nobody/not-a-cached-model")
    base = build_model("debug", lora=None)
    base.save_base(tmp_path / "base")
    with pytest.raises(ValueError, match="num_layers"):
        build_model("tiny", weights=tmp_path / "base")


def test_save_base_then_load_as_weights(tmp_path):
    base = build_model("debug", lora=None, seed=3)
    assert len(base.trainable_parameters()) == len(list(base.parameters()))  # base mode: everything trains
    out = base.save_base(tmp_path / "run" / "base")
    (tmp_path / "pipe").mkdir()
    (out).rename(tmp_path / "pipe" / "transformer")  # also accepted as a pipeline folder
    for weights in (tmp_path / "pipe", tmp_path / "pipe" / "transformer"):
        m = build_model("debug", weights=weights, lora=None)
        sd = m.transformer.state_dict()
        assert sd.keys() == base.transformer.state_dict().keys()
        assert all(torch.equal(v, sd[k]) for k, v in base.transformer.state_dict().items())


def test_save_lora_loads_in_flux_pipeline(tmp_path):
    m = build_model("debug", lora=LoraSpec(rank=4, alpha=8))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.normal_()
    path = m.save_lora(tmp_path / "out" / "mosaic_lora.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["mosaic_lora.safetensors"]  # no temp leftovers
    with safe_open(path, "pt") as f:
        assert all(k.startswith("transformer.") for k in f.keys())

    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None,
                        transformer=FluxTransformer2DModel(**m.flavour.transformer))
    pipe.load_lora_weights(path, adapter_name="mosaic")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="mosaic")
    saved = m.lora_state_dict()
    assert len(loaded) == len(saved) == 2 * 19
    for k, v in loaded.items():
        assert torch.equal(v, saved[f"transformer.{k}"]), k
    cfg = pipe.transformer.peft_config["mosaic"]
    assert (cfg.r, cfg.lora_alpha) == (4, 8)  # the adapter config travels in the file's metadata

    fresh = build_model("debug", lora=LoraSpec(rank=4, alpha=8))
    fresh.load_lora(path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.lora_state_dict().values(), saved.values()))
    with pytest.raises(ValueError, match="shape"):
        build_model("debug", lora=LoraSpec(rank=2, alpha=8)).load_lora(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        fresh.load_lora(tmp_path / "missing.safetensors")
