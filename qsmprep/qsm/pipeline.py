"""The reconstruction chain on arrays: one function per stage, and :func:`reconstruct`.

This is the one description of the chain and of how a configuration becomes stage
parameters. The nipype graph (``qsmprep.workflows.qsm``) runs one node per stage, and each
node's interface calls the stage function of this module with the keyword arguments that
:func:`stage_arguments` gives for the run; :func:`reconstruct` calls the same functions in the
same order on arrays, which is what the benchmarks and the accuracy tests run.

Stages (2024 QSM consensus, MRM 2024, doi:10.1002/mrm.30006): brain mask from the first-echo
magnitude -> multi-echo phase unwrapping -> echo fit (total field) -> phase-quality mask ->
background removal (local field) -> dipole inversion -> referencing, with R2*/T2* from the
magnitudes (which also finds the ventricles for the CSF reference).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import tracemalloc

import numpy as np

from .. import stages
from ..config import WorkflowConfig
from ..errors import BadDataError
from . import background, echo_fit, inversion, masking, referencing, relaxometry, unwrapping
from .dipole import GYROMAGNETIC_RATIO_MHZ_PER_T, hz_to_ppm

#: Stage names, in the order :func:`reconstruct` runs them (keys of :func:`stage_arguments`).
STAGES = tuple(declared.name for declared in stages.STAGES)


def vsharp_radii_for(voxel_size, *, largest_mm: float = 0.0, smallest_mm: float = 0.0) -> list:
    """V-SHARP sphere radii (mm) for ``voxel_size``, largest first; 0 picks the default of
    :func:`qsmprep.qsm.background.default_radii_mm`."""
    return [float(radius) for radius in background.default_radii_mm(
        voxel_size, largest_mm=largest_mm or None, smallest_mm=smallest_mm or None)]


def resharp_radius_for(voxel_size, radius_mm: float = 0.0) -> float:
    """RESHARP sphere radius (mm) for ``voxel_size``; 0 picks two voxel edges."""
    return float(radius_mm or 2.0 * max(voxel_size))


def stage_arguments(settings: WorkflowConfig) -> dict:
    """Keyword arguments of each stage function, from the configuration.

    For each stage of :data:`qsmprep.stages.STAGES`: ``method`` (the chosen algorithm, for
    stages with a choice) and one keyword per parameter, named after its configuration field.
    They are also the input names of the stage's nipype interface
    (:mod:`qsmprep.interfaces.qsm`), so the workflow and :func:`reconstruct` run the stages
    with the same arguments.
    """
    arguments = {}
    for declared in stages.STAGES:
        stage_keywords = {"method": getattr(settings, declared.name)} if declared.choice_key else {}
        for parameter in declared.parameters:
            stage_keywords[parameter.field] = parameter.type(getattr(settings, parameter.field))
        arguments[declared.name] = stage_keywords
    return arguments


def _derived_entries(stage_name: str, algorithm: str, settings, voxel_size) -> dict:
    """Sidecar entries that the stage works out for ``voxel_size`` (radii, peeled layers) or
    that state a constant of its algorithm."""
    if stage_name != "background_removal":
        return {}
    if algorithm == "pdf":
        return {"PeeledVoxels": background.PDF_PEEL_VOXELS,
                "RimOutlierLimitSD": background.RIM_OUTLIER_LIMIT}
    if algorithm == "lbv":
        return {"PeeledVoxels": background.default_peel_voxels(voxel_size)}
    if algorithm == "resharp":
        return {"RadiusMM": resharp_radius_for(voxel_size, settings.resharp_radius_mm)}
    return {"RadiiMM": vsharp_radii_for(voxel_size, largest_mm=settings.vsharp_max_radius_mm,
                                       smallest_mm=settings.vsharp_min_radius_mm)}


def stage_parameters(settings: WorkflowConfig, voxel_size) -> dict:
    """The algorithm and parameters of each stage for a run with ``voxel_size``, as written
    into every sidecar (``QSMProcessing``), keyed by :attr:`qsmprep.stages.Stage.sidecar`.

    A block holds the chosen algorithm, the values of the parameters that algorithm uses
    (the text of :attr:`~qsmprep.stages.Parameter.automatic` for an automatic one), and the
    values the stage works out from them for ``voxel_size``.
    """
    blocks = {}
    for declared in stages.STAGES:
        algorithm = (getattr(settings, declared.name) if declared.choice_key
                     else declared.default)
        block = {declared.choice_key: algorithm} if declared.choice_key else {}
        block.update(declared.sidecar_notes)
        block.update(declared.algorithm(algorithm).sidecar_notes)
        for parameter in declared.parameters_of(algorithm):
            if parameter.sidecar:
                value = getattr(settings, parameter.field)
                block[parameter.sidecar] = (parameter.automatic
                                            if parameter.is_automatic(value) else value)
        block.update(_derived_entries(declared.name, algorithm, settings, voxel_size))
        blocks[declared.sidecar] = block
    return blocks


# --- one function per stage ----------------------------------------------------------------
def compute_brain_mask(first_echo_magnitude, voxel_size, *, method: str,
                       mask_threshold: float):
    """Brain mask from the first-echo magnitude
    (:func:`qsmprep.qsm.masking.magnitude_brain_mask`); ``mask_threshold`` 0 is Otsu's."""
    stages.stage("masking").algorithm(method)
    return masking.magnitude_brain_mask(first_echo_magnitude, voxel_size,
                                        threshold=mask_threshold or None)


