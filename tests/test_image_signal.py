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
    cols = list(signal.METRICS.values())
    return pd.DataFrame([{"method": m, "n": n, "seed": s, **dict(zip(cols, v))} for m, n, s, v in rows])


def test_summary_verdicts_and_bars():
    rows = [("ceiling", 2, 0, [65, 27, 16, 60]), ("floor", 2, 0, [43, -6, -16, 12])]
    for s, (none, scal) in enumerate([(50, 60), (51, 61), (52, 59)]):  # SCAL above none by about 9, SE about 0.8
        rows += [("none", 2, s, [none, 10, 0, 40]), ("scal", 2, s, [scal, 10 + s, s, 40 - 3 * s]),
                 ("mosaic", 2, s, [scal, 10, 0, 40])]
    t = signal.summary(values(rows))
    row = t.set_index("method").loc["none"]
    assert row["DINO"] == 51 and row["DINO se"] == pytest.approx(1 / math.sqrt(3)) and row["seeds"] == 3
    assert t.set_index("method").loc["ceiling", "DINO se"] == 0  # one value: no spread
    p = signal.predictions(t).set_index(["difference", "metric"])
    assert p.loc[("SCAL - none", "DINO"), "verdict"] == "yes"
    assert p.loc[("SCAL - none", "CLIP-I"), "verdict"] == "not resolved"  # +1 +- 0.58
    assert p.loc[("MOSAIC - SCAL", "CLIP-T"), "verdict"] == "not resolved"  # 40 against 37 +- 1.7
    bars = signal.acceptance(t)
    assert any("MOSAIC closes 77% of the DINO gap" in b for b in bars)  # (60 - 43) / (65 - 43)
    assert signal.verdict(-3.0, 1.0) == "no" and signal.verdict(1.0, 1.0) == "not resolved"
