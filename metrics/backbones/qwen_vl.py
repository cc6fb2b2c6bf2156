"""A Qwen2.5-VL chat model from a local folder, answering one question about one image (greedy).

Shared by UnifiedReward (its published models are Qwen2.5-VL fine-tunes, e.g.
CodeGoat24/UnifiedReward-qwen-7b) and DPG's `qwen2.5-vl` protocol (DSG questions answered by a
Qwen2.5-VL instead of XVerse's mPLUG). Native `transformers` classes only
(`Qwen2_5_VLForConditionalGeneration`, `AutoProcessor`), never `trust_remote_code`; the weights
come from a local folder named by the config key. The message is the model card's: one user turn
holding the image then the text; the processor's own resize (Qwen's smart_resize between its
min/max pixels, what `qwen_vl_utils.process_vision_info` does by default) prepares the image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..registry import MetricUnavailable


class QwenVL:
    def __init__(self, key: str, sec: dict[str, Any], field: str = "model"):
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        path = sec.get(field)
        if not path:
            raise MetricUnavailable(f"{key}.{field} is not set: give the local folder of the Qwen2.5-VL model")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise MetricUnavailable(f"{key}.{field}: {folder} is not a transformers model folder (no config.json)")
        self.torch = torch
        self.device = sec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, sec.get("dtype") or ("bfloat16" if self.device.startswith("cuda") else "float32"))
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(str(folder))
        self.max_new_tokens = int(sec.get("max_new_tokens", 512))
        self.path = str(folder)

    def ask(self, image: np.ndarray, text: str, max_new_tokens: int | None = None) -> str:
        """The model's greedy reply to one user turn: the image, then `text`."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=[Image.fromarray(image)], return_tensors="pt").to(self.device)
        with self.torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
