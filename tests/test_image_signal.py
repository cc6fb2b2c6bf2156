"""bench/image_signal.py: the seed statistics, the verdicts at 2 standard errors and the issue's bars."""
import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

spec = importlib.util.spec_from_file_location("image_signal", Path(__file__).parents[1] / "bench" / "image_signal.py")
signal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(signal)


def values(rows):
    """rows of (method, n, seed, {metric: value}) -> the DAG's value frame (unnamed metrics NaN)."""
    nan = {c: math.nan for c in signal.METRICS.values()}
    return pd.DataFrame([{"method": m, "n": n, "seed": s, **nan, **{signal.METRICS[k]: v for k, v in d.items()}}
                         for m, n, s, d in rows])


def test_summary_verdicts_and_bars():
    rows = [("ceiling", 2, 0, {"Own-Ref": 95, "Other-Ref": 1}), ("floor", 2, 0, {"Own-Ref": 0, "Other-Ref": 0}),
            ("base", 2, 0, {"Own-Ref": 20, "Other-Ref": 20})]
    for s, (none, scal) in enumerate([(50, 60), (51, 61), (52, 59)]):  # SCAL above none by about 9, SE about 0.8
        rows += [("none", 2, s, {"Own-Ref": none, "Other-Ref": 30, "CLIP-T": 40}),
                 ("scal", 2, s, {"Own-Ref": scal, "Other-Ref": 30 - s, "CLIP-T": 40 - 3 * s}),
                 ("mdl", 2, s, {"Own-Ref": none, "Other-Ref": 20 + s, "CLIP-T": 41})]
    t = signal.summary(values(rows))
    row = t.set_index("method").loc["none"]
    assert row["Own-Ref"] == 51 and row["Own-Ref se"] == pytest.approx(1 / math.sqrt(3)) and row["seeds"] == 3
    assert t.set_index("method").loc["ceiling", "Own-Ref se"] == 0  # one value: no spread
    p = signal.predictions(t).set_index(["prediction", "metric"])
    assert p.loc[("SCAL raises identity: scal - none", "Own-Ref"), "verdict"] == "yes"
    assert p.loc[("MDL lowers leakage: mdl - none", "Other-Ref"), "verdict"] == "yes"  # 21 against 30, sign -1
    assert p.loc[("MDL raises CLIP-T: mdl - none", "CLIP-T"), "verdict"] == "yes"
    bars = signal.acceptance(t)
    assert any("the no-loss LoRA closes 41% of the base-to-ceiling gap" in b for b in bars)  # (51 - 20) / (95 - 20)
    assert any("= 1% of the floor-to-ceiling gap" in b for b in bars)  # SE 0.58 (scal) / 95
    assert signal.verdict(-3.0, 1.0) == "no" and signal.verdict(1.0, 1.0) == "not resolved"


def test_degrades_least_compares_the_drop_from_fewest_to_most_subjects():
    rows = []
    for s in range(3):
        rows += [("mosaic", 2, s, {"Own-Ref": 60 + s}), ("mosaic", 6, s, {"Own-Ref": 55 + s}),
                 ("uno", 2, s, {"Own-Ref": 60 + s}), ("uno", 6, s, {"Own-Ref": 40 + s})]
    p = signal.predictions(signal.summary(values(rows))).set_index("prediction")
    row = p.loc["MOSAIC degrades least: mosaic - uno"]
    assert row["value"] == pytest.approx(15) and row["verdict"] == "yes" and row["n"] == "2->6"
