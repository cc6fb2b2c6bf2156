"""The workflow's plan (workflow/lib/plan.py), called directly: no Snakemake, no subprocess. The shipped
profiles (tiny.yaml, paper.yaml) and small edits of them; tests/test_workflow.py checks the DAG Snakemake
builds from the same plan."""
import copy
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from workflow.lib.plan import (DONE, Plan, data_dirs, evalset_table, identity_split, method_table,
                               run_dir, store_generation, sweep_cell, write_generation)

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "workflow" / "config" / "tiny.yaml").read_text())
PAPER = yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text())


def plan(cfg=TINY, **changes) -> Plan:
    cfg = copy.deepcopy(cfg)
    cfg.update(changes)
    return Plan(cfg, ROOT)


@pytest.fixture(scope="module")
def tiny():
    return plan()


@pytest.fixture(scope="module")
def paper():
    return plan(PAPER)


def set_of(overrides: list[str]) -> dict:
    """`--set` items back to key -> value (each value is JSON)."""
    return {k: json.loads(v) for k, v in (item.split("=", 1) for item in overrides)}


# ---------------------------------------------------------------- methods and evaluation sets

def test_tiny_method_table_has_the_ablation_with_its_loss_weights(tiny):
    weights = {m: (tiny.methods[m]["overrides"]["loss.alpha"], tiny.methods[m]["overrides"]["loss.beta"])
               for m in ("none", "scal", "mdl", "mosaic")}
    assert weights == {"none": (0.0, 0.0), "scal": (0.4, 0.0), "mdl": (0.0, 0.6), "mosaic": (0.4, 0.6)}
    assert tiny.methods["uno"]["baseline"] == "uno" and tiny.methods["ceiling"]["bound"] == "ceiling"
    assert list(tiny.methods)[: len(TINY["methods"])] == list(TINY["methods"])  # configured first, then the cells


def test_sweep_cells_reuse_equal_methods_and_name_new_ones():
    methods = method_table(TINY)
    sweep = TINY["studies"]["sweep"]
    cells = {(a, b): sweep_cell(methods, a, b)[0] for a, b in itertools.product(sweep["alpha"], sweep["beta"])}
    assert cells[(0.0, 0.0)] == "none" and cells[(0.4, 0.0)] == "scal"
    assert cells[(0.0, 0.6)] == "mdl" and cells[(0.4, 0.6)] == "mosaic"  # not mosaic-paper: its calibration differs
    assert cells[(0.1, 0.15)] == "sweep-a0.1-b0.15"
    new = methods["sweep-a0.1-b0.15"]
    assert new == {"overrides": {"loss.alpha": 0.1, "loss.beta": 0.15}, "label": "alpha=0.1 beta=0.15"}
    assert len([m for m in methods if m.startswith("sweep-")]) == 9 - 4
    # integers equal their floats; a controlled baseline is never a sweep cell
    assert sweep_cell({"x": {"overrides": {"loss.alpha": 0, "loss.beta": 1}}}, 0.0, 1.0)[0] == "x"
    assert sweep_cell({"b": {"baseline": "uno", "overrides": {"loss.alpha": 0.0, "loss.beta": 0.0}}}, 0, 0)[0] \
        == "sweep-a0-b0"


def test_no_sweep_study_adds_no_cells():
    cfg = copy.deepcopy(TINY)
    del cfg["studies"]["sweep"]
    assert list(method_table(cfg)) == list(TINY["methods"])


def test_evalsets_of_both_profiles():
    tiny = evalset_table(TINY)
    assert list(tiny) == ["heldout-k2", "heldout-k3", "heldout-k4", "heldout-k5", "heldout-k6", "dreambench-single",
                          "dreambench-multi", "xversebench-single", "xversebench-multi"]
    k3 = tiny["heldout-k3"]
    assert k3["n"] == 3 and k3["mechanism"] and k3["family"] == "heldout" and k3["scenario"] == "multi"
    assert k3["ref_preprocess"] == "fit"  # the family's settings come along
    assert tiny["xversebench-multi"] == {**TINY["evalsets"]["xversebench"], "family": "xversebench",
                                         "benchmark": "xversebench", "scenario": "multi", "mechanism": False}
    only_heldout = {"heldout": TINY["evalsets"]["heldout"]}
    assert list(evalset_table({"evalsets": only_heldout})) == [f"heldout-k{n}" for n in (2, 3, 4, 5, 6)]


