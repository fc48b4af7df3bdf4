"""``multimodal <verb>``: one thin command line over the library.

Each verb parses and checks its arguments, then calls one library function. Problems the user can
fix are :class:`~multimodal.errors.MultimodalError`: printed as one line, non-zero exit code.
Heavy libraries are imported inside the verbs, so ``--help`` and light verbs start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from multimodal import __version__
from multimodal.errors import MultimodalError

log = logging.getLogger("multimodal")
#: Verbs whose --out is a stage output: each writes a manifest beside it (multimodal/verify.py).
MANIFEST_VERBS = frozenset({"ingest", "assemble", "train", "explain", "report"})


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: file not found")
    return path


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: is a file; a directory is expected here")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: directory not found")
    return path


def _json_list(value: str) -> list:
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(parsed, list):
        raise argparse.ArgumentTypeError("expected a JSON list of filter mappings")
    return parsed


def _positive_number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (number > 0 and number != float("inf")):
        raise argparse.ArgumentTypeError(f"{value} must be a positive number")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def _load_config(path: Path | None) -> dict:
    from multimodal.config import load_config, validate_config

    if path is None:
        return validate_config({"samples": "", "clinical": ""}, source="defaults")
    return load_config(path)


def _data_roots(args: argparse.Namespace, config: dict | None = None) -> list[Path] | None:
    """``--data-root`` directories, else the config's ``data_roots`` (``config`` when the verb already loaded
    it); None: the default (the sheet's and the working directory)."""
    if args.data_root:
        return list(args.data_root)
    if config is None:
        config = _load_config(args.config) if getattr(args, "config", None) else {}
    return [Path(r) for r in config.get("data_roots") or []] or None


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only: in a rule's log file they would be thousands of redrawn lines."""
    return not args.quiet and not os.environ.get("MULTIMODAL_NO_PROGRESS") and sys.stderr.isatty()


# --- verbs ---------------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> None:
    from multimodal.simulate import SimulationParams, simulate_cohort

    section = _load_config(args.config)["simulate"] if args.config else {}
    keys = ("n_patients", "seed", "image_size", "arm_kras_interaction")
    settings = {key: section[key] for key in keys if key in section}
    given = {"n_patients": args.patients, "seed": args.seed, "image_size": args.image_size}
    given["arm_kras_interaction"] = args.arm_kras_interaction
    settings.update({key: value for key, value in given.items() if value is not None})
    params = SimulationParams(**settings)
    out = args.out or Path(section.get("outdir", "demo"))
    simulate_cohort(out, params=params)
    log.info("wrote %d patients to %s (truth in %s)", params.n_patients, out, out / "truth.json")


def _write_h5ad(adata, out: Path) -> None:
    from multimodal.fileio import atomic_path

    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)


def _samples_chunk(args: argparse.Namespace, samples=None):
    from multimodal.ingest.samples import chunk, read_samples

    samples = read_samples(args.samples, data_roots=_data_roots(args)) if samples is None else samples
    return chunk(samples, index=args.chunk, n_chunks=args.n_chunks) if args.n_chunks > 1 else samples


def _variant_filters(args: argparse.Namespace):
    """``ingest.variant_filters`` from the variants and cohort-vcf verbs' flags."""
    from multimodal.ingest.variants import VariantFilters

    return VariantFilters.from_settings(
        filter=args.filter,
        min_depth=args.min_depth,
        min_vaf=args.min_vaf,
        genes=args.gene_list,
        transcripts=args.transcripts,
    )


def cmd_ingest_variants(args: argparse.Namespace) -> None:
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.variants import mutation_matrix

    filters = _variant_filters(args)
    sheet = read_samples(args.samples, data_roots=_data_roots(args))
    barcodes = [b for b in sheet["maf_sample"] if b] if args.chunk == 0 else []  # unclaimed counted once
    rows = _samples_chunk(args, sheet)
    if args.maf is not None and args.n_chunks > 1:
        # The MAF is one cohort file read in one vectorised pass: all its patients go to chunk 0, so
        # it is read once, not once per chunk; chunks share out the per-patient VCFs.
        from_maf = sheet["maf_sample"].str.len() > 0
        rows = sheet[from_maf | sheet.index.isin(rows.index)] if args.chunk == 0 else rows[~from_maf[rows.index]]
    adata = mutation_matrix(
        rows,
        maf=args.maf,
        maf_sheet_barcodes=barcodes,
        territory_mb=args.territory_mb,
        annotation_field=args.annotation_field,
        filters=filters,
        progress=_progress(args),
    )
    _write_h5ad(adata, args.out)


