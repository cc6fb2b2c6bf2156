"""Evaluation metrics (CLIP-I/T, DINO, ID-Sim, IP-Sim, HPS, mechanism metrics, the places world's per-subject scores).

Roles: the engine (`evaluate`: scores a sample folder; `registry`: the metric classes; `manifest`: the
generated-images format; `config`: the metric config sections; `cli`: `mosaic eval`), one module per metric
family (`clip`, `dino`, `faces`, `ipsim`, `hps`, `hps_job`, `aes`, `dpg`, `unified_reward`, `attention`,
`subjects`), the third-party networks they load (`backbones/`) and the tiny world's own evaluators
(`tiny_evaluators/`, which trains its CLIP and DINO).
Entry points: `metrics.evaluate.evaluate` / `evaluate_folder` (library), `mosaic eval` (CLI),
`metrics.tiny_evaluators.train_evaluators` (the tiny profile's CLIP and DINO).
"""
