"""The trainer end to end on the `debug` flavour: DeepSpeed ZeRO-2 on CPU, MLflow in a temporary
sqlite store, exact resume, clear errors, and the NaN guard."""
import math
import shutil

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from mosaic.cli import main
from mosaic.config import ConfigError, flatten, load_config
from mosaic.data.records import DataError
from mosaic.data.synthetic import generate_dataset
from mosaic.model import LoraSpec, build_model
from mosaic.flow import sample_timesteps, step_generator
from mosaic.infra.runfolder import CHECKPOINTS
from mosaic.train import TrainingError, apply_dropout, latest_checkpoint, train


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    return {"train": generate_dataset(root / "train", 8, 0, "train", 1, 3),
            "val": generate_dataset(root / "val", 2, 0, "val", 2, 3)}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An initialised sqlite MLflow store; tests copy it (creating one runs MLflow's migrations, seconds each)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def store(tmp_path, empty_store):
    for sub in ("", "a", "b", "base", "lora"):
        (tmp_path / sub).mkdir(exist_ok=True)
        shutil.copy(empty_store, tmp_path / sub / "mlflow.db")


def overrides(tmp_path, data, *extra):
    return [f"data.train={data['train']}", "data.val=null", "model.flavour=debug", "variant=test",
            f"train.output_dir={tmp_path / 'run'}", "train.steps=2", "train.batch_size=2", "train.checkpoint_every=0",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def only_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_two_step_zero2_logs_to_mlflow_and_exports_a_loadable_lora(tmp_path, data, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"variant": "scal", "train": {"zero_stage": 2}}))
    argv = ["train", "--config", str(path)]
    for o in overrides(tmp_path, data, f"data.val={data['val']}", "eval.timesteps=[0.5]", "variant=scal"):
        argv += ["--set", o]
    assert main(argv) == 0
    out = tmp_path / "run"

    client, run = only_run(tmp_path)
    cfg = load_config(path, argv[4::2])
    assert run.data.params == {k: str(v) for k, v in flatten(cfg).items()}
    assert run.info.status == "FINISHED"
    for tag in ("variant", "profile", "git_sha", "seed", "version.torch", "version.diffusers", "version.peft",
                "version.deepspeed", "version.mlflow"):
        assert run.data.tags.get(tag), tag
    assert run.data.tags["variant"] == "scal"
    for key in ("loss/diff", "loss/scal", "loss/mdl", "train/lr", "train/step_time"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in hist] == [1, 2] and all(math.isfinite(m.value) for m in hist), key
    assert 0 <= run.data.metrics["mech/alignment_acc"] <= 1 and 0 <= run.data.metrics["mech/leakage"] <= 1
    assert run.data.metrics["mech/points"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "lora.safetensors", "attention.png", "mechanism.json"} <= artifacts

    # DeepSpeed's ZeRO checkpoint (optimizer state partition files) and the final step
    assert latest_checkpoint(out) == "step_00000002"
    assert list((out / CHECKPOINTS / "step_00000002").glob("zero_pp_rank_0_*optim_states.pt"))
    # the exported LoRA loads into a fresh model; training moved it away from lora_B = 0
    model = build_model("debug", lora=LoraSpec(rank=cfg.model.lora_rank))
    model.load_lora(out / "lora.safetensors")
    saved = load_file(out / "lora.safetensors")
    loaded = model.lora_state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)


def test_resume_is_exact(tmp_path, data):
    """20 steps straight == 7 steps, stop (a pre-emption), resume, 13 steps: identical LoRA and losses
    (with EMA, LR warm-up, all three dropouts, and a curriculum stage boundary after the stop)."""
    extra = ["train.steps=20", "train.checkpoint_every=5", "train.lr=1e-3", "train.warmup_steps=3",
             "train.ema_decay=0.9", "train.drop_image=0.2", "train.drop_text=0.2", "train.drop_both=0.1",
             f"data.curriculum=[{{train: {data['train']}, steps: 9, max_k: 1}}]"]
    straight = train(load_config(None, overrides(tmp_path / "a", data, *extra)))
    first = train(load_config(None, overrides(tmp_path / "b", data, *extra)), stop_after=7)
    assert (first.status, first.step, first.output) == ("interrupted", 7, None)
    assert latest_checkpoint(tmp_path / "b" / "run") == "step_00000007"
    resumed = train(load_config(None, overrides(tmp_path / "b", data, *extra)))
    assert resumed.status == "finished" and resumed.run_id == first.run_id

    # keep_checkpoints (2): older checkpoint folders are pruned
    assert sorted(p.name for p in (tmp_path / "a" / "run" / CHECKPOINTS).glob("step_*")) == [
        "step_00000015", "step_00000020"]
    a, b = load_file(straight.output), load_file(resumed.output)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    client_a, run_a = only_run(tmp_path / "a")
    client_b, run_b = only_run(tmp_path / "b")  # one MLflow run, reopened
    hist_a = client_a.get_metric_history(run_a.info.run_id, "loss/total")
    hist_b = client_b.get_metric_history(run_b.info.run_id, "loss/total")
    assert [m.step for m in hist_b] == list(range(1, 21))
    assert [m.value for m in hist_a] == [m.value for m in hist_b]
    assert run_b.data.tags.get("resumed_at_step_7") == "true"

    # the same folder with another config is refused (it holds checkpoints of a different run)
    with pytest.raises(ConfigError, match=r"different config \(train\.lr\)"):
        train(load_config(None, overrides(tmp_path / "b", data, *extra, "train.lr=2e-3")))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data):
    cfg = load_config(None, overrides(tmp_path, data, "train.steps=5", "train.checkpoint_every=2",
                                      "train.nan_at_step=3"))
    with pytest.raises(TrainingError, match=r"step 3: non-finite loss.*last good checkpoint: step_00000002"):
        train(cfg)
    out = tmp_path / "run"
    assert latest_checkpoint(out) == "step_00000002"
    assert sorted(p.name for p in (out / CHECKPOINTS).glob("step_*")) == ["step_00000002"]
    assert not (out / "lora.safetensors").exists()
    state = torch.load(out / CHECKPOINTS / "step_00000002" / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["module"].values())
    client, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/diff")] == [1, 2]


