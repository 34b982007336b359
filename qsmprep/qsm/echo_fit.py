"""Echo combination: the total field (Hz) from the unwrapped phase of every echo.

The 2024 QSM consensus (QSM Consensus Organization Committee, MRM 2024, doi:10.1002/mrm.30006)
recommends combining the echoes before background removal with an SNR-weighted fit of phase
over echo time. Phase noise scales as 1/magnitude, so magnitude**2 weights give the
minimum-variance (SNR-optimal) estimate of the frequency (Robinson et al., NMR Biomed
2017;30:e3601; Wu et al., NeuroImage 2012;59:297-305).

The consensus' other option, a nonlinear fit of the complex signal (MEDI's ``Fit_ppm_complex``;
Liu T et al., MRM 2013;69:467-476), is :func:`nonlinear_complex_fit`. It works on the wrapped
complex data, so a wrong whole turn in one echo of the unwrapped phase (which moves the linear
fit) does not move it, and its misfit, in complex signal, stays bounded where the phase is
random (a good phase-quality measure).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class EchoFit(NamedTuple):
    """Result of :func:`weighted_linear_fit` or :func:`nonlinear_complex_fit`; float32 3-D
    arrays, zero outside the mask."""

    total_field_hz: np.ndarray
    """Frequency offset (Hz): the slope of phase over time divided by 2 pi."""
    phase_offset_rad: np.ndarray
    """Phase at TE = 0 (rad), from the transmit/receive chain."""
    residual: np.ndarray
    """Weighted RMS misfit of the fit, high where the phase is unreliable: in rad for the
    linear fit; relative RMS complex misfit for the complex fit (about the same number in rad
    while the misfit is small)."""


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


def equally_spaced(echo_times_s, *, tolerance: float = 0.01) -> bool:
    """Whether successive echo times differ by the same step, within ``tolerance`` of it.

    The 1 % default lets through echo times rounded to 10 us in BIDS sidecars.
    """
    spacing = np.diff(np.asarray(echo_times_s, dtype=np.float64).ravel())
    return spacing.size > 0 and bool(np.ptp(spacing) <= tolerance * abs(spacing.mean()))


def _checked_echo_data(phase, magnitude, echo_times_s, mask):
    """Phase and magnitude as float32 4-D arrays (a 3-D array is one echo), echo times as
    float64, mask as bool; ValueError when they do not match or the echo times are not
    positive and distinct."""
    phase = np.asarray(phase, dtype=np.float32)
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
    return phase, magnitude, echo_times_s, mask


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
    phase, magnitude, echo_times_s, mask = _checked_echo_data(unwrapped_phase, magnitude,
                                                              echo_times_s, mask)
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


#: Gauss-Newton stops once no voxel's frequency moves by more than this (Hz).
CONVERGED_FIELD_STEP_HZ = 1e-4


def nonlinear_complex_fit(magnitude_4d, phase_4d, echo_times_s, mask, *,
                          initial_field_hz=None, max_iter: int = 10) -> EchoFit:
    """Fit ``S_n = |S_n| exp(i (phi0 + 2 pi f TE_n))`` to the complex multi-echo signal.

    The idea of MEDI's ``Fit_ppm_complex`` (Liu T et al., MRM 2013;69:467-476): least squares
    on the complex signal rather than on the phase, solved for (f, phi0) by Gauss-Newton,
    vectorised over voxels. With the measured magnitudes as model amplitudes, the cost is
    ``sum_n |S_n|**2 * 2 (1 - cos(psi_n - theta_n))`` (psi: measured, theta: model phase): the
    magnitude**2 (SNR-optimal) weights come out of the complex noise model by themselves, and
    each Gauss-Newton step is the weighted straight-line fit of ``sin(psi_n - theta_n)`` over
    ``2 pi TE_n``, with a Hessian that does not change between steps.

    Wrapped data and the start. The fit reads the phase only through ``exp(i phase)``, so it
    needs no unwrapped phase, and a wrong whole turn in one echo cannot move it. But the cost
    is periodic in f: for equally spaced echoes ``f + k / dTE`` gives the same signal with
    another phi0, so the fit finds the minimum nearest to its start, and the start chooses the
    branch. The start is the mean phase step between successive echoes,
    ``angle(sum_n S_(n+1) conj(S_n)) / (2 pi mean(dTE))`` (MEDI starts from the first two
    echoes), a complex average that does not break where the step nears +-pi, and so lies on
    the branch with ``|f| < 1 / (2 dTE)`` (100 Hz for dTE = 5 ms). With ``initial_field_hz``
    (e.g. the field of :func:`weighted_linear_fit` on spatially unwrapped phase) and equally
    spaced echoes (1 % tolerance), the start moves by the whole number of ``1 / dTE`` that
    brings it nearest to ``initial_field_hz``: the absolute field is then found wherever the
    initial field is within ``1 / (2 dTE)`` of the truth, so a wrong turn in one unwrapped echo,
    which shifts the linear fit by less than that, is corrected. Unequally spaced echoes start
    from ``initial_field_hz`` itself, which must then lie close to the truth. Without
    ``initial_field_hz`` the field above ``1 / (2 dTE)`` comes out off by multiples of
    ``1 / dTE`` and needs spatial unwrapping, while the residual is still right. The start
    phase offset is the best one for the start frequency,
    ``angle(sum_n |S_n| S_n exp(-2 pi i f TE_n))``.

    Parameters
    ----------
    magnitude_4d, phase_4d : array_like, 4-D (x, y, z, echo)
        Magnitude and wrapped (or unwrapped: only ``exp(i phase)`` is used) phase (rad).
    echo_times_s : sequence of float
        Echo times in seconds, at least two, distinct and positive.
    mask : array_like of bool, 3-D
        Voxels to fit; the outputs are 0 elsewhere.
    initial_field_hz : array_like, 3-D, optional
        Starting frequency (Hz), e.g. ``weighted_linear_fit(...).total_field_hz``.
    max_iter : int
        Most Gauss-Newton steps; it stops earlier once no frequency moves by more than
        :data:`CONVERGED_FIELD_STEP_HZ` (about 3 steps from a start on the right branch).

    Returns
    -------
    EchoFit
        ``total_field_hz``, ``phase_offset_rad`` (wrapped to [-pi, pi]) and ``residual``, the
        relative RMS complex misfit ``sqrt(sum_n |S_n - model_n|**2 / sum_n |S_n|**2)``:
        about the weighted RMS phase misfit (rad) where it is small, 0.5 or more where the
        phase is random (four echoes), 0 for two echoes (they are fitted exactly).

    Raises
    ------
    ValueError
        For mismatched shapes, fewer than two echoes or non-positive/repeated echo times.
    """
    phase, magnitude, echo_times_s, mask = _checked_echo_data(phase_4d, magnitude_4d,
                                                              echo_times_s, mask)
    if echo_times_s.size < 2:
        raise ValueError("the complex fit needs at least two echoes (frequency and phase "
                         f"offset are two unknowns); got {echo_times_s.size}")
    signal = magnitude[mask].astype(np.float64) * np.exp(1j * phase[mask].astype(np.float64))
    del phase, magnitude
    weights = np.abs(signal) ** 2
    angular_times = 2 * np.pi * echo_times_s

    echo_spacing_s = float(np.mean(np.diff(echo_times_s)))
    steps = (signal[:, 1:] * np.conj(signal[:, :-1])).sum(axis=1)
    field_hz = np.angle(steps) / (2 * np.pi * echo_spacing_s)  # mean step between echoes
    if initial_field_hz is not None:
        initial_field_hz = np.asarray(initial_field_hz, dtype=np.float64)
        if initial_field_hz.shape != mask.shape:
            raise ValueError(f"initial field {initial_field_hz.shape} does not match the mask "
                             f"{mask.shape}")
        if equally_spaced(echo_times_s):  # the branch of the mean step nearest the start
            field_hz += np.round((initial_field_hz[mask] - field_hz) * echo_spacing_s) \
                / echo_spacing_s
        else:
            field_hz = initial_field_hz[mask]
    demodulated = signal * np.exp(-1j * np.outer(field_hz, angular_times))
    offset_rad = np.angle((np.abs(signal) * demodulated).sum(axis=1))

    active = np.arange(field_hz.size)
    for _ in range(max_iter):
        if active.size == 0:
            break
        model_phase = offset_rad[active, None] + np.outer(field_hz[active], angular_times)
        misfit_sine = np.sin(np.angle(signal[active]) - model_phase)
        field_step, offset_step, _ = fit_weighted_line(angular_times, misfit_sine,
                                                       weights[active])
        field_hz[active] += field_step
        offset_rad[active] += offset_step
        active = active[np.abs(field_step) > CONVERGED_FIELD_STEP_HZ]

    model = np.abs(signal) * np.exp(1j * (offset_rad[:, None]
                                          + np.outer(field_hz, angular_times)))
    energy = weights.sum(axis=1)
    outputs = [np.zeros(mask.shape, dtype=np.float32) for _ in range(3)]
    total_field_hz, phase_offset_rad, residual = outputs
    total_field_hz[mask] = field_hz
    phase_offset_rad[mask] = np.angle(np.exp(1j * offset_rad))
    residual[mask] = np.sqrt(np.divide((np.abs(signal - model) ** 2).sum(axis=1), energy,
                                       out=np.zeros_like(energy), where=energy > 0))
    if echo_times_s.size == 2:  # two points fit exactly: keep 0, not rounding noise
        residual[mask] = 0.0
    return EchoFit(*outputs)
