"""Controlled baselines: the defining mechanism of each published method, trained on MOSAIC's
backbone, data, trainer and budget, so that only the mechanism differs."""
