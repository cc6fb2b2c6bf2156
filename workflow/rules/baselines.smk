# Baselines. The controlled re-implementations (omnicontrol, uno, dreamo, xverse) are methods with a
# `baseline:` key: they train in the `train` rule (same trainer, data and budget as MOSAIC) and are
# sampled like any run. The official releases (`official: true`, paper profile) need no training:
# one sampling rule each, in its own conda environment (workflow/envs/<name>.yaml; the SLURM profile
# turns conda on), on the benchmark evaluation sets. Without their code, weights or a GPU they fail
# with the adapter's message saying what to install and where the weights go.

for _name in sorted({m for s in STUDIES for m in study_official(s)}):

    rule:
        name:
            "sample_official_" + _name.replace("-", "_")
        output:
            directory(f"{R}/samples/official/method~{_name}/evalset~{{evalset}}"),
        log:
            log_file("sample", f"official/method~{_name}", "{evalset}"),
        conda:
            f"../envs/{METHODS[_name]['baseline']}.yaml"
        resources:
            gpu=1,
        params:
            source=lambda wc: sample_source(wc.evalset),
            seeds=lambda wc: " ".join(map(str, EVALSETS[wc.evalset]["seeds"])),
            args=official_args(_name),
            baseline=METHODS[_name]["baseline"],
        shell:
            "python -m mosaic.cli sample --baseline {params.baseline} {params.args}"
            " {params.source} --seeds {params.seeds} --out {output} > {log} 2>&1"
