# Sampling (mosaic.inference.sampler): every trained run on each evaluation set of the studies using it, with the
# per-reference attention maps; FLUX's flow-matching Euler sampler, evalsets.<family>.steps steps. On
# held-out sets the same job measures the run's mechanism metrics (alignment accuracy, leakage), which
# need the model, not the images.


rule sample:
    input:
        run=f"{R}/runs/{TRAIN_PATTERN}/{DONE}",
        data=sample_inputs,
    output:
        directory(f"{R}/samples/{TRAIN_PATTERN}/evalset~{{evalset}}"),
    log:
        log_file("sample", TRAIN_PATTERN, "{evalset}"),
    benchmark:
        bench_file("sample", TRAIN_PATTERN, "{evalset}")
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=min(1, config["training"]["gpus"]),
    params:
        run=lambda wc, input: run_dir(input.run),
        source=lambda wc: sample_source(wc.evalset),
        seeds=lambda wc: " ".join(map(str, EVALSETS[wc.evalset]["seeds"])),
        steps=lambda wc: EVALSETS[wc.evalset]["steps"],
        cfg=lambda wc: EVALSETS[wc.evalset].get("cfg_scale", 1.0),
        prep=lambda wc: EVALSETS[wc.evalset].get("ref_preprocess", "upstream"),
        mechanism=lambda wc: "--mechanism" if EVALSETS[wc.evalset]["mechanism"] else "",
        script=f"{SCRIPTS}/sample.py",
    shell:
        "OMP_NUM_THREADS={threads} python {params.script} --run {params.run} {params.source} --seeds {params.seeds}"
        " --steps {params.steps} --cfg-scale {params.cfg} --ref-preprocess {params.prep} {params.mechanism}"
        " --out {output} > {log} 2>&1"


# The bounds of the image metrics on a held-out set (mosaic.inference.bounds): its real target images (ceiling)
# and the same scenes' backgrounds alone (floor), scored like any method's images.
# Bound "base": the base model sampled from the prompt alone, no references (what the references add).
BOUNDS = sorted({m for s in STUDIES for m in study_untrained(s) if METHODS[m].get("bound") in ("ceiling", "floor")})
BASE_BOUNDS = sorted({m for s in STUDIES for m in study_untrained(s) if METHODS[m].get("bound") == "base"})
if BOUNDS:

    rule sample_bound:
        input:
            data=sample_inputs,
        output:
            directory(f"{R}/samples/bounds/method~{{bound}}/evalset~{{evalset}}"),
        log:
            log_file("sample", "bounds", "{bound}", "{evalset}"),
        conda:
            ENV
        wildcard_constraints:
            bound="|".join(BOUNDS),
        params:
            kind=lambda wc: METHODS[wc.bound]["bound"],
            source=lambda wc: sample_source(wc.evalset),
            seeds=lambda wc: " ".join(map(str, EVALSETS[wc.evalset]["seeds"])),
        shell:
            "python -m mosaic.cli sample --bound {params.kind} {params.source} --seeds {params.seeds}"
            " --method {wildcards.bound} --out {output} > {log} 2>&1"


if BASE_BOUNDS:

    rule sample_base_bound:
        input:
            data=sample_inputs,
            base=base_inputs(),
        output:
            directory(f"{R}/samples/bounds/method~{{bound}}/evalset~{{evalset}}"),
        log:
            log_file("sample", "bounds", "{bound}", "{evalset}"),
        benchmark:
            bench_file("sample", "bounds", "{bound}", "{evalset}")
        conda:
            ENV
        threads: config["threads"]
        wildcard_constraints:
            bound="|".join(BASE_BOUNDS),
        params:
            run=lambda wc, input: os.path.dirname(input.base[0]),  # the shipped artefacts or the DAG's base run
            source=lambda wc: sample_source(wc.evalset),
            seeds=lambda wc: " ".join(map(str, EVALSETS[wc.evalset]["seeds"])),
            steps=lambda wc: EVALSETS[wc.evalset]["steps"],
            cfg=lambda wc: EVALSETS[wc.evalset].get("cfg_scale", 1.0),
        shell:
            "OMP_NUM_THREADS={threads} python -m mosaic.cli sample --run {params.run} --no-references {params.source}"
            " --seeds {params.seeds} --steps {params.steps} --cfg-scale {params.cfg} --method {wildcards.bound}"
            " --out {output} > {log} 2>&1"
