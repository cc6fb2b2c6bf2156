"""`dreamo-official`: the published DreamO pipeline (bytedance/DreamO) with its own weights.

Call chain (upstream `app.py`): `Generator(version=, offload=, no_turbo=, quant=, device=)` from
`dreamo_generator.py`, then `generator.pre_condition(ref_images=, ref_tasks=, ref_res=, seed=)`
(background removal for "ip" references) and `generator.dreamo_pipeline(prompt=, width=, height=,
num_inference_steps=, guidance_scale=, ref_conds=, generator=torch.Generator("cpu").manual_seed(seed),
true_cfg_scale=1, true_cfg_start_step=0, true_cfg_end_step=0, negative_prompt="", neg_guidance_scale=3.5,
first_step_guidance_scale=guidance).images[0]`, with the app's defaults: 1024 px, 12 (turbo) steps,
guidance 4.5 (v1.1), reference resolution 512, task "ip" for every reference. The constructor flags are
passed as the app passes them (upstream's default init path loads the turbo LoRA with
`use_turbo=self.no_turbo` at the commit read, 3ad62b3; this adapter does not second-guess it).
The code is not a package: it runs from its checkout ($DREAMO_ROOT), which also holds its weights
under models/ (upstream downloads them there with hf_hub_download; offline they must be put there).
"""
from __future__ import annotations

import numpy as np

from .base import OfficialBaseline, hf_cached, to_pil, working_dir

MODEL_FILES = ("dreamo.safetensors", "dreamo_cfg_distill.safetensors", "dreamo_quality_lora_pos.safetensors",
               "dreamo_quality_lora_neg.safetensors")


class DreamOOfficial(OfficialBaseline):
    name = "dreamo-official"
    MODULE = "dreamo_generator"
    REPO_VAR = "DREAMO_ROOT"
    INSTALL = "clone https://github.com/bytedance/DreamO and pip install -r DreamO/requirements.txt"
    DEFAULTS = {"version": "v1.1", "offload": False, "no_turbo": False, "quant": "none", "width": 1024, "height": 1024,
                "num_steps": 12, "guidance": 4.5, "ref_res": 512, "task": "ip"}

    def missing_weights(self) -> list[str]:
        models = self.repo / "models"
        out = [f"DreamO weights {f}: put ByteDance/DreamO/{f} at {models / f}" for f in MODEL_FILES
               if not (models / f).is_file()]
        if not (models / "diffusion_pytorch_model.safetensors").is_file():
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
