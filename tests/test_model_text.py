"""Prompt encoders: the tiny hashed-word encoder, and the paper encoders' missing-weights error."""
import pytest
import torch

from mosaic.model import build_text_encoder


def test_hashed_encoder_shapes_determinism_and_order():
    enc = build_text_encoder("tiny")
    text, pooled = enc.encode(["A red circle, a blue square", "a blue square a red circle", ""])
    assert text.shape == (3, enc.max_length, enc.dim) and pooled.shape == (3, enc.pooled_dim)
    again, _ = build_text_encoder("tiny").encode(["a red circle a blue square"])
    assert torch.equal(again[0], text[0])  # same words -> same features, case and punctuation ignored
    assert not torch.allclose(text[0], text[1])  # word order is visible in the sequence
    assert torch.allclose(pooled[0], pooled[1])  # ... but not in the pooled vector
    assert text[0, 6:].abs().sum() == 0  # zero padding after the 6 words
    assert text[2].abs().sum() == 0 and pooled[2].abs().sum() == 0  # empty prompt (text dropout) -> zeros


def test_phrase_context_binds_each_word_to_its_phrase():
    """With context="phrase" a kind word's feature depends on its own phrase's place and on no other phrase's."""
    from mosaic.model.text import HashedWordEncoder

    enc = HashedWordEncoder(16, 32, 8, context="phrase")
    assert enc.phrases("a cross at the top left, a disk at the top right and a square") == [0] * 6 + [1] * 6 + [2] * 3
    a, _ = enc.encode(["a cross at the top left and a disk at the top right"])
    b, _ = enc.encode(["a cross at the bottom left and a disk at the top right"])
    c, _ = enc.encode(["a cross at the top left and a disk at the bottom right"])
    assert not torch.allclose(a[0, 1], b[0, 1])  # "cross" (word 1) knows its own place ...
    assert torch.allclose(a[0, 1], c[0, 1])  # ... and nothing of the other phrase's
    bare, _ = HashedWordEncoder(16, 32, 8).encode(["a cross at the top left and a disk at the top right",
                                                     "a cross at the bottom left and a disk at the top right"])
    assert torch.allclose(bare[0, 1], bare[1, 1])  # without context, "cross" is the same vector in both
    code = (a - bare[:1])[0]  # what the context adds: one code per phrase, on each of its words
    assert torch.allclose(code[0], code[5]) and not torch.allclose(code[0], code[6])
    assert code[:13].norm(dim=-1).min() > 0.3 * bare[0, :13].norm(dim=-1).mean()  # not negligible
    assert code[13:].abs().sum() == 0  # padding stays zero
    with pytest.raises(ValueError, match="context"):
        HashedWordEncoder(16, 32, 8, context="window")


def test_hashed_encoder_truncates():
    enc = build_text_encoder("debug")
    text, _ = enc.encode([" ".join(f"w{i}" for i in range(50))])
    assert text.shape == (1, enc.max_length, enc.dim) and text[0, -1].abs().sum() > 0


def test_t5_clip_missing_weights_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="T5 and CLIP"):
        build_text_encoder("flux-dev")
    (tmp_path / "flux").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "flux" / "text_encoder")):
        build_text_encoder("flux-dev", weights=tmp_path / "flux")


def _tiny_flux_text_folder(d):
    """A diffusers-style folder with tiny random CLIP-L / T5 stand-ins and offline-built tokenizers."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    words = ["a", "red", "circle", "blue", "square"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(words)}}
    (d / "bpe").mkdir()
    (d / "bpe/vocab.json").write_text(json.dumps(vocab))
    (d / "bpe/merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "bpe/vocab.json"), str(d / "bpe/merges.txt"), model_max_length=77)
    tok.save_pretrained(d / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(d / "text_encoder")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [("\u2581" + w, -1.0) for w in words]
    T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512).save_pretrained(d / "tokenizer_2")
    T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=12, d_kv=4, d_ff=16, num_layers=1,
                            num_heads=2)).save_pretrained(d / "text_encoder_2")


def test_t5_clip_encoder_on_tiny_random_models(tmp_path):
    from mosaic.model.text import T5ClipEncoder

    _tiny_flux_text_folder(tmp_path)
    enc = T5ClipEncoder(tmp_path, max_length=16, dtype=torch.float32)
    text, pooled = enc.encode(["a red circle", "blue square"])
    assert text.shape == (2, 16, 12) and pooled.shape == (2, 8) and (enc.dim, enc.pooled_dim) == (12, 8)
    pipe = enc.pipe
    ids = pipe.tokenizer_2(["a red circle"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert ids[0, :4].tolist() == [4, 5, 6, 1]  # words, then </s>, then padding
    with torch.no_grad():
        torch.testing.assert_close(text[:1], pipe.text_encoder_2(ids).last_hidden_state)
