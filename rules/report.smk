# One self-contained HTML report.


rule report:
    input:
        store=f"{OUT}/cohort.zarr",
        model=f"{OUT}/model",
        explain=f"{OUT}/explain",
        config=workflow.configfiles[-1] if workflow.configfiles else [],
    output:
        f"{OUT}/report.html",
    params:
        config=lambda wc, input: option("--config", input.config),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/multimodal.yaml"
    shell:
        "multimodal report -q --store {input.store:q} --model {input.model:q} --explain {input.explain:q}"
        " {params.config} --out {output:q} > {log:q} 2>&1"
