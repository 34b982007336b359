"""Regional iron accuracy of qsmprep on independent digital patients.

The patients of :mod:`qsmprep.phantom.independent` (a healthy control and CBS, PSP and PD iron
patterns, built from tissue classes, label sources and a simulator that qsmprep does not use,
with nuclei moved by their own local deformation) are run through the installed ``qsmprep``
command line, one participant at a time::

    python bench/bench_independent.py --voxel-size 1 --keep /tmp/indep1mm
    python bench/bench_independent.py --voxel-size 1 --keep /tmp/indep1mm --reuse   # tables only
    python bench/bench_independent.py --voxel-size 2 --keep /tmp/indep2mm --patients cbs psp

For every patient, region and side (ppb relative to CSF):

* ``truth``: mean of the true map over the true native labels
  (``derivatives/independent-truth/sub-X/anat/sub-X_desc-truth_regions.tsv``);
* ``measured``: qsmprep's value (``sub-X_desc-regions_stats.tsv``, rows with reference ``csf``,
  ``mean_ppb``), its ``error`` and ``ok`` (within max(15 ppb, 15 % of |truth|));
* ``placement``: mean of the TRUE map over qsmprep's native labels (inside its
  ``desc-localfield_mask``) minus the truth: what label placement alone costs;
* ``recon``: qsmprep's Chimap, re-referenced to the true CSF (minus its mean over the true
  lateral ventricles eroded by a voxel), averaged over the TRUE labels inside its mask, minus
  the true map over the same voxels: what the reconstruction alone costs;
* ``dice``: overlap of qsmprep's label with the true label.

qsmprep's voxels of a region are its atlas label of that name or, for a union it reports (the
``CompositeRegions`` of the table's sidecar, e.g. ``motor_cortex``), the labels of its members.

The summary gives the fraction of region-sides within tolerance, the median error, the Dice of
each nucleus, swapped sides (sign of R - L measured vs true, where |true R - L| > 15 ppb), the
CSF reference (the true map over qsmprep's eroded ventricles), and each report's verdict
(``sub-X_desc-cbs_report.json``: pattern, confidence, favoured side) against the pattern each
patient was made with. Wall time and peak memory (resident set size summed over the process
tree, sampled every 0.5 s from /proc) are recorded per participant.

A region qsmprep does not report is shown as ``n/a``; ``--measured-region
motor_cortex=precentral_gyrus`` reads a truth region under another qsmprep name. ``--reuse``
keeps the dataset (if it was made with the same voxel size and seed) and the outputs of the
participants already run. ``--markdown FILE`` writes the tables for the README.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from qsmprep.phantom.independent import (COMPOSITE_REGIONS, HARVARD_OXFORD_THRESHOLD_PERCENT,
                                         PATIENT_GROUPS, REGIONS,
                                         TRUTH_PIPELINE, resample_image,
                                         write_independent_dataset)

#: Regions scored (the CSF reference region is left out).
SCORED_REGIONS = tuple(name for name in REGIONS if name != "lateral_ventricle")
SIDES = ("L", "R")
#: What each patient's report should say: pattern and favoured side of its key region.
EXPECTED_VERDICTS = {"control": ("none", None), "cbs": ("CBS", "L"),
                     "psp": ("PSP", None), "pd": ("PD", "R")}
#: Tolerance: max(ABSOLUTE_TOLERANCE_PPB, RELATIVE_TOLERANCE * |truth|).
ABSOLUTE_TOLERANCE_PPB = 15.0
RELATIVE_TOLERANCE = 0.15
#: Smallest |true R - L| (ppb) for which the side of an asymmetry is checked.
ASYMMETRY_CHECK_PPB = 15.0


# --------------------------------------------------------------------------------- running
def _process_tree_rss(root: int) -> tuple[int, int]:
    """(sum, largest) resident set size in bytes of ``root`` and its descendants (/proc)."""
    children, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                ppid = int(stream.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as stream:
                pages = int(stream.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages
    total, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        largest = max(largest, rss.get(pid, 0))
        stack.extend(children.get(pid, []))
    page = os.sysconf("SC_PAGE_SIZE")
    return total * page, largest * page


def run_monitored(command, log_path: Path) -> dict:
    """Run ``command``; wall time and peak memory of its process tree (when /proc exists)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    peaks = {"tree": 0, "process": 0}
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def watch():
            while not done.is_set():
                if os.path.isdir("/proc"):
                    tree, largest = _process_tree_rss(process.pid)
                    peaks["tree"] = max(peaks["tree"], tree)
                    peaks["process"] = max(peaks["process"], largest)
                done.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        returncode = process.wait()
        done.set()
        watcher.join()
    return {"returncode": returncode, "wall_s": time.perf_counter() - started,
            "peak_tree_gb": peaks["tree"] / 1e9, "peak_process_gb": peaks["process"] / 1e9,
            "log": str(log_path)}


