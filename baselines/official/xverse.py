"""`xverse-official`: the published XVerse pipeline (bytedance/XVerse) with its own weights.

Protocol `xversebench` (default), as upstream's benchmark runs it (`eval/eval_scripts/run_eval_*.sh` ->
`eval/tools/idip_gen_split_idip.py`): `CustomFluxPipeline(config, device, ckpt_root="./checkpoints/XVerse",
torch_dtype=bfloat16)` with `train/config/XVerse_config_INF.yaml` (dit_quant "int8-quanto", use_dit_lora
true), the transformer's LoRA unloaded, `load_modulation_adapter(..., "<ckpt>/modulation_adapter")`, then the
DiT LoRA (`load_dit_lora(model, model.pipe, config, dtype, device, ckpt_root)`:
`checkpoints/XVerse/pytorch_lora_weights.safetensors`), and `generate_from_test_sample(..., use_idip=True)`:
the config's `control_weight_lambda` "0-1:1/3/5" gives a reference weight 3 when it is a human (upstream:
"human" in its image path) and 5 otherwise; the config's VAE skip 0.05 / 0.8, latent LoRA 0.85, VAE LoRA 1.3.
Sizes: 768 px targets, 256 px conditions; 28 steps, guidance 3.5, seeds 42 - 45 (mosaic.data.benchmarks
.XVERSE_PROTOCOL). Protocol `demo` is upstream's `inference_single_sample.py` with
`XVerse_config_demo.yaml` (no DiT LoRA, the weight of `is_id` for every reference). A reference given as a
path is a human when "human" is in the path (XVerseBench's folders), as upstream decides it. The code runs from
its checkout ($XVERSE_ROOT); weights in its checkpoints/ folder and the paths of its env vars.
"""
from __future__ import annotations

import os

from .base import OfficialBaseline, to_pil, working_dir

CONFIGS = {"xversebench": "train/config/XVerse_config_INF.yaml", "demo": "train/config/XVerse_config_demo.yaml"}
CKPT = "./checkpoints/XVerse"


def is_human(reference) -> bool:
    """Upstream's rule (generate_from_test_sample): a reference is a human when "human" is in its image path."""
    return isinstance(reference, (str, os.PathLike)) and "human" in str(reference)


