"""The `mosaic` command line: one entry point, subcommands imported lazily.

Why it exists: it is the composition root, the one module of `mosaic` that names the other
packages (as lazy "module:function" strings, never imports): `mosaic eval` runs the metrics
suite, and `mosaic sample --baseline` samples a registered baseline, while the method itself
knows neither. It only parses arguments and dispatches, so `mosaic --help` stays fast and heavy
imports happen only when used.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from .infra.registry import Registry, import_object


@dataclass(frozen=True)
class Command:
    help: str
    arguments: str  # "module:function" adding the subcommand's arguments to its parser
    run: str  # "module:function" running it on the parsed arguments


COMMANDS: Registry[Command] = Registry("command", {
    "data": Command("Generate, preview and validate multi-subject datasets",
                    "mosaic.data.cli:add_arguments", "mosaic.data.cli:run"),
    "eval": Command("Score generated images (CLIP-I/T, DINO, ID-Sim, IP-Sim, HPS, mechanism)",
                    "metrics.cli:add_arguments", "metrics.cli:run"),
    "plan": Command("Estimate per-GPU memory of a training config per ZeRO stage and GPU count, and the cards it fits",
                    "mosaic.memory_plan:add_arguments", "mosaic.memory_plan:run"),
    "sample": Command("Generate images from a trained run (MOSAIC or a controlled baseline) with a manifest",
                      "mosaic.inference.sampler:add_arguments", "mosaic.cli:run_sample"),
    "train": Command("Train the MOSAIC reference LoRA (or the tiny base) with DeepSpeed, logging to MLflow",
                     "mosaic.train:add_arguments", "mosaic.train:run"),
})


def run_sample(args: argparse.Namespace) -> int:
    """`mosaic sample`: a training run through mosaic.inference.sampler, a registered baseline through
    baselines.sample, a metric's bound through mosaic.inference.bounds."""
    target = ("baselines.sample:run" if args.baseline else "mosaic.inference.bounds:run" if args.bound
              else "mosaic.inference.sampler:run")
    return import_object(target)(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosaic", description="MOSAIC benchmark and ablation harness")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.help)
        sp.set_defaults(_run=cmd.run)
        import_object(cmd.arguments)(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(import_object(args._run)(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"mosaic {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
