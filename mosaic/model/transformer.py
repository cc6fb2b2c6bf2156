"""`MosaicTransformer`: a diffusers FLUX transformer with MOSAIC's reference branch, and `build_model`.

The wrapped `FluxTransformer2DModel` keeps its own modules and weights (so FLUX.1-dev checkpoints
load unchanged); the reference LoRA is a peft adapter injected into it (so it saves in the
diffusers/peft format and loads with `FluxPipeline.load_lora_weights`). `forward` runs the fused
blocks of `fused.py`: one pass per layer over [text | target | ref_1..ref_K], the LoRA and the
timestep-0 modulation on reference tokens only, references isolated from each other.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from torch.utils.checkpoint import checkpoint

from ..infra.runfolder import atomic_dir, atomic_file
from . import fused
from .flavours import Flavour, get_flavour
from .layout import POS_SCHEMES, TokenLayout, position_ids
from .lora import LoraSpec
from .weights import component_config, load_error, locate

ADAPTER = "default"


class MosaicTransformer(torch.nn.Module):
    def __init__(self, transformer: FluxTransformer2DModel, flavour: Flavour, lora: LoraSpec | None = None,
                 pos_scheme: str = "left", max_refs: int | None = None, gradient_checkpointing: bool = False,
                 ref_guidance: float | None = 1.0):
        super().__init__()
        if pos_scheme not in POS_SCHEMES:
            raise ValueError(f"pos_scheme must be one of {POS_SCHEMES}, got {pos_scheme!r}")
        self.flavour, self.lora_spec, self.pos_scheme = flavour, lora, pos_scheme
        self.max_refs = flavour.max_refs if max_refs is None else int(max_refs)
        if self.max_refs < 1:
            raise ValueError(f"max_refs must be >= 1, got {max_refs!r}")
        self.gradient_checkpointing = gradient_checkpointing
        self.ref_guidance = ref_guidance  # None: the references' modulation reuses the target's guidance
        self.transformer = transformer
        if lora is not None:
            transformer.add_adapter(lora.peft_config(), adapter_name=ADAPTER)
            for name, p in transformer.named_parameters():
                p.requires_grad_("lora_" in name)

    @property
    def num_double_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    @property
    def in_channels(self) -> int:
        return self.transformer.config.in_channels

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward
    def forward(self, target, refs, ref_mask, text, pooled, timestep, guidance=None, *, target_grid,
                ref_grid=None, attn_hook=None, ref_offset=None, text_temb_offset=None) -> torch.Tensor:
        """The flavour's prediction for the target tokens [B, Nt, C]: the velocity noise - x0 (FLUX's
        convention) or, for an x0 flavour, the clean tokens (mosaic.flow.to_velocity converts).

        target [B, Nt, C] noisy target tokens; refs [B, K, Nr, C] clean reference tokens, or None for plain
        text-to-image; ref_mask [B, K] bool (False = padding, no effect) or None (all real); text [B, L, D]
        and pooled [B, Dp] prompt features; timestep [B] in [0, 1]; guidance [B] or None (1.0 when the
        flavour is guidance-distilled); target_grid / ref_grid the (h, w) token grids.
        attn_hook(i, q, k, layout) is called for every double block i with q, k [B, H, N, d] as they enter
        attention (after RMSNorm and RoPE); it runs outside the checkpointed block, once per forward.
        Baseline inputs (None: off): ref_offset [B, K, D] is added to every token of reference k after
        x_embedder (DreamO's index embedding); text_temb_offset [B, n_blocks, L, D] is added to the
        timestep embedding that modulates each text token in block j (XVerse's text-stream modulation;
        double blocks first, then single blocks).
        """
        tr = self.transformer
        b, nt, _ = target.shape
        if refs is None or refs.shape[1] == 0:
            refs, ref_mask = target.new_zeros(b, 0, 0, target.shape[-1]), None
        kmax, nr = refs.shape[1], refs.shape[2]
        if kmax > self.max_refs:
            raise ValueError(f"{kmax} references exceed the model's limit max_refs={self.max_refs}")
        layout = TokenLayout(text.shape[1], nt, nr, kmax)
        freqs = tr.pos_embed(position_ids(layout, target_grid, ref_grid, self.pos_scheme).to(target.device))
        key_mask = None
        if ref_mask is not None and not bool(ref_mask.all()):
            key_mask = torch.cat([ref_mask.new_ones(b, layout.ref_start), ref_mask.repeat_interleave(nr, dim=1)], 1)

        temb_t, temb_0 = self.time_embeddings(timestep, guidance, pooled, with_refs=kmax > 0)
        img = fused.ref_only(tr.x_embedder, torch.cat([target, refs.flatten(1, 2)], 1), nt)
        if ref_offset is not None and kmax:  # per-reference offset on all its tokens (DreamO's index embedding)
            img = torch.cat([img[:, :nt], img[:, nt:] + ref_offset.to(img.dtype).repeat_interleave(nr, dim=1)], 1)
        txt = tr.context_embedder(text)
        nd = len(tr.transformer_blocks)
        toff = (lambda j: None) if text_temb_offset is None else (lambda j: text_temb_offset[:, j].to(txt.dtype))
        for i, blk in enumerate(tr.transformer_blocks):
            txt, img, q, k = self._run(fused.double_block, blk, txt, img, temb_t, temb_0, freqs, layout, key_mask,
                                       toff(i))
            if attn_hook is not None:  # outside the checkpointed region: called once per forward
                attn_hook(i, q, k, layout)
        x = torch.cat([txt, img], 1)
        for j, blk in enumerate(tr.single_transformer_blocks):
            x = self._run(fused.single_block, blk, x, temb_t, temb_0, freqs, layout, key_mask, toff(nd + j))
        return tr.proj_out(tr.norm_out(x[:, layout.target], temb_t))

    def time_embeddings(self, timestep, guidance, pooled, with_refs: bool = True):
        """(temb at timestep t, temb at timestep 0 for the references); timesteps in [0, 1].

        The references' embedding takes guidance `ref_guidance` (1.0: upstream's reference branch, in training and
        at sampling alike), not the target's, unless ref_guidance is None."""
        tr, dtype = self.transformer, pooled.dtype
        if tr.config.guidance_embeds:
            guidance = torch.ones_like(timestep) if guidance is None else guidance
            ref_g = guidance if self.ref_guidance is None else torch.full_like(guidance, self.ref_guidance)
            embed = lambda t, g: tr.time_text_embed(t.to(dtype) * 1000, g.to(dtype) * 1000, pooled)  # noqa: E731
        else:
            if guidance is not None:
                raise ValueError(f"flavour {self.flavour.name!r} has no guidance embedding; pass guidance=None")
            ref_g = None
            embed = lambda t, g: tr.time_text_embed(t.to(dtype) * 1000, pooled)  # noqa: E731
        return embed(timestep, guidance), (embed(torch.zeros_like(timestep), ref_g) if with_refs else None)

    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # ------------------------------------------------------------------ LoRA / weights I/O
    def _require_lora(self):
        if self.lora_spec is None:
            raise ValueError("this model was built without a LoRA (lora=None)")

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA tensors under diffusers FLUX keys: 'transformer.<module>.lora_A.weight' / '.lora_B.weight'."""
        from peft.utils import get_peft_model_state_dict

        self._require_lora()
        sd = get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER)
        return {f"transformer.{k}": v.detach().cpu().contiguous() for k, v in sd.items()}

    def save_lora(self, path: str | os.PathLike) -> Path:
        """Write the LoRA as one safetensors file (diffusers/peft FLUX format, adapter config in its
        metadata) atomically (mosaic.infra.runfolder)."""
        from diffusers import FluxPipeline

        self._require_lora()
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: LoRA file name must end in .safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k.removeprefix("transformer."): v for k, v in self.lora_state_dict().items()}
        meta = self.transformer.peft_config[ADAPTER].to_dict()
        with atomic_file(path) as tmp:
            FluxPipeline.save_lora_weights(tmp.parent, transformer_lora_layers=sd,
                                           transformer_lora_adapter_metadata=meta, weight_name=tmp.name)
        return path

    def load_lora(self, path: str | os.PathLike) -> None:
        """Load a file written by `save_lora` into this model's adapter (shapes must match)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        self._require_lora()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file not found: {path}")
        sd = {k.removeprefix("transformer."): v for k, v in load_file(path).items()}
        own = {k.removeprefix("transformer."): v for k, v in self.lora_state_dict().items()}
        if set(sd) != set(own):
            raise ValueError(f"{path}: LoRA keys do not match this model (missing {sorted(set(own) - set(sd))[:3]}, "
                             f"unexpected {sorted(set(sd) - set(own))[:3]})")
        for k, v in sd.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        set_peft_model_state_dict(self.transformer, sd, adapter_name=ADAPTER)

    def save_base(self, directory: str | os.PathLike) -> Path:
        """Save the base transformer (no adapter) as a diffusers folder, atomically; pass it as `weights=`."""
        if self.lora_spec is not None:
            raise ValueError("save_base saves a base model; this one carries a LoRA (use save_lora)")
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(directory, overwrite=True) as tmp:  # e.g. a full disk: no partial folder is left behind
            self.transformer.save_pretrained(tmp)
        return directory


