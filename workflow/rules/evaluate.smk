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