# ---------------------------------------------------------------- studies

def test_study_grids_of_the_tiny_profile(tiny):
    ablation = tiny.grids["ablation"]
    trained = ["none", "scal", "mdl", "mosaic", "mosaic-paper"]  # the bounds need no training
    assert ablation == [{"method": m, "ktrain": 4, "seed": s} for m in trained for s in (0, 1)]
    sweep = tiny.grids["sweep"]
    assert len(sweep) == 9 and {"method": "mosaic", "ktrain": 4, "seed": 0, "alpha": 0.4, "beta": 0.6} in sweep
    assert {r["method"] for r in tiny.grids["scaling"]} == {"mosaic", "omnicontrol", "uno", "dreamo", "xverse"}


def test_trainings_are_shared_by_the_studies(tiny, paper):
    for p in (tiny, paper):
        rows = {(r["method"], r["ktrain"], r["seed"]) for g in p.grids.values() for r in g}
        assert sorted(tuple(t.values()) for t in p.trainings()) == sorted(rows)
    assert len(tiny.trainings()) == 23  # the tiny DAG's 23 `train` jobs
    assert {"method": "mosaic", "ktrain": 4, "seed": 0} in tiny.trainings()  # ablation, sweep, scaling and benchmark


def test_untrained_methods_and_their_sources(tiny, paper):
    assert tiny.untrained("ceiling") and tiny.untrained("base") and not tiny.untrained("uno")
    assert paper.untrained("uno-official") and not paper.untrained("mosaic")
    assert tiny.untrained_source("floor") == "bounds/method~floor"
    assert paper.untrained_source("dreamo-official") == "official/method~dreamo-official"
    assert tiny.study_untrained("ablation") == ["ceiling", "base", "floor"] and tiny.study_official("ablation") == []
    assert paper.study_official("benchmark") == ["dreamo-official", "uno-official", "xverse-official"]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["studies"]["ablation"].update(evalsets=["heldout-k9"]),
     "config studies.ablation.evalsets: unknown evaluation set 'heldout-k9'; known: heldout-k2"),
    (lambda c: c["studies"]["scaling"]["methods"].append("mosaic-v2"),
     "config studies.scaling.methods: unknown method 'mosaic-v2'"),
    (lambda c: c["studies"]["ablation"]["evalsets"].append("dreambench-multi"),
     "config studies.ablation: bound 'ceiling' (the real targets"),
    (lambda c: c["training"].update(base=None), "config studies.ablation: bound 'base' samples the base model"),
])
def test_a_study_it_cannot_run_is_named(mutate, message):
    bad = copy.deepcopy(TINY)
    mutate(bad)
    with pytest.raises(ValueError, match=re.escape(message)):
        Plan(bad, ROOT)


def test_official_release_on_heldout_sets_is_refused():
    bad = copy.deepcopy(PAPER)
    bad["studies"]["benchmark"]["evalsets"].append("heldout-k2")
    with pytest.raises(ValueError, match="config studies.benchmark: official method 'dreamo-official' runs on "
                                         "benchmark evaluation sets only"):
        Plan(bad, ROOT)


def test_bounds_exist_only_in_the_synthetic_world():
    bad = copy.deepcopy(PAPER)
    bad["methods"]["ceiling"] = {"bound": "ceiling"}
    bad["studies"]["ablation"] = {"methods": ["ceiling"], "ktrain": [4], "seeds": [0], "evalsets": ["heldout-k2"]}
    with pytest.raises(ValueError, match="bound 'ceiling' .* exists only on the synthetic world's held-out"):
        Plan(bad, ROOT)


