"""`omnicontrol`: OminiControl's reference branch with no correspondence supervision.

Reproduces: the mechanism MOSAIC builds on (Tan et al., OminiControl): reference tokens join
the joint attention sequence of the frozen FLUX backbone, a LoRA acts on reference tokens only,
references are modulated with timestep 0 and placed at shifted RoPE positions ("left" scheme),
and training is the plain flow-matching loss. It is MOSAIC with SCAL and MDL switched off
(loss.alpha = loss.beta = 0), kept as a separate named baseline: any gain of MOSAIC over it is
the gain of the two attention losses.
Leaves out: nothing of the reference branch; OminiControl's own data and its single-condition
training regime are replaced by the shared multi-subject data (same as MOSAIC).
"""
from __future__ import annotations

from .base import ControlledBaseline


class OmniControl(ControlledBaseline):
    name = "omnicontrol"
    SETTINGS = ("loss.alpha=0", "loss.beta=0")
