# Shipped artefacts: the tiny base and the tiny-world evaluators, trained by this DAG when the config
# says `retrain: true`, then copied with their provenance (command, config, git sha, versions, sha256
# of every file) into the repository folder `artefacts`, which every later run uses and verifies:
#
#   snakemake --cores all ship --config retrain=True

if config.get("artefacts") and config.get("retrain") and HAS_BASE and HAS_TINY_EVALUATORS:

    rule ship:
        input:
            base=f"{R}/runs/base/{DONE}",
            evaluators=f"{R}/evaluators",
        output:
            directory(os.path.join(ROOT, config["artefacts"])),
        log:
            log_file("artefacts", "ship"),
        conda:
            ENV
        params:
            record=json.dumps({"data": {k: config["data"][k] for k in ("world", "seed", "target_size", "ref_size", "base")
                                        if k in config["data"]},
                               "base_split": base_split(), "training_base": config["training"]["base"],
                               "training_common": config["training"]["common"],
                               "evaluators": config["metrics"]["evaluators"]}),
            script=f"{SCRIPTS}/ship.py",
        shell:
            "python {params.script} --base {R}/runs/base --evaluators {input.evaluators} --out {output}"
            " --command 'snakemake --cores all ship --config retrain=True' --record {params.record:q} > {log} 2>&1"
