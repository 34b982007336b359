"""Weighted linear and nonlinear complex fits of phase over echo time against simulated fields."""

import numpy as np
import pytest

from qsmprep.phantom.head import make_head_phantom
from qsmprep.phantom.signal import simulate_multiecho_gre
from qsmprep.qsm.echo_fit import (
    equally_spaced,
    fit_weighted_line,
    nonlinear_complex_fit,
    weighted_linear_fit,
)
from qsmprep.qsm.unwrapping import snap_to_wrapped

ECHO_TIMES = np.array([4.0, 8.0, 12.0, 16.0, 20.0]) * 1e-3


def _simulate(echo_times, shape=(12, 10, 8), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    field_hz = rng.uniform(-40.0, 40.0, shape)
    offset_rad = rng.uniform(-1.0, 1.0, shape)
    magnitude = np.stack([np.exp(-te / 0.04) * np.ones(shape) for te in echo_times], axis=-1)
    phase = offset_rad[..., None] + 2 * np.pi * field_hz[..., None] * echo_times
    phase = phase + noise * rng.standard_normal(phase.shape) / magnitude
    return phase.astype(np.float32), magnitude.astype(np.float32), field_hz, offset_rad


def test_noiseless_multi_echo_is_exact():
    phase, magnitude, field_hz, offset = _simulate(ECHO_TIMES)
    mask = np.ones(field_hz.shape, bool)
    mask[0] = False
    fit = weighted_linear_fit(phase, magnitude, ECHO_TIMES, mask)
    assert fit.total_field_hz.dtype == np.float32
    assert fit.total_field_hz[mask] == pytest.approx(field_hz[mask], abs=1e-3)
    assert fit.phase_offset_rad[mask] == pytest.approx(offset[mask], abs=1e-4)
    assert np.all(fit.residual[mask] < 1e-4)
    for image in fit:
        assert np.all(image[~mask] == 0)


def test_noisy_fit_recovers_field_and_residual_tracks_noise():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES, shape=(20, 20, 20), noise=0.05)
    mask = np.ones(field_hz.shape, bool)
    fit = weighted_linear_fit(phase, magnitude, ECHO_TIMES, mask)
    error = fit.total_field_hz - field_hz
    # SNR-optimal standard error of the slope, sigma_i = 0.05 / magnitude_i
    weights = magnitude[0, 0, 0] ** 2 / 0.05**2
    centred = ECHO_TIMES - np.sum(weights * ECHO_TIMES) / weights.sum()
    expected_sd = 1 / np.sqrt(np.sum(weights * centred**2)) / (2 * np.pi)
    assert np.std(error) == pytest.approx(expected_sd, rel=0.1)
    assert abs(np.mean(error)) < 5 * expected_sd / np.sqrt(error.size)
    # weighted mean squared misfit: sigma^2 (n_echoes - 2) / sum(magnitude^2)
    expected_rms = 0.05 * np.sqrt((len(ECHO_TIMES) - 2) / np.sum(magnitude[0, 0, 0] ** 2))
    assert np.sqrt(np.mean(fit.residual**2)) == pytest.approx(expected_rms, rel=0.1)


def test_weighting_discounts_low_magnitude_echo():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES)
    mask = np.ones(field_hz.shape, bool)
    phase[..., -1] += 1.0  # a corrupted last echo ...
    faint = magnitude.copy()
    faint[..., -1] *= 0.01  # ... with almost no signal
    error_faint = np.abs(weighted_linear_fit(phase, faint, ECHO_TIMES, mask).total_field_hz
                         - field_hz).max()
    error_bright = np.abs(weighted_linear_fit(phase, magnitude, ECHO_TIMES, mask).total_field_hz
                          - field_hz).max()
    assert error_faint < 0.01
    assert error_bright > 1.0


def test_single_echo_divides_by_echo_time():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES[:1])
    phase -= phase.mean()  # any phase: field = phase / (2 pi TE), offset assumed 0
    mask = np.ones(field_hz.shape, bool)
    fit = weighted_linear_fit(phase, magnitude, ECHO_TIMES[:1], mask)
    assert fit.total_field_hz == pytest.approx(phase[..., 0] / (2 * np.pi * ECHO_TIMES[0]),
                                               rel=1e-5)
    assert np.all(fit.phase_offset_rad == 0) and np.all(fit.residual == 0)


