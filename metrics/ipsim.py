"""IP-Sim: subject similarity of localised instances, XVerse protocol.

For each non-human reference: localise instances of its subject in the generated image
(`metrics.localise`, chosen by `ip_sim.localiser`), paint each instance's crop onto white,
keep at most `max_instances` (3 in XVerse), and score the maximum DINO cosine x100 against
the reference image; 0 when nothing is found (a real 0, reason "subject not found").
Human references are ID-Sim's (NaN here). The DINO model is the `dino` config section, so
IP-Sim and DINO share one model and one reference cache.
"""
from __future__ import annotations

import numpy as np

from .dino import load_dino
from .localise import LOCALISERS, NotLocalisable, crop_on_white
from .manifest import Item
from .registry import Metric, MetricUnavailable, Row, cosine100, register, section


@register
class IpSim(Metric):
    name = "IP-Sim"
    inputs = ("image", "references", "masks")
    config_key = "ip_sim"
    model_keys = ("localiser", "detector", "segmenter")

    def __init__(self, cfg, ctx, localiser=None):
        super().__init__(cfg, ctx)
        sec = section(cfg, self.config_key)
        kind = sec.get("localiser", "owlv2_sam")
        if localiser is None:
            if kind not in LOCALISERS:
                raise MetricUnavailable(f"{self.config_key}.localiser: {kind!r} is not one of {', '.join(LOCALISERS)}")
            localiser = ctx.model(("localiser", kind, str(sorted(sec.items()))),
                                  lambda: LOCALISERS[kind](self.config_key, sec))
        self.localiser = localiser
        self.dino = load_dino(cfg, ctx)

    def identity(self) -> dict[str, str]:
        loc = self.localiser
        return {"model": f"{loc.model}; {self.dino.model_name}",
                "weights": "; ".join(w for w in (loc.weights, self.dino.weights) if w),
                "protocol": f"crop on white, <= {loc.max_instances} instances, max DINO cosine x100; "
                            f"0 if none; DINO {self.dino.procedure}",
                "world": self.dino.world}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, img) in enumerate(zip(items, images)):
            refs = self.ctx.ref_embeddings(self.dino, [r.image for r in it.references])
            for j, (r, ref_emb) in enumerate(zip(it.references, refs)):
                if r.category == "human":
                    rows.append(Row(i, j, float("nan"), "human reference (scored by ID-Sim)"))
                    continue
                try:
                    masks = [m for m in self.localiser.instances(img, r) if m.any()][: self.localiser.max_instances]
                except NotLocalisable as e:
                    rows.append(Row(i, j, float("nan"), str(e)))
                    continue
                if not masks:
                    rows.append(Row(i, j, 0.0, "subject not found"))
                    continue
                crops = self.dino.embed([crop_on_white(img, m) for m in masks])
                rows.append(Row(i, j, float(cosine100(crops, ref_emb[None]).max())))
        return rows
