"""R2* and T2* maps from the multi-echo magnitude.

Mono-exponential decay S(TE) = S0 exp(-R2* TE) becomes a straight line in log(S). The noise of
log(S) has a variance of about sigma**2 / S**2, so each echo is weighted by S**2 (weighted
log-linear least squares; Bevington & Robinson, Data Reduction and Error Analysis, 2003;
Veraart et al., NeuroImage 2013;81:335-346). When the signal decays fast, so that the late
echoes sit on the Rician noise floor, the weights keep the early echoes in charge and reduce
the underestimation of R2* compared with an unweighted log fit (on our test, T2* = 4 ms at
SNR 50: 19 % low instead of 37 %). Given the noise SD, :func:`r2star_loglinear` also drops
the echoes that have reached the noise floor (same test: 5 % low); a nonlinear fit with a
noise-floor model would be needed to remove the rest.

ARLO (Auto-Regression on Linear Operations; Pei M et al., MRM 2015;73:843-850) is the
closed-form alternative for equally spaced echoes, with no logarithm (see :func:`r2star_arlo`).
On simulated decays (6 echoes 3-23 ms, Rician noise, T2* 5-50 ms) it is less biased than the
log-linear fit (|bias| <= 0.3 % vs <= 1.4 % for T2* >= 10 ms at SNR 50; 2.3 % vs 8.8 % low at
T2* = 5 ms) with a 5-10 % larger SD, and about 4 times faster.
"""

from __future__ import annotations

import numpy as np

from .echo_fit import equally_spaced, fit_weighted_line

#: Echoes whose magnitude is below this many noise SDs are on the noise floor (the mean
#: magnitude of pure Rician noise is 1.25 SD, and it is below 3 SD in 99 % of voxels).
NOISE_FLOOR_SDS = 3.0


def _checked_magnitude(magnitude_4d, echo_times_s, mask):
    """Magnitude as float32 4-D, echo times as float64, mask as bool; ValueError on mismatch
    or with fewer than two echoes."""
    magnitude = np.asarray(magnitude_4d, dtype=np.float32)
    echo_times_s = np.asarray(echo_times_s, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool)
    if magnitude.ndim != 4 or echo_times_s.size < 2:
        raise ValueError("R2* needs a 4-D magnitude with at least two echoes; got shape "
                         f"{magnitude.shape} and {echo_times_s.size} echo time(s)")
    if echo_times_s.size != magnitude.shape[-1] or mask.shape != magnitude.shape[:3]:
        raise ValueError(f"{echo_times_s.size} echo times and a mask of shape {mask.shape} "
                         f"do not match a magnitude of shape {magnitude.shape}")
    return magnitude, echo_times_s, mask


def _relaxation_maps(r2star, mask, max_r2star_hz):
    """R2* clipped to [0, max_r2star_hz] and T2* = 1/R2* (0 where R2* is 0), as float32
    3-D maps that are 0 outside the mask."""
    r2star = np.clip(np.nan_to_num(r2star, nan=0.0), 0.0, max_r2star_hz)
    r2star_hz = np.zeros(mask.shape, dtype=np.float32)
    t2star_s = np.zeros(mask.shape, dtype=np.float32)
    r2star_hz[mask] = r2star
    t2star_s[mask] = np.divide(1.0, r2star, out=np.zeros_like(r2star), where=r2star > 0)
    return r2star_hz, t2star_s