def qsmprep_command(base: Path, label: str, nprocs: int, omp_nthreads: int, extra) -> list:
    return [str(Path(sys.executable).with_name("qsmprep")), str(base / "bids"),
            str(base / "out"), "participant", "--participant-label", label,
            "-w", str(base / "work"), "--nprocs", str(nprocs), "--omp-nthreads",
            str(omp_nthreads), *extra]


# --------------------------------------------------------------------------------- dataset
def truth_dir(base: Path, label: str) -> Path:
    return base / "bids" / "derivatives" / TRUTH_PIPELINE / f"sub-{label}" / "anat"


def dataset_matches(base: Path, label: str, voxel_size: float, seed: int,
                    cortex_threshold: float) -> bool:
    """Whether ``base/bids`` holds this patient, made with this voxel size, seed and truth
    threshold of the precentral gyrus."""
    sidecar = truth_dir(base, label) / f"sub-{label}_desc-truth_regions.json"
    anat = base / "bids" / f"sub-{label}" / "anat"
    if not sidecar.is_file() or not any(anat.glob("*_part-phase_MEGRE.nii.gz")):
        return False
    record = json.loads(sidecar.read_text())
    return (math.isclose(record.get("VoxelSizeMM", -1), voxel_size)
            and record.get("Seed") == seed
            and math.isclose(record.get("MotorCortexThresholdPercent",
                                        HARVARD_OXFORD_THRESHOLD_PERCENT), cortex_threshold))


def write_participants(bids: Path) -> None:
    """participants.tsv listing every patient present (after adding some to a dataset)."""
    labels = sorted(path.name[4:] for path in bids.glob("sub-*") if path.is_dir())
    (bids / "participants.tsv").write_text("participant_id\tgroup\n" + "".join(
        f"sub-{label}\t{PATIENT_GROUPS.get(label, 'n/a')}\n" for label in labels))


# --------------------------------------------------------------------------------- scoring
def _read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _output(folder: Path, label: str, pattern: str) -> Path | None:
    """The native-space output of ``pattern`` (no ``space-`` entity), or None."""
    found = sorted(path for path in folder.glob(f"sub-{label}*{pattern}")
                   if "_space-" not in path.name)
    return found[0] if found else None


def _on_grid(path: Path, shape, affine, *, order) -> np.ndarray:
    image = nib.load(path)
    if image.shape[:3] == tuple(shape) and np.allclose(image.affine, affine, atol=1e-4):
        return np.asanyarray(image.dataobj)
    return resample_image(image, shape, affine, order=order)


def _mean(values, mask) -> float:
    return float(values[mask].mean()) if np.any(mask) else math.nan


def _members(region: str) -> tuple:
    return COMPOSITE_REGIONS.get(region, (region,))


