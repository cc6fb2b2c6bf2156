"""The DreamBench and XVerseBench loaders feed `mosaic eval` end to end on real images, with tiny
random models (the first reference of each entry stands in for the generated image)."""
import json

import pandas as pd
import pytest

from metrics.tiny_evaluators.clip_training import new_clip, save_clip
from metrics.tiny_evaluators.dino_training import new_vit, save_dino
from mosaic.cli import main as mosaic_main
from mosaic.data.benchmarks import benchmark_record, benchmarks_root, load_benchmark

try:
    ROOT = benchmarks_root()
except Exception:  # noqa: BLE001  (no shared data on this machine)
    ROOT = None
pytestmark = pytest.mark.skipif(ROOT is None or not (ROOT / "dreambench").is_dir(), reason="needs ../shared/benchmarks")


def test_benchmarks_through_mosaic_eval(tmp_path, capsys):
    sets = {(b, s): load_benchmark(b, s) for b in ("dreambench", "xversebench") for s in ("single", "multi")}
    assert sets["xversebench", "multi"].skipped  # animals/objects are absent here: counted, not dropped
    lines = []
    for (bench, scenario), bs in sets.items():
        for e in bs.entries[:3]:
            lines.append(benchmark_record(e, image=str(e.references[0]), method="reference-as-output", seed=0))
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    save_clip(new_clip(3), tmp_path / "clip")
    save_dino(new_vit(4), tmp_path / "dino")
    clip = {"model": f"local-dir:{tmp_path / 'clip'}", "world": "random weights"}
    cfg = {"clip_i": clip, "clip_t": clip, "dino": {"model": f"local-dir:{tmp_path / 'dino'}", "world": "random weights"},
           "id_sim": {"protocol": "dlib"}, "ip_sim": {"localiser": "background", "max_instances": 3}}
    (tmp_path / "metrics.json").write_text(json.dumps(cfg))
    assert mosaic_main(["eval", str(tmp_path), "--config", str(tmp_path / "metrics.json"), "--batch-size", "4"]) == 0
    assert "CLIP-I (random weights)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "eval" / "metrics.csv")
    assert set(table.benchmark) == {"dreambench", "xversebench"}
    assert set(table.metric) == {"CLIP-I", "CLIP-T", "DINO", "ID-Sim", "IP-Sim"}
    first = table[table.reference == 0]
    for metric in ("CLIP-I", "DINO"):  # the "generated" image is reference 0 itself
        assert first[first.metric == metric].value.round(3).eq(100).all()
    ids = table[(table.metric == "ID-Sim") & (table.benchmark == "xversebench")]
    assert ids[ids.reference == 0].value.round(3).eq(100).all()
    assert (ids[ids.reference == 1].value < 99.9).all()  # a different person
    dream_ids = table[(table.metric == "ID-Sim") & (table.benchmark == "dreambench")]
    assert dream_ids.value.isna().all() and dream_ids.reason.str.startswith("not a human reference").all()
    ip = table[table.metric == "IP-Sim"]
    assert ip[ip.category == "human"].value.isna().all() and ip[ip.category != "human"].value.notna().all()
    agg = pd.read_csv(tmp_path / "eval" / "aggregate.csv")
    assert {"dreambench", "xversebench"} == set(agg.benchmark)
    info = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert info["n_items"] == len(lines)
