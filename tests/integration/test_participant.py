"""End to end: the CLI on two simulated participants produces a valid derivatives dataset."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_cli, tree_checksum
from scipy import ndimage

from qsmprep.config import Config

RUNS = {"sub-01": "sub-01/anat/sub-01", "sub-02": "sub-02/ses-1/anat/sub-02_ses-1"}
DERIVATIVES = ("Chimap", "desc-brain_mask", "desc-phasequality_mask", "desc-localfield_mask",
               "desc-total_fieldmap",
               "desc-local_fieldmap", "R2starmap", "T2starmap")


DEEP_GREY_MATTER = {"caudate", "putamen", "globus_pallidus", "thalamus", "substantia_nigra",
                    "red_nucleus", "dentate_nucleus"}


def _truth(bids_dir, prefix, suffix):
    return bids_dir / "derivatives" / "qsmprep-phantom" / f"{prefix}_{suffix}.nii.gz"


def test_cli_succeeds(participant_run):
    result = participant_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_outputs_tree_is_complete(participant_run):
    output_dir = participant_run["output_dir"]
    expected = {"dataset_description.json", "logs/CITATION.md"}
    for prefix in RUNS.values():
        for name in DERIVATIVES:
            expected |= {f"{prefix}_{name}.nii.gz", f"{prefix}_{name}.json"}
    found = {str(path.relative_to(output_dir)) for path in output_dir.rglob("*")
             if path.is_file() and "logs/" not in str(path.relative_to(output_dir))}
    found |= {"logs/CITATION.md"} if (output_dir / "logs" / "CITATION.md").is_file() else set()
    assert found == expected
    assert len(list((output_dir / "logs").glob("config-*.toml"))) == 1


def test_dataset_description(participant_run):
    description = json.loads((participant_run["output_dir"] / "dataset_description.json")
                             .read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "qsmprep" and generated["Version"] and generated["CodeURL"]
    assert Path(description["DatasetLinks"]["raw"]) == participant_run["bids_dir"].resolve()


def test_sidecars_carry_provenance(participant_run):
    output_dir, bids_dir = participant_run["output_dir"], participant_run["bids_dir"]
    for prefix in RUNS.values():
        chimap = json.loads((output_dir / f"{prefix}_Chimap.json").read_text())
        assert chimap["Units"] == "ppm"
        assert chimap["SkullStripped"] is True
        assert chimap["EchoTime"] == pytest.approx([0.004, 0.009, 0.014, 0.019])
        assert chimap["MagneticFieldStrength"] == 3.0
        assert chimap["ReferenceRegion"] == "whole-brain"
        assert isinstance(chimap["ReferenceValue"], float)
        assert len(chimap["B0Direction"]) == 3
        stages = chimap["QSMProcessing"]
        assert stages["DipoleInversion"]["Algorithm"] == "tv-admm"
        assert stages["BackgroundFieldRemoval"]["Algorithm"] == "pdf"
        raw = [uri for uri in chimap["Sources"] if uri.startswith("bids:raw:")]
        assert len(raw) == 8  # 4 echoes x (magnitude, phase)
        for uri in raw:
            assert (bids_dir / uri.removeprefix("bids:raw:")).is_file(), uri
        assert any(uri.startswith("bids::") and uri.endswith("_desc-brain_mask.nii.gz")
                   for uri in chimap["Sources"])
        units = {name: json.loads((output_dir / f"{prefix}_{name}.json").read_text()).get("Units")
                 for name in DERIVATIVES}
        assert units == {"Chimap": "ppm", "desc-brain_mask": None, "desc-phasequality_mask": None,
                         "desc-localfield_mask": None,
                         "desc-total_fieldmap": "Hz",
                         "desc-local_fieldmap": "Hz", "R2starmap": "1/s", "T2starmap": "s"}


def test_oblique_run_reports_tilted_b0(participant_run):
    output_dir = participant_run["output_dir"]
    axial = json.loads((output_dir / f"{RUNS['sub-01']}_Chimap.json").read_text())
    oblique = json.loads((output_dir / f"{RUNS['sub-02']}_Chimap.json").read_text())
    assert axial["B0Direction"] == pytest.approx([0, 0, 1], abs=1e-6)
    assert abs(oblique["B0Direction"][2]) == pytest.approx(np.cos(np.deg2rad(20)), abs=1e-4)


@pytest.mark.parametrize("subject", sorted(RUNS))
def test_susceptibility_matches_truth(participant_run, subject):
    """Voxelwise agreement inside the reconstruction mask eroded by two voxels, and regional
    means of the deep grey-matter nuclei (what the regional iron statistics will measure)."""
    output_dir, bids_dir = participant_run["output_dir"], participant_run["bids_dir"]
    prefix = RUNS[subject]
    name = prefix.split("/")[-1]
    chimap = nib.load(output_dir / f"{prefix}_Chimap.nii.gz").get_fdata()
    truth = nib.load(_truth(bids_dir, prefix, "Chimap")).get_fdata()
    labels = nib.load(_truth(bids_dir, prefix, "dseg")).get_fdata().astype(int)
    reconstructed = chimap != 0
    eroded = ndimage.binary_erosion(reconstructed, iterations=2)
    correlation = np.corrcoef(chimap[eroded], truth[eroded])[0, 1]
    assert correlation >= 0.9, f"{name}: voxelwise correlation {correlation:.3f}"

    label_names = dict(line.split("\t") for line in _truth(bids_dir, prefix, "dseg").with_suffix(
        "").with_suffix(".tsv").read_text().splitlines()[1:])
    nuclei = [int(index) for index, region in label_names.items()
              if region.rsplit("_", 1)[0] in DEEP_GREY_MATTER]
    true_means = [truth[labels == index].mean() for index in nuclei]
    measured_means = [chimap[(labels == index) & reconstructed].mean() for index in nuclei]
    assert len(nuclei) >= 12
    assert np.corrcoef(true_means, measured_means)[0, 1] >= 0.9
    # whole-brain referencing: the mean inside the reconstruction mask is zero
    assert abs(chimap[reconstructed].mean()) < 1e-3


def test_config_saved_with_command_and_versions(participant_run):
    (config_path,) = (participant_run["output_dir"] / "logs").glob("config-*.toml")
    config = Config.load(config_path)
    assert config.execution.command_line.startswith("qsmprep ")
    assert config.execution.participant_labels == ["01", "02"]
    assert config.environment["qsmprep"] and config.environment["nipype"]
    citation = (participant_run["output_dir"] / "logs" / "CITATION.md").read_text()
    assert "projection onto dipole fields" in citation and "doi:" in citation


def test_bids_input_untouched(participant_run):
    assert tree_checksum(participant_run["bids_dir"]) == participant_run["checksum_before"]


def test_rerun_recomputes_nothing_and_rewrites_identical_outputs(participant_run):
    output_dir, work_dir = participant_run["output_dir"], participant_run["work_dir"]
    outputs = {path: path.read_bytes() for path in output_dir.rglob("sub-*/**/*") if path.is_file()}
    results = {path: path.stat().st_mtime_ns for path in work_dir.rglob("result_*.pklz")
               if "/ds_" not in str(path)}
    assert results, "the work folder holds no cached node results"
    # an interruption: the inversion of sub-01 never finished
    (inversion_dir,) = [path for path in work_dir.rglob("inversion") if "sub_01" in str(path)]
    for item in inversion_dir.iterdir():
        item.unlink() if item.is_file() else None
    rerun = run_cli(participant_run["bids_dir"], output_dir, "participant", "-w", work_dir,
                    "--participant-label", "01", "02", "--nprocs", "2", "--omp-nthreads", "1",
                    "--qsm-only")
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    recomputed = {path for path, mtime in results.items()
                  if not path.exists() or path.stat().st_mtime_ns != mtime}
    assert {path.parent.name for path in recomputed} <= {"inversion",
                                                       "referencing"}
    assert any(path.parent.name == "inversion" for path in recomputed)
    for path, content in outputs.items():
        assert path.read_bytes() == content, f"{path} changed on re-run"
