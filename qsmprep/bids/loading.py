"""Loading a multi-echo GRE run into magnitude and phase arrays (radians) ready for QSM.

:func:`load_multiecho` reads the files that :func:`qsmprep.bids.discovery.discover_runs`
found for a run -- magnitude/phase pairs or real/imaginary pairs, one 3-D file per echo --
checks that they share one voxel grid, converts the phase to radians in [-pi, pi) with one
scale for all echoes, and replaces non-finite voxels by zeros, recording them. Everything it
had to assume or repair is returned in :attr:`MultiEchoData.messages` (and logged), so that
reports can state it.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from ..errors import BadDataError
from .phase import (
    complex_to_magnitude_phase,
    finite_value_range,
    infer_phase_units,
    phase_to_radians,
)

LOGGER = logging.getLogger("qsmprep")

#: Largest difference (mm, or unitless for the rotation part) tolerated between the affines
#: of files that must share one voxel grid.
AFFINE_TOLERANCE = 1e-3

#: A phase image said to be in radians whose values span more than this is not in radians.
MAX_RADIAN_SPAN = 2 * np.pi + 0.1

#: Largest tolerated fraction of invalid (NaN/inf) voxels among those with signal.
MAX_INVALID_FRACTION = 0.5

#: Fewest voxels with finite signal in every echo and part that a run needs.
MIN_FINITE_VOXELS = 1000

#: A magnitude with more negative values than this fraction of its non-zero voxels is not a
#: magnitude image (a phase image is about half negative).
MAX_NEGATIVE_MAGNITUDE_FRACTION = 0.05

#: A phase image in radians spanning less than this (rad) over the voxels with signal is
#: constant: no field information.
MIN_PHASE_SPAN_RAD = 0.01

#: A 'rad' phase spanning this much (one turn in degrees, within +-360) is in degrees.
DEGREE_SPAN = (300.0, 361.0)

#: A 'rad' phase beyond 2 pi whose values are all whole numbers spanning at least this much is
#: taken for scanner integers mislabelled as radians (rescaled as arbitrary units); any other
#: 'rad' phase beyond 2 pi is unwrapped phase, and is wrapped.
MIN_INTEGER_SPAN = 256


@dataclass
class MultiEchoData:
    """The echoes of one run, in memory.

    Attributes
    ----------
    magnitude : numpy.ndarray
        float32 (x, y, z, echo), non-negative.
    phase : numpy.ndarray
        float32 (x, y, z, echo), radians in [-pi, pi).
    affine : numpy.ndarray
        4x4 voxel-to-world affine shared by all files.
    header : nibabel.Nifti1Header
        Header of the first magnitude (or real) file.
    invalid_voxels : numpy.ndarray
        bool (x, y, z): NaN or inf in any echo of any part; magnitude and phase are 0 there.
    phase_units : str
        Units the phase was converted from (``'rad'`` or ``'arbitrary'``).
    messages : list of str
        Warnings about assumptions and repairs, for the report.
    nan_fraction : float
        Fraction of the voxels with non-zero magnitude that were invalid.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    invalid_voxels: np.ndarray
    phase_units: str
    messages: list = field(default_factory=list)
    nan_fraction: float = 0.0
    input_checks: dict = field(default_factory=dict)
    """What the plausibility checks found and how the input was taken (sidecar
    ``InputChecks``): ``MaskedExportVoxels``, ``NegativeMagnitudeValues``,
    ``PhaseUnitsInferred``, ``RadianPhaseWrappedFromRange``, ``RadianPhaseTakenAsIntegers``,
    ``RadianPhaseTakenAsDegrees``."""

    @property
    def echo_count(self) -> int:
        """Number of echoes."""
        return self.magnitude.shape[-1]


