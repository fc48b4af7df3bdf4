# k-fold cross-validation of the fusion model; uses a GPU when one is present (accelerator: auto).


rule train:
    input:
        store=f"{OUT}/cohort.zarr",
        config=workflow.configfiles[-1] if workflow.configfiles else [],
    output:
        directory(f"{OUT}/model"),
    params:
        config=lambda wc, input: f"--config {input.config}" if input.config else "",
    log:
        f"{LOGS}/train.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["resources"]["train_gpus"],
    conda:
        "../envs/multimodal.yaml"
    shell:
        "multimodal train --store {input.store} {params.config} --threads {threads} --out {output} > {log} 2>&1"