# ---------------------------------------------------------------- shipped artefacts and the base

def test_shipped_artefacts_are_used_unless_retrained(tiny):
    shipped = f"{ROOT}/{TINY['artefacts']}"
    assert tiny.shipped == shipped and not tiny.base and not tiny.tiny_evaluators
    assert tiny.base_weights == f"{shipped}/base" and tiny.evaluators == f"{shipped}/evaluators"
    assert tiny.base_inputs() == [f"{shipped}/provenance.json"] and tiny.shared_markers() == []
    retrain = plan(retrain=True)
    assert retrain.shipped is None and retrain.base and retrain.tiny_evaluators
    assert retrain.base_weights == "results/runs/base/transformer" and retrain.evaluators == "results/evaluators"
    assert retrain.base_inputs() == [f"results/runs/base/{DONE}"]
    assert retrain.shared_markers() == ["results/mlflow/logged/shared/base.json",
                                        "results/mlflow/logged/shared/evaluators.json"]


def test_missing_shipped_artefacts_name_the_command_that_makes_them():
    with pytest.raises(ValueError, match=re.escape(f"config artefacts: {ROOT}/artefacts/none/provenance.json not "
                                                   "found") + ".*snakemake --cores all ship --config retrain=True"):
        plan(artefacts="artefacts/none")
    assert plan(artefacts="artefacts/none", retrain=True).shipped is None  # retraining needs none


def test_paper_profile_has_no_base_and_no_tiny_evaluators(paper):
    assert not paper.has_base and not paper.has_tiny_evaluators and paper.shipped is None
    assert paper.base_weights is None and paper.evaluators is None and paper.base_inputs() == []
    assert paper.data_kind == "collage" and paper.dataset("val") == "results-paper/data/collage/val"


# ---------------------------------------------------------------- paths

def test_paths_follow_the_wildcard_patterns(tiny):
    source = "method~mosaic/ktrain~4/seed~0"
    assert tiny.source_of({"method": "mosaic", "ktrain": 4, "seed": 0}) == source
    assert tiny.source_of({"method": "ceiling", "ktrain": 4, "seed": 0}) == "bounds/method~ceiling"
    assert tiny.samples_dir(source, "heldout-k2") == f"results/samples/{source}/evalset~heldout-k2"
    assert tiny.eval_dir(source, "heldout-k2") == f"results/evals/{source}/evalset~heldout-k2"
    assert run_dir(f"results/runs/{source}/{DONE}") == f"results/runs/{source}"
    assert tiny.marker("ablation", source) == f"results/mlflow/logged/ablation/{source}.json"
    assert tiny.dataset("train_k4") == "results/data/synthetic/train_k4"
    assert tiny.validated("train_k4") == "results/data/synthetic/train_k4.validated.txt"
    assert data_dirs([tiny.validated("val"), "results/other"]) == ["results/data/synthetic/val"]
    assert tiny.log_file("train", source) == f"results/logs/train/{source}.log"
    assert tiny.bench_file("sample", "bounds", "base", 2) == "results/benchmarks/sample/bounds/base/2.tsv"
    assert tiny.own_env_table("HPSv3", source, "dreambench-multi") == \
        f"results/evals_env/HPSv3/{source}/evalset~dreambench-multi.csv"


def test_study_markers_cover_its_trainings_and_untrained_methods(tiny):
    markers = tiny.study_markers("ablation")
    assert len(markers) == len(tiny.grids["ablation"]) + 3  # ceiling, base and floor
    assert markers[0] == "results/mlflow/logged/ablation/method~none/ktrain~4/seed~0.json"
    assert markers[-1] == "results/mlflow/logged/ablation/bounds/method~floor.json"
    assert plan(retrain=True).study_markers("ablation")[-2:] == plan(retrain=True).shared_markers()


