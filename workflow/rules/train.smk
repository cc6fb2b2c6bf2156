# Training through the DeepSpeed trainer (mosaic.train): the tiny base model once (tiny profile),
# then one LoRA per (method, ktrain, seed) of the grid. A controlled baseline trains here too, with
# its own settings and extension (baselines.controlled). Each run folder holds its own MLflow
# store (the per-step metrics); the mlflow_log jobs copy it into results/mlflow/.
# GPUs: resources gpu (the SLURM profile sets it); more than one -> training.launch (torchrun).

if BASE:

    rule train_base:
        input:
            validated(f"train_k{config['data']['train']['k_max']}"),
        output:
            directory(f"{R}/runs/base"),
        log:
            log_file("train", "base"),
        benchmark:
            bench_file("train", "base")
        conda:
            ENV
        threads: config["threads"]
        priority: 10  # every training waits for it
        resources:
            gpu=config["training"]["gpus"],
        params:
            sets=base_overrides(),
            launch=lambda wc, resources: launcher(resources),
            script=f"{SCRIPTS}/train.py",
        shell:
            "OMP_NUM_THREADS={threads} {params.launch} {params.script} --out {output} --set {params.sets:q}"
            " > {log} 2>&1"


rule train:
    input:
        data=lambda wc: validated(f"train_k{wc.ktrain}"),
        val=validated("val"),
        base=f"{R}/runs/base" if BASE else [],
    output:
        directory(f"{R}/runs/{TRAIN_PATTERN}"),
    log:
        log_file("train", TRAIN_PATTERN),
    benchmark:
        bench_file("train", TRAIN_PATTERN)
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=config["training"]["gpus"],
    params:
        sets=lambda wc: train_overrides(wc.method, wc.ktrain, wc.seed),
        baseline=lambda wc: f"--baseline {b}" if (b := METHODS[wc.method].get("baseline")) else "",
        launch=lambda wc, resources: launcher(resources),
        script=f"{SCRIPTS}/train.py",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} {params.script} --out {output} {params.baseline}"
        " --set {params.sets:q} > {log} 2>&1"
