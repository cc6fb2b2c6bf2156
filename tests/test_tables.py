"""workflow.lib.tables (tables from MLflow runs) and mosaic.infra.tracking.store (idempotent relogging into one store)."""
import math
from pathlib import Path

import pandas as pd
import pytest

from mosaic.infra.tracking import store as ms
from workflow.lib import tables


def eval_runs(rows):
    """A frame shaped like mlflow.search_runs: run_id, metrics.*, tags.*."""
    out = []
    for i, r in enumerate(rows):
        out.append({"run_id": f"e{i}", "tags.kind": "eval", "tags.train_run_id": f"t-{r['method']}-{r['seed']}",
                    "tags.label/CLIP-I": "CLIP-I (tiny-world)", "tags.benchmark": r.get("benchmark", "heldout"),
                    "tags.scenario": r.get("scenario", "multi"), "tags.method": r["method"],
                    "tags.seed": str(r["seed"]), "tags.n": str(r.get("n", "")), "tags.ktrain": "4",
                    "metrics.img/CLIP-I": r["clip"], "metrics.img/CLIP-I.min": r["clip"] - 5,
                    "metrics.mech/alignment_acc": r.get("align", math.nan), **r.get("extra", {})})
    return pd.DataFrame(out)


METHODS = {"none": {"label": "-SCAL -MDL", "paper": {"ablation": "MOSAIC(-SCAL -MDL)"}},
           "mosaic": {"label": "+SCAL +MDL", "paper": {"ablation": "MOSAIC(+SCAL +MDL)", "main": "MOSAIC"}}}


def test_ablation_mean_se_over_seeds_one_row_per_n_with_run_ids():
    runs = eval_runs([{"method": m, "seed": s, "n": n, "clip": c, "align": 10 * c}
                      for m, base in (("mosaic", 70), ("none", 60)) for s in (0, 1) for n in (2, 4)
                      for c in [base + s + n / 2]])
    t = tables.ablation_table(tables.tidy(runs), METHODS)
    assert list(zip(t["method"], t["n"])) == [("none", "2"), ("none", "4"), ("mosaic", "2"), ("mosaic", "4")]
    row = t.set_index(["method", "n"]).loc[("mosaic", "4")]  # never pooled across n
    values = pd.Series([70 + s + 4 / 2 for s in (0, 1)])
    se = values.std() / 2 ** 0.5
    assert row["CLIP-I (tiny-world) mean"] == pytest.approx(values.mean())
    assert row["CLIP-I (tiny-world) std"] == pytest.approx(values.std())
    assert row["CLIP-I (tiny-world) se"] == pytest.approx(se)
    assert row["CLIP-I (tiny-world)"] == f"{values.mean():.2f} ± {se:.2f}"
    assert row["alignment acc (%) mean"] == pytest.approx(10 * values.mean())
    assert row["label"] == "+SCAL +MDL" and row["runs"] == 2 and row["seeds"] == "0,1" and row["n seeds"] == 2
    row = t.set_index("method").loc["mosaic"].iloc[0]
    ids = set(runs[(runs["tags.method"] == "mosaic") & (runs["tags.n"] == "2")]["run_id"])
    assert set(row["eval_run_ids"].split(";")) == ids
    assert set(row["train_run_ids"].split(";")) == {"t-mosaic-0", "t-mosaic-1"}
    assert "CLIP-I (tiny-world) paper" not in t  # no paper values given


def _paper(tmp_path, rows):
    path = tmp_path / "reported.csv"
    pd.DataFrame(rows, columns=["table", "benchmark", "scenario", "method", "metric", "value"]).to_csv(path, index=False)
    return tables.read_paper(path)


# a paper-profile DreamBench evaluation: real CLIP-I label, the paper's protocol, every prompt of the protocol run
PAPER_CELL = {"tags.label/CLIP-I": "CLIP-I", "tags.protocol/CLIP-I": "dreambench++", "metrics.count/prompts": 750.0,
              "metrics.entries/total": 750.0}


