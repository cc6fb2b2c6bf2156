"""UnifiedReward: a Qwen2.5-VL reward model's pointwise 1-5 score of an image for its prompt.

Why it exists: the paper's main table reports UnifiedReward (1-5 scale, e.g. 4.40) without
naming the checkpoint; the default is the published CodeGoat24/UnifiedReward-qwen-7b (a
Qwen2.5-VL fine-tune: native transformers class, weights from the local folder `model`;
metrics.backbones.qwen_vl). The question is the published pointwise image-generation prompt of the
UnifiedReward-qwen model card (PROMPT below, the caption in brackets), answered greedily; the score
is the number after "Final Score:" (1-5, the pattern the UnifiedReward GRPO reward code parses).
A reply without it is NaN with the reason, not a 0 (that code's fallback), so it is counted.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .manifest import Item
from .registry import Metric, Row, register, section

PROMPT = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this "
    "image based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the "
    "accuracy of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, "
    "color accuracy, and overall aesthetic appeal.\n"
    "Extract key elements from the provided text caption, evaluate their presence in the generated image using the "
    "format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign "
    "a score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{prompt}]"
)
FINAL = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")
NO_SCORE = "no 'Final Score: <1-5>' in the reward model's reply"


def parse_score(reply: str) -> float:
    """The 1-5 number after "Final Score:" (the first one), NaN if there is none."""
    m = FINAL.search(reply)
    return float(m.group(1)) if m else math.nan


@register
class UnifiedReward(Metric):
    name = "UnifiedReward"
    inputs = ("image", "prompt")
    config_key = "unified_reward"
    model_keys = ("model",)
    protocols = ("unifiedreward-qwen",)

    def __init__(self, cfg, ctx):
        from .backbones.qwen_vl import QwenVL

        super().__init__(cfg, ctx)
        sec = section(cfg, self.config_key)
        self.protocol  # noqa: B018  (an unknown protocol fails here, naming the section)
        self.vl = ctx.model(("qwen-vl", str(sorted(sec.items()))), lambda: QwenVL(self.config_key, sec))

    def identity(self) -> dict[str, str]:
        return {"model": "UnifiedReward (Qwen2.5-VL, transformers)", "weights": self.vl.path,
                "protocol": self.protocol, "procedure": "the model card's pointwise image-generation prompt, "
                "greedy reply, the 1-5 number after 'Final Score:'", "world": ""}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, im) in enumerate(zip(items, images)):
            v = parse_score(self.vl.ask(im, PROMPT.format(prompt=it.prompt)))
            rows.append(Row(i, None, v, NO_SCORE if math.isnan(v) else ""))
        return rows
