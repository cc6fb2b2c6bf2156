# MOSAIC harness workflow: thin root; rules live in workflow/rules/ by topic.
# Run: snakemake --cores all results/ablation.csv   (tiny profile by default)
#      snakemake --cores all --configfile workflow/config/paper.yaml ...   (paper profile)
import os

from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "workflow/config/tiny.yaml"


validate(config, "workflow/schemas/config.schema.yaml")
RESULTS = config["results"]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


include: "workflow/rules/data.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    input:
        rules.ablation.output,
