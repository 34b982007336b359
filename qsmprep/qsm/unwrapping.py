"""Spatial phase unwrapping of each echo.

Laplacian unwrapping (Schofield & Zhu, Opt Lett 2003;28:1194-1196) is the fast option: it
never follows paths, so it cannot leave 2-pi jumps, but it is not exact. It sees the phase only
through sin and cos, so the discrete identity it uses returns sum(sin(neighbour differences))
where the true Laplacian has the differences themselves: steep phase (large gradients per
voxel) and noise are damped, and the result differs from the true phase by a smooth
(low-frequency) error. A refinement pass on the wrapped residual (default: one) removes most
of that damping on smooth phase, yet the method stays a least-squares estimate. The 2024 QSM
consensus (MRM 2024, doi:10.1002/mrm.30006) prefers exact path-based unwrapping (e.g. ROMEO,
Dymerska et al., MRM 2021;85:2294-2308); add it to :data:`METHODS` when available.
"""

from __future__ import annotations

import numpy as np

from .dipole import irfftn, laplacian_kernel, rfftn
from .echo_fit import fit_weighted_line


def _poisson_unwrap(wrapped_phase, voxel_size, workers):
    """One Schofield & Zhu pass: Laplacian of the phase from sin/cos, then its FFT inverse."""
    shape = wrapped_phase.shape
    mirrored = np.pad(wrapped_phase, [(0, n) for n in shape], mode="symmetric")
    grid = mirrored.shape
    kernel = laplacian_kernel(grid, voxel_size)

    sin_phase, cos_phase = np.sin(mirrored), np.cos(mirrored)
    del mirrored
    laplacian_sin = irfftn(rfftn(sin_phase, workers=workers) * kernel, grid, workers=workers)
    laplacian_cos = irfftn(rfftn(cos_phase, workers=workers) * kernel, grid, workers=workers)
    laplacian_phase = cos_phase * laplacian_sin - sin_phase * laplacian_cos
    del sin_phase, cos_phase, laplacian_sin, laplacian_cos

    kernel[0, 0, 0] = 1.0  # avoid 0/0; the zero-frequency term is set to 0 below
    spectrum = rfftn(laplacian_phase, workers=workers) / kernel
    spectrum[0, 0, 0] = 0.0
    return irfftn(spectrum, grid, workers=workers)[: shape[0], : shape[1], : shape[2]]


def _wrap(phase):
    return np.angle(np.exp(1j * phase)).astype(np.float32)


def snap_to_wrapped(estimate, wrapped_phase) -> np.ndarray:
    """The phase congruent with ``wrapped_phase`` (whole turns added) closest to ``estimate``.

    The congruence operation of Ghiglia & Pritt (Two-Dimensional Phase Unwrapping, Wiley 1998).
    """
    wrapped_phase = np.asarray(wrapped_phase, dtype=np.float32)
    turns = np.round((np.asarray(estimate, dtype=np.float32) - wrapped_phase)
                     / np.float32(2 * np.pi))
    return wrapped_phase + np.float32(2 * np.pi) * turns


def laplacian_unwrap(wrapped_phase, voxel_size, *, refinements: int = 1,
                     congruent: bool = True, workers: int = 1) -> np.ndarray:
    """Unwrap a 3-D phase image with the Laplacian method (Schofield & Zhu, Opt Lett 2003).

    The Laplacian of the unwrapped phase follows from the wrapped phase alone,
    ``lap(phi) = cos(phi) lap(sin(phi)) - sin(phi) lap(cos(phi))``, and the phase is recovered
    by inverting the Laplacian with the FFT (:func:`qsmprep.qsm.dipole.laplacian_kernel`,
    zero-frequency term set to 0). The image is mirrored along every axis before the FFT
    (a grid twice as large), so the periodic extension has no jump at the edges: this is the
    Neumann-boundary, least-squares solution (Ghiglia & Romero, JOSA A 1994;11:107-117)
    without wrap-around.

    One pass is not exact: neighbour differences d enter as sin(d), so steep phase is damped
    and the low spatial frequencies change (on a phase with 1.3 rad/voxel gradients the error
    reaches ~0.8 rad). Each refinement unwraps the wrapped residual
    ``angle(exp(i (wrapped - estimate)))``, whose gradients are small, and adds it: one
    refinement brings smooth noise-free phase to within 1e-3 rad, at twice the cost. With
    noise or phase singularities the result stays a smooth least-squares estimate, never a
    guaranteed 2-pi-congruent unwrapping.

    The result is defined up to a constant; the constant is chosen so that the circular mean
    of (wrapped - unwrapped) is 0, i.e. the result agrees with the input on average.

    With ``congruent`` (default) the smooth estimate only chooses the number of turns: the
    output is ``wrapped + 2 pi round((estimate - wrapped) / 2 pi)``, the congruence operation
    of Ghiglia & Pritt (Two-Dimensional Phase Unwrapping, Wiley 1998, section 5.5). The result
    then differs from the input by exact multiples of 2 pi and keeps the measured phase detail,
    which the least-squares estimate smooths away; it is correct wherever the estimate is within
    pi of the true phase.

    Parameters
    ----------
    wrapped_phase : array_like, 3-D
        Phase in radians (any range).
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    refinements : int
        Extra passes on the wrapped residual (0 is the classic single-pass method).
    congruent : bool
        Snap the estimate to the nearest 2-pi-congruent phase (see above).
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray of float32, same shape as the input.
    """
    wrapped_phase = np.asarray(wrapped_phase, dtype=np.float32)
    if wrapped_phase.ndim != 3:
        raise ValueError(f"wrapped_phase must be 3-D, got shape {wrapped_phase.shape}")
    unwrapped = _poisson_unwrap(wrapped_phase, voxel_size, workers)
    for _ in range(int(refinements)):
        residual = _wrap(wrapped_phase - unwrapped)
        unwrapped += _poisson_unwrap(residual, voxel_size, workers)

    offset = np.angle(np.mean(np.exp(1j * (wrapped_phase - unwrapped))))
    unwrapped += np.float32(offset)
    if congruent:
        unwrapped = snap_to_wrapped(unwrapped, wrapped_phase)
    return unwrapped.astype(np.float32, copy=False)


