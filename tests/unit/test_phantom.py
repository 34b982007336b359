"""The forward model and the simulated BIDS datasets that the tests and the demo rely on."""

from __future__ import annotations

import json

import bids
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmprep.phantom.dataset import PhantomSubject, write_phantom_dataset
from qsmprep.phantom.head import HEALTHY_SUSCEPTIBILITY_PPM, make_head_phantom
from qsmprep.phantom.signal import oblique_affine, simulate_multiecho_gre
from qsmprep.qsm.dipole import forward_field_ppm, ppm_to_hz

GRID = {"shape": (40, 48, 40), "voxel_size": (4.0, 4.0, 4.0)}
ECHO_TIMES = (0.004, 0.008, 0.012)


@pytest.fixture(scope="module")
def phantom():
    return make_head_phantom(seed=3, **GRID)


def test_regions_carry_the_reference_values(phantom):
    for index, name in phantom.label_names.items():
        region = name.removesuffix("_left").removesuffix("_right")
        if region in HEALTHY_SUSCEPTIBILITY_PPM and (phantom.labels == index).any():
            values = phantom.susceptibility_ppm[phantom.labels == index]
            assert np.allclose(values, HEALTHY_SUSCEPTIBILITY_PPM[region], atol=1e-6), name
    assert not np.any(phantom.brain_mask & ~phantom.head_mask)


def test_fields_add_up_and_local_field_is_the_brain_dipole_field(phantom):
    acquisition = simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES, snr=None)
    brain = phantom.brain_mask
    assert np.allclose(acquisition.total_field_hz,
                       acquisition.local_field_hz + acquisition.background_field_hz, atol=1e-3)
    expected_local = ppm_to_hz(forward_field_ppm(acquisition.susceptibility_ppm,
                                                 phantom.voxel_size), 3.0)
    assert np.allclose(acquisition.local_field_hz[brain], expected_local[brain], atol=1e-3)
    assert not acquisition.local_field_hz[~brain].any()


def test_noise_free_signal_model(phantom):
    acquisition = simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES, snr=None)
    for echo, echo_time in enumerate(ECHO_TIMES):
        model = acquisition.phase_offset_rad + 2 * np.pi * acquisition.total_field_hz * echo_time
        difference = np.angle(np.exp(1j * (acquisition.phase[..., echo] - model)))
        assert np.abs(difference).max() < 1e-3
        expected = phantom.m0 * np.exp(-phantom.r2star_hz * echo_time)
        assert np.allclose(acquisition.magnitude[..., echo], expected, rtol=1e-5, atol=1e-6)
    assert acquisition.phase.min() >= -np.pi and acquisition.phase.max() < np.pi


def test_oblique_affine_tilts_b0_and_the_dipole_pattern():
    shape, voxel_size = (32, 32, 32), (2.0, 2.0, 2.0)
    affine = oblique_affine(shape=shape, voxel_size=voxel_size, rotation_deg=(30.0, 0.0, 0.0))
    b0 = simulate_multiecho_gre(make_head_phantom(shape=shape, voxel_size=voxel_size),
                                echo_times_s=(0.01,), affine=affine, snr=None).b0_direction
    assert b0 == pytest.approx([0.0, np.sin(np.deg2rad(30)), np.cos(np.deg2rad(30))], abs=1e-6)
    source = np.zeros((48, 48, 48), np.float32)
    source[24, 24, 24] = 1.0
    source = ndimage.gaussian_filter(source, 1.0)  # a small blob: no grid ringing
    tilted = forward_field_ppm(source, voxel_size, b0)
    axial = forward_field_ppm(source, voxel_size, (0.0, 0.0, 1.0))
    along_b0, along_z, across_b0 = (24, 27, 29), (24, 24, 30), (24, 29, 21)
    # the positive lobe follows B0: stronger along the tilted axis than along z when tilted
    assert tilted[along_b0] > tilted[along_z] > 0 > tilted[across_b0]
    assert axial[along_z] > axial[along_b0] > 0


def test_dataset_is_valid_bids_and_deterministic(tmp_path):
    subjects = [PhantomSubject(subject="01", echo_times_s=ECHO_TIMES, seed=1, **GRID),
                PhantomSubject(subject="02", session="1", phase_units="arbitrary",
                               echo_times_s=ECHO_TIMES, seed=2, **GRID)]
    truths = write_phantom_dataset(tmp_path / "a", subjects)
    write_phantom_dataset(tmp_path / "b", subjects)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*")
                   if path.is_file())
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()

    layout = bids.BIDSLayout(tmp_path / "a", validate=True)
    megre = layout.get(suffix="MEGRE", extension=".nii.gz")
    assert len(megre) == 2 * 2 * len(ECHO_TIMES)
    phase = layout.get(subject="02", part="phase", echo=2, suffix="MEGRE",
                       extension=".nii.gz")[0]
    assert phase.get_metadata()["EchoTime"] == pytest.approx(0.008)
    assert phase.get_metadata()["Units"] == "arbitrary"
    values = nib.load(phase.path).get_fdata()
    assert values.min() >= -4096 and values.max() <= 4095 and np.all(values == np.round(values))
    assert set(truths) == {"sub-01", "sub-02_ses-1"}
    assert truths["sub-02_ses-1"]["Chimap"].is_file()
    description = json.loads((tmp_path / "a" / "dataset_description.json").read_text())
    assert description["BIDSVersion"]


