"""IBSI 1 texture features (reference manual chapter 3.6-3.11) of a discretised 3D image in a ROI.

Families, keyed by their IBSI tag prefix: ``cm`` (GLCM, 3.6), ``rlm`` (GLRLM, 3.7), ``szm`` (GLSZM, 3.8),
``dzm`` (GLDZM, 3.9), ``ngt`` (NGTDM, 3.10), ``ngl`` (NGLDM, 3.11). Aggregations (IBSI 3.1.2), keyed by
the tag suffix:

* ``3D``: one 3D matrix per direction (13 directions of the 26-neighbourhood, distance 1) for GLCM and
  GLRLM, features averaged over directions (``_3D_avg``) or computed from the directional matrices
  merged into one (``_3D_comb``); one 3D matrix (26-connected zones, 26-neighbourhood) for the others
  (``_3D``).
* ``2D``: per slice (8-connected zones, 8-neighbourhood, 4 in-plane directions); GLCM/GLRLM features
  averaged over slices and directions (``_2D_avg``) or computed per slice from the merged directional
  matrices and averaged over slices (``_2D_comb``); the other families averaged over slices (``_2D``).
* ``2_5D``: the per-slice matrices merged over slices; GLCM/GLRLM per direction then averaged
  (``_2_5D_avg``) or merged over directions too (``_2_5D_comb``); the others one merged matrix (``_2_5D``).

Slices are planes orthogonal to ``slice_axis`` (2 for the (x, y, z) arrays nibabel returns).

Why by hand: pyradiomics (3.0.1 installs only with ``--no-build-isolation``) has direction-averaged 3D
and per-slice 2D matrices but none of IBSI's merged (``comb``) or 2.5D aggregations and no GLDZM;
MIRP 2.7 (IBSI 1 compliant) requires pandas >= 3, which our anndata pin excludes, and is ~57x slower
(docs/imaging-extractors.md); scikit-image's ``graycomatrix`` is 2D only. Everything here is numpy/scipy:
``np.bincount`` for the matrices, ``scipy.sparse.csgraph.connected_components`` for the zones and
``scipy.ndimage.distance_transform_cdt`` for the GLDZM distance map.

Conventions where IBSI leaves a value undefined (never hit by the IBSI digital phantom), following
pyradiomics: GLCM correlation of a matrix with one grey level is 1, its first information correlation
0; NGTDM coarseness with no grey-level difference at all is 1e6, busyness and strength 0. Matrices
without any entry (a slice without a pair of ROI voxels along a direction) are left out of averages;
a feature with nothing to average is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from scipy.special import entr

from multimodal.errors import MultimodalError

FAMILIES: tuple[str, ...] = ("cm", "rlm", "szm", "dzm", "ngt", "ngl")
AGGREGATIONS: tuple[str, ...] = ("2D", "2_5D", "3D")

#: The 13 unique directions of the 26-neighbourhood in the (slice, row, column) frame used inside this
#: module. The first non-zero component of each is +1; the first four lie in the slice plane.
_DIRECTIONS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1),
    (0, 1, 0),
    (0, 1, 1),
    (0, 1, -1),
    (1, 0, 0),
    (1, 0, 1),
    (1, 0, -1),
    (1, 1, 0),
    (1, -1, 0),
    (1, 1, 1),
    (1, 1, -1),
    (1, -1, 1),
    (1, -1, -1),
)
_N_IN_PLANE = 4

_CM_NAMES: tuple[str, ...] = (
    "joint_max", "joint_avg", "joint_var", "joint_entr", "diff_avg", "diff_var", "diff_entr", "sum_avg",
    "sum_var", "sum_entr", "energy", "contrast", "dissimilarity", "inv_diff", "inv_diff_norm", "inv_diff_mom",
    "inv_diff_mom_norm", "inv_var", "corr", "auto_corr", "clust_tend", "clust_shade", "clust_prom",
    "info_corr1", "info_corr2",
)  # fmt: skip

# Families whose matrix has grey level i against a count-like j >= 1 (run length, zone size, distance,
# dependence count) share one set of feature definitions; these are their IBSI names, in the order
# short-j, long-j, low-grey, high-grey, short-low, short-high, long-low, long-high emphases, grey-level
# non-uniformity (+ normalised), j non-uniformity (+ normalised), percentage, grey-level variance,
# j variance, entropy (and NGLDM's energy).
_IJ_NAMES: dict[str, tuple[str, ...]] = {
    "rlm": (
        "sre", "lre", "lgre", "hgre", "srlge", "srhge", "lrlge", "lrhge", "glnu", "glnu_norm", "rlnu",
        "rlnu_norm", "r_perc", "gl_var", "rl_var", "rl_entr",
    ),
    "szm": (
        "sze", "lze", "lgze", "hgze", "szlge", "szhge", "lzlge", "lzhge", "glnu", "glnu_norm", "zsnu",
        "zsnu_norm", "z_perc", "gl_var", "zs_var", "zs_entr",
    ),
    "dzm": (
        "sde", "lde", "lgze", "hgze", "sdlge", "sdhge", "ldlge", "ldhge", "glnu", "glnu_norm", "zdnu",
        "zdnu_norm", "z_perc", "gl_var", "zd_var", "zd_entr",
    ),
    "ngl": (
        "lde", "hde", "lgce", "hgce", "ldlge", "ldhge", "hdlge", "hdhge", "glnu", "glnu_norm", "dcnu",
        "dcnu_norm", "dc_perc", "gl_var", "dc_var", "dc_entr", "dc_energy",
    ),
}  # fmt: skip
_NGT_NAMES: tuple[str, ...] = ("coarseness", "contrast", "busyness", "complexity", "strength")

# Above this many cells a histogram is counted with np.unique instead of a dense np.bincount.
_DENSE_LIMIT = 1 << 23
# NGTDM's pairwise feature arrays hold up to this many cells (K x K per matrix) at a time.
_CHUNK_CELLS = 1 << 20
_LN2 = math.log(2.0)


def ibsi_texture_features(
    levels: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    families: Iterable[str] = FAMILIES,
    aggregations: Iterable[str] = AGGREGATIONS,
    slice_axis: int = 2,
    distance_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """IBSI 1 texture features of the grey levels ``levels`` (integers 1..``n_levels``) inside ``mask``.

    Returns ``{IBSI tag: value}``, e.g. ``cm_joint_max_3D_avg``, ``rlm_sre_2D_comb``, ``szm_sze_3D``, for
    each of ``families`` (subset of :data:`FAMILIES`) and ``aggregations`` (subset of
    :data:`AGGREGATIONS`; "2D" and "2_5D" slice along ``slice_axis``). ``distance_mask`` is the
    morphological ROI mask whose border the GLDZM distance is measured to (IBSI 3.9: the intensity
    mask after re-segmentation may have holes); default ``mask``. Voxels outside ``mask`` are ignored.
    """
    levels = np.asarray(levels)
    mask = np.asarray(mask).astype(bool, copy=False)
    families = tuple(families)
    aggregations = tuple(aggregations)
    unknown = [f for f in families if f not in FAMILIES] + [a for a in aggregations if a not in AGGREGATIONS]
    if unknown:
        raise MultimodalError(
            f"unknown texture families/aggregations {unknown}; families are {list(FAMILIES)}, "
            f"aggregations {list(AGGREGATIONS)}"
        )
    if levels.ndim != 3 or mask.shape != levels.shape:
        raise MultimodalError(f"levels and mask must be 3D of one shape, got {levels.shape} and {mask.shape}")
    if distance_mask is not None:
        distance_mask = np.asarray(distance_mask).astype(bool, copy=False)
        if distance_mask.shape != mask.shape:
            raise MultimodalError(f"distance_mask shape {distance_mask.shape} differs from mask shape {mask.shape}")
        outside = int(np.count_nonzero(mask & ~distance_mask))
        if outside:
            raise MultimodalError(f"{outside} voxels of mask lie outside distance_mask (it must contain the ROI)")
    if isinstance(n_levels, bool) or int(n_levels) != n_levels or n_levels < 1:
        raise MultimodalError(f"n_levels must be a positive integer, got {n_levels}")
    n_levels = int(n_levels)
    if not -3 <= slice_axis < 3:
        raise MultimodalError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if not mask.any():
        raise MultimodalError("mask is empty (no voxel inside the ROI)")
    roi_values = levels[mask]
    if not np.issubdtype(levels.dtype, np.integer):
        if not np.all(np.isfinite(roi_values)) or np.any(roi_values != np.round(roi_values)):
            raise MultimodalError("grey levels inside the mask must be integers")
    lo, hi = roi_values.min(), roi_values.max()
    if lo < 1 or hi > n_levels:
        raise MultimodalError(f"grey levels inside the mask must lie in 1..{n_levels}, found {lo:g}..{hi:g}")

    # Crop to the bounding box of the ROI, slices along axis 0; only grey levels present in the ROI
    # get a matrix row (g holds their values), so the matrices stay small for a fine discretisation.
    box = _bounding_box(mask)
    roi = np.moveaxis(mask[box], slice_axis, 0)
    if distance_mask is None:
        dist_roi, dist_crop = roi, (slice(None),) * 3
    else:  # its own bounding box, which holds the ROI's; dist_crop cuts the ROI's out of it
        dist_box = _bounding_box(distance_mask)
        dist_roi = np.moveaxis(distance_mask[dist_box], slice_axis, 0)
        crop = [slice(b.start - d.start, b.stop - d.start) for b, d in zip(box, dist_box, strict=True)]
        axis = slice_axis % 3
        dist_crop = (crop[axis], *(crop[ax] for ax in range(3) if ax != axis))  # the order moveaxis gives
    present = np.unique(roi_values).astype(np.int64)
    lut = np.zeros(n_levels + 1, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    lv = np.zeros(roi.shape, dtype=np.int32)
    lv[roi] = lut[np.moveaxis(levels[box], slice_axis, 0)[roi].astype(np.int64)]
    ctx = _Context(lv=lv, roi=roi, g=present.astype(np.float64), n_levels=n_levels)
    ctx.dist_roi, ctx.dist_crop = dist_roi, dist_crop

    out: dict[str, float] = {}
    for family in FAMILIES:
        if family in families:
            out.update(_FAMILY_FUNCTIONS[family](ctx, aggregations))
    return out


def texture_tags(families: Iterable[str] = FAMILIES, aggregations: Iterable[str] = AGGREGATIONS) -> list[str]:
    """The IBSI tags :func:`ibsi_texture_features` returns for ``families`` and ``aggregations``, in its
    order (families in :data:`FAMILIES` order, then aggregations in :data:`AGGREGATIONS` order)."""
    families = tuple(families)
    aggregations = tuple(aggregations)
    tags: list[str] = []
    for family in FAMILIES:
        if family not in families:
            continue
        names = _CM_NAMES if family == "cm" else _NGT_NAMES if family == "ngt" else _IJ_NAMES[family]
        for agg in AGGREGATIONS:
            if agg not in aggregations:
                continue
            suffixes = (f"{agg}_avg", f"{agg}_comb") if family in ("cm", "rlm") else (agg,)
            tags += [f"{family}_{name}_{suffix}" for suffix in suffixes for name in names]
    return tags


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(mask))


class _Context:
    """The cropped volume (slices along axis 0) and what several families derive from it."""

    def __init__(self, lv: np.ndarray, roi: np.ndarray, g: np.ndarray, n_levels: int):
        self.lv = lv  # grey-level index 1..K inside the ROI, 0 outside
        self.roi = roi
        self.dist_roi = roi  # the mask the GLDZM distance is measured in ...
        self.dist_crop: tuple[slice, ...] = (slice(None),) * 3  # ... and where lv lies in it
        self.g = g  # grey level of each index 1..K (g[k - 1])
        self.k = g.size
        self.n_levels = n_levels
        self.n_slices = lv.shape[0]
        self.voxels_per_slice = roi.reshape(roi.shape[0], -1).sum(axis=1).astype(np.float64)
        self.n_voxels = float(self.voxels_per_slice.sum())
        self._neighbours: tuple[np.ndarray, ...] | None = None
        self._zones: dict[bool, tuple[np.ndarray, ...]] = {}

    def neighbours(self) -> tuple[np.ndarray, ...]:
        """Per ROI voxel (C order): level index, slice, and over the in-plane 8- / other 18-neighbours in
        the ROI: neighbour count, sum of neighbour grey levels, count of neighbours with the same level."""
        if self._neighbours is None:
            gv = np.concatenate(([0.0], self.g))[self.lv]
            pad_lv = np.pad(self.lv, 1)
            pad_g = np.pad(gv, 1)
            pad_in = np.pad(self.roi, 1)
            centre = (slice(1, -1),) * 3
            c_lv = pad_lv[centre]
            stats = []
            for in_plane in (True, False):
                count = np.zeros(self.lv.shape, dtype=np.int16)
                total = np.zeros(self.lv.shape, dtype=np.float64)
                same = np.zeros(self.lv.shape, dtype=np.int16)
                for ds in (0,) if in_plane else (-1, 1):
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            if ds == da == db == 0:
                                continue
                            view = (slice(1 + ds, pad_lv.shape[0] - 1 + ds), slice(1 + da, pad_lv.shape[1] - 1 + da),
                                    slice(1 + db, pad_lv.shape[2] - 1 + db))  # fmt: skip
                            count += pad_in[view]
                            total += pad_g[view]
                            same += pad_lv[view] == c_lv
                stats += [count[self.roi], total[self.roi], same[self.roi]]
            slices = np.nonzero(self.roi)[0]
            self._neighbours = (self.lv[self.roi] - 1, slices, *stats)
        return self._neighbours

    def zones(self, in_plane: bool) -> tuple[np.ndarray, ...]:
        """Zones of connected voxels of one grey level (8-connected in the slice plane or 26-connected):
        level index, size, slice of the zone, and its smallest distance to the ROI border (GLDZM)."""
        if in_plane not in self._zones:
            cross = ndimage.generate_binary_structure(3, 1)
            if in_plane:
                cross[[0, 2]] = False
            # IBSI 3.9: distance to the ROI edge in 4- (2D) / 6-connected (3D) steps, voxels outside the
            # ROI (and outside the image) being the edge; a voxel on the border is at distance 1.
            dist = ndimage.distance_transform_cdt(np.pad(self.dist_roi, 1), metric=cross)[1:-1, 1:-1, 1:-1]
            dist = dist[self.dist_crop]
            # Zones are the connected components of the graph joining neighbouring ROI voxels of equal
            # grey level: one pass over the 13 (or 4 in-plane) directions and one connected_components
            # call, instead of one ndimage.label per grey level (3x faster at 32 levels).
            n_vox = int(self.n_voxels)
            node = np.full(self.lv.shape, -1, dtype=np.int64)
            node[self.roi] = np.arange(n_vox)
            rows, cols = [], []
            for direction in _DIRECTIONS[: _N_IN_PLANE if in_plane else None]:
                src, dst = _pair_slices(self.lv.shape, direction)
                a = self.lv[src]
                same = (a == self.lv[dst]) & (a > 0)
                rows.append(node[src][same])
                cols.append(node[dst][same])
            row = np.concatenate(rows)
            graph = sparse.csr_matrix((np.ones(row.size, dtype=np.int8), (row, np.concatenate(cols))), (n_vox, n_vox))
            n_zones, zone = connected_components(graph, directed=False)
            lvl = self.lv[self.roi].astype(np.int64) - 1
            zone_lvl = np.zeros(n_zones, dtype=np.int64)
            zone_lvl[zone] = lvl  # every voxel of a zone has its grey level ...
            zone_slice = np.zeros(n_zones, dtype=np.int64)
            zone_slice[zone] = np.nonzero(self.roi)[0]  # ... and, in 2D, its slice
            zone_dist = np.full(n_zones, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(zone_dist, zone, dist[self.roi].astype(np.int64))
            parts = (zone_lvl, np.bincount(zone, minlength=n_zones), zone_slice, zone_dist)
            self._zones[in_plane] = parts
        return self._zones[in_plane]


# --------------------------------------------------------------------------------------------------
# GLCM (3.6)


def _cm(ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    k = ctx.k
    lv = ctx.lv
    n_slices = ctx.n_slices
    n_dir = len(_DIRECTIONS) if "3D" in aggregations else _N_IN_PLANE
    # Count the voxel pairs per (slice and in-plane direction, or other direction; i; j) once: every
    # aggregation merges these cells. Only non-zero cells are kept, so a fine discretisation (large K)
    # costs no more than a coarse one.
    n_rows = n_slices * _N_IN_PLANE + n_dir - _N_IN_PLANE
    dense = np.zeros((n_rows, k * k)) if n_rows * k * k <= _DENSE_LIMIT else None
    rows, codes = [], []
    for d in range(n_dir):
        src, dst = _pair_slices(lv.shape, _DIRECTIONS[d])
        a = lv[src]
        b = lv[dst]
        both = (a > 0) & (b > 0)
        a = a[both].astype(np.int64) - 1
        b = b[both].astype(np.int64) - 1
        code = np.concatenate([a * k + b, b * k + a])  # both orders: symmetric matrices
        if d < _N_IN_PLANE:
            row = np.tile(np.nonzero(both)[0] * _N_IN_PLANE + d, 2)
        else:
            row = np.full(code.size, n_slices * _N_IN_PLANE + d - _N_IN_PLANE, dtype=np.int64)
        if dense is None:
            rows.append(row)
            codes.append(code)
        elif d < _N_IN_PLANE:
            counts = np.bincount(row // _N_IN_PLANE * (k * k) + code, minlength=n_slices * k * k)
            dense[d : n_slices * _N_IN_PLANE : _N_IN_PLANE] = counts.reshape(n_slices, k * k)
        else:
            dense[n_slices * _N_IN_PLANE + d - _N_IN_PLANE] = np.bincount(code, minlength=k * k)
    if dense is None:
        cells, cnt = _merge_cells(np.concatenate(rows) * (k * k) + np.concatenate(codes), None, n_rows * k * k)
    else:
        cells = np.flatnonzero(dense)
        cnt = dense.ravel()[cells]
    row = cells // (k * k)
    i = (cells // k) % k
    j = cells % k
    planar = row < n_slices * _N_IN_PLANE
    dir_a = np.where(planar, row % _N_IN_PLANE, row - n_slices * _N_IN_PLANE + _N_IN_PLANE)
    slc = row // _N_IN_PLANE

    def feats(group: np.ndarray, n_groups: int, *, all_directions: bool = False) -> dict[str, np.ndarray]:
        sel = slice(None) if all_directions else planar
        return _glcm_features(group, i[sel], j[sel], cnt[sel], n_groups, g=ctx.g, n_levels=ctx.n_levels)

    out: dict[str, float] = {}
    if "2D" in aggregations:
        _put(out, "cm", "2D_avg", feats(row[planar], n_slices * _N_IN_PLANE))
        _put(out, "cm", "2D_comb", feats(slc[planar], n_slices))
    if "2_5D" in aggregations:
        _put(out, "cm", "2_5D_avg", feats(dir_a[planar], _N_IN_PLANE))
        _put(out, "cm", "2_5D_comb", feats(np.zeros(int(planar.sum()), dtype=np.int64), 1))
    if "3D" in aggregations:
        _put(out, "cm", "3D_avg", feats(dir_a, len(_DIRECTIONS), all_directions=True))
        _put(out, "cm", "3D_comb", feats(np.zeros_like(dir_a), 1, all_directions=True))
    return out


def _glcm_features(
    group: np.ndarray, i: np.ndarray, j: np.ndarray, counts: np.ndarray, n_groups: int, *, g: np.ndarray, n_levels: int
) -> dict[str, np.ndarray]:
    """IBSI GLCM features of the symmetric matrices M_group[i, j] holding ``counts``, one value per group
    (NaN for an empty one). Works on the non-zero cells; ``i``, ``j`` index the grey levels ``g``."""
    k = g.size
    cells, c = _merge_cells((group * k + i) * k + j, counts, n_groups * k * k)
    group = cells // (k * k)
    gi = g[(cells // k) % k]
    gj = g[cells % k]
    total = np.bincount(group, weights=c, minlength=n_groups)
    p = c / np.where(total > 0, total, 1.0)[group]

    def wsum(weight: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=p * weight, minlength=n_groups)

    # Marginals (rows and columns agree: the matrices are symmetric), diagonal (|i - j| = 0..Ng-1) and
    # cross-diagonal (i + j = 2..2Ng) probabilities, all dense per group.
    marginal = np.bincount(group * k + (cells // k) % k, weights=p, minlength=n_groups * k).reshape(n_groups, k)
    mu = marginal @ g
    var = np.sum(marginal * (g[None, :] - mu[:, None]) ** 2, axis=1)
    diff = gi - gj
    absdiff = np.abs(diff)
    n_sum = 2 * n_levels + 1
    p_diff = np.bincount(group * n_levels + absdiff.astype(np.int64), weights=p, minlength=n_groups * n_levels)
    p_diff = p_diff.reshape(n_groups, n_levels)
    p_sum = np.bincount(group * n_sum + (gi + gj).astype(np.int64), weights=p, minlength=n_groups * n_sum)
    p_sum = p_sum.reshape(n_groups, n_sum)
    kd = np.arange(n_levels, dtype=np.float64)
    ks = np.arange(n_sum, dtype=np.float64)
    diff_avg = p_diff @ kd
    sum_avg = p_sum @ ks
    joint_entr = np.bincount(group, weights=entr(p), minlength=n_groups) / _LN2
    hx = entr(marginal).sum(axis=1) / _LN2
    marg_i = marginal.ravel()[group * k + (cells // k) % k]
    marg_j = marginal.ravel()[group * k + cells % k]
    hxy1 = -wsum(np.log2(marg_i * marg_j))
    hxy2 = 2.0 * hx  # -sum_ij p_i p_j log2(p_i p_j) = HX + HY
    joint_max = np.zeros(n_groups)
    np.maximum.at(joint_max, group, p)
    cluster = gi + gj - 2.0 * mu[group]
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(var > 0, (wsum(gi * gj) - mu**2) / np.where(var > 0, var, 1.0), 1.0)
        info_corr1 = np.where(hx > 0, (joint_entr - hxy1) / np.where(hx > 0, hx, 1.0), 0.0)
        inv_var = wsum(np.where(absdiff > 0, 1.0 / np.where(absdiff > 0, diff**2, 1.0), 0.0))
    feats = {
        "joint_max": joint_max,
        "joint_avg": mu,
        "joint_var": var,
        "joint_entr": joint_entr,
        "diff_avg": diff_avg,
        "diff_var": np.sum(p_diff * (kd[None, :] - diff_avg[:, None]) ** 2, axis=1),
        "diff_entr": entr(p_diff).sum(axis=1) / _LN2,
        "sum_avg": sum_avg,
        "sum_var": np.sum(p_sum * (ks[None, :] - sum_avg[:, None]) ** 2, axis=1),
        "sum_entr": entr(p_sum).sum(axis=1) / _LN2,
        "energy": np.bincount(group, weights=p**2, minlength=n_groups),
        "contrast": wsum(diff**2),
        "dissimilarity": wsum(absdiff),
        "inv_diff": wsum(1.0 / (1.0 + absdiff)),
        "inv_diff_norm": wsum(1.0 / (1.0 + absdiff / n_levels)),
        "inv_diff_mom": wsum(1.0 / (1.0 + diff**2)),
        "inv_diff_mom_norm": wsum(1.0 / (1.0 + diff**2 / n_levels**2)),
        "inv_var": inv_var,
        "corr": corr,
        "auto_corr": wsum(gi * gj),
        "clust_tend": wsum(cluster**2),
        "clust_shade": wsum(cluster**3),
        "clust_prom": wsum(cluster**4),
        "info_corr1": info_corr1,
        "info_corr2": np.sqrt(1.0 - np.exp(-2.0 * np.clip(hxy2 - joint_entr, 0, None))),
    }
    return {name: np.where(total > 0, feats[name], np.nan) for name in _CM_NAMES}


def _merge_cells(codes: np.ndarray, weights: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``codes`` (all in 0..size-1) and the summed ``weights`` (default 1 each) of each, as float."""
    if size <= _DENSE_LIMIT:
        dense = np.bincount(codes, weights=weights, minlength=size)
        cells = np.flatnonzero(dense)
        return cells, dense[cells].astype(np.float64)
    cells, inverse = np.unique(codes, return_inverse=True)
    return cells, np.bincount(inverse.ravel(), weights=weights, minlength=cells.size).astype(np.float64)


