"""`mosaic data`: generate the synthetic world, draw contact sheets, validate dataset folders."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    g = sub.add_parser("generate", help="write a synthetic multi-subject dataset folder")
    g.add_argument("--out", required=True, help="dataset folder to create")
    g.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="identity split; splits share no subject")
    g.add_argument("--k-min", type=int, default=1, help="fewest subjects per sample")
    g.add_argument("--k-max", type=int, default=4, help="most subjects per sample")
    g.add_argument("--target-size", type=int, default=96, help="target image side in px")
    g.add_argument("--ref-size", type=int, default=48, help="reference image side in px")
    g.add_argument("--world", default="blobs", help="named world (mosaic.data.synthetic.WORLDS): blobs (version 2, "
                   "free layout, full phrases) or places (subjects in named places, identity only in the references)")
    g.add_argument("--shared-colours", action="store_true",
                   help="let a sample's subjects share colours (generator version 1's rule: similar subjects)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")

    v = sub.add_parser("preview", help="draw a contact sheet of a dataset's first samples")
    v.add_argument("dataset", help="dataset folder")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--n", type=int, default=4, help="number of samples (default 4)")
    v.add_argument("--tokens", type=int, nargs=2, metavar=("DOWNSAMPLE", "PATCH"),
                   help="also draw the token grid (e.g. 4 2 for the tiny profile)")

    c = sub.add_parser("validate", help="check a dataset folder; exit 1 if it has problems")
    c.add_argument("path", help="dataset folder")
    c.add_argument("--flavour", help="also list the prompts this model flavour's text encoder would truncate")
    c.add_argument("--weights", help="with a t5-clip flavour: the local diffusers FLUX folder (its tokenizers)")
    c.add_argument("--report", help="also write the report to this file, only when the folder is valid (atomically)")

    m = sub.add_parser("collage", help="compose single-subject samples into multi-subject collages")
    m.add_argument("source", help="dataset folder of single-subject samples")
    m.add_argument("--out", required=True, help="dataset folder to create")
    m.add_argument("--n", type=int, default=100, help="number of collages")
    m.add_argument("--k", type=int, nargs="+", default=[2], help="subjects per collage (one or several K)")
    m.add_argument("--canvas", type=int, default=512, help="canvas side in px")
    m.add_argument("--single", choices=["pair", "collage"], default="pair",
                   help="K = 1: the source pair itself, as upstream trains (default), or a one-subject collage")
    m.add_argument("--prompt", choices=["descriptions", "phrases"], default="descriptions",
                   help="a collage's prompt: the phrases then each subject's description (default), or the phrases")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("subjects200k", help="convert Subjects200K parquet + SemAlign annotations to a dataset")
    s.add_argument("parquet", nargs="+", help="Subjects200K parquet files")
    s.add_argument("--annotations", required=True, help="folder holding mask/ and coord/{dift,geoaware}/")
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--limit", type=int, help="stop after this many samples")
    s.add_argument("--overwrite", action="store_true")

    b = sub.add_parser("benchmark", help="list a benchmark protocol's runnable and skipped entries")
    b.add_argument("name", choices=["dreambench", "xversebench"])
    b.add_argument("scenario", choices=["single", "multi"])
    b.add_argument("--root", help="benchmarks folder (default: $MOSAIC_BENCHMARKS or ../shared/benchmarks)")


def _generate(args) -> int:
    from .synthetic import generate_dataset, world_config

    cfg = replace(world_config(args.world), target_size=args.target_size, ref_size=args.ref_size,
                  distinct_colours=not args.shared_colours)
    out = generate_dataset(args.out, args.n, args.seed, args.split, args.k_min, args.k_max, cfg, args.overwrite)
    print(f"wrote {args.n} {args.split} samples (K in [{args.k_min}, {args.k_max}], seed {args.seed}) to {out}")
    return 0


def _preview(args) -> int:
    from .dataset import TokenSpec
    from .preview import write_preview
    from .records import load_sample, read_manifest

    spec = None
    if args.tokens:
        records = read_manifest(args.dataset)
        if not records:
            raise ValueError(f"{args.dataset}: empty manifest")
        first = load_sample(args.dataset, records[0])
        spec = TokenSpec(first.target.shape[:2], first.references[0].image.shape[:2], *args.tokens)
    out = write_preview(args.dataset, args.out, n=args.n, spec=spec)
    print(f"wrote {out}")
    return 0


def _validate(args) -> int:
    from .records import read_manifest
    from .validate import validate_dataset

    encoder = None
    if args.flavour:
        from ..model.text import prompt_checker

        encoder = prompt_checker(args.flavour, args.weights)
    problems = validate_dataset(args.path, **({"text_encoder": encoder} if encoder else {}))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    report = f"OK: {len(read_manifest(args.path))} samples"
    print(report)
    if args.report:
        from ..infra.runfolder import atomic_write

        atomic_write(args.report, report + "\n")
    return 0


def _collage(args) -> int:
    from .collage import CollageLayout, CollageStyle, write_collages

    out = write_collages(args.source, args.out, args.n, args.k, args.seed, args.overwrite,
                         CollageStyle(single=args.single, prompt=args.prompt),
                         CollageLayout(canvas_size=(args.canvas, args.canvas)))
    print(f"wrote {args.n} collages (K in {args.k}) to {out}")
    return 0


def _subjects200k(args) -> int:
    from .subjects200k import convert_subjects200k

    report = convert_subjects200k(args.parquet, args.annotations, args.out, args.overwrite, args.limit)
    print(f"wrote {args.out}: {report.summary()}")
    return 0


def _benchmark(args) -> int:
    from .benchmarks import load_benchmark

    bset = load_benchmark(args.name, args.scenario, args.root)
    print(bset.summary())
    for s in bset.skipped:
        print(f"skipped {s.id}: {s.reason}")
    return 0


def run(args) -> int:
    return {"generate": _generate, "preview": _preview, "validate": _validate, "collage": _collage,
            "subjects200k": _subjects200k, "benchmark": _benchmark}[args.data_command](args)