def test_complex_parts_and_single_echo(tmp_path):
    write_phantom_dataset(tmp_path, [
        PhantomSubject(subject="01", complex_parts=True, echo_times_s=ECHO_TIMES, **GRID),
        PhantomSubject(subject="02", suffix="T2starw", echo_times_s=(0.02,), **GRID)])
    anat = tmp_path / "sub-01" / "anat"
    real = nib.load(anat / "sub-01_echo-1_part-real_MEGRE.nii.gz").get_fdata()
    imaginary = nib.load(anat / "sub-01_echo-1_part-imag_MEGRE.nii.gz").get_fdata()
    assert np.abs(real).max() > 0 and np.abs(imaginary).max() > 0
    assert (tmp_path / "sub-02" / "anat" / "sub-02_part-phase_T2starw.nii.gz").is_file()


def test_demo_dataset_holds_the_digital_patients(tmp_path):
    from qsmprep.phantom.dataset import (DEMO_ECHO_TIMES_S, DEMO_SESSIONS, DIGITAL_PATIENTS,
                                         TEMPLATE_NATIVE_SHAPE_2MM, make_demo_dataset)
    from qsmprep.imageio import b0_direction_from_affine

    subjects = make_demo_dataset(tmp_path)
    assert list(dict.fromkeys(s.subject for s in subjects)) == list(DIGITAL_PATIENTS)
    assert [s.session for s in subjects if s.subject == "cbs"] == ["1", "2"]
    participants = (tmp_path / "participants.tsv").read_text().splitlines()
    assert participants[0] == "participant_id\tgroup\tUPDRS_III\tMMSE\tdisease_duration"
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in participants[1:]}
    assert rows["sub-cbs"][0] == "CBS" and rows["sub-control"][0] == "HC"
    assert rows["sub-control"][1:] == ["1", "30", "0"]
    # motor severity rises with the simulated motor-cortex iron of the patients
    patients = [label for label in DIGITAL_PATIENTS if label != "control"]
    iron = [np.mean(list(np.atleast_1d(
        list(value.values()) if isinstance(value, dict) else value)))
        for value in (DIGITAL_PATIENTS[label].get("motor_cortex", 15.0) for label in patients)]
    updrs = [float(rows[f"sub-{label}"][1]) for label in patients]
    order = np.argsort(iron, kind="stable")
    assert np.all(np.diff(np.asarray(updrs)[order]) >= 0) and max(updrs) > min(updrs)
    layout = bids.BIDSLayout(tmp_path, validate=True)
    for subject in subjects:
        query = {"subject": subject.subject, "suffix": "MEGRE", "part": "mag",
                 "extension": ".nii.gz"}
        if subject.session:
            query["session"] = subject.session
        files = layout.get(**query)
        assert len(files) == len(DEMO_ECHO_TIMES_S)
        image = nib.load(files[0].path)
        assert image.shape == TEMPLATE_NATIVE_SHAPE_2MM and image.get_data_dtype() == np.float32
        b0 = b0_direction_from_affine(image.affine)
        assert (abs(b0[2]) < 0.99) == (subject.subject == "psp")
    truth = tmp_path / "derivatives" / "qsmprep-phantom" / "sub-cbs"
    first = (truth / "ses-1" / "anat" / "sub-cbs_ses-1_desc-truth_regions.tsv").read_text()
    second = (truth / "ses-2" / "anat" / "sub-cbs_ses-2_desc-truth_regions.tsv").read_text()
    assert "motor_cortex\tL\t110" in first and "motor_cortex\tL\t170" in second
    assert "motor_cortex\tR\t45" in first and "motor_cortex\tR\t55" in second
    for label, sessions in DEMO_SESSIONS.items():
        table = (tmp_path / f"sub-{label}" / f"sub-{label}_sessions.tsv").read_text()
        assert table.splitlines() == ["session_id\tacq_time"] + [
            f"ses-{session}\t{acq_time}" for session, acq_time in sessions]
    assert not (tmp_path / "sub-control" / "sub-control_sessions.tsv").exists()


@pytest.mark.parametrize("settings", [{"phase_units": "degrees"}, {"suffix": "T1w"},
                                      {"suffix": "T2starw", "echo_times_s": (0.01, 0.02)},
                                      {"subject": "sub_01"}])
def test_invalid_subjects_are_refused(settings):
    with pytest.raises(ValueError):
        PhantomSubject(**settings)
