"""mosaic.artefacts: a shipped artefact carries its provenance and is refused when its bytes disagree."""
import json

import pytest

from mosaic.artefacts import PROVENANCE_FILE, ArtefactError, verify, write_provenance


def artefact(tmp_path):
    folder = tmp_path / "base"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "model.safetensors").write_bytes(b"weights")
    (folder / "transformer" / "config.json").write_text("{}")
    write_provenance(folder, "mosaic train --config x.yaml", {"train.steps": 3}, steps=3, seed=0)
    return folder


def test_provenance_records_the_command_config_and_digests(tmp_path):
    record = verify(artefact(tmp_path))
    assert record["command"] == "mosaic train --config x.yaml" and record["steps"] == 3 and record["seed"] == 0
    assert set(record["sha256"]) == {"transformer/model.safetensors", "transformer/config.json"}
    assert {"git_sha", "versions"} <= set(record) and "torch" in record["versions"]


def test_a_changed_missing_or_unlisted_file_is_refused_naming_both_digests(tmp_path):
    folder = artefact(tmp_path)
    want = json.loads((folder / PROVENANCE_FILE).read_text())["sha256"]["transformer/model.safetensors"]
    (folder / "transformer" / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ArtefactError, match=rf"model.safetensors: sha256 [0-9a-f]{{64}} disagrees with .*"
                                            rf"provenance.json field sha256\['transformer/model.safetensors'\] = {want}"):
        verify(folder)
    (folder / "transformer" / "model.safetensors").unlink()
    with pytest.raises(ArtefactError, match="listed in .* but missing"):
        verify(folder)
    folder = artefact(tmp_path / "again")
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtefactError, match="files not in .*: extra.bin"):
        verify(folder)
    (folder / PROVENANCE_FILE).unlink()
    with pytest.raises(ArtefactError, match="no provenance file"):
        verify(folder)
