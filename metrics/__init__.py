"""Evaluation metrics (CLIP-I/T, DINO, ID-Sim, IP-Sim, HPS, mechanism metrics, the places world's per-subject scores).

Entry points: `metrics.evaluate.evaluate` / `evaluate_folder` (library), `mosaic eval` (CLI),
`metrics.tiny_evaluators.train_evaluators` (the tiny profile's CLIP and DINO). The generated-images
manifest format is documented in `metrics.manifest`; the config sections in `metrics.config`.
"""
