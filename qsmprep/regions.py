"""Regional susceptibility statistics in parts per billion, left, right and both hemispheres.

Susceptibility is only defined up to a constant, so every regional value is given relative to a
named reference region (2024 QSM consensus, MRM 2024, doi:10.1002/mrm.30006): the whole brain
(the mean over the reconstruction mask) and CSF (the mean over the lateral ventricles). Given a
Chimap referenced in any way, :func:`reference_offsets` finds the constant each reference
subtracts, so one map yields every reference.

Asymmetry is reported as the asymmetry index of the regional means (as used for nigral and
cortical iron in parkinsonism, e.g. Sjöström et al., Parkinsonism Relat Disord 2020;70:60-65)::

    AI = 200 * (R - L) / (R + L)                      (percent, positive: right > left)

This form assumes both means are positive. Relative to the whole brain, many regions sit near
zero or below (white matter, thalamus), and then ``R + L`` can vanish or change sign, so the
index explodes or points the wrong way. The absolute-value-safe form::

    AI_abs = 200 * (R - L) / (|R| + |L|)

always has the sign of ``R - L``, stays within [-200, 200] and equals AI when both means are
positive. Both are reported; AI is ``n/a`` when ``|R + L|`` is below 1 ppb.

Partial volume. A label's edge voxels mix the region with its neighbours (the white matter
around an iron-rich nucleus has negative susceptibility), and a label misplaced by a voxel
takes in more of them: the plain mean is pulled towards the surroundings. The **core mean**
(:func:`label_core`) averages only the label's voxels whose six face neighbours all belong to
the same region (one voxel of erosion), the "core" of a partial-volume-aware measure; a
region whose core would keep fewer than :data:`MIN_CORE_VOXELS` voxels uses the whole label.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

#: Columns of the regional statistics table, in order.
COLUMNS = ("region", "hemisphere", "reference", "mean_ppb", "median_ppb", "sd_ppb", "p05_ppb",
           "p95_ppb", "n_voxels", "volume_mm3", "ai_pct", "ai_abs_pct", "core_mean_ppb",
           "core_n_voxels")

#: Fewest voxels a region's core may keep; a smaller core falls back to the whole label.
MIN_CORE_VOXELS = 10

#: Reference names, in the order the table lists them.
REFERENCES = ("whole-brain", "csf")

#: Healthy adult susceptibility (ppb, relative to CSF) by region: the values of the 2019 QSM
#: reconstruction challenge's head phantom (Marques et al., Magn Reson Med 2021;86:526-542),
#: its cortical grey matter under ``grey_matter``. The registration prior and the report's
#: asymmetry statements use them.
HEALTHY_ADULT_PPB = {
    "globus_pallidus": 124.0, "globus_pallidus_externa": 124.0,
    "globus_pallidus_interna": 124.0, "substantia_nigra": 102.0,
    "substantia_nigra_compacta": 102.0, "substantia_nigra_reticulata": 102.0,
    "red_nucleus": 97.0, "caudate": 39.0, "putamen": 36.0, "thalamus": 16.0,
    "dentate_nucleus": 142.0, "grey_matter": 15.0, "white_matter": -30.0,
    "lateral_ventricle": 0.0,
}

#: Smallest |R + L| (ppb) for which the plain asymmetry index is reported.
MIN_AI_DENOMINATOR_PPB = 1.0

HEMISPHERES = ("L", "R", "bilateral")


def asymmetry_index(right, left) -> tuple[float, float]:
    """Asymmetry of two regional means: ``(AI, AI_abs)`` in percent (see the module docstring).

    Returns NaN for AI when ``|right + left| < MIN_AI_DENOMINATOR_PPB`` (values in ppb), and NaN
    for both when either value is not finite or both are zero.

    Examples
    --------
    >>> asymmetry_index(120.0, 80.0)
    (40.0, 40.0)
    >>> asymmetry_index(10.0, -10.0)[1]
    200.0
    """
    right, left = float(right), float(left)
    if not (math.isfinite(right) and math.isfinite(left)):
        return math.nan, math.nan
    total, magnitude = right + left, abs(right) + abs(left)
    plain = 200.0 * (right - left) / total if abs(total) >= MIN_AI_DENOMINATOR_PPB else math.nan
    safe = 200.0 * (right - left) / magnitude if magnitude > 0 else math.nan
    return plain, safe


def csf_reference_from_labels(labels, table, mask, *, region="lateral_ventricle"):
    """The CSF reference region: the atlas' lateral ventricles inside ``mask``.

    The ventricle labels are eroded by one voxel first (partial volume with the caudate,
    thalamus and choroid plexus) unless that would leave fewer than 10 voxels.

    Parameters
    ----------
    labels : array_like of int, 3-D
        The atlas in native space.
    table : list of dict
        Atlas table rows with ``index`` and ``name``.
    mask : array_like of bool, 3-D
        Voxels where the susceptibility map is defined.

    Returns
    -------
    numpy.ndarray of bool (empty when the atlas has no such region).
    """
    labels = np.asarray(labels)
    indices = [row["index"] for row in table if row["name"] == region]
    ventricles = np.isin(labels, indices) & np.asarray(mask, dtype=bool)
    eroded = ndimage.binary_erosion(ventricles)
    return eroded if np.count_nonzero(eroded) >= 10 else ventricles


def reference_offsets(chi_ppm, brain_mask, csf_mask=None) -> dict[str, float]:
    """The value (ppm) each reference subtracts from ``chi_ppm``: its mean over the region.

    Returns ``{"whole-brain": mean over brain_mask, "csf": mean over csf_mask}``; the CSF
    entry is left out when ``csf_mask`` is None or empty.
    """
    chi_ppm = np.asarray(chi_ppm, dtype=np.float64)
    offsets = {"whole-brain": float(np.mean(chi_ppm[np.asarray(brain_mask, dtype=bool)]))}
    if csf_mask is not None and np.any(csf_mask):
        offsets["csf"] = float(np.mean(chi_ppm[np.asarray(csf_mask, dtype=bool)]))
    return offsets


def label_core(region_mask) -> np.ndarray:
    """The core of a region: its voxels whose six face neighbours are all in the region.

    One voxel of binary erosion (6-connected structuring element, voxels outside the grid
    counted as outside the region). When fewer than :data:`MIN_CORE_VOXELS` voxels remain the
    region itself is returned, so a small nucleus on a coarse grid is still measured.
    """
    region_mask = np.asarray(region_mask, dtype=bool)
    if not region_mask.any():
        return region_mask
    box = ndimage.find_objects(region_mask.astype(np.int8))[0]
    padded = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
    core = np.zeros_like(region_mask)
    core[padded] = ndimage.binary_erosion(region_mask[padded], border_value=0)
    return core if np.count_nonzero(core) >= MIN_CORE_VOXELS else region_mask


def _core_values(chi_ppm, labels, mask, indices, boxes) -> np.ndarray:
    """``chi_ppm`` over the core of the union of ``indices`` (inside ``mask``), computed on the
    labels' bounding box (``boxes`` from ``ndimage.find_objects``) plus one voxel."""
    found = [boxes[i - 1] for i in indices if 0 < i <= len(boxes) and boxes[i - 1] is not None]
    if not found:
        return np.empty(0)
    box = tuple(slice(max(min(b[axis].start for b in found) - 1, 0),
                      max(b[axis].stop for b in found) + 1) for axis in range(labels.ndim))
    core = label_core(np.isin(labels[box], indices))
    return chi_ppm[box][core & mask[box]]