def unwrap_phase(phase_4d, voxel_size, echo_times_s, *, magnitude_4d, mask, method: str,
                 workers: int = 1):
    """Multi-echo unwrapping (:func:`qsmprep.qsm.unwrapping.unwrap_echoes`)."""
    return unwrapping.unwrap_echoes(phase_4d, voxel_size, echo_times_s=list(echo_times_s),
                                    method=method, magnitude_4d=magnitude_4d, mask=mask,
                                    workers=workers)


def fit_echoes(unwrapped_phase_4d, magnitude_4d, echo_times_s, mask, *, method: str,
               phase_4d=None) -> echo_fit.EchoFit:
    """Total field from the echoes: the magnitude-weighted linear fit
    (:func:`qsmprep.qsm.echo_fit.weighted_linear_fit`), refined by the nonlinear complex fit
    started from it (:func:`~qsmprep.qsm.echo_fit.nonlinear_complex_fit`, which needs the
    wrapped ``phase_4d``) when ``method`` is ``"nonlinear"`` and there are two echoes or more.
    """
    echo_times_s = np.asarray(echo_times_s, dtype=np.float64)
    fit = echo_fit.weighted_linear_fit(unwrapped_phase_4d, magnitude_4d, echo_times_s, mask)
    if method == "nonlinear" and echo_times_s.size >= 2:
        if phase_4d is None:
            raise ValueError("the nonlinear echo fit needs the wrapped phase")
        fit = echo_fit.nonlinear_complex_fit(magnitude_4d, phase_4d, echo_times_s, mask,
                                             initial_field_hz=fit.total_field_hz)
    elif method not in ("weighted-linear", "nonlinear"):
        raise ValueError(f"unknown echo fit {method!r}")
    return fit


def refine_mask(brain_mask, fit_residual, voxel_size, *, quality_threshold: float,
                quality_tolerance: float):
    """Phase-quality mask (:func:`qsmprep.qsm.masking.quality_mask` of
    :func:`~qsmprep.qsm.masking.residual_quality` with ``quality_tolerance``);
    ``quality_threshold`` 0 keeps the brain mask."""
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if quality_threshold <= 0:
        return brain_mask.copy()
    quality = masking.residual_quality(fit_residual, brain_mask, tolerance=quality_tolerance)
    return masking.quality_mask(brain_mask, quality, threshold=quality_threshold,
                                voxel_size=voxel_size)


def remove_background(total_field_hz, mask, voxel_size, b0_direction, *, method: str,
                      vsharp_max_radius_mm: float, vsharp_min_radius_mm: float,
                      vsharp_threshold: float, resharp_radius_mm: float,
                      resharp_regularization: float,
                      workers: int = 1) -> background.BackgroundRemoval:
    """Local field by PDF, LBV, RESHARP or V-SHARP (see :mod:`qsmprep.qsm.background`);
    radii of 0 take their defaults for ``voxel_size`` (:func:`vsharp_radii_for`,
    :func:`resharp_radius_for`)."""
    if method == "pdf":
        return background.pdf(total_field_hz, mask, voxel_size, b0_direction, workers=workers)
    if method == "lbv":
        return background.lbv(total_field_hz, mask, voxel_size, workers=workers)
    if method == "resharp":
        return background.resharp(total_field_hz, mask, voxel_size,
                                  radius_mm=resharp_radius_for(voxel_size, resharp_radius_mm),
                                  regularization=resharp_regularization, workers=workers)
    if method == "vsharp":
        radii_mm = vsharp_radii_for(voxel_size, largest_mm=vsharp_max_radius_mm,
                                   smallest_mm=vsharp_min_radius_mm)
        return background.vsharp(total_field_hz, mask, voxel_size, radii_mm=tuple(radii_mm),
                                 threshold=vsharp_threshold, workers=workers)
    raise ValueError(f"unknown background removal {method!r}")


