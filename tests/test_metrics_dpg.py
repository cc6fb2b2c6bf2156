"""DPG: XVerse's DSG scoring (eval/tools/dpg_score.py) on fixed answers with hand-checked scores, the question sets,
and the metric through metrics.evaluate on a tiny random Qwen2.5-VL (protocol qwen2.5-vl)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics.dpg import QwenVQA, dsg_score, load_question_sets
from metrics.evaluate import evaluate
from metrics.manifest import Item
from metrics.registry import MetricUnavailable
from tests.tiny_qwen_vl import build_tiny_qwen_vl

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "xversebench"
# a question set shaped like XVerseBench's: 3 and 4 depend on 1; 5 on 1 and 2
QS = {"prompt": "a cat on a sofa",
      "qid2tuple": {"1": "entity - whole", "2": "entity - whole", "3": "attribute - color", "4": "attribute - state",
                    "5": "relation - spatial"},
      "qid2dependency": {"1": [0], "2": [0], "3": [1], "4": [1], "5": [1, 2]},
      "qid2question": {"1": "Is there a cat?", "2": "Is there a sofa?", "3": "Is the cat black?",
                       "4": "Is the cat sleeping?", "5": "Is the cat on the sofa?"}}


def answers(mapping):
    return lambda q: mapping[q]


def test_dependency_rule_zeroes_children_of_a_no():
    # sofa: no -> "on the sofa" is zeroed although answered yes; 2 of 5 remain: 40
    r = dsg_score(QS, answers({"Is there a cat?": "yes", "Is there a sofa?": "no", "Is the cat black?": "yes",
                               "Is the cat sleeping?": "no", "Is the cat on the sofa?": "yes"}))
    assert r["scores"] == {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0, "5": 1.0}
    assert r["filtered"] == {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0, "5": 0.0}
    assert r["score"] == pytest.approx(40.0)
    # no cat: every child of 1 is zeroed; only the sofa counts: 1 of 5
    r = dsg_score(QS, lambda q: "no" if q == "Is there a cat?" else "yes")
    assert r["filtered"] == {"1": 0.0, "2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0} and r["score"] == pytest.approx(20.0)
    assert dsg_score(QS, lambda q: "yes")["score"] == 100.0


def test_only_an_exact_yes_counts_under_the_kit_rule():
    assert dsg_score(QS, lambda q: "Yes.")["score"] == 0.0  # the kit compares answer == 'yes'
    assert dsg_score(QS, lambda q: "Yes.", normalise=True)["score"] == 100.0  # the chat-model protocol


def test_question_sets_name_file_and_field(tmp_path):
    bad = tmp_path / "bad_DSG.json"
    bad.write_text(json.dumps([{"prompt": "x", "qid2question": {"1": "?"}}]))
    with pytest.raises(ValueError, match=r"bad_DSG\.json: entry 0: missing field 'qid2dependency'"):
        load_question_sets([bad])
    with pytest.raises(MetricUnavailable, match=r"dpg\.questions"):
        load_question_sets([tmp_path / "missing.json"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared XVerseBench files are not here")
def test_every_xversebench_prompt_has_its_question_set():
    from mosaic.data.benchmarks import load_xversebench

    sets = load_question_sets(sorted(SHARED.glob("*_DSG.json")))
    for scenario in ("single", "multi"):
        bs = load_xversebench(scenario, SHARED.parent)
        prompts = [e.prompt for e in bs.entries]
        assert prompts and all(p in sets for p in prompts)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen"), seed=1)


def test_dpg_on_a_tiny_random_qwen_equals_the_rule_on_its_answers(tiny_qwen, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(img)
    qfile = tmp_path / "q_DSG.json"
    qfile.write_text(json.dumps([QS]))
    sec = {"protocol": "qwen2.5-vl", "vqa": str(tiny_qwen), "questions": [str(qfile)], "device": "cpu"}
    items = [Item("a", img, QS["prompt"], []), Item("b", img, "a prompt with no question set", [])]
    table = evaluate(items, {"dpg": sec}, ["DPG"])[0]
    vqa = QwenVQA("dpg", sec)
    arr = np.asarray(Image.open(img).convert("RGB"))
    want = dsg_score(QS, lambda q: vqa(arr, q), normalise=True)["score"]
    assert table.loc[0, "value"] == pytest.approx(want) and 0 <= want <= 100
    assert math.isnan(table.loc[1, "value"]) and table.loc[1, "reason"] == "no DSG question set for this prompt"
    assert set(table["protocol"]) == {"qwen2.5-vl"}


def test_the_kit_protocol_needs_the_mplug_folder_and_modelscope(tmp_path):
    qfile = tmp_path / "q_DSG.json"
    qfile.write_text(json.dumps([QS]))
    item = [Item("a", tmp_path / "a.png", QS["prompt"], [])]
    with pytest.raises(MetricUnavailable, match=r"dpg\.vqa: .*mplug_visual-question-answering_coco_large_en"):
        evaluate(item, {"dpg": {"questions": [str(qfile)], "vqa": str(tmp_path / "none")}}, ["DPG"])
    try:
        import modelscope  # noqa: F401
    except ImportError:
        with pytest.raises(MetricUnavailable, match="modelscope"):
            evaluate(item, {"dpg": {"questions": [str(qfile)], "vqa": str(tmp_path)}}, ["DPG"])