def evaluate_patient(base: Path, label: str, mapping: dict, statistic: str = "mean_ppb") -> dict:
    """Per region-side truth, measured value, errors and Dice of one patient."""
    tdir, out = truth_dir(base, label), base / "out" / f"sub-{label}" / "anat"
    truth_rows = {(row["region"], row["hemisphere"]): row
                  for row in _read_tsv(tdir / f"sub-{label}_desc-truth_regions.tsv")}
    chi_image = nib.load(tdir / f"sub-{label}_Chimap.nii.gz")
    shape, affine = chi_image.shape, chi_image.affine
    true_chi = 1e3 * np.asarray(chi_image.get_fdata(dtype=np.float32))
    true_labels = np.asarray(nib.load(tdir / f"sub-{label}_desc-truth_dseg.nii.gz").dataobj
                             ).astype(np.int32)
    true_index = {(row["name"], row["hemisphere"]): int(row["index"])
                  for row in _read_tsv(tdir / f"sub-{label}_desc-truth_dseg.tsv")}

    result = {"label": label, "rows": [], "missing": [], "verdict": None, "reference": {}}
    stats_path = _output(out, label, "_desc-regions_stats.tsv")
    if stats_path is None:
        result["missing"].append("desc-regions_stats.tsv")
        measured = {}
    else:
        measured = {(row["region"], row["hemisphere"]): _number(row.get(statistic, "n/a"))
                    for row in _read_tsv(stats_path) if row.get("reference") == "csf"}
    paths = {name: _output(out, label, pattern) for name, pattern in (
        ("dseg", "_desc-qsmprep_dseg.nii.gz"), ("dseg_tsv", "_desc-qsmprep_dseg.tsv"),
        ("mask", "_desc-localfield_mask.nii.gz"), ("chimap", "_Chimap.nii.gz"),
        ("report", "_desc-cbs_report.json"))}
    result["missing"] += [name for name, path in paths.items() if path is None]
    # qsmprep's unions of atlas labels (e.g. motor_cortex), from the table's sidecar.
    composites = {}
    if stats_path is not None and stats_path.with_suffix(".json").is_file():
        sidecar = json.loads(stats_path.with_suffix(".json").read_text())
        composites = sidecar.get("CompositeRegions") or {}
    mask = (_on_grid(paths["mask"], shape, affine, order=0) > 0.5 if paths["mask"]
            else np.ones(shape, bool))
    ours = (np.rint(_on_grid(paths["dseg"], shape, affine, order=0)).astype(np.int32)
            if paths["dseg"] else None)
    our_index: dict = {}
    if paths["dseg_tsv"]:
        for row in _read_tsv(paths["dseg_tsv"]):
            our_index.setdefault((row["name"], row.get("hemisphere", "")), []).append(
                int(row["index"]))
    our_chi = (1e3 * np.asarray(_on_grid(paths["chimap"], shape, affine, order=1), np.float32)
               if paths["chimap"] else None)

    # Reference: qsmprep's map re-referenced to the true ventricles (eroded by a voxel).
    ventricles = np.isin(true_labels, [true_index[("lateral_ventricle", s)] for s in SIDES])
    eroded = ndimage.binary_erosion(ventricles) & mask
    true_csf = eroded if eroded.sum() >= 10 else ventricles & mask
    offset = _mean(our_chi, true_csf) if our_chi is not None else math.nan
    result["reference"]["offset_ppb"] = offset
    if ours is not None:
        qsm_ventricles = np.zeros(shape, bool)
        for side in SIDES:
            for index in our_index.get(("lateral_ventricle", side), []):
                qsm_ventricles |= ours == index
        qsm_ventricles &= mask
        qsm_eroded = ndimage.binary_erosion(qsm_ventricles)
        qsm_csf = qsm_eroded if qsm_eroded.sum() >= 10 else qsm_ventricles
        result["reference"]["true_over_qsmprep_csf_ppb"] = _mean(true_chi, qsm_csf)

    for region in (*SCORED_REGIONS, *COMPOSITE_REGIONS):
        qsm_name = mapping.get(region, region)
        for side in SIDES:
            truth_row = truth_rows.get((region, side))
            if truth_row is None:
                continue
            truth = _number(truth_row["mean_ppb"])
            value = measured.get((qsm_name, side), math.nan)
            theirs = np.isin(true_labels, [true_index[(m, side)] for m in _members(region)])
            row = {"region": region, "side": side, "composite": region in COMPOSITE_REGIONS,
                   "truth": truth, "set": _number(truth_row["set_ppb"]), "measured": value,
                   "error": value - truth, "placement": math.nan, "recon": math.nan,
                   "dice": math.nan, "n_truth": int(theirs.sum()), "n_ours": 0}
            row["ok"] = (abs(row["error"]) <= max(ABSOLUTE_TOLERANCE_PPB,
                                                  RELATIVE_TOLERANCE * abs(truth))
                         if math.isfinite(value) else False)
            if ours is not None:
                # qsmprep's voxels of this region: its own label, else the members of its
                # union of that name, else (truth unions) the truth members' names.
                if (qsm_name, side) in our_index:
                    names = [qsm_name]
                elif qsm_name in composites:
                    names = list(composites[qsm_name])
                else:
                    names = [mapping.get(m, m) for m in _members(region)]
                indices = [i for name in names for i in our_index.get((name, side), [])]
                if indices:
                    mine = np.isin(ours, indices)
                    row["n_ours"] = int(mine.sum())
                    row["dice"] = 2.0 * np.sum(mine & theirs) / max(1, mine.sum() + theirs.sum())
                    row["placement"] = _mean(true_chi, mine & mask) - truth
            if our_chi is not None:
                inside = theirs & mask
                row["recon"] = (_mean(our_chi, inside) - offset) - _mean(true_chi, inside)
            result["rows"].append(row)

    if paths["report"]:
        report = json.loads(paths["report"].read_text())
        interpretation = report.get("interpretation", {})
        asymmetry = interpretation.get("asymmetry") or {}
        result["verdict"] = {"pattern": interpretation.get("pattern"),
                             "patterns": interpretation.get("patterns"),
                             "confidence": interpretation.get("confidence"),
                             "side": asymmetry.get("side"),
                             "key_region": asymmetry.get("region"),
                             "statement": interpretation.get("statement"),
                             "scores": {name: item.get("score") for name, item in
                                        report.get("scores", {}).get("patterns", {}).items()}}
    return result


