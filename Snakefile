# MOSAIC harness workflow: a thin root; the rules live in workflow/rules/ by topic.
#
#   snakemake --cores all results/ablation.csv                        # the tiny profile (default)
#   snakemake --cores all                                             # every table, figure and the gallery
#   snakemake -n --configfile workflow/config/paper.yaml              # the paper profile's DAG
#   snakemake --workflow-profile workflow/profiles/slurm              # the paper profile on SLURM
#   snakemake --report results/report.html
#
# Outputs go under config `results`: results/ (tiny), results-paper/ (paper), so the two profiles never
# share a job, a file or an MLflow store.
#
# Grids (planned in workflow/lib/plan.py, a Paramspace in workflow/rules/common.smk): every training is one
# (method, ktrain, seed) instance, shared by the studies that use it; every evaluation one (training, evalset).
# MLflow: one sqlite store under <results>/mlflow/, created once in `onstart` with its generation id
# (a param of every logging job: a new store reruns them); the `mlflow_log` jobs (re)log finished
# trainings and evaluations into it, one experiment per study.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


# A --configfile is a complete profile (paper.yaml, or a copy of tiny.yaml); without one, tiny.yaml.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "workflow/config/tiny.yaml")


validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/evaluators.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/gallery.smk"
include: "workflow/rules/artefacts.smk"


onstart:
    # the first writes of a run, after the DAG is built (parsing writes nothing: common.smk)
    create_store()
    write_generation()


rule all:
    input:
        all_targets(),
    default_target: True
