"""Phase units: recognising them and bringing every phase image to radians in [-pi, pi).

Scanners store phase either in radians or as integers in "arbitrary units" (Siemens:
-4096..4095; Philips and GE use other ranges, and a NIfTI scaling may shrink them to tiny
floats such as +-0.00367). BIDS asks phase sidecars to say ``"Units": "rad"`` or
``"arbitrary"``, but real datasets often omit it, so :func:`infer_phase_units` guesses from
the values and :func:`phase_to_radians` converts either kind. Real/imaginary pairs go through
:func:`complex_to_magnitude_phase`.

All functions are plain numpy and return float32.
"""

from __future__ import annotations

import numpy as np

#: Tolerance (radians) on the bounds of a phase image that is already in radians.
RADIAN_RANGE_TOLERANCE = 1e-2

#: Largest float32 strictly below pi: the upper end of the [-pi, pi) interval in float32.
_BELOW_PI = np.nextafter(np.float32(np.pi), np.float32(0.0))
_MINUS_PI = np.float32(-np.pi)


def finite_value_range(values) -> tuple[float, float] | None:
    """Minimum and maximum of the finite entries of ``values``; None when there are none."""
    values = np.asarray(values)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def infer_phase_units(phase) -> str:
    """Guess whether a phase image is stored in radians or in arbitrary units.

    Wrapped phase in radians fills (nearly) a whole cycle: its finite values lie within
    [-pi, pi] or [0, 2 pi] (give or take :data:`RADIAN_RANGE_TOLERANCE`) and span more than
    pi. Anything else -- scanner integers such as -4096..4095, or values shrunk by a NIfTI
    scaling to about +-0.00367 -- is taken as arbitrary units.

    Parameters
    ----------
    phase : array_like
        Phase values of one or more echoes; NaN and infinite values are ignored.

    Returns
    -------
    str
        ``'rad'`` or ``'arbitrary'`` (also for an image without any finite value).
    """
    value_range = finite_value_range(phase)
    if value_range is None:
        return "arbitrary"
    low, high = value_range
    tol = RADIAN_RANGE_TOLERANCE
    within_symmetric = low >= -np.pi - tol and high <= np.pi + tol
    within_positive = low >= -tol and high <= 2 * np.pi + tol
    spans_a_wrapped_cycle = (high - low) > np.pi
    if (within_symmetric or within_positive) and spans_a_wrapped_cycle:
        return "rad"
    return "arbitrary"


def wrap_to_pi(phase) -> np.ndarray:
    """Wrap angles (radians) into [-pi, pi), vectorised; NaN stays NaN (float32 output).

    Equivalent to ``angle(exp(1j * phase))`` except that +pi maps to -pi, so the interval is
    half-open as BIDS and most unwrappers expect. Computed in float64, then cast; values that
    round up to float32 pi are moved to the largest float32 below pi.
    """
    wrapped = np.mod(np.asarray(phase, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi
    wrapped = wrapped.astype(np.float32)
    return _clamp_below_pi(wrapped)


def phase_to_radians(phase, units: str, *, value_range=None) -> np.ndarray:
    """Convert a phase image to float32 radians in [-pi, pi).

    Parameters
    ----------
    phase : array_like
        Phase values (any shape). NaN stays NaN and is excluded from the range.
    units : {'rad', 'arbitrary'}
        ``'rad'``: values are angles; they are wrapped into [-pi, pi) (:func:`wrap_to_pi`).
        ``'arbitrary'``: values map linearly onto one cycle,

        .. math:: \\varphi = -\\pi + 2\\pi \\, (x - x_{min}) / (x_{max} - x_{min}),

        so that ``x_min`` maps to -pi and ``x_max`` to the largest float32 below pi (the two
        ends of the stored range are one wrap apart; for scanner integers the error of this
        assumption is one quantisation step, e.g. 2 pi / 8192 for -4096..4095).
    value_range : tuple of float, optional
        ``(x_min, x_max)`` to use instead of the finite minimum and maximum of ``phase``,
        so that all echoes of a run share one scale. Only used for ``'arbitrary'``.

    Returns
    -------
    numpy.ndarray
        float32 radians in [-pi, pi), the shape of ``phase``.

    Raises
    ------
    ValueError
        Unknown ``units``; an ``'arbitrary'`` image whose range is empty or constant; values
        outside the given ``value_range``.
    """
    units = str(units).lower()
    if units == "rad":
        return wrap_to_pi(phase)
    if units != "arbitrary":
        raise ValueError(f"Unknown phase units {units!r}: expected 'rad' or 'arbitrary'.")

    phase = np.asarray(phase)
    own_range = finite_value_range(phase)
    if value_range is None:
        if own_range is None:
            raise ValueError("The phase image has no finite value to rescale.")
        value_range = own_range
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(
            f"Cannot rescale phase in arbitrary units: its value range [{low:g}, {high:g}] "
            "is empty or constant."
        )
    if own_range is not None and (own_range[0] < low or own_range[1] > high):
        raise ValueError(
            f"Phase values [{own_range[0]:g}, {own_range[1]:g}] fall outside the value range "
            f"[{low:g}, {high:g}] given for rescaling."
        )
    scale = 2 * np.pi / (high - low)
    radians = (-np.pi + (phase.astype(np.float64) - low) * scale).astype(np.float32)
    return _clamp_below_pi(radians)


def complex_to_magnitude_phase(real, imaginary) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (radians in [-pi, pi)) of ``real + 1j * imaginary``, as float32."""
    real = np.asarray(real, dtype=np.float32)
    imaginary = np.asarray(imaginary, dtype=np.float32)
    magnitude = np.hypot(real, imaginary)
    phase = np.arctan2(imaginary, real)  # in [-pi, pi]
    phase[phase >= np.float32(np.pi)] = _MINUS_PI
    return magnitude.astype(np.float32, copy=False), phase.astype(np.float32, copy=False)


def _clamp_below_pi(radians: np.ndarray) -> np.ndarray:
    """Move float32 values at or above pi (rounding artefacts) just below pi, in place."""
    radians[radians >= np.float32(np.pi)] = _BELOW_PI
    radians[radians < _MINUS_PI] = _MINUS_PI
    return radians
