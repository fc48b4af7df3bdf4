# k-fold cross-validation of the fusion model; uses a GPU when one is present (accelerator: auto).


rule train:
    input:
        store=f"{OUT}/cohort.zarr",
        config=workflow.configfiles[-1] if workflow.configfiles else [],
    output:
        directory(f"{OUT}/model"),
    params:
        config=lambda wc, input: option("--config", input.config),
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{OUT}/benchmarks/train.tsv",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["resources"]["train_gpus"],
    conda:
        "../envs/multimodal.yaml"
    shell:
        "multimodal train --store {input.store:q} {params.config} --threads {threads} --out {output:q} > {log:q} 2>&1"