def test_paper_values_and_gaps_only_where_reported(tmp_path):
    paper = _paper(tmp_path, [["ablation", "DreamBench", "multi", "MOSAIC(+SCAL +MDL)", "CLIP-I", 76.3],
                              ["ablation", "DreamBench", "multi", "MOSAIC(-SCAL -MDL)", "CLIP-I", 73.45]])
    runs = eval_runs([{"method": "mosaic", "seed": 0, "clip": 70.0, "benchmark": "dreambench", "extra": PAPER_CELL},
                      {"method": "mosaic", "seed": 0, "n": 2, "clip": 50.0, "extra": PAPER_CELL},
                      {"method": "none", "seed": 0, "clip": 60.0, "benchmark": "dreambench", "scenario": "single",
                       "extra": PAPER_CELL}])
    t = tables.ablation_table(tables.tidy(runs), METHODS, paper).set_index(["method", "benchmark", "scenario"])
    assert t.loc[("mosaic", "dreambench", "multi"), "CLIP-I paper"] == 76.3
    assert t.loc[("mosaic", "dreambench", "multi"), "CLIP-I gap"] == pytest.approx(70.0 - 76.3)
    assert t.loc[("mosaic", "dreambench", "multi"), tables.COVERAGE] == "750 / 750"
    assert math.isnan(t.loc[("mosaic", "heldout", "multi"), "CLIP-I paper"])  # not a paper cell
    assert math.isnan(t.loc[("none", "dreambench", "single"), "CLIP-I gap"])  # paper: multi only
    with pytest.raises(FileNotFoundError, match="paper_values"):
        tables.read_paper(tmp_path / "missing.csv")


def test_no_gap_in_another_world_protocol_or_subset(tmp_path):
    """The paper's value stays beside the measured one; the gap is NaN, and the notes say why."""
    paper = _paper(tmp_path, [["ablation", "DreamBench", "multi", "MOSAIC(+SCAL +MDL)", "CLIP-I", 76.3]])
    cases = {"tiny-world": {"tags.label/CLIP-I": "CLIP-I (tiny-world)"},
             "protocol": {"tags.protocol/CLIP-I": "laion"},
             "unrecorded": {"tags.protocol/CLIP-I": None},
             "subset": {"metrics.count/prompts": 100.0}}
    for case, extra in cases.items():
        runs = eval_runs([{"method": "mosaic", "seed": 0, "clip": 70.0, "benchmark": "dreambench",
                           "extra": {**PAPER_CELL, **extra}}])
        row = tables.ablation_table(tables.tidy(runs), METHODS, paper).iloc[0]
        name = row.filter(like=" paper").index[0][: -len(" paper")]
        assert row[f"{name} paper"] == 76.3 and math.isnan(row[f"{name} gap"]), case
        assert "CLIP-I: no paper gap: " in row["notes"], case
        expected = {"tiny-world": "another world (tiny-world)", "protocol": "protocol 'laion', the paper's is 'dreambench++'",
                    "unrecorded": "'(not recorded)'", "subset": "100 of the protocol's 750 prompts run"}[case]
        assert expected in row["notes"], (case, row["notes"])
    runs = eval_runs([{"method": "mosaic", "seed": 0, "clip": 70.0, "benchmark": "dreambench", "extra": PAPER_CELL}])
    row = tables.ablation_table(tables.tidy(runs), METHODS, paper, profile="tiny").iloc[0]  # the tiny profile: never a gap
    assert math.isnan(row["CLIP-I gap"]) and "tiny profile" in row["notes"]


def test_xversebench_table_keeps_every_paper_column_and_counts_the_protocols_prompts(tmp_path):
    paper = _paper(tmp_path, [["xverse", "XVerseBench", "single", "MOSAIC", m, v]
                              for m, v in (("DPG", 90.1), ("ID-Sim", 60.2), ("IP-Sim", 70.3), ("AES", 61.4),
                                           ("AVG", 70.5))])
    methods = {"mosaic": {"paper": {"xverse": "MOSAIC"}}}
    base = {"metrics.entries/total": 90.0, "metrics.entries/runnable": 20.0, "metrics.entries/skipped": 70.0,
            "metrics.count/prompts": 20.0, "metrics.img/ID-Sim": 55.0, "tags.label/ID-Sim": "ID-Sim",
            "tags.protocol/ID-Sim": "xverse", "metrics.img/IP-Sim": math.nan, "tags.protocol/IP-Sim": "xverse",
            "tags.reasons/IP-Sim": "no animal or object reference: 20"}
    runs = eval_runs([{"method": "mosaic", "seed": s, "clip": 40.0, "benchmark": "xversebench", "scenario": "single",
                       "extra": base} for s in (0, 1)])
    x = tables.benchmark_table(tables.tidy(runs), "xversebench", methods, paper, "xverse").set_index("scenario").loc["single"]
    assert x[tables.COVERAGE] == "20 / 90"
    for m in ("DPG", "ID-Sim", "IP-Sim", "AES", "AVG"):  # every paper column, measured or not
        assert f"{m} paper" in x and math.isnan(x[f"{m} gap"]), m
    assert math.isnan(x["IP-Sim mean"]) and x["IP-Sim"] == "n/a"
    assert x["ID-Sim mean"] == 55.0 and x["ID-Sim paper"] == 60.2
    assert "ID-Sim: no paper gap: 20 of the protocol's 90 prompts run" in x["notes"]
    assert "IP-Sim: no animal or object reference: 20" in x["notes"] and "DPG: not measured" in x["notes"]
    # the whole protocol run under the paper's protocol: the gap is printed; another protocol: not
    full = {**base, "metrics.count/prompts": 90.0}
    runs = eval_runs([{"method": "mosaic", "seed": 0, "clip": 40.0, "benchmark": "xversebench", "scenario": "single",
                       "extra": full}])
    single = tables.benchmark_table(tables.tidy(runs), "xversebench", methods, paper, "xverse").set_index("scenario").loc["single"]
    assert single["ID-Sim gap"] == pytest.approx(55.0 - 60.2)
    runs["tags.protocol/ID-Sim"] = "insightface"
    x = tables.benchmark_table(tables.tidy(runs), "xversebench", methods, paper, "xverse").set_index("scenario").loc["single"]
    assert math.isnan(x["ID-Sim gap"]) and "protocol 'insightface', the paper's is 'xverse'" in x["notes"]


