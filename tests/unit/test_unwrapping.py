"""Phase unwrapping (Laplacian and ROMEO-style region growing) against known phase."""

from pathlib import Path

import numpy as np
import pytest

from qsmprep.qsm import unwrapping


def _wrap(phase):
    return np.angle(np.exp(1j * phase)).astype(np.float32)


def _quadratic_phase(shape=(64, 64, 64), peak=20.0):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (peak * (x**2 - z**2) + 3.0 * y).astype(np.float32), x**2 + y**2 + z**2 < 0.75**2


def _error_up_to_constant(estimate, truth, region):
    difference = estimate[region] - truth[region]
    return np.abs(difference - difference.mean()).max()


def test_quadratic_phase_recovered_up_to_constant():
    truth, interior = _quadratic_phase()  # reaches +-20 rad, 1.3 rad/voxel at the edges
    assert np.abs(truth).max() > 19.0
    unwrapped = unwrapping.laplacian_unwrap(_wrap(truth), (1.0, 1.0, 1.0))
    assert unwrapped.dtype == np.float32
    assert _error_up_to_constant(unwrapped, truth, interior) < 0.05


def test_single_pass_is_not_exact_on_steep_phase():
    truth, interior = _quadratic_phase()
    classic = unwrapping.laplacian_unwrap(_wrap(truth), (1.0, 1.0, 1.0), refinements=0,
                                          congruent=False)
    error = _error_up_to_constant(classic, truth, interior)
    assert 0.2 < error < 2.0  # damped but free of 2-pi jumps


def test_congruent_result_differs_from_input_by_whole_turns_and_keeps_noise():
    truth, interior = _quadratic_phase(shape=(48, 48, 32), peak=10.0)
    measured = truth + 0.3 * np.random.default_rng(1).standard_normal(truth.shape)
    wrapped = _wrap(measured)
    unwrapped = unwrapping.laplacian_unwrap(wrapped, (1.0, 1.0, 1.5))
    turns = (unwrapped - wrapped) / (2 * np.pi)
    assert np.abs(turns - np.round(turns)).max() < 1e-4
    # inside, the measured phase itself is recovered (up to one global number of turns)
    difference = (unwrapped - measured)[interior]
    assert np.abs(difference - np.median(difference)).max() < 1e-3
    smooth = unwrapping.laplacian_unwrap(wrapped, (1.0, 1.0, 1.5), congruent=False)
    smooth_turns = (smooth - wrapped) / (2 * np.pi)
    assert np.abs(smooth_turns - np.round(smooth_turns)).max() > 0.01


def test_noisy_phase_and_anisotropic_voxels():
    truth, interior = _quadratic_phase(shape=(48, 48, 32), peak=10.0)
    noise = 0.2 * np.random.default_rng(0).standard_normal(truth.shape).astype(np.float32)
    unwrapped = unwrapping.laplacian_unwrap(_wrap(truth + noise), (1.0, 1.0, 1.5))
    difference = (unwrapped - truth)[interior]
    difference -= difference.mean()
    assert np.sqrt(np.mean(difference**2)) < 0.3  # about the noise level: no wraps left
    assert np.abs(difference).max() < np.pi


def test_constant_matches_wrapped_input():
    truth, _ = _quadratic_phase(shape=(32, 32, 32), peak=2.0)
    unwrapped = unwrapping.laplacian_unwrap(_wrap(truth + 1.0), (1.0, 1.0, 1.0))
    assert np.abs(unwrapped - (truth + 1.0)).max() < 0.02


def test_unwrap_echoes_shape_and_echo_independence():
    truth, interior = _quadratic_phase(shape=(32, 32, 32), peak=8.0)
    echoes = np.stack([_wrap(truth * k) for k in (1.0, 2.0)], axis=-1)
    unwrapped = unwrapping.unwrap_echoes(echoes, (1.0, 1.0, 1.0))
    assert unwrapped.shape == echoes.shape
    for index, k in enumerate((1.0, 2.0)):
        assert _error_up_to_constant(unwrapped[..., index], truth * k, interior) < 0.05


def test_unwrap_echoes_rejects_unknown_method():
    with pytest.raises(ValueError, match="laplacian"):
        unwrapping.unwrap_echoes(np.zeros((8, 8, 8, 2)), (1, 1, 1), method="magic")


# --- ROMEO-style region growing ------------------------------------------------------------
ROMEO_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "romeo-small"


def _turns(unwrapped, wrapped):
    return (unwrapped.astype(np.float64) - wrapped) / (2 * np.pi)


def _fraction_wrong(estimate, measured, region):
    """Fraction of ``region`` off the measured phase by more than pi, after one global turn."""
    difference = (estimate - measured)[region]
    difference -= 2 * np.pi * np.round(np.median(difference) / (2 * np.pi))
    return np.mean(np.abs(difference) > np.pi)


def test_romeo_is_first_method_and_default():
    assert list(unwrapping.METHODS)[0] == "romeo"
    assert unwrapping.METHODS["romeo"] is unwrapping.romeo_unwrap


