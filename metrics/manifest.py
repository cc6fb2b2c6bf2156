"""The generated-images manifest: what `mosaic eval` reads next to a folder of images.

Every generator (the MOSAIC sampler, each baseline adapter, an external image folder) writes
one JSON object per generated image to a JSONL file, `manifest.jsonl` by default
(`mosaic.infra.runfolder.MANIFEST_FILE`), in the folder that holds the images. Relative paths are
relative to that folder; absolute paths are kept as they are (benchmark references usually
live in ../shared/benchmarks).

One line (keys marked * are required)::

    {
      "image": "images/dreambench-multi-0003_s42.png",   * the generated image
      "prompt": "a backpack and a stuffed animal in the snow",   * the prompt the generator saw
      "references": [                                     * one object per subject, prompt order
        {"image": "/abs/or/rel/ref.jpg",                  * the reference image
         "word": "backpack",        subject word/class (IP-Sim's localiser query; default: phrase)
         "phrase": "a backpack",    the subject's phrase as written in the prompt
         "category": "object",      "human" enables ID-Sim; "object"/"animal"/"live"/... IP-Sim
         "token": "sks",            a special subject token; CLIP-T strips it from the prompt
         "mask": "masks/x_0.png",   optional: this subject's visible mask in the generated image
         "box": [y0, x0, y1, x1]}   optional: the place the prompt puts it at, in generated-image px
      ],                                                  (L image, >127 = subject; IP-Sim "masks")
      "id": "dreambench-multi-0003_s42",   default: the image path
      "clip_t_prompt": "...",              default: the prompt without the references' tokens
      "k": 2,                              if given, must equal len(references)
      "method": "mosaic", "seed": 42,      copied into every result row
      "benchmark": "dreambench", "scenario": "multi", "entry": "dreambench-multi-0003",
      "attention": "attn/x.npz",           optional, for the mechanism metrics (below)
      "meta": {...}                        anything else; kept, not interpreted
    }

The attention file (.npz) carries, for each reference k: `attn{k}` float [P_k, T] (the
attention rows of its annotated points over the T target tokens), `gt{k}` int [P_k] (the
ground-truth target token of each point), and once `token_masks` bool [K, th, tw] (the
subjects' target-token masks; th * tw = T).

A malformed line raises `ManifestError` naming the file, the line and the key.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaic.data.records import DataError


class ManifestError(DataError):
    """A manifest line is malformed; the message names the file, line and key."""


@dataclass
class RefInput:
    image: Path
    word: str = ""
    phrase: str = ""
    category: str = ""
    token: str = ""
    mask: Path | None = None
    box: tuple[int, int, int, int] | None = None  # the prompted place (the places world), image px


def _box(value, where: str) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4 or not all(isinstance(v, int) for v in value)
            or not (0 <= value[0] < value[2] and 0 <= value[1] < value[3])):
        raise ManifestError(f"{where}: must be [y0, x0, y1, x1], integers with y0 < y1 and x0 < x1, got {value!r}")
    return tuple(value)


@dataclass
class Item:
    """One generated image to evaluate, with everything the metrics may need."""

    id: str
    image: Path
    prompt: str
    references: list[RefInput]
    clip_t_prompt: str = ""
    method: str = ""
    seed: int | None = None
    attention: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)  # benchmark, scenario, entry, meta
    source: str = ""  # "manifest file:line", for errors

    def __post_init__(self):
        if not self.clip_t_prompt:
            self.clip_t_prompt = strip_tokens(self.prompt, [r.token for r in self.references])


def strip_tokens(prompt: str, tokens: list[str]) -> str:
    """The prompt without the given subject tokens (whole words), whitespace collapsed."""
    drop = {t for t in tokens if t}
    return " ".join(w for w in prompt.split() if w not in drop)


def _path(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: must be a non-empty path string, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def parse_record(rec: Any, base: Path, where: str) -> Item:
    """One manifest object -> Item; `where` ("file:line") prefixes every error."""
    if not isinstance(rec, dict):
        raise ManifestError(f"{where}: a line must be a JSON object")
    for key in ("image", "prompt", "references"):
        if key not in rec:
            raise ManifestError(f"{where}: missing required key {key!r}")
    if not isinstance(rec["prompt"], str):
        raise ManifestError(f"{where}: key 'prompt' must be a string")
    if not isinstance(rec["references"], list):
        raise ManifestError(f"{where}: key 'references' must be a list")
    if "k" in rec and rec["k"] != len(rec["references"]):
        raise ManifestError(f"{where}: key 'k' = {rec['k']} but 'references' has {len(rec['references'])} entries")
    refs = []
    for j, r in enumerate(rec["references"]):
        rw = f"{where}: references[{j}]"
        if not isinstance(r, dict) or "image" not in r:
            raise ManifestError(f"{rw}: must be an object with an 'image' key")
        refs.append(RefInput(
            image=_path(base, r["image"], f"{rw}.image"),
            word=str(r.get("word") or r.get("phrase") or ""),
            phrase=str(r.get("phrase") or ""),
            category=str(r.get("category") or "").lower(),
            token=str(r.get("token") or ""),
            mask=_path(base, r["mask"], f"{rw}.mask") if r.get("mask") else None,
            box=_box(r.get("box"), f"{rw}.box"),
        ))
    seed = rec.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ManifestError(f"{where}: key 'seed' must be an integer, got {seed!r}")
    return Item(
        id=str(rec.get("id") or rec["image"]),
        image=_path(base, rec["image"], f"{where}: image"),
        prompt=rec["prompt"],
        references=refs,
        clip_t_prompt=str(rec.get("clip_t_prompt") or ""),
        method=str(rec.get("method") or ""),
        seed=seed,
        attention=_path(base, rec["attention"], f"{where}: attention") if rec.get("attention") else None,
        info={k: rec[k] for k in ("benchmark", "scenario", "entry", "meta") if k in rec},
        source=where,
    )


def read_items(path: str | os.PathLike) -> list[Item]:
    """All items of a manifest file (paths resolved against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    items, seen = [], set()
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
            item = parse_record(rec, path.parent, where)
            if item.id in seen:
                raise ManifestError(f"{where}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise ManifestError(f"{path}: manifest has no entries")
    return items

