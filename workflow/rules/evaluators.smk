# Metric models. Tiny: a CLIP and a DINO trained once on train-split identities of the synthetic
# world (metrics.tiny_evaluators; their numbers are tiny-world numbers). Paper: the published models,
# from the weights named in config metrics.config. Either way one metrics config file for the evaluations.

if TINY_EVALUATORS:

    rule tiny_evaluators:
        output:
            directory(f"{R}/evaluators"),
        log:
            log_file("evaluators", "tiny_world"),
        benchmark:
            bench_file("evaluators", "tiny_world")
        conda:
            ENV
        threads: config["threads"]
        priority: 10  # the longest job every evaluation waits for: start it first
        params:
            e=config["metrics"]["evaluators"],
            d=config["data"],
            world=config["data"].get("world", "blobs"),
            shape=config["metrics"]["evaluators"].get("shape_steps", 600),
        shell:
            "OMP_NUM_THREADS={threads} python -m metrics.tiny_evaluators {output} --clip-steps {params.e[clip_steps]}"
            " --dino-steps {params.e[dino_steps]} --shape-steps {params.shape} --n-train {params.e[n_train]}"
            " --seed {params.e[seed]}"
            " --world {params.world} --target-size {params.d[target_size]} --ref-size {params.d[ref_size]} > {log} 2>&1"


rule metrics_config:
    input:
        EVALUATORS or [],
    output:
        metrics_config_file(),
    log:
        log_file("evaluators", "metrics_config"),
    conda:
        ENV
    params:
        base=lambda wc, input: f"--base {input[0]}/metrics_config.json" if EVALUATORS else "--profile paper",
        overrides=json.dumps(config["metrics"]["config"]),
        script=f"{SCRIPTS}/metrics_config.py",
    shell:
        "python {params.script} {params.base} --overrides {params.overrides:q} --out {output} > {log} 2>&1"
