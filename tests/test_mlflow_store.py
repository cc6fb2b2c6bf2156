"""The MLflow store as a researcher reads it, on tiny self-made sqlite stores: experiments of the model-training
kind (the tag MLflow 3 reads), copied and evaluation runs over their real start and end times, evaluation runs
nested under their training run (bounds stay top-level), and metric names grouped by prefix."""
import glob
import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from mosaic.infra.tracking import store as ms  # noqa: E402
from mosaic.infra.tracking.run import KIND_TAG, MODEL_TRAINING, RunLogger  # noqa: E402
from mosaic.train.run_logger import log_step  # noqa: E402
from workflow.scripts import mlflow_log  # noqa: E402

HOUR = 3_600_000  # ms
T0 = 1_780_000_000_000  # a start time in ms since the epoch (2026)


def test_the_kind_is_the_one_the_installed_ui_reads():
    """The tag and value are spelled as the installed MLflow UI spells them (its JS bundle)."""
    import mlflow

    bundle = glob.glob(str(Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js" / "*.js"))
    if not bundle:
        pytest.skip("this MLflow has no UI bundle (mlflow-skinny?)")
    text = "".join(Path(p).read_text(errors="replace") for p in bundle)
    assert f'"{KIND_TAG}"' in text
    assert f'CUSTOM_MODEL_DEVELOPMENT="{MODEL_TRAINING}"' in text


def test_ensure_store_creates_and_marks_model_training_experiments(tmp_path):
    root = tmp_path / "mlflow"
    uri = ms.ensure_store(root, ["shared", "ablation"])
    client = MlflowClient(uri)
    for name in ("shared", "ablation"):
        assert client.get_experiment_by_name(name).tags[KIND_TAG] == MODEL_TRAINING
    # a store made before experiments had a kind: marked; a kind chosen by hand is kept; again changes nothing
    old = client.create_experiment("old")
    mine = client.create_experiment("mine", tags={KIND_TAG: "genai_development"})
    assert KIND_TAG not in client.get_experiment(old).tags
    for _ in range(2):
        ms.ensure_store(root, ["ablation", "old", "mine"])
    assert client.get_experiment(old).tags[KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment(mine).tags[KIND_TAG] == "genai_development"
    assert len(client.search_experiments()) == 5  # Default, shared, ablation, old, mine: none created twice


def test_a_training_marks_the_experiment_it_logs_into(tmp_path):
    uri = ms.store_uri(tmp_path)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    RunLogger(uri, "training", tmp_path / "a").start("a", {}, {}, 0)  # creates the experiment
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("training").tags[KIND_TAG] == MODEL_TRAINING
    untagged = client.create_experiment("shared-by-hand")
    RunLogger(uri, "shared-by-hand", tmp_path / "b").start("b", {}, {}, 0)  # an existing one without a kind
    assert client.get_experiment(untagged).tags[KIND_TAG] == MODEL_TRAINING


def training_folder(folder: Path, start: int, end: int) -> str:
    """A finished training's run folder (its own store and run id file, as the trainer leaves them) whose run
    ran from `start` to `end` (ms)."""
    from mlflow.entities import Metric

    from mosaic.infra.runfolder import RUN_ID_FILE

    folder.mkdir(parents=True)
    client = MlflowClient(ms.store_uri(folder))
    exp = client.create_experiment("training")
    run_id = client.create_run(exp, start_time=start, run_name="mosaic", tags={"variant": "mosaic"}).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss/total", 1.0 / s, start + s * 1000, s) for s in (1, 2)])
    client.set_terminated(run_id, "FINISHED", end_time=end)
    (folder / RUN_ID_FILE).write_text(run_id)
    return run_id


def test_copy_run_keeps_the_start_and_end_times(tmp_path):
    src_id = training_folder(tmp_path / "run", T0, T0 + HOUR)
    dst = ms.ensure_store(tmp_path / "mlflow", ["ablation"])
    new = ms.copy_run(ms.store_uri(tmp_path / "run"), src_id, dst, "ablation", "train:run")
    info = MlflowClient(dst).get_run(new).info
    assert (info.start_time, info.end_time, info.status, info.run_name) == (T0, T0 + HOUR, "FINISHED", "mosaic")
    again = ms.copy_run(ms.store_uri(tmp_path / "run"), src_id, dst, "ablation", "train:run",
                        run_name="mosaic-2-0")  # a relog, named as the workflow names it (method-ktrain-seed)
    info = MlflowClient(dst).get_run(again).info
    assert (info.start_time, info.run_name) == (T0, "mosaic-2-0")


def eval_folder(folder: Path, start: int | None, end: int | None, evalset: str = "heldout-k2") -> Path:
    folder.mkdir(parents=True)
    (folder / "sheet.png").write_bytes(b"png")
    record = {"metrics": {"img/CLIP-I": 0.5, "count/images": 2.0}, "params": {"sample.steps": 2},
              "tags": {"evalset": evalset}, "artifacts": ["sheet.png"]}
    if start is not None:
        record.update(start_time=start, end_time=end)
    (folder / "record.json").write_text(json.dumps(record))
    return folder


def test_log_record_runs_over_the_evaluations_own_times(tmp_path):
    uri = ms.ensure_store(tmp_path / "mlflow", ["ablation"])
    folder = eval_folder(tmp_path / "eval", T0, T0 + 90_000)
    run = ms.log_record(uri, "ablation", "eval:x", "x", json.loads((folder / "record.json").read_text()), folder)
    info = MlflowClient(uri).get_run(run).info
    assert (info.start_time, info.end_time) == (T0, T0 + 90_000)


@pytest.mark.parametrize("times", [(T0, T0), (T0 + 1, T0), (T0, None), ("1780000000000", T0 + 1), (T0, 1.5e12)])
def test_bad_record_times_name_the_file_and_fields(tmp_path, times):
    uri = ms.ensure_store(tmp_path / "mlflow", ["ablation"])
    record = {"metrics": {}, "start_time": times[0], "end_time": times[1]}
    with pytest.raises(ValueError, match=r"eval/record.json: fields start_time, end_time"):
        ms.log_record(uri, "ablation", "eval:x", "x", record, tmp_path / "eval")
    assert not MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("ablation").experiment_id])


def log(tmp_path, *args: str) -> dict:
    out = tmp_path / "marker.json"
    assert mlflow_log.main(["--store", str(tmp_path / "mlflow"), "--generation", "g", "--experiment", "ablation",
                            *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture
def study(tmp_path):
    ms.ensure_store(tmp_path / "mlflow", ["shared", "ablation"])
    (tmp_path / "mlflow" / ms.GENERATION_FILE).write_text("g")
    return MlflowClient(ms.store_uri(tmp_path / "mlflow"))


def test_evaluations_nest_under_their_training_and_bounds_stay_top_level(tmp_path, study):
    training_folder(tmp_path / "run", T0, T0 + HOUR)
    evals = [eval_folder(tmp_path / f"eval-{s}", T0 + HOUR + 60_000, T0 + HOUR + 75_000, s) for s in ("a", "b")]
    marker = log(tmp_path, "--train", str(tmp_path / "run"), "--evals", *map(str, evals),
                 "--tags", json.dumps({"method": "mosaic", "ktrain": "2", "seed": "0"}))
    train = study.get_run(marker["train_run_id"])
    assert (train.info.start_time, train.info.end_time) == (T0, T0 + HOUR)
    for run_id in marker["eval_run_ids"].values():
        run = study.get_run(run_id)
        assert run.data.tags[mlflow_log.PARENT_TAG] == train.info.run_id == run.data.tags["train_run_id"]
        assert run.info.end_time - run.info.start_time == 15_000
    # the UI's nesting is MLflow's: the children found by the parent tag are the evaluation runs
    exp = study.get_experiment_by_name("ablation").experiment_id
    children = study.search_runs([exp], f"tags.`{mlflow_log.PARENT_TAG}` = '{train.info.run_id}'")
    assert {r.info.run_id for r in children} == set(marker["eval_run_ids"].values())
    bound = log(tmp_path, "--evals", str(eval_folder(tmp_path / "ceiling", T0, T0 + 5_000)),
                "--tags", json.dumps({"method": "ceiling"}))
    tags = study.get_run(bound["eval_run_ids"]["heldout-k2"]).data.tags
    assert mlflow_log.PARENT_TAG not in tags and tags["train_run_id"] == ""


def test_an_evaluation_without_its_times_is_refused(tmp_path, study):
    old = eval_folder(tmp_path / "old", None, None)
    with pytest.raises(ValueError, match=r"old/record.json: no start_time / end_time .*--forcerun evaluate"):
        log(tmp_path, "--evals", str(old), "--tags", json.dumps({"method": "ceiling"}))


def test_metric_names_are_grouped_by_prefix(tmp_path, study):
    """Every metric name has a group (the part before "/", as the UI groups them): the trainer's, the evaluators'."""
    import torch

    (tmp_path / "run").mkdir()
    logger = RunLogger(ms.store_uri(tmp_path / "run"), "training", tmp_path / "run")
    run_id = logger.start("mosaic", {}, {}, 0)
    losses = {k: torch.tensor(0.5) for k in ("total", "diff", "scal", "mdl", "beta")}  # objective.py's keys
    log_step(logger, losses, 1e-4, 0.0, 1, log_every=1)
    names = set(MlflowClient(ms.store_uri(tmp_path / "run")).get_run(run_id).data.metrics)
    assert names == {"loss/total", "loss/diff", "loss/scal", "loss/mdl", "train/beta", "train/lr", "train/step_time"}
    ev = tmp_path / "evaluators"
    ev.mkdir()
    (ev / "validation.json").write_text(json.dumps({"clip_auc_all_pairs": 0.9, "n_views": 160, "seed": 0,
                                                    "world": "tiny"}))
    (ev / "metrics_config.json").write_text("{}")
    out = tmp_path / "shared.json"
    mlflow_log.main(["--store", str(tmp_path / "mlflow"), "--generation", "g", "--experiment", "shared",
                     "--evaluators", str(ev), "--tags", "{}", "--out", str(out)])
    run = study.get_run(json.loads(out.read_text())["train_run_id"])
    assert set(run.data.metrics) == {"evaluators/clip_auc_all_pairs", "evaluators/n_views", "evaluators/seed"}
    assert run.data.params["world"] == "tiny"