def cmd_ingest_expression(args: argparse.Namespace) -> None:
    from multimodal.ingest.expression import read_expression_inputs
    from multimodal.ingest.samples import read_samples

    samples = read_samples(args.samples, data_roots=_data_roots(args))
    adata = read_expression_inputs(
        samples,
        counts=args.counts,
        values=args.values,
        tx2gene=args.tx2gene,
        sample_key=args.sample_key,
        cell_type_key=args.cell_type_key,
        min_count=args.min_count,
        min_samples=args.min_samples,
    )
    _write_h5ad(adata, args.out)


def cmd_ingest_imaging(args: argparse.Namespace) -> None:
    from multimodal.ingest.imaging import imaging_matrix

    adata = imaging_matrix(
        _samples_chunk(args),
        bin_count=args.bin_count,
        bin_width=args.bin_width,
        texture_aggregations=args.texture_aggregations,
        mask_label=args.mask_label,
        roi_name=args.roi_name,
        resample_spacing=args.resample_spacing,
        interpolation=args.interpolation,
        round_intensities=args.round_intensities,
        resegment_range=args.resegment_range,
        outlier_sd=args.outlier_sd,
        lesion_rule=args.lesion_rule,
        filters=args.filters,
        threads=args.threads,
        progress=_progress(args),
    )
    _write_h5ad(adata, args.out)


def cmd_ingest_table(args: argparse.Namespace) -> None:
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.table import feature_table

    samples = read_samples(args.samples, data_roots=_data_roots(args))
    adata = feature_table(args.table, modality=args.name, patients=samples.index, id_column=args.id_column)
    _write_h5ad(adata, args.out)


def cmd_ingest_cohort_vcf(args: argparse.Namespace) -> None:
    from multimodal.ingest.cohort_vcf import carrier_matrix, cohort_vcf_carriers, vcf_to_zarr
    from multimodal.ingest.samples import read_samples

    filters = _variant_filters(args)
    samples = read_samples(args.samples, data_roots=_data_roots(args))
    if args.vcf is not None and args.fields != ["all"] and not args.scheduler:  # one pass: convert and reduce
        adata = cohort_vcf_carriers(
            args.vcf,
            args.zarr,
            patients=samples.index,
            filters=filters,
            annotation_field=args.annotation_field,
            fields=args.fields or (),
            variants_chunk_size=args.variants_chunk,
            samples_chunk_size=args.samples_chunk,
            workers=args.threads,
        )
        _write_h5ad(adata, args.out)
        return
    if args.vcf is not None:
        vcf_to_zarr(
            args.vcf,
            args.zarr,
            variants_chunk_size=args.variants_chunk,
            samples_chunk_size=args.samples_chunk,
            workers=args.threads,
            fields="all"
            if args.fields == ["all"]
            else list(dict.fromkeys([args.annotation_field, *(args.fields or ())])),
            format_fields=("DP", "AD") if filters.min_depth or filters.min_vaf else (),
        )
    adata = carrier_matrix(
        args.zarr,
        patients=samples.index,
        filters=filters,
        annotation_field=args.annotation_field,
        scheduler=args.scheduler,
    )
    _write_h5ad(adata, args.out)


def cmd_ingest_copy_number(args: argparse.Namespace) -> None:
    from multimodal.ingest.copy_number import copy_number_matrix, segment_copy_number
    from multimodal.ingest.samples import read_samples

    samples = read_samples(args.samples, data_roots=_data_roots(args))
    names = samples["cnv_sample"].to_dict() if "cnv_sample" in samples.columns else None
    if args.table:
        _write_h5ad(copy_number_matrix(args.table, patients=samples.index, sample_names=names), args.out)
        return
    if not args.genes_bed:
        raise MultimodalError("ingest copy-number: --segments needs --genes-bed (the genes to summarise them over)")
    adata = segment_copy_number(
        args.segments, args.genes_bed, patients=samples.index, thresholds=args.thresholds, sample_names=names
    )
    _write_h5ad(adata, args.out)


