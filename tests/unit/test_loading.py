"""Loading a run into magnitude and phase arrays: units, shared scale, invalid voxels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bids_helpers import SHAPE, affine_for, make_bids_root, make_run, write_image

from qsmprep.bids.discovery import discover_runs
from qsmprep.bids.loading import load_multiecho
from qsmprep.errors import BadDataError

ROMEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "romeo-small"
PI32 = np.float32(np.pi)


def write_echoes(folder, name, volumes, *, affine=None):
    """One file per echo; returns their paths."""
    return [
        write_image(Path(folder) / f"{name}{index}.nii.gz", volume, affine=affine)
        for index, volume in enumerate(volumes, start=1)
    ]


def magnitudes(count=3):
    return [np.full(SHAPE, 100.0 - 10 * e, np.float32) for e in range(count)]


def radian_phases(count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-np.pi, np.pi, SHAPE).astype(np.float32) for _ in range(count)]


def test_loads_a_discovered_run(tmp_path):
    root = make_bids_root(tmp_path / "bids")
    files = make_run(root)
    (run,) = discover_runs(root)

    data = load_multiecho(**run.load_arguments)

    assert data.magnitude.shape == (*SHAPE, 3) and data.magnitude.dtype == np.float32
    assert data.phase.shape == (*SHAPE, 3) and data.phase.dtype == np.float32
    expected_phase = nib.load(files[(2, "phase")]).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(data.phase[..., 1], expected_phase, atol=1e-6)
    np.testing.assert_array_equal(data.affine, affine_for())
    assert data.header.get_data_shape() == SHAPE
    assert data.phase_units == "rad"
    assert data.messages == []
    assert data.nan_fraction == 0.0
    assert not data.invalid_voxels.any()
    assert data.echo_count == 3


def test_missing_units_are_inferred_with_a_message(tmp_path):
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes()),
        phase_files=write_echoes(tmp_path, "phase", radian_phases()),
    )
    assert data.phase_units == "rad"
    assert any("Phase Units missing in sidecars; inferred rad" in m for m in data.messages)


def test_arbitrary_units_share_one_scale_across_echoes(tmp_path):
    first = np.linspace(-4096, 4095, np.prod(SHAPE)).reshape(SHAPE)
    second = first / 2  # half the range: must map onto half a cycle, not a full one
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes(2)),
        phase_files=write_echoes(tmp_path, "phase", [first, second]),
        phase_units="arbitrary",
    )
    assert data.phase_units == "arbitrary"
    assert data.phase[..., 0].min() == -PI32
    assert data.phase[..., 0].max() < PI32
    np.testing.assert_allclose(data.phase[..., 1].min(), -np.pi / 2, atol=1e-3)
    np.testing.assert_allclose(data.phase[..., 1].max(), np.pi / 2, atol=1e-3)


def test_inferred_arbitrary_units_report_the_value_range(tmp_path):
    phases = [0.00367 * p / np.pi for p in radian_phases()]
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes()),
        phase_files=write_echoes(tmp_path, "phase", phases),
    )
    assert data.phase_units == "arbitrary"
    assert any("inferred arbitrary from values range [-0.0036" in m for m in data.messages)


def test_unwrapped_radian_phase_is_wrapped(tmp_path):
    unwrapped = [np.linspace(-22.0, 22.0, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)]
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes(1)),
        phase_files=write_echoes(tmp_path, "phase", unwrapped),
        phase_units="rad",
    )
    assert data.phase_units == "rad"
    assert any("wrapped into [-pi, pi)" in m for m in data.messages)
    assert data.input_checks == {"RadianPhaseWrappedFromRange": [-22.0, 22.0]}
    np.testing.assert_allclose(np.exp(1j * data.phase[..., 0]), np.exp(1j * unwrapped[0]),
                               atol=1e-4)


def test_swapped_magnitude_and_phase_are_refused(tmp_path):
    with pytest.raises(BadDataError, match=r"mag1.nii.gz.*phase image.*swapped"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", radian_phases(1)),
            phase_files=write_echoes(tmp_path, "phase", magnitudes(1)),
        )


def test_constant_radian_phase_is_refused(tmp_path):
    with pytest.raises(BadDataError, match=r"phase1.nii.gz is constant"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", magnitudes(1)),
            phase_files=write_echoes(tmp_path, "phase", [np.zeros(SHAPE, np.float32)]),
            phase_units="rad",
        )


def test_an_echo_without_signal_is_named(tmp_path):
    mags = magnitudes(3)
    mags[1][:] = 0
    with pytest.raises(BadDataError, match=r"Echo 2 \(.*mag2.nii.gz\) has no signal"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", mags),
            phase_files=write_echoes(tmp_path, "phase", radian_phases(3)),
            phase_units="rad",
        )


def test_a_masked_export_keeps_its_finite_voxels(tmp_path):
    """NaN outside the head in every echo and part (a masked export) is accepted."""
    shape = (20, 20, 10)
    rng = np.random.default_rng(0)
    mags = [np.full(shape, 100.0, np.float32) for _ in range(2)]
    phases = [rng.uniform(-np.pi, np.pi, shape).astype(np.float32) for _ in range(2)]
    outside = np.ones(shape, bool)
    outside[2:-2, 2:-2, 1:-1] = False  # 2048 finite voxels
    for volume in mags + phases:
        volume[outside] = np.nan
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", mags),
        phase_files=write_echoes(tmp_path, "phase", phases),
        phase_units="rad",
    )
    assert np.array_equal(data.invalid_voxels, outside)
    assert np.isfinite(data.phase).all() and data.nan_fraction == 0
    assert any("masked export" in m for m in data.messages)
    assert data.input_checks == {"MaskedExportVoxels": int(outside.sum())}


def test_radian_units_contradicted_by_the_values(tmp_path):
    phases = [np.full(SHAPE, -2048.0, np.float32), np.full(SHAPE, 2047.0, np.float32)]
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes(2)),
        phase_files=write_echoes(tmp_path, "phase", phases),
        phase_units="rad",
    )
    assert data.phase_units == "arbitrary"
    assert any("treated as arbitrary units" in m for m in data.messages)
    assert data.phase[..., 0].min() == -PI32


def test_nifti_scaling_is_applied(tmp_path):
    stored = np.random.default_rng(0).integers(-4096, 4096, SHAPE).astype(np.int16)
    image = nib.Nifti1Image(stored, affine_for())
    image.header.set_slope_inter(np.pi / 4096, 0)
    image.set_data_dtype(np.int16)
    nib.save(image, tmp_path / "phase.nii")
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes(1)),
        phase_files=[tmp_path / "phase.nii"],
        phase_units="rad",
    )
    np.testing.assert_allclose(data.phase[..., 0], stored * np.pi / 4096, atol=1e-5)


def test_invalid_voxels_are_zeroed_and_recorded(tmp_path):
    mags, phases = magnitudes(), radian_phases()
    mags[1][0, 0, 0] = np.nan
    phases[2][1, 2, 3] = np.inf
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", mags),
        phase_files=write_echoes(tmp_path, "phase", phases),
        phase_units="rad",
    )
    assert data.invalid_voxels.sum() == 2
    assert data.invalid_voxels[0, 0, 0] and data.invalid_voxels[1, 2, 3]
    assert np.all(data.magnitude[0, 0, 0] == 0) and np.all(data.phase[1, 2, 3] == 0)
    assert np.isfinite(data.magnitude).all() and np.isfinite(data.phase).all()
    assert data.nan_fraction == pytest.approx(2 / np.prod(SHAPE))
    assert any("NaN or infinite" in m for m in data.messages)


def test_mostly_invalid_data_names_the_file(tmp_path):
    phases = radian_phases()
    phases[1][:, :, :4] = np.nan
    with pytest.raises(BadDataError, match=r"phase2.nii.gz"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", magnitudes()),
            phase_files=write_echoes(tmp_path, "phase", phases),
            phase_units="rad",
        )


def test_negative_magnitudes_are_made_positive_with_a_message(tmp_path):
    mags = magnitudes()
    mags[0][:2, :2, :2] *= -1  # a few voxels, as interpolating converters leave
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", mags),
        phase_files=write_echoes(tmp_path, "phase", radian_phases()),
        phase_units="rad",
    )
    assert (data.magnitude >= 0).all()
    assert any("negative magnitude" in m for m in data.messages)


def test_real_imaginary_pairs_become_magnitude_and_phase(tmp_path):
    mags, phases = magnitudes(2), radian_phases(2)
    data = load_multiecho(
        real_files=write_echoes(tmp_path, "real", [m * np.cos(p) for m, p in zip(mags, phases)]),
        imaginary_files=write_echoes(
            tmp_path, "imag", [m * np.sin(p) for m, p in zip(mags, phases)]
        ),
    )
    assert data.phase_units == "rad"
    np.testing.assert_allclose(data.magnitude, np.stack(mags, -1), rtol=1e-5)
    np.testing.assert_allclose(
        np.angle(np.exp(1j * (data.phase - np.stack(phases, -1)))), 0, atol=1e-4
    )


def test_files_on_different_grids_name_both(tmp_path):
    mags = write_echoes(tmp_path, "mag", magnitudes(2))
    phases = [
        write_image(tmp_path / "phase1.nii.gz", radian_phases(1)[0]),
        write_image(tmp_path / "phase2.nii.gz", np.zeros((8, 8, 5), np.float32)),
    ]
    with pytest.raises(BadDataError, match=r"phase2.nii.gz has shape 8x8x5 but .*mag1.nii.gz"):
        load_multiecho(magnitude_files=mags, phase_files=phases, phase_units="rad")


def test_echo_counts_must_match(tmp_path):
    with pytest.raises(BadDataError, match="3 magnitude echoes .* but 2 phase echoes"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", magnitudes(3)),
            phase_files=write_echoes(tmp_path, "phase", radian_phases(2)),
        )


def test_zero_magnitude_everywhere(tmp_path):
    with pytest.raises(BadDataError, match=r"mag1.nii.gz is zero in every voxel"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", [np.zeros(SHAPE, np.float32)]),
            phase_files=write_echoes(tmp_path, "phase", radian_phases(1)),
        )


def test_constant_arbitrary_phase(tmp_path):
    with pytest.raises(BadDataError, match=r"phase1.nii.gz is constant"):
        load_multiecho(
            magnitude_files=write_echoes(tmp_path, "mag", magnitudes(1)),
            phase_files=write_echoes(tmp_path, "phase", [np.full(SHAPE, 7.0, np.float32)]),
            phase_units="arbitrary",
        )


@pytest.mark.parametrize(
    "arguments",
    [{}, {"magnitude_files": ["a"], "real_files": ["b"]}, {"magnitude_files": ["a"]}],
)
def test_inconsistent_arguments(arguments):
    with pytest.raises(ValueError):
        load_multiecho(**arguments)


@pytest.mark.skipif(not ROMEO.exists(), reason="ROMEO test data not available")
def test_romeo_four_dimensional_files_load_as_echoes():
    data = load_multiecho(
        magnitude_files=[ROMEO / "Mag.nii"], phase_files=[ROMEO / "Phase.nii"]
    )
    assert data.magnitude.shape == (51, 51, 41, 3)
    assert data.phase_units == "arbitrary"
    assert data.phase.min() >= -PI32 and data.phase.max() < PI32
    assert data.phase.max() - data.phase.min() > 6.2


def test_a_damaged_file_is_named(tmp_path):
    phase_files = write_echoes(tmp_path, "phase", radian_phases(1))
    content = Path(phase_files[0]).read_bytes()
    Path(phase_files[0]).write_bytes(content[: len(content) // 2])  # data cut short
    with pytest.raises(BadDataError, match=r"phase1.nii.gz cannot be read"):
        load_multiecho(magnitude_files=write_echoes(tmp_path, "mag", magnitudes(1)),
                       phase_files=phase_files, phase_units="rad")


def test_degrees_labelled_radians_are_rescaled(tmp_path):
    degrees = [np.linspace(-180.0, 179.9, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)]
    data = load_multiecho(
        magnitude_files=write_echoes(tmp_path, "mag", magnitudes(1)),
        phase_files=write_echoes(tmp_path, "phase", degrees),
        phase_units="rad",
    )
    assert data.phase_units == "arbitrary"
    assert data.input_checks == {"RadianPhaseTakenAsDegrees": True}
    np.testing.assert_allclose(data.phase[..., 0], np.deg2rad(degrees[0]), atol=2e-3)