def _pair_slices(shape: tuple[int, ...], direction: tuple[int, int, int]) -> tuple[tuple[slice, ...], ...]:
    """Slices selecting the voxels v and v + direction wherever both lie inside an array of ``shape``."""
    src: list[slice] = []
    dst: list[slice] = []
    for n, d in zip(shape, direction, strict=True):
        if d == 0:
            src.append(slice(None))
            dst.append(slice(None))
        elif d > 0:
            src.append(slice(0, max(n - d, 0)))
            dst.append(slice(d, n))
        else:
            src.append(slice(-d, n))
            dst.append(slice(0, max(n + d, 0)))
    return tuple(src), tuple(dst)


# --------------------------------------------------------------------------------------------------
# GLRLM (3.7)


def _rlm(ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    n_dir = len(_DIRECTIONS) if "3D" in aggregations else _N_IN_PLANE
    # Count the runs per (slice and in-plane direction, or other direction; grey level; length) once:
    # every aggregation merges these cells.
    k = ctx.k
    n_slices = ctx.n_slices
    n_len = max(ctx.lv.shape) + 1
    n_rows = n_slices * _N_IN_PLANE + n_dir - _N_IN_PLANE
    dense = np.zeros((n_rows, k * n_len)) if n_rows * k * n_len <= _DENSE_LIMIT else None
    codes = []
    for d in range(n_dir):
        run_lv, run_len, run_slice = _runs(ctx.lv, _DIRECTIONS[d])
        code = (run_lv - 1) * n_len + run_len
        row = run_slice * _N_IN_PLANE + d if d < _N_IN_PLANE else n_slices * _N_IN_PLANE + d - _N_IN_PLANE
        if dense is None:
            codes.append(row * (k * n_len) + code)
        elif d < _N_IN_PLANE:
            counts = np.bincount(run_slice * (k * n_len) + code, minlength=n_slices * k * n_len)
            dense[d : n_slices * _N_IN_PLANE : _N_IN_PLANE] = counts.reshape(n_slices, k * n_len)
        else:
            dense[row] = np.bincount(code, minlength=k * n_len)
    if dense is None:
        cells, cnt = _merge_cells(np.concatenate(codes), None, n_rows * k * n_len)
    else:
        cells = np.flatnonzero(dense)
        cnt = dense.ravel()[cells]
    len_a = cells % n_len
    lvl_a = (cells // n_len) % k
    fine = cells // (n_len * k)
    planar = fine < n_slices * _N_IN_PLANE
    dir_a = np.where(planar, fine % _N_IN_PLANE, fine - n_slices * _N_IN_PLANE + _N_IN_PLANE)
    slc_a = np.where(planar, fine // _N_IN_PLANE, 0)
    n_vox = ctx.n_voxels
    per_slice = ctx.voxels_per_slice
    out: dict[str, float] = {}
    s, pl, lp, dp, cp = slc_a[planar], lvl_a[planar], len_a[planar], dir_a[planar], cnt[planar]

    def ij(group: np.ndarray, n_voxels: np.ndarray, *, all_directions: bool = False) -> dict[str, np.ndarray]:
        if all_directions:
            return _ij_features(group, lvl_a, len_a, n_voxels, g=ctx.g, counts=cnt)
        return _ij_features(group, pl, lp, n_voxels, g=ctx.g, counts=cp)

    if "2D" in aggregations:
        _put(out, "rlm", "2D_avg", ij(s * _N_IN_PLANE + dp, np.repeat(per_slice, _N_IN_PLANE)))
        _put(out, "rlm", "2D_comb", ij(s, per_slice * _N_IN_PLANE))
    if "2_5D" in aggregations:
        _put(out, "rlm", "2_5D_avg", ij(dp, np.full(_N_IN_PLANE, n_vox)))
        _put(out, "rlm", "2_5D_comb", ij(np.zeros_like(pl), np.array([n_vox * _N_IN_PLANE])))
    if "3D" in aggregations:
        n_all = len(_DIRECTIONS)
        _put(out, "rlm", "3D_avg", ij(dir_a, np.full(n_all, n_vox), all_directions=True))
        _put(out, "rlm", "3D_comb", ij(np.zeros_like(lvl_a), np.array([n_vox * n_all]), all_directions=True))
    return _rename(out, "rlm")


def _runs(lv: np.ndarray, direction: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Grey-level index, length and slice of every run of equal ROI grey levels along ``direction``.

    The array is sheared so that the lines along ``direction`` become rows along one axis (the first
    axis whose direction component is non-zero), that axis is made last and padded with a 0, and the
    rows are laid end to end: runs are then stretches of equal values of one 1D array. Axis 0 (the
    slice) is kept first, so for an in-plane direction a run's slice follows from its position.
    """
    shape = lv.shape
    k = next(ax for ax, d in enumerate(direction) if d != 0)
    others = [ax for ax in range(3) if ax != k]
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    new_shape: list[int] = []
    index: list[np.ndarray] = []
    for ax in others:
        d = direction[ax]
        if d == 0:
            new_shape.append(shape[ax])
            index.append(grids[ax])
        else:
            offset = shape[k] - 1 if d > 0 else 0
            new_shape.append(shape[ax] + shape[k] - 1)
            index.append(grids[ax] - d * grids[k] + offset)
    sheared = np.zeros((*new_shape, shape[k] + 1), dtype=lv.dtype)
    sheared[index[0], index[1], grids[k]] = lv
    flat = sheared.ravel()
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.append(starts, flat.size))
    run_lv = flat[starts].astype(np.int64)
    keep = run_lv > 0
    starts = starts[keep]
    run_slice = starts // (new_shape[1] * (shape[k] + 1)) if direction[0] == 0 else np.zeros_like(starts)
    return run_lv[keep], lengths[keep].astype(np.int64), run_slice.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# GLSZM (3.8), GLDZM (3.9)


def _szm_dzm(family: str, ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    ij = lambda *args: _ij_features(*args, g=ctx.g)  # noqa: E731
    for agg in ("2D", "2_5D", "3D"):
        if agg not in aggregations:
            continue
        lvl, size, slc, dist = ctx.zones(in_plane=agg != "3D")
        j = size if family == "szm" else dist
        if agg == "2D":
            feats = ij(slc, lvl, j, ctx.voxels_per_slice)
        else:
            feats = ij(np.zeros_like(lvl), lvl, j, np.array([ctx.n_voxels]))
        _put(out, family, agg, feats)
    return _rename(out, family)


def _szm(ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    return _szm_dzm("szm", ctx, aggregations)


def _dzm(ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    return _szm_dzm("dzm", ctx, aggregations)


# --------------------------------------------------------------------------------------------------
# NGTDM (3.10), NGLDM (3.11)


def _ngt(ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    lvl, slc, count2, total2, _, count3, total3, _ = ctx.neighbours()
    k = ctx.k
    out: dict[str, float] = {}
    for agg in ("2D", "2_5D", "3D"):
        if agg not in aggregations:
            continue
        count = count2 if agg != "3D" else count2 + count3
        total = total2 if agg != "3D" else total2 + total3
        # IBSI 3.10: only neighbours inside the ROI count; a voxel without any is left out.
        has = count > 0
        s_i = np.abs(ctx.g[lvl[has]] - total[has] / count[has])
        group = slc[has] if agg == "2D" else np.zeros(int(has.sum()), dtype=np.int64)
        n_groups = ctx.n_slices if agg == "2D" else 1
        code = group * k + lvl[has]
        n = np.bincount(code, minlength=n_groups * k).reshape(n_groups, k)
        s = np.bincount(code, weights=s_i, minlength=n_groups * k).reshape(n_groups, k)
        _put(out, "ngt", agg, _by_chunks(_ngtdm_features, k, n.astype(np.float64), s, g=ctx.g))
    return out


def _by_chunks(function, k: int, *arrays: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """``function(*arrays)`` on bounded runs of the arrays' first axis (K x K temporaries per item),
    the per-item results concatenated."""
    chunk = max(1, _CHUNK_CELLS // (k * k))
    if arrays[0].shape[0] <= chunk:
        return function(*arrays, **kwargs)
    parts = [function(*(x[i : i + chunk] for x in arrays), **kwargs) for i in range(0, arrays[0].shape[0], chunk)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _ngtdm_features(n: np.ndarray, s: np.ndarray, *, g: np.ndarray) -> dict[str, np.ndarray]:
    """IBSI NGTDM features per row of ``n`` (voxel counts per grey level) and ``s`` (summed differences)."""
    n_vc = n.sum(axis=1)
    p = n / np.where(n_vc > 0, n_vc, 1.0)[:, None]
    valid = p > 0
    n_gp = valid.sum(axis=1).astype(np.float64)
    ps = np.sum(p * s, axis=1)
    s_total = s.sum(axis=1)
    pair = valid[:, :, None] & valid[:, None, :]
    gdiff = g[:, None] - g[None, :]
    pi = p[:, :, None]
    pj = p[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        coarseness = np.where(ps > 0, 1.0 / np.where(ps > 0, ps, 1.0), 1e6)
        contrast_pairs = np.sum(np.where(pair, pi * pj * gdiff**2, 0.0), axis=(1, 2))
        contrast = np.where(n_gp > 1, contrast_pairs / (n_gp * (n_gp - 1)) * s_total / n_vc, 0.0)
        gp = p * g
        busy_den = np.sum(np.where(pair, np.abs(gp[:, :, None] - gp[:, None, :]), 0.0), axis=(1, 2))
        busyness = np.where(busy_den > 0, ps / busy_den, 0.0)
        psi = (p * s)[:, :, None]
        psj = (p * s)[:, None, :]
        complexity = np.sum(np.where(pair, np.abs(gdiff) * (psi + psj) / (pi + pj), 0.0), axis=(1, 2)) / n_vc
        strength_num = np.sum(np.where(pair, (pi + pj) * gdiff**2, 0.0), axis=(1, 2))
        strength = np.where(s_total > 0, strength_num / s_total, 0.0)
    feats = {"coarseness": coarseness, "contrast": contrast, "busyness": busyness, "complexity": complexity,
             "strength": strength}  # fmt: skip
    return {name: np.where(n_vc > 0, feats[name], np.nan) for name in _NGT_NAMES}


def _ngl(ctx: _Context, aggregations: tuple[str, ...]) -> dict[str, float]:
    lvl, slc, _, _, same2, _, _, same3 = ctx.neighbours()
    out: dict[str, float] = {}
    ij = lambda *args: _ij_features(*args, g=ctx.g, energy=True)  # noqa: E731
    for agg in ("2D", "2_5D", "3D"):
        if agg not in aggregations:
            continue
        # IBSI 3.11, coarseness 0, distance 1: j = 1 + the number of ROI neighbours of the same level.
        dep = 1 + same2.astype(np.int64) + (same3.astype(np.int64) if agg == "3D" else 0)
        if agg == "2D":
            feats = ij(slc, lvl, dep, ctx.voxels_per_slice)
        else:
            feats = ij(np.zeros_like(lvl), lvl, dep, np.array([ctx.n_voxels]))
        _put(out, "ngl", agg, feats)
    return _rename(out, "ngl")


# --------------------------------------------------------------------------------------------------
# shared: features of grey level i x count-like j matrices, given as one entry per run/zone/voxel


_IJ_GENERIC = (
    "short", "long", "low", "high", "short_low", "short_high", "long_low", "long_high", "glnu", "glnu_norm",
    "jnu", "jnu_norm", "perc", "gl_var", "j_var", "entr", "energy",
)  # fmt: skip


def _ij_features(
    group: np.ndarray,
    lvl: np.ndarray,
    j: np.ndarray,
    n_voxels: np.ndarray,
    *,
    g: np.ndarray,
    counts: np.ndarray | None = None,
    energy: bool = False,
) -> dict[str, np.ndarray]:
    """Features of the matrices M_group[i, j] holding ``counts`` (default 1 each) of the entries
    (group, lvl, j), one feature array per name of ``_IJ_GENERIC`` with one value per group (NaN for a
    group without entries); ``n_voxels[group]`` is the voxel count the percentage feature divides by."""
    n_groups = n_voxels.size
    k = g.size
    j_max = int(j.max()) + 1 if j.size else 1
    # Collapse the entries into the non-zero cells of the matrices; everything below works on cells.
    cell_size = n_groups * k * j_max
    cells, c = _merge_cells((group * k + lvl) * j_max + j, counts, cell_size)
    cell_group = cells // (k * j_max)
    cell_lvl = (cells // j_max) % k
    jf = (cells % j_max).astype(np.float64)
    gi = g[cell_lvl]
    n_s = np.bincount(cell_group, weights=c, minlength=n_groups)
    safe_n = np.where(n_s > 0, n_s, 1.0)
    p = c / safe_n[cell_group]

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell_group, weights=p * values, minlength=n_groups)

    gi2 = gi**2
    j2 = jf**2
    per_level = np.bincount(cell_group * k + cell_lvl, weights=c, minlength=n_groups * k)
    glnu_sum = np.bincount(np.arange(n_groups * k) // k, weights=per_level**2, minlength=n_groups)
    gj_codes = cell_group * j_max + (cells % j_max)
    if n_groups * j_max <= _DENSE_LIMIT:
        per_j = np.bincount(gj_codes, weights=c, minlength=n_groups * j_max)
        jnu_sum = np.bincount(np.arange(n_groups * j_max) // j_max, weights=per_j**2, minlength=n_groups)
    else:
        gj_unique, inverse = np.unique(gj_codes, return_inverse=True)
        per_j = np.bincount(inverse.ravel(), weights=c)
        jnu_sum = np.bincount(gj_unique // j_max, weights=per_j**2, minlength=n_groups)
    mu_g = mean(gi)
    mu_j = mean(jf)
    feats = {
        "short": mean(1.0 / j2),
        "long": mean(j2),
        "low": mean(1.0 / gi2),
        "high": mean(gi2),
        "short_low": mean(1.0 / (gi2 * j2)),
        "short_high": mean(gi2 / j2),
        "long_low": mean(j2 / gi2),
        "long_high": mean(gi2 * j2),
        "glnu": glnu_sum / safe_n,
        "glnu_norm": glnu_sum / safe_n**2,
        "jnu": jnu_sum / safe_n,
        "jnu_norm": jnu_sum / safe_n**2,
        "perc": n_s / np.where(n_voxels > 0, n_voxels, 1.0),
        "gl_var": mean((gi - mu_g[cell_group]) ** 2),
        "j_var": mean((jf - mu_j[cell_group]) ** 2),
        "entr": np.bincount(cell_group, weights=entr(p), minlength=n_groups) / _LN2,
    }
    if energy:
        feats["energy"] = np.bincount(cell_group, weights=p**2, minlength=n_groups)
    return {name: np.where(n_s > 0, value, np.nan) for name, value in feats.items()}


def _put(out: dict[str, float], family: str, suffix: str, feats: dict[str, np.ndarray]) -> None:
    """Average each feature over its matrices that had entries and store it as ``family_name_suffix``."""
    for name, values in feats.items():
        finite = values[~np.isnan(values)]
        out[f"{family}_{name}_{suffix}"] = float(finite.mean()) if finite.size else math.nan


def _rename(out: dict[str, float], family: str) -> dict[str, float]:
    """Generic i x j feature names -> the family's IBSI names (``short`` -> ``sre`` for GLRLM)."""
    names = dict(zip(_IJ_GENERIC, _IJ_NAMES[family], strict=False))
    renamed: dict[str, float] = {}
    for key, value in out.items():
        _, rest = key.split("_", 1)
        for generic, ibsi in names.items():
            if rest.startswith(generic + "_") and rest[len(generic) + 1 :] in _SUFFIXES:
                renamed[f"{family}_{ibsi}_{rest[len(generic) + 1 :]}"] = value
                break
    return renamed


_SUFFIXES = ("2D", "2_5D", "3D", "2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb", "3D_avg", "3D_comb")

_FAMILY_FUNCTIONS = {"cm": _cm, "rlm": _rlm, "szm": _szm, "dzm": _dzm, "ngt": _ngt, "ngl": _ngl}
