"""IP-Sim, XVerse protocol: the kit's crop steps on fixed inputs with hand-checked intermediates
(XVerse `eval/tools/florence_sam.py` + `idip_sam-dino_score.py`, `src/utils/data_utils.py`
pad_to_square), and the Florence-2 + SAM2 localiser's real code path on tiny random models of the
native transformers classes, saved in the save_pretrained layout it loads."""

import numpy as np
import pytest
import torch

from metrics.backbones.localise import (Detection, Florence2Sam2Localiser, NotLocalisable, big_enough, crop_on_white,
                              min_instance_size, pad_to_square, parse_open_vocabulary, xverse_crops)
from metrics.manifest import RefInput
from metrics.registry import MetricUnavailable

_tf = pytest.importorskip("transformers")
native = pytest.mark.skipif(not all(hasattr(_tf, c) for c in ("Florence2ForConditionalGeneration", "Sam2Model",
                                                                "Sam2ImageProcessor")),
                            reason=f"transformers {_tf.__version__} lacks the native Florence-2 / SAM2 classes "
                                   f"(and the v5 Sam2ImageProcessor name) these tiny models are built from")


def test_crop_is_the_mask_on_white_cut_to_the_rounded_detector_box():
    img = np.full((120, 200, 3), 7, np.uint8)
    mask = np.zeros((120, 200), bool)
    mask[25:40, 15:55] = True
    # supervision.crop_image rounds (numpy, half to even) then slices: x 10.4->10, 60.5->60; y 20.6->21, 45.2->45
    crop = crop_on_white(img, mask, (10.4, 20.6, 60.5, 45.2))
    assert crop.shape == (24, 50, 3)
    inside = np.zeros((24, 50), bool)
    inside[25 - 21:40 - 21, 15 - 10:55 - 10] = True
    assert (crop[inside] == 7).all() and (crop[~inside] == 255).all()
    # a bare mask (no detector) is cut to its own bounding box
    assert crop_on_white(img, mask).shape == (15, 40, 3)


def test_size_filter_is_w_over_20_area_and_a_quarter_of_it_on_the_short_side():
    assert min_instance_size(200) == 10 and min_instance_size(1024) == 51 and min_instance_size(19) == 0
    keep = [(10, 10), (9, 12), (3, 40), (40, 3), (2, 60)]  # areas >= 100, short side >= 10 // 4 = 2
    drop = [(9, 11), (1, 200), (200, 1), (0, 50)]  # area 99; short side 1 < 2; empty
    assert all(big_enough(np.zeros((h, w, 3), np.uint8), 10) for h, w in keep)
    assert not any(big_enough(np.zeros((h, w, 3), np.uint8), 10) for h, w in drop)


def test_pad_to_square_centres_the_crop_on_white_and_keeps_every_pixel():
    crop = np.zeros((20, 41, 3), np.uint8)
    sq = pad_to_square(crop)
    assert sq.shape == (41, 41, 3) and sq.dtype == np.uint8
    top = (41 - 20) // 2  # 10 above, 11 below
    assert (sq[top:top + 20] == 0).all() and (sq[:top] == 255).all() and (sq[top + 20:] == 255).all()
    tall = pad_to_square(np.zeros((30, 7, 3), np.uint8))
    assert tall.shape == (30, 30, 3) and (tall[:, 11:18] == 0).all() and (tall[:, :11] == 255).all()
    assert (tall[:, 18:] == 255).all()
    assert pad_to_square(np.zeros((5, 5, 3), np.uint8)).shape == (5, 5, 3)


def _reach(mask: np.ndarray) -> float:
    """Fraction of a mask's pixels inside DINO's view: short side resized to 256, centre crop 224."""
    from torchvision import transforms as T

    m = T.Resize(256, interpolation=T.InterpolationMode.NEAREST)(torch.from_numpy(mask[None].astype(np.float32)))
    return float(T.CenterCrop(224)(m).sum() / m.sum())


def test_padding_lets_a_2_to_1_subject_reach_dino_crop():
    """A 2:1 subject filling its crop: unpadded, resize to 512x256 and crop 224x224 keeps
    (224/512)(224/256) = 38.3% of it; padded to a square, the subject is the middle half of a
    256x256 image and the crop keeps 224/256 = 87.5% of it. For a 2:1 ellipse: 48.7% -> 94.8%."""
    subject = np.zeros((200, 400, 3), np.uint8)
    unpadded = _reach(np.ones((200, 400), bool))
    padded = _reach((pad_to_square(subject) == 0).all(-1))
    assert unpadded == pytest.approx(224 / 512 * 224 / 256, abs=1e-6)
    assert padded == pytest.approx(224 / 256, abs=1e-6)
    yy, xx = np.mgrid[:200, :400]
    ellipse = ((xx + .5 - 200) / 200) ** 2 + ((yy + .5 - 100) / 100) ** 2 <= 1
    e_crop = np.where(ellipse[..., None], 0, 255).astype(np.uint8)
    e_unpadded, e_padded = _reach(ellipse), _reach((pad_to_square(e_crop) == 0).all(-1))
    assert e_unpadded == pytest.approx(0.487, abs=2e-3) and e_padded == pytest.approx(0.948, abs=2e-3)


