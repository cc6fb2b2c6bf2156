"""`images`: a folder of pre-generated images, so that any external system's outputs enter the tables.

Naming scheme: one image per (prompt, seed), named

    <id>_s<seed>.<png|jpg|jpeg|webp>        e.g. dreambench-multi-0003_s42.png

directly in the folder, where <id> is the prompt's id in the prompt list the folder answers:
a benchmark's entry id as `mosaic.data.benchmarks` gives it ("<benchmark>-<scenario>-<index:04d>",
e.g. xversebench-single-0012) or a dataset folder's sample id (e.g. the tiny world's val split),
and <seed> a non-negative integer. This is the same name `mosaic sample` gives its images.

`ImageFolder(folder, benchmark=..., scenario=...)` (or `dataset=...`) then
- `write_manifest(method)` writes folder/manifest.jsonl (the `mosaic eval` input, metrics.manifest
  format; references point at the benchmark's or dataset's own files) for every image it finds;
  a prompt of the list with no image is reported (`missing`), and so is a file whose name
  matches no prompt id (`unmatched`); `require_all=True` makes a missing image an error;
- `generate(prompt, references, seed, id=None)` returns the stored image (the common baseline
  interface), found by `id`, or else by the prompt text.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mosaic.data.records import DataError
from mosaic.infra.runfolder import MANIFEST_FILE, atomic_write
from mosaic.inference.sampler import benchmark_requests, dataset_requests, manifest_record

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
NAME = re.compile(r"^(?P<id>.+)_s(?P<seed>\d+)$")


@dataclass
class ManifestReport:
    path: Path
    written: int
    missing: list[str] = field(default_factory=list)  # prompt ids without any image
    unmatched: list[str] = field(default_factory=list)  # image files naming no known prompt id


class ImageFolder:
    def __init__(self, folder: str | os.PathLike, benchmark: str | None = None, scenario: str = "multi",
                 dataset: str | os.PathLike | None = None, benchmarks_root: str | os.PathLike | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: image folder not found")
        if (benchmark is None) == (dataset is None):
            raise ValueError("ImageFolder needs exactly one prompt list: benchmark=<name> (with scenario) "
                             "or dataset=<folder>")
        self.requests = (benchmark_requests(benchmark, scenario, benchmarks_root) if benchmark
                         else dataset_requests(dataset))
        self.by_id = {r.id: r for r in self.requests}
        self.by_prompt = {r.prompt: r for r in self.requests}
        self.images: dict[tuple[str, int], Path] = {}
        self.unmatched: list[str] = []
        for p in sorted(self.folder.iterdir()):
            m = NAME.match(p.stem)
            if p.suffix.lower() not in EXTENSIONS or not p.is_file():
                continue
            if m is None or m["id"] not in self.by_id:
                self.unmatched.append(p.name)
                continue
            key = (m["id"], int(m["seed"]))
            if key in self.images:
                raise DataError(f"{self.folder}: two images for {key[0]} seed {key[1]}: "
                                f"{self.images[key].name}, {p.name}")
            self.images[key] = p

    def generate(self, prompt: str, references: list, seed: int, id: str | None = None, **_):
        if id is None:
            if prompt not in self.by_prompt:
                raise KeyError(f"{self.folder}: no prompt of the list reads {prompt!r}; pass id=")
            id = self.by_prompt[prompt].id
        path = self.images.get((id, int(seed)))
        if path is None:
            raise FileNotFoundError(f"{self.folder}: no image {id}_s{seed}.<{'|'.join(e[1:] for e in EXTENSIONS)}>")
        with Image.open(path) as im:
            return im.convert("RGB")

    def write_manifest(self, method: str, name: str = MANIFEST_FILE, require_all: bool = False) -> ManifestReport:
        """Write the manifest of every image found (atomically); see the module docstring."""
        have = {i for i, _ in self.images}
        missing = [r.id for r in self.requests if r.id not in have]
        if missing and require_all:
            raise DataError(f"{self.folder}: {len(missing)} prompt(s) have no image, e.g. {missing[:3]} "
                            f"(expected names <id>_s<seed>.png)")
        if not self.images:
            raise DataError(f"{self.folder}: no image is named <id>_s<seed>.<ext> for an id of the prompt list")
        lines = [json.dumps(manifest_record(self.by_id[i], path.name, method, seed))
                 for (i, seed), path in sorted(self.images.items())]
        out = atomic_write(self.folder / name, "\n".join(lines) + "\n")
        return ManifestReport(out, len(lines), missing, list(self.unmatched))
