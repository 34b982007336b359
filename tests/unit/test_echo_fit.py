"""Weighted linear fit of phase over echo time against simulated fields."""

import numpy as np
import pytest

from qsmprep.qsm.echo_fit import fit_weighted_line, weighted_linear_fit

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