def test_all_targets_are_every_study_table_the_preview_and_the_gallery(tiny):
    targets = tiny.all_targets()
    assert targets[0] == "results/figures/data_preview.png" and targets[-1] == "results/gallery/index.html"
    assert "results/tables/ablation_tidy.csv" in targets and "results/figures/sweep_alpha_beta.png" in targets
    assert set(tiny.table_outputs["benchmark"]) == {"main", "main_tidy", "main_md", "main_tex", "xversebench",
                                                    "xversebench_tidy", "xversebench_md", "xversebench_tex"}
    assert tiny.table_forms("scaling", "r/scaling.csv")["scaling_tex"] == "results/tables/scaling.tex"
    none = copy.deepcopy(TINY)
    none["studies"] = {}
    assert Plan(none, ROOT).all_targets() == ["results/figures/data_preview.png"]  # no studies, no gallery


# ---------------------------------------------------------------- trainer overrides and arguments

def test_train_overrides_layer_common_lora_method_and_instance(tiny):
    sets = tiny.train_overrides("mosaic-paper", "4", "1")
    ov = set_of(sets)
    assert ov["loss.alpha"] == 0.4 and ov["loss.beta"] == 0.6
    assert ov["loss.calibrate"] == "none"  # the method's own key over training.lora's grad-norm
    assert ov["train.steps"] == 600 and ov["model.flavour"] == "tiny4"  # lora and common
    assert ov["variant"] == "mosaic-paper" and ov["profile"] == "tiny" and ov["train.seed"] == 1
    assert ov["data.train"] == "results/data/synthetic/train_k4" and ov["data.val"] == "results/data/synthetic/val"
    assert ov["data.target_size"] == 72 and ov["data.ref_size"] == 24
    assert ov["model.weights"] == f"{ROOT}/artefacts/tiny-places/base"
    assert 'train.seed=1' in sets and 'loss.calibrate="none"' in sets  # JSON values: YAML parses them back


def test_paper_train_overrides_keep_the_profile_weights(paper):
    ov = set_of(paper.train_overrides("omnicontrol", 6, 0))
    assert ov["model.weights"] == "/weights/FLUX.1-dev" and ov["data.train"] == "results-paper/data/collage/train_k6"
    assert "loss.alpha" not in ov  # a controlled baseline: no loss weights of its own


def test_base_overrides_train_the_base_on_its_split(tiny):
    ov = set_of(tiny.base_overrides())
    assert ov["train.mode"] == "base" and ov["variant"] == "base" and ov["train.steps"] == 6000
    assert ov["data.train"] == "results/data/synthetic/base_k6" and "data.val" not in ov
    no_base_split = copy.deepcopy(TINY)
    del no_base_split["data"]["base"]
    assert Plan(no_base_split, ROOT).base_split() == "train_k4"  # else the largest train split


def test_split_settings(tiny):
    assert tiny.split_settings("train_k3") == (600, 1, 3)
    assert tiny.split_settings("base_k6") == (4000, 1, 6)
    assert tiny.split_settings("val") == (32, 2, 4)
    assert tiny.split_settings("test_k5") == (8, 5, 5)
    assert [identity_split(s) for s in ("base_k6", "train_k2", "val", "test_k2")] == ["train", "train", "val", "test"]


def test_sampling_arguments(tiny, paper):
    assert tiny.sample_source("heldout-k3") == "--dataset results/data/synthetic/test_k3"
    assert tiny.sample_source("dreambench-multi") == ("--benchmark dreambench --scenario multi --benchmarks-root "
                                                      "../shared/benchmarks --limit 4")
    assert paper.sample_source("dreambench-multi").endswith("--benchmarks-root ../shared/benchmarks")  # no limit
    assert tiny.sample_inputs("heldout-k3") == ["results/data/synthetic/test_k3",
                                                "results/data/synthetic/test_k3.validated.txt"]
    assert tiny.sample_inputs("xversebench-single") == []
    method = {"baseline": "x", "args": {"guidance": 3.5, "name": "a b"}}
    p = plan(methods={**TINY["methods"], "x-official": method})
    assert p.official_args("x-official") == '--baseline-arg guidance=3.5 --baseline-arg name="a b"'