def test_scaling_and_sweep_group_keys():
    runs = eval_runs([{"method": m, "seed": s, "n": n, "clip": 50 + n + s} for m in ("mosaic", "none")
                      for s in (0, 1) for n in (2, 3)])
    t = tables.scaling_table(tables.tidy(runs), ["mosaic", "none"])
    assert list(zip(t["method"], t["n"])) == [("mosaic", 2), ("mosaic", 3), ("none", 2), ("none", 3)]
    assert t["CLIP-I (tiny-world) mean"].tolist() == [52.5, 53.5, 52.5, 53.5]
    assert tables.display_metrics(t) == ["CLIP-I (tiny-world)"]
    sweep = eval_runs([{"method": "x", "seed": 0, "n": 4, "clip": a * 10 + b,
                        "extra": {"tags.alpha": str(a), "tags.beta": str(b)}} for a in (0.0, 1.0) for b in (0.0, 0.6)])
    s = tables.sweep_table(tables.tidy(sweep))
    assert list(zip(s["alpha"], s["beta"])) == [(0.0, 0.0), (0.0, 0.6), (1.0, 0.0), (1.0, 0.6)]
    assert s["CLIP-I (tiny-world) mean"].tolist() == [0.0, 0.6, 10.0, 10.6]


def test_bounds_in_the_scaling_table_and_figure(tmp_path):
    """A bound (ceiling / floor) has no training: ktrain 0 in the table, a dashed line in the figure."""
    from workflow.lib import figures

    runs = eval_runs([{"method": "mosaic", "seed": s, "n": n, "clip": 50 + n + s} for s in (0, 1) for n in (2, 3)]
                     + [{"method": b, "seed": 0, "n": n, "clip": v} for b, v in (("ceiling", 80), ("floor", 10))
                        for n in (2, 3)])
    bounds = runs["tags.method"].isin(["ceiling", "floor"])
    runs.loc[bounds, "tags.ktrain"] = None
    runs.loc[bounds, "tags.seed"] = None
    t = tables.scaling_table(tables.tidy(runs), ["ceiling", "mosaic", "floor"])
    assert list(t["method"].unique()) == ["ceiling", "mosaic", "floor"]
    assert t.set_index("method").loc["ceiling", "ktrain"].tolist() == [0, 0]
    assert t.set_index("method").loc["floor", "CLIP-I (tiny-world) mean"].tolist() == [10, 10]
    path = figures.scaling_plot(t, ["CLIP-I (tiny-world)"], tmp_path / "scaling.png")
    assert path.is_file() and path.stat().st_size > 1000


def test_benchmark_table_counts_skipped_entries_and_keeps_reasons():
    runs = eval_runs([{"method": "mosaic", "seed": s, "clip": 40.0 + s, "benchmark": "xversebench",
                       "extra": {"metrics.entries/total": 90.0, "metrics.entries/skipped": 70.0,
                                 "metrics.entries/runnable": 20.0, "metrics.count/prompts": 4.0,
                                 "metrics.img/IP-Sim": math.nan, "tags.reasons/IP-Sim": "no detector: 4"}}
                      for s in (0, 1)])
    x = tables.benchmark_table(tables.tidy(runs), "xversebench", METHODS, None, "xverse")
    assert x.loc[0, "skipped"] == 70 and x.loc[0, "total"] == 90 and x.loc[0, "runnable"] == 20
    assert "IP-Sim: no detector: 4" in x.loc[0, "notes"]
    assert math.isnan(x.loc[0, "IP-Sim mean"]) and x.loc[0, "IP-Sim"] == "n/a"  # the paper's column stays, NaN
    assert tables.benchmark_table(tables.tidy(runs), "dreambench", METHODS, None, "main").empty


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return root, ms.ensure_store(root, ["ablation", "training"])


