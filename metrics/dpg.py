"""DPG: XVerseBench's prompt-following score, DSG questions answered by a VQA model (x100).

Why it exists: the paper's Table 2 reports DPG, and it enters the XVerseBench AVG.
What XVerse's kit does (eval/tools/dpg_score.py `DPGScore`, driven by
eval/tools/idip_dpg_score.py; Bytedance, Apache-2.0):
- the question set of a prompt is its entry of `XVerseBench_<scenario>_DSG.json`
  (`qid2question`, `qid2dependency`; the kit asserts the prompts match);
- every question is asked of the VQA model; a question scores 1 if the answer is exactly
  "yes", else 0;
- DSG dependency rule: a question with a parent (id != 0) that scored 0 scores 0;
- the image's score is the mean over all its questions (the zeroed ones included) x100;
  the benchmark's DPG is the mean over all images (`np.mean` of the per-image scores).

Protocols: `xverse` answers with the kit's VQA model, mPLUG
(`damo/mplug_visual-question-answering_coco_large_en`, a ModelScope pipeline: no transformers
class exists for it; `vqa` is its local folder and the `modelscope` package must import);
`qwen2.5-vl` answers with a Qwen2.5-VL from a local folder through transformers (metrics.backbones.qwen_vl),
the same questions and rule, and its reply lower-cased and stripped of a final period before
the "yes" test (a chat model writes "Yes."). Only `xverse` is the paper's DPG.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .manifest import Item
from .registry import Metric, MetricUnavailable, Row, register, section


def dsg_score(question_set: dict[str, Any], answer: Callable[[str], str], normalise: bool = False) -> dict[str, Any]:
    """The kit's per-image DSG score: answers, 0/1 scores, scores after the dependency rule, and the mean x100."""
    questions = {str(k): v for k, v in question_set["qid2question"].items()}
    answers = {q: answer(text) for q, text in questions.items()}
    said = {q: (a.strip().lower().rstrip(".") if normalise else a) for q, a in answers.items()}
    scores = {q: float(a == "yes") for q, a in said.items()}
    filtered = dict(scores)
    for q, parents in question_set["qid2dependency"].items():
        if any(int(p) != 0 and scores.get(str(p)) == 0 for p in parents):
            filtered[str(q)] = 0.0
    return {"answers": answers, "scores": scores, "filtered": filtered,
            "score": 100.0 * sum(filtered.values()) / len(scores)}


def load_question_sets(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """prompt -> its DSG question set, from XVerseBench_*_DSG.json files; bad files fail naming file and field."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MetricUnavailable(f"dpg.questions: {p} not found (XVerseBench_<scenario>_DSG.json)")
        data = json.loads(p.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{p}: a DSG question file is a list of entries")
        for i, entry in enumerate(data):
            for field in ("prompt", "qid2question", "qid2dependency"):
                if field not in entry:
                    raise ValueError(f"{p}: entry {i}: missing field '{field}'")
            if not entry["qid2question"]:
                raise ValueError(f"{p}: entry {i}: 'qid2question' is empty")
            prev = out.get(entry["prompt"])
            if prev is not None and prev["qid2question"] != entry["qid2question"]:
                raise ValueError(f"{p}: entry {i}: prompt {entry['prompt']!r} has two different question sets")
            out[entry["prompt"]] = entry
    return out


class MplugVQA:
    """The kit's VQA model: ModelScope's mPLUG visual-question-answering pipeline from a local folder."""

    def __init__(self, key: str, sec: dict[str, Any]):
        path = sec.get("vqa")
        if not path or not Path(path).expanduser().is_dir():
            raise MetricUnavailable(f"{key}.vqa: {path or 'not set'}; give the local folder of "
                                    "mplug_visual-question-answering_coco_large_en")
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks
        except ImportError:
            raise MetricUnavailable(f"{key}: protocol 'xverse' answers with mPLUG through the `modelscope` package "
                                    "(pip install modelscope), which is not importable here") from None
        self.pipe = pipeline(Tasks.visual_question_answering, model=str(Path(path).expanduser()),
                             device=sec.get("device", "gpu"))
        self.path = str(path)

    def __call__(self, image: np.ndarray, question: str) -> str:
        from PIL import Image

        return self.pipe({"image": Image.fromarray(image), "question": question})["text"]


class QwenVQA:
    def __init__(self, key: str, sec: dict[str, Any]):
        from .backbones.qwen_vl import QwenVL

        self.vl = QwenVL(key, sec, field="vqa")
        self.path = self.vl.path

    def __call__(self, image: np.ndarray, question: str) -> str:
        return self.vl.ask(image, question, max_new_tokens=8)


@register
class DPG(Metric):
    name = "DPG"
    inputs = ("image", "prompt")
    config_key = "dpg"
    model_keys = ("vqa", "questions")
    protocols = ("xverse", "qwen2.5-vl")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.sec = section(cfg, self.config_key)
        files = self.sec.get("questions") or []
        if not files:
            raise MetricUnavailable(f"{self.config_key}.questions is not set: give the XVerseBench_*_DSG.json files")
        self.questions = ctx.model(("dpg-questions", tuple(map(str, files))), lambda: load_question_sets(files))
        build = MplugVQA if self.protocol == "xverse" else QwenVQA
        self.vqa = ctx.model(("dpg-vqa", self.protocol, str(sorted(self.sec.items()))),
                             lambda: build(self.config_key, self.sec))

    def identity(self) -> dict[str, str]:
        model = "mPLUG VQA (ModelScope)" if self.protocol == "xverse" else "Qwen2.5-VL VQA (transformers)"
        return {"model": model, "weights": self.vqa.path, "protocol": self.protocol,
                "procedure": "DSG questions of the prompt; 1 if the answer is 'yes'; a question whose parent "
                             "scored 0 scores 0; mean over questions x100 (XVerse eval/tools/dpg_score.py)",
                "world": ""}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, im) in enumerate(zip(items, images)):
            qs = self.questions.get(it.prompt)
            if qs is None:
                rows.append(Row(i, None, math.nan, "no DSG question set for this prompt"))
                continue
            result = dsg_score(qs, lambda q: self.vqa(im, q), normalise=self.protocol != "xverse")
            rows.append(Row(i, None, result["score"]))
        return rows