def test_evaluation_arguments_merge_own_environment_metrics(tiny, paper):
    source = "method~mosaic/ktrain~4/seed~0"
    hps = f"results-paper/evals_env/HPSv3/{source}/evalset~dreambench-multi.csv"
    assert paper.own_env_tables(source, "dreambench-multi") == [hps]
    assert paper.evaluate_inputs(source, "dreambench-multi") == {
        "samples": f"results-paper/samples/{source}/evalset~dreambench-multi",
        "metrics": "results-paper/metrics/metrics_config.json", "extra": [hps]}
    assert paper.evaluate_args(source, "dreambench-multi") == (
        "--evalset dreambench-multi --benchmark dreambench --scenario multi "
        f"--metric-names CLIP-I,CLIP-T,DINO,HPSv2.1,UnifiedReward --extra-table {hps} "
        "--benchmarks-root ../shared/benchmarks")
    assert tiny.evaluate_args(source, "heldout-k2") == (
        "--evalset heldout-k2 --benchmark heldout --scenario multi "
        "--metric-names CLIP-I,CLIP-T,DINO,Own-Ref,Other-Ref,Shape-Acc --n 2")


def test_logging_tags_and_inputs(tiny):
    tags = json.loads(tiny.log_tags("sweep", "method~sweep-a0.1-b0.15/ktrain~4/seed~0"))
    assert tags == {"method": "sweep-a0.1-b0.15", "ktrain": "4", "seed": "0", "alpha": "0.1", "beta": "0.15",
                    "study": "sweep", "label": "alpha=0.1 beta=0.15"}
    tags = json.loads(tiny.log_tags("ablation", "bounds/method~floor"))
    assert tags == {"method": "floor", "study": "ablation", "label": TINY["methods"]["floor"]["label"]}
    trained = tiny.log_inputs("ablation", "method~none/ktrain~4/seed~1")
    assert trained == {"evals": ["results/evals/method~none/ktrain~4/seed~1/evalset~heldout-k2",
                                 "results/evals/method~none/ktrain~4/seed~1/evalset~heldout-k4"],
                       "run": f"results/runs/method~none/ktrain~4/seed~1/{DONE}"}
    assert "run" not in tiny.log_inputs("ablation", "bounds/method~ceiling")


def test_table_params_keep_the_study_order_then_the_grid(tiny, paper):
    params = json.loads(tiny.table_params("ablation"))
    assert list(params["methods"]) == TINY["studies"]["ablation"]["methods"]
    assert params["paper_values"] is None and params["profile"] == "tiny"
    sweep = json.loads(tiny.table_params("sweep"))["methods"]
    assert list(sweep)[:3] == ["none", "sweep-a0-b0.15", "mdl"]
    assert sweep["scal"] == {"label": "+SCAL -MDL", "paper": ""}
    paper_params = json.loads(paper.table_params("benchmark"))
    assert paper_params["methods"]["uno-official"]["paper"] == {"main": "UNO"}
    assert paper_params["paper_values"] == "../shared/paper/mosaic_reported.csv"


# ---------------------------------------------------------------- the MLflow store's id

def test_store_generation_is_read_back_only_from_an_existing_store(tmp_path):
    db, gen = str(tmp_path / "mlflow.db"), str(tmp_path / "generation")
    first, second = store_generation(db, gen), store_generation(db, gen)
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second  # no store: a new id each parse
    write_generation(gen, first)
    assert store_generation(db, gen) != first  # the id alone is no store
    Path(db).touch()
    assert store_generation(db, gen) == first
    mtime = Path(gen).stat().st_mtime_ns
    write_generation(gen, first)  # the same id: nothing written
    assert Path(gen).stat().st_mtime_ns == mtime and Path(gen).read_text().strip() == first


def test_a_plan_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = plan(retrain=True)
    p.stored_generation()
    assert list(tmp_path.iterdir()) == []  # the store and its id are written by the Snakefile's onstart only
    assert p.store_generation == "results/mlflow/generation"
