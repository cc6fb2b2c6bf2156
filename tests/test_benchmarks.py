"""Benchmark loaders against the real protocol files in ../shared/benchmarks."""
import json
from pathlib import Path

import pytest

from mosaic.data.benchmarks import benchmarks_root, load_benchmark, load_dreambench, load_xversebench
from mosaic.data.records import DataError

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"{ROOT} not present")


@pytest.mark.parametrize("scenario,k", [("single", 1), ("multi", 2)])
def test_dreambench_counts_and_paths(scenario, k):
    bs = load_dreambench(scenario)
    assert len(bs.entries) == 750 and bs.skipped == []
    assert {e.k for e in bs.entries} == {k}
    images = ROOT / "dreambench" / "images"
    assert all(p.is_file() and p.is_relative_to(images) for e in bs.entries for p in e.references)
    assert len({e.id for e in bs.entries}) == 750
    # Every prompt names its subjects by class noun (UNO's protocol has no unique token).
    assert all(s in e.prompt for e in bs.entries for s in e.subjects)


def test_dreambench_classes_and_categories():
    by_subject = {n: (s, c) for e in load_dreambench("single").entries
                  for n, s, c in zip(e.settings["subject_names"], e.subjects, e.categories)}
    assert by_subject["bear_plushie"] == ("stuffed animal", "object")
    assert by_subject["pink_sunglasses"] == ("glasses", "object")
    assert by_subject["dog6"] == ("dog", "live")
    assert by_subject["cat2"] == ("cat", "live")
    assert len(by_subject) == 30
    assert sum(c == "live" for _, c in by_subject.values()) == 9


def test_dreambench_first_entry_maps_upstream_path():
    raw = json.loads((ROOT / "dreambench" / "uno_multi_subject.json").read_text())[0]
    e = load_dreambench("multi").entries[0]
    assert e.prompt == raw["prompt"]
    assert [p.relative_to(ROOT / "dreambench" / "images").as_posix() for p in e.references] == \
        [p.split("dataset/")[1] for p in raw["image_paths"]]


@pytest.mark.parametrize("scenario,total,runnable", [("single", 90, 20), ("multi", 210, 30)])
def test_xversebench_split_runnable_vs_skipped(scenario, total, runnable):
    bs = load_xversebench(scenario)
    assert bs.total == total and len(bs.entries) == runnable and len(bs.skipped) == total - runnable
    # Runnable entries are exactly the all-human ones; their images exist.
    assert all(set(e.categories) == {"human"} for e in bs.entries)
    assert all(p.is_file() for e in bs.entries for p in e.references)
    for s in bs.skipped:
        assert s.missing and all(not p.exists() and p.parent.name in {"animal", "object"} for p in s.missing)
        assert "DreamBench++" in s.reason
    assert bs.protocol["seeds"] == [42, 43, 44, 45]
    assert str(runnable) in bs.summary()


def test_xversebench_subject_words_and_settings():
    bs = load_xversebench("multi")
    e = next(e for e in bs.entries if e.index == 20)
    assert e.id == "xversebench-multi-0020"
    assert e.subjects == ["man", "man"] and e.settings["captions"] == ["a man", "a man"]
    assert [p.name for p in e.references] == ["05_man.jpg", "11_man.jpg"]
    assert e.settings["position_delta"] == [0, -32]
    skipped = {s.id: s for s in bs.skipped}
    assert [p.name for p in skipped["xversebench-multi-0000"].missing] == ["00_motorcycle.jpg"]


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MOSAIC_BENCHMARKS", raising=False)
    assert benchmarks_root() == ROOT
    monkeypatch.setenv("MOSAIC_BENCHMARKS", str(tmp_path))
    assert benchmarks_root() == tmp_path
    assert benchmarks_root(ROOT) == ROOT  # explicit argument wins
    with pytest.raises(DataError, match="benchmark file not found"):
        load_xversebench("single")  # env root has no files
    with pytest.raises(DataError, match="not found"):
        benchmarks_root(tmp_path / "nope")
    with pytest.raises(ValueError, match="benchmark must be one of"):
        load_benchmark("nope", "single", ROOT)


def test_bad_json_names_file_and_field(tmp_path):
    (tmp_path / "xversebench").mkdir()
    (tmp_path / "xversebench" / "XVerseBench_single.json").write_text(json.dumps([{"index": 0, "prompt": "p"}]))
    with pytest.raises(DataError, match=r"XVerseBench_single.json: entry 0: missing field 'modulation'"):
        load_xversebench("single", tmp_path)


@pytest.mark.parametrize("prompt", ["", "a bear standing on iceberg"])
def test_a_prompt_that_does_not_name_its_subject_is_an_error(tmp_path, prompt):
    """The XVerse modulation and CLIP-T find each subject's phrase in the prompt: an entry without it fails."""
    entry = json.loads((ROOT / "xversebench" / "XVerseBench_single.json").read_text())[0]
    assert entry["modulation"][0]["use_words"][0][1] == "polar bear"
    (tmp_path / "xversebench").mkdir()
    (tmp_path / "xversebench" / "XVerseBench_single.json").write_text(json.dumps([{**entry, "prompt": prompt}]))
    with pytest.raises(DataError, match=rf"XVerseBench_single.json: entry 0 \(xversebench-single-0000\): prompt "
                                        rf"'{prompt}' does not contain its subject phrase\(s\) 'polar bear'"):
        load_xversebench("single", tmp_path)
    (tmp_path / "xversebench" / "XVerseBench_single.json").write_text(json.dumps([entry]))
    assert load_xversebench("single", tmp_path).total == 1  # the upstream prompt names it
