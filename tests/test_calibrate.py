"""The loss weights' calibration rule (mosaic.train.calibrate, `loss.calibrate: grad-norm`) on the debug flavour."""
import dataclasses
import json
import shutil

import pytest
import torch
from mlflow import MlflowClient

from mosaic.config import load_config
from mosaic.data.synthetic import generate_dataset
from mosaic.losses import LossConfig
from mosaic.train import train
from mosaic.train.calibrate import CALIBRATION_FILE, gradient_norms
from mosaic.train.data import batch_stream, data_stages
from mosaic.train.distributed import setup_distributed
from mosaic.components import build_components


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib-data")
    return generate_dataset(root / "train", 6, 0, "train", 2, 3)


def config(tmp_path, data, *extra):
    return load_config(None, [f"data.train={data}", "data.val=null", "model.flavour=debug", "variant=calib",
                              f"train.output_dir={tmp_path / 'run'}", "train.steps=2", "train.batch_size=2",
                              "train.checkpoint_every=1", "loss.calibrate=grad-norm", "loss.calibrate_batches=2",
                              "loss.alpha=0.4", "loss.beta=0.6", "eval.enabled=false",
                              f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra])


def test_weights_are_the_ratios_times_the_measured_gradient_norms(tmp_path, data):
    cfg = config(tmp_path, data)
    result = train(cfg)
    rec = json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text())
    assert rec["rule"] == "grad-norm" and rec["batches"] == 2
    assert min(rec["g_diff"], rec["g_scal"], rec["g_mdl"]) > 0
    assert rec["alpha"] == pytest.approx(0.4 * rec["g_diff"] / rec["g_scal"])
    assert rec["beta"] == pytest.approx(0.6 * rec["g_diff"] / rec["g_mdl"])
    # the weights used are in the run's params
    params = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.run_id).data.params
    assert float(params["calibration/alpha"]) == pytest.approx(rec["alpha"])
    assert params["loss.calibrate"] == "grad-norm"


def test_measured_norms_equal_an_independent_autograd(tmp_path, data):
    """gradient_norms = the norm of torch.autograd.grad of each term alone, recomputed here for one batch."""
    from mosaic.flow import encode_batch, step_generator
    from mosaic.train.objective import forward_losses

    cfg = config(tmp_path, data, "loss.calibrate_batches=1")
    device, _, _ = setup_distributed()
    parts = build_components(cfg, device)
    model = parts.model
    stages = data_stages(cfg, parts.codec, model.max_refs, 0, 1)
    m = gradient_norms(parts, cfg, batch_stream(stages, 0, 1))

    class Engine(torch.nn.Module):  # what forward_losses calls: engine(...) and engine.module
        def __init__(self):
            super().__init__()
            self.module = model

        def forward(self, *a, **k):
            return model(*a, **k)

    engine = Engine()
    batch = next(batch_stream(stages, 0, 1))
    prompts = list(batch["prompt"])
    enc = encode_batch(parts, batch, prompts, with_refs=True)
    unit = dataclasses.replace(cfg, loss=LossConfig(alpha=1.0, beta=1.0))
    losses = forward_losses(engine, enc, batch, prompts, unit, 0, step_generator(cfg.train.seed, 0, 0))
    params = [p for p in engine.module.parameters() if p.requires_grad]
    for name in ("diff", "scal", "mdl"):
        model.zero_grad(set_to_none=True)
        losses[name].backward(retain_graph=True)
        g = [p.grad for p in params]
        want = torch.sqrt(sum((x.double() ** 2).sum() for x in g if x is not None)).item()
        assert m[f"g_{name}"] == pytest.approx(want, rel=1e-5), name


def test_resume_reads_the_weights_back_and_a_lost_record_is_an_error(tmp_path, data):
    cfg = config(tmp_path, data)
    train(cfg, stop_after=1)
    path = tmp_path / "run" / CALIBRATION_FILE
    first = json.loads(path.read_text())
    path.write_text(json.dumps({**first, "alpha": 123.0}))  # resume must read, not re-measure
    train(cfg)
    assert json.loads(path.read_text())["alpha"] == 123.0
    shutil.rmtree(tmp_path / "run")
    train(config(tmp_path, data), stop_after=1)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no record of its calibrated weights"):
        train(config(tmp_path, data))


def test_bad_settings_are_refused(tmp_path, data):
    with pytest.raises(Exception, match="loss.calibrate"):
        config(tmp_path, data, "loss.calibrate=loss-ratio")
    with pytest.raises(Exception, match="calibrate_batches"):
        config(tmp_path, data, "loss.calibrate_batches=0")


def test_calibration_reads_only_its_batches_inside_a_longer_curriculum_stage(tmp_path, data):
    """calibrate_batches = 2 with a 3-step first stage: 2 batches measured (the stream once ran the whole stage)."""
    cfg = config(tmp_path, data, "train.steps=4", f"data.curriculum=[{{train: {data}, steps: 3}}]")
    train(cfg)
    assert json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text())["batches"] == 2


def test_batch_stream_stops_at_total_inside_a_stage():
    class Named:
        def __init__(self, name):
            self.name = name

        def from_step(self, step):
            while True:
                yield (self.name, step)
                step += 1

    stages = [(0, Named("a")), (3, Named("b"))]
    assert list(batch_stream(stages, 0, 2)) == [("a", 0), ("a", 1)]
    assert list(batch_stream(stages, 2, 5)) == [("a", 2), ("b", 0), ("b", 1)]
