"""The paper's tables, built from the MLflow runs of a study (mlflow.search_runs), never from side files.

Why it exists: every number in a table must be traceable to the runs it came from. An evaluation
run holds one cell (one training seed on one evaluation set of n subjects): image metrics
`img/<metric>` (means over images; labels such as "CLIP-I (tiny-world)" in tags `label/<metric>`)
and mechanism metrics `mech/alignment_acc`, `mech/leakage`, `mech/subject_leakage` (%).
Each table comes in two forms, one computed from the other:
- the tidy long table (`tidy`): one row per evaluation run x metric, with the run's grid tags, value,
  protocol, reason and the MLflow ids of the evaluation run and its training;
- the wide table, computed from the tidy rows (`summarise`): a row per group, per metric the mean, the
  standard deviation (pandas, ddof=1; NaN for one cell), the count of values, the standard error of the
  mean (std / sqrt(count)) and "mean ± SE"; `n seeds` counts the group's seeds. Its internal form keeps
  the numbers (`<metric> mean/std/se/cells/protocol`, run ids; the figures and the paper gaps read them);
  `readable` is what a reader gets (the study's CSV, Markdown and LaTeX: `write_tables`).
With the paper's reported values (../shared/paper/mosaic_reported.csv) a row also carries
`<metric> paper` and `<metric> gap` (measured - reported) where the paper reports that cell; every
metric of the paper's table is a column, NaN with its reason in `notes` when not measured. A gap is
printed only for a value computed as the paper's was: in the paper profile, under the paper's protocol
(PAPER_PROTOCOLS, against the run tags `protocol/<metric>`), on all the prompts of the benchmark's
protocol (`n run / n in protocol`); otherwise `notes` says why there is none.

- ablation: method (variant) x benchmark/scenario x n (held-out sets: one row per subject count, never
  pooled), over seeds;
- sweep: alpha x beta, over seeds and n;
- scaling: method x train K x n, over seeds;
- main: DreamBench single/multi, method, over seeds (with NaN reasons, e.g. a missing checkpoint);
- xversebench: XVerseBench single/multi, method, with the benchmark's runnable and skipped entries.

The steps, one module each: `tidy` (runs -> the long table), `summarise` (groups -> mean, std, SE),
`paper_gaps` (reported values and gaps), `studies` (each study's grouping and order), `render` (the files).
"""
from .paper_gaps import PAPER_PROTOCOLS, read_paper
from .render import readable, write_tables
from .studies import ablation_table, benchmark_long, benchmark_table, scaling_table, sweep_table
from .summarise import COVERAGE, display_metrics
from .tidy import CHANCES, ORDER, RUN_IDS, load_runs, metric_names, tidy

__all__ = ["PAPER_PROTOCOLS", "read_paper", "readable", "write_tables", "ablation_table", "benchmark_long",
           "benchmark_table", "scaling_table", "sweep_table", "COVERAGE", "display_metrics", "CHANCES", "ORDER",
           "RUN_IDS", "load_runs", "metric_names", "tidy"]