@dataclasses.dataclass(frozen=True)
class DipoleInversion:
    """The result of :func:`invert_dipole`."""

    susceptibility_ppm: np.ndarray
    """Not referenced, 0 outside the mask."""
    sidecar: dict
    """Entries of the sidecars' ``DipoleInversion`` block found while running (the automatic
    TV weight and its L-curve); empty when every value was given."""


def chooses_tv_weight(settings: WorkflowConfig) -> bool:
    """Whether the inversion of ``settings`` chooses its TV weight from the data."""
    return settings.inversion == "tv-admm" and not settings.tv_regularization


def _lcurve_record(weight: float, curve) -> dict:
    """The sidecar entries of an automatic TV weight (4 significant digits)."""

    def rounded(values):
        return [float(f"{value:.4g}") for value in values]

    selection = {
        "Method": "corner (largest curvature) of the L-curve of the closed-form "
                  "gradient-regularised solution; TV weight = sqrt(1e-3 x corner)",
        "TikhonovWeights": rounded(curve.weights),
        "FieldMisfitRMSppm": rounded(curve.residual_norms),
        "GradientNormRMSppmPerMM": rounded(curve.solution_norms),
        "TikhonovCorner": float(f"{curve.corner:.4g}") if curve.corner is not None else None,
    }
    if curve.corner is None:
        selection["Note"] = ("the L-curve had no corner in the scanned range: the reference "
                             f"weight {inversion.TV_REFERENCE_WEIGHT:g} was used")
    return {"Regularization": float(f"{weight:.4g}"), "RegularizationSelection": selection}


def invert_dipole(local_field_hz, mask, voxel_size, b0_direction, field_strength_t, *,
                  method: str, magnitude=None, echo_times_s=None, tkd_threshold: float,
                  tv_regularization: float, tv_outside_weight: float, rts_delta: float,
                  medi_regularization: float, tikhonov_regularization: float,
                  inversion_max_iter: int, inversion_tolerance: float,
                  workers: int = 1) -> DipoleInversion:
    """Susceptibility (ppm, not referenced) from the local field (Hz).

    TV-ADMM (``tv_regularization``, ``tv_outside_weight``) and MEDI (``medi_regularization``)
    take their gradient weights from the edges of ``magnitude`` (the echoes, 4-D, or one 3-D
    image); a ``tv_regularization`` of 0 is chosen from the field
    (:func:`qsmprep.qsm.inversion.automatic_tv_regularization`) and recorded in
    :attr:`DipoleInversion.sidecar`. Iterative Tikhonov uses ``tikhonov_regularization``,
    ``inversion_max_iter`` and ``inversion_tolerance``; TKD ``tkd_threshold``; RTS
    ``rts_delta``. MEDI's phase scale comes from the mean echo spacing (or the one echo time).
    See :mod:`qsmprep.qsm.inversion`.
    """
    arguments = (hz_to_ppm(local_field_hz, field_strength_t), mask, voxel_size, b0_direction)
    sidecar = {}
    if method == "tv-admm":
        if not tv_regularization:
            tv_regularization, curve = inversion.automatic_tv_regularization(
                *arguments, workers=workers)
            sidecar = _lcurve_record(tv_regularization, curve)
        chi = inversion.tv_admm(*arguments, magnitude=magnitude,
                                regularization=tv_regularization,
                                outside_weight=tv_outside_weight, workers=workers)
    elif method == "tkd":
        chi = inversion.tkd(*arguments, threshold=tkd_threshold, workers=workers)
    elif method == "tikhonov":
        chi = inversion.tikhonov_cg(*arguments, regularization=tikhonov_regularization,
                                    max_iter=inversion_max_iter,
                                    tolerance=inversion_tolerance, workers=workers)
    elif method == "rts":
        chi = inversion.rts(*arguments, delta=rts_delta, workers=workers)
    elif method == "medi-l1":
        echo_times_s = np.asarray(echo_times_s, dtype=np.float64)
        spacing_s = np.diff(echo_times_s).mean() if echo_times_s.size > 1 else echo_times_s[0]
        radians_per_ppm = 2 * np.pi * GYROMAGNETIC_RATIO_MHZ_PER_T * field_strength_t * spacing_s
        chi = inversion.medi_l1(*arguments, magnitude=magnitude,
                                regularization=medi_regularization,
                                radians_per_ppm=radians_per_ppm, workers=workers)
    else:
        raise ValueError(f"unknown dipole inversion {method!r}")
    return DipoleInversion(chi, sidecar)