def r2star_loglinear(magnitude_4d, echo_times_s, mask, *, max_r2star_hz: float = 500.0,
                     noise_sigma: float | None = None):
    """Weighted log-linear fit of R2* (1/s) and T2* (s) per voxel.

    Fits ``log(S) = log(S0) - R2* TE`` with weights ``S**2`` (see the module notes). Echoes
    with S <= 0 get weight 0. R2* is clipped to ``[0, max_r2star_hz]``; T2* = 1/R2* where
    R2* > 0, else 0.

    Noise floor: with ``noise_sigma``, an echo whose magnitude is below
    :data:`NOISE_FLOOR_SDS` (3) noise SDs, and every later echo of that voxel (the signal only
    decays, so a later echo above the floor is noise), gets weight 0: the Rician floor would
    otherwise flatten the decay and pull R2* down. The first two echoes always count, so every
    voxel gets an estimate; where the second echo is already on the floor, it is a lower bound.

    Parameters
    ----------
    magnitude_4d : array_like, 4-D (x, y, z, echo)
    echo_times_s : sequence of float
        Echo times in seconds, one per echo (at least two).
    mask : array_like of bool, 3-D
        Voxels to fit; the outputs are 0 elsewhere.
    max_r2star_hz : float
        Upper bound of R2* (1/s); 500 1/s is a T2* of 2 ms, shorter than any brain tissue.
    noise_sigma : float, optional
        Noise standard deviation of each of the real and imaginary channels (the Rician
        sigma), in magnitude units; ``None`` (default) keeps every echo.

    Returns
    -------
    r2star_hz, t2star_s : float32 3-D arrays

    Raises
    ------
    ValueError
        With fewer than two echoes (R2* is then undefined; the workflow skips it).
    """
    magnitude, echo_times_s, mask = _checked_magnitude(magnitude_4d, echo_times_s, mask)
    signal = magnitude[mask].astype(np.float64)
    weights = np.where(signal > 0, signal, 0.0) ** 2
    if noise_sigma is not None:
        on_floor = np.logical_or.accumulate(signal < NOISE_FLOOR_SDS * noise_sigma, axis=1)
        on_floor[:, :2] = False
        weights[on_floor] = 0.0
    log_signal = np.log(np.where(signal > 0, signal, 1.0))
    slope, _, _ = fit_weighted_line(echo_times_s, log_signal, weights)
    return _relaxation_maps(-slope, mask, max_r2star_hz)


def r2star_arlo(magnitude_4d, echo_times_s, mask, *, max_r2star_hz: float = 500.0):
    """R2* (1/s) and T2* (s) by ARLO (Pei M et al., MRM 2015;73:843-850), in closed form.

    For equally spaced echoes (spacing dTE), the integral of ``S0 exp(-R2* t)`` over two
    spacings is ``(S_i - S_(i+2)) / R2*``; Simpson's rule approximates the same integral by
    ``s_i = dTE/3 (S_i + 4 S_(i+1) + S_(i+2))``. So ``d_i = S_i - S_(i+2) ~ R2* s_i``: an
    auto-regression that predicts each echo from the two before it. Minimising the squared
    prediction error of ``S_(i+2)``, ``sum_i (d_i - R2* s_i)**2 / (1 + R2* dTE/3)**2``, gives

        R2* = (sum s_i d_i + dTE/3 sum d_i**2) / (sum s_i**2 + dTE/3 sum s_i d_i)

    with no logarithm and no iteration: unbiased by the log of noisy data, a few times faster
    than the log-linear fit, and exact for noiseless data up to Simpson's error (R2* low by
    about ``(R2* dTE)**4 / 180``: 0.03 % at R2* dTE = 0.5, 0.5 % at 1). The magnitude is
    used as it is (Rician floor included). R2* is clipped to ``[0, max_r2star_hz]``; T2* =
    1/R2* where R2* > 0.

    Parameters
    ----------
    magnitude_4d : array_like, 4-D (x, y, z, echo)
    echo_times_s : sequence of float
        Echo times in seconds: at least three, equally spaced (1 % tolerance).
    mask : array_like of bool, 3-D
        Voxels to fit; the outputs are 0 elsewhere.
    max_r2star_hz : float
        Upper bound of R2* (1/s).

    Returns
    -------
    r2star_hz, t2star_s : float32 3-D arrays

    Raises
    ------
    ValueError
        With fewer than three echoes or unequally spaced echo times (use
        :func:`r2star_loglinear` then).
    """
    magnitude, echo_times_s, mask = _checked_magnitude(magnitude_4d, echo_times_s, mask)
    if echo_times_s.size < 3:
        raise ValueError("ARLO needs at least three equally spaced echoes (Simpson's rule "
                         f"spans three); got {echo_times_s.size}: use the log-linear fit")
    if not equally_spaced(echo_times_s):
        raise ValueError("ARLO needs equally spaced echo times (Simpson's rule over equal "
                         f"steps); got {echo_times_s} s: use the log-linear fit instead")
    third_spacing = float(np.mean(np.diff(echo_times_s))) / 3.0
    signal = magnitude[mask].astype(np.float64)
    simpson = third_spacing * (signal[:, :-2] + 4.0 * signal[:, 1:-1] + signal[:, 2:])
    difference = signal[:, :-2] - signal[:, 2:]
    cross = (simpson * difference).sum(axis=1)
    numerator = cross + third_spacing * (difference**2).sum(axis=1)
    denominator = (simpson**2).sum(axis=1) + third_spacing * cross
    r2star = np.divide(numerator, denominator, out=np.zeros_like(numerator),
                       where=denominator > 0)
    return _relaxation_maps(r2star, mask, max_r2star_hz)
