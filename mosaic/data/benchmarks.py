"""Benchmark protocol loaders: DreamBench (UNO's single/multi JSON) and XVerseBench.

The evaluation harness needs the published prompt lists with their reference images
mapped to the local read-only copy in `../shared/benchmarks` (see its README.md).
Entries whose reference images are not available here (XVerseBench animals and
objects, built upstream from DreamBench++) are returned as `skipped`, each with the
missing files, so a report can state exactly what was not run, never drop it silently.

Root resolution: explicit argument > $MOSAIC_BENCHMARKS > <project root>/../shared/benchmarks.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import DataError
from .validate import missing_phrases

BENCHMARKS = ("dreambench", "xversebench")
SCENARIOS = ("single", "multi")

_DREAMBENCH_FILES = {"single": "uno_single_subject.json", "multi": "uno_multi_subject.json"}
_XVERSE_FILES = {"single": "XVerseBench_single.json", "multi": "XVerseBench_multi.json"}
# DreamBooth's "live" subjects are its cats and dogs (they get the live-subject prompt list
# in prompts_and_classes.txt); every other subject is an object.
_LIVE_CLASSES = {"cat", "dog"}
# XVerseBench generation protocol. The JSON files carry no seeds or sampler settings; these
# are the values of the upstream evaluation code, as recorded in shared/benchmarks/README.md.
XVERSE_PROTOCOL: dict[str, Any] = {
    "seeds": [42, 43, 44, 45],
    "num_inference_steps": 28,
    "guidance_scale": 3.5,
    "target_size": 768,
    "condition_size": 256,
}


@dataclass
class BenchmarkEntry:
    """One prompt of a benchmark with its local reference images."""

    id: str  # "<benchmark>-<scenario>-<index:04d>"
    benchmark: str  # "dreambench" | "xversebench"
    scenario: str  # "single" | "multi"
    index: int  # position in the upstream JSON (XVerse: its "index" field)
    prompt: str
    references: list[Path]  # local image paths, one per subject, in prompt order
    subjects: list[str]  # the subject word of each reference (DreamBench class, XVerse use word)
    categories: list[str]  # per reference: "object"/"live" (DreamBench), "human"/"animal"/"object" (XVerse)
    settings: dict[str, Any] = field(default_factory=dict)  # benchmark-specific fields

    @property
    def k(self) -> int:
        return len(self.references)


@dataclass
class SkippedEntry:
    id: str
    missing: list[Path]
    reason: str


@dataclass
class BenchmarkSet:
    benchmark: str
    scenario: str
    source: Path  # the JSON file read
    entries: list[BenchmarkEntry]  # runnable: every reference image exists
    skipped: list[SkippedEntry]
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.entries) + len(self.skipped)

    def summary(self) -> str:
        return (f"{self.benchmark}/{self.scenario}: {len(self.entries)} runnable, "
                f"{len(self.skipped)} skipped of {self.total} prompts ({self.source})")


def benchmark_record(entry, image: str, method: str = "", seed: int | None = None) -> dict[str, Any]:
    """The generated-images manifest line (metrics.manifest's format) of `entry` rendered as `image`."""
    return {
        "id": f"{entry.id}_s{seed}" if seed is not None else entry.id,
        "image": str(image),
        "prompt": entry.prompt,
        "references": [{"image": str(p), "word": w, "category": c}
                       for p, w, c in zip(entry.references, entry.subjects, entry.categories)],
        "k": entry.k, "method": method, "seed": seed,
        "benchmark": entry.benchmark, "scenario": entry.scenario, "entry": entry.id,
    }


def benchmarks_root(root: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: `root`, else $MOSAIC_BENCHMARKS, else ../shared/benchmarks."""
    if root is None:  # parents[2] is the project root (the folder holding the mosaic package)
        default = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
        root = os.environ.get("MOSAIC_BENCHMARKS") or default
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: benchmark folder not found (pass a root or set MOSAIC_BENCHMARKS)")
    return root


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: benchmark file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of prompts, got {type(data).__name__}")
    return data


def _field(path: Path, i: int, entry: Any, key: str) -> Any:
    try:
        return entry[key]
    except (KeyError, TypeError):
        raise DataError(f"{path}: entry {i}: missing field '{key}'") from None


def dreambench_classes(root: Path) -> dict[str, str]:
    """subject folder name -> class noun, from prompts_and_classes.txt (the CSV block)."""
    path = root / "dreambench" / "prompts_and_classes.txt"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: DreamBench class list not found") from None
    try:
        start = lines.index("subject_name,class") + 1
    except ValueError:
        raise DataError(f"{path}: no 'subject_name,class' header") from None
    classes = {}
    for line in lines[start:]:
        if not line.strip():
            break
        name, _, cls = line.partition(",")
        classes[name.strip()] = cls.strip()
    return classes


def _split(benchmark: str, scenario: str, source: Path, rows: list[BenchmarkEntry],
           protocol: dict[str, Any] | None = None) -> BenchmarkSet:
    """Runnable entries vs skipped ones (any reference image missing), with the reason. A prompt that does not
    name each of its subjects (the XVerse modulation and CLIP-T find them in it) is a DataError."""
    entries, skipped = [], []
    for entry in rows:
        missing = missing_phrases(entry.prompt, entry.subjects)
        if missing:
            raise DataError(f"{source}: entry {entry.index} ({entry.id}): prompt {entry.prompt!r} does not contain "
                            f"its subject phrase(s) {', '.join(missing)}")
        missing = [p for p in entry.references if not p.is_file()]
        if missing:
            folders = sorted({p.parent.name for p in missing})
            if benchmark == "xversebench" and set(folders) <= {"animal", "object"}:
                reason = (f"XVerseBench {'/'.join(folders)} images are built upstream from DreamBench++, "
                          f"which is not redistributable here")
            else:
                reason = f"{len(missing)} reference image(s) missing from {source.parent}"
            skipped.append(SkippedEntry(entry.id, missing, reason))
        else:
            entries.append(entry)
    return BenchmarkSet(benchmark, scenario, source, entries, skipped, dict(protocol or {}))


def load_dreambench(scenario: str, root: str | os.PathLike | None = None) -> BenchmarkSet:
    """UNO's DreamBench protocol; `./dreambooth/dataset/<subject>/NN.jpg` -> dreambench/images/<subject>/NN.jpg."""
    if scenario not in _DREAMBENCH_FILES:
        raise ValueError(f"DreamBench scenario must be one of {SCENARIOS}, got {scenario!r}")
    root = benchmarks_root(root)
    source = root / "dreambench" / _DREAMBENCH_FILES[scenario]
    classes = dreambench_classes(root)
    rows = []
    for i, e in enumerate(_read_json(source)):
        refs, subjects, names = [], [], []
        for p in _field(source, i, e, "image_paths"):
            parts = Path(p).parts  # (".", "dreambooth", "dataset", subject, "NN.jpg") with "." dropped
            if len(parts) < 2 or "dataset" not in parts:
                raise DataError(f"{source}: entry {i}: image path {p!r} is not ./dreambooth/dataset/<subject>/<file>")
            name = parts[-2]
            if name not in classes:
                raise DataError(f"{source}: entry {i}: subject {name!r} is not in prompts_and_classes.txt")
            refs.append(root / "dreambench" / "images" / name / parts[-1])
            subjects.append(classes[name])
            names.append(name)
        entry = BenchmarkEntry(
            id=f"dreambench-{scenario}-{i:04d}", benchmark="dreambench", scenario=scenario, index=i,
            prompt=_field(source, i, e, "prompt"), references=refs, subjects=subjects,
            categories=["live" if c in _LIVE_CLASSES else "object" for c in subjects],
            settings={"subject_names": names},
        )
        rows.append(entry)
    return _split("dreambench", scenario, source, rows)


def load_xversebench(scenario: str, root: str | os.PathLike | None = None) -> BenchmarkSet:
    """XVerseBench; `assets/XVerseBench/<category>/<file>` -> xversebench/<category>/<file>."""
    if scenario not in _XVERSE_FILES:
        raise ValueError(f"XVerseBench scenario must be one of {SCENARIOS}, got {scenario!r}")
    root = benchmarks_root(root)
    source = root / "xversebench" / _XVERSE_FILES[scenario]
    rows = []
    for i, e in enumerate(_read_json(source)):
        index = int(_field(source, i, e, "index"))
        refs, subjects, categories, captions = [], [], [], []
        for m in _field(source, i, e, "modulation"):
            inputs, words = _field(source, i, m, "src_inputs"), _field(source, i, m, "use_words")
            if len(inputs) != len(words):
                raise DataError(f"{source}: entry {i}: {len(inputs)} src_inputs but {len(words)} use_words")
            for src, word in zip(inputs, words):
                parts = Path(_field(source, i, src, "image_path")).parts
                if len(parts) < 2:
                    raise DataError(f"{source}: entry {i}: bad image_path {src['image_path']!r}")
                refs.append(root / "xversebench" / parts[-2] / parts[-1])
                categories.append(parts[-2])
                captions.append(src.get("caption", ""))
                subjects.append(word[1])  # use_words rows are [reference index, word, word]
        entry = BenchmarkEntry(
            id=f"xversebench-{scenario}-{index:04d}", benchmark="xversebench", scenario=scenario, index=index,
            prompt=_field(source, i, e, "prompt"), references=refs, subjects=subjects, categories=categories,
            settings={"captions": captions, "position_delta": e.get("position_delta"),
                      "use_words": [w for m in e["modulation"] for w in m["use_words"]]},
        )
        rows.append(entry)
    return _split("xversebench", scenario, source, rows, XVERSE_PROTOCOL)


def load_benchmark(benchmark: str, scenario: str, root: str | os.PathLike | None = None) -> BenchmarkSet:
    loaders = {"dreambench": load_dreambench, "xversebench": load_xversebench}
    if benchmark not in loaders:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    return loaders[benchmark](scenario, root)