def test_xverse_crops_drop_small_instances_then_keep_the_first_three_in_detector_order():
    img = np.zeros((100, 200, 3), np.uint8)  # W = 200: min_size 10
    for k in range(6):
        img[..., 0][:, k * 30:(k + 1) * 30] = 10 * (k + 1)  # each instance's own colour
    full = np.ones((100, 200), bool)
    boxes = [(0, 0, 30, 20),  # kept (30 x 20)
             (30, 0, 39, 11),  # 9 x 11 = 99 < 100: dropped
             (60, 0, 90, 50),  # kept
             (90, 0, 120, 1),  # short side 1 < 2: dropped
             (120, 0, 150, 10),  # kept (30 x 10)
             (150, 0, 180, 90)]  # kept, but only the first 3 survivors are used
    found = [Detection(b, full) for b in boxes]
    crops, dropped = xverse_crops(img, found, 3)
    assert dropped == 2 and [c.shape for c in crops] == [(30, 30, 3), (50, 50, 3), (30, 30, 3)]
    assert [int(c[..., 0].min()) for c in crops] == [10, 30, 50]  # instances 0, 2, 4 (pads are 255)
    # crop 0: 20 rows centred in 30 -> 5 white rows above
    assert (crops[0][:5] == 255).all() and (crops[0][5:25, :, 0] == 10).all()
    assert xverse_crops(img, [], 3) == ([], 0)
    # the kit cuts the masked image to the box even when SAM's mask is empty: an all-white crop is scored
    white, n = xverse_crops(img, [Detection((0, 0, 30, 20), np.zeros((100, 200), bool))], 3)
    assert n == 0 and len(white) == 1 and white[0].shape == (30, 30, 3) and (white[0] == 255).all()
    assert xverse_crops(img, [np.zeros((100, 200), bool)], 3) == ([], 0)  # a bare empty mask has no box
    assert xverse_crops(img, [Detection((0, 0, 5, 5), full)], 3) == ([], 1)  # 25 < 100: nothing left -> 0


def test_ip_sim_xverse_protocol_scores_zero_with_its_reason_when_nothing_is_left(tmp_path):
    from PIL import Image

    from metrics.evaluate import evaluate
    from metrics.tiny_evaluators.dino_training import new_vit, save_dino
    from metrics.manifest import Item

    save_dino(new_vit(0), tmp_path / "dino")
    Image.new("RGB", (60, 60), "white").save(tmp_path / "gen.png")
    Image.new("RGB", (60, 60), "red").save(tmp_path / "ref.png")
    speck = np.zeros((60, 60), np.uint8)
    speck[5, 5] = 255  # 1 px < (60 // 20)^2 = 9
    Image.fromarray(speck).save(tmp_path / "speck.png")
    empty = np.zeros((60, 60), np.uint8)
    Image.fromarray(empty).save(tmp_path / "empty.png")
    refs = [RefInput(tmp_path / "ref.png", word="star", mask=tmp_path / "speck.png"),
            RefInput(tmp_path / "ref.png", word="star", mask=tmp_path / "empty.png")]
    cfg = {"dino": {"model": f"local-dir:{tmp_path / 'dino'}"}, "ip_sim": {"localiser": "masks"}}
    table = evaluate([Item("x", tmp_path / "gen.png", "p", refs)], cfg, ["IP-Sim"])[0]
    assert table.value.tolist() == [0.0, 0.0]
    assert table.reason.tolist() == ["subject not found (1 instance(s) under the W/20 size filter)",
                                     "subject not found"]
    assert set(table.protocol) == {"xverse"}
    # the named owlv2_sam protocol has no size filter: the 1-px speck is scored
    cfg["ip_sim"]["protocol"] = "owlv2_sam"
    old = evaluate([Item("x", tmp_path / "gen.png", "p", refs)], cfg, ["IP-Sim"])[0]
    assert np.isfinite(old.value[0]) and old.value[0] != 0 and old.reason[1] == "subject not found"
    assert set(old.protocol) == {"owlv2_sam"}


