"""`uno-official`: the published UNO pipeline (bytedance/UNO) with its own weights.

Call chain (upstream `inference.py`): `UNOPipeline(model_type, device, offload, only_lora=True,
lora_rank=512)`, references through `preprocess_ref(image, ref_size)` (ref_size -1: 512 for one
reference, 320 for several), then `pipeline(prompt=, width=, height=, guidance=, num_steps=, seed=,
ref_imgs=, pe="d")`. Published defaults: 512 px, 25 steps, guidance 4, UnoPE "d"; the DreamBench
protocol uses seed 3407 + j for the j-th image of a prompt. Weights: UNO reads $FLUX_DEV, $AE,
$T5, $CLIP and $LORA (paths), else the Hugging Face cache.
"""
from __future__ import annotations

import os

from .base import OfficialBaseline, hf_cached, to_pil

# env var -> (what, Hugging Face repo, file that proves it is cached)
WEIGHTS = {
    "FLUX_DEV": ("FLUX.1-dev transformer", "black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors"),
    "AE": ("FLUX.1-dev autoencoder", "black-forest-labs/FLUX.1-dev", "ae.safetensors"),
    "T5": ("T5 text encoder", "xlabs-ai/xflux_text_encoders", "config.json"),
    "CLIP": ("CLIP text encoder", "openai/clip-vit-large-patch14", "config.json"),
    "LORA": ("UNO LoRA", "bytedance-research/UNO", "dit_lora.safetensors"),
}


class UnoOfficial(OfficialBaseline):
    name = "uno-official"
    MODULE = "uno.flux.pipeline"
    INSTALL = "install UNO: git clone https://github.com/bytedance/UNO && pip install -e UNO"
    DEFAULTS = {"model_type": "flux-dev", "width": 512, "height": 512, "num_steps": 25, "guidance": 4.0, "pe": "d",
                "ref_size": -1, "lora_rank": 512, "offload": False}
    SEED = 3407  # upstream inference.py: seed=args.seed + j for the j-th image of a prompt (default 3407)
    PROTOCOL = {"seeds": "3407 + j for the j-th image of a prompt (DreamBench)"}

    @classmethod
    def protocol_seeds(cls, benchmark: str | None, seeds: list[int]) -> list[int]:
        """The seeds UNO's own DreamBench run uses for len(seeds) images per prompt (3407 + j); others as given."""
        return [cls.SEED + j for j in range(len(seeds))] if benchmark == "dreambench" else list(seeds)

    def missing_weights(self) -> list[str]:
        out = []
        for var, (what, repo, filename) in WEIGHTS.items():
            path = os.environ.get(var)
            if path and os.path.exists(path):
                continue
            if not path and hf_cached(repo, filename):
                continue
            out.append(f"{what}: set ${var} to its local path ({path or 'unset'} is missing) or put {repo} "
                       f"({filename}) in the Hugging Face cache ($HF_HOME): huggingface-cli download {repo}")
        return out

    def load(self) -> None:
        from uno.flux.pipeline import UNOPipeline

        s = self.settings
        self.pipeline = UNOPipeline(s["model_type"], self.device, s["offload"], only_lora=True,
                                    lora_rank=s["lora_rank"])

    def generate(self, prompt, references, seed, phrases=None, **settings):
        from uno.flux.pipeline import preprocess_ref

        s = {**self.settings, **settings}
        ref_size = s["ref_size"] if s["ref_size"] > 0 else (512 if len(references) == 1 else 320)
        refs = [preprocess_ref(to_pil(r), ref_size) for r in references]
        return self.pipeline(prompt=prompt, width=s["width"], height=s["height"], guidance=s["guidance"],
                             num_steps=s["num_steps"], seed=seed, ref_imgs=refs, pe=s["pe"])