def test_log_record_is_idempotent_per_key(store, tmp_path):
    root, uri = store
    (tmp_path / "sheet.png").write_bytes(b"png")
    record = {"metrics": {"img/CLIP-I": 71.5}, "params": {"sample.steps": 8}, "tags": {"evalset": "heldout-k2"},
              "artifacts": ["sheet.png"]}
    first = ms.log_record(uri, "ablation", "eval:a", "a", record, tmp_path, {"kind": "eval", "method": "mosaic"})
    second = ms.log_record(uri, "ablation", "eval:a", "a", record, tmp_path, {"kind": "eval", "method": "mosaic"})
    runs = tables.load_runs(uri, "ablation")
    assert list(runs["run_id"]) == [second] and first != second  # the first is deleted, not duplicated
    assert runs.loc[0, "metrics.img/CLIP-I"] == 71.5 and runs.loc[0, "tags.evalset"] == "heldout-k2"
    from mlflow import MlflowClient

    assert [a.path for a in MlflowClient(uri).list_artifacts(second)] == ["sheet.png"]
    with pytest.raises(ValueError, match="no train runs"):
        tables.load_runs(uri, "ablation", kind="train")


def test_load_runs_retries_a_locked_store(store, tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    root, uri = store
    ms.log_record(uri, "ablation", "eval:a", "a", {"metrics": {"img/CLIP-I": 1.0}}, tmp_path, {"kind": "eval"})
    real, calls = mlflow.search_runs, []

    def locked_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "search_runs", locked_once)
    monkeypatch.setenv("MOSAIC_MLFLOW_BACKOFF_S", "0.01")
    assert len(tables.load_runs(uri, "ablation")) == 1 and len(calls) == 2


