"""mosaic.infra.artefacts: a shipped artefact carries its provenance and is refused when its bytes disagree."""
import json

import pytest

from mosaic.infra.artefacts import PROVENANCE_FILE, ArtefactError, verify, write_provenance


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


def test_ship_copies_the_parts_with_their_provenance_and_replaces_the_folder_whole(tmp_path):
    from mosaic.infra.artefacts import ship

    src = tmp_path / "src"
    (src / "evaluators" / "clip").mkdir(parents=True)
    (src / "evaluators" / "clip" / "w.bin").write_bytes(b"clip")
    (src / "evaluators" / ".snakemake_timestamp").write_text("")  # Snakemake's marker is not shipped
    (src / "base").mkdir()
    (src / "base" / "config.json").write_text("{}")
    out = tmp_path / "artefacts" / "tiny"
    ship({"base": src / "base", "evaluators": src / "evaluators"}, out, "snakemake ship", {"a": 1}, steps={"base": 3})
    record = verify(out)
    assert set(record["sha256"]) == {"base/config.json", "evaluators/clip/w.bin"}
    assert record["steps"] == {"base": 3} and record["config"] == {"a": 1}
    with pytest.raises(ArtefactError, match="'base' part to ship is not a folder"):
        ship({"base": src / "missing"}, out, "snakemake ship", {})
    assert verify(out) == record  # a failed ship left the previous artefact as it was


def test_check_artefact_finds_the_folder_a_path_lies_in(tmp_path):
    from mosaic.infra.artefacts import check_artefact, provenance_folder

    folder = artefact(tmp_path)
    assert provenance_folder(folder / "transformer") == folder.resolve()
    assert check_artefact(folder / "transformer")["steps"] == 3
    assert check_artefact(tmp_path / "elsewhere") is None and provenance_folder(tmp_path) is None
    (folder / "transformer" / "config.json").write_text('{"x": 1}')
    with pytest.raises(ArtefactError, match=r"transformer/config.json: sha256 [0-9a-f]{64} disagrees"):
        check_artefact(folder / "transformer")


def test_the_model_loader_refuses_a_shipped_base_whose_bytes_changed(tmp_path):
    """A shipped base is verified where every training and sampler builds its model (mosaic.components)."""
    import torch

    from mosaic.infra.artefacts import ship
    from mosaic.components import build_components
    from mosaic.config import load_config
    from mosaic.model import build_model

    build_model("debug", seed=0, lora=None).save_base(tmp_path / "trained")
    out = tmp_path / "artefacts"
    ship({"base": tmp_path / "trained"}, out, "snakemake ship", {})
    cfg = load_config(None, ["model.flavour=debug", f"model.weights={out / 'base'}", "train.mode=base",
                             f"train.output_dir={tmp_path / 'run'}"])
    build_components(cfg, torch.device("cpu"))  # intact: loads
    weights = next((out / "base").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=rf"{weights.name}: sha256 [0-9a-f]{{64}} disagrees with {out}"):
        build_components(cfg, torch.device("cpu"))


def test_a_short_base_retrain_ships_the_same_bytes(tmp_path):
    """The shipped base is reproducible: the same command and config, retrained (a few steps here; the full
    retrain is `snakemake --cores all ship --config retrain=True`), give files with the same sha256."""
    from mosaic.infra.artefacts import ship
    from mosaic.config import load_config
    from mosaic.data.synthetic import generate_dataset
    from mosaic.infra.runfolder import BASE_DIR
    from mosaic.train import train

    data = generate_dataset(tmp_path / "data", 4, 0, "train", 1, 2)
    digests = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        train(load_config(None, [f"data.train={data}", "data.val=null", "model.flavour=debug", "train.mode=base",
                                 f"train.output_dir={run}", "train.steps=3", "train.batch_size=2",
                                 "train.ema_decay=0.9", "train.drop_text=0.5", "train.checkpoint_every=0",
                                 "tracking.enabled=false"]))
        digests.append(verify(ship({"base": run / BASE_DIR}, tmp_path / f"ship{i}", "test", {}))["sha256"])
    assert digests[0] == digests[1] and any(name.endswith(".safetensors") for name in digests[0])


def test_the_metric_loaders_refuse_shipped_evaluators_whose_bytes_changed(tmp_path):
    from metrics.clip import ClipModel
    from metrics.config import load_config as load_metrics
    from metrics.dino import DinoModel
    from metrics.tiny_evaluators import EvaluatorSettings, train_evaluators
    from mosaic.infra.artefacts import ship

    from metrics.tiny_evaluators.shape_training import load_shape_classifier
    from mosaic.data.synthetic import world_config

    train_evaluators(tmp_path / "trained", EvaluatorSettings(clip_steps=2, dino_steps=1, shape_steps=2, n_train=12),
                     cfg=world_config("places", target_size=72, ref_size=24), log=lambda *a: None)
    out = tmp_path / "artefacts"
    ship({"evaluators": tmp_path / "trained"}, out, "snakemake ship", {})
    cfg = load_metrics(out / "evaluators" / "metrics_config.json", None)  # relative paths: the shipped copy
    assert cfg["dino"]["model"] == f"local-dir:{(out / 'evaluators' / 'dino').resolve()}"
    ClipModel("clip_i", cfg["clip_i"]["model"])
    DinoModel("dino", cfg["dino"])
    shape = cfg["subjects"]["model"].removeprefix("local-dir:")
    assert shape == str((out / "evaluators" / "shape").resolve())
    load_shape_classifier(shape)
    for name in ("clip", "dino", "shape"):
        weights = next((out / "evaluators" / name).glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ArtefactError, match="sha256 [0-9a-f]{64} disagrees"):
        ClipModel("clip_i", cfg["clip_i"]["model"])
    with pytest.raises(ArtefactError, match="sha256 [0-9a-f]{64} disagrees"):
        DinoModel("dino", cfg["dino"])
    with pytest.raises(ArtefactError, match="sha256 [0-9a-f]{64} disagrees"):
        load_shape_classifier(shape)