def summarise(results: list[dict]) -> dict:
    """Fraction within tolerance, median errors, Dice per region, swapped sides, verdicts."""
    scored = [row for result in results for row in result["rows"] if not row["composite"]]
    measured = [row for row in scored if math.isfinite(row["measured"])]
    summary = {
        "n_region_sides": len(scored), "n_measured": len(measured),
        "within_pct": 100.0 * sum(row["ok"] for row in scored) / max(1, len(scored)),
        "median_abs_error": float(np.median([abs(r["error"]) for r in measured]))
        if measured else math.nan,
        "median_error": float(np.median([r["error"] for r in measured])) if measured
        else math.nan,
        "median_abs_placement": float(np.nanmedian([abs(r["placement"]) for r in scored]))
        if scored else math.nan,
        "median_abs_recon": float(np.nanmedian([abs(r["recon"]) for r in scored]))
        if scored else math.nan,
        "per_patient": {}, "dice": {}, "swapped": [], "checked_asymmetries": 0,
        "verdicts": {},
    }
    for result in results:
        rows = [row for row in result["rows"] if not row["composite"]]
        summary["per_patient"][result["label"]] = 100.0 * sum(r["ok"] for r in rows) / max(
            1, len(rows))
    for region in (*SCORED_REGIONS, *COMPOSITE_REGIONS):
        values = [row["dice"] for result in results for row in result["rows"]
                  if row["region"] == region and math.isfinite(row["dice"])]
        if values:
            summary["dice"][region] = (min(values), float(np.mean(values)), max(values))
    for result in results:
        by_key = {(row["region"], row["side"]): row for row in result["rows"]}
        for region in (*SCORED_REGIONS, *COMPOSITE_REGIONS):
            left, right = by_key.get((region, "L")), by_key.get((region, "R"))
            if left is None or right is None:
                continue
            true_difference = right["truth"] - left["truth"]
            if abs(true_difference) <= ASYMMETRY_CHECK_PPB:
                continue
            summary["checked_asymmetries"] += 1
            measured_difference = right["measured"] - left["measured"]
            if not math.isfinite(measured_difference) or \
                    np.sign(measured_difference) != np.sign(true_difference):
                summary["swapped"].append((result["label"], region, true_difference,
                                           measured_difference))
        expected = EXPECTED_VERDICTS.get(result["label"])
        verdict = result["verdict"]
        if verdict is not None:
            correct = expected is not None and verdict["pattern"] == expected[0] and (
                expected[1] is None or verdict["side"] == expected[1])
            summary["verdicts"][result["label"]] = {**verdict, "expected": expected,
                                                    "correct": correct}
    return summary