def test_two_echoes_fit_exactly_with_zero_residual():
    echo_times = ECHO_TIMES[:2]
    phase, magnitude, field_hz, _ = _simulate(echo_times, noise=0.1)
    fit = weighted_linear_fit(phase, magnitude, echo_times, np.ones(field_hz.shape, bool))
    slope = (phase[..., 1] - phase[..., 0]) / (echo_times[1] - echo_times[0])
    assert fit.total_field_hz == pytest.approx(slope / (2 * np.pi), rel=1e-4, abs=1e-3)
    assert np.all(fit.residual == 0)


def test_rows_without_two_weighted_points_are_zero():
    slope, intercept, rms = fit_weighted_line(
        [1.0, 2.0, 3.0], [[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], [[1.0, 1.0, 1.0], [0.0, 2.0, 0.0]])
    assert slope == pytest.approx([1.0, 0.0]) and intercept == pytest.approx([0.0, 0.0])


def test_mismatched_echo_times_rejected():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES)
    with pytest.raises(ValueError):
        weighted_linear_fit(phase, magnitude, ECHO_TIMES[:3], np.ones(field_hz.shape, bool))


# --- nonlinear complex fit ---------------------------------------------------------------


def _wrapped(phase):
    return np.angle(np.exp(1j * phase)).astype(np.float32)


def test_complex_fit_of_wrapped_noiseless_data_is_exact():
    spacing = ECHO_TIMES[1] - ECHO_TIMES[0]
    phase, magnitude, field_hz, offset = _simulate(ECHO_TIMES)
    field_hz = field_hz * 0.45 / (40.0 * spacing)  # up to 0.45 / dTE: phase wraps often
    phase = offset[..., None] + 2 * np.pi * field_hz[..., None] * ECHO_TIMES
    mask = np.ones(field_hz.shape, bool)
    mask[0] = False
    fit = nonlinear_complex_fit(magnitude, _wrapped(phase), ECHO_TIMES, mask)
    assert fit.total_field_hz.dtype == np.float32
    assert fit.total_field_hz[mask] == pytest.approx(field_hz[mask], abs=1e-3)
    assert _wrapped(fit.phase_offset_rad - offset)[mask] == pytest.approx(0.0, abs=1e-4)
    assert np.all(fit.residual[mask] < 1e-4)
    for image in fit:
        assert np.all(image[~mask] == 0)


def test_complex_fit_noise_and_residual_match_the_linear_fit():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES, shape=(20, 20, 20), noise=0.05)
    mask = np.ones(field_hz.shape, bool)
    linear = weighted_linear_fit(phase, magnitude, ECHO_TIMES, mask)
    complex_fit = nonlinear_complex_fit(magnitude, _wrapped(phase), ECHO_TIMES, mask)
    linear_error = linear.total_field_hz - field_hz
    complex_error = complex_fit.total_field_hz - field_hz
    assert np.std(complex_error) == pytest.approx(np.std(linear_error), rel=0.02)
    assert np.median(complex_fit.residual) == pytest.approx(np.median(linear.residual), rel=0.05)


