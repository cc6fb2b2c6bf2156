"""Which baselines exist, loaded lazily by name.

Why it exists: the official releases pull heavy, conflicting dependencies (each runs in its own
conda env), so a baseline is registered as a "module:Class" string and imported only when
asked for. Every baseline offers the same call:

    generate(prompt, references, seed, **settings) -> PIL.Image.Image

(references: image paths or uint8 arrays, in prompt order), and the trainable ones
(`controlled`) also `train(config, overrides)`, through the shared trainer (mosaic.train).
"""
from __future__ import annotations

from mosaic.infra.registry import Registry

BASELINES: Registry[type] = Registry("baseline", {
    # controlled re-implementations on the shared backbone (baselines/controlled)
    "omnicontrol": "baselines.controlled.omnicontrol:OmniControl",
    "uno": "baselines.controlled.uno:Uno",
    "dreamo": "baselines.controlled.dreamo:DreamO",
    "xverse": "baselines.controlled.xverse:XVerse",
    # the published pipelines with their own weights (baselines/official; GPU + their own env)
    "dreamo-official": "baselines.official.dreamo:DreamOOfficial",
    "uno-official": "baselines.official.uno:UnoOfficial",
    "xverse-official": "baselines.official.xverse:XVerseOfficial",
    # any external system's pre-generated images (baselines/images.py)
    "images": "baselines.images:ImageFolder",
})


def list_baselines() -> list[str]:
    return BASELINES.names()


def get_baseline(name: str) -> type:
    """The baseline class registered as `name` (imported now)."""
    return BASELINES.get(name)