def _summary(values_ppb, voxel_volume_mm3) -> dict:
    count = int(values_ppb.size)
    if count == 0:
        nan = math.nan
        return {"mean_ppb": nan, "median_ppb": nan, "sd_ppb": nan, "p05_ppb": nan,
                "p95_ppb": nan, "n_voxels": 0, "volume_mm3": 0.0}
    p05, median, p95 = np.percentile(values_ppb, [5, 50, 95])
    return {
        "mean_ppb": float(np.mean(values_ppb)),
        "median_ppb": float(median),
        "sd_ppb": float(np.std(values_ppb, ddof=1)) if count > 1 else 0.0,
        "p05_ppb": float(p05),
        "p95_ppb": float(p95),
        "n_voxels": count,
        "volume_mm3": count * float(voxel_volume_mm3),
    }


def region_index_sets(table, composites=None) -> dict:
    """``{region: {hemisphere: [label indices]}}`` in table order, composites last.

    Hemispheres are ``L``, ``R`` and ``bilateral`` (their union; a region labelled only
    ``bilateral`` in the table has only that entry). A composite region (e.g. the globus
    pallidus from its external and internal parts) is the union of its parts, per hemisphere;
    composites whose parts are missing from the table are skipped.
    """
    regions: dict[str, dict[str, list[int]]] = {}
    for row in table:
        hemisphere = row.get("hemisphere") or "bilateral"
        sides = regions.setdefault(row["name"], {})
        sides.setdefault(hemisphere, []).append(int(row["index"]))
        if hemisphere != "bilateral":
            sides.setdefault("bilateral", []).append(int(row["index"]))
    for name, parts in (composites or {}).items():
        if name in regions or not all(part in regions for part in parts):
            continue
        union: dict[str, list[int]] = {}
        for part in parts:
            for hemisphere, indices in regions[part].items():
                union.setdefault(hemisphere, []).extend(indices)
        regions[name] = union
    return {name: {hemisphere: sides[hemisphere] for hemisphere in HEMISPHERES
                   if hemisphere in sides} for name, sides in regions.items()}