def test_initial_field_chooses_the_branch_and_whole_turn_errors_do_not_matter():
    # fields far beyond 1 / (2 dTE): the complex data alone fix them modulo 1 / dTE only
    rng = np.random.default_rng(3)
    spacing = ECHO_TIMES[1] - ECHO_TIMES[0]
    phase, magnitude, _, offset = _simulate(ECHO_TIMES, shape=(16, 16, 16))
    field_hz = rng.uniform(-400.0, 400.0, offset.shape)
    phase = offset[..., None] + 2 * np.pi * field_hz[..., None] * ECHO_TIMES
    mask = np.ones(field_hz.shape, bool)
    alone = nonlinear_complex_fit(magnitude, _wrapped(phase), ECHO_TIMES, mask)
    turns = (alone.total_field_hz - field_hz) * spacing
    assert turns == pytest.approx(np.round(turns), abs=1e-5)
    assert np.abs(alone.total_field_hz).max() <= 0.5 / spacing + 1e-3

    corrupted = phase.copy()
    corrupted[..., 2] += 2 * np.pi  # a wrong whole turn in one unwrapped echo
    linear = weighted_linear_fit(corrupted, magnitude, ECHO_TIMES, mask)
    assert np.abs(linear.total_field_hz - field_hz).min() > 1.0
    fit = nonlinear_complex_fit(magnitude, _wrapped(corrupted), ECHO_TIMES, mask,
                                initial_field_hz=linear.total_field_hz)
    assert fit.total_field_hz == pytest.approx(field_hz, abs=1e-3)


def test_complex_fit_residual_flags_random_phase():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES, shape=(20, 20, 20), noise=0.01)
    random = np.zeros(field_hz.shape, bool)
    random[:5] = True
    phase[random] = np.random.default_rng(4).uniform(-np.pi, np.pi, phase[random].shape)
    fit = nonlinear_complex_fit(magnitude, _wrapped(phase), ECHO_TIMES,
                                np.ones(field_hz.shape, bool))
    assert np.median(fit.residual[random]) > 0.4
    assert np.percentile(fit.residual[~random], 99) < 0.05


def test_complex_fit_two_echoes_exact_and_one_echo_rejected():
    phase, magnitude, field_hz, _ = _simulate(ECHO_TIMES[:2])
    mask = np.ones(field_hz.shape, bool)
    fit = nonlinear_complex_fit(magnitude, _wrapped(phase), ECHO_TIMES[:2], mask)
    assert fit.total_field_hz == pytest.approx(field_hz, abs=1e-3)
    assert np.all(fit.residual == 0)
    with pytest.raises(ValueError, match="two echoes"):
        nonlinear_complex_fit(magnitude[..., :1], phase[..., :1], ECHO_TIMES[:1], mask)


def test_equally_spaced_tolerates_rounding():
    assert equally_spaced([0.00492, 0.00984, 0.01476, 0.01968])
    assert equally_spaced([0.00412, 0.00823, 0.01235])  # steps rounded to 10 us
    assert not equally_spaced([0.004, 0.008, 0.013])
    assert not equally_spaced([0.004])


def test_complex_fit_on_head_phantom_matches_linear_fit_and_ignores_unwrapping_errors():
    echo_times = (0.004, 0.009, 0.014, 0.019)
    phantom = make_head_phantom(shape=(64, 76, 64), voxel_size=(2.5, 2.5, 2.5))
    acquisition = simulate_multiecho_gre(phantom, echo_times_s=echo_times, snr=30, seed=2)
    brain, true_field = acquisition.brain_mask, acquisition.total_field_hz
    true_phase = (acquisition.phase_offset_rad[..., None]
                  + 2 * np.pi * true_field[..., None] * np.asarray(echo_times))
    unwrapped = snap_to_wrapped(true_phase, acquisition.phase)  # exact unwrapping

    def field_error_rms(fit):
        return np.sqrt(np.mean((fit.total_field_hz - true_field)[brain] ** 2))

    linear = weighted_linear_fit(unwrapped, acquisition.magnitude, echo_times, brain)
    rng = np.random.default_rng(0)
    hit = brain & (rng.random(brain.shape) < 0.05)
    unwrapped[hit, rng.integers(0, 4)] += 2 * np.pi  # unwrapping errors in 5 % of voxels
    linear_hit = weighted_linear_fit(unwrapped, acquisition.magnitude, echo_times, brain)
    complex_fit = nonlinear_complex_fit(acquisition.magnitude, acquisition.phase, echo_times,
                                        brain, initial_field_hz=linear_hit.total_field_hz)
    assert field_error_rms(linear) < 1.0  # Hz, at SNR 30
    assert field_error_rms(complex_fit) < 1.02 * field_error_rms(linear)
    assert field_error_rms(linear_hit) > 5 * field_error_rms(linear)