def load_transformer(flavour: Flavour, weights: str | os.PathLike, dtype: torch.dtype) -> FluxTransformer2DModel:
    """Pretrained transformer from a local folder or the local HF cache; its config must match the flavour."""
    root, sub = locate(weights, "transformer")
    folder = root / (sub or "")
    cfg = component_config(root, sub, "_class_name", ("FluxTransformer2DModel",))
    defaults = inspect.signature(FluxTransformer2DModel.__init__).parameters
    for key, want in flavour.transformer.items():  # checked before loading: no model of the wrong size is built
        got = cfg[key] if key in cfg else defaults[key].default  # diffusers fills absent keys with the defaults
        if (tuple(got) if isinstance(got, list) else got) != want:
            raise ValueError(f"{folder / 'config.json'}: field {key!r} = {got!r}, but flavour "
                             f"{flavour.name!r} expects {want!r}")
    try:
        return FluxTransformer2DModel.from_pretrained(root, subfolder=sub, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise load_error(folder, "FluxTransformer2DModel", e) from None


def build_model(flavour: str | Flavour, weights: str | os.PathLike | None = None, lora: LoraSpec | None = LoraSpec(),
                pos_scheme: str = "left", max_refs: int | None = None, gradient_checkpointing: bool = False,
                seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                ref_guidance: float | None = 1.0) -> MosaicTransformer:
    """A MOSAIC model of a named flavour: pretrained `weights` or seeded random init, plus the reference LoRA.

    `lora=None` builds the plain base model (all weights trainable), e.g. for pre-training the tiny base.
    """
    fl = get_flavour(flavour)
    device = torch.device(device or "cpu")
    with _seeded(seed, device):  # random base init (if any) and the LoRA's A matrices
        if weights is not None:
            tr = load_transformer(fl, weights, dtype)
        else:
            with device, _default_dtype(dtype):  # initialise in place: no fp32 copy of a large model
                tr = FluxTransformer2DModel(**fl.transformer)
        model = MosaicTransformer(tr, fl, lora, pos_scheme, max_refs, gradient_checkpointing, ref_guidance)
    return model.to(device)


@contextmanager
def _seeded(seed: int, device: torch.device):
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
