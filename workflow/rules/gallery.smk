# The comparison gallery (workflow.lib.gallery): for each evaluation set and prompt, the references, the
# ground truth and every method's image with its per-image metrics, from the MLflow runs of every study
# (a run several studies logged is one image, tagged with each). Static HTML linking the images by
# relative paths: open results/gallery/index.html in a browser, inside the results folder.


rule gallery:
    input:
        markers=list(dict.fromkeys(m for s in STUDIES for m in study_markers(s))),
        code=[f"{SCRIPTS}/gallery.py", os.path.join(LIB, "gallery.py")],
    output:
        report(GALLERY, caption="../report/gallery.rst", category="Gallery"),
    log:
        log_file("gallery"),
    benchmark:
        bench_file("gallery")
    conda:
        ENV
    params:
        studies=" ".join(STUDIES),
        # the studies' own order (bounds first and last), then the sweep's cells
        methods=json.dumps(list(dict.fromkeys([m for s in STUDIES for m in config["studies"][s].get("methods", [])]
                                              + list(METHODS)))),
        generation=GENERATION,
        store=lambda wc, input: input.markers[0].split("/logged/")[0],  # the markers live inside the store folder
        results=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),  # <results>/gallery/index.html
    shell:
        "python {input.code[0]} --store {params.store} --generation {params.generation} --results {params.results}"
        " --experiments {params.studies} --methods {params.methods:q} --out {output} > {log} 2>&1"