class XVerseOfficial(OfficialBaseline):
    name = "xverse-official"
    MODULE = "src.flux.generate"
    REPO_VAR = "XVERSE_ROOT"
    INSTALL = ("clone https://github.com/bytedance/XVerse and pip install -r XVerse/requirements.txt "
               "(README: torch 2.6.0, flash-attn 2.7.4.post1)")
    DEFAULTS = {"target_height": 768, "target_width": 768, "cond_size": 256, "weight_id": 3.0, "weight_ip": 5.0,
                "latent_lora_scale": 0.85, "vae_lora_scale": 1.3, "vae_skip_iter_s1": 0.05, "vae_skip_iter_s2": 0.8,
                "is_id": False, "protocol": "xversebench"}
    # not settings of this call: generate_from_test_sample's own defaults and the benchmark's seeds
    PROTOCOL = {"num_inference_steps": 28, "guidance_scale": 3.5, "seeds": [42, 43, 44, 45]}

    def _paths(self) -> dict[str, str]:
        ck = self.repo / "checkpoints"
        dit = ({"XVerse DiT LoRA": str(ck / "XVerse" / "pytorch_lora_weights.safetensors")}
               if self.settings["protocol"] == "xversebench" else {})
        return {"XVerse modulation adapter": str(ck / "XVerse" / "modulation_adapter"), **dit,
                "FLUX.1-dev ($FLUX_MODEL_PATH)": os.environ.get("FLUX_MODEL_PATH", str(ck / "FLUX.1-dev")),
                "CLIP ViT-L/14 ($CLIP_MODEL_PATH)": os.environ.get("CLIP_MODEL_PATH",
                                                                    str(ck / "clip-vit-large-patch14"))}

    def missing_weights(self) -> list[str]:
        return [f"{what}: expected at {path} (upstream checkpoints/download_ckpts.sh puts it there)"
                for what, path in self._paths().items() if not os.path.exists(os.path.join(self.repo, path))]

    def load(self) -> None:
        import torch

        protocol = self.settings["protocol"]
        if protocol not in CONFIGS:
            raise ValueError(f"{self.name}: protocol {protocol!r} is not one of {sorted(CONFIGS)}")
        with working_dir(self.repo):
            from src.flux.pipeline_tools import CustomFluxPipeline, load_dit_lora, load_modulation_adapter
            from src.utils.data_utils import get_train_config

            config = get_train_config(CONFIGS[protocol])
            config["model"]["dit_quant"] = "int8-quanto"
            if protocol == "demo":
                config["model"]["use_dit_lora"] = False
                model = CustomFluxPipeline(config, self.device, torch_dtype=torch.bfloat16)
                model.config = get_train_config(CONFIGS[protocol])
            else:
                config["model"]["layer_control"] = False
                model = CustomFluxPipeline(config, self.device, ckpt_root=CKPT, torch_dtype=torch.bfloat16)
                model.config = config
            model.clear_modulation_adapters()
            if protocol == "demo":
                model.pipe.unload_lora_weights()
            else:
                model.pipe.transformer.unload_lora()
            adapter = load_modulation_adapter(model, config, torch.bfloat16, self.device,
                                              f"{CKPT}/modulation_adapter", is_training=False)
            model.add_modulation_adapter(adapter)
            if config["model"]["use_dit_lora"]:
                load_dit_lora(model, model.pipe, config, torch.bfloat16, self.device, CKPT, is_training=False)
            model.pipe = model.pipe.to(self.device)
            self.model = model

    def generate(self, prompt, references, seed, phrases=None, **settings):
        import tempfile

        s = {**self.settings, **settings}
        if not phrases or len(phrases) != len(references):
            raise ValueError(f"{self.name}: each reference needs its caption (phrases), "
                             "which must appear in the prompt")
        with working_dir(self.repo), tempfile.TemporaryDirectory() as tmp:
            from src.flux.generate import generate_from_test_sample

            bench = s["protocol"] == "xversebench"
            src_inputs, use_words = [], []
            for i, (ref, caption) in enumerate(zip(references, phrases)):
                path = os.path.join(tmp, f"ref{i}.png")  # the copy's path loses "human": the flag is passed on
                to_pil(ref).save(path)
                word = caption[2:] if caption.lower().startswith("a ") else caption
                src_inputs.append({"image_path": path, "caption": caption})
                # five entries: upstream reads the last as the reference's human flag (its idips)
                use_words.append((i, word, word, 1, is_human(ref)) if bench else (i, word, word))
            weight = s["weight_id"] if s["is_id"] else s["weight_ip"]
            control = (f"0-1:1/{s['weight_id']:g}/{s['weight_ip']:g}" if bench
                       else f"0-1:1/{'/'.join([str(weight)] * len(references))}")
            vae_skip = f"0-{s['vae_skip_iter_s1']}:1,{s['vae_skip_iter_s2']}-1:1"
            test_sample = dict(input_images=[], position_delta=[0, -32], prompt=prompt,
                               target_height=s["target_height"], target_width=s["target_width"], seed=seed,
                               cond_size=s["cond_size"], vae_skip_iter=vae_skip,
                               lora_scale=s["latent_lora_scale"], control_weight_lambda=control,
                               latent_sblora_scale=f"0-1:{s['latent_lora_scale']}",
                               condition_sblora_scale=f"0-1:{s['vae_lora_scale']}", double_attention=False,
                               single_attention=True,
                               modulation=[dict(type="adapter", src_inputs=src_inputs, use_words=use_words)])
            self.model.config["train"]["dataset"]["val_condition_size"] = s["cond_size"]
            self.model.config["train"]["dataset"]["val_target_size"] = s["target_height"]
            image = generate_from_test_sample(
                test_sample, self.model.pipe, self.model.config, num_images=1, target_height=s["target_height"],
                target_width=s["target_width"], seed=seed, store_attn_map=False, vae_skip_iter=vae_skip,
                control_weight_lambda=control, double_attention=False, single_attention=True,
                latent_dblora_scale=s["latent_lora_scale"], use_latent_sblora_control=True,
                latent_sblora_scale=f"0-1:{s['latent_lora_scale']}", use_condition_sblora_control=True,
                condition_sblora_scale=f"0-1:{s['vae_lora_scale']}", use_idip=bench, device=self.device,
                forward_hook_manager=None)
        return image[0] if isinstance(image, list) else image
