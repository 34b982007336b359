"""Laplacian phase unwrapping against known smooth phase."""

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