def test_romeo_exact_on_steep_noisy_phase():
    truth, interior = _quadratic_phase(shape=(48, 48, 40), peak=25.0)
    rng = np.random.default_rng(3)
    wrapped = _wrap(truth + 0.6 * rng.standard_normal(truth.shape))
    unwrapped = unwrapping.romeo_unwrap(wrapped, (1.0, 1.0, 1.0), mask=interior)
    assert unwrapped.dtype == np.float32 and unwrapped.shape == wrapped.shape
    turns = _turns(unwrapped, wrapped)
    assert np.abs(turns - np.round(turns)).max() < 1e-4
    assert np.abs(turns[interior]).max() >= 2  # it did unwrap
    np.testing.assert_array_equal(unwrapped[~interior], wrapped[~interior])


def test_romeo_recovers_truth_up_to_one_global_turn():
    truth, interior = _quadratic_phase(shape=(48, 48, 32), peak=20.0)
    truth = truth + 7.0  # the global offset is only known up to whole turns
    measured = truth + 0.3 * np.random.default_rng(1).standard_normal(truth.shape)
    wrapped = _wrap(measured)
    magnitude = np.where(interior, 1.0, 0.3).astype(np.float32)
    unwrapped = unwrapping.romeo_unwrap(wrapped, (1.0, 1.0, 1.5), magnitude=magnitude)
    difference = (unwrapped - measured).ravel()  # the whole volume, noise included
    offset = difference[0]
    assert abs(offset / (2 * np.pi) - round(offset / (2 * np.pi))) < 1e-4
    assert np.abs(difference - offset).max() < 1e-3
    assert abs(np.mean(unwrapped)) <= np.pi  # global correction: mean within one turn


def test_romeo_second_echo_and_mask_regions():
    truth, _ = _quadratic_phase(shape=(40, 40, 40), peak=15.0)
    x = np.arange(40)[:, None, None] * np.ones((1, 40, 40))
    two_parts = (x < 17) | (x > 22)  # two slabs, not connected
    rng = np.random.default_rng(4)
    first = _wrap(truth + 0.2 * rng.standard_normal(truth.shape))
    second = _wrap(2 * truth + 0.2 * rng.standard_normal(truth.shape))
    unwrapped = unwrapping.romeo_unwrap(first, (1, 1, 1), second_echo_phase=second,
                                        echo_times_s=(0.004, 0.008), mask=two_parts)
    for part in (x < 17, x > 22):
        assert _fraction_wrong(unwrapped, truth, part) == 0.0
    with pytest.raises(ValueError, match="echo_times_s"):
        unwrapping.romeo_unwrap(first, (1, 1, 1), second_echo_phase=second)


def test_romeo_keeps_nan_and_unwraps_the_rest():
    truth, interior = _quadratic_phase(shape=(32, 32, 32), peak=12.0)
    wrapped = _wrap(truth)
    wrapped[10:14, 10:14, :] = np.nan
    unwrapped = unwrapping.romeo_unwrap(wrapped, (1, 1, 1))
    assert np.isnan(unwrapped[10:14, 10:14, :]).all()
    finite = np.isfinite(wrapped)
    assert _fraction_wrong(unwrapped, truth, finite) == 0.0


def test_romeo_beats_laplacian_on_high_gradients():
    # gradients up to about 2.7 rad/voxel in the mask: Laplacian unwrapping sees them through
    # sin(), whose sign flips beyond pi/2, and its estimate strays by more than pi
    truth, _ = _quadratic_phase(shape=(64, 64, 64), peak=50.0)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 64)] * 3, indexing="ij")
    region = x**2 + y**2 + z**2 < 0.85**2
    measured = truth + 0.2 * np.random.default_rng(0).standard_normal(truth.shape)
    wrapped = _wrap(measured)
    romeo_wrong = _fraction_wrong(unwrapping.romeo_unwrap(wrapped, (1, 1, 1), mask=region),
                                  measured, region)
    laplacian_wrong = _fraction_wrong(unwrapping.laplacian_unwrap(wrapped, (1, 1, 1)),
                                      measured, region)
    assert romeo_wrong < 1e-3
    assert laplacian_wrong > 0.01


def test_romeo_quality_in_unit_range_and_lower_where_noisy():
    truth, _ = _quadratic_phase(shape=(40, 40, 40), peak=8.0)
    rng = np.random.default_rng(5)
    noise = np.where(np.arange(40)[:, None, None] < 20, 0.1, 1.0) * rng.standard_normal(
        truth.shape)
    magnitude = np.where(np.arange(40)[None, :, None] < 20, 1.0, 0.2) * np.ones_like(truth)
    wrapped = _wrap(truth + noise)
    quality = unwrapping.romeo_quality(wrapped, (1, 1, 1))
    assert quality.dtype == np.float32 and 0.0 <= quality.min() and quality.max() <= 1.0
    assert quality[5:15].mean() > quality[25:35].mean() + 0.2
    weighted = unwrapping.romeo_quality(wrapped, magnitude=magnitude,
                                        mask=np.ones(truth.shape, bool))
    assert 0.0 <= weighted.min() and weighted.max() <= 1.0
    assert weighted[5:15, 5:15].mean() > weighted[5:15, 25:35].mean()
    half = np.broadcast_to(np.arange(40)[:, None, None] < 20, truth.shape)
    masked = unwrapping.romeo_quality(wrapped, mask=half)
    assert (masked[20:] == 0).all()


