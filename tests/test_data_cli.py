"""`mosaic data` subcommands, run in-process (mosaic.data.cli)."""
import sys
import types
from dataclasses import dataclass

import pytest
from PIL import Image

from mosaic.cli import main
from mosaic.data.records import read_metadata


@dataclass
class Problem:
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


def test_help_lists_actions(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(a in out for a in ("generate", "preview", "validate"))
    with pytest.raises(SystemExit) as e:
        main(["data", "generate", "--help"])
    assert e.value.code == 0 and "--k-max" in capsys.readouterr().out


def test_generate_and_preview(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert main(["data", "generate", "--out", str(ds), "--n", "3", "--seed", "5", "--split", "test",
                 "--k-min", "2", "--k-max", "3", "--target-size", "64", "--ref-size", "32"]) == 0
    meta = read_metadata(ds)
    assert (meta["num_samples"], meta["seed"], meta["split"], meta["k_range"]) == (3, 5, "test", [2, 3])
    assert (meta["config"]["target_size"], meta["config"]["ref_size"]) == (64, 32)
    assert meta["config"]["distinct_colours"] is True and meta["generator_version"] == 3
    assert "wrote 3 test samples" in capsys.readouterr().out
    shared = tmp_path / "shared"
    assert main(["data", "generate", "--out", str(shared), "--n", "1", "--shared-colours"]) == 0
    assert read_metadata(shared)["config"]["distinct_colours"] is False
    places = tmp_path / "places"
    assert main(["data", "generate", "--out", str(places), "--n", "2", "--world", "places", "--target-size", "72",
                 "--ref-size", "24", "--k-max", "6", "--k-min", "6"]) == 0
    cfg = read_metadata(places)["config"]
    assert (cfg["layout"], cfg["phrase"], cfg["all_distinct"], cfg["grid"]) == ("places", "kind", True, [3, 2])

    # An existing dataset is not replaced without --overwrite: clear error, non-zero exit.
    assert main(["data", "generate", "--out", str(ds), "--n", "1"]) != 0
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "generate", "--out", str(ds), "--n", "1", "--overwrite"]) == 0
    assert read_metadata(ds)["num_samples"] == 1

    png = tmp_path / "p.png"
    assert main(["data", "preview", str(ds), "--out", str(png), "--n", "1", "--tokens", "4", "2"]) == 0
    with Image.open(png) as im:
        im.verify()


def test_bad_input_gives_clear_error(tmp_path, capsys):
    assert main(["data", "generate", "--out", str(tmp_path / "x"), "--k-min", "3", "--k-max", "2"]) != 0
    assert "k range" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["data", "preview", str(tmp_path / "missing"), "--out", str(tmp_path / "p.png")]) != 0
    assert "manifest" in capsys.readouterr().err and not (tmp_path / "p.png").exists()


def test_validate_reports_problems_and_exit_code(tmp_path, capsys, monkeypatch):
    """The handler's contract with validate_dataset, with a stand-in validator."""
    assert main(["data", "generate", "--out", str(tmp_path / "ds"), "--n", "2"]) == 0
    capsys.readouterr()
    problem = Problem("manifest.jsonl", "prompt", "empty")
    fake = types.ModuleType("mosaic.data.validate")
    fake.validate_dataset = lambda root: [problem]
    monkeypatch.setitem(sys.modules, "mosaic.data.validate", fake)
    assert main(["data", "validate", str(tmp_path / "ds")]) == 1
    assert "manifest.jsonl: prompt: empty" in capsys.readouterr().out
    fake.validate_dataset = lambda root: []
    assert main(["data", "validate", str(tmp_path / "ds")]) == 0
    assert "OK: 2 samples" in capsys.readouterr().out


def test_validate_with_real_validator(tmp_path, capsys):
    pytest.importorskip("mosaic.data.validate")
    assert main(["data", "generate", "--out", str(tmp_path / "ds"), "--n", "2"]) == 0
    report = tmp_path / "ds.validated.txt"
    assert main(["data", "validate", str(tmp_path / "ds"), "--report", str(report)]) == 0
    assert "OK: 2 samples" in capsys.readouterr().out and report.read_text() == "OK: 2 samples\n"
    report.unlink()
    (tmp_path / "ds" / "samples" / "train-000000" / "target.png").write_bytes(b"not a png")
    assert main(["data", "validate", str(tmp_path / "ds"), "--report", str(report)]) == 1
    assert "target.png" in capsys.readouterr().out
    assert not report.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no marker, no temporary


def test_collage_and_benchmark_commands(tmp_path, capsys):
    from mosaic.cli import main
    from mosaic.data.records import read_manifest

    assert main(["data", "generate", "--out", str(tmp_path / "src"), "--n", "12", "--k-min", "1", "--k-max", "1"]) == 0
    assert main(["data", "collage", str(tmp_path / "src"), "--out", str(tmp_path / "col"), "--n", "3", "--k", "2",
                 "--canvas", "96"]) == 0
    recs = read_manifest(tmp_path / "col")
    assert len(recs) == 3 and all(r["k"] == 2 for r in recs)
    assert main(["data", "validate", str(tmp_path / "col")]) == 0
    capsys.readouterr()
    assert main(["data", "benchmark", "xversebench", "single"]) == 0
    out = capsys.readouterr().out
    assert "20 runnable, 70 skipped of 90" in out and out.count("skipped xversebench-single-") == 70