#: Unwrapping methods by name; each takes (3-D wrapped phase, voxel_size, workers=...).
METHODS = {"laplacian": laplacian_unwrap}


def unwrap_echoes(wrapped_phase_4d, voxel_size, *, echo_times_s=None, method: str = "laplacian",
                  workers: int = 1) -> np.ndarray:
    """Unwrap a multi-echo phase series (echoes on the last axis).

    Without ``echo_times_s`` (or with one echo) every echo is unwrapped spatially on its own.
    With echo times and two echoes or more, only what needs spatial unwrapping is unwrapped
    spatially, and the rest temporally, which keeps the echoes consistent with each other
    (the multi-echo strategy of ROMEO, Dymerska et al., MRM 2021;85:2294-2308):

    1. the first echo is unwrapped spatially;
    2. the phase difference of the first two echoes, ``angle(S_2 conj(S_1))``, is unwrapped
       spatially and added to it: the phase offset cancels in that difference and its range is
       set by the echo spacing alone, so it has few wraps;
    3. every later echo gets the whole number of turns that brings it closest to the straight
       line fitted over time through the echoes already unwrapped (:func:`snap_to_wrapped`).

    Every output echo differs from its input by exact multiples of 2 pi.

    Parameters
    ----------
    wrapped_phase_4d : array_like, 4-D (x, y, z, echo); a 3-D array counts as one echo.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    echo_times_s : sequence of float, optional
        Ascending echo times, one per echo.
    method : str
        Spatial unwrapper, a key of :data:`METHODS`: ``"laplacian"`` (:func:`laplacian_unwrap`,
        Schofield & Zhu, Opt Lett 2003;28:1194).
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray of float32, shape of the input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown unwrapping method {method!r}; choose one of "
                         f"{', '.join(sorted(METHODS))}")
    phase = np.asarray(wrapped_phase_4d, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    if phase.ndim != 4:
        raise ValueError(f"wrapped phase must be 4-D (x, y, z, echo), got shape {phase.shape}")
    echo_count = phase.shape[-1]
    if echo_times_s is not None and len(echo_times_s) != echo_count:
        raise ValueError(f"{len(echo_times_s)} echo times for {echo_count} echoes")

    def unwrap_spatially(volume):
        return METHODS[method](volume, voxel_size, workers=workers)

    unwrapped = np.empty_like(phase)
    if echo_times_s is None or echo_count == 1:
        for echo in range(echo_count):
            unwrapped[..., echo] = unwrap_spatially(phase[..., echo])
        return unwrapped.reshape(np.shape(wrapped_phase_4d))

    echo_times = np.asarray(echo_times_s, dtype=np.float64)
    unwrapped[..., 0] = unwrap_spatially(phase[..., 0])
    first_difference = _wrap(phase[..., 1] - phase[..., 0])
    unwrapped[..., 1] = unwrapped[..., 0] + unwrap_spatially(first_difference)
    for echo in range(2, echo_count):
        earlier = unwrapped[..., :echo].reshape(-1, echo)
        slope, intercept, _ = fit_weighted_line(echo_times[:echo], earlier,
                                                np.ones_like(earlier))
        predicted = (intercept + slope * echo_times[echo]).reshape(phase.shape[:3])
        unwrapped[..., echo] = snap_to_wrapped(predicted, phase[..., echo])
    return unwrapped
