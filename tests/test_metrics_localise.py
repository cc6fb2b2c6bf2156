"""IP-Sim localisers: background components, crops on white, and the OWLv2 + SAM adapter's real
code path on tiny random models saved in the save_pretrained layout it loads."""

import numpy as np
import pytest
import torch

from metrics.backbones.localise import BackgroundLocaliser, NotLocalisable, OwlSamLocaliser, crop_on_white
from metrics.manifest import RefInput
from metrics.registry import MetricUnavailable


def test_crop_on_white_keeps_only_the_mask_in_its_box():
    img = np.full((10, 12, 3), 7, np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    mask[2, 3] = False
    crop = crop_on_white(img, mask)
    assert crop.shape == (3, 6, 3)
    assert (crop[0, 0] == 255).all() and (crop[1:, :] == 7).all()


def test_background_localiser_finds_subjects_largest_first():
    img = np.full((40, 40, 3), (200, 220, 240), np.uint8)
    img[2:12, 2:12] = (200, 30, 30)  # 100 px
    img[20:36, 20:36] = (30, 30, 200)  # 256 px
    img[38, 38] = (0, 0, 0)  # a 1-pixel speck: below min_area
    found = BackgroundLocaliser("ip_sim", {"max_instances": 3}).instances(img, RefInput("r.png"))
    assert [int(m.sum()) for m in found] == [256, 100]


def _tiny_owl_sam(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor,
                              PreTrainedTokenizerFast, SamConfig, SamImageProcessor, SamModel, SamProcessor)

    words = ["!", "<|startoftext|>", "<|endoftext|>", "[UNK]", "a", "dog", "star"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                      special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="!", unk_token="[UNK]",
                                  bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    owl = Owlv2ForObjectDetection(Owlv2Config(
        text_config=dict(small, vocab_size=len(words), max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(small, image_size=64, patch_size=16), projection_dim=32))
    owl.save_pretrained(folder / "owlv2")
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tok).save_pretrained(folder / "owlv2")
    sam = SamModel(SamConfig(
        vision_config=dict(small, image_size=64, patch_size=16, output_channels=32, window_size=2,
                           global_attn_indexes=[0], mlp_dim=64, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32,
                                 num_hidden_layers=1)))
    sam.save_pretrained(folder / "sam")
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
                 ).save_pretrained(folder / "sam")
    return {"localiser": "owlv2_sam", "detector": str(folder / "owlv2"), "segmenter": str(folder / "sam")}


def test_owlv2_sam_adapter_runs_on_tiny_random_models(tmp_path):
    """Random weights: this checks the plumbing (query, boxes, SAM masks at image size), not quality."""
    sec = _tiny_owl_sam(tmp_path)
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    loc = OwlSamLocaliser("ip_sim", {**sec, "box_threshold": 0.0})
    masks = loc.instances(img, RefInput("r.png", word="dog"))
    assert 1 <= len(masks) <= 3 and all(m.shape == (50, 70) and m.dtype == bool for m in masks)
    none = OwlSamLocaliser("ip_sim", {**sec, "box_threshold": 1.01}).instances(img, RefInput("r.png", word="dog"))
    assert none == []  # -> IP-Sim 0, "subject not found"
    with pytest.raises(NotLocalisable, match="no subject word"):
        loc.instances(img, RefInput("r.png"))


def test_owlv2_sam_missing_weights_name_the_key(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"ip_sim\.detector is not set"):
        OwlSamLocaliser("ip_sim", {"segmenter": str(tmp_path)})
    with pytest.raises(MetricUnavailable, match=rf"ip_sim\.segmenter: weights folder {tmp_path}/sam not found"):
        OwlSamLocaliser("ip_sim", {"detector": str(tmp_path), "segmenter": str(tmp_path / "sam")})


def test_ip_sim_gives_nan_for_human_and_unlocalisable_references(tmp_path):
    from PIL import Image

    from metrics.evaluate import evaluate
    from metrics.manifest import Item
    from metrics.tiny_evaluators.dino_training import new_vit, save_dino

    save_dino(new_vit(0), tmp_path / "dino")
    Image.new("RGB", (48, 48), "white").save(tmp_path / "a.png")
    refs = [RefInput(tmp_path / "a.png", category="human"), RefInput(tmp_path / "a.png", word="star")]
    cfg = {"dino": {"model": f"local-dir:{tmp_path / 'dino'}"}, "ip_sim": {"localiser": "masks"}}
    table = evaluate([Item("x", tmp_path / "a.png", "p", refs)], cfg, ["IP-Sim"])[0]
    assert table.value.isna().all()
    assert table.reason.tolist() == ["human reference (scored by ID-Sim)",
                                     "no ground-truth mask for this reference in the manifest"]
