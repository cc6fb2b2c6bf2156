"""mosaic.infra.runfolder: every writer's output appears whole or not at all."""
import os

import pytest

from mosaic.infra.runfolder import atomic_dir, atomic_file, atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    atomic_write(p, "one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two" and os.listdir(tmp_path) == ["a.json"]


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "fig.png"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(p) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["fig.png"]


def test_atomic_dir_appears_only_when_complete(tmp_path):
    out = tmp_path / "samples"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
        assert not out.exists()
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    with pytest.raises(FileExistsError, match="samples: output folder exists"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(os.listdir(out)) == ["y"] and os.listdir(tmp_path) == ["samples"]
