# Aggregation: (re)log finished runs into the MLflow store, then build the paper's tables from it.
#
# mlflow_log: one job per (study, training): the training run (copied from the run folder's own
# store, with its per-step metrics and artifacts) and one evaluation run per evaluation set, tagged
# with the training's run id, into the study's experiment. Re-running replaces the runs it logged
# before (tag wf_key). A new store (param generation, common.smk) reruns every logging job and table.
# Tables: workflow.lib.tables over mlflow.search_runs, with the run ids of every row.


rule mlflow_log:
    input:
        unpack(log_inputs),
    output:
        f"{LOGGED}/{{study}}/{{source}}.json",
    log:
        log_file("mlflow", "{study}", "{source}"),
    benchmark:
        bench_file("mlflow", "{study}", "{source}")
    conda:
        ENV
    params:
        tags=lambda wc: log_tags(wc.study, wc.source),
        run=lambda wc, input: f"--train {run_dir(input.run)}" if "run" in input.keys() else "",
        generation=GENERATION,
        store=lambda wc, output: output[0].split("/logged/")[0],  # the marker lives inside the store folder
        script=f"{SCRIPTS}/mlflow_log.py",
    shell:
        "python {params.script} --store {params.store} --generation {params.generation}"
        " --experiment {wildcards.study} {params.run} --evals {input.evals} --tags {params.tags:q} --out {output}"
        " > {log} 2>&1"


rule mlflow_log_shared:
    input:
        lambda wc: f"{R}/runs/base/{DONE}" if wc.name == "base" else f"{R}/evaluators",
    output:
        f"{LOGGED}/shared/{{name}}.json",
    log:
        log_file("mlflow", "shared", "{name}"),
    conda:
        ENV
    wildcard_constraints:
        name="base|evaluators",
    params:
        what=lambda wc, input: f"--train {run_dir(input[0])}" if wc.name == "base" else f"--evaluators {input[0]}",
        tags=lambda wc: json.dumps({"study": SHARED_EXPERIMENT, "method": wc.name}),
        experiment=SHARED_EXPERIMENT,
        generation=GENERATION,
        store=lambda wc, output: output[0].split("/logged/")[0],  # the marker lives inside the store folder
        script=f"{SCRIPTS}/mlflow_log.py",
    shell:
        "python {params.script} --store {params.store} --generation {params.generation}"
        " --experiment {params.experiment} {params.what} --tags {params.tags:q} --out {output} > {log} 2>&1"


for _study in STUDIES:

    rule:
        name:
            f"tables_{_study}"
        input:
            study_markers(_study),
            # the table code itself: a changed table or figure rebuilds the tables (cheap), not the runs
            code=[f"{SCRIPTS}/tables.py", *sorted(str(f) for f in Path(LIB, "tables").glob("*.py")),
                  *(os.path.join(LIB, f) for f in ("paper_columns.py", "figures.py"))],
        output:
            **{k: table_report(_study, k, p) for k, p in TABLE_OUTPUTS[_study].items()},
        log:
            log_file("tables", _study),
        conda:
            ENV
        params:
            cfg=table_params(_study),
            outs=" ".join(f"--out-{k} {p}" for k, p in TABLE_OUTPUTS[_study].items()),
            study=_study,
            generation=GENERATION,
            store=lambda wc, input: input[0].split("/logged/")[0],
        shell:
            "python {input.code[0]} {params.study} --store {params.store} --generation {params.generation}"
            " --config {params.cfg:q} {params.outs}"
            " > {log} 2>&1"
