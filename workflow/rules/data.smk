# Data: train_k{K} (1..K subjects per sample: K is the most subjects a training sees), val (the
# trainer's mechanism evaluation), test_k{n} (exactly n subjects: the held-out evaluation sets),
# with disjoint identities. Tiny: the synthetic world. Paper: Subjects200K (+ SemAlign
# correspondences) converted per identity split, then composed: K = 1 samples are the Subjects200K pairs
# themselves (as upstream trains), K >= 2 collages whose prompts keep each subject's description (docs/fidelity.md).


rule synthetic_split:
    output:
        directory(f"{R}/data/synthetic/{{split}}"),
    log:
        log_file("data", "synthetic_{split}"),
    conda:
        ENV
    params:
        s=lambda wc: split_settings(wc.split),
        ids=lambda wc: identity_split(wc.split),
        seed=config["data"]["seed"],
        world=config["data"].get("world", "blobs"),
        tsize=config["data"]["target_size"],
        rsize=config["data"]["ref_size"],
    wildcard_constraints:
        split=r"(train|base)_k\d+|val|test_k\d+",
    shell:
        "python -m mosaic.cli data generate --out {output} --split {params.ids} --seed {params.seed}"
        " --n {params.s[0]} --k-min {params.s[1]} --k-max {params.s[2]} --world {params.world}"
        " --target-size {params.tsize} --ref-size {params.rsize} > {log} 2>&1"


rule subjects200k_part:
    output:
        directory(f"{R}/data/subjects200k/{{part}}"),
    log:
        log_file("data", "subjects200k_{part}"),
    conda:
        ENV
    params:
        parquet=lambda wc: config["data"]["subjects200k"]["parts"][wc.part],
        annotations=lambda wc: config["data"]["subjects200k"]["annotations"],
        limit=lambda wc: f"--limit {n}" if (n := config["data"]["subjects200k"].get("limit")) else "",
    wildcard_constraints:
        part="train|val|test",
    shell:
        "python -m mosaic.cli data subjects200k {params.parquet:q} --annotations {params.annotations:q}"
        " --out {output} {params.limit} > {log} 2>&1"


rule collage_split:
    input:
        lambda wc: f"{R}/data/subjects200k/{identity_split(wc.split)}",
    output:
        directory(f"{R}/data/collage/{{split}}"),
    log:
        log_file("data", "collage_{split}"),
    conda:
        ENV
    params:
        s=lambda wc: split_settings(wc.split),
        ks=lambda wc: " ".join(map(str, range(split_settings(wc.split)[1], split_settings(wc.split)[2] + 1))),
        seed=config["data"]["seed"],
        canvas=config["data"]["target_size"],
    wildcard_constraints:
        split=r"train_k\d+|val|test_k\d+",
    shell:
        "python -m mosaic.cli data collage {input} --out {output} --n {params.s[0]} --seed {params.seed}"
        " --k {params.ks} --canvas {params.canvas} > {log} 2>&1"


rule data_validate:
    input:
        f"{R}/data/{{kind}}/{{split}}",
    output:
        f"{R}/data/{{kind}}/{{split}}.validated.txt",
    log:
        log_file("data", "validate_{kind}_{split}"),
    conda:
        ENV
    wildcard_constraints:
        kind="synthetic|collage",
    shell:
        "python -m mosaic.cli data validate {input} --report {output} > {log} 2>&1"


rule data_preview:
    input:
        dataset("val"),
    output:
        report(f"{R}/figures/data_preview.png", caption="../report/data_preview.rst", category="Data"),
    log:
        log_file("data", "preview"),
    conda:
        ENV
    params:
        n=config["data"]["preview"]["n"],
    shell:
        "python -m mosaic.cli data preview {input} --out {output} --n {params.n} > {log} 2>&1"
