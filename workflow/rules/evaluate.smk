# Evaluation: the metrics suite (metrics.evaluate) on each sample folder with the metrics of its
# evaluation set, collected with the mechanism metrics of the sampling job into one record per
# evaluation (the mlflow_log job logs it); figure: a sample sheet with attention overlays.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        directory(f"{R}/evals/{{source}}/evalset~{{evalset}}"),
    log:
        log_file("evaluate", "{source}", "{evalset}"),
    benchmark:
        bench_file("evaluate", "{source}", "{evalset}")
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=min(1, config["training"]["gpus"]),
    params:
        args=evaluate_args,
        script=f"{SCRIPTS}/evaluate.py",
    shell:
        "OMP_NUM_THREADS={threads} python {params.script} {input.samples} --metrics-config {input.metrics}"
        " {params.args} --out {output} > {log} 2>&1"


# HPSv3 in its own environment (workflow/envs/hpsv3.yaml: the hpsv3 package pins an older transformers):
# metrics.hps_job scores the sample folder's manifest into rows of the evaluation table, which the evaluate
# job above merges (--extra-table) before aggregating.
rule evaluate_hpsv3:
    input:
        samples=lambda wc: samples_dir(wc.source, wc.evalset),
    output:
        own_env_table("HPSv3", "{source}", "{evalset}"),
    log:
        log_file("evaluate_hpsv3", "{source}", "{evalset}"),
    benchmark:
        bench_file("evaluate_hpsv3", "{source}", "{evalset}")
    conda:
        "../envs/hpsv3.yaml"
    resources:
        gpu=min(1, config["training"]["gpus"]),
    params:
        checkpoint=config["metrics"]["config"].get("hpsv3", {}).get("checkpoint"),
    shell:
        "python -m metrics.hps_job {input.samples}/manifest.jsonl {output} --checkpoint {params.checkpoint}"
        " --device cuda > {log} 2>&1"
