"""Alternative algorithms chosen on the command line run end to end and are recorded."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_cli, small_subject

from qsmprep.phantom.dataset import write_phantom_dataset


def _run_on_phantom(tmp_path, shape, voxel_size, *options):
    """Simulate one small participant, run the CLI with ``options``; returns its anat folder."""
    write_phantom_dataset(tmp_path / "bids", [
        small_subject(subject="01", shape=shape, voxel_size=voxel_size)])
    result = run_cli(tmp_path / "bids", tmp_path / "out", "participant", "-w", tmp_path / "work",
                     *options)
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp_path / "out" / "sub-01" / "anat"


def test_resharp_and_tkd(tmp_path):
    anat = _run_on_phantom(tmp_path, (48, 56, 48), (3.0, 3.0, 3.0),
                           "--background-removal", "resharp", "--resharp-radius", "6",
                           "--inversion", "tkd", "--tkd-threshold", "0.2", "--qsm-only")
    stages = json.loads((anat / "sub-01_Chimap.json").read_text())["QSMProcessing"]
    assert stages["BackgroundFieldRemoval"] == {"Algorithm": "resharp", "RadiusMM": 6.0,
                                                "Regularization": 0.001}
    assert stages["DipoleInversion"] == {"Algorithm": "tkd", "Threshold": 0.2}
    chimap = nib.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    truth = nib.load(tmp_path / "bids/derivatives/qsmprep-phantom/sub-01/anat/"
                     "sub-01_Chimap.nii.gz").get_fdata()
    inside = chimap != 0
    assert np.corrcoef(chimap[inside], truth[inside])[0, 1] > 0.6
    assert "RESHARP" in (tmp_path / "out" / "logs" / "CITATION.md").read_text()


def test_plugin_file_and_version(tmp_path):
    write_phantom_dataset(tmp_path / "bids", [
        small_subject(subject="01", shape=(24, 28, 24), voxel_size=(4.0, 4.0, 4.0))])
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    result = run_cli(tmp_path / "bids", tmp_path / "out", "participant", "-w", tmp_path / "work",
                     "--use-plugin", plugin, "--qsm-only")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("qsmprep ")


def test_csf_reference_nonlinear_fit_arlo_and_laplacian(tmp_path):
    anat = _run_on_phantom(tmp_path, (60, 72, 60), (2.5, 2.5, 2.5),
                           "--referencing", "csf", "--echo-fit", "nonlinear", "--r2star", "arlo",
                           "--unwrapping", "laplacian", "--qsm-only")
    sidecar = json.loads((anat / "sub-01_Chimap.json").read_text())
    assert sidecar["ReferenceRegion"] == "csf"
    assert sidecar["CSFReference"]["Voxels"] > 50
    assert sidecar["QSMProcessing"]["EchoCombination"]["Algorithm"] == "nonlinear"
    assert sidecar["QSMProcessing"]["R2star"]["Algorithm"] == "arlo"
    csf = nib.load(anat / "sub-01_desc-csf_mask.nii.gz").get_fdata() > 0
    labels = nib.load(tmp_path / "bids/derivatives/qsmprep-phantom/sub-01/anat/"
                      "sub-01_dseg.nii.gz").get_fdata().astype(int)
    names = dict(line.split("\t") for line in (
        tmp_path / "bids/derivatives/qsmprep-phantom/sub-01/anat/sub-01_dseg.tsv"
    ).read_text().splitlines()[1:])
    ventricles = np.isin(labels, [int(i) for i, n in names.items() if "lateral_ventricle" in n])
    assert (csf & ventricles).sum() > 0.7 * csf.sum()  # the reference region is ventricle
    chimap = nib.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    assert abs(chimap[csf].mean()) < 1e-3  # referenced to CSF


@pytest.mark.parametrize("method", ["pdf", "lbv"])
def test_other_background_removal_methods(tmp_path, method):
    """PDF and LBV, each with another inversion (RTS, MEDI) so every choice runs once."""
    inversion = {"pdf": "medi-l1", "lbv": "rts"}[method]
    anat = _run_on_phantom(tmp_path, (48, 56, 48), (3.0, 3.0, 3.0),
                           "--background-removal", method, "--inversion", inversion, "--qsm-only")
    stages = json.loads((anat / "sub-01_Chimap.json").read_text())["QSMProcessing"]
    assert stages["BackgroundFieldRemoval"]["Algorithm"] == method
    assert stages["DipoleInversion"]["Algorithm"] == inversion
    chimap = nib.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    truth = nib.load(tmp_path / "bids/derivatives/qsmprep-phantom/sub-01/anat/"
                     "sub-01_Chimap.nii.gz").get_fdata()
    inside = (chimap != 0) & (truth != 0)
    assert np.corrcoef(chimap[inside], truth[inside])[0, 1] > 0.6