def test_clear_errors_before_any_output(tmp_path, data):
    out = tmp_path / "run"
    missing = tmp_path / "no-such-weights"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        train(load_config(None, overrides(tmp_path, data, f"model.weights={missing}")))
    limit = r"manifest\.jsonl: sample train-\d+ field k = 3 exceeds the model's limit of 2"
    with pytest.raises(DataError, match=limit):
        train(load_config(None, overrides(tmp_path, data, "model.max_refs=2")))
    assert not out.exists()


def test_cli_reports_a_bad_config_value(tmp_path, data, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": str(data["train"])}, "loss": {"beta": -0.5}}))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "loss.beta" in err


def test_base_mode_saves_a_transformer_the_lora_mode_loads(tmp_path, data):
    base = train(load_config(None, overrides(tmp_path / "base", data, "train.mode=base", "train.lr=1e-3")))
    assert base.output.name == "transformer" and (base.output / "config.json").exists()
    _, run = only_run(tmp_path / "base")
    assert "loss/diff" in run.data.metrics and "loss/scal" not in run.data.metrics
    trained = build_model("debug", weights=base.output, lora=None).state_dict()
    init = build_model("debug", lora=None).state_dict()  # the base run's seeded random init
    assert any(not torch.equal(trained[k], init[k]) for k in init)
    lora = train(load_config(None, overrides(tmp_path / "lora", data, f"model.weights={base.output}")))
    assert lora.output.name == "lora.safetensors" and lora.output.exists()


def test_gradient_checkpointing_reaches_the_model_and_changes_nothing(tmp_path, data, monkeypatch):
    import mosaic.model.transformer as transformer

    calls, real = [], transformer.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformer, "checkpoint", counting)
    plain = train(load_config(None, overrides(tmp_path / "a", data)))
    assert not calls
    ckpt = train(load_config(None, overrides(tmp_path / "b", data, "model.gradient_checkpointing=true")))
    assert calls
    a, b = load_file(plain.output), load_file(ckpt.output)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_dropout_modes():
    b, k, p = 4000, 2, 3
    batch = {"prompt": ["a red star"] * b, "ref_mask": torch.ones(b, k, dtype=torch.bool),
             "point_mask": torch.ones(b, k, p, dtype=torch.bool)}
    cfg = load_config(None, ["data.train=x", "train.drop_image=0.2", "train.drop_text=0.3", "train.drop_both=0.1",
                             "train.drop_image_mode=mask"])
    out, prompts = apply_dropout(batch, cfg, step_generator(0, 0, 0))
    no_refs = ~out["ref_mask"].any(1)
    no_text = torch.tensor([q == "" for q in prompts])
    assert torch.equal(out["ref_mask"].all(1), ~no_refs) and torch.equal(out["point_mask"].any(-1).any(-1), ~no_refs)
    for got, want in (((no_refs & no_text).float().mean(), 0.1), ((no_refs & ~no_text).float().mean(), 0.2),
                      ((~no_refs & no_text).float().mean(), 0.3)):
        assert abs(float(got) - want) < 0.03
    assert batch["ref_mask"].all()  # the input batch is left untouched


def test_timesteps_follow_diffusers_flux_shift():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = load_config(None, ["data.train=x"])
    t = sample_timesteps(1000, 4096, cfg, step_generator(1, 0, 0))
    u = torch.sigmoid(torch.normal(0.0, 1.0, (1000,), generator=step_generator(1, 0, 0)))
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    assert torch.allclose(t, sched.time_shift(calculate_shift(4096), 1.0, u), atol=1e-6)
    assert 0 < t.min() and t.max() < 1 and t.mean() > u.mean()  # long sequences shift towards noise
    unshifted = sample_timesteps(1000, 4096, load_config(None, ["data.train=x", "train.resolution_shift=false"]),
                                 step_generator(1, 0, 0))
    assert torch.equal(unshifted, u)


