"""The `mosaic` command line: one entry point, subcommands imported lazily.

Each subcommand lives beside the code it drives; this module only parses arguments and
dispatches, so `mosaic --help` stays fast and heavy imports happen only when used.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (help, "module:function adding arguments to a subparser", "module:function to run")
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("Generate, preview and validate multi-subject datasets", "mosaic.data.cli"),
    "eval": ("Score generated images (CLIP-I/T, DINO, ID-Sim, IP-Sim, HPS, mechanism)", "metrics.cli"),
    "sample": ("Generate images from a trained run (MOSAIC or a controlled baseline) with a manifest", "mosaic.sample"),
    "train": ("Train the MOSAIC reference LoRA (or the tiny base) with DeepSpeed, logging to MLflow", "mosaic.train"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosaic", description="MOSAIC benchmark and ablation harness")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, module) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"mosaic {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
