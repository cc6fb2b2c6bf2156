"""MOSAIC benchmark and ablation harness: data, model, losses, trainer and sampler."""

__version__ = "0.1.0"
