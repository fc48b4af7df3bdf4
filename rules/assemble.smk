# One Zarr v3 cohort store per cohort, written atomically; plus a human summary of it.


rule assemble:
    input:
        clinical=config["clinical"],
        samples=config["samples"],
        variants=modality_chunks("variants"),
        imaging=modality_chunks("imaging"),
        expression=(
            [f"{OUT}/interim/expression/expression.h5ad"] if HAS_EXPRESSION else []
        ),
        counts=config["expression"] if HAS_EXPRESSION else [],
        maf=MAF or [],
        tables=expand(f"{OUT}/interim/table/{{name}}.h5ad", name=list(TABLES))
        + ([f"{OUT}/interim/cnv/cnv.h5ad"] if config.get("copy_number") else [])
        + (
            [f"{OUT}/interim/cohort_variants/cohort_variants.h5ad"]
            if config.get("cohort_vcf")
            else []
        ),
        table_sources=list(TABLES.values())
        + (CNV.files() if CNV else [])
        + ([config["cohort_vcf"]] if config.get("cohort_vcf") else []),
    output:
        directory(f"{OUT}/cohort.zarr"),
    log:
        f"{LOGS}/assemble.log",
    benchmark:
        f"{OUT}/benchmarks/assemble.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=table_memory_mb(4000),
        runtime=30,
    params:
        variants=lambda wc, input: option("--variants", input.variants),
        imaging=lambda wc, input: option("--imaging", input.imaging),
        expression=lambda wc, input: f'{option("--expression", input.expression)} {option("--counts", input.counts)}',
        config=CONFIG_OPTION,
        privacy=config["privacy"],  # reruns when pseudonymisation is turned on or off
        settings=config["clinical_columns"],  # reruns when this section changes, not on any edit of the file
        maf=lambda wc, input: option("--maf", input.maf),
        tables=lambda wc, input: f'{table_options(input.tables)} {option("--table-source", input.table_sources)}',
    shell:
        "multimodal assemble -q --clinical {input.clinical:q} --samples {input.samples:q} {params.variants}"
        " {params.expression} {params.imaging} {params.maf} {params.tables} {params.config} --out {output:q}"
        " > {log:q} 2>&1"


rule inspect:
    input:
        f"{OUT}/cohort.zarr",
    output:
        f"{OUT}/cohort_summary.txt",
    log:
        f"{LOGS}/inspect.log",
    benchmark:
        f"{OUT}/benchmarks/inspect.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    shell:
        "multimodal inspect -q {input:q} > {output:q} 2> {log:q}"