def regional_statistics(chi_ppm, labels, table, *, mask, voxel_size, offsets_ppm,
                        composites=None) -> list[dict]:
    """Per-region susceptibility statistics (ppb) for every reference, with asymmetry.

    Parameters
    ----------
    chi_ppm : array_like, 3-D
        Susceptibility map (ppm), referenced in any way.
    labels : array_like of int, 3-D
        Atlas labels on the same grid.
    table : list of dict
        Atlas rows: ``index``, ``name``, ``hemisphere`` (``L``/``R``/``bilateral``).
    mask : array_like of bool, 3-D
        Voxels where ``chi_ppm`` is defined; label voxels outside it are not counted.
    voxel_size : sequence of 3 float
        Voxel edges (mm), for the volume.
    offsets_ppm : dict of str to float
        Reference name -> value subtracted from ``chi_ppm`` (:func:`reference_offsets`).
    composites : dict of str to sequence of str, optional
        Unions of regions reported as regions of their own.

    Returns
    -------
    list of dict
        One row per region x hemisphere x reference with the keys of :data:`COLUMNS`.
        ``ai_pct``/``ai_abs_pct`` (:func:`asymmetry_index` of the means) are filled on
        ``bilateral`` rows of regions that have both sides, NaN elsewhere.
        ``core_mean_ppb``/``core_n_voxels``: the mean over the region's core
        (:func:`label_core`) inside ``mask``. Empty regions have ``n_voxels`` 0 and NaN
        statistics.
    """
    chi_ppm = np.asarray(chi_ppm, dtype=np.float64)
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if chi_ppm.shape != labels.shape or mask.shape != labels.shape:
        raise ValueError(f"shapes differ: susceptibility {chi_ppm.shape}, labels {labels.shape}, "
                         f"mask {mask.shape}")
    voxel_volume_mm3 = float(np.prod(voxel_size))
    inside = mask & (labels > 0)
    label_of_voxel = labels[inside].astype(np.int64)
    chi_of_voxel = chi_ppm[inside]

    boxes = ndimage.find_objects(np.clip(labels, 0, None).astype(np.int64))
    rows = []
    for region, sides in region_index_sets(table, composites).items():
        cores = {hemisphere: _core_values(chi_ppm, labels, mask, indices, boxes)
                 for hemisphere, indices in sides.items()}
        for reference, offset_ppm in offsets_ppm.items():
            stats = {}
            for hemisphere, indices in sides.items():
                values_ppb = (chi_of_voxel[np.isin(label_of_voxel, indices)] - offset_ppm) * 1e3
                stats[hemisphere] = _summary(values_ppb, voxel_volume_mm3)
                core_ppb = (cores[hemisphere] - offset_ppm) * 1e3
                stats[hemisphere]["core_mean_ppb"] = (float(np.mean(core_ppb)) if core_ppb.size
                                                      else math.nan)
                stats[hemisphere]["core_n_voxels"] = int(core_ppb.size)
            if "L" in stats and "R" in stats:
                ai = asymmetry_index(stats["R"]["mean_ppb"], stats["L"]["mean_ppb"])
            else:
                ai = (math.nan, math.nan)
            for hemisphere, summary in stats.items():
                both = hemisphere == "bilateral"
                rows.append({"region": region, "hemisphere": hemisphere, "reference": reference,
                             **summary,
                             "ai_pct": ai[0] if both else math.nan,
                             "ai_abs_pct": ai[1] if both else math.nan})
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.2f}"
    return str(value)


def write_regional_table(rows, path) -> Path:
    """Write ``rows`` (from :func:`regional_statistics`) as a BIDS TSV (``n/a`` for missing)."""
    path = Path(path)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(column, math.nan)) for column in COLUMNS])
    return path


def read_regional_table(path) -> list[dict]:
    """Read a table written by :func:`write_regional_table` (numbers as float, n/a as NaN)."""
    rows = []
    with Path(path).open(newline="") as stream:
        for row in csv.DictReader(stream, delimiter="\t"):
            parsed = {}
            for column, value in row.items():
                if column in ("region", "hemisphere", "reference"):
                    parsed[column] = value
                elif column == "n_voxels":
                    parsed[column] = int(value)
                elif column == "core_n_voxels":
                    parsed[column] = 0 if value == "n/a" else int(value)
                else:
                    parsed[column] = math.nan if value == "n/a" else float(value)
            rows.append(parsed)
    return rows