class StandInExtension:
    """A stand-in variant extension for the trainer's extension mechanics: one trainable scalar
    pulled towards 1 by its own loss, an attention hook counting blocks, and an exported file."""

    made: list = []  # the instances the trainer built

    def __init__(self, cfg):
        self.target = cfg.model.extension_args["target"]
        self.ks, self.blocks = [], []
        StandInExtension.made.append(self)

    def setup(self, model):
        model.stand_in = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(model.stand_in.weight)

    def forward_kwargs(self, model, batch, prompts, enc):
        return {}

    def attn_hook(self, batch):
        return lambda i, q, k, layout: self.blocks.append(i)

    def losses(self, model, batch, step):
        self.ks.append(int(batch["ref_mask"].sum(1).max()))
        return {"stand_in": (model.stand_in.weight - self.target).pow(2).sum()}

    def export(self, model, out_dir):
        path = out_dir / "stand_in.pt"
        torch.save(model.stand_in.state_dict(), path)
        return [path]


def test_extension_and_curriculum(tmp_path, data):
    StandInExtension.made.clear()
    cfg = load_config(None, overrides(tmp_path, data, "train.steps=6", "train.lr=0.1", "train.batch_size=1",
                                      "train.ema_decay=0",  # the exported extension is the trained one
                                      f"model.extension={__name__}:StandInExtension",
                                      "model.extension_args={target: 1.0}",
                                      f"data.curriculum=[{{train: {data['train']}, steps: 3, max_k: 1}}]"))
    result = train(cfg)
    ext, = StandInExtension.made
    assert ext.ks[:3] == [1, 1, 1] and max(ext.ks[3:]) > 1  # the stage's k <= 1 samples, then data.train
    n_double = build_model("debug", lora=None).num_double_blocks
    assert ext.blocks[:2 * n_double] == list(range(n_double)) * 2  # alongside the loss probe, once per block
    weight = torch.load(tmp_path / "run" / "stand_in.pt")["weight"]
    assert 0.3 < float(weight) <= 1.0  # trained by DeepSpeed's optimizer from 0 towards 1
    client, run = only_run(tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/stand_in")] == list(range(1, 7))
    assert {"stand_in.pt", "lora.safetensors"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.params["model.extension_args.target"] == "1.0" and result.status == "finished"

    with pytest.raises(ConfigError, match="model.extension: cannot import 'no_such_module:X'"):
        train(load_config(None, overrides(tmp_path / "x", data, "model.extension=no_such_module:X")))


def test_mdl_on_single_subject_data_is_refused_up_front_unless_accepted(tmp_path):
    single = generate_dataset(tmp_path / "single", 3, 0, "train", 1, 1)
    cfg = load_config(None, overrides(tmp_path, {"train": single}, "loss.alpha=0.4", "loss.beta=0.6"))
    with pytest.raises(ConfigError, match=r"single: loss.beta = 0.6 but no sample has two or more references "
                                          r"with correspondence points \(samples per k: \{1: 3\}\)"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run folder was written
    accepted = load_config(None, overrides(tmp_path, {"train": single}, "loss.beta=0.6", "train.steps=1",
                                           "train.batch_size=1", "train.allow_inactive_mdl=true"))
    result = train(accepted)
    assert result.status == "finished"
    client, run = only_run(tmp_path)
    assert run.data.metrics["loss/mdl"] == 0.0  # what the guard warns of: MDL contributes nothing


def test_the_trainer_steps_the_model_it_built_and_evaluates_the_trained_weights(tmp_path, data):
    """Trainer: build, `train_step` by `train_step`, finish. The engine wraps the built model itself (so the
    finish's mechanism evaluation, which takes the run's Components, sees the trained weights), and a step
    changes the LoRA."""
    from mosaic.train.loop import Trainer

    cfg = load_config(None, overrides(tmp_path, data, f"data.val={data['val']}", "eval.timesteps=[0.5]",
                                      "tracking.enabled=false", "train.lr=0.05"))
    trainer = Trainer(cfg)
    try:
        assert trainer.engine.module is trainer.parts.model and trainer.step == 0
        before = {k: v.clone() for k, v in trainer.parts.model.lora_state_dict().items()}
        assert trainer.loop() == "finished" and trainer.step == 2
        after = trainer.parts.model.lora_state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        result = trainer.finish("finished")
    finally:
        trainer.bar.close()
    assert result.status == "finished" and result.output == tmp_path / "run" / "lora.safetensors"
    assert result.mechanism["mech/samples"] == 2 and (tmp_path / "run" / "mechanism.json").is_file()
