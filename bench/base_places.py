"""Does the shipped base draw the places world? Its kinds at their prompted places, against the real targets.

    python bench/base_places.py --out runs/base_places [--artefacts artefacts/tiny-places] [--k 1 2 3]
        [--n 16] [--seeds 0 1] [--steps 28] [--cfg 3]

Writes held-out test scenes with K subjects (the world and sizes of the artefacts' base run), samples the
shipped base from each prompt alone (no references; `mosaic sample --no-references`), and scores every
prompted place of the samples and of the real targets with the shipped shape classifier (`Shape-Acc`)
and the per-subject colour scores (`Own-Ref`, `Other-Ref`; a base without references can only guess
colours). Prints per K the rates, the base's share of the real targets' Shape-Acc (issue 22's bar: at
least 80%), and writes a contact sheet (real targets on top, then one row per sampling seed) to
<out>/sheet.png. Rerunning reuses the samples already written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(images: list[np.ndarray], items, clf) -> dict[str, float]:
    """Shape-Acc, Own-Ref and Other-Ref (means over prompted places, x100) of images against their items."""
    from metrics.subjects import place_scores
    from mosaic.data.records import load_image

    shape, own, other = [], [], []
    for img, it in zip(images, items):
        boxes = [tuple(r["box"]) for r in it["references"]]
        kinds = clf.predict([img[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])
        shape += [k == r["phrase"].split(" at ")[0].split()[-1] for k, r in zip(kinds, it["references"])]
        refs = [load_image(Path(r["image"])) for r in it["references"]]
        for o, x, _ in place_scores(img, boxes, refs):
            own.append(o)
            other.append(x)
    other = np.array(other)  # NaN where a scene has one subject: nothing to leak
    return {"Shape-Acc": 100 * float(np.mean(shape)), "Own-Ref": float(np.mean(own)),
            "Other-Ref": float(np.nanmean(other)) if (~np.isnan(other)).any() else float("nan")}


def main() -> None:
    from metrics.tiny_evaluators.shape_training import load_shape_classifier
    from mosaic.data.synthetic import generate_dataset, world_config
    from mosaic.inference.sampler import Sampler, Sampling, dataset_requests, sample_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--artefacts", type=Path, default=ROOT / "artefacts" / "tiny-places")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--n", type=int, default=16, help="held-out scenes per K")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--world", help="the world (default: the artefacts' recorded data.world, else places)")
    a = p.parse_args()
    prov = json.loads((a.artefacts / "provenance.json").read_text())
    data = prov["config"]["data"]
    world = a.world or data.get("world", "places")  # artefacts shipped before data.world was recorded: places
    cfg = world_config(world, target_size=data["target_size"], ref_size=data["ref_size"])
    clf = load_shape_classifier(a.artefacts / "evaluators" / "shape")
    rows, sheet = [], []
    for k in a.k:
        test = a.out / "data" / f"test_k{k}"
        if not test.exists():
            generate_dataset(test, a.n, data["seed"], "test", k, k, cfg)
        reqs = dataset_requests(test)
        items = [r.record for r in reqs]
        real = [np.asarray(Image.open(test / "samples" / r.id / "target.png").convert("RGB")) for r in reqs]
        row = {"K": k, "scenes": len(reqs), **{f"real {m}": v for m, v in score(real, items, clf).items()}}
        sheet.append(np.concatenate(real[:8], 1))
        for seed in a.seeds:
            folder = a.out / "samples" / f"k{k}_s{seed}"
            if not (folder / "manifest.jsonl").is_file():
                sample_run(Sampler.from_run(a.artefacts, ref_preprocess="fit"), reqs, [seed], folder,
                           Sampling(a.steps, cfg_scale=a.cfg, references=False), method="base", overwrite=True)
            imgs = [np.asarray(Image.open(folder / "images" / f"{r.id}_s{seed}.png").convert("RGB")) for r in reqs]
            for m, v in score(imgs, items, clf).items():
                row.setdefault(f"base {m}", []).append(v)
            sheet.append(np.concatenate(imgs[:8], 1))
        for m in ("Shape-Acc", "Own-Ref", "Other-Ref"):
            v = np.array(row.pop(f"base {m}"))
            row[f"base {m}"], row[f"base {m} se"] = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
        row["base / real Shape-Acc"] = row["base Shape-Acc"] / row["real Shape-Acc"]
        rows.append(row)
        print(json.dumps(row))
    print("\n| K | real Shape-Acc | base Shape-Acc (± SE over seeds) | base / real (bar: 0.8) | real Own-Ref | base Own-Ref | base Other-Ref |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['K']} | {r['real Shape-Acc']:.1f} | {r['base Shape-Acc']:.1f} ± {r['base Shape-Acc se']:.1f} | "
              f"{r['base / real Shape-Acc']:.2f} | {r['real Own-Ref']:.1f} | {r['base Own-Ref']:.1f} | {r['base Other-Ref']:.1f} |")
    (a.out / "base_places.json").write_text(json.dumps(rows, indent=2))
    img = np.concatenate(sheet, 0)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(a.out / "sheet.png")
    print(f"contact sheet: {a.out / 'sheet.png'} (per K: real targets, then one row per sampling seed)")


if __name__ == "__main__":
    main()