def load_multiecho(
    *,
    magnitude_files=None,
    phase_files=None,
    real_files=None,
    imaginary_files=None,
    phase_units: str | None = None,
) -> MultiEchoData:
    """Load the echoes of a run as float32 magnitude and phase (radians in [-pi, pi)).

    Give either ``magnitude_files`` and ``phase_files`` or ``real_files`` and
    ``imaginary_files``, ordered by echo time. Each file holds one echo (3-D); a 4-D file
    contributes one echo per volume (for non-BIDS inputs such as scanner exports).

    Parameters
    ----------
    magnitude_files, phase_files, real_files, imaginary_files : list of path-like
        The images, one list per part, in echo order.
    phase_units : {None, 'rad', 'arbitrary'}
        Units of the phase images (sidecar ``Units``). None: inferred from the values
        (:func:`qsmprep.bids.phase.infer_phase_units`), with a message. ``'rad'`` whose values
        span more than 2 pi is unwrapped phase and is wrapped, with a message (whole numbers
        spanning :data:`MIN_INTEGER_SPAN` or more are scanner integers mislabelled as radians
        and are rescaled as ``'arbitrary'``). All echoes share
        one arbitrary-units scale: the minimum and maximum over every phase image. Ignored for
        real/imaginary inputs, whose phase is computed in radians.

    Returns
    -------
    MultiEchoData

    Raises
    ------
    BadDataError
        Files on different grids, different echo counts per part, magnitude zero everywhere
        or in one echo, a magnitude with many negative values (a phase image: the parts are
        swapped), more than half of the voxels with signal not finite (voxels that are not
        finite in every echo and part, as in a masked export, are outside the head instead),
        or a constant phase image.
    ValueError
        Inconsistent arguments (no pair of parts, both pairs, unknown ``phase_units``).
    """
    polar = bool(magnitude_files) or bool(phase_files)
    cartesian = bool(real_files) or bool(imaginary_files)
    if polar == cartesian:
        raise ValueError(
            "Give either magnitude_files and phase_files, or real_files and imaginary_files."
        )
    if phase_units is not None and phase_units.lower() not in ("rad", "arbitrary"):
        raise ValueError(f"Unknown phase units {phase_units!r}: expected 'rad' or 'arbitrary'.")

    if polar:
        first_role, first_files, second_role, second_files = (
            "magnitude", magnitude_files, "phase", phase_files,
        )
    else:
        first_role, first_files, second_role, second_files = (
            "real", real_files, "imaginary", imaginary_files,
        )
    for role, files in ((first_role, first_files), (second_role, second_files)):
        if not files:
            raise ValueError(f"No {role} files given.")

    reference_path = os.fspath(first_files[0])
    try:
        reference_image = nib.load(reference_path)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise BadDataError(f"{reference_path} cannot be read as a NIfTI image: {error}") from None
    first, first_sources = _read_echo_stack(first_files, reference_image, reference_path)
    second, second_sources = _read_echo_stack(second_files, reference_image, reference_path)
    if first.shape[-1] != second.shape[-1]:
        raise BadDataError(
            f"{first.shape[-1]} {first_role} echoes ({', '.join(map(str, first_files))}) but "
            f"{second.shape[-1]} {second_role} echoes ({', '.join(map(str, second_files))}): "
            f"every echo needs both parts."
        )

    messages: list[str] = []
    checks: dict = {}
    outside_voxels = _masked_export_voxels((first, second))
    if outside_voxels.any():
        messages.append(
            f"{int(outside_voxels.sum())} voxels ({100 * outside_voxels.mean():.0f} % of the "
            "field of view) are NaN or infinite in every echo, as in a masked export: they are "
            "taken as outside the head, and the brain mask stays within the finite voxels.")
        first[outside_voxels] = 0
        second[outside_voxels] = 0
        checks["MaskedExportVoxels"] = int(outside_voxels.sum())
    signal = first if polar else np.abs(first) + np.abs(second)
    invalid_voxels, nan_fraction = _find_invalid_voxels(
        {first_role: (first, first_sources), second_role: (second, second_sources)},
        magnitude=signal, magnitude_source=reference_path,
    )
    _check_every_echo_has_signal(signal, first_sources)
    del signal
    if invalid_voxels.any():
        messages.append(
            f"{int(invalid_voxels.sum())} voxels hold NaN or infinite values in some echo "
            f"({100 * nan_fraction:.2f} % of the voxels with signal); they were set to 0."
        )
    invalid_voxels |= outside_voxels

    if polar:
        magnitude = first
        negative = np.count_nonzero(magnitude < 0)
        nonzero = max(1, np.count_nonzero(magnitude))
        if negative > MAX_NEGATIVE_MAGNITUDE_FRACTION * nonzero:
            raise BadDataError(
                f"{100 * negative / nonzero:.0f} % of the magnitude values in "
                f"{', '.join(sorted(set(first_sources)))} are negative: that is a phase image, "
                "not a magnitude. Check that the part-mag and part-phase files are not swapped.")
        if negative:
            checks["NegativeMagnitudeValues"] = int(negative)
            np.abs(magnitude, out=magnitude)
            messages.append(
                f"{negative} negative magnitude values in {', '.join(map(str, first_files))}; "
                "their absolute value was used."
            )
        phase, used_units = _phase_in_radians(
            second, invalid_voxels, phase_units=phase_units, phase_sources=second_sources,
            messages=messages, checks=checks,
        )
    else:
        magnitude, phase = np.empty_like(first), np.empty_like(first)
        for echo in range(first.shape[-1]):
            magnitude[..., echo], phase[..., echo] = complex_to_magnitude_phase(
                first[..., echo], second[..., echo]
            )
        used_units = "rad"

    magnitude[invalid_voxels] = 0
    phase[invalid_voxels] = 0
    for message in messages:
        LOGGER.warning(message)
    return MultiEchoData(
        magnitude=magnitude,
        phase=phase,
        affine=reference_image.affine.copy(),
        header=reference_image.header.copy(),
        invalid_voxels=invalid_voxels,
        phase_units=used_units,
        messages=messages,
        nan_fraction=nan_fraction,
        input_checks=checks,
    )


