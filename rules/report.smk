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
        config=lambda wc, input: f"--config {input.config}" if input.config else "",
    log:
        f"{LOGS}/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/multimodal.yaml"
    shell:
        "multimodal report -q --store {input.store} --model {input.model} --explain {input.explain}"
        " {params.config} --out {output} > {log} 2>&1"
