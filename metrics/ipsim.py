"""IP-Sim: DINO similarity of the reference's subject as localised in the generated image.

Two named protocols (`ip_sim.protocol`):
- `xverse` (default; XVerse's `eval/tools/idip_sam-dino_score.py` with `eval/tools/florence_sam.py`):
  localise the subject word (default localiser `florence2_sam2`: Florence-2 open-vocabulary
  detection + SAM2), paint each instance's mask on white and cut it to the detector's box, drop
  instances under the W/20 size filter, keep the first 3, `pad_to_square` on white, and score the
  maximum DINO CLS cosine x100 against the reference; 0 when no instance is left (a real 0 with its
  reason).
- `owlv2_sam` (this project's earlier procedure): localiser `owlv2_sam`, each mask on white cut to
  its own bounding box, at most `max_instances`, no size filter, no padding; max DINO cosine x100.
`ip_sim.localiser` may name a word-free localiser instead (`masks`, `background`: the synthetic
worlds); the protocol's crop steps still apply, and the procedure says which localiser ran. A
detector belongs to its protocol: `owlv2_sam` under `xverse` (or the reverse) is refused.
Human references are ID-Sim's (NaN here). The DINO model is the `dino` config section, so
IP-Sim and DINO share one model and one reference cache.
"""
from __future__ import annotations

import numpy as np

from .dino import load_dino
from .backbones.localise import LOCALISERS, Detection, NotLocalisable, crop_on_white, xverse_crops
from .manifest import Item
from .registry import Metric, MetricUnavailable, Row, cosine100, register, section

DEFAULT_LOCALISER = {"xverse": "florence2_sam2", "owlv2_sam": "owlv2_sam"}


@register
class IpSim(Metric):
    name = "IP-Sim"
    inputs = ("image", "references", "masks")
    config_key = "ip_sim"
    model_keys = ("localiser", "detector", "segmenter")
    protocols = ("xverse", "owlv2_sam")

    def __init__(self, cfg, ctx, localiser=None):
        super().__init__(cfg, ctx)
        sec = section(cfg, self.config_key)
        try:
            protocol = self.protocol
        except ValueError as e:
            raise MetricUnavailable(str(e)) from None
        kind = sec.get("localiser") or DEFAULT_LOCALISER[protocol]
        if localiser is None:
            if kind not in LOCALISERS:
                raise MetricUnavailable(f"{self.config_key}.localiser: {kind!r} is not one of {', '.join(LOCALISERS)}")
            if kind in DEFAULT_LOCALISER.values() and kind != DEFAULT_LOCALISER[protocol]:
                # a detector names its protocol: an OWLv2 value must never be recorded as XVerse's
                raise MetricUnavailable(f"{self.config_key}.localiser: {kind!r} is not the {protocol!r} protocol's "
                                        f"detector ({DEFAULT_LOCALISER[protocol]!r}); set {self.config_key}.protocol "
                                        f"to the protocol of {kind!r} or drop the localiser key")
            localiser = ctx.model(("localiser", kind, str(sorted(sec.items()))),
                                  lambda: LOCALISERS[kind](self.config_key, sec))
        self.localiser = localiser
        self.dino = load_dino(cfg, ctx)

    def identity(self) -> dict[str, str]:
        loc, n = self.localiser, self.localiser.max_instances
        if self.protocol == "xverse":
            steps = (f"mask on white cut to the box, instances under W/20 dropped, first {n} kept, "
                     f"pad_to_square (white)")
        else:
            steps = f"mask on white cut to its bounding box, <= {n} instances"
        return {"model": f"{loc.model}; {self.dino.model_name}",
                "weights": "; ".join(w for w in (loc.weights, self.dino.weights) if w),
                "protocol": self.protocol,
                "procedure": f"localiser {loc.name}: {steps}; max DINO cosine x100, 0 if none; "
                             f"DINO {self.dino.procedure}",
                "world": self.dino.world}

    def crops(self, image: np.ndarray, found: list) -> tuple[list[np.ndarray], str]:
        """The protocol's crops of the found instances, and the reason when there are none."""
        if self.protocol == "xverse":
            crops, dropped = xverse_crops(image, found, self.localiser.max_instances)
            why = f"subject not found ({dropped} instance(s) under the W/20 size filter)" if dropped else \
                "subject not found"
            return crops, "" if crops else why
        masks = [f.mask if isinstance(f, Detection) else f for f in found]
        masks = [m for m in masks if m.any()][: self.localiser.max_instances]
        return [crop_on_white(image, m) for m in masks], "" if masks else "subject not found"

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, img) in enumerate(zip(items, images)):
            refs = self.ctx.ref_embeddings(self.dino, [r.image for r in it.references])
            for j, (r, ref_emb) in enumerate(zip(it.references, refs)):
                if r.category == "human":
                    rows.append(Row(i, j, float("nan"), "human reference (scored by ID-Sim)"))
                    continue
                try:
                    crops, why = self.crops(img, self.localiser.instances(img, r))
                except NotLocalisable as e:
                    rows.append(Row(i, j, float("nan"), str(e)))
                    continue
                if not crops:
                    rows.append(Row(i, j, 0.0, why))
                    continue
                rows.append(Row(i, j, float(cosine100(self.dino.embed(crops), ref_emb[None]).max())))
        return rows