def test_copy_run_keeps_history_params_and_artifacts(store, tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    root, uri = store
    src_uri = ms.ensure_store(tmp_path / "run", ["training"])
    src = MlflowClient(src_uri)
    rid = src.create_run(src.get_experiment_by_name("training").experiment_id, tags={"variant": "scal"}).info.run_id
    src.log_batch(rid, params=[Param(f"p{i}", str(i)) for i in range(150)],  # more than one batch of params
                  metrics=[Metric("loss/diff", 1.0 / (s + 1), 0, s) for s in range(5)])
    (tmp_path / "config.yaml").write_text("a: 1\n")
    src.log_artifact(rid, str(tmp_path / "config.yaml"))
    src.set_terminated(rid)
    new = ms.copy_run(src_uri, rid, uri, "training", "train:x", {"kind": "train", "study": "ablation"})
    dst = MlflowClient(uri)
    run = dst.get_run(new)
    assert run.data.tags["variant"] == "scal" and run.data.tags["source_run_id"] == rid
    assert len(run.data.params) == 150 and run.data.params["p149"] == "149"
    assert [m.step for m in dst.get_metric_history(new, "loss/diff")] == list(range(5))
    assert [a.path for a in dst.list_artifacts(new)] == ["config.yaml"]
    assert run.info.status == "FINISHED"
    again = ms.copy_run(src_uri, rid, uri, "training", "train:x")  # the same key: replaces the first copy
    assert again != new and [r.info.run_id for r in dst.search_runs([run.info.experiment_id])] == [again]


PAPER_CSV = Path(__file__).resolve().parents[2] / "shared" / "paper" / "mosaic_reported.csv"
XV = {"DPG": (90.0, 80.0), "ID-Sim": (60.0, 50.0), "IP-Sim": (70.0, 60.0), "AES": (55.0, 50.0)}  # single, multi


def test_benchmark_tables_from_a_store_show_every_paper_column_with_avg_and_overall(tmp_path):
    """A synthetic MLflow store (the logging code path) -> main and XVerseBench tables: every metric of the paper's
    Tables 1 and 2 is a column (NaN with its reason where not measured), AVG and Overall as the kit aggregates."""
    paper = tables.read_paper(PAPER_CSV) if PAPER_CSV.is_file() else None
    uri = ms.ensure_store(tmp_path / "store", ["benchmark"])
    methods = {"mosaic": {"paper": {"main": "MOSAIC", "xverse": "MOSAIC"}},
               "dreamo-official": {"paper": {"main": "DreamO", "xverse": "DreamO"}}}
    for m in methods:
        for seed in (0, 1):
            for scen in ("single", "multi"):
                db = {"img/CLIP-I": 80.0 + seed, "img/CLIP-T": 30.0, "img/DINO": 70.0, "img/UnifiedReward": 4.0}
                ms.log_record(uri, "benchmark", f"db:{m}:{seed}:{scen}", "db", {"metrics": db}, tmp_path,
                              {"kind": "eval", "method": m, "seed": str(seed), "benchmark": "dreambench",
                               "scenario": scen, "reasons/HPSv3": "HPSv3 needs its own environment: 4"})
                i = 0 if scen == "single" else 1
                xv = {f"img/{k}": v[i] + seed for k, v in XV.items() if not (m == "dreamo-official" and k == "AES")}
                ms.log_record(uri, "benchmark", f"xv:{m}:{seed}:{scen}", "xv", {"metrics": xv}, tmp_path,
                              {"kind": "eval", "method": m, "seed": str(seed), "benchmark": "xversebench",
                               "scenario": scen})
    runs = tables.load_runs(uri, "benchmark")
    main = tables.benchmark_table(tables.tidy(runs), "dreambench", methods, paper, "main")
    x = tables.benchmark_table(tables.tidy(runs), "xversebench", methods, paper, "xverse")
    want_main, want_x = ["CLIP-I", "CLIP-T", "DINO", "UnifiedReward", "HPSv3"], ["DPG", "ID-Sim", "IP-Sim", "AES", "AVG"]
    if paper is not None:  # the paper file's own columns, too
        assert set(paper.loc[paper["table"] == "main", "metric"]) <= set(want_main)
        assert set(paper.loc[paper["table"] == "xverse", "metric"]) <= set(want_x)
    assert all(c in tables.display_metrics(main) for c in want_main)
    assert all(c in tables.display_metrics(x) for c in want_x)
    m = main.set_index(["method", "scenario"])
    assert math.isnan(m.loc[("mosaic", "single"), "HPSv3 mean"]) and "HPSv3" in m.loc[("mosaic", "single"), "notes"]
    assert m.loc[("mosaic", "single"), "UnifiedReward mean"] == 4.0
    t = x.set_index(["method", "scenario"])
    avg_single = [sum(v[0] + s for v in XV.values()) / 4 for s in (0, 1)]  # per seed: (90+60+70+55)/4 + seed
    assert t.loc[("mosaic", "single"), "AVG mean"] == pytest.approx(sum(avg_single) / 2)  # 69.25
    assert t.loc[("mosaic", "single"), "AVG std"] == pytest.approx(pd.Series(avg_single).std())
    assert t.loc[("mosaic", "multi"), "AVG mean"] == pytest.approx(60.5)
    assert t.loc[("mosaic", "all"), "AVG mean"] == pytest.approx((69.25 + 60.5) / 2)
    assert t.loc[("mosaic", "all"), "Overall"] == f"{(69.25 + 60.5) / 2:.2f}"
    # no AES for the official DreamO: AVG and Overall NaN, each with the reason
    assert math.isnan(t.loc[("dreamo-official", "single"), "AVG mean"])
    assert "AVG: needs DPG, ID-Sim, IP-Sim, AES; not available: AES" in t.loc[("dreamo-official", "single"), "notes"]
    assert math.isnan(t.loc[("dreamo-official", "all"), "AVG mean"])
    assert "needs the AVG of both scenarios" in t.loc[("dreamo-official", "all"), "notes"]
    if paper is not None:  # the Overall row meets the paper's Overall cell (scenario "all", metric AVG)
        assert t.loc[("mosaic", "all"), "AVG paper"] == 76.04


def test_avg_reproduces_the_papers_table_2():
    """The kit's AVG = mean of DPG, ID-Sim, IP-Sim, AES, and Overall = mean of the two AVGs, on the paper's numbers."""
    from workflow.lib import paper_columns

    if not PAPER_CSV.is_file():
        pytest.skip("the paper's reported values are not here")
    p = tables.read_paper(PAPER_CSV)
    p = p[p["table"] == "xverse"]
    checked = 0
    for method, g in p.groupby("method"):
        v = {(r.scenario, r.metric): r.value for r in g.itertuples()}
        rows = pd.DataFrame([{"tags.method": method, "tags.scenario": s,
                              **{f"metrics.img/{k}": v.get((s, k), math.nan) for k in paper_columns.AVG_PARTS}}
                             for s in ("single", "multi")])
        avg = paper_columns.with_avg(rows)["metrics.img/AVG"].tolist()
        for s, a in zip(("single", "multi"), avg):
            if (s, "AVG") in v and not math.isnan(a):
                assert a == pytest.approx(v[(s, "AVG")], abs=0.006)  # the paper rounds to 2 decimals
                checked += 1
        if ("all", "AVG") in v and not any(map(math.isnan, avg)):
            assert sum(avg) / 2 == pytest.approx(v[("all", "AVG")], abs=0.011)
            checked += 1
    assert checked >= 12


def test_avg_and_overall_gaps_follow_their_parts_protocols_and_prompts(tmp_path):
    parts = ("DPG", "ID-Sim", "IP-Sim", "AES")
    paper = _paper(tmp_path, [["xverse", "XVerseBench", s, "MOSAIC", "AVG", v] for s, v in
                              (("single", 80.0), ("multi", 70.0), ("all", 75.0))])
    methods = {"mosaic": {"paper": {"xverse": "MOSAIC"}}}

    def table(id_protocol="xverse", prompts=None):
        rows = []
        for scenario, total in (("single", 90.0), ("multi", 210.0)):
            extra = {"metrics.entries/total": total, "metrics.count/prompts": prompts or total}
            for m in parts:
                extra.update({f"metrics.img/{m}": 80.0, f"tags.label/{m}": m,
                              f"tags.protocol/{m}": id_protocol if m == "ID-Sim" else "xverse"})
            rows.append({"method": "mosaic", "seed": 0, "clip": 1.0, "benchmark": "xversebench", "scenario": scenario,
                         "extra": extra})
        return tables.benchmark_table(tables.tidy(eval_runs(rows)), "xversebench", methods, paper, "xverse").set_index("scenario")

    t = table()
    assert t.loc["single", "AVG gap"] == pytest.approx(0.0) and t.loc["multi", "AVG gap"] == pytest.approx(10.0)
    assert t.loc["all", "AVG gap"] == pytest.approx(80.0 - 75.0) and t.loc["all", tables.COVERAGE] == "300 / 300"
    t = table(id_protocol="insightface")  # one part under another protocol: no AVG or Overall gap
    assert t["AVG gap"].isna().all()
    assert "AVG: no paper gap: measured under protocol 'mixed: DPG xverse, ID-Sim insightface" in t.loc["single", "notes"]
    assert table(prompts=20.0)["AVG gap"].isna().all()  # a subset of the prompts: none either


# ---- the two forms: the tidy long table the aggregates are computed from, and the readable wide table ----

def _ablation_runs():
    runs = eval_runs([{"method": m, "seed": s, "n": n, "clip": base + 3 * s + n, "align": base / 2 + s * n}
                      for m, base in (("mosaic", 70), ("none", 60)) for s in (0, 1, 2) for n in (2, 4)])
    runs["tags.protocol/CLIP-I"] = "dreambench++"
    runs.loc[0, "metrics.img/CLIP-I"] = math.nan  # a NaN cell, with its reason
    runs.loc[0, "tags.reasons/CLIP-I"] = "no reference: 1"
    return runs


def test_tidy_has_one_row_per_run_and_metric_with_the_runs_values():
    runs = _ablation_runs()
    long = tables.tidy(runs)
    assert len(long) == len(runs) * 2 and not long.duplicated(["eval_run_id", "metric"]).any()  # CLIP-I, alignment
    assert set(long["metric"]) == {"CLIP-I (tiny-world)", "alignment acc (%)"}  # no `.min` twin
    by_id = runs.set_index("run_id")
    for r in long.itertuples():
        run = by_id.loc[r.eval_run_id]
        assert r.value == pytest.approx(run[f"metrics.{r.key}"], nan_ok=True), r
        assert (r.method, r.seed, r.n, r.train_run_id) == (run["tags.method"], run["tags.seed"], run["tags.n"],
                                                           run["tags.train_run_id"])
        assert r.protocol == "dreambench++" if r.key == "img/CLIP-I" else pd.isna(r.protocol)  # mechanism: none
    nan = long[long["value"].isna()]
    assert list(zip(nan["eval_run_id"], nan["reason"])) == [("e0", "no reference: 1")]
    shuffled = tables.tidy(runs.sample(frac=1, random_state=0))  # the store's order does not matter
    pd.testing.assert_frame_equal(shuffled, long)


def test_wide_mean_se_is_the_tidy_tables_groupby():
    long = tables.tidy(_ablation_runs())
    t = tables.ablation_table(long, METHODS)
    wide = tables.readable(t).set_index(["method", "n"])
    stats = long.groupby(["method", "n", "metric"])["value"].agg(["mean", "std", "count"])  # computed here, apart
    for (method, n, metric), s in stats.iterrows():
        se = s["std"] / s["count"] ** 0.5
        assert wide.loc[(method, n), metric] == f"{s['mean']:.2f} ± {se:.2f}", (method, n, metric)
        assert t.set_index(["method", "n"]).loc[(method, n), f"{metric} cells"] == s["count"]
    assert stats.loc[("mosaic", "2", "CLIP-I (tiny-world)"), "count"] == 2  # the NaN cell is left out, its reason kept
    assert "CLIP-I: no reference: 1" in wide.loc[("mosaic", "2"), "notes"]
    wide = wide.reset_index("n")
    assert not [c for c in wide.columns if c.endswith((" mean", " std", " se", " cells", " protocol", "_run_ids"))]
    assert list(wide.columns[:4]) == ["n", "label", "benchmark", "scenario"]
    assert list(wide.loc["none", "runs"]) == [3, 3]


def _md_rows(text: str) -> list[list[str]]:
    lines = [x for x in text.splitlines() if x.startswith("|")]
    return [[c.strip() for c in x.strip("|").split("|")] for i, x in enumerate(lines) if i != 1]  # no separator


def _tex_rows(text: str) -> list[list[str]]:
    lines = [x for x in text.splitlines() if x.endswith("\\\\")]
    return [[c.strip().replace("\\%", "%").replace("\\_", "_") for c in x[:-2].split("&")] for x in lines]


def test_markdown_and_latex_render_the_same_numbers_with_paper_and_gap(tmp_path):
    paper = _paper(tmp_path, [["ablation", "DreamBench", "multi", "MOSAIC(+SCAL +MDL)", "CLIP-I", 76.3]])
    runs = eval_runs([{"method": "mosaic", "seed": s, "clip": 70.0 + s, "benchmark": "dreambench", "align": 40 + s,
                       "extra": PAPER_CELL} for s in (0, 1)]
                     + [{"method": "none", "seed": s, "clip": 60.0 + 2 * s, "benchmark": "dreambench",
                         "extra": PAPER_CELL} for s in (0, 1)])
    long = tables.tidy(runs)
    t = tables.ablation_table(long, METHODS, paper)
    out = {k: tmp_path / "t" / f"ablation{k}" for k in (".csv", "_tidy.csv", ".md", ".tex")}
    wide = tables.write_tables(t, long, out[".csv"], out["_tidy.csv"], out[".md"], out[".tex"])
    csv = pd.read_csv(out[".csv"]).set_index("method")
    assert csv.loc["mosaic", "CLIP-I"] == "70.50 ± 0.50" and csv.loc["mosaic", "CLIP-I paper"] == 76.3
    assert csv.loc["mosaic", "CLIP-I gap"] == pytest.approx(70.5 - 76.3)
    assert math.isnan(csv.loc["none", "CLIP-I paper"])  # the paper reports this variant's row elsewhere only
    back = pd.read_csv(out["_tidy.csv"], dtype={"seed": str, "n": str, "ktrain": str})
    assert back["value"].tolist() == pytest.approx(long["value"].tolist(), nan_ok=True)
    assert list(back["eval_run_id"]) == list(long["eval_run_id"])
    md, tex = _md_rows(out[".md"].read_text()), _tex_rows(out[".tex"].read_text())
    assert md == tex and md[0] == [c for c in wide.columns if c != "notes"]  # one table, two renderings
    row = dict(zip(md[0], md[[r[0] for r in md].index("mosaic")]))
    assert (row["CLIP-I"], row["CLIP-I paper"], row["CLIP-I gap"]) == ("70.50 ± 0.50", "76.30", "-5.80")
    assert row["alignment acc (%)"] == "40.50 ± 0.50" and row[tables.COVERAGE] == "750 / 750"
    assert dict(zip(md[0], md[[r[0] for r in md].index("none")]))["CLIP-I gap"] == ""  # NaN: blank
    assert "\\usepackage{booktabs}" in out[".tex"].read_text() and "\\toprule" in out[".tex"].read_text()


def test_the_script_writes_every_form_of_the_benchmark_tables(tmp_path):
    """workflow/scripts/tables.py on a store: main and XVerseBench, each as readable CSV, tidy CSV (its own
    benchmark's rows, the kit's AVG per run among them), Markdown and LaTeX."""
    from workflow.scripts import tables as script

    root = tmp_path / "store"
    uri = ms.ensure_store(root, ["benchmark"])
    (root / ms.GENERATION_FILE).write_text("g1")
    for seed in (0, 1):
        ms.log_record(uri, "benchmark", f"db:{seed}", "db", {"metrics": {"img/CLIP-I": 80.0 + seed}}, tmp_path,
                      {"kind": "eval", "method": "mosaic", "seed": str(seed), "benchmark": "dreambench",
                       "scenario": "single"})
        xv = {f"img/{k}": v[0] + seed for k, v in XV.items()}
        ms.log_record(uri, "benchmark", f"xv:{seed}", "xv", {"metrics": xv}, tmp_path,
                      {"kind": "eval", "method": "mosaic", "seed": str(seed), "benchmark": "xversebench",
                       "scenario": "single"})
    outs = {f"{name}{form}": tmp_path / "r" / f"{name}{suffix}" for name in ("main", "xversebench")
            for form, suffix in (("", ".csv"), ("_tidy", "_tidy.csv"), ("_md", ".md"), ("_tex", ".tex"))}
    args = [a for k, p in outs.items() for a in (f"--out-{k}", str(p))]
    assert script.main(["benchmark", "--store", str(root), "--generation", "g1", "--config",
                        '{"methods": {"mosaic": {}}}', *args]) == 0
    assert all(p.is_file() and p.stat().st_size > 0 for p in outs.values())
    main_tidy, xv_tidy = pd.read_csv(outs["main_tidy"]), pd.read_csv(outs["xversebench_tidy"])
    assert set(main_tidy["benchmark"]) == {"dreambench"} and set(xv_tidy["benchmark"]) == {"xversebench"}
    assert len(main_tidy) == 2 and len(xv_tidy) == 2 * 5  # per run: DPG, ID-Sim, IP-Sim, AES and the AVG
    for seed, g in xv_tidy.groupby("seed"):
        v = g.set_index("metric")["value"]
        assert v["AVG"] == pytest.approx(v[list(XV)].mean())
    x = pd.read_csv(outs["xversebench"]).set_index("scenario")
    avg = xv_tidy[xv_tidy["metric"] == "AVG"]["value"]
    assert x.loc["single", "AVG"] == f"{avg.mean():.2f} ± {avg.std() / len(avg) ** 0.5:.2f}"
    assert pd.isna(x.loc["all", "Overall"])  # no multi scenario: no Overall ("n/a", NaN to read_csv), with the reason
    assert "needs the AVG of both scenarios" in x.loc["all", "notes"]
    assert pd.read_csv(outs["main"]).loc[0, "CLIP-I"] == "80.50 ± 0.50"
    assert "80.50 ± 0.50" in outs["main_md"].read_text() and "80.50 ± 0.50" in outs["main_tex"].read_text()


@pytest.mark.parametrize("study", ["sweep", "scaling"])
def test_the_script_writes_the_forms_and_the_figure_of_sweep_and_scaling(tmp_path, study):
    """The figures read the same table the CSVs show (its internal numeric frame), the tidy CSV is its source."""
    from workflow.scripts import tables as script

    root = tmp_path / "store"
    uri = ms.ensure_store(root, [study])
    (root / ms.GENERATION_FILE).write_text("g1")
    grid = [(a, b, n, s) for a in ("0.0", "1.0") for b in ("0.0", "0.6") for n in ("2", "3") for s in ("0", "1")]
    for i, (a, b, n, s) in enumerate(grid):
        tags = {"kind": "eval", "method": "mosaic" if study == "scaling" else f"a{a}-b{b}", "seed": s, "n": n,
                "ktrain": "4", "benchmark": "heldout", "scenario": "multi", "alpha": a, "beta": b}
        metrics = {"img/CLIP-I": 50 + 10 * float(a) + float(b) + int(n) + int(s) + i / 100,
                   "mech/leakage": 20.0 - int(n) - i / 10, "mech/leakage_chance": 100 / int(n)}
        ms.log_record(uri, study, f"e{i}", f"e{i}", {"metrics": metrics}, tmp_path, tags)
    name, figure = study, {"sweep": "heatmap", "scaling": "figure"}[study]  # the script's --out-<name>s
    outs = {f"{name}{form}": tmp_path / "r" / f"{name}{suffix}"
            for form, suffix in (("", ".csv"), ("_tidy", "_tidy.csv"), ("_md", ".md"), ("_tex", ".tex"))}
    outs[figure] = tmp_path / "r" / "figure.png"
    args = [a for k, p in outs.items() for a in (f"--out-{k}", str(p))]
    assert script.main([study, "--store", str(root), "--generation", "g1", "--config",
                        '{"methods": {"mosaic": {}}}', *args]) == 0
    assert all(p.is_file() and p.stat().st_size > 0 for p in outs.values())
    long = pd.read_csv(outs[f"{name}_tidy"])
    assert len(long) == len(grid) * 3  # CLIP-I, leakage and its chance per run
    keys = ["alpha", "beta"] if study == "sweep" else ["method", "n"]
    wide = pd.read_csv(outs[name])
    stats = long.groupby([*keys, "metric"])["value"].agg(["mean", "std", "count"])
    for _, row in wide.iterrows():
        for metric in ("CLIP-I", "leakage (%)", "leakage at chance (%)"):  # no label tag: the bare name
            s = stats.loc[(*(row[k] for k in keys), metric)]
            assert row[metric] == f"{s['mean']:.2f} ± {s['std'] / s['count'] ** 0.5:.2f}", (study, metric)
