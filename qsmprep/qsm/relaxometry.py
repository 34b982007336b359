"""R2* and T2* maps from the multi-echo magnitude.

Mono-exponential decay S(TE) = S0 exp(-R2* TE) becomes a straight line in log(S). The noise of
log(S) has a variance of about sigma**2 / S**2, so each echo is weighted by S**2 (weighted
log-linear least squares; Bevington & Robinson, Data Reduction and Error Analysis, 2003;
Veraart et al., NeuroImage 2013;81:335-346). When the signal decays fast, so that the late
echoes sit on the Rician noise floor, the weights keep the early echoes in charge and reduce
the underestimation of R2* compared with an unweighted log fit (on our test, T2* = 4 ms at
SNR 50: 19 % low instead of 37 %); a nonlinear fit with a noise-floor model would be needed
to remove it.
"""

from __future__ import annotations

import numpy as np

from .echo_fit import fit_weighted_line


def r2star_loglinear(magnitude_4d, echo_times_s, mask, *, max_r2star_hz: float = 500.0):
    """Weighted log-linear fit of R2* (1/s) and T2* (s) per voxel.

    Fits ``log(S) = log(S0) - R2* TE`` with weights ``S**2`` (see the module notes). Echoes
    with S <= 0 get weight 0. R2* is clipped to ``[0, max_r2star_hz]``; T2* = 1/R2* where
    R2* > 0, else 0.

    Parameters
    ----------
    magnitude_4d : array_like, 4-D (x, y, z, echo)
    echo_times_s : sequence of float
        Echo times in seconds, one per echo (at least two).
    mask : array_like of bool, 3-D
        Voxels to fit; the outputs are 0 elsewhere.
    max_r2star_hz : float
        Upper bound of R2* (1/s); 500 1/s is a T2* of 2 ms, shorter than any brain tissue.

    Returns
    -------
    r2star_hz, t2star_s : float32 3-D arrays

    Raises
    ------
    ValueError
        With fewer than two echoes (R2* is then undefined; the workflow skips it).
    """
    magnitude = np.asarray(magnitude_4d, dtype=np.float32)
    echo_times_s = np.asarray(echo_times_s, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool)
    if magnitude.ndim != 4 or echo_times_s.size < 2:
        raise ValueError("R2* needs a 4-D magnitude with at least two echoes; got shape "
                         f"{magnitude.shape} and {echo_times_s.size} echo time(s)")
    if echo_times_s.size != magnitude.shape[-1] or mask.shape != magnitude.shape[:3]:
        raise ValueError(f"{echo_times_s.size} echo times and a mask of shape {mask.shape} "
                         f"do not match a magnitude of shape {magnitude.shape}")

    signal = magnitude[mask].astype(np.float64)
    positive = signal > 0
    log_signal = np.log(np.where(positive, signal, 1.0))
    slope, _, _ = fit_weighted_line(echo_times_s, log_signal, np.where(positive, signal, 0.0) ** 2)

    r2star = np.clip(-slope, 0.0, max_r2star_hz)
    r2star_hz = np.zeros(mask.shape, dtype=np.float32)
    t2star_s = np.zeros(mask.shape, dtype=np.float32)
    r2star_hz[mask] = r2star
    t2star_s[mask] = np.divide(1.0, r2star, out=np.zeros_like(r2star), where=r2star > 0)
    return r2star_hz, t2star_s
