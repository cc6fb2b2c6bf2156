"""`dreamo-official`: the published DreamO pipeline (bytedance/DreamO) with its own weights.

Call chain (upstream `app.py`): `Generator(version=, offload=, no_turbo=, quant=, device=)` from
`dreamo_generator.py`, then `generator.pre_condition(ref_images=, ref_tasks=, ref_res=, seed=)`
(background removal for "ip" references) and `generator.dreamo_pipeline(prompt=, width=, height=,
num_inference_steps=, guidance_scale=, ref_conds=, generator=torch.Generator("cpu").manual_seed(seed),
true_cfg_scale=1, true_cfg_start_step=0, true_cfg_end_step=0, negative_prompt="", neg_guidance_scale=3.5,
first_step_guidance_scale=guidance).images[0]`, with the app's defaults: 1024 px, 12 (turbo) steps,
guidance 4.5 (v1.1), reference resolution 512, task "ip" for every reference. The code is pinned at COMMIT
(a git checkout at another commit is refused): from c7d5305 on, the default init path loads the turbo LoRA unless no_turbo
(`use_turbo=not self.no_turbo`); at 3ad62b3 and before it was inverted, so 12 steps ran without it.
v1.1 (the default) loads `models/v1.1/dreamo_sft_lora.safetensors` and `dreamo_dpo_lora.safetensors`; v1 the
quality LoRAs (`dreamo_quality_lora_{pos,neg}.safetensors`); both `dreamo.safetensors` and
`dreamo_cfg_distill.safetensors` (upstream `DreamOPipeline.load_dreamo_model`).
The code is not a package: it runs from its checkout ($DREAMO_ROOT), which also holds its weights
under models/ (upstream downloads them there with hf_hub_download; offline they must be put there).
"""
from __future__ import annotations

import subprocess

import numpy as np

from .base import OfficialBaseline, OfficialUnavailable, hf_cached, to_pil, working_dir

COMMIT = "461e35ba6b068f42ca53b43f289b3d91b7f911cd"  # bytedance/DreamO main, 2025-08-14 (after c7d5305)
# models/ files per version (upstream dreamo/dreamo_pipeline.py, load_dreamo_model)
MODEL_FILES = {
    "v1.1": ("dreamo.safetensors", "dreamo_cfg_distill.safetensors", "v1.1/dreamo_sft_lora.safetensors",
             "v1.1/dreamo_dpo_lora.safetensors"),
    "v1": ("dreamo.safetensors", "dreamo_cfg_distill.safetensors", "dreamo_quality_lora_pos.safetensors",
           "dreamo_quality_lora_neg.safetensors"),
}


def checkout_commit(repo) -> str | None:
    """The commit a git checkout is at (None: not a git checkout, or git is missing)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class DreamOOfficial(OfficialBaseline):
    name = "dreamo-official"
    MODULE = "dreamo_generator"
    REPO_VAR = "DREAMO_ROOT"
    INSTALL = (f"git clone https://github.com/bytedance/DreamO && git -C DreamO checkout {COMMIT} && "
               "pip install -r DreamO/requirements.txt")
    DEFAULTS = {"version": "v1.1", "offload": False, "no_turbo": False, "quant": "none", "width": 1024, "height": 1024,
                "num_steps": 12, "guidance": 4.5, "ref_res": 512, "task": "ip"}

    PROTOCOL = {"commit": COMMIT}

    def _require_code(self) -> None:
        super()._require_code()
        at = checkout_commit(self.repo)  # None: a copy without git history, taken as it is
        if at is not None and at != COMMIT:
            raise OfficialUnavailable(f"{self.name}: the checkout {self.repo} is at {at}, the adapter is pinned "
                                      f"to {COMMIT}: git -C {self.repo} checkout {COMMIT}")

    def missing_weights(self) -> list[str]:
        models, version = self.repo / "models", self.settings["version"]
        if version not in MODEL_FILES:
            raise ValueError(f"{self.name}: version {version!r} is not one of {sorted(MODEL_FILES)}")
        out = [f"DreamO {version} weights {f}: put ByteDance/DreamO/{f} at {models / f}" for f in MODEL_FILES[version]
               if not (models / f).is_file()]
        if not self.settings["no_turbo"] and not (models / "diffusion_pytorch_model.safetensors").is_file():
            out.append(f"FLUX.1-Turbo-Alpha LoRA: put alimama-creative/FLUX.1-Turbo-Alpha/"
                       f"diffusion_pytorch_model.safetensors at {models}/")
        if not (models / "BEN2_Base.pth").is_file():
            out.append(f"BEN2 background remover: put PramaLLC/BEN2/BEN2_Base.pth at {models / 'BEN2_Base.pth'}")
        flux = models / "black-forest-labs" / "FLUX.1-dev"
        if not flux.is_dir() and not hf_cached("black-forest-labs/FLUX.1-dev", "model_index.json"):
            out.append(f"FLUX.1-dev (diffusers format): put it at {flux} or in the Hugging Face cache ($HF_HOME)")
        return out

    def load(self) -> None:
        s = self.settings
        with working_dir(self.repo):
            from dreamo_generator import Generator

            self.generator = Generator(version=s["version"], offload=s["offload"], no_turbo=s["no_turbo"],
                                       quant=s["quant"], device=self.device)

    def generate(self, prompt, references, seed, phrases=None, **settings):
        import torch

        s = {**self.settings, **settings}
        with working_dir(self.repo):
            ref_conds, _, seed = self.generator.pre_condition(
                ref_images=[np.asarray(to_pil(r)) for r in references], ref_tasks=[s["task"]] * len(references),
                ref_res=s["ref_res"], seed=seed)
            return self.generator.dreamo_pipeline(
                prompt=prompt, width=s["width"], height=s["height"], num_inference_steps=s["num_steps"],
                guidance_scale=s["guidance"], ref_conds=ref_conds,
                generator=torch.Generator(device="cpu").manual_seed(seed), true_cfg_scale=1, true_cfg_start_step=0,
                true_cfg_end_step=0, negative_prompt="", neg_guidance_scale=3.5,
                first_step_guidance_scale=s["guidance"]).images[0]
