"""Weighted log-linear and ARLO R2* fits against simulated mono-exponential decay."""

import numpy as np
import pytest

from qsmprep.qsm.relaxometry import r2star_arlo, r2star_loglinear

ECHO_TIMES = np.array([3.0, 7.0, 11.0, 15.0, 19.0, 23.0]) * 1e-3


def _decay(r2star_hz, echo_times, s0=100.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    signal = s0 * np.exp(-r2star_hz[..., None] * echo_times)
    noisy = signal + noise * (rng.standard_normal(signal.shape)
                              + 1j * rng.standard_normal(signal.shape))
    return np.abs(noisy).astype(np.float32)  # Rician magnitude


def test_noisy_decay_recovered_within_few_percent():
    r2star_true = np.random.default_rng(1).uniform(10.0, 60.0, (16, 16, 16))
    magnitude = _decay(r2star_true, ECHO_TIMES, noise=1.0)  # SNR 100 at TE = 0
    mask = np.ones(r2star_true.shape, bool)
    mask[:2] = False
    r2star, t2star = r2star_loglinear(magnitude, ECHO_TIMES, mask)
    assert r2star.dtype == np.float32 and t2star.dtype == np.float32
    relative_error = (r2star[mask] - r2star_true[mask]) / r2star_true[mask]
    assert np.median(np.abs(relative_error)) < 0.03
    assert abs(np.mean(relative_error)) < 0.01  # no noise-floor bias at this SNR
    assert t2star[mask] == pytest.approx(1.0 / r2star[mask], rel=1e-5)
    assert np.all(r2star[~mask] == 0) and np.all(t2star[~mask] == 0)


def test_weights_limit_noise_floor_bias():
    # fast decay (T2* 4 ms): the late echoes sit on the Rician noise floor; S^2 weights keep
    # the early echoes in charge, an unweighted log-linear fit is dragged down
    r2star_true = np.full((20, 20, 20), 250.0)
    magnitude = _decay(r2star_true, ECHO_TIMES, noise=2.0, seed=3)
    r2star, _ = r2star_loglinear(magnitude, ECHO_TIMES, np.ones(r2star_true.shape, bool))
    unweighted = -np.polyfit(ECHO_TIMES, np.log(magnitude.reshape(-1, 6).T), 1)[0]
    weighted_bias = abs(np.median(r2star) - 250.0)
    assert weighted_bias < 0.25 * 250.0
    assert weighted_bias < 0.6 * abs(np.median(unweighted) - 250.0)


def test_clipping_and_zero_t2star():
    r2star_true = np.array([-5.0, 0.0, 800.0]).reshape(3, 1, 1)
    magnitude = _decay(r2star_true, ECHO_TIMES)
    r2star, t2star = r2star_loglinear(magnitude, ECHO_TIMES, np.ones((3, 1, 1), bool))
    assert r2star.ravel() == pytest.approx([0.0, 0.0, 500.0], abs=1e-3)
    assert t2star.ravel() == pytest.approx([0.0, 0.0, 1 / 500.0], abs=1e-6)


def test_single_echo_rejected():
    with pytest.raises(ValueError, match="two echoes"):
        r2star_loglinear(np.ones((4, 4, 4, 1)), [0.01], np.ones((4, 4, 4), bool))


# --- noise floor and ARLO ------------------------------------------------------------------

EQUAL_SPACING = ECHO_TIMES  # 3 to 23 ms in steps of 4 ms


def test_noise_sigma_drops_floor_echoes_and_reduces_bias():
    r2star_true = np.full((20, 20, 20), 250.0)  # T2* 4 ms, SNR 50: late echoes on the floor
    magnitude = _decay(r2star_true, ECHO_TIMES, noise=2.0, seed=3)
    mask = np.ones(r2star_true.shape, bool)
    plain, _ = r2star_loglinear(magnitude, ECHO_TIMES, mask)
    floor_aware, _ = r2star_loglinear(magnitude, ECHO_TIMES, mask, noise_sigma=2.0)
    assert abs(np.median(floor_aware) - 250.0) < 0.1 * 250.0
    assert abs(np.median(floor_aware) - 250.0) < 0.4 * abs(np.median(plain) - 250.0)


def test_noise_sigma_changes_nothing_above_the_floor():
    r2star_true = np.random.default_rng(1).uniform(10.0, 40.0, (10, 10, 10))
    magnitude = _decay(r2star_true, ECHO_TIMES, noise=1.0)  # last echo >= 40 SD
    mask = np.ones(r2star_true.shape, bool)
    assert np.array_equal(r2star_loglinear(magnitude, ECHO_TIMES, mask)[0],
                          r2star_loglinear(magnitude, ECHO_TIMES, mask, noise_sigma=1.0)[0])


def test_noise_sigma_keeps_two_echoes_when_all_are_on_the_floor():
    magnitude = _decay(np.full((4, 4, 4), 400.0), ECHO_TIMES, s0=1.0)  # all below 3 SD
    r2star, _ = r2star_loglinear(magnitude, ECHO_TIMES, np.ones((4, 4, 4), bool),
                                 noise_sigma=10.0)
    assert r2star == pytest.approx(np.full((4, 4, 4), 400.0), rel=1e-3)


def test_arlo_noiseless_up_to_simpson_error():
    r2star_true = np.array([20.0, 50.0, 100.0, 200.0]).reshape(4, 1, 1)  # T2* 50 to 5 ms
    magnitude = _decay(r2star_true, EQUAL_SPACING)
    mask = np.ones(r2star_true.shape, bool)
    r2star, t2star = r2star_arlo(magnitude, EQUAL_SPACING, mask)
    assert r2star.dtype == np.float32 and t2star.dtype == np.float32
    # Simpson's rule: R2* low by about (R2* dTE)**4 / 180, 0.23 % at 200 1/s
    assert r2star.ravel() == pytest.approx(r2star_true.ravel(), rel=3e-3)
    assert t2star == pytest.approx(1.0 / r2star, rel=1e-5)


def test_arlo_less_biased_than_loglinear_with_similar_spread():
    r2star_true = np.full((30, 30, 30), 100.0)  # T2* 10 ms
    magnitude = _decay(r2star_true, EQUAL_SPACING, noise=2.0, seed=5)  # SNR 50
    mask = np.ones(r2star_true.shape, bool)
    mask[0] = False
    arlo, _ = r2star_arlo(magnitude, EQUAL_SPACING, mask)
    loglinear, _ = r2star_loglinear(magnitude, EQUAL_SPACING, mask)
    assert abs(np.mean(arlo[mask]) - 100.0) < 0.01 * 100.0
    assert abs(np.mean(arlo[mask]) - 100.0) < abs(np.mean(loglinear[mask]) - 100.0)
    assert np.std(arlo[mask]) < 1.2 * np.std(loglinear[mask])
    assert np.all(arlo[~mask] == 0)


def test_arlo_clips_to_the_range():
    magnitude = _decay(np.array([-5.0, 800.0]).reshape(2, 1, 1), EQUAL_SPACING)
    r2star, t2star = r2star_arlo(magnitude, EQUAL_SPACING, np.ones((2, 1, 1), bool))
    assert r2star.ravel() == pytest.approx([0.0, 500.0])
    assert t2star.ravel() == pytest.approx([0.0, 1 / 500.0])


@pytest.mark.parametrize("echo_times, message", [
    ([0.004, 0.008], "at least three"),
    ([0.004, 0.008, 0.014], "equally spaced"),
])
def test_arlo_requirements(echo_times, message):
    magnitude = np.ones((3, 3, 3, len(echo_times)), np.float32)
    with pytest.raises(ValueError, match=message):
        r2star_arlo(magnitude, echo_times, np.ones((3, 3, 3), bool))
