"""mosaic.inference.bounds: the ceiling is the real targets, the floor the same scenes with no subject drawn."""
import json

import numpy as np
import pytest
from PIL import Image

from mosaic.inference.bounds import write_bounds
from mosaic.cli import main
from mosaic.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("d") / "test_k2", 3, 0, "test", 2, 2)


def images(folder):
    recs = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    return recs, [np.asarray(Image.open(folder / r["image"]).convert("RGB")) for r in recs]


def test_ceiling_and_floor_are_the_targets_and_their_backgrounds(test_split, tmp_path):
    data = [json.loads(line) for line in (test_split / "manifest.jsonl").read_text().splitlines()]
    _, top = images(write_bounds(test_split, "ceiling", [0], tmp_path / "ceiling"))
    recs, bottom = images(write_bounds(test_split, "floor", [0, 1], tmp_path / "floor", method="floor"))
    assert len(bottom) == 2 * len(data) and {r["method"] for r in recs} == {"floor"}
    for d, t, f in zip(data, top, bottom[::2]):
        target = np.asarray(Image.open(test_split / d["target"]).convert("RGB"))
        assert np.array_equal(t, target)
        subject = np.zeros(target.shape[:2], bool)
        for ref in d["references"]:
            subject |= np.asarray(Image.open(test_split / ref["mask"])) > 0
        assert np.array_equal(f[~subject], target[~subject])  # the scene's own background, texture and all
        assert (np.abs(f[subject].astype(int) - target[subject]).sum(-1) > 30).mean() > 0.5  # no subject drawn
    # the manifest keeps the references and prompts, so the metrics score the bounds like a method's images
    assert [r["prompt"] for r in recs[::2]] == [d["prompt"] for d in data]
    assert all(len(r["references"]) == 2 for r in recs)


def test_the_cli_writes_a_bound_and_refuses_one_without_a_dataset(test_split, tmp_path, capsys):
    assert main(["sample", "--bound", "floor", "--dataset", str(test_split), "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "manifest.jsonl").is_file()
    assert main(["sample", "--bound", "floor", "--prompt", "a red disk", "--out", str(tmp_path / "g")]) == 2
    assert "--bound needs --dataset" in capsys.readouterr().err and not (tmp_path / "g").exists()
