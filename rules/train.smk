# k-fold cross-validation of the fusion model; uses a GPU when one is present (accelerator: auto).


rule train:
    input:
        store=f"{OUT}/cohort.zarr",
        splits=config["model"]["splits"] or [],  # user folds: a file, or a directory of split files
    output:
        directory(f"{OUT}/model"),
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{OUT}/benchmarks/train.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["resources"]["train_gpus"],
    params:
        config=CONFIG_OPTION,
        settings=config["model"],  # reruns when this section changes, not on any edit of the file
    shell:
        "multimodal train --store {input.store:q} {params.config} --threads {threads} --out {output:q} > {log:q} 2>&1"
