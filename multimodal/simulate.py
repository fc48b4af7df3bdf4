"""A synthetic cohort in the file formats a hospital hands over, with its planted truth.

Writes, under one directory:

- ``clinical.tsv``: patient, site, treatment arm, age, sex, overall survival (months, event), a
  binary response and two quality-of-life outcomes at follow-up (``qol_score``, 0-100, and
  ``qol_grade``, 0-3), each with some values missing;
- ``vcf/<patient>.vcf.gz`` (+ ``.tbi``): a somatic VCF per patient, bgzipped and tabix-indexed, with
  VEP-style ``CSQ`` annotations, a mix of consequences and non-PASS records;
- ``expression_counts.tsv``: raw counts, genes x RNA samples (negative binomial);
- ``imaging/<patient>_image.nii.gz`` and ``_mask.nii.gz``: a 3D image and tumour mask;
- ``samples.tsv``: patient -> input files, the sheet the workflow reads;
- ``truth.json``: the generating model (planted drivers, expression program, imaging feature,
  coefficients) and each patient's true linear predictor.

The hazard is a Cox model: ``h(t) = h0 * exp(eta)`` with ``eta`` a sum of planted effects, so the
true model and its oracle concordance are known.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from multimodal.fileio import atomic_path

log = logging.getLogger(__name__)

SITES = ("site_A", "site_B", "site_C")
#: Scanner intensity offset per site (the batch effect a harmonisation step must remove).
SITE_INTENSITY_SHIFT = {"site_A": 0.0, "site_B": 25.0, "site_C": -15.0}

DRIVER_GENES = {"TP53": 1.5, "KRAS": 1.3, "STK11": 1.4}
DRIVER_FREQUENCY = {"TP53": 0.35, "KRAS": 0.25, "STK11": 0.2}
PROGRAM_GENES = ("MKI67", "TOP2A", "CCNB1", "BUB1", "AURKA", "CDK1", "CENPF", "FOXM1")
PROGRAM_HAZARD = 1.5
IMAGING_FEATURE = "morph_volume"  # IBSI tag of the tumour volume (v1: shape_voxel_volume)
SIZE_HAZARD = 1.5
INTENSITY_HAZARD = 0.3
TEXTURE_HAZARD = 0.3
AGE_HAZARD_PER_DECADE = 0.2
ARM_HAZARD = -0.4
#: Quality of life at follow-up, driven by planted features (see :func:`_quality_of_life`): the score falls
#: with tumour size (imaging) and the proliferation program (expression); the grade (0 best .. 3 worst)
#: rises with the proliferation program, an STK11 mutation (variants) and tumour size.
QOL_SCORE_MODEL = {"intercept": 70.0, "size_latent": -8.0, "program": -6.0, "experimental_arm": 4.0, "noise_sd": 6.0}
QOL_GRADE_MODEL = {
    "program": 1.5,
    "STK11": 2.0,
    "size_latent": 0.8,
    "noise": "logistic",
    "thresholds": [-1.0, 0.6, 2.0],
}

KNOWN_GENES = (
    "EGFR",
    "BRAF",
    "PIK3CA",
    "PTEN",
    "APC",
    "SMAD4",
    "CDKN2A",
    "NF1",
    "ARID1A",
    "KMT2D",
    "KEAP1",
    "RB1",
    "ATM",
    "BRCA1",
    "BRCA2",
    "ERBB2",
    "MET",
    "ALK",
    "ROS1",
    "NRAS",
    "HRAS",
    "IDH1",
    "IDH2",
    "FBXW7",
    "CTNNB1",
    "NOTCH1",
    "MYC",
    "CDH1",
    "GATA3",
    "FGFR1",
    "FGFR3",
    "SMARCA4",
    "KMT2C",
    "CREBBP",
    "EP300",
    "SETD2",
    "BAP1",
    "PBRM1",
    "VHL",
    "NFE2L2",
    "RBM10",
    "U2AF1",
    "ERBB3",
    "MAP2K1",
    "TSC1",
    "TSC2",
    "STAG2",
    "ZFHX3",
    "SPOP",
    "FOXA1",
)
CHROM_LENGTHS = {f"chr{i}": 248_000_000 - (i - 1) * 9_000_000 for i in range(1, 23)}

#: Consequence mix of passenger variants: (SO term, VEP IMPACT, probability).
PASSENGER_CONSEQUENCES = (
    ("missense_variant", "MODERATE", 0.40),
    ("synonymous_variant", "LOW", 0.22),
    ("intron_variant", "MODIFIER", 0.18),
    ("stop_gained", "HIGH", 0.05),
    ("frameshift_variant", "HIGH", 0.05),
    ("splice_region_variant&intron_variant", "LOW", 0.05),
    ("inframe_deletion", "MODERATE", 0.05),
)
DRIVER_CONSEQUENCES = (
    ("missense_variant", "MODERATE", 0.7),
    ("stop_gained", "HIGH", 0.15),
    ("frameshift_variant", "HIGH", 0.15),
)
CSQ_FIELDS = ("Allele", "Consequence", "IMPACT", "SYMBOL", "Gene", "Feature_type", "Feature", "BIOTYPE")


@dataclass(frozen=True)
class SimulationParams:
    """What the simulated cohort looks like."""

    n_patients: int = 300
    seed: int = 7
    n_expression_genes: int = 2000
    n_panel_genes: int = 400
    image_size: int = 40
    rna_missing_fraction: float = 0.15
    imaging_missing_fraction: float = 0.20
    #: log-hazard of the experimental arm in KRAS-mutant patients only (0: the arm acts the same in all),
    #: a treatment-by-biomarker interaction no additive model (Cox, additive fusion head) can represent
    arm_kras_interaction: float = 0.0
    #: fraction of patients without each quality-of-life value (not returned at follow-up)
    qol_missing_fraction: float = 0.1


def simulate_cohort(outdir: str | Path, *, params: SimulationParams | None = None) -> dict:
    """Write a synthetic cohort under ``outdir`` and return its truth (also in ``truth.json``)."""
    params = params or SimulationParams()
    outdir = Path(outdir)
    rng = np.random.default_rng(params.seed)
    n = params.n_patients
    patients = [f"P{i:04d}" for i in range(1, n + 1)]

    genes = _gene_universe(params.n_expression_genes)
    panel = genes[: params.n_panel_genes]

    site = rng.choice(SITES, size=n)
    arm = rng.integers(0, 2, size=n)
    age = np.clip(rng.normal(63, 10, size=n), 30, 90).round(0)
    sex = rng.choice(["female", "male"], size=n)

    drivers = {g: rng.random(n) < f for g, f in DRIVER_FREQUENCY.items()}
    program = rng.normal(size=n)
    size_latent = rng.normal(size=n)
    intensity_latent = rng.normal(size=n)
    texture_latent = rng.normal(size=n)

    eta = (
        sum(DRIVER_GENES[g] * drivers[g] for g in DRIVER_GENES)
        + PROGRAM_HAZARD * program
        + SIZE_HAZARD * size_latent
        + INTENSITY_HAZARD * intensity_latent
        + TEXTURE_HAZARD * texture_latent
        + AGE_HAZARD_PER_DECADE * (age - 63) / 10
        + ARM_HAZARD * arm
        + params.arm_kras_interaction * arm * drivers["KRAS"]
    )
    eta = eta - eta.mean()
    baseline_rate = np.log(2) / 20.0  # median survival of 20 months at the mean hazard
    event_time = rng.exponential(1.0 / (baseline_rate * np.exp(eta)))
    censor_time = rng.uniform(12.0, 72.0, size=n)
    os_time = np.maximum(np.minimum(event_time, censor_time), 0.1).round(1)
    os_event = (event_time <= censor_time).astype(int)

    response_logit = -0.3 + 1.0 * arm - 0.8 * program - 0.8 * drivers["TP53"] - 0.5 * size_latent
    response = (rng.random(n) < 1.0 / (1.0 + np.exp(-response_logit))).astype(int)

    has_rna = rng.random(n) >= params.rna_missing_fraction
    has_imaging = rng.random(n) >= params.imaging_missing_fraction

    outdir.mkdir(parents=True, exist_ok=True)
    clinical = pd.DataFrame(
        {
            "patient_id": patients,
            "site": site,
            "arm": np.where(arm == 1, "experimental", "standard"),
            "age": age.astype(int),
            "sex": sex,
            "os_time": os_time,
            "os_event": os_event,
            "response": response,
        }
    )
    qol_score, qol_grade = _quality_of_life(params, arm, program, size_latent, drivers["STK11"])
    clinical["qol_score"] = qol_score
    clinical["qol_grade"] = pd.array(qol_grade, dtype="Int64")  # whole grades; missing stays empty
    _write_table(clinical, outdir / "clinical.tsv")

    gene_loci = _gene_loci(panel, rng)
    vcf_dir = outdir / "vcf"
    vcf_dir.mkdir(exist_ok=True)
    vcf_paths = []
    for i, pid in enumerate(patients):
        path = vcf_dir / f"{pid}.vcf.gz"
        _write_patient_vcf(path, pid, panel, gene_loci, {g: bool(drivers[g][i]) for g in drivers}, rng)
        vcf_paths.append(path)

    rna_samples = [f"{pid}-01A" if has_rna[i] else "" for i, pid in enumerate(patients)]
    counts = _expression_counts(genes, program[has_rna], site[has_rna], rng)
    counts.columns = [s for s in rna_samples if s]
    with atomic_path(outdir / "expression_counts.tsv") as tmp:
        counts.to_csv(tmp, sep="\t", index_label="gene_symbol")

    img_dir = outdir / "imaging"
    img_dir.mkdir(exist_ok=True)
    image_paths, mask_paths = [], []
    for i, pid in enumerate(patients):
        if not has_imaging[i]:
            image_paths.append("")
            mask_paths.append("")
            continue
        image_path, mask_path = img_dir / f"{pid}_image.nii.gz", img_dir / f"{pid}_mask.nii.gz"
        _write_patient_image(
            image_path,
            mask_path,
            size=params.image_size,
            size_latent=size_latent[i],
            intensity_latent=intensity_latent[i],
            texture_latent=texture_latent[i],
            site=site[i],
            rng=rng,
        )
        image_paths.append(str(image_path))
        mask_paths.append(str(mask_path))

    samples = pd.DataFrame(
        {
            "patient_id": patients,
            "vcf": [str(p) for p in vcf_paths],
            "rna_sample": rna_samples,
            "image": image_paths,
            "mask": mask_paths,
        }
    )
    _write_table(samples, outdir / "samples.tsv")

    truth = {
        "params": params.__dict__,
        "hazard_model": "h(t) = h0 exp(eta), exponential baseline, median 20 months at mean eta",
        "driver_genes": DRIVER_GENES,
        "driver_frequency": DRIVER_FREQUENCY,
        "expression_program": {"genes": list(PROGRAM_GENES), "log_hazard_per_sd": PROGRAM_HAZARD},
        "imaging": {
            "planted_feature": IMAGING_FEATURE,
            "log_hazard_per_sd_log_radius": SIZE_HAZARD,
            "intensity_log_hazard_per_sd": INTENSITY_HAZARD,
            "texture_heterogeneity_log_hazard_per_sd": TEXTURE_HAZARD,
            "site_intensity_shift": SITE_INTENSITY_SHIFT,
        },
        "clinical": {"age_log_hazard_per_decade": AGE_HAZARD_PER_DECADE, "experimental_arm": ARM_HAZARD},
        "interaction": {"experimental_arm_x_KRAS_mutant": params.arm_kras_interaction},
        "treatment_benefit": _true_benefit(patients, drivers["KRAS"], params.arm_kras_interaction),
        "response_model": "logit = -0.3 + 1.0 arm - 0.8 program - 0.8 TP53 - 0.5 size",
        "quality_of_life": {
            "qol_score": {"kind": "continuous", "range": [0, 100], "model": QOL_SCORE_MODEL},
            "qol_grade": {"kind": "ordinal", "grades": [0, 1, 2, 3], "model": QOL_GRADE_MODEL},
            "missing_fraction": params.qol_missing_fraction,
        },
        "censoring": "uniform administrative censoring between 12 and 72 months",
        "event_fraction": float(os_event.mean()),
        "linear_predictor": {pid: float(e) for pid, e in zip(patients, eta, strict=True)},
    }
    with atomic_path(outdir / "truth.json") as tmp:
        tmp.write_text(json.dumps(truth, indent=1))
    log.info("simulated %d patients under %s (event fraction %.2f)", n, outdir, os_event.mean())
    return truth


def _quality_of_life(
    params: SimulationParams, arm: np.ndarray, program: np.ndarray, size: np.ndarray, stk11: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The continuous QoL score (0-100) and ordinal QoL grade (0-3) per patient, NaN where not returned.

    Drawn from their own random stream (seeded by ``params.seed``), so every other simulated value is the
    same as without them.
    """
    rng = np.random.default_rng([params.seed, 20261202])
    n = len(arm)
    m = QOL_SCORE_MODEL
    score = (
        m["intercept"]
        + m["size_latent"] * size
        + m["program"] * program
        + m["experimental_arm"] * arm
        + rng.normal(0.0, m["noise_sd"], size=n)
    )
    score = np.clip(score, 0.0, 100.0).round(1)
    g = QOL_GRADE_MODEL
    latent = g["program"] * program + g["STK11"] * stk11 + g["size_latent"] * size + rng.logistic(size=n)
    grade = np.searchsorted(np.asarray(g["thresholds"]), latent).astype(float)
    score[rng.random(n) < params.qol_missing_fraction] = np.nan
    grade[rng.random(n) < params.qol_missing_fraction] = np.nan
    return score, grade