def same_grid_problem(image, path, reference_image, reference_path) -> str | None:
    """Why ``image`` is not on the voxel grid of ``reference_image``, or None if it is.

    Compares the 3-D shapes and the affines (within :data:`AFFINE_TOLERANCE`); the message
    names both files. Used by discovery (headers only) and by :func:`load_multiecho`.
    """
    shape, reference_shape = image.shape[:3], reference_image.shape[:3]
    if shape != reference_shape:
        return (
            f"{path} has shape {_format_shape(shape)} but {reference_path} has "
            f"{_format_shape(reference_shape)}: all echoes and parts of a run must share one "
            "voxel grid."
        )
    if not np.allclose(image.affine, reference_image.affine, rtol=0, atol=AFFINE_TOLERANCE):
        return (
            f"{path} and {reference_path} have the same shape but different affines "
            f"(voxel-to-world transforms), largest difference "
            f"{np.abs(image.affine - reference_image.affine).max():.3g}: all echoes and parts "
            "of a run must share one voxel grid."
        )
    return None


def _read_echo_stack(paths, reference_image, reference_path):
    """Read files into one float32 (x, y, z, echo) array; also return each echo's file."""
    images = []
    for path in paths:
        path = os.fspath(path)
        try:
            image = reference_image if path == reference_path else nib.load(path)
        except Exception as error:  # nibabel raises several types for unreadable files
            raise BadDataError(f"{path} cannot be read as a NIfTI image: {error}") from None
        if image.ndim not in (3, 4):
            raise BadDataError(
                f"{path} has {image.ndim} dimensions {_format_shape(image.shape)}: expected a "
                "3-D volume per echo."
            )
        problem = same_grid_problem(image, path, reference_image, reference_path)
        if problem:
            raise BadDataError(problem)
        images.append((path, image))

    volume_counts = [1 if image.ndim == 3 else image.shape[3] for _, image in images]
    stack = np.empty(reference_image.shape[:3] + (sum(volume_counts),), dtype=np.float32)
    sources = []
    echo = 0
    for (path, image), count in zip(images, volume_counts):
        try:
            data = image.get_fdata(dtype=np.float32)
        except (EOFError, OSError, ValueError, zlib.error) as error:  # truncated or damaged
            raise BadDataError(f"{path} cannot be read: {error}. Copy or convert the file "
                               "again.") from None
        stack[..., echo : echo + count] = data.reshape(data.shape[:3] + (count,))
        sources.extend([path] * count)
        echo += count
    return stack, sources


def _masked_export_voxels(stacks) -> np.ndarray:
    """Voxels that are NaN or infinite in every echo of every part: the outside of a masked
    export. Empty when fewer than :data:`MIN_FINITE_VOXELS` voxels would be left (then the
    data are not a masked export but broken, which :func:`_find_invalid_voxels` reports)."""
    outside = np.ones(stacks[0].shape[:3], dtype=bool)
    for stack in stacks:
        for echo in range(stack.shape[-1]):
            outside &= ~np.isfinite(stack[..., echo])
    if outside.size - np.count_nonzero(outside) < MIN_FINITE_VOXELS:
        return np.zeros_like(outside)
    return outside


def _check_every_echo_has_signal(magnitude, sources) -> None:
    """Refuse an echo whose magnitude is zero (or not finite) everywhere, naming its file."""
    for echo in range(magnitude.shape[-1]):
        values = magnitude[..., echo]
        if not np.any(np.isfinite(values) & (values != 0)):
            raise BadDataError(
                f"Echo {echo + 1} ({sources[echo]}) has no signal: its magnitude is zero or "
                "not finite in every voxel. Check the export of that echo.")


