"""`mosaic sample`: generate images from a trained run (MOSAIC or a controlled baseline).

Why it exists: every method of the comparison must be sampled the same way before the
metrics suite scores it. Sampling is FLUX's: the diffusers `FlowMatchEulerDiscreteScheduler`
with FLUX.1-dev's scheduler config and its resolution-dependent shift (mu from diffusers
`calculate_shift` on the target token count, sigmas linspace(1, 1/steps), exactly as
`FluxPipeline`), Euler steps on the model's velocity (noise - x0), K references plus a
prompt, the guidance embedding value and a seed. The initial noise comes from a CPU
generator seeded by the seed, so the same seed gives the same image on the same device.

A run folder is what `mosaic train` writes: `config.yaml`, and `lora.safetensors` (lora mode)
or `transformer/` (base mode); a run whose config names a `model.extension` (a controlled
baseline) also gets that extension's modules and weights. Instead of a run, `mosaic sample
--baseline NAME` samples any registered baseline through its own `generate` (baselines.sample;
the CLI dispatches, this module knows no baseline).

Prompts come from a dataset folder (`--dataset`, e.g. the tiny world's val split), a benchmark
(`--benchmark`, mosaic.data.benchmarks) or one `--prompt` with its `--ref` images.

Output folder (written under a temporary name, renamed when complete):
    images/<id>_s<seed>.png           the generated images
    attention/<id>_s<seed>_ref<k>.png with --attention: reference k's attention over the target
                                      tokens (mean over its tokens, heads, double blocks and all
                                      sampling steps; softmax over target keys), scaled to its
                                      maximum, upsampled to the image size
    manifest.jsonl                    one line per image in the format of `metrics.manifest`
                                      (the `mosaic eval` input), with meta.model, meta.settings and
                                      meta.prompt_truncated (null, or why the text encoder cut it)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..components import Components, build_components
from ..infra.artefacts import PROVENANCE_FILE
from ..config import from_dict, load_config
from ..data.benchmarks import benchmark_record, load_benchmark
from ..data.records import load_image, read_manifest
from ..extension import attach_extension
from ..flow import Encoded, guidance_for, velocity
from ..losses import AttentionProbe, LossConfig
from ..infra.runfolder import BASE_DIR, CONFIG_FILE, LORA_FILE, MANIFEST_FILE, atomic_dir

SHIPPED_BASE = "base"  # the base transformer's folder in a shipped artefacts folder (mosaic.infra.artefacts.ship)

# FLUX.1-dev scheduler/scheduler_config.json
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)
FLUX_DEV_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale


@dataclass
class Request:
    """One prompt with its references (image paths, in prompt order)."""

    id: str
    prompt: str
    references: list[Any]
    phrases: list[str] = field(default_factory=list)  # each subject's phrase as written in the prompt
    record: dict[str, Any] = field(default_factory=dict)  # manifest fields (references, benchmark, ...)
    entry: Any = None  # a mosaic.data.benchmarks.BenchmarkEntry: its manifest line is benchmark_record's


def flux_timesteps(steps: int, n_tokens: int, device=None) -> tuple[Any, torch.Tensor]:
    """(scheduler, timesteps in [0, 1000]) for `steps` Euler steps on `n_tokens` image tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    c = sched.config
    mu = calculate_shift(n_tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), mu=mu, device=device)
    return sched, sched.timesteps


REF_PREPROCESS = ("upstream", "fit")
UPSTREAM_REF_SCALE = 0.9  # inference.py: process_image(..., scale=0.9)


def _open(img) -> Image.Image:
    if isinstance(img, (str, os.PathLike)):
        with Image.open(img) as im:
            im.load()
            return im
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))


