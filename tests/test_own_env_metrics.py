"""Metrics scored in their own environment (HPSv3: rule evaluate_hpsv3 runs `python -m metrics.hps_job`): their
evaluation-table rows are merged by the evaluate job's adapter before aggregating, so they reach the MLflow record
like any other metric; and the paper profile's dry run plans those jobs."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metrics.evaluate import TABLE, evaluate
from metrics.manifest import read_items
from workflow.scripts.evaluate import image_metrics


def test_extra_rows_are_merged_before_aggregating(tmp_path):
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    lines = [{"image": f"{i}.png", "prompt": f"prompt {i}", "method": "m", "seed": i, "references": []} for i in range(2)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # rows in the evaluation table's format, as metrics.hps_job writes them: HPSv3 not importable here gives NaN rows,
    # then the values the other environment would have written
    rows, _, _ = evaluate(read_items(tmp_path / "manifest.jsonl"), {"hpsv3": {"checkpoint": "x"}}, ["HPSv3"],
                          missing="nan")
    rows["value"], rows["reason"] = [10.0, 13.0], ""
    rows.to_csv(tmp_path / "hpsv3.csv", index=False)
    metrics, tags = image_metrics(tmp_path, {}, [""], tmp_path / "eval", [tmp_path / "hpsv3.csv"])
    assert metrics["img/HPSv3"] == pytest.approx(11.5) and metrics["count/HPSv3"] == 2
    assert set(pd.read_csv(tmp_path / "eval" / TABLE)["metric"]) == {"HPSv3"}


def test_hps_job_without_hpsv3_fails_clearly_and_writes_nothing(tmp_path):
    """`python -m metrics.hps_job` (the rule evaluate_hpsv3's command) in an environment without the hpsv3
    package: the error names the package and its environment, and no table is left for the merge to read."""
    import importlib.util

    from metrics.hps_job import main
    from metrics.registry import MetricUnavailable

    if importlib.util.find_spec("hpsv3") is not None:
        pytest.skip("hpsv3 is installed here")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "0.png")
    line = {"image": "0.png", "prompt": "p", "method": "m", "seed": 0, "references": []}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(MetricUnavailable, match="hpsv3.*workflow/envs/hpsv3.yaml"):
        main([str(tmp_path / "manifest.jsonl"), str(tmp_path / "out.csv"), "--checkpoint", "x", "--device", "cpu"])
    assert not (tmp_path / "out.csv").exists()
