"""CLIP-I / CLIP-T, protocol `dreambench++`: the project's open_clip path against DreamBench++'s computation
(dreambench_plus/metrics/clip_score.py: transformers CLIPModel + CLIPProcessor, cosine x100), on one small
QuickGELU CLIP with random weights copied across (no download), and the same images and token ids."""
import numpy as np
import pytest
import torch
from PIL import Image

from metrics.clip import ClipModel
from metrics.tiny_evaluators.clip_training import save_clip
from metrics.registry import cosine100

transformers = pytest.importorskip("transformers")

W, LAYERS, HEADS, EMBED = 64, 2, 2, 32
CFG = {"embed_dim": EMBED, "quick_gelu": True,
       "vision_cfg": {"image_size": 224, "layers": LAYERS, "width": W, "patch_size": 32, "head_width": W // HEADS},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": W, "heads": HEADS, "layers": LAYERS}}


def _to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict -> transformers CLIPModel state dict (the published key layout of each)."""
    out = {"logit_scale": sd["logit_scale"],
           "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
           "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
           "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
           "visual_projection.weight": sd["visual.proj"].T,
           "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_projection.weight": sd["text_projection"].T}
    for src, dst in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                     ("ln_final", "text_model.final_layer_norm")):
        out[f"{dst}.weight"], out[f"{dst}.bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]
    for tower, hf in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        for i in range(LAYERS):
            s, d = f"{tower}.resblocks.{i}", f"{hf}.layers.{i}"
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{d}.{b}.weight"], out[f"{d}.{b}.bias"] = sd[f"{s}.{a}.weight"], sd[f"{s}.{a}.bias"]
            for n, w, b in zip("qkv", sd[f"{s}.attn.in_proj_weight"].chunk(3), sd[f"{s}.attn.in_proj_bias"].chunk(3)):
                out[f"{d}.self_attn.{n}_proj.weight"], out[f"{d}.self_attn.{n}_proj.bias"] = w, b
    return out


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    net = open_clip.CLIP(**{k: v for k, v in CFG.items() if k != "quick_gelu"}, quick_gelu=True).eval()
    folder = save_clip(net, tmp_path_factory.mktemp("clip") / "b32-like", CFG)
    ours = ClipModel("clip_i", f"local-dir:{folder}")
    hf_cfg = transformers.CLIPConfig(
        projection_dim=EMBED,
        text_config={"vocab_size": 49408, "hidden_size": W, "intermediate_size": 4 * W, "num_hidden_layers": LAYERS,
                     "num_attention_heads": HEADS, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "eos_token_id": 2},  # 2: the original CLIP configs' value, pooled at the argmax token (EOT)
        vision_config={"hidden_size": W, "intermediate_size": 4 * W, "num_hidden_layers": LAYERS,
                       "num_attention_heads": HEADS, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"})
    ref = transformers.CLIPModel(hf_cfg).eval()
    missing, unexpected = ref.load_state_dict(_to_hf(net.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return ours, ref, transformers.CLIPImageProcessor()  # its defaults: OpenAI CLIP's (224 bicubic, crop, mean/std)


def _images():
    out = []
    for i, (w, h) in enumerate(((320, 240), (200, 300), (257, 257), (512, 384))):
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([(x * 255) // (w - 1), (y * 255) // (h - 1), ((x + 2 * y + 40 * i) % 256)], -1)
        img[h // 4: h // 2, w // 3: w // 2] = (30 * i, 200, 90)
        out.append(img.astype(np.uint8))
    return out


def test_clip_scores_equal_dreambench_plus_computation(pair):
    ours, ref, processor = pair
    images, prompts = _images(), ["a dog on the beach", "a red backpack in the snow", "a cat", "a vase of flowers"]
    assert any(isinstance(m, __import__("open_clip").transformer.QuickGELU) for m in ours.net.modules())
    mine_img, mine_txt = ours.embed(images), ours.embed_text(prompts)
    with torch.no_grad():
        pix = processor(images=[Image.fromarray(a) for a in images], return_tensors="pt")["pixel_values"]
        ref_img = _features(ref.get_image_features(pixel_values=pix)).numpy()
        ref_txt = _features(ref.get_text_features(input_ids=ours.tokenizer(prompts))).numpy()
    np.testing.assert_allclose(ours.preprocess(Image.fromarray(images[0])).numpy(), pix[0].numpy(), atol=2e-2)
    clip_i = cosine100(mine_img[:-1], mine_img[1:]), cosine100(ref_img[:-1], ref_img[1:])
    clip_t = cosine100(mine_img, mine_txt), cosine100(ref_img, ref_txt)
    np.testing.assert_allclose(*clip_i, atol=0.01)  # CLIP-I points (x100 scale)
    np.testing.assert_allclose(*clip_t, atol=0.01)  # CLIP-T points
    print(f"parity: CLIP-I max |diff| {np.abs(clip_i[0] - clip_i[1]).max():.2e}, "
          f"CLIP-T max |diff| {np.abs(clip_t[0] - clip_t[1]).max():.2e} points")
