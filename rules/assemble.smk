# One Zarr v3 cohort store per cohort, written atomically; plus a human summary of it.


rule assemble:
    input:
        clinical=config["clinical"],
        samples=config["samples"],
        variants=modality_chunks("variants"),
        imaging=modality_chunks("imaging"),
        expression=[f"{OUT}/interim/expression/expression.h5ad"] if HAS_EXPRESSION else [],
        counts=config["expression"] if HAS_EXPRESSION else [],
        maf=MAF or [],
        config=workflow.configfiles[-1] if workflow.configfiles else [],
    output:
        directory(f"{OUT}/cohort.zarr"),
    params:
        variants=lambda wc, input: " ".join(["--variants", *input.variants]) if input.variants else "",
        imaging=lambda wc, input: " ".join(["--imaging", *input.imaging]) if input.imaging else "",
        expression=lambda wc, input: (
            f"--expression {input.expression} --counts {input.counts}" if input.expression else ""
        ),
        config=lambda wc, input: f"--config {input.config}" if input.config else "",
        maf=lambda wc, input: f"--maf {input.maf}" if input.maf else "",
    log:
        f"{LOGS}/assemble.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/multimodal.yaml"
    shell:
        "multimodal assemble -q --clinical {input.clinical} --samples {input.samples} {params.variants}"
        " {params.expression} {params.imaging} {params.maf} {params.config} --out {output} > {log} 2>&1"


rule inspect:
    input:
        f"{OUT}/cohort.zarr",
    output:
        f"{OUT}/cohort_summary.txt",
    log:
        f"{LOGS}/inspect.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        "../envs/multimodal.yaml"
    shell:
        "multimodal inspect -q {input} > {output} 2> {log}"