def _true_benefit(patients: list[str], kras: np.ndarray, interaction: float) -> dict:
    """Each patient's true benefit of the experimental arm (log hazard under standard minus under experimental)
    and whether it exceeds the arm's common effect (a benefiter: KRAS-mutant when the interaction is negative)."""
    benefit = -(ARM_HAZARD + interaction * kras)
    return {
        "definition": "log hazard under the standard arm minus under the experimental arm (positive: benefit)",
        "per_patient": {pid: float(b) for pid, b in zip(patients, benefit, strict=True)},
        "benefiter": {pid: int(b > -ARM_HAZARD + 1e-12) for pid, b in zip(patients, benefit, strict=True)},
    }


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def _gene_universe(n_genes: int) -> list[str]:
    """Planted and known cancer genes first, then numbered simulated genes."""
    named = list(dict.fromkeys([*DRIVER_GENES, *PROGRAM_GENES, *KNOWN_GENES]))
    return named + [f"SIMG{i:04d}" for i in range(1, n_genes - len(named) + 1)]


def _gene_loci(panel: list[str], rng: np.random.Generator) -> dict[str, tuple[str, int, int]]:
    chroms = list(CHROM_LENGTHS)
    loci = {}
    for i, gene in enumerate(panel):
        chrom = chroms[i % len(chroms)]
        start = 1_000_000 + (i // len(chroms)) * 2_000_000 + int(rng.integers(0, 500_000))
        loci[gene] = (chrom, start, int(rng.integers(5_000, 150_000)))
    return loci


def _vcf_header(pid: str) -> str:
    contigs = "".join(f"##contig=<ID={c},length={n}>\n" for c, n in CHROM_LENGTHS.items())
    return (
        "##fileformat=VCFv4.2\n"
        '##FILTER=<ID=PASS,Description="All filters passed">\n'
        '##FILTER=<ID=LowQual,Description="Low quality">\n'
        '##FILTER=<ID=strand_bias,Description="Strand bias">\n'
        f"{contigs}"
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Total depth">\n'
        '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
        f'Format: {"|".join(CSQ_FIELDS)}">\n'
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">\n'
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">\n'
        f"##source=multimodal.simulate\n"
        f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{pid}_TUMOR\n"
    )


def _draw(options: tuple, rng: np.random.Generator) -> tuple[str, str]:
    probs = np.array([o[2] for o in options])
    term, impact, _ = options[int(rng.choice(len(options), p=probs / probs.sum()))]
    return term, impact


def _write_patient_vcf(
    path: Path,
    pid: str,
    panel: list[str],
    loci: dict[str, tuple[str, int, int]],
    carries: dict[str, bool],
    rng: np.random.Generator,
) -> None:
    import pysam

    records: list[tuple[str, int, str, str, str, str]] = []  # chrom, pos, gene, term, impact, filter
    lengths = np.array([loci[g][2] for g in panel], dtype=float)
    n_passenger = int(rng.poisson(rng.gamma(2.0, 4.0)))
    for gene in rng.choice(panel, size=n_passenger, p=lengths / lengths.sum()):
        term, impact = _draw(PASSENGER_CONSEQUENCES, rng)
        filt = "PASS" if rng.random() > 0.1 else str(rng.choice(["LowQual", "strand_bias"]))
        records.append((*_locus(loci[str(gene)], rng), str(gene), term, impact, filt))
    for gene, carried in carries.items():
        if carried:
            term, impact = _draw(DRIVER_CONSEQUENCES, rng)
            records.append((*_locus(loci[gene], rng), gene, term, impact, "PASS"))
        elif rng.random() < 0.15:
            # Decoys that a correct reader must not count: a filtered call or a silent change.
            if rng.random() < 0.5:
                term, impact = _draw(DRIVER_CONSEQUENCES, rng)
                records.append((*_locus(loci[gene], rng), gene, term, impact, "LowQual"))
            else:
                records.append((*_locus(loci[gene], rng), gene, "synonymous_variant", "LOW", "PASS"))
    chrom_order = {c: i for i, c in enumerate(CHROM_LENGTHS)}
    records.sort(key=lambda r: (chrom_order[r[0]], r[1]))
    lines = [_vcf_header(pid)]
    seen: set[tuple[str, int]] = set()
    for chrom, pos, gene, term, impact, filt in records:
        while (chrom, pos) in seen:
            pos += 1
        seen.add((chrom, pos))
        ref, alt = (
            ("AG", "A")
            if "frameshift" in term or "deletion" in term
            else tuple(rng.choice(list("ACGT"), size=2, replace=False))
        )
        transcript = f"ENST{zlib.crc32(gene.encode()):011d}"
        csq = [
            f"{alt if len(alt) == len(ref) else '-'}|{term}|{impact}|{gene}|ENSG_{gene}|Transcript|"
            f"{transcript}|protein_coding"
        ]
        if rng.random() < 0.3:  # a second, non-coding transcript of the same gene
            csq.append(
                f"{alt if len(alt) == len(ref) else '-'}|intron_variant|MODIFIER|{gene}|ENSG_{gene}|"
                f"Transcript|{transcript}.2|retained_intron"
            )
        depth = int(rng.integers(30, 200))
        alt_reads = int(rng.integers(4, max(5, depth // 2)))
        lines.append(
            f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t{rng.integers(20, 90)}\t{filt}\tDP={depth};CSQ={','.join(csq)}"
            f"\tGT:AD:DP\t0/1:{depth - alt_reads},{alt_reads}:{depth}\n"
        )
    plain = path.with_suffix("")  # .vcf
    with atomic_path(plain) as tmp:
        tmp.write_text("".join(lines))
    pysam.tabix_index(str(plain), preset="vcf", force=True)  # writes path (.vcf.gz) + .tbi, removes plain


def _locus(locus: tuple[str, int, int], rng: np.random.Generator) -> tuple[str, int]:
    chrom, start, length = locus
    return chrom, start + int(rng.integers(0, length))


def _expression_counts(
    genes: list[str], program: np.ndarray, site: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """Negative-binomial counts with a planted program, two unrelated modules and a site effect."""
    n_samples, n_genes = len(program), len(genes)
    base = rng.normal(3.0, 1.6, size=n_genes)
    log_mean = np.tile(base, (n_samples, 1))
    index = {g: i for i, g in enumerate(genes)}
    program_idx = [index[g] for g in PROGRAM_GENES]
    log_mean[:, program_idx] += 0.9 * program[:, None] * rng.uniform(0.8, 1.2, size=len(program_idx))
    for _ in range(2):  # co-expression modules unrelated to outcome
        members = rng.choice(np.arange(len(PROGRAM_GENES) + 60, n_genes), size=25, replace=False)
        log_mean[:, members] += 0.8 * rng.normal(size=n_samples)[:, None]
    site_genes = rng.choice(n_genes, size=100, replace=False)
    for s in SITES:
        log_mean[np.ix_(site == s, site_genes)] += rng.normal(0, 0.3, size=len(site_genes))
    log_mean += rng.normal(0, 0.2, size=log_mean.shape)
    proportions = np.exp(log_mean) / np.exp(log_mean).sum(axis=1, keepdims=True)
    library_size = rng.lognormal(np.log(8e6), 0.3, size=n_samples)
    mean = proportions * library_size[:, None]
    dispersion = 0.15
    counts = rng.poisson(rng.gamma(1.0 / dispersion, mean * dispersion))
    return pd.DataFrame(counts.T.astype(np.int64), index=pd.Index(genes, name="gene_symbol"))


def _write_patient_image(
    image_path: Path,
    mask_path: Path,
    *,
    size: int,
    size_latent: float,
    intensity_latent: float,
    texture_latent: float,
    site: str,
    rng: np.random.Generator,
) -> None:
    """A CT-like volume: soft-tissue background and an ellipsoidal tumour of latent size/intensity/texture."""
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    spacing = (1.0, 1.0, 2.0)
    grid = np.indices((size, size, size // 2), dtype=float)
    centre = np.array([size / 2, size / 2, size / 4]) + rng.normal(0, 1.5, size=3)
    radius = 6.0 * np.exp(0.22 * size_latent)
    axes = radius * np.array([1.0, rng.uniform(0.75, 1.0), 0.5 * rng.uniform(0.75, 1.0)])
    dist = sum(((grid[k] - centre[k]) / axes[k]) ** 2 for k in range(3))
    mask = dist <= 1.0
    if mask.sum() < 10:  # keep every tumour measurable
        mask = dist <= (10 / max(mask.sum(), 1)) ** (2 / 3) + 1.0
    background = 40.0 + gaussian_filter(rng.normal(0, 12.0, size=mask.shape), 1.0)
    heterogeneity = gaussian_filter(rng.normal(0, 1.0, size=mask.shape), 1.2)
    heterogeneity /= heterogeneity.std()
    tumour = 100.0 + 12.0 * intensity_latent + (12.0 + 5.0 * texture_latent) * heterogeneity
    image = np.where(mask, tumour, background) + SITE_INTENSITY_SHIFT[site] + rng.normal(0, 4.0, mask.shape)
    affine = np.diag([*spacing, 1.0])
    for array, path, dtype in ((image.round(), image_path, np.int16), (mask, mask_path, np.uint8)):
        img = nib.Nifti1Image(array.astype(dtype), affine)
        img.header.set_zooms(spacing)
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