def fit_r2star(magnitude_4d, echo_times_s, mask, *, method: str):
    """R2* (1/s) and T2* (s) by the log-linear fit or ARLO (:mod:`qsmprep.qsm.relaxometry`)."""
    estimate = {"loglinear": relaxometry.r2star_loglinear,
                "arlo": relaxometry.r2star_arlo}.get(method)
    if estimate is None:
        raise ValueError(f"unknown R2* method {method!r}")
    return estimate(magnitude_4d, np.asarray(echo_times_s, dtype=np.float64), mask)


@dataclasses.dataclass
class Referenced:
    """Result of :func:`reference_susceptibility`."""

    chimap_ppm: np.ndarray
    reference_value_ppm: float
    csf_mask: np.ndarray | None
    """The lateral ventricles, when an R2* map let them be found."""
    metadata: dict
    """Reference region and values, as written into the sidecars."""


def reference_susceptibility(susceptibility_ppm, brain_mask, voxel_size, *, method: str,
                             r2star_hz=None, logger=None) -> Referenced:
    """Subtract the mean over the whole brain (``method`` ``"whole-brain"``) or the lateral
    ventricles (``"csf"``).

    Both are measured whatever the choice, when ``r2star_hz`` lets the ventricles be found
    (2024 QSM consensus); without them, whole-brain referencing goes on (``logger`` warns)
    and the CSF reference raises :class:`~qsmprep.errors.BadDataError`. See
    :mod:`qsmprep.qsm.referencing`.
    """
    brain_mask = np.asarray(brain_mask, dtype=bool)
    csf_mask, metadata = None, {}
    if r2star_hz is not None:
        try:
            csf_mask = referencing.csf_reference_mask(r2star_hz, brain_mask, voxel_size)
        except BadDataError as error:
            if method == "csf":
                raise
            if logger is not None:
                logger.warning("No CSF reference region: %s", error)
    if csf_mask is not None:
        summary = referencing.reference_summary(susceptibility_ppm, brain_mask, csf_mask)
        metadata["CSFReference"] = {
            "MeanRelativeToWholeBrainPPM": round(
                float(summary["csf_mean_relative_to_whole_brain_ppm"]), 6),
            "SDPPM": round(float(summary["csf_sd_ppm"]), 6),
            "Voxels": int(summary["csf_voxels"]),
        }
    elif method == "csf":
        raise BadDataError("the CSF reference needs an R2* map to find the ventricles")
    region_mask = csf_mask if method == "csf" else brain_mask
    chimap, reference_value_ppm = referencing.reference_to_region_mean(
        susceptibility_ppm, region_mask, output_mask=brain_mask)
    metadata.update({"ReferenceRegion": method, "ReferenceValue": float(reference_value_ppm),
                     "ReferenceValueUnits": "ppm",
                     "ReferenceRegionVoxels": int(region_mask.sum())})
    return Referenced(chimap, float(reference_value_ppm), csf_mask, metadata)


# --- the whole chain -----------------------------------------------------------------------
@dataclasses.dataclass
class Reconstruction:
    """Every intermediate of :func:`reconstruct` (3-D arrays on the input grid)."""

    brain_mask: np.ndarray
    unwrapped_phase: np.ndarray
    """(x, y, z, echo), rad."""
    echo_fit: echo_fit.EchoFit
    """Total field (Hz), phase offset and fit residual."""
    quality_mask: np.ndarray
    local_field_hz: np.ndarray
    local_field_mask: np.ndarray
    """Where the local field, and so the susceptibility map, is defined."""
    susceptibility_ppm: np.ndarray
    """Before referencing."""
    inversion_sidecar: dict
    """What the inversion chose while running (:attr:`DipoleInversion.sidecar`)."""
    chimap_ppm: np.ndarray
    """Referenced, 0 outside :attr:`local_field_mask`."""
    reference: Referenced
    r2star_hz: np.ndarray | None
    t2star_s: np.ndarray | None
    stage_seconds: dict
    """Wall time of each stage (keys of :data:`STAGES`)."""
    stage_peak_gb: dict
    """Peak of traced allocations of each stage (GB), when :mod:`tracemalloc` was tracing."""


@contextlib.contextmanager
def _measured(name, seconds, peak_gb):
    """Record the wall time of the block in ``seconds[name]``, and the peak of traced
    allocations (GB) in ``peak_gb[name]`` when :mod:`tracemalloc` is tracing."""
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = time.perf_counter() - started
        if tracemalloc.is_tracing():
            peak_gb[name] = tracemalloc.get_traced_memory()[1] / 1024**3