def test_unwrap_echoes_romeo_with_phase_offset_and_magnitude():
    truth, interior = _quadratic_phase(shape=(40, 40, 32), peak=10.0)
    offset = 1.5 + 0.5 * np.cos(np.linspace(0, 3, 40))[:, None, None]
    times = (0.004, 0.008, 0.012)
    rng = np.random.default_rng(6)
    echoes = np.stack([_wrap(offset + truth * k + 0.1 * rng.standard_normal(truth.shape))
                       for k in (1, 2, 3)], axis=-1)
    magnitude = np.stack([np.where(interior, 1.0, 0.1)] * 3, axis=-1) * np.exp(
        -np.arange(3) * 0.2)
    unwrapped = unwrapping.unwrap_echoes(echoes, (1, 1, 1), echo_times_s=times,
                                         magnitude_4d=magnitude, mask=interior)
    turns = _turns(unwrapped, echoes)
    assert np.abs(turns - np.round(turns)).max() < 1e-4
    for echo, k in enumerate((1, 2, 3)):
        assert _fraction_wrong(unwrapped[..., echo], offset + truth * k, interior) == 0.0
    # the Laplacian path ignores the new arguments
    laplacian = unwrapping.unwrap_echoes(echoes, (1, 1, 1), echo_times_s=times,
                                         method="laplacian")
    np.testing.assert_array_equal(
        laplacian, unwrapping.unwrap_echoes(echoes, (1, 1, 1), echo_times_s=times,
                                            method="laplacian", magnitude_4d=magnitude,
                                            mask=interior))


def _load_romeo_small():
    if not (ROMEO_DATA / "Phase.nii").exists():
        pytest.skip(f"real test data not found at {ROMEO_DATA} (shared/data/romeo-small)")
    nibabel = pytest.importorskip("nibabel")
    from qsmprep.bids.phase import phase_to_radians

    phase_image = nibabel.load(str(ROMEO_DATA / "Phase.nii"))
    phase = phase_to_radians(np.asarray(phase_image.dataobj, dtype=np.float32), "arbitrary")
    magnitude = np.asarray(nibabel.load(str(ROMEO_DATA / "Mag.nii")).dataobj,
                           dtype=np.float32)
    return phase, magnitude, tuple(float(v) for v in phase_image.header.get_zooms()[:3])


def test_romeo_on_real_three_echo_crop():
    from qsmprep.qsm.masking import magnitude_brain_mask

    phase, magnitude, voxel_size = _load_romeo_small()
    times = (0.004, 0.008, 0.012)  # as in the ROMEO.jl tests
    mask = magnitude_brain_mask(magnitude[..., 0], voxel_size)
    assert mask.sum() > 1000
    unwrapped = unwrapping.unwrap_echoes(phase, voxel_size, echo_times_s=times,
                                         method="romeo", magnitude_4d=magnitude, mask=mask)
    turns = _turns(unwrapped, phase)
    assert np.abs(turns - np.round(turns)).max() < 1e-4
    assert np.abs(turns[..., 2][mask]).max() >= 1  # the last echo does wrap
    second_difference = unwrapped[..., 2] - 2 * unwrapped[..., 1] + unwrapped[..., 0]
    assert np.mean(np.abs(second_difference[mask]) < np.pi) > 0.95
    # the template echo on its own, over the whole crop, is exact too
    template = unwrapping.romeo_unwrap(phase[..., 0], voxel_size, magnitude=magnitude[..., 0],
                                       second_echo_phase=phase[..., 1],
                                       echo_times_s=times[:2])
    template_turns = _turns(template, phase[..., 0])
    assert np.abs(template_turns - np.round(template_turns)).max() < 1e-4
    quality = unwrapping.romeo_quality(phase[..., 0], voxel_size, magnitude=magnitude[..., 0],
                                       second_echo_phase=phase[..., 1],
                                       echo_times_s=times[:2])
    assert 0.0 <= quality.min() and quality.max() <= 1.0 and quality[mask].mean() > 0.3


def test_line_prediction_coefficients_extrapolate_the_least_squares_line():
    rng = np.random.default_rng(5)
    times = np.array([0.004, 0.0095, 0.014])
    values = rng.standard_normal((50, 3))
    coefficients = unwrapping.line_prediction_coefficients(times, 0.019)
    expected = [np.polyval(np.polyfit(times, row, 1), 0.019) for row in values]
    np.testing.assert_allclose(values @ coefficients, expected, rtol=1e-9, atol=1e-12)
    assert coefficients.sum() == pytest.approx(1.0)  # a constant stays constant
    line = 3.0 + 200.0 * times
    assert line @ coefficients == pytest.approx(3.0 + 200.0 * 0.019)
    with pytest.raises(ValueError):
        unwrapping.line_prediction_coefficients([0.01, 0.01], 0.02)
