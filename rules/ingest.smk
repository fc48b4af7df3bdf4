# Per-modality ingest. Variants and imaging run in chunks of patients (ingest.variant_chunk_size, else
# ingest.chunk_size), not one job per patient; expression is one cohort-level table.


rule ingest_variants:
    input:
        samples=config["samples"],
        calls=lambda wc: chunk_files("variants", wc.chunk, ["vcf"]),
        maf=MAF or [],
        genes=(config["ingest"].get("variant_filters") or {}).get("genes") or [],
    output:
        f"{OUT}/interim/variants/chunk_{{chunk}}.h5ad",
    log:
        f"{LOGS}/ingest_variants/chunk_{{chunk}}.log",
    benchmark:
        f"{OUT}/benchmarks/ingest_variants/chunk_{{chunk}}.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        maf=lambda wc, input: option("--maf", input.maf),
        n_chunks=N_CHUNKS["variants"],
        territory_mb=config["ingest"]["territory_mb"],
        config=CONFIG_OPTION,  # for data_roots
        privacy=config["privacy"],  # reruns when pseudonymisation is turned on or off
        annotation_field=(
            option("--annotation-field", [config["ingest"]["annotation_field"]])
            if config["ingest"]["annotation_field"]
            else ""
        ),
        filters=variant_filter_options(config["ingest"]),
    shell:
        "multimodal ingest variants -q --samples {input.samples:q} --chunk {wildcards.chunk}"
        " --n-chunks {params.n_chunks} --territory-mb {params.territory_mb} {params.maf} {params.annotation_field}"
        " {params.filters} --out {output:q} {params.config} > {log:q} 2>&1"


rule ingest_expression:
    input:
        samples=config["samples"],
        counts=config["expression"] or [],
        rna_files=(
            [p for p in SAMPLES["rna_file"] if p]
            if "rna_file" in SAMPLES.columns
            else []
        ),
        tx2gene=config["ingest"].get("tx2gene") or [],
    output:
        f"{OUT}/interim/expression/expression.h5ad",
    log:
        f"{LOGS}/ingest_expression.log",
    benchmark:
        f"{OUT}/benchmarks/ingest_expression.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=table_memory_mb(4000),
        runtime=30,
    params:
        values=config["ingest"]["expression_values"],
        counts=lambda wc, input: option("--counts", input.counts),
        formats=expression_format_options(config["ingest"]),
        config=CONFIG_OPTION,  # for data_roots
        privacy=config["privacy"],  # reruns when pseudonymisation is turned on or off
    shell:
        "multimodal ingest expression -q --samples {input.samples:q} {params.counts} {params.formats}"
        " --values {params.values} --out {output:q} {params.config}"
        " > {log:q} 2>&1"


rule ingest_imaging:
    input:
        samples=config["samples"],
        images=lambda wc: chunk_files("imaging", wc.chunk, ["image", "mask"]),
    output:
        f"{OUT}/interim/imaging/chunk_{{chunk}}.h5ad",
    log:
        f"{LOGS}/ingest_imaging/chunk_{{chunk}}.log",
    benchmark:
        f"{OUT}/benchmarks/ingest_imaging/chunk_{{chunk}}.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: config["ingest"].get("imaging_threads", 1)
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        n_chunks=N_CHUNKS["imaging"],
        bin_count=config["ingest"]["bin_count"],
        bin_width=(
            option("--bin-width", [str(config["ingest"]["bin_width"])])
            if config["ingest"].get("bin_width")
            else ""
        ),
        aggregations=" ".join(config["ingest"].get("texture_aggregations") or ["3D"]),
        config=CONFIG_OPTION,  # for data_roots
        privacy=config["privacy"],  # reruns when pseudonymisation is turned on or off
        mask_label=(
            option("--mask-label", [str(config["ingest"]["mask_label"])])
            if config["ingest"]["mask_label"]
            else ""
        ),
        roi_name=(
            option("--roi-name", [config["ingest"]["roi_name"]])
            if config["ingest"]["roi_name"]
            else ""
        ),
        processing=imaging_processing_options(config["ingest"]),
    shell:
        "multimodal ingest imaging -q --samples {input.samples:q} --chunk {wildcards.chunk}"
        " --n-chunks {params.n_chunks} --bin-count {params.bin_count} {params.bin_width}"
        " --texture-aggregations {params.aggregations} {params.mask_label} {params.roi_name} {params.processing}"
        " --threads {threads} --out {output:q} {params.config} > {log:q} 2>&1"


rule ingest_cohort_vcf:
    input:
        samples=config["samples"],
        vcf=config["cohort_vcf"] or [],
    output:
        zarr=directory(f"{OUT}/interim/cohort.vcz"),
        h5ad=f"{OUT}/interim/cohort_variants/cohort_variants.h5ad",
    log:
        f"{LOGS}/ingest_cohort_vcf.log",
    benchmark:
        f"{OUT}/benchmarks/ingest_cohort_vcf.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        chunks=config["ingest"]["cohort_vcf_chunks"],
        scheduler=(
            option("--scheduler", [config["ingest"]["dask_scheduler"]])
            if config["ingest"].get("dask_scheduler")
            else ""
        ),
        filters=variant_filter_options(config["ingest"]),
        annotation_field=config["ingest"]["annotation_field"] or "CSQ",
        config=CONFIG_OPTION,  # for data_roots
    shell:
        "multimodal ingest cohort-vcf -q --samples {input.samples:q} --vcf {input.vcf:q} --zarr {output.zarr:q}"
        " --variants-chunk {params.chunks[variants]} --samples-chunk {params.chunks[samples]}"
        " --annotation-field {params.annotation_field} {params.scheduler} {params.filters} --threads {threads}"
        " --out {output.h5ad:q} {params.config} > {log:q} 2>&1"


# copy_number: a GISTIC2 table, or segment files + a gene BED (+ thresholds); CNV is None without it
from multimodal.ingest.copy_number import copy_number_source

CNV = copy_number_source(config.get("copy_number"))


rule ingest_copy_number:
    input:
        samples=config["samples"],
        sources=CNV.files() if CNV else [],
    output:
        f"{OUT}/interim/cnv/cnv.h5ad",
    log:
        f"{LOGS}/ingest_copy_number.log",
    benchmark:
        f"{OUT}/benchmarks/ingest_copy_number.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        source=CNV.cli_options() if CNV else "",  # --table, or --segments/--genes-bed/--thresholds
        config=CONFIG_OPTION,  # for data_roots
    shell:
        "multimodal ingest copy-number -q --samples {input.samples:q} {params.source}"
        " --out {output:q} {params.config} > {log:q} 2>&1"


rule ingest_table:
    input:
        samples=config["samples"],
        table=lambda wc: TABLES[wc.name],
    output:
        f"{OUT}/interim/table/{{name}}.h5ad",
    log:
        f"{LOGS}/ingest_table/{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/ingest_table/{{name}}.tsv"
    conda:
        "../envs/multimodal.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        id_column=config["table_id_column"],
        config=CONFIG_OPTION,  # for data_roots
        privacy=config["privacy"],  # reruns when pseudonymisation is turned on or off
    shell:
        "multimodal ingest table -q --samples {input.samples:q} --table {input.table:q} --name {wildcards.name}"
        " --id-column {params.id_column:q} --out {output:q} {params.config} > {log:q} 2>&1"
