"""End to end on an independent digital patient: anatomy, labels and a simulator qsmprep was
not built from (:mod:`qsmprep.phantom.independent`).

A fast version of ``bench/bench_independent.py`` (whose scoring it uses): the CBS patient (left
motor cortex clearly above the right) at 2 mm through the CLI with the default workflow, about
3.5 minutes on 2 cores. It checks that the generator's truth is sane, that the reconstruction
over the TRUE labels is accurate, that the clearly asymmetric motor cortex keeps its sides, and
that the fraction of region-sides within max(15 ppb, 15 %) of the truth does not drop below what
today's code reaches. The PD nigra (asymmetric) and the other patients are in the bench.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_cli

pytest.importorskip("qsm_forward")

from qsmprep.phantom.independent import (  # noqa: E402
    PATIENT_GROUPS,
    REGIONS,
    TRUTH_PIPELINE,
    region_label,
    write_independent_dataset,
)

PATIENTS = ("cbs",)
VOXEL_MM = 2.0
BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_independent.py"
NUCLEI = tuple(name for name in REGIONS if name not in ("motor_cortex", "lateral_ventricle"))

#: |reconstruction error| (qsmprep's map re-referenced to the true CSF, over the TRUE labels,
#: minus the truth over the same voxels) allowed for any nucleus side, and for the median.
#: Measured at 2 mm on today's code: largest 20 ppb (right substantia nigra pars reticulata),
#: median 11 ppb (qsmprep underestimates every nucleus by 5-20 ppb).
MAX_RECONSTRUCTION_ERROR_PPB = 30.0
MAX_MEDIAN_RECONSTRUCTION_ERROR_PPB = 16.0
#: Fraction of the 20 region-sides (10 regions x 2 sides) within max(15 ppb, 15 %) of the
#: truth. Measured at 2 mm on today's code: 25 % (5 of 20; every region is underestimated by
#: placement, about -8 ppb, and reconstruction, about -11 ppb).
MIN_WITHIN_PERCENT = 15.0
#: Regions of the CBS ranges of qsmprep's reference-range table that the truth must satisfy:
#: the motor cortex by its higher side (the report's MCmax), the others by their bilateral mean.
RANGED_REGIONS = ("motor_cortex", "globus_pallidus_interna", "red_nucleus", "substantia_nigra",
                  "putamen", "thalamus")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_independent", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def independent_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("independent")
    written = write_independent_dataset(base / "bids", PATIENTS, voxel_size_mm=VOXEL_MM, seed=0)
    result = run_cli(base / "bids", base / "out", "participant", "-w", base / "work",
                     "--nprocs", "2", "--omp-nthreads", "2")
    bench = _bench()
    evaluations = ([bench.evaluate_patient(base, label, {}) for label in PATIENTS]
                   if result.returncode == 0 else None)
    return {"base": base, "written": written, "result": result, "bench": bench,
            "evaluations": evaluations,
            "summary": bench.summarise(evaluations) if evaluations else None}


def _truth_rows(base, label):
    path = (base / "bids" / "derivatives" / TRUTH_PIPELINE / f"sub-{label}" / "anat"
            / f"sub-{label}_desc-truth_regions.tsv")
    with path.open() as stream:
        return {(row["region"], row["hemisphere"]): row
                for row in csv.DictReader(stream, delimiter="\t")}


def _evaluated(independent_run):
    if independent_run["evaluations"] is None:
        pytest.fail("qsmprep failed: " + independent_run["result"].stderr[-3000:])
    return independent_run["evaluations"], independent_run["summary"]


def test_cli_succeeds(independent_run):
    result = independent_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_dataset_layout(independent_run):
    bids = independent_run["base"] / "bids"
    with (bids / "participants.tsv").open() as stream:
        groups = {row["participant_id"]: row["group"]
                  for row in csv.DictReader(stream, delimiter="\t")}
    assert groups == {f"sub-{label}": PATIENT_GROUPS[label] for label in PATIENTS}
    for label, files in independent_run["written"].items():
        assert len(files["magnitude"]) == len(files["phase"]) == 5
        for path in files["magnitude"] + files["phase"]:
            assert path.read_bytes()[4:8] == b"\0\0\0\0", f"{path.name}: gzip timestamp"
        sidecar = json.loads(files["phase"][2].with_name(
            files["phase"][2].name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["EchoTime"] == pytest.approx(0.014)
        assert sidecar["MagneticFieldStrength"] == 3.0 and sidecar["Units"] == "rad"
        magnitude, truth = nib.load(files["magnitude"][0]), nib.load(files["Chimap"])
        assert magnitude.shape == truth.shape
        np.testing.assert_allclose(magnitude.affine, truth.affine)
        assert np.allclose(np.abs(np.diag(magnitude.affine)[:3]), VOXEL_MM)


def test_truth_regions_are_present_on_their_side(independent_run):
    """Every region has voxels on both sides in the native grid, the left ones at x < 0 once
    taken back to template space by the recorded affine (the warp, at most 3 mm, aside), and
    the true ventricles are CSF (about 0 ppb)."""
    for label, files in independent_run["written"].items():
        image = nib.load(files["dseg"])
        labels = np.asarray(image.dataobj)
        to_template = np.asarray(files["motion"]["native_to_template"]) @ image.affine
        rows = _truth_rows(independent_run["base"], label)
        for region in REGIONS:
            for side in ("L", "R"):
                where = np.argwhere(labels == region_label(region, side))
                assert len(where) >= 5, (label, region, side, len(where))
                assert int(rows[(region, side)]["n_voxels"]) == len(where)
                x = nib.affines.apply_affine(to_template, where.mean(axis=0))[0]
                assert (x < 0) == (side == "L"), (label, region, side, x)
        for side in ("L", "R"):
            assert abs(float(rows[("lateral_ventricle", side)]["mean_ppb"])) < 5.0


def test_truth_values_follow_the_settings(independent_run):
    """The true native means follow the values set in template space: across the nuclei a
    slope between 0.7 and 1.05 (partial volume at 2 mm dilutes small nuclei) with r > 0.97;
    large regions within 20 % of their setting; the CBS pattern is in the truth (left motor
    cortex well above the right, every ranged region inside qsmprep's CBS range)."""
    from qsmprep.reports.cbs import read_reference_ranges

    rows = _truth_rows(independent_run["base"], "cbs")
    pairs = np.array([(float(rows[(region, side)]["set_ppb"]),
                       float(rows[(region, side)]["mean_ppb"]))
                      for region in NUCLEI for side in ("L", "R")])
    slope = np.polyfit(pairs[:, 0], pairs[:, 1], 1)[0]
    assert 0.7 <= slope <= 1.05, slope
    assert np.corrcoef(pairs.T)[0, 1] > 0.97
    for region in ("putamen", "thalamus", "caudate"):
        for side in ("L", "R"):
            truth = float(rows[(region, side)]["mean_ppb"])
            assert truth == pytest.approx(float(rows[(region, side)]["set_ppb"]), rel=0.2)
    left, right = (float(rows[("motor_cortex", side)]["mean_ppb"]) for side in ("L", "R"))
    assert left > right + 20
    ranges = {row["region"]: (row["low_ppb"], row["high_ppb"])
              for row in read_reference_ranges()["rows"] if row["pattern"] == "CBS"}
    for region in RANGED_REGIONS:
        value = (max(left, right) if region == "motor_cortex"
                 else float(rows[(region, "bilateral")]["mean_ppb"]))
        low, high = ranges[region]
        assert low <= value <= high, (region, value, low, high)


def test_reconstruction_over_true_labels_is_accurate(independent_run):
    evaluations, _ = _evaluated(independent_run)
    errors = [(result["label"], row["region"], row["side"], row["recon"])
              for result in evaluations for row in result["rows"] if row["region"] in NUCLEI]
    assert all(math.isfinite(error) for *_, error in errors), errors
    worst = [item for item in errors if abs(item[3]) > MAX_RECONSTRUCTION_ERROR_PPB]
    assert not worst, worst
    assert np.median([abs(item[3]) for item in errors]) <= MAX_MEDIAN_RECONSTRUCTION_ERROR_PPB


def test_asymmetric_regions_keep_their_sides(independent_run):
    """Where the true R - L exceeds 15 ppb (the CBS motor cortex, left above right), the
    measured R - L has the same sign. Measured at 2 mm on today's code: left 15, right 8 ppb
    (truth 60 and 24: qsmprep's motor-cortex labels overlap the true precentral grey matter by
    a Dice of about 0.35)."""
    _, summary = _evaluated(independent_run)
    assert summary["checked_asymmetries"] >= 1
    assert not summary["swapped"], summary["swapped"]


def test_fraction_within_tolerance(independent_run):
    _, summary = _evaluated(independent_run)
    assert summary["n_measured"] == summary["n_region_sides"] == 10 * 2 * len(PATIENTS)
    assert summary["within_pct"] >= MIN_WITHIN_PERCENT, summary["per_patient"]


def test_reports_give_a_verdict(independent_run):
    evaluations, _ = _evaluated(independent_run)
    for result in evaluations:
        assert result["verdict"] is not None, result["label"]
        assert result["verdict"]["pattern"] in ("CBS", "PSP", "PD", "MSA", "mixed",
                                                "indeterminate", "none")
