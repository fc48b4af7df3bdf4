# One self-contained HTML report.


rule report:
    input:
        store=f"{OUT}/cohort.zarr",
        model=f"{OUT}/model",
        explain=f"{OUT}/explain",
    output:
        f"{OUT}/report.html",
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=CONFIG_OPTION,
        settings=config["report"],  # reruns when this section changes, not on any edit of the file
    shell:
        "multimodal report -q --store {input.store:q} --model {input.model:q} --explain {input.explain:q}"
        " {params.config} --out {output:q} > {log:q} 2>&1"
