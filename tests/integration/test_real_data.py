"""Real in-vivo data (the ROMEO test crop in ../shared/data), wrapped into BIDS in a temporary folder.

There is no ground truth: the checks are that the command line runs on real noise, that phase
units are inferred, that the unwrapped phase is exact (a multiple of 2 pi from the wrapped one)
and grows linearly with echo time, and that NaN voxels are handled.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import SHARED_DATA, run_cli, tree_checksum

ROMEO = SHARED_DATA / "romeo-small"
pytestmark = pytest.mark.skipif(not ROMEO.is_dir(), reason=f"{ROMEO} is not present")


def _write_bids_run(bids_dir, magnitude_4d, phase_4d, affine, echo_times_s, subject="01"):
    """Split 4-D echo stacks into BIDS MEGRE files; no field strength, no phase Units."""
    bids_dir.mkdir(parents=True)
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "romeo-small", "BIDSVersion": "1.9.0"}))
    anat = bids_dir / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    for index, echo_time in enumerate(echo_times_s):
        for part, data in (("mag", magnitude_4d), ("phase", phase_4d)):
            stem = anat / f"sub-{subject}_echo-{index + 1}_part-{part}_MEGRE"
            nib.save(nib.Nifti1Image(np.asarray(data[..., index], np.float32), affine),
                     f"{stem}.nii")
            stem.with_suffix(".json").write_text(json.dumps({"EchoTime": echo_time}))


@pytest.fixture(scope="module")
def romeo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("romeo")
    magnitude = nib.load(ROMEO / "Mag.nii")
    phase = nib.load(ROMEO / "Phase.nii")
    _write_bids_run(base / "bids", magnitude.get_fdata(), phase.get_fdata(), magnitude.affine,
                    (0.004, 0.008, 0.012))
    checksum = tree_checksum(base / "bids")
    result = run_cli(base / "bids", base / "out", "participant", "-w", base / "work",
                     "--field-strength", "3", "--qsm-only", "--nprocs", "2")
    return {"base": base, "result": result, "checksum": checksum,
            "wrapped": phase}


def test_runs_and_infers_units(romeo_run):
    result = romeo_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert "arbitrary" in result.stderr  # phase Units missing: inferred from the value range
    chimap = nib.load(romeo_run["base"] / "out/sub-01/anat/sub-01_Chimap.nii.gz").get_fdata()
    mask = nib.load(romeo_run["base"] / "out/sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    assert np.isfinite(chimap).all()
    # the crop is tissue from edge to edge: the mask keeps it (Otsu alone dropped 42 %)
    assert mask.get_fdata().mean() > 0.9
    assert "almost no background" in result.stderr
    assert tree_checksum(romeo_run["base"] / "bids") == romeo_run["checksum"]


def _work_image(base, name):
    (path,) = (base / "work").rglob(name)
    return nib.load(path).get_fdata()


def test_unwrapped_phase_is_exact_and_linear(romeo_run):
    base = romeo_run["base"]
    unwrapped = _work_image(base, "unwrapped_phase.nii")
    wrapped = _work_image(base, "phase.nii")  # the loaded phase, in radians
    mask = _work_image(base, "brain_mask.nii") > 0
    turns = (unwrapped - wrapped)[mask] / (2 * np.pi)
    assert np.abs(turns - np.round(turns)).max() < 1e-3  # exact: multiples of 2 pi
    # equally spaced echoes: the second difference over echoes is ~0 (no 2 pi jumps)
    second_difference = unwrapped[..., 2] - 2 * unwrapped[..., 1] + unwrapped[..., 0]
    consistent = np.abs(second_difference[mask]) < np.pi
    assert consistent.mean() > 0.95, f"only {consistent.mean():.1%} of voxels are linear in TE"


def test_nan_phase_with_user_mask(tmp_path):
    """Two echoes of real phase with NaN voxels and no magnitude: a flat magnitude and a
    user mask stand in, and the run must finish with NaN voxels excluded."""
    phase = nib.load(ROMEO / "phase_with_nan.nii")
    phase_data = phase.get_fdata()
    nan_voxels = np.isnan(phase_data).any(axis=-1)
    assert nan_voxels.any()
    _write_bids_run(tmp_path / "bids", np.ones(phase_data.shape), phase_data, phase.affine,
                    (0.004, 0.008))
    masks = tmp_path / "masks" / "sub-01" / "anat"
    masks.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones(phase_data.shape[:3], np.uint8), phase.affine),
             masks / "sub-01_desc-brain_mask.nii.gz")
    result = run_cli(tmp_path / "bids", tmp_path / "out", "participant", "-w", tmp_path / "work",
                     "--field-strength", "3", "--brain-mask-dir", tmp_path / "masks",
                     "--vsharp-max-radius", "2", "--vsharp-min-radius", "1", "--qsm-only")
    assert result.returncode == 0, result.stderr[-4000:]
    out_mask = nib.load(tmp_path / "out/sub-01/anat/sub-01_desc-brain_mask.nii.gz").get_fdata()
    assert not out_mask[nan_voxels].any()
    chimap = nib.load(tmp_path / "out/sub-01/anat/sub-01_Chimap.nii.gz").get_fdata()
    assert np.isfinite(chimap).all()