def _find_invalid_voxels(stacks, *, magnitude, magnitude_source):
    """Voxels with NaN/inf in any echo of any part, and their fraction among voxels with signal.

    Raises BadDataError when no voxel has signal, or when more than
    :data:`MAX_INVALID_FRACTION` of the voxels with signal are invalid (naming the file that
    holds most of them).
    """
    invalid_voxels = np.zeros(magnitude.shape[:3], dtype=bool)
    invalid_by_file: dict[str, np.ndarray] = {}
    for stack, sources in stacks.values():
        for echo, source in enumerate(sources):
            not_finite = ~np.isfinite(stack[..., echo])
            invalid_voxels |= not_finite
            if source in invalid_by_file:
                invalid_by_file[source] |= not_finite
            else:
                invalid_by_file[source] = not_finite

    with np.errstate(invalid="ignore"):
        has_signal = np.any(magnitude != 0, axis=-1)  # NaN != 0: invalid voxels count
    signal_count = int(has_signal.sum())
    if signal_count == 0:
        raise BadDataError(
            f"The magnitude in {magnitude_source} is zero in every voxel of every echo: check "
            "that the file holds the magnitude image and not an empty export."
        )
    nan_fraction = float(np.count_nonzero(invalid_voxels & has_signal)) / signal_count
    if nan_fraction > MAX_INVALID_FRACTION:
        worst_file = max(
            invalid_by_file, key=lambda name: np.count_nonzero(invalid_by_file[name] & has_signal)
        )
        raise BadDataError(
            f"{100 * nan_fraction:.0f} % of the voxels with signal hold NaN or infinite values "
            f"(most of them in {worst_file}): the data cannot be processed. Re-export the "
            "images from the scanner data without masking or failed reconstruction."
        )
    return invalid_voxels, nan_fraction


def _phase_in_radians(phase, invalid_voxels, *, phase_units, phase_sources, messages, checks):
    """Convert a raw phase stack (in place where possible) to radians; return it and its units."""
    phase[invalid_voxels] = np.nan  # excluded from the value range
    value_range = finite_value_range(phase)
    if value_range is None:
        raise BadDataError(f"{phase_sources[0]} holds no finite phase value.")
    low, high = value_range
    range_text = f"[{low:.4g}, {high:.4g}]"

    if phase_units is None:
        units = infer_phase_units(phase)
        checks["PhaseUnitsInferred"] = units
        messages.append(
            f"Phase Units missing in sidecars; inferred {units} from values range {range_text}."
        )
    else:
        units = phase_units.lower()
        if units == "rad" and high - low > MAX_RADIAN_SPAN:
            finite = phase[np.isfinite(phase)]
            if high - low >= MIN_INTEGER_SPAN and np.all(finite == np.round(finite)):
                messages.append(
                    f"Phase Units say 'rad' but the values range {range_text} holds whole "
                    "numbers only, as scanner integers do; treated as arbitrary units.")
                checks["RadianPhaseTakenAsIntegers"] = True
                units = "arbitrary"
            elif DEGREE_SPAN[0] <= high - low <= DEGREE_SPAN[1] and -361 <= low and high <= 361:
                messages.append(
                    f"Phase Units say 'rad' but the values range {range_text} is one turn in "
                    "degrees; treated as arbitrary units (one cycle over the range).")
                checks["RadianPhaseTakenAsDegrees"] = True
                units = "arbitrary"
            else:
                messages.append(
                    f"Phase Units say 'rad' and the values range {range_text} spans more than "
                    "2 pi: taken as unwrapped phase in radians and wrapped into [-pi, pi).")
                checks["RadianPhaseWrappedFromRange"] = [round(low, 4), round(high, 4)]

    constant = (not high > low) if units == "arbitrary" else (high - low < MIN_PHASE_SPAN_RAD)
    if constant:
        raise BadDataError(
            f"The phase in {', '.join(sorted(set(phase_sources)))} is constant ({low:.4g}) in "
            "every voxel: it cannot be a phase image. Check which file holds the phase."
        )
    for echo in range(phase.shape[-1]):
        phase[..., echo] = phase_to_radians(phase[..., echo], units, value_range=(low, high))
    return phase, units


def _format_shape(shape) -> str:
    return "x".join(str(int(n)) for n in shape)
