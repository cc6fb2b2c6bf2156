"""UnifiedReward: the score parser on fixed replies, the published prompt, and the model call on a tiny random
Qwen2.5-VL (the real transformers class) through metrics.evaluate."""
import math

import numpy as np
import pytest
from PIL import Image

from metrics.evaluate import evaluate
from metrics.manifest import Item
from metrics.backbones.qwen_vl import QwenVL
from metrics.registry import MetricUnavailable
from metrics.unified_reward import NO_SCORE, PROMPT, parse_score
from tests.tiny_qwen_vl import build_tiny_qwen_vl


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen"))


@pytest.mark.parametrize("reply, score", [
    ("dog (entity): 1\ngrass (object): 1\nFinal Score: 4", 4.0),
    ("... Final Score: 3.5 because", 3.5),
    ("Final Score:5", 5.0),
    ("Final Score: 2\nFinal Score: 5", 2.0),  # the first one
    ("I would rate it 4 out of 5.", math.nan),
    ("Final Score: 0", math.nan),  # outside 1-5
    ("", math.nan),
])
def test_score_parser_on_fixed_replies(reply, score):
    got = parse_score(reply)
    assert (math.isnan(got) and math.isnan(score)) or got == score


def test_prompt_is_the_published_pointwise_prompt_with_the_caption():
    text = PROMPT.format(prompt="a corgi on a beach")
    assert text.endswith("Text Caption: [a corgi on a beach]")
    assert "assign a score from 1 to 5 after 'Final Score:'" in text and "value=1 means generated" in text


def test_model_path_on_a_tiny_random_qwen(tiny_qwen, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(img)
    cfg = {"unified_reward": {"model": str(tiny_qwen), "max_new_tokens": 12, "device": "cpu"}}
    items = [Item("a", img, "a red star", []), Item("b", img, "a blue disk", [])]
    table, agg, info = evaluate(items, cfg, ["UnifiedReward"])
    assert len(table) == 2 and set(table["protocol"]) == {"unifiedreward-qwen"}
    vl = QwenVL("unified_reward", cfg["unified_reward"])
    arr = np.asarray(Image.open(img).convert("RGB"))
    for it, (_, row) in zip(items, table.iterrows()):
        reply = vl.ask(arr, PROMPT.format(prompt=it.prompt))  # greedy: the same reply as inside the metric
        assert isinstance(reply, str) and len(reply) > 0
        want = parse_score(reply)
        if math.isnan(want):
            assert math.isnan(row["value"]) and row["reason"] == NO_SCORE
        else:
            assert row["value"] == want and 1 <= want <= 5
    assert str(tiny_qwen) in info["metrics"]["UnifiedReward"]["weights"]


def test_missing_model_folder_names_the_key(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"unified_reward\.model"):
        evaluate([Item("a", tmp_path / "a.png", "x", [])], {"unified_reward": {"model": str(tmp_path / "none")}},
                 ["UnifiedReward"])
