"""The training config: YAML + overrides resolve to one validated tree; bad values name file and key."""
import pytest
import yaml

from mosaic.config import Config, ConfigError, dump_yaml, flatten, from_dict, load_config, parse_overrides
from mosaic.losses import LossConfig


def write(tmp_path, values) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_yaml_and_overrides_resolve(tmp_path):
    path = write(tmp_path, {"variant": "scal", "data": {"train": "d"}, "train": {"steps": 7, "lr": "1e-4"},
                            "loss": {"preset": "upstream-code", "alpha": 0.2}})
    cfg = load_config(path, ["train.steps=9", "model.lora_targets=[x_embedder]", "loss.blocks=[0, 1]"])
    assert cfg.variant == "scal" and cfg.train.steps == 9 and cfg.train.lr == 1e-4
    assert cfg.model.lora_targets == ["x_embedder"]
    # the preset is applied first, explicit keys on top
    assert cfg.loss == LossConfig.preset("upstream-code", alpha=0.2, blocks=(0, 1))


def test_flatten_has_every_value_and_roundtrips():
    cfg = from_dict({"data": {"train": "d"}, "loss": {"beta_warmup": [10, 20]}})
    flat = flatten(cfg)
    assert flat["train.zero_stage"] == 2 and flat["data.train"] == "d" and flat["loss.beta_warmup"] == "10-20"
    assert flat["eval.timesteps"] == "[0.25, 0.5, 0.75]"
    assert all(not isinstance(v, (dict, list, tuple)) for v in flat.values())
    # one param per leaf of the tree; a free mapping contributes one per entry
    n_fields = sum(len(vars(getattr(cfg, s))) for s in ("model", "data", "loss", "train", "tracking", "eval")) + 2
    assert len(flat) == n_fields - 1 and "model.extension_args" not in flat
    with_args = flatten(from_dict({"data": {"train": "d"}, "model": {"extension_args": {"w": 0.5, "n": 2}}}))
    assert len(with_args) == n_fields + 1 and with_args["model.extension_args.w"] == 0.5
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("values, key, words", [
    ({"train": {"stepz": 3}}, "train.stepz", "unknown key"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"train": {"steps": "ten"}}, "train.steps", "expected an integer"),
    ({"train": {"steps": 2.5}}, "train.steps", "expected an integer"),
    ({"train": {"gradient": 1}}, "train.gradient", "unknown key"),
    ({"model": {"gradient_checkpointing": "yes"}}, "model.gradient_checkpointing", "expected bool"),
    ({"train": {"lr": "fast"}}, "train.lr", "expected a number"),
    ({"train": {"mode": "full"}}, "train.mode", "not one of"),
    ({"train": {"zero_stage": 4}}, "train.zero_stage", "must be 0, 1, 2 or 3"),
    ({"train": {"drop_image": 1.5}}, "train.drop_image", "in [0, 1]"),
    ({"train": {"drop_image": 0.6, "drop_text": 0.6}}, "train.drop_*", "sum to more than 1"),
    ({"loss": {"alpha": -0.1}}, "loss.alpha", ">= 0"),
    ({"loss": {"beta": -1}}, "loss.beta", ">= 0"),
    ({"loss": {"divergence": "kl"}}, "loss.divergence", "not one of"),
    ({"loss": {"preset": "nope"}}, "loss.preset", "not one of"),
    ({"data": "somewhere"}, "data", "expected a mapping"),
    ({"data": {"train": ""}}, "data.train", "must be a dataset folder"),
    ({"data": {"train": "d", "curriculum": [{"train": "e"}]}}, "data.curriculum[0].steps", "required"),
    ({"data": {"train": "d", "curriculum": [{"train": "e", "steps": 0}]}}, "data.curriculum[0]", "must be >= 1"),
    ({"data": {"train": "d", "curriculum": [{"train": "e", "steps": 200}]}}, "data.curriculum",
     "more than train.steps"),
    ({"model": {"extension_args": [1]}}, "model.extension_args", "expected a mapping"),
])
def test_bad_values_name_file_and_key(tmp_path, values, key, words):
    values = {"data": {"train": "d"}, **values} if "data" not in values else values
    path = write(tmp_path, values)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(path) and f"{key}:" in msg and words in msg, msg


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.steps"])


def test_defaults_are_the_paper_loss():
    cfg = Config()
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.divergence) == (0.4, 0.6, "skl")
    assert cfg.train.zero_stage == 2 and cfg.train.mode == "lora"