def _named_chunk(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=PATH to an existing .h5ad")
    return name, Path(path)


def cmd_assemble(args: argparse.Namespace) -> None:
    from multimodal.ingest.clinical import ClinicalSpec
    from multimodal.store import build_cohort_store

    config = _load_config(args.config)
    columns = config["clinical_columns"]
    spec = ClinicalSpec(
        id_column=columns["id_column"],
        time_column=columns["time_column"],
        event_column=columns["event_column"],
        response_column=columns["response_column"],
        site_column=columns["site_column"],
        covariates=tuple(columns["covariates"]),
        categorical=tuple(columns["categorical"]),
        qol_columns=tuple((columns.get("qol_columns") or {}).items()),
    )
    modality_chunks = {"variants": args.variants, "expression": args.expression, "imaging": args.imaging}
    for name, path in args.table:
        if modality_chunks.get(name):
            raise MultimodalError(f"modality {name!r} is given both as a table and by its own reader")
        modality_chunks.setdefault(name, []).append(path)
    build_cohort_store(
        args.out,
        clinical_path=args.clinical,
        samples_path=args.samples,
        modality_chunks=modality_chunks,
        clinical_spec=spec,
        cohort_files=[p for p in (args.counts, args.maf, *args.table_source) if p],
        config=config if args.config else None,
        data_roots=_data_roots(args, config),
    )


def _torch_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def cmd_train(args: argparse.Namespace) -> None:
    from multimodal.model.train import TrainParams, cross_validate, format_metric
    from multimodal.store import read_cohort_store

    _torch_threads(args)
    section = dict(_load_config(args.config)["model"]) if args.config else {}
    for key in ("folds", "epochs", "seed", "repeats", "bootstrap"):
        if getattr(args, key) is not None:
            section[key] = getattr(args, key)
    if args.splits is not None:
        section["splits"] = str(args.splits)
    if args.accelerator:
        section["accelerator"] = args.accelerator
    mdata = read_cohort_store(args.store)
    metrics = cross_validate(
        mdata, args.out, params=TrainParams.from_config(section), store_path=str(args.store), progress=_progress(args)
    )
    mean, sd, pooled = metrics["mean"], metrics["sd"], metrics["pooled_out_of_fold"]
    print(
        f"C-index {format_metric(mean['c_index'])} ± {format_metric(sd['c_index'])} over "
        f"{metrics['n_folds_defined']['c_index']} of {len(metrics['folds'])} folds "
        f"(pooled {format_metric(pooled['c_index'])}); AUROC {format_metric(mean['auroc'])}"
    )


def _explain_dir(args: argparse.Namespace) -> Path:
    """Where `explain --patient` reads: --out, else beside --model, else the config's ``outdir``/explain."""
    if args.out:
        return args.out
    if args.model:
        return args.model.parent / "explain"
    config = args.config or Path("config/config.yaml")
    if not config.is_file():
        raise MultimodalError("--patient needs --out (the explain directory), --model, or a --config with outdir")
    return Path(_load_config(config)["outdir"]) / "explain"


def cmd_explain(args: argparse.Namespace) -> None:
    if args.patient is not None:
        import json

        from multimodal.attribution.patient import check_sources, format_patient, patient_explanation

        explain_dir = _explain_dir(args)
        if args.model or args.store:  # the files read must belong to the model and store named
            from multimodal.store import read_cohort_store

            store = read_cohort_store(args.store) if args.store else None
            check_sources(explain_dir, model_dir=args.model, store=store)
        summary = patient_explanation(explain_dir, args.patient, top_n=args.top)
        print(json.dumps(summary, allow_nan=False) if args.json else format_patient(summary))
        return
    if args.json:
        raise MultimodalError("--json goes with --patient")
    absent = [f"--{k}" for k in ("store", "model", "out") if getattr(args, k) is None]
    if absent:
        raise MultimodalError(f"{', '.join(absent)} required (or --patient ID to read one patient's explanation)")
    from multimodal.explain import explain_cohort
    from multimodal.store import read_cohort_store

    _torch_threads(args)
    settings = dict(_load_config(args.config)["explain"]) if args.config else {}
    if args.n_steps:
        settings["n_steps"] = args.n_steps
    if args.method:
        settings["method"] = args.method
    explain_cohort(read_cohort_store(args.store), args.model, args.out, progress=_progress(args), **settings)


def cmd_report(args: argparse.Namespace) -> None:
    from multimodal.report.html import build_report

    section = _load_config(args.config)["report"] if args.config else {}
    build_report(
        store=args.store,
        model_dir=args.model,
        explain_dir=args.explain,
        out=args.out,
        title=args.title or section.get("title", "multimodal report"),
        top_n=section.get("top_n", 10),
    )
    log.info("wrote %s", args.out)


def cmd_inspect(args: argparse.Namespace) -> None:
    from multimodal.store import read_cohort_store, summarize_store

    print(summarize_store(read_cohort_store(args.store), path=args.store))


def _pseudonymise_ingest(args: argparse.Namespace) -> None:
    """With the config's privacy.pseudonymise on: the ingest output's patients as pseudonyms (privacy.py)."""
    from multimodal import privacy

    config = _load_config(args.config)
    pseudonymiser = privacy.from_config(config)
    if pseudonymiser is not None and args.out is not None and Path(args.out).is_file():
        from multimodal.ingest.samples import read_samples

        ids = read_samples(args.samples, data_roots=_data_roots(args, config)).index
        privacy.pseudonymise_h5ad(args.out, pseudonymiser, ids)


def cmd_verify(args: argparse.Namespace) -> int:
    from multimodal.verify import verify_results

    skipped: list[str] = []
    drifts, checked = verify_results(args.results, workdir=args.workdir, skipped=skipped)
    for drift in drifts:
        print(f"drift: {drift}")
    if skipped:
        print(f"not checked: {len(skipped)} per-patient input files whose recorded names are pseudonymised")
    if drifts:
        print(f"{len(drifts)} of {checked} recorded files differ from their manifests under {args.results}")
        return 1
    print(f"all {checked} recorded files under {args.results} and their inputs are as the stages wrote them")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from multimodal.workflow import run_workflow

    return run_workflow(
        config=args.config,
        cores=args.cores,
        snakefile=args.snakefile,
        dry_run=args.dry_run,
        extra=args.snakemake_args,
    )


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(
        prog="multimodal",
        description="Integrate variant calls, expression and imaging phenomics into a Zarr cohort store, "
        "predict treatment outcomes with a cross-validated fusion model, and explain them.",
    )
    parser.add_argument("--version", action="version", version=f"multimodal {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    common.add_argument("--debug", action="store_true", help="show the full traceback of unexpected errors")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    p = verbs.add_parser("simulate", parents=[common], help="write the synthetic demo cohort in real file formats")
    p.add_argument("--out", type=Path, help="output directory (default: config simulate.outdir, else demo)")
    p.add_argument("--config", type=_existing_file, help="take defaults from this config's simulate section")
    p.add_argument("--patients", type=_positive_int, help="number of patients (default 300)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--image-size", type=_positive_int, help="image edge length in voxels (default 40)")
    p.add_argument(
        "--arm-kras-interaction",
        type=float,
        help="log-hazard of the experimental arm in KRAS-mutant patients only (default 0: no interaction)",
    )
    p.set_defaults(func=cmd_simulate)

    ingest = verbs.add_parser("ingest", help="read one modality's raw files into AnnData (.h5ad)")
    kinds = ingest.add_subparsers(dest="modality", metavar="<modality>", required=True)
    chunking = argparse.ArgumentParser(add_help=False)
    chunking.add_argument("--chunk", type=int, default=0, help="which chunk of patients (0-based)")
    chunking.add_argument("--n-chunks", type=_positive_int, default=1, help="split the samples sheet in this many")
    roots = argparse.ArgumentParser(add_help=False)
    roots.add_argument(
        "--data-root",
        type=Path,
        action="append",
        default=[],
        help="a directory the sheet's files must resolve into (repeatable; default: the config's data_roots, "
        "else the sheet's and the working one)",
    )
    io = argparse.ArgumentParser(add_help=False, parents=[roots])
    io.add_argument("--samples", type=_existing_file, required=True, help="samples sheet (TSV)")
    io.add_argument("--out", type=Path, required=True, help="output .h5ad")
    io.add_argument("--config", type=_existing_file, help="config (its data_roots, unless --data-root is given)")

    p = kinds.add_parser("variants", parents=[common, io, chunking], help="VCF/BCF (VEP CSQ or SnpEff ANN) or MAF")
    p.add_argument("--maf", type=_existing_file, help="cohort MAF; patients' maf_sample names their barcode")
    p.add_argument("--territory-mb", type=float, default=38.0, help="TMB denominator in Mb (default 38)")
    p.add_argument(
        "--annotation-field",
        metavar="KEY",
        help="INFO key of the VEP/SnpEff annotations, e.g. vep for VEP run with --vcf_info_field vep "
        "(default: CSQ, then ANN)",
    )
    p.add_argument(
        "--filter", nargs="+", metavar="VALUE", help="FILTER values accepted (default PASS; '.' always passes)"
    )
    p.add_argument("--min-depth", type=int, default=0, help="minimum tumour depth (FORMAT DP, else sum of AD)")
    p.add_argument("--min-vaf", type=float, default=0.0, help="minimum tumour VAF (FORMAT AF, else from AD)")
    p.add_argument("--gene-list", type=_existing_file, help="gene allow-list, one symbol per line")
    p.add_argument(
        "--transcripts",
        choices=("any", "canonical"),
        default="any",
        help="a record counts for a gene when any of its transcripts (default) or its canonical one is "
        "protein-altering",
    )
    p.set_defaults(func=cmd_ingest_variants)
    p = kinds.add_parser(
        "expression", parents=[common, io], help="counts table, .h5ad, or per-sample quant.sf/.h5 (rna_file)"
    )
    p.add_argument(
        "--counts",
        type=_existing_file,
        help="cohort counts table (TSV/CSV, featureCounts) or .h5ad (bulk, or single-cell with --sample-key in "
        "obs); without it, each patient's rna_file of the samples sheet",
    )
    p.add_argument("--tx2gene", type=_existing_file, help="transcript -> gene table for Salmon quant.sf")
    p.add_argument("--sample-key", default="sample", help="single-cell .h5ad obs column naming the sample")
    p.add_argument("--cell-type-key", help="single-cell .h5ad obs column: one profile per sample and cell type")
    p.add_argument("--min-count", type=float, default=0.0, help="keep genes with >= this count in --min-samples")
    p.add_argument("--min-samples", type=_positive_int, default=1, help="samples for --min-count (default 1)")
    p.add_argument(
        "--values",
        choices=("counts", "log"),
        default="counts",
        help="raw counts (normalised to log1p CPM; default) or an already log-scale table (used as given)",
    )
    p.set_defaults(func=cmd_ingest_expression)
    p = kinds.add_parser(
        "cohort-vcf", parents=[common, io], help="multi-sample VCF/BCF -> VCF Zarr -> per-gene carrier matrix"
    )
    p.add_argument("--vcf", type=_existing_file, help="cohort VCF/BCF (bgzipped, indexed) to convert into --zarr")
    p.add_argument("--zarr", type=Path, required=True, help="the VCF Zarr (written from --vcf, else read)")
    p.add_argument("--variants-chunk", type=_positive_int, default=10_000, help="variants per Zarr chunk")
    p.add_argument("--samples-chunk", type=_positive_int, default=1_000, help="samples per Zarr chunk")
    p.add_argument("--annotation-field", default="CSQ", help="INFO key of VEP/SnpEff annotations (default CSQ)")
    p.add_argument(
        "--fields",
        nargs="+",
        metavar="KEY",
        help="INFO String fields kept in the VCF Zarr besides GT, FILTER, position, alleles and the annotation "
        "(default none); 'all' keeps every INFO/FORMAT field (bio2zarr, many times slower)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="htslib decompression threads; bio2zarr worker processes with --fields all (default 1)",
    )
    p.add_argument("--scheduler", help="Dask distributed scheduler address (default: local threads)")
    p.add_argument("--filter", nargs="+", metavar="VALUE", help="FILTER values accepted (default PASS)")
    p.add_argument("--gene-list", type=_existing_file, help="gene allow-list, one symbol per line")
    p.add_argument("--transcripts", choices=("any", "canonical"), default="any", help="transcript rule")
    for flag in ("--min-depth", "--min-vaf"):
        p.add_argument(
            flag,
            type=float if flag == "--min-vaf" else int,
            help="per call: depth (FORMAT DP, else the sum of AD) / the carried allele's AD fraction (default off)",
        )
    p.set_defaults(func=cmd_ingest_cohort_vcf)
    p = kinds.add_parser(
        "copy-number",
        parents=[common, io],
        help="GISTIC2 all_thresholded.by_genes.txt, or segments + a gene BED, as the cnv modality",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", type=_existing_file, help="GISTIC2 gene-level thresholded table")
    source.add_argument(
        "--segments", type=_existing_file, nargs="+", help="segment files: .seg (DNAcopy, GDC) or CNVkit .cns"
    )
    p.add_argument("--genes-bed", type=_existing_file, help="genes (chrom, start, end, name) for --segments")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs=4,
        metavar="LOG2",
        help="call -2..2 from the gene log2 ratio at these ascending cut points (default: keep the ratio)",
    )
    p.set_defaults(func=cmd_ingest_copy_number)
    p = kinds.add_parser("imaging", parents=[common, io, chunking], help="radiomics from NIfTI image + mask")
    p.add_argument(
        "--bin-count",
        type=_positive_int,
        default=32,
        help="fixed bin number (IBSI FBN) for histogram and texture (default 32)",
    )
    p.add_argument(
        "--bin-width",
        type=_positive_number,
        default=None,
        help="fixed bin width (IBSI FBS) from the ROI minimum, in image units, instead of --bin-count",
    )
    p.add_argument(
        "--texture-aggregations",
        nargs="+",
        choices=("2D", "2_5D", "3D"),
        default=["3D"],
        help="IBSI texture aggregations (default 3D)",
    )
    p.add_argument(
        "--mask-label",
        type=_positive_int,
        default=None,
        help="ROI = mask voxels with this label (default: every non-zero voxel; multi-label masks counted)",
    )
    p.add_argument(
        "--roi-name",
        help="DICOM SEG segment or RTSTRUCT ROI to use where the sheet's roi column is empty (e.g. GTV)",
    )
    p.add_argument(
        "--resample-spacing",
        type=_positive_number,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="IBSI: resample image and mask to this voxel spacing in mm, grid centres aligned (default: none)",
    )
    p.add_argument(
        "--interpolation",
        choices=("linear", "cubic_spline", "nearest"),
        default="linear",
        help="image interpolation for --resample-spacing (default linear; the mask: linear, then >= 0.5)",
    )
    p.add_argument(
        "--round-intensities", action="store_true", help="round intensities to integers after resampling (CT)"
    )
    p.add_argument(
        "--resegment-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="IBSI range re-segmentation, e.g. -1000 400 (HU): ROI voxels outside leave the intensity mask",
    )
    p.add_argument(
        "--outlier-sd",
        type=_positive_number,
        default=None,
        help="IBSI outlier re-segmentation: ROI voxels beyond mean +- this many SD leave the intensity mask",
    )
    p.add_argument(
        "--lesion-rule",
        choices=("largest", "volume_weighted"),
        default="largest",
        help="a patient's several lesions (sheet column lesion): the largest's features, or volume-weighted means",
    )
    p.add_argument(
        "--filters",
        type=_json_list,
        default=None,
        help='IBSI 2 filters as a JSON list, e.g. \'[{"type": "log", "sigma_mm": 1.5}]\' (ingest.filters)',
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="images extracted in parallel (worker processes; the rule's threads, ingest.imaging_threads)",
    )
    p.set_defaults(func=cmd_ingest_imaging)

    p = kinds.add_parser("table", parents=[common, io], help="any patients x features table as a modality")
    p.add_argument("--table", type=_existing_file, required=True, help="TSV/CSV, one row per patient")
    p.add_argument("--name", required=True, help="modality name, e.g. imaging (a radiomics export) or cnv")
    p.add_argument("--id-column", default="patient_id", help="column holding patient IDs (default patient_id)")
    p.set_defaults(func=cmd_ingest_table)

    p = verbs.add_parser("assemble", parents=[common, roots], help="join modalities and clinical data into cohort.zarr")
    p.add_argument("--clinical", type=_existing_file, required=True, help="clinical/outcome table")
    p.add_argument("--samples", type=_existing_file, required=True, help="samples sheet")
    p.add_argument("--variants", type=_existing_file, nargs="*", default=[], help="variant .h5ad chunks")
    p.add_argument("--expression", type=_existing_file, nargs="*", default=[], help="expression .h5ad")
    p.add_argument("--imaging", type=_existing_file, nargs="*", default=[], help="imaging .h5ad chunks")
    p.add_argument("--counts", type=_existing_file, help="the counts table (fingerprinted in provenance)")
    p.add_argument("--maf", type=_existing_file, help="the cohort MAF, if any (fingerprinted in provenance)")
    p.add_argument(
        "--table",
        type=_named_chunk,
        nargs="*",
        default=[],
        metavar="NAME=H5AD",
        help="modalities from `ingest table`, e.g. imaging=results/interim/table/imaging.h5ad",
    )
    p.add_argument(
        "--table-source",
        type=_existing_file,
        nargs="*",
        default=[],
        help="the original feature tables (fingerprinted in provenance)",
    )
    p.add_argument("--config", type=_existing_file, help="config (clinical column names; kept in provenance)")
    p.add_argument("--out", type=Path, required=True, help="output cohort store (.zarr directory)")
    p.set_defaults(func=cmd_assemble)

    p = verbs.add_parser("train", parents=[common], help="k-fold cross-validation of the fusion model")
    p.add_argument("--store", type=_existing_dir, required=True, help="cohort store")
    p.add_argument("--out", type=Path, required=True, help="output model directory")
    p.add_argument("--config", type=_existing_file, help="config (model section)")
    p.add_argument("--folds", type=_positive_int)
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--splits",
        type=Path,
        help="folds from a folds.tsv, a split file or a directory of splits_<k>.csv (train, val patient IDs)",
    )
    p.add_argument("--repeats", type=_positive_int, help="repeated k-fold: reshuffled folds, seed + r")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for the metrics' 95%% CIs (0: none)")
    p.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's own choice)")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("explain", parents=[common], help="Captum attributions for held-out patients")
    p.add_argument("--store", type=_existing_dir, help="cohort store (required unless --patient)")
    p.add_argument("--model", type=_existing_dir, help="model directory from `train` (required unless --patient)")
    p.add_argument(
        "--out",
        type=Path,
        help="output directory; with --patient the explain directory to read (default: beside --model, else "
        "<outdir>/explain of --config or config/config.yaml)",
    )
    p.add_argument("--config", type=_existing_file, help="config (explain section)")
    p.add_argument("--n-steps", type=_positive_int, help="integration steps (default 64)")
    p.add_argument("--method", choices=["integrated_gradients", "gradient_shap", "deeplift"])
    p.add_argument("--patient", metavar="ID", help="print one patient's explanation from an explain directory")
    p.add_argument("--json", action="store_true", help="with --patient: one JSON object instead of text")
    p.add_argument("--top", type=_positive_int, default=10, help="with --patient: attributions shown (default 10)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's own choice)")
    p.set_defaults(func=cmd_explain)

    p = verbs.add_parser("report", parents=[common], help="self-contained HTML report")
    p.add_argument("--store", type=_existing_dir, required=True)
    p.add_argument("--model", type=_existing_dir, required=True)
    p.add_argument("--explain", type=_existing_dir, required=True)
    p.add_argument("--out", type=Path, required=True, help="output .html")
    p.add_argument("--config", type=_existing_file, help="config (report section)")
    p.add_argument("--title")
    p.set_defaults(func=cmd_report)

    p = verbs.add_parser("inspect", parents=[common], help="print a summary of a cohort store")
    p.add_argument("store", type=_existing_dir)
    p.set_defaults(func=cmd_inspect)

    p = verbs.add_parser(
        "verify", parents=[common], help="re-hash a results directory against its stage manifests and inputs"
    )
    p.add_argument("results", type=_existing_dir, help="results directory (the config's outdir)")
    p.add_argument("--workdir", type=_existing_dir, help="where the run's relative input paths start (default .)")
    p.set_defaults(func=cmd_verify)

    p = verbs.add_parser("run", parents=[common], help="run the Snakemake workflow with a config")
    p.add_argument(
        "--config",
        type=_existing_file,
        default=Path("config/config.yaml"),
        help="workflow config (default config/config.yaml)",
    )
    p.add_argument("--cores", type=_positive_int, default=2, help="cores for Snakemake (default 2)")
    p.add_argument("--snakefile", type=_existing_file, help="Snakefile (default: the one beside the package)")
    p.add_argument("-n", "--dry-run", action="store_true", help="show the jobs without running them")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="after --, passed to Snakemake as is")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own progress at INFO; other libraries (numexpr, lightning ...) only when they warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"
    )
    log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        result = args.func(args)
        if not result and args.verb == "ingest" and getattr(args, "config", None):
            _pseudonymise_ingest(args)
        if not result and args.verb in MANIFEST_VERBS:  # a stage's output: hashed for `multimodal verify`
            from multimodal.verify import write_stage_manifest

            write_stage_manifest(args, argv)
    except MultimodalError as exc:
        print(f"multimodal {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"multimodal {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line, traceback only on request
        if getattr(args, "debug", False):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"multimodal {args.verb}: unexpected error: {type(exc).__name__}: {first} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
