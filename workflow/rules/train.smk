# Training through the DeepSpeed trainer (mosaic.train): the tiny base model once (tiny profile),
# then one LoRA per (method, ktrain, seed) of the grid. A controlled baseline trains here too, with
# its own settings and extension (baselines.controlled). Each run folder holds its own MLflow
# store (the per-step metrics); the mlflow_log jobs copy it into results/mlflow/.
# Pre-emption: a job's output is the marker <run>/done.json, written last, not the run folder, which
# Snakemake would delete with a failed job's outputs; so a killed training, rerun, resumes from its
# last checkpoint into the same MLflow run (workflow/scripts/train.py).
# GPUs: resources gpu (the SLURM profile sets it); more than one -> training.launch (torchrun).

if BASE:

    rule train_base:
        input:
            validated(base_split()),
        output:
            f"{R}/runs/base/{DONE}",
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
            data=lambda wc, input: data_dirs(input),
            launch=lambda wc, resources: launcher(resources),
            script=f"{SCRIPTS}/train.py",
        shell:
            "OMP_NUM_THREADS={threads} {params.launch} {params.script} --out {output} --inputs {input} {params.data}"
            " --set {params.sets:q} > {log} 2>&1"


rule train:
    input:
        data=lambda wc: validated(f"train_k{wc.ktrain}"),
        val=validated("val"),
        base=base_inputs(),
    output:
        f"{R}/runs/{TRAIN_PATTERN}/{DONE}",
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
        data=lambda wc, input: data_dirs(input),
        baseline=lambda wc: f"--baseline {b}" if (b := METHODS[wc.method].get("baseline")) else "",
        launch=lambda wc, resources: launcher(resources),
        script=f"{SCRIPTS}/train.py",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} {params.script} --out {output} {params.baseline}"
        " --inputs {input} {params.data} --set {params.sets:q} > {log} 2>&1"
