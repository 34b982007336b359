"""Bad input and bad usage: precise messages, BIDS-App exit codes, no traceback, input untouched."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_cli, small_subject, tree_checksum

from qsmprep.phantom.dataset import write_phantom_dataset

TINY = {"shape": (24, 28, 24), "voxel_size": (4.0, 4.0, 4.0)}


@pytest.fixture
def tiny_bids(tmp_path):
    bids_dir = tmp_path / "bids"
    write_phantom_dataset(bids_dir, [small_subject(subject="01", **TINY)])
    return bids_dir


def _anat(bids_dir):
    return bids_dir / "sub-01" / "anat"


def _run_and_check(bids_dir, tmp_path, *extra, expected_code, expected_words):
    checksum = tree_checksum(bids_dir)
    result = run_cli(bids_dir, tmp_path / "out", "participant", "-w", tmp_path / "work", *extra)
    assert result.returncode == expected_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for word in expected_words:
        assert word in result.stderr, f"{word!r} not in: {result.stderr[-2000:]}"
    assert tree_checksum(bids_dir) == checksum, "the BIDS input was modified"
    return result


def test_missing_echo_time(tiny_bids, tmp_path):
    sidecar = _anat(tiny_bids) / "sub-01_echo-2_part-phase_MEGRE.json"
    metadata = json.loads(sidecar.read_text())
    del metadata["EchoTime"]
    sidecar.write_text(json.dumps(metadata))
    mag_sidecar = sidecar.with_name("sub-01_echo-2_part-mag_MEGRE.json")
    metadata = json.loads(mag_sidecar.read_text())
    del metadata["EchoTime"]
    mag_sidecar.write_text(json.dumps(metadata))
    _run_and_check(tiny_bids, tmp_path, expected_code=65,
                   expected_words=["EchoTime", "sub-01_echo-2_part-"])


def test_missing_phase(tiny_bids, tmp_path):
    for path in _anat(tiny_bids).glob("sub-01_echo-3_part-phase_MEGRE.*"):
        path.unlink()
    _run_and_check(tiny_bids, tmp_path, expected_code=66,
                   expected_words=["sub-01_echo-3_part-mag_MEGRE", "phase"])


def test_echoes_of_different_shapes(tiny_bids, tmp_path):
    path = _anat(tiny_bids) / "sub-01_echo-2_part-mag_MEGRE.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(image.get_fdata()[:-2], image.affine), path)
    _run_and_check(tiny_bids, tmp_path, expected_code=65,
                   expected_words=["sub-01_echo-2_part-mag_MEGRE", "shape"])


def test_unknown_participant(tiny_bids, tmp_path):
    _run_and_check(tiny_bids, tmp_path, "--participant-label", "99", expected_code=18,
                   expected_words=["99", "01"])


def test_output_inside_input(tiny_bids, tmp_path):
    checksum = tree_checksum(tiny_bids)
    result = run_cli(tiny_bids, tiny_bids / "derivatives" / "qsmprep", "participant",
                     "-w", tmp_path / "work")
    assert result.returncode == 64 and "inside the BIDS input" in result.stderr
    assert tree_checksum(tiny_bids) == checksum


def test_missing_bids_folder(tmp_path):
    result = run_cli(tmp_path / "nowhere", tmp_path / "out", "participant")
    assert result.returncode == 66 and "nowhere" in result.stderr


def test_not_a_bids_dataset(tiny_bids, tmp_path):
    (tiny_bids / "dataset_description.json").unlink()
    _run_and_check(tiny_bids, tmp_path, expected_code=16,
                   expected_words=["dataset_description.json"])


def test_group_level_without_participant_results(tiny_bids, tmp_path):
    (tmp_path / "out").mkdir()
    result = run_cli(tiny_bids, tmp_path / "out", "group")
    assert result.returncode == 66, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "desc-regions_stats.tsv" in result.stderr


def test_bad_option_is_a_usage_error(tiny_bids, tmp_path):
    result = run_cli(tiny_bids, tmp_path / "out", "participant", "--inversion", "magic")
    assert result.returncode == 64 and "magic" in result.stderr


def test_missing_field_strength(tiny_bids, tmp_path):
    for sidecar in _anat(tiny_bids).glob("*.json"):
        metadata = json.loads(sidecar.read_text())
        metadata.pop("MagneticFieldStrength", None)
        sidecar.write_text(json.dumps(metadata))
    _run_and_check(tiny_bids, tmp_path, expected_code=65,
                   expected_words=["MagneticFieldStrength", "--field-strength"])


def test_nan_voxels_are_masked_out_not_fatal(tiny_bids, tmp_path):
    path = _anat(tiny_bids) / "sub-01_echo-1_part-phase_MEGRE.nii.gz"
    image = nib.load(path)
    phase = image.get_fdata(dtype=np.float32)
    phase[12, 14, 10:14] = np.nan
    nib.save(nib.Nifti1Image(phase, image.affine, image.header), path)
    result = _run_and_check(tiny_bids, tmp_path, "--qsm-only", expected_code=0,
                            expected_words=["NaN"])
    mask = nib.load(tmp_path / "out" / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz")
    assert not mask.get_fdata()[12, 14, 10:14].any()
    chimap = nib.load(tmp_path / "out" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    assert np.isfinite(chimap).all()
    assert "Traceback" not in result.stderr


def test_mostly_nan_phase_is_bad_data(tiny_bids, tmp_path):
    path = _anat(tiny_bids) / "sub-01_echo-2_part-phase_MEGRE.nii.gz"
    image = nib.load(path)
    phase = np.full(image.shape, np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(phase, image.affine, image.header), path)
    result = _run_and_check(tiny_bids, tmp_path, expected_code=65,
                            expected_words=["load_echoes", "sub-01_echo-2_part-phase_MEGRE"])
    assert "crash" in result.stderr


def test_damaged_image_is_bad_data_naming_the_file(tiny_bids, tmp_path):
    """Damage inside the gzip stream, its length intact: the pre-flight check reads the stream
    through when the size it records disagrees, and names the file (exit 65)."""
    path = _anat(tiny_bids) / "sub-01_echo-3_part-mag_MEGRE.nii.gz"
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(content))
    _run_and_check(tiny_bids, tmp_path, "--qsm-only", expected_code=65,
                   expected_words=["sub-01_echo-3_part-mag_MEGRE.nii.gz", "damaged",
                                   "the file again"])
