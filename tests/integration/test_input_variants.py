"""The same acquisition stored in the ways real datasets store it gives the same answer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_cli

from qsmprep.phantom.dataset import PhantomSubject, write_phantom_dataset

#: Anisotropic voxels, and the same seed everywhere: identical underlying data.
SCAN = {"shape": (60, 72, 50), "voxel_size": (2.4, 2.4, 3.0), "seed": 7,
        "echo_times_s": (0.004, 0.009, 0.014, 0.019)}
VARIANTS = {
    "01": {},                                   # magnitude + phase in radians
    "02": {"phase_units": "arbitrary"},         # scanner integers -4096..4095
    "03": {"phase_units": None},                # no Units in the sidecars
    "04": {"complex_parts": True},              # real + imaginary
    "05": {"suffix": "T2starw", "echo_times_s": (0.014,)},  # single echo
}


@pytest.fixture(scope="module")
def variants_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("variants")
    write_phantom_dataset(base / "bids", [
        PhantomSubject(subject=label, **{**SCAN, **changes})
        for label, changes in VARIANTS.items()])
    result = run_cli(base / "bids", base / "out", "participant", "-w", base / "work",
                     "--qsm-only", "--nprocs", "2", "--omp-nthreads", "1")
    return base, result


def _chimap(base, label):
    return nib.load(base / "out" / f"sub-{label}" / "anat" / f"sub-{label}_Chimap.nii.gz"
                    ).get_fdata()


def test_all_variants_run(variants_run):
    base, result = variants_run
    assert result.returncode == 0, result.stderr[-4000:]
    assert "inferred" in result.stderr  # sub-03: phase units inferred from the values


@pytest.mark.parametrize("label", ["02", "03", "04"])
def test_storage_does_not_change_the_result(variants_run, label):
    base, _ = variants_run
    reference, variant = _chimap(base, "01"), _chimap(base, label)
    both = (reference != 0) & (variant != 0)
    assert both.sum() > 0.9 * (reference != 0).sum()
    assert np.corrcoef(reference[both], variant[both])[0, 1] > 0.97


def test_sidecars_record_units_and_anisotropic_voxels(variants_run):
    base, _ = variants_run
    sidecar = json.loads((base / "out/sub-02/anat/sub-02_Chimap.json").read_text())
    assert sidecar["PhaseUnits"] == "arbitrary"
    assert sidecar["VoxelSizeMM"] == pytest.approx([2.4, 2.4, 3.0])


def test_single_echo_gives_a_map_without_relaxometry(variants_run):
    base, _ = variants_run
    anat = base / "out" / "sub-05" / "anat"
    assert (anat / "sub-05_Chimap.nii.gz").is_file()
    assert not list(anat.glob("*R2starmap*")) and not list(anat.glob("*T2starmap*"))
    truth = nib.load(base / "bids/derivatives/qsmprep-phantom/sub-05/anat/sub-05_Chimap.nii.gz"
                     ).get_fdata()
    chimap = _chimap(base, "05")
    inside = chimap != 0
    # one echo cannot separate the (non-harmonic) phase offset from the field: a rougher map
    assert np.corrcoef(chimap[inside], truth[inside])[0, 1] > 0.3