def test_unknown_protocol_or_another_protocols_detector_is_refused(tmp_path):
    from metrics.ipsim import IpSim
    from metrics.registry import Context

    with pytest.raises(MetricUnavailable, match=r"'ip_sim': protocol 'dreambench' is not one of xverse, owlv2_sam"):
        IpSim({"ip_sim": {"protocol": "dreambench"}, "dino": {}}, Context({}))
    with pytest.raises(MetricUnavailable, match=r"localiser: 'owlv2_sam' is not the 'xverse' protocol's detector"):
        IpSim({"ip_sim": {"localiser": "owlv2_sam"}, "dino": {}}, Context({}))
    with pytest.raises(MetricUnavailable, match=r"'florence2_sam2' is not the 'owlv2_sam' protocol's detector"):
        IpSim({"ip_sim": {"protocol": "owlv2_sam", "localiser": "florence2_sam2"}, "dino": {}}, Context({}))
    # the paper profile's default: the xverse protocol with Florence-2 + SAM2, whose missing weights name the key
    from metrics.config import load_config

    with pytest.raises(MetricUnavailable, match=r"ip_sim\.detector is not set: give a local folder with the Flor"):
        IpSim(load_config(), Context({}))


# --- the Florence-2 + SAM2 localiser on tiny random models -------------------------------------------------

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "Locate", "in", "the", "image.", "dog", "cat"]
LOCS = [f"<loc_{i}>" for i in range(1000)]


