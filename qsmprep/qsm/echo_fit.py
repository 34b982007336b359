"""Echo combination: the total field (Hz) from the unwrapped phase of every echo.

The 2024 QSM consensus (QSM Consensus Organization Committee, MRM 2024, doi:10.1002/mrm.30006)
recommends combining the echoes before background removal with an SNR-weighted fit of phase
over echo time. Phase noise scales as 1/magnitude, so magnitude**2 weights give the
minimum-variance (SNR-optimal) estimate of the frequency (Robinson et al., NMR Biomed
2017;30:e3601; Wu et al., NeuroImage 2012;59:297-305).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class EchoFit(NamedTuple):
    """Result of :func:`weighted_linear_fit`; float32 3-D arrays, zero outside the mask."""

    total_field_hz: np.ndarray
    """Frequency offset (Hz): the slope of phase over time divided by 2 pi."""
    phase_offset_rad: np.ndarray
    """Phase at TE = 0 (rad), from the transmit/receive chain."""
    residual: np.ndarray
    """Weighted RMS misfit of the fit (rad); high where the phase is unreliable."""


def fit_weighted_line(x, values, weights):
    """Weighted least-squares straight line ``values ~ intercept + slope * x`` per row.

    Closed form with weighted centring (numerically stable), vectorised over rows.

    Parameters
    ----------
    x : array_like, shape (n_points,)
    values, weights : array_like, shape (n_rows, n_points)
        Weights >= 0 (inverse noise variances up to a factor).

    Returns
    -------
    slope, intercept, rms_residual : float64 arrays of shape (n_rows,)
        ``rms_residual = sqrt(sum(w * misfit**2) / sum(w))``. Rows whose weights cannot
        determine a line (fewer than two weighted points) get 0 everywhere.
    """
    x = np.asarray(x, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    weight_sum = weights.sum(axis=-1)
    valid = weight_sum > 0
    safe_sum = np.where(valid, weight_sum, 1.0)
    x_mean = (weights * x).sum(axis=-1) / safe_sum
    values_mean = (weights * values).sum(axis=-1) / safe_sum
    x_centred = x - x_mean[:, None]
    spread = (weights * x_centred**2).sum(axis=-1)
    valid &= spread > 1e-9 * weight_sum * np.ptp(x) ** 2  # at least two weighted points
    slope = np.where(valid, (weights * x_centred * values).sum(axis=-1)
                     / np.where(valid, spread, 1.0), 0.0)
    intercept = np.where(valid, values_mean - slope * x_mean, 0.0)
    misfit = values - intercept[:, None] - slope[:, None] * x
    rms_residual = np.where(valid, np.sqrt((weights * misfit**2).sum(axis=-1) / safe_sum), 0.0)
    return slope, intercept, rms_residual


def weighted_linear_fit(unwrapped_phase, magnitude, echo_times_s, mask) -> EchoFit:
    """Magnitude**2-weighted linear fit of unwrapped phase over echo time, per voxel.

    Model: ``phase(TE) = phase_offset + 2 pi f TE``, fitted by weighted least squares with
    weights ``magnitude**2`` (SNR-optimal; QSM consensus, MRM 2024, doi:10.1002/mrm.30006;
    Robinson et al., NMR Biomed 2017;30:e3601).

    - One echo: ``f = phase / (2 pi TE)``; the phase offset is assumed to be 0 (true for
      data whose offset was removed by the scanner or by coil combination), residual 0.
    - Two echoes: the line passes through both points; residual 0.

    Parameters
    ----------
    unwrapped_phase, magnitude : array_like, 4-D (x, y, z, echo)
        Unwrapped phase (rad) and magnitude of each echo.
    echo_times_s : sequence of float
        Echo times in seconds, one per echo, distinct and positive.
    mask : array_like of bool, 3-D
        Voxels to fit; the outputs are 0 elsewhere.

    Returns
    -------
    EchoFit
        ``total_field_hz``, ``phase_offset_rad`` and ``residual`` (weighted RMS misfit, rad).
    """
    phase = np.asarray(unwrapped_phase, dtype=np.float32)
    magnitude = np.asarray(magnitude, dtype=np.float32)
    echo_times_s = np.asarray(echo_times_s, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool)
    if phase.ndim == 3:
        phase, magnitude = phase[..., None], magnitude[..., None]
    if phase.shape != magnitude.shape or phase.ndim != 4:
        raise ValueError(f"phase {phase.shape} and magnitude {magnitude.shape} must be 4-D "
                         "arrays of the same shape")
    if echo_times_s.size != phase.shape[-1] or mask.shape != phase.shape[:3]:
        raise ValueError(f"{echo_times_s.size} echo times and a mask of shape {mask.shape} "
                         f"do not match data of shape {phase.shape}")
    if np.any(echo_times_s <= 0) or np.unique(echo_times_s).size != echo_times_s.size:
        raise ValueError(f"echo times must be positive and distinct, got {echo_times_s}")

    outputs = [np.zeros(mask.shape, dtype=np.float32) for _ in range(3)]
    total_field_hz, phase_offset_rad, residual = outputs
    phase_in_mask = phase[mask]
    if echo_times_s.size == 1:
        total_field_hz[mask] = phase_in_mask[:, 0] / (2 * np.pi * echo_times_s[0])
        return EchoFit(*outputs)

    slope, intercept, rms = fit_weighted_line(echo_times_s, phase_in_mask,
                                              magnitude[mask].astype(np.float64) ** 2)
    total_field_hz[mask] = slope / (2 * np.pi)
    phase_offset_rad[mask] = intercept
    if echo_times_s.size > 2:  # two points fit exactly: keep 0, not rounding noise
        residual[mask] = rms
    return EchoFit(*outputs)