# --------------------------------------------------------------------------------- output
def _f(value, digits=0, sign=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown(results, summary, runs, settings) -> str:
    lines = [f"Independent digital patients, {settings['voxel_size']:g} mm, seed "
             f"{settings['seed']}, truth's precentral gyrus from Harvard-Oxford "
             f"{settings['cortex_threshold']:g} % (qsmprep {settings['version']})", ""]
    for result in results:
        label = result["label"]
        lines += [f"### sub-{label} ({PATIENT_GROUPS.get(label, '?')})", ""]
        if result["missing"]:
            lines += [f"missing outputs: {', '.join(result['missing'])}", ""]
        lines += ["| region | side | set | truth | measured | error | ok | placement | recon "
                  "| dice | voxels ours/truth |",
                  "|---|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|"]
        for row in result["rows"]:
            lines.append(
                f"| {row['region']}{' (union)' if row['composite'] else ''} | {row['side']} | "
                f"{_f(row['set'])} | {_f(row['truth'])} | {_f(row['measured'])} | "
                f"{_f(row['error'], sign=True)} | {'y' if row['ok'] else 'NO'} | "
                f"{_f(row['placement'], sign=True)} | {_f(row['recon'], sign=True)} | "
                f"{_f(row['dice'], 2)} | {row['n_ours']}/{row['n_truth']} |")
        reference = result["reference"]
        true_csf = _f(reference.get("true_over_qsmprep_csf_ppb"), 1)
        lines += ["", f"CSF reference: qsmprep's Chimap averages "
                  f"{_f(reference.get('offset_ppb'), 1)} ppb over the true ventricles (the "
                  f"offset removed for `recon`); the true map averages {true_csf} ppb over "
                  "qsmprep's eroded ventricle labels (its CSF reference; 0 if pure CSF).", ""]
    lines += ["### Summary", "",
              f"- region-sides within max({ABSOLUTE_TOLERANCE_PPB:g} ppb, "
              f"{100 * RELATIVE_TOLERANCE:g} %): {summary['within_pct']:.0f} % "
              f"({summary['n_region_sides']} region-sides, {summary['n_measured']} measured); "
              "per patient: " + ", ".join(f"{label} {value:.0f} %" for label, value
                                          in summary["per_patient"].items()),
              f"- median |error| {_f(summary['median_abs_error'], 1)} ppb (median signed "
              f"{_f(summary['median_error'], 1, sign=True)}); median |placement error| "
              f"{_f(summary['median_abs_placement'], 1)}, median |reconstruction error| "
              f"{_f(summary['median_abs_recon'], 1)} ppb",
              f"- sides swapped: {len(summary['swapped'])} of "
              f"{summary['checked_asymmetries']} asymmetries checked (|true R-L| > "
              f"{ASYMMETRY_CHECK_PPB:g} ppb)"
              + "".join(f"; {label} {region} (true R-L {_f(t, 0, True)}, measured "
                        f"{_f(m, 0, True)})" for label, region, t, m in summary["swapped"]),
              "", "| region | Dice min | mean | max |", "|---|---:|---:|---:|"]
    for region, (low, mean, high) in summary["dice"].items():
        lines.append(f"| {region} | {low:.2f} | {mean:.2f} | {high:.2f} |")
    lines += ["", "| patient | expected | report pattern | confidence | favoured side | scores "
              "| correct |", "|---|---|---|---|---|---|:-:|"]
    for label, verdict in summary["verdicts"].items():
        expected = verdict["expected"]
        scores = ", ".join(f"{name} {_f(value, 2)}" for name, value in verdict["scores"].items())
        expected_text = "n/a" if expected is None else (
            expected[0] + (f" ({expected[1]})" if expected[1] else ""))
        lines.append(f"| {label} | {expected_text} | {verdict['pattern']} | "
                     f"{verdict['confidence']} | {verdict['side'] or '-'} | {scores} | "
                     f"{'y' if verdict['correct'] else 'NO'} |")
    if runs:
        lines += ["", "| participant | wall time (s) | peak RSS, process tree (GB) | largest "
                  "process (GB) | exit |", "|---|---:|---:|---:|---:|"]
        for label, run in runs.items():
            lines.append(f"| {label} | {run['wall_s']:.0f} | {run['peak_tree_gb']:.2f} | "
                         f"{run['peak_process_gb']:.2f} | {run['returncode']} |")
    return "\n".join(lines) + "\n"


def _mapping(items) -> dict:
    mapping = {}
    for item in items:
        truth_name, separator, qsm_name = item.partition("=")
        if not separator or not truth_name or not qsm_name:
            raise SystemExit(f"--measured-region wants truth_name=qsmprep_name, not {item!r}")
        mapping[truth_name.strip()] = qsm_name.strip()
    return mapping


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=1.0, help="native voxel size (mm)")
    parser.add_argument("--patients", nargs="+", default=list(PATIENT_GROUPS),
                        choices=list(PATIENT_GROUPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--truth-cortex-threshold", type=float,
                        default=HARVARD_OXFORD_THRESHOLD_PERCENT, metavar="PERCENT",
                        help="Harvard-Oxford probability from which the truth's precentral "
                             "grey matter starts (default %(default)g; try others to see that a "
                             "result does not hinge on it)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse the dataset and the outputs found there")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--qsmprep-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for qsmprep (repeat; e.g. --qsmprep-arg=--qsm-only)")
    parser.add_argument("--measured-region", action="append", default=[],
                        metavar="TRUTH=QSMPREP",
                        help="read a truth region under another qsmprep region name "
                             "(e.g. motor_cortex=precentral_gyrus)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--statistic", default="mean_ppb", choices=("mean_ppb", "core_mean_ppb",
                                                                    "median_ppb"),
                        help="the column of qsmprep's regional table compared with the truth")
    arguments = parser.parse_args(argv)
    if arguments.reuse and not arguments.keep:
        parser.error("--reuse needs --keep DIR")
    mapping = _mapping(arguments.measured_region)

    base = arguments.keep or Path(tempfile.mkdtemp(prefix="bench_independent_"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"{arguments.voxel_size:g} mm independent patients {', '.join(arguments.patients)} "
          f"in {base}", flush=True)
    missing = [label for label in arguments.patients
               if not (arguments.reuse
                       and dataset_matches(base, label, arguments.voxel_size, arguments.seed,
                                       arguments.truth_cortex_threshold))]
    if missing:
        started = time.perf_counter()
        if not arguments.reuse:
            shutil.rmtree(base / "bids", ignore_errors=True)
        write_independent_dataset(
            base / "bids", missing, voxel_size_mm=arguments.voxel_size, seed=arguments.seed,
            motor_cortex_threshold_percent=arguments.truth_cortex_threshold)
        write_participants(base / "bids")
        print(f"simulated {', '.join(missing)}: {time.perf_counter() - started:.0f} s",
              flush=True)
        # New data: earlier outputs and intermediate results of these patients are stale.
        for label in missing:
            shutil.rmtree(base / "out" / f"sub-{label}", ignore_errors=True)
        shutil.rmtree(base / "work", ignore_errors=True)

    runs = {}
    runs_file = base / "runs.json"
    if arguments.reuse and runs_file.is_file():
        runs = {label: run for label, run in json.loads(runs_file.read_text()).items()
                if label in arguments.patients}
    for label in arguments.patients:
        stats = _output(base / "out" / f"sub-{label}" / "anat", label, "_desc-regions_stats.tsv")
        if arguments.reuse and stats is not None:
            continue
        command = qsmprep_command(base, label, arguments.nprocs, arguments.omp_nthreads,
                                  arguments.qsmprep_arg)
        run = run_monitored(command, base / "logs" / f"qsmprep_sub-{label}.log")
        runs[label] = run
        print(f"qsmprep sub-{label}: exit {run['returncode']}, {run['wall_s']:.0f} s, peak "
              f"{run['peak_tree_gb']:.2f} GB (process tree), {run['peak_process_gb']:.2f} GB "
              f"(largest process); log {run['log']}", flush=True)
        stored = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
        stored[label] = run
        runs_file.write_text(json.dumps(stored, indent=2) + "\n")

    results = [evaluate_patient(base, label, mapping, arguments.statistic)
               for label in arguments.patients]
    summary = summarise(results)
    from qsmprep import __version__

    text = markdown(results, summary, runs, {"voxel_size": arguments.voxel_size,
                                             "seed": arguments.seed, "version": __version__,
                                             "cortex_threshold":
                                                 arguments.truth_cortex_threshold})
    print()
    print(text)
    if arguments.markdown:
        arguments.markdown.write_text(text)
    if arguments.keep:
        (base / "summary.json").write_text(json.dumps(
            {"summary": summary, "results": results, "runs": runs}, indent=2, default=str)
            + "\n")
    else:
        shutil.rmtree(base)
    return 0 if all(run["returncode"] == 0 for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
