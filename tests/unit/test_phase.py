"""Phase units: inference from values, conversion to radians, complex pairs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmprep.bids.phase import (
    complex_to_magnitude_phase,
    infer_phase_units,
    phase_to_radians,
    wrap_to_pi,
)

ROMEO_PHASE = Path(__file__).resolve().parents[3] / "shared" / "data" / "romeo-small" / "Phase.nii"
PI32 = np.float32(np.pi)
BELOW_PI32 = np.nextafter(PI32, np.float32(0))


def random_values(low, high, *, shape=(10, 10, 10), seed=0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def in_half_open_pi_interval(radians) -> bool:
    finite = radians[np.isfinite(radians)]
    return bool(finite.min() >= -PI32 and finite.max() < PI32)


# --------------------------------------------------------------------------- inference


def test_wrapped_radians_are_recognised():
    assert infer_phase_units(random_values(-np.pi, np.pi)) == "rad"


def test_radians_from_zero_to_two_pi_are_recognised():
    assert infer_phase_units(random_values(0, 2 * np.pi)) == "rad"


def test_scanner_integers_are_arbitrary():
    phase = np.random.default_rng(0).integers(-4096, 4096, (10, 10, 10)).astype(np.int16)
    assert infer_phase_units(phase) == "arbitrary"


def test_tiny_scaled_values_are_arbitrary():
    assert infer_phase_units(random_values(-0.00367, 0.00367)) == "arbitrary"


def test_narrow_radian_range_is_taken_as_arbitrary():
    # Documented limit: phase spanning less than pi cannot be told apart from a rescaled range.
    assert infer_phase_units(random_values(-1.0, 1.0)) == "arbitrary"


def test_inference_ignores_nan_and_inf():
    phase = random_values(-np.pi, np.pi)
    phase[0, 0, :3] = [np.nan, np.inf, -np.inf]
    assert infer_phase_units(phase) == "rad"


def test_no_finite_value_is_arbitrary():
    assert infer_phase_units(np.full((2, 2), np.nan)) == "arbitrary"


# --------------------------------------------------------------------------- conversion


def test_radians_are_wrapped_into_half_open_interval():
    phase = np.array([0.0, np.pi, -np.pi, 1.5 * np.pi, 2 * np.pi + 0.5, np.pi - 1e-8])
    radians = phase_to_radians(phase, "rad")
    assert radians.dtype == np.float32
    np.testing.assert_allclose(
        radians, [0.0, -np.pi, -np.pi, -0.5 * np.pi, 0.5, BELOW_PI32], atol=1e-6
    )
    assert in_half_open_pi_interval(radians)


def test_wrap_matches_complex_angle_away_from_the_boundary():
    phase = random_values(-20, 20)
    np.testing.assert_allclose(wrap_to_pi(phase), np.angle(np.exp(1j * phase)), atol=1e-5)


def test_arbitrary_units_map_min_to_minus_pi_and_max_just_below_pi():
    phase = np.array([-4096, 0, 4095, -2048], dtype=np.int16)
    radians = phase_to_radians(phase, "arbitrary")
    assert radians.dtype == np.float32
    assert radians[0] == -PI32
    assert radians[2] == BELOW_PI32
    expected_middle = -np.pi + 4096 * 2 * np.pi / 8191
    np.testing.assert_allclose(radians[1], expected_middle, rtol=1e-6)
    assert in_half_open_pi_interval(radians)


def test_arbitrary_units_share_a_given_value_range():
    second_echo = np.array([-2048.0, 2047.0])
    radians = phase_to_radians(second_echo, "arbitrary", value_range=(-4096, 4095))
    np.testing.assert_allclose(radians, [-np.pi / 2, np.pi / 2], atol=2e-3)


def test_arbitrary_units_keep_nan_and_exclude_it_from_the_range():
    phase = np.array([np.nan, -1.0, 1.0])
    radians = phase_to_radians(phase, "ARBITRARY")
    assert np.isnan(radians[0])
    assert radians[1] == -PI32 and radians[2] == BELOW_PI32


def test_values_outside_the_given_range_are_refused():
    with pytest.raises(ValueError, match="outside the value range"):
        phase_to_radians(np.array([0.0, 5.0]), "arbitrary", value_range=(0.0, 4.0))


def test_constant_arbitrary_phase_cannot_be_rescaled():
    with pytest.raises(ValueError, match="constant"):
        phase_to_radians(np.zeros(5), "arbitrary")


def test_unknown_units_are_refused():
    with pytest.raises(ValueError, match="degrees"):
        phase_to_radians(np.zeros(5), "degrees")


# ------------------------------------------------------------------------------ complex


def test_complex_pairs_give_magnitude_and_half_open_phase():
    real = np.array([1.0, 0.0, -1.0, -1.0, 3.0])
    imaginary = np.array([0.0, 2.0, 0.0, -0.0, 4.0])
    magnitude, phase = complex_to_magnitude_phase(real, imaginary)
    assert magnitude.dtype == np.float32 and phase.dtype == np.float32
    np.testing.assert_allclose(magnitude, [1, 2, 1, 1, 5])
    np.testing.assert_allclose(phase, [0, np.pi / 2, -np.pi, -np.pi, np.arctan2(4, 3)], atol=1e-6)
    assert in_half_open_pi_interval(phase)


# ---------------------------------------------------------------------------- real data


@pytest.mark.skipif(not ROMEO_PHASE.exists(), reason="ROMEO test data not available")
def test_romeo_phase_is_arbitrary_and_rescales_onto_one_cycle():
    phase = nib.load(ROMEO_PHASE).get_fdata(dtype=np.float32)  # 4-D: 3 echoes
    assert phase.ndim == 4 and phase.shape[3] == 3
    assert infer_phase_units(phase) == "arbitrary"

    value_range = (float(np.nanmin(phase)), float(np.nanmax(phase)))
    radians = np.stack(
        [phase_to_radians(phase[..., e], "arbitrary", value_range=value_range) for e in range(3)],
        axis=-1,
    )
    assert in_half_open_pi_interval(radians)
    assert radians.min() == pytest.approx(-np.pi, abs=1e-3)
    assert radians.max() == pytest.approx(np.pi, abs=1e-3)
    assert infer_phase_units(radians) == "rad"