def _tiny_florence_sam2(folder, answer=None):
    """Tiny Florence-2 (DaViT + BART) and SAM2 (Hiera) with random weights. `answer`: token strings the
    Florence-2 generation is steered to (a generation_config sequence bias saved with the model), so
    the detector's real decoding and parsing path yields known boxes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, PreTrainedTokenizerFast, Sam2Config, Sam2ImageProcessor,
                              Sam2Model, Sam2Processor)

    vocab = {w: i for i, w in enumerate(WORDS + LOCS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.Fuse()  # "dog<loc_1><loc_2>...", as Florence-2's BART tokenizer decodes
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False)
    image_processor.image_seq_length = 5  # 64 px / stride 32 = 2x2 tokens, + 1 pooled
    proc = Florence2Processor(image_processor=image_processor, tokenizer=tok, post_processor_config={
        "description_with_bboxes_or_polygons": {}, "description_with_bboxes": {}, "pure_text": {}})
    torch.manual_seed(0)
    flo = Florence2ForConditionalGeneration(Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 64], num_heads=[1, 1, 2, 2],
                           num_groups=[1, 1, 2, 2], window_size=2, projection_dim=32, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2),
        image_token_id=vocab["<image>"]))
    if answer is not None:
        ids = [vocab[t] for t in answer]
        flo.generation_config.sequence_bias = [[ids[:k + 1], 100.0 * (k + 1)] for k in range(len(ids))]
    flo.save_pretrained(folder / "florence2")
    proc.save_pretrained(folder / "florence2")
    sam = Sam2Model(Sam2Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1,
                                 image_size=[64, 64], blocks_per_stage=[1, 1, 2, 1],
                                 embed_dim_per_stage=[8, 16, 32, 64],
                                 num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                                 global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2]),
            backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
            fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32,
                                 num_hidden_layers=1)))
    sam.save_pretrained(folder / "sam2")
    sam_ip = Sam2ImageProcessor(size={"height": 64, "width": 64}, mask_size={"height": 16, "width": 16})
    Sam2Processor(image_processor=sam_ip).save_pretrained(folder / "sam2")
    return {"protocol": "xverse", "detector": str(folder / "florence2"), "segmenter": str(folder / "sam2")}


# one box over most of the 70x50 image, one 2x1-px box the W/20 filter drops
ANSWER = ["dog", "<loc_100>", "<loc_200>", "<loc_500>", "<loc_900>",
          "<loc_700>", "<loc_700>", "<loc_730>", "<loc_730>", "</s>"]


@native
def test_open_vocabulary_answer_parses_to_pixel_boxes(tmp_path):
    from transformers import Florence2Processor

    proc = Florence2Processor.from_pretrained(_tiny_florence_sam2(tmp_path)["detector"])
    text = "</s><s>dog<loc_100><loc_200><loc_500><loc_900>dog<loc_0><loc_0><loc_999><loc_999></s>"
    # 1000 bins per side, each read at its centre as floats (the kit's Florence-2 code): (bin + 0.5) * side / 1000
    got = parse_open_vocabulary(proc, text, (70, 50))
    assert np.allclose(got, [[7.035, 10.025, 35.035, 45.025], [0.035, 0.025, 69.965, 49.975]])
    # at 1024 x 768 the kit crops from x = round(102.912) = 103; the native post-processor's int() would give 102
    assert np.allclose(parse_open_vocabulary(proc, text, (1024, 768))[0], [102.912, 153.984, 512.512, 691.584])
    native = proc.post_process_generation(text, task="<OPEN_VOCABULARY_DETECTION>", image_size=(1024, 768))
    assert native["<OPEN_VOCABULARY_DETECTION>"]["bboxes"][0] == [102, 153, 512, 691]
    assert parse_open_vocabulary(proc, "</s><s>dog</s>", (70, 50)) == []


@native
def test_florence2_sam2_localiser_runs_on_tiny_random_models(tmp_path):
    sec = _tiny_florence_sam2(tmp_path, ANSWER)
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    loc = Florence2Sam2Localiser("ip_sim", sec)
    found = loc.instances(img, RefInput("r.png", word="dog"))
    assert np.allclose([d.box for d in found], [(7.035, 10.025, 35.035, 45.025), (49.035, 35.025, 51.135, 36.525)])
    assert all(d.mask.shape == (50, 70) and d.mask.dtype == bool for d in found)
    crops, dropped = xverse_crops(img, found, 3)
    # rounded boxes (7, 10, 35, 45): 28 wide x 35 high, padded to 35 x 35; (49, 35, 51, 37): 2 x 2 < 3^2, dropped
    assert dropped == 1 and [c.shape for c in crops] == [(35, 35, 3)]
    with pytest.raises(NotLocalisable, match="no subject word"):
        loc.instances(img, RefInput("r.png"))
    # an unsteered random model: whatever it generates parses to boxes inside the image (corners in any
    # order, as the kit takes them: an inverted box crops to nothing and the size filter drops it)
    free = Florence2Sam2Localiser("ip_sim", {**_tiny_florence_sam2(tmp_path / "free"), "max_new_tokens": 40})
    found = free.instances(img, RefInput("r.png", word="dog"))
    assert all(0 <= d.box[0] < 70 and 0 <= d.box[2] < 70 and 0 <= d.box[1] < 50 and 0 <= d.box[3] < 50 for d in found)
    crops, dropped = xverse_crops(img, found, 3)
    assert len(crops) + dropped >= min(len(found), 3) and all(c.shape[0] == c.shape[1] for c in crops)


@native
def test_ip_sim_xverse_end_to_end_equals_the_kit_steps_by_hand(tmp_path):
    from PIL import Image

    from metrics.dino import load_dino
    from metrics.evaluate import evaluate
    from metrics.tiny_evaluators.dino_training import new_vit, save_dino
    from metrics.manifest import Item
    from metrics.registry import Context, cosine100

    sec = _tiny_florence_sam2(tmp_path, ANSWER)
    save_dino(new_vit(0), tmp_path / "dino")
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "gen.png")
    Image.new("RGB", (40, 40), "red").save(tmp_path / "ref.png")
    cfg = {"dino": {"model": f"local-dir:{tmp_path / 'dino'}"}, "ip_sim": sec}
    refs = [RefInput(tmp_path / "ref.png", word="dog"), RefInput(tmp_path / "ref.png", word="dog", category="human")]
    table = evaluate([Item("x", tmp_path / "gen.png", "p", refs)], cfg, ["IP-Sim"])[0]
    # by hand: the one kept box (7.035, 10.025, 35.035, 45.025) -> rows 10:45, cols 7:35; SAM2's mask for it,
    # on white, padded, DINO cosine x100
    loc = Florence2Sam2Localiser("ip_sim", sec)
    mask = loc.segment(img, [[7.035, 10.025, 35.035, 45.025], [49.035, 35.025, 51.135, 36.525]])[0]
    crop = np.where(mask[..., None], img, 255).astype(np.uint8)[10:45, 7:35]
    square = np.full((35, 35, 3), 255, np.uint8)
    square[:, 3:31] = crop  # (35 - 28) // 2 = 3 white columns on the left
    dino = load_dino(cfg, Context(cfg))
    want = float(cosine100(dino.embed([square]), dino.embed([np.asarray(Image.open(tmp_path / "ref.png"))]))[0])
    assert table.value[0] == pytest.approx(want, abs=1e-4) and table.reason[0] == ""
    assert np.isnan(table.value[1]) and table.protocol[0] == "xverse"
    assert table.model[0].startswith("Florence-2 <OPEN_VOCABULARY_DETECTION> (beams 3, <= 768 new tokens) + SAM2")


def test_florence2_sam2_missing_weights_name_the_key_and_path(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"ip_sim\.detector is not set"):
        Florence2Sam2Localiser("ip_sim", {"segmenter": str(tmp_path)})
    with pytest.raises(MetricUnavailable, match=rf"ip_sim\.segmenter: weights folder {tmp_path}/sam2 not found"):
        Florence2Sam2Localiser("ip_sim", {"detector": str(tmp_path), "segmenter": str(tmp_path / "sam2")})
