# Captum attributions for every held-out patient, by the fold model that did not see it.


rule explain:
    input:
        store=f"{OUT}/cohort.zarr",
        model=f"{OUT}/model",
    output:
        directory(f"{OUT}/explain"),
    log:
        f"{LOGS}/explain.log",
    benchmark:
        f"{OUT}/benchmarks/explain.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        config=CONFIG_OPTION,
        settings=config["explain"],  # reruns when this section changes, not on any edit of the file
    shell:
        "multimodal explain -q --store {input.store:q} --model {input.model:q} {params.config} --threads {threads} --out {output:q}"
        " > {log:q} 2>&1"
