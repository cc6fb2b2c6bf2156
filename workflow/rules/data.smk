# Data: the tiny profile's synthetic world (train/val/test with disjoint identities) and its preview.

rule synthetic_split:
    output:
        directory(f"{RESULTS}/data/synthetic/{{split}}"),
    log:
        f"{RESULTS}/logs/data/synthetic_{{split}}.log",
    params:
        s=lambda wc: config["data"]["splits"][wc.split],
        seed=config["data"]["seed"],
        tsize=config["data"]["target_size"],
        rsize=config["data"]["ref_size"],
    wildcard_constraints:
        split="train|val|test",
    shell:
        "mosaic data generate --out {output} --split {wildcards.split} --seed {params.seed}"
        " --n {params.s[n]} --k-min {params.s[k_min]} --k-max {params.s[k_max]}"
        " --target-size {params.tsize} --ref-size {params.rsize} > {log} 2>&1"


rule data_preview:
    input:
        f"{RESULTS}/data/synthetic/{config['data']['preview']['split']}",
    output:
        f"{RESULTS}/figures/data_preview.png",
    log:
        f"{RESULTS}/logs/data/preview.log",
    params:
        n=config["data"]["preview"]["n"],
    shell:
        "mosaic data preview {input} --out {output} --n {params.n} > {log} 2>&1"


rule data_validate:
    input:
        f"{RESULTS}/data/synthetic/{{split}}",
    output:
        f"{RESULTS}/data/synthetic_{{split}}.validated.txt",
    log:
        f"{RESULTS}/logs/data/validate_{{split}}.log",
    shell:
        "mosaic data validate {input} > {output}.tmp 2> {log} && mv {output}.tmp {output}"