def _square(img, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: centre crop to a square, then bicubic resize (PIL ImageOps.fit)."""
    if isinstance(img, (str, os.PathLike)):
        img = load_image(Path(img))
    return np.asarray(ImageOps.fit(_open(img).convert("RGB"), (size, size), Image.BICUBIC))


def upstream_reference(img, size: int, scale: float = UPSTREAM_REF_SCALE) -> np.ndarray:
    """uint8 [size, size, 3] as upstream MOSAIC's `process_image` (utils.py) prepares a reference for sampling:
    transparent pixels onto white, crop to the bounding box of the non-white pixels, resize (Lanczos) so the long
    side is int(size * scale), paste centred (floor) on a white square. Nothing of a non-square image is cut."""
    im = _open(img)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.split()[3])
    im = im.convert("RGB")
    a = np.asarray(im)
    ys, xs = np.nonzero((a != 255).any(axis=2))
    if len(ys):
        im = im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    f = size * scale / max(im.size)
    w, h = int(im.size[0] * f), int(im.size[1] * f)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out)


def prepare_reference(img, size: int, how: str = "upstream") -> np.ndarray:
    """A reference as the sampler feeds it: `upstream_reference` ("upstream") or `_square` ("fit": centre crop)."""
    if how == "upstream":
        return upstream_reference(img, size)
    if how == "fit":
        return _square(img, size)
    raise ValueError(f"reference preprocessing {how!r}: expected one of {REF_PREPROCESS}")


@dataclass(frozen=True)
class Sampling:
    """How `sample_run` samples each image: Euler steps, the guidance embedding (None: the run's), classifier-free
    guidance on the prompt (1: off), per-reference attention maps, and whether the references are fed at all."""

    steps: int = 28
    guidance: float | None = None
    cfg_scale: float = 1.0
    attention: bool = False
    references: bool = True


class Sampler:
    """A run's built parts (mosaic.components), sampling one image per call."""

    def __init__(self, parts: Components, target_size: int, ref_size: int, guidance: float = 1.0, attn_blocks=None,
                 info: dict[str, Any] | None = None, ref_preprocess: str = "upstream", ref_posterior: str = "sample"):
        self.parts, self.model = parts, parts.model.eval()
        self.target_size, self.ref_size, self.guidance, self.attn_blocks = target_size, ref_size, guidance, attn_blocks
        if ref_preprocess not in REF_PREPROCESS:
            raise ValueError(f"ref_preprocess {ref_preprocess!r}: expected one of {REF_PREPROCESS}")
        self.ref_preprocess, self.ref_posterior = ref_preprocess, ref_posterior  # posterior: "sample" or "mode"
        self.info = info or {}

    @classmethod
    def from_run(cls, run: str | os.PathLike, device: str | torch.device | None = None,
                 ref_preprocess: str = "upstream") -> "Sampler":
        """Load a `mosaic train` output folder (see the module docstring)."""
        run = Path(run)
        shipped = run / PROVENANCE_FILE
        if not (run / CONFIG_FILE).is_file() and shipped.is_file():  # shipped artefacts: the base run's config
            base = json.loads(shipped.read_text()).get("config", {}).get("base_run")
            if not isinstance(base, dict):
                raise FileNotFoundError(f"{shipped}: field config.base_run is missing: these artefacts hold no base")
            cfg = from_dict(base, f"{shipped}: config.base_run")
            weights = run / SHIPPED_BASE
        elif not (run / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{run / CONFIG_FILE}: not a training run folder ({CONFIG_FILE} missing)")
        else:
            cfg, weights = load_config(run / CONFIG_FILE), run / BASE_DIR
        lora = run / LORA_FILE
        if cfg.train.mode == "base":
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=str(weights)))
        elif not lora.is_file():
            raise FileNotFoundError(f"{lora}: the run's LoRA is missing (did the training finish?)")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        parts = build_components(dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, gradient_checkpointing=False)), device)
        if cfg.train.mode == "lora":
            parts.model.load_lora(lora)
        parts.ext = attach_extension(cfg, parts.model, run)
        parts.model.to(device)
        guidance = FLUX_DEV_GUIDANCE if cfg.model.flavour == "flux-dev" else cfg.train.guidance
        info = {"run": str(run.resolve()), "variant": cfg.variant, "flavour": cfg.model.flavour,
                "pos_scheme": cfg.model.pos_scheme, "extension": cfg.model.extension,
                "weights": cfg.model.weights, "lora": str(lora.resolve()) if cfg.train.mode == "lora" else None}
        info["ref_guidance"] = cfg.model.ref_guidance
        posterior = "sample" if cfg.model.vae_posterior == "upstream" else "mode"
        return cls(parts, cfg.data.target_size, cfg.data.ref_size, guidance, cfg.loss.blocks, info, ref_preprocess,
                   posterior)

    @torch.no_grad()
    def generate(self, prompt: str, references: list, seed: int, steps: int = 28, guidance: float | None = None,
                 phrases: list[str] | None = None, attention: bool = False,
                 cfg_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 image [H, W, 3], per-reference attention maps [K, th, tw] or None).

        cfg_scale != 1: classifier-free guidance on the prompt, v = v("") + s (v(prompt) - v("")), the same
        references in both, for a base trained with text dropout (FLUX.1-dev is guidance-distilled instead:
        its guidance embedding is `guidance`)."""
        k = len(references)
        if phrases is not None and len(phrases) != k:
            raise ValueError(f"{len(phrases)} phrases for {k} references")
        dev, dt, codec, ext = self.parts.device, self.parts.dtype, self.parts.codec, self.parts.ext
        grid = codec.grid(self.target_size, self.target_size)
        n_tokens = grid[0] * grid[1]
        refs = ref_mask = ref_grid = None
        if k:
            imgs = torch.stack([torch.from_numpy(prepare_reference(r, self.ref_size, self.ref_preprocess).copy())
                                for r in references]).permute(0, 3, 1, 2)
            post = torch.Generator().manual_seed(int(seed) + 1) if self.ref_posterior == "sample" else None
            refs = codec.encode(imgs.to(dev).float().div(127.5).sub(1), post).unsqueeze(0).to(dt)
            ref_mask = torch.ones(1, k, dtype=torch.bool, device=dev)
            ref_grid = codec.grid(self.ref_size, self.ref_size)
        x0 = torch.zeros(1, n_tokens, self.model.in_channels, device=dev, dtype=dt)  # shape only

        def condition(text_prompt: str):
            text, pooled = self.parts.text_encoder.encode([text_prompt])
            batch = {"prompt": [text_prompt], "phrases": [list(phrases or [""] * k)], "ref_mask": ref_mask,
                     "ref_tokens": torch.zeros(1, k, 0, dtype=torch.long)}
            enc = Encoded(x0, refs, ref_mask, text.to(dev, dt), pooled.to(dev, dt), grid, ref_grid)
            extra = ext.forward_kwargs(self.model, batch, [text_prompt], enc) if ext else {}
            return batch, enc, extra

        batch, enc, extra = condition(prompt)
        uncond = condition("") if cfg_scale != 1 else None
        g = guidance_for(self.model, 1, self.guidance if guidance is None else guidance, dev, dt)
        sched, timesteps = flux_timesteps(steps, n_tokens, dev)
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.randn(1, n_tokens, self.model.in_channels, generator=gen).to(dev, dt)
        total = None
        probe_cfg = LossConfig(normalize_over="target", mdl_rows="all", blocks=self.attn_blocks)
        for t in timesteps:
            probe = AttentionProbe(probe_cfg, batch, recompute=False) if attention and k else None
            tt = (t / 1000).expand(1).to(dt)
            v = velocity(self.model, enc, x, tt, g, probe, extra)
            if uncond is not None:
                v_u = velocity(self.model, uncond[1], x, tt, g, None, uncond[2])
                v = v_u + cfg_scale * (v - v_u)
            x = sched.step(v, t, x).prev_sample
            if probe is not None:
                m = probe.maps()[0].mean(1).float()  # [K, Nt]: mean over the reference's tokens
                total = m if total is None else total + m
        img = codec.decode(x.float(), (self.target_size, self.target_size))[0]
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        maps = None if total is None else (total / len(timesteps)).reshape(k, *grid).cpu().numpy()
        return img, maps


# ---------------------------------------------------------------- request sources

def dataset_requests(root: str | os.PathLike) -> list[Request]:
    """Prompts, references and phrases of a dataset folder (e.g. the tiny world's val split)."""
    root = Path(root).resolve()
    out = []
    for rec in read_manifest(root):
        refs = [root / r["image"] for r in rec["references"]]
        phrases = [r["phrase"] for r in rec["references"]]
        places = [m.get("slot") for m in (rec.get("meta") or {}).get("subjects", [])] or [None] * len(refs)
        out.append(Request(rec["id"], rec["prompt"], refs, phrases, {
            "references": [{"image": str(p), "phrase": ph, "category": "object"} | ({"box": box} if box else {})
                           for p, ph, box in zip(refs, phrases, places)],
            "benchmark": root.name, "scenario": "multi" if len(refs) > 1 else "single", "entry": rec["id"]}))
    return out


def benchmark_requests(benchmark: str, scenario: str, root: str | os.PathLike | None = None) -> list[Request]:
    """The runnable entries of a benchmark (mosaic.data.benchmarks); skipped ones are reported, not run.
    Reference paths are absolute: the output manifest resolves relative paths against its own folder."""
    bs = load_benchmark(benchmark, scenario, Path(root).resolve() if root is not None else None)
    print(bs.summary())
    return [Request(e.id, e.prompt, list(e.references), list(e.subjects), entry=e) for e in bs.entries]


def manifest_record(req: Request, image: str, method: str, seed: int) -> dict[str, Any]:
    """The `metrics.manifest` line of one image generated for `req` with `seed` (id "<req.id>_s<seed>")."""
    if req.entry is not None:
        return benchmark_record(req.entry, image, method, seed)
    rec = {"id": f"{req.id}_s{seed}", "image": image, "prompt": req.prompt, "k": len(req.references),
           "method": method, "seed": seed, **req.record}
    rec.setdefault("references", [{"image": str(Path(r).resolve()), "phrase": p}
                                  for r, p in zip(req.references, req.phrases)])
    return rec


def write_outputs(generate, requests: list[Request], seeds: list[int], out: str | os.PathLike, method: str,
                  meta: dict[str, Any], overwrite: bool = False, request_meta=None) -> Path:
    """Generate every (request, seed) into `out` (see the module docstring); returns `out`.

    generate(request, seed) -> (uint8 image [H, W, 3], attention maps [K, th, tw] or None);
    `meta` goes into every manifest line's meta (its "model": the model's identity, "settings": the sampler's),
    and so does request_meta(request) if given (e.g. whether the text encoder cut the prompt).
    """
    out = Path(out)
    lines = []
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        for req in requests:
            for seed in seeds:
                name = f"{req.id}_s{seed}"
                img, maps = generate(req, seed)
                Image.fromarray(img).save(tmp / "images" / f"{name}.png")
                rec = manifest_record(req, f"images/{name}.png", method, seed)
                rec["meta"] = {**meta, **(request_meta(req) if request_meta else {})}
                if maps is not None:
                    (tmp / "attention").mkdir(exist_ok=True)
                    rec["meta"]["attention_maps"] = [_save_map(m, tmp / "attention" / f"{name}_ref{j}.png",
                                                               img.shape[:2]) for j, m in enumerate(maps)]
                lines.append(json.dumps(rec))
        (tmp / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return out


def sample_run(run: "str | os.PathLike | Sampler", requests: list[Request], seeds: list[int], out: str | os.PathLike,
               sampling: Sampling = Sampling(), method: str = "", overwrite: bool = False) -> Path:
    """Sample a training run (MOSAIC or a controlled baseline; a run folder, loaded on the default device with
    upstream's reference preprocessing, or its loaded Sampler) into `out`. `sampling.references=False`: the prompt
    alone (a base without references); the manifest still names the references, so the metrics score the images
    against them."""
    s, o = (run if isinstance(run, Sampler) else Sampler.from_run(run)), sampling
    settings = {"steps": o.steps, "guidance": s.guidance if o.guidance is None else o.guidance,
                "cfg_scale": o.cfg_scale, "target_size": s.target_size, "ref_size": s.ref_size,
                "ref_preprocess": s.ref_preprocess, "ref_guidance": s.info.get("ref_guidance"),
                "ref_posterior": s.ref_posterior, "scheduler": "FlowMatchEulerDiscreteScheduler",
                "references": o.references, **FLUX_SCHEDULER}

    def generate(req: Request, seed: int):
        if not o.references:
            return s.generate(req.prompt, [], seed, o.steps, o.guidance, None, False, o.cfg_scale)
        return s.generate(req.prompt, req.references, seed, o.steps, o.guidance, req.phrases or None, o.attention,
                          o.cfg_scale)

    def truncation(req: Request) -> dict[str, Any]:  # the text encoder keeps only its first max_length tokens
        return {"prompt_truncated": s.parts.text_encoder.overflow(req.prompt)}
    return write_outputs(generate, requests, seeds, out, method or s.info.get("variant", ""),
                         {"model": s.info, "settings": settings}, overwrite, truncation)


def _save_map(m: np.ndarray, path: Path, size_hw: tuple[int, int]) -> str:
    a = (255 * m / max(float(m.max()), 1e-12)).round().astype(np.uint8)
    a = np.kron(a, np.ones((size_hw[0] // a.shape[0], size_hw[1] // a.shape[1]), np.uint8))
    Image.fromarray(a, "L").save(path)
    return f"attention/{path.name}"


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="training output folder (config.yaml + lora.safetensors), or a shipped "
                       "artefacts folder (provenance.json + base/: its base model)")
    model.add_argument("--baseline", help="a registered baseline (baselines.registry) instead of a run, e.g. uno-official")
    model.add_argument("--bound", choices=("ceiling", "floor"),
                       help="no model: a synthetic --dataset's real targets (ceiling) or their backgrounds (floor)")
    p.add_argument("--baseline-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the baseline's constructor (repeatable; values parsed as YAML)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset folder whose prompts and references to use (e.g. a val split)")
    src.add_argument("--benchmark", choices=["dreambench", "xversebench"], help="benchmark prompts (with --scenario)")
    src.add_argument("--prompt", help="one prompt (with --ref images, in prompt order)")
    p.add_argument("--scenario", choices=["single", "multi"], default="multi")
    p.add_argument("--benchmarks-root", help="benchmark folder (default $MOSAIC_BENCHMARKS or ../shared/benchmarks)")
    p.add_argument("--ref", action="append", default=[], help="reference image (repeatable, with --prompt)")
    p.add_argument("--phrase", action="append", default=[], help="each reference's phrase in the prompt (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=28, help="Euler steps (--run)")
    p.add_argument("--guidance", type=float,
                   help="guidance embedding (--run; default: 3.5 for flux-dev, else the run's train.guidance)")
    p.add_argument("--cfg-scale", type=float, default=1.0,
                   help="classifier-free guidance on the prompt (--run; 1: off), for a base trained with text dropout")
    p.add_argument("--ref-preprocess", choices=REF_PREPROCESS, default="upstream",
                   help="references: upstream MOSAIC's process_image (crop to the subject, 0.9 of the side, white "
                        "square; default) or fit (centre crop) (--run)")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--attention", action="store_true", help="also write per-reference attention maps (--run)")
    p.add_argument("--no-references", action="store_true",
                   help="--run: sample from the prompt alone (e.g. a base model; the manifest keeps the references)")
    p.add_argument("--method", help="method name in the manifest (default: the run's variant)")
    p.add_argument("--device", help="cpu / cuda (--run; default: cuda if available)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")


def requests_from_args(args: argparse.Namespace) -> list[Request]:
    """The requests the command line names: one --prompt with its --ref images, a --dataset or a --benchmark."""
    if args.prompt is not None:
        if args.phrase and len(args.phrase) != len(args.ref):
            raise ValueError(f"--phrase given {len(args.phrase)} times for {len(args.ref)} --ref images")
        phrases = list(args.phrase) or [""] * len(args.ref)
        requests = [Request("prompt", args.prompt, [Path(r) for r in args.ref], phrases)]
    elif args.dataset:
        requests = dataset_requests(args.dataset)
    else:
        requests = benchmark_requests(args.benchmark, args.scenario, args.benchmarks_root)
    return requests[: args.limit] if args.limit else requests


def run(args: argparse.Namespace) -> int:
    """`mosaic sample --run RUN` (the CLI sends --baseline to baselines.sample)."""
    requests = requests_from_args(args)
    sampler = Sampler.from_run(args.run, args.device, args.ref_preprocess)
    sampling = Sampling(args.steps, args.guidance, args.cfg_scale, args.attention, not args.no_references)
    out = sample_run(sampler, requests, args.seeds, args.out, sampling, args.method or "", args.overwrite)
    print(f"wrote {len(requests) * len(args.seeds)} images to {out}")
    return 0