def reconstruct(magnitude, phase, echo_times_s, voxel_size, b0_direction, field_strength_t,
                *, settings: WorkflowConfig | None = None, brain_mask=None,
                workers: int = 1, logger=None) -> Reconstruction:
    """Run the reconstruction chain of the workflow on arrays.

    Parameters
    ----------
    magnitude, phase : array_like, 4-D (x, y, z, echo)
        Magnitude and wrapped phase (rad) of every echo; a 3-D array is one echo. Voxels that
        are not finite in some echo are set to 0 and left out of the masks.
    echo_times_s : sequence of float
        Echo times (s), ascending.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates
        (:func:`qsmprep.imageio.b0_direction_from_affine`).
    field_strength_t : float
        Main field (T).
    settings : :class:`qsmprep.config.WorkflowConfig`, optional
        Algorithm choices and parameters; default the workflow's defaults.
    brain_mask : array_like of bool, optional
        A brain mask to use instead of the automatic one.
    workers : int
        FFT and loop threads.
    logger : logging.Logger, optional
        Where warnings go (no CSF reference found).

    Returns
    -------
    Reconstruction
    """
    settings = settings or WorkflowConfig()
    magnitude = np.asarray(magnitude, dtype=np.float32)
    phase = np.asarray(phase, dtype=np.float32)
    if magnitude.ndim == 3:
        magnitude, phase = magnitude[..., None], phase[..., None]
    if magnitude.shape != phase.shape or magnitude.ndim != 4:
        raise ValueError(f"magnitude {magnitude.shape} and phase {phase.shape} must be "
                         "(x, y, z, echo) arrays of the same shape")
    if len(echo_times_s) != magnitude.shape[-1]:
        raise ValueError(f"{len(echo_times_s)} echo times for {magnitude.shape[-1]} echoes")
    invalid = ~(np.isfinite(magnitude) & np.isfinite(phase)).all(axis=-1)
    if invalid.any():
        magnitude = np.where(invalid[..., None], np.float32(0.0), magnitude)
        phase = np.where(invalid[..., None], np.float32(0.0), phase)
    arguments = stage_arguments(settings)
    seconds, peak_gb = {}, {}

    def stage(name):
        return _measured(name, seconds, peak_gb)

    with stage("masking"):
        if brain_mask is None:
            brain = compute_brain_mask(magnitude[..., 0], voxel_size, **arguments["masking"])
        else:
            brain = np.asarray(brain_mask, dtype=bool).copy()
        brain &= ~invalid
    with stage("unwrapping"):
        unwrapped = unwrap_phase(phase, voxel_size, echo_times_s, magnitude_4d=magnitude,
                                 mask=brain, workers=workers, **arguments["unwrapping"])
    with stage("echo_fit"):
        fit = fit_echoes(unwrapped, magnitude, echo_times_s, brain, phase_4d=phase,
                         **arguments["echo_fit"])
    with stage("quality_mask"):
        quality = refine_mask(brain, fit.residual, voxel_size, **arguments["quality_mask"])
    with stage("background_removal"):
        local = remove_background(fit.total_field_hz, quality, voxel_size, b0_direction,
                                  workers=workers, **arguments["background_removal"])
    with stage("inversion"):
        inverted = invert_dipole(
            local.local_field_hz, local.mask, voxel_size, b0_direction, field_strength_t,
            magnitude=magnitude, echo_times_s=echo_times_s,
            workers=workers, **arguments["inversion"])
        susceptibility = inverted.susceptibility_ppm
    r2star_hz = t2star_s = None
    if magnitude.shape[-1] >= 2:
        with stage("r2star"):
            r2star_hz, t2star_s = fit_r2star(magnitude, echo_times_s, brain,
                                             **arguments["r2star"])
    with stage("referencing"):
        referenced = reference_susceptibility(susceptibility, local.mask, voxel_size,
                                              r2star_hz=r2star_hz, logger=logger,
                                              **arguments["referencing"])
    return Reconstruction(
        brain_mask=brain, unwrapped_phase=unwrapped, echo_fit=fit, quality_mask=quality,
        local_field_hz=local.local_field_hz, local_field_mask=local.mask,
        susceptibility_ppm=susceptibility, inversion_sidecar=inverted.sidecar,
        chimap_ppm=referenced.chimap_ppm,
        reference=referenced, r2star_hz=r2star_hz, t2star_s=t2star_s,
        stage_seconds=seconds, stage_peak_gb=peak_gb)
