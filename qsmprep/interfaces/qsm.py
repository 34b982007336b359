"""Nipype interfaces for the QSM reconstruction stages.

Each interface is a thin wrapper: read the input images, call one function of
:mod:`qsmprep.qsm`, write the result next to the node. All the science lives in those functions.
"""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..qsm import background, echo_fit, inversion, masking, referencing, relaxometry, unwrapping
from ..errors import BadDataError
from ..qsm.dipole import (
    GYROMAGNETIC_RATIO_MHZ_PER_T,
    b0_direction_from_affine,
    hz_to_ppm,
    voxel_size_from_affine,
)
from .images import load_array, load_mask, save_like

LOGGER = logging.getLogger("qsmprep")


def _geometry(path):
    affine = nib.load(os.fspath(path)).affine
    return voxel_size_from_affine(affine), b0_direction_from_affine(affine)


def _out(runtime, name):
    return os.path.join(runtime.cwd, name)


# --- masking -------------------------------------------------------------------------------
class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D multi-echo magnitude")
    invalid_voxels = File(exists=True, desc="voxels with NaN/inf input, excluded from the mask")
    user_mask = File(exists=True, desc="a mask supplied by the user, used instead of the automatic one")
    threshold = traits.Float(0.0, usedefault=True, desc="0 for automatic (Otsu)")


class _BrainMaskOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="brain mask (uint8)")


class BrainMask(SimpleInterface):
    """Brain mask from the first-echo magnitude (:func:`qsmprep.qsm.masking.magnitude_brain_mask`)."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        voxel_size, _ = _geometry(self.inputs.magnitude)
        if isdefined(self.inputs.user_mask):
            mask = load_mask(self.inputs.user_mask)
        else:
            first_echo = load_array(self.inputs.magnitude)[..., 0]
            mask = masking.magnitude_brain_mask(
                first_echo, voxel_size, threshold=self.inputs.threshold or None)
        if isdefined(self.inputs.invalid_voxels):
            mask &= ~load_mask(self.inputs.invalid_voxels)
        self._results["mask"] = save_like(mask, self.inputs.magnitude,
                                          _out(runtime, "brain_mask.nii.gz"), dtype=np.uint8)
        return runtime


class _QualityMaskInputSpec(BaseInterfaceInputSpec):
    brain_mask = File(exists=True, mandatory=True)
    residual = File(exists=True, mandatory=True, desc="echo-fit residual map")
    threshold = traits.Float(0.5, usedefault=True, desc="0 keeps the brain mask as it is")


class _QualityMaskOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="brain mask without voxels of poor phase quality")


class QualityMask(SimpleInterface):
    """Refine the brain mask by phase quality from the echo-fit residual
    (:func:`qsmprep.qsm.masking.quality_mask`, :func:`~qsmprep.qsm.masking.residual_quality`)."""

    input_spec = _QualityMaskInputSpec
    output_spec = _QualityMaskOutputSpec

    def _run_interface(self, runtime):
        brain_mask = load_mask(self.inputs.brain_mask)
        if self.inputs.threshold > 0:
            voxel_size, _ = _geometry(self.inputs.brain_mask)
            quality = masking.residual_quality(load_array(self.inputs.residual), brain_mask)
            brain_mask = masking.quality_mask(brain_mask, quality,
                                              threshold=self.inputs.threshold,
                                              voxel_size=voxel_size)
        self._results["mask"] = save_like(brain_mask, self.inputs.brain_mask,
                                          _out(runtime, "quality_mask.nii.gz"), dtype=np.uint8)
        return runtime


# --- unwrapping ----------------------------------------------------------------------------
class _UnwrapInputSpec(BaseInterfaceInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D wrapped phase (rad)")
    magnitude = File(exists=True, desc="4-D magnitude, for ROMEO's edge weights")
    mask = File(exists=True, desc="brain mask, where ROMEO grows")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    method = traits.Str("romeo", usedefault=True)
    num_threads = traits.Int(1, usedefault=True)


class _UnwrapOutputSpec(TraitedSpec):
    unwrapped_phase = File(exists=True, desc="4-D unwrapped phase (rad)")


class UnwrapPhase(SimpleInterface):
    """Multi-echo phase unwrapping (:func:`qsmprep.qsm.unwrapping.unwrap_echoes`)."""

    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        voxel_size, _ = _geometry(self.inputs.phase)
        unwrapped = unwrapping.unwrap_echoes(
            load_array(self.inputs.phase), voxel_size, echo_times_s=self.inputs.echo_times,
            method=self.inputs.method,
            magnitude_4d=(load_array(self.inputs.magnitude)
                          if isdefined(self.inputs.magnitude) else None),
            mask=load_mask(self.inputs.mask) if isdefined(self.inputs.mask) else None,
            workers=self.inputs.num_threads)
        self._results["unwrapped_phase"] = save_like(
            unwrapped, self.inputs.phase, _out(runtime, "unwrapped_phase.nii.gz"))
        return runtime


# --- echo combination ----------------------------------------------------------------------
class _FitEchoesInputSpec(BaseInterfaceInputSpec):
    unwrapped_phase = File(exists=True, mandatory=True)
    magnitude = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    method = traits.Enum("weighted-linear", "nonlinear", usedefault=True)
    phase = File(exists=True, desc="wrapped phase (rad), for the nonlinear complex fit")


class _FitEchoesOutputSpec(TraitedSpec):
    total_field_hz = File(exists=True, desc="total field (Hz)")
    phase_offset = File(exists=True, desc="phase at TE = 0 (rad)")
    residual = File(exists=True, desc="weighted RMS misfit of the fit (rad)")


class FitEchoes(SimpleInterface):
    """Echo combination into the total field: magnitude-weighted linear fit of unwrapped phase
    over echo time (:func:`qsmprep.qsm.echo_fit.weighted_linear_fit`), optionally refined by
    the nonlinear complex fit started from it
    (:func:`qsmprep.qsm.echo_fit.nonlinear_complex_fit`)."""

    input_spec = _FitEchoesInputSpec
    output_spec = _FitEchoesOutputSpec

    def _run_interface(self, runtime):
        magnitude = load_array(self.inputs.magnitude)
        echo_times = np.asarray(self.inputs.echo_times)
        mask = load_mask(self.inputs.mask)
        fit = echo_fit.weighted_linear_fit(load_array(self.inputs.unwrapped_phase), magnitude,
                                           echo_times, mask)
        if self.inputs.method == "nonlinear" and len(echo_times) >= 2:
            fit = echo_fit.nonlinear_complex_fit(magnitude, load_array(self.inputs.phase),
                                                 echo_times, mask,
                                                 initial_field_hz=fit.total_field_hz)
        for name in ("total_field_hz", "phase_offset", "residual"):
            value = fit.phase_offset_rad if name == "phase_offset" else getattr(fit, name)
            self._results[name] = save_like(value, self.inputs.mask,
                                            _out(runtime, f"{name}.nii.gz"))
        return runtime


# --- background field removal --------------------------------------------------------------
class _BackgroundInputSpec(BaseInterfaceInputSpec):
    total_field_hz = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    method = traits.Enum("vsharp", "pdf", "resharp", "lbv", usedefault=True)
    radii_mm = traits.List(traits.Float, mandatory=True,
                           desc="V-SHARP radii, or the one RESHARP radius (unused by PDF, LBV)")
    threshold = traits.Float(0.05, usedefault=True, desc="V-SHARP deconvolution truncation")
    regularization = traits.Float(1e-3, usedefault=True, desc="RESHARP Tikhonov weight")
    num_threads = traits.Int(1, usedefault=True)


class _BackgroundOutputSpec(TraitedSpec):
    local_field_hz = File(exists=True, desc="local field (Hz)")
    mask = File(exists=True, desc="the (eroded) mask where the local field is valid")


class RemoveBackground(SimpleInterface):
    """Background field removal by V-SHARP, PDF, RESHARP or LBV
    (:mod:`qsmprep.qsm.background`)."""

    input_spec = _BackgroundInputSpec
    output_spec = _BackgroundOutputSpec

    def _run_interface(self, runtime):
        voxel_size, b0_direction = _geometry(self.inputs.mask)
        total_field_hz = load_array(self.inputs.total_field_hz)
        mask = load_mask(self.inputs.mask)
        if self.inputs.method == "pdf":
            result = background.pdf(total_field_hz, mask, voxel_size, b0_direction,
                                    workers=self.inputs.num_threads)
        elif self.inputs.method == "lbv":
            result = background.lbv(total_field_hz, mask, voxel_size,
                                    workers=self.inputs.num_threads)
        elif self.inputs.method == "resharp":
            result = background.resharp(
                total_field_hz, mask, voxel_size, radius_mm=self.inputs.radii_mm[0],
                regularization=self.inputs.regularization, workers=self.inputs.num_threads)
        else:
            result = background.vsharp(
                total_field_hz, mask, voxel_size, radii_mm=tuple(self.inputs.radii_mm),
                threshold=self.inputs.threshold, workers=self.inputs.num_threads)
        self._results["local_field_hz"] = save_like(
            result.local_field_hz, self.inputs.mask, _out(runtime, "local_field_hz.nii.gz"))
        self._results["mask"] = save_like(
            result.mask, self.inputs.mask, _out(runtime, "local_field_mask.nii.gz"),
            dtype=np.uint8)
        return runtime


# --- dipole inversion ----------------------------------------------------------------------
class _InvertInputSpec(BaseInterfaceInputSpec):
    local_field_hz = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    field_strength_t = traits.Float(mandatory=True)
    echo_times = traits.List(traits.Float, desc="echo times (s): MEDI's phase noise scale")
    magnitude = File(exists=True, desc="4-D magnitude; the first echo weights TV and MEDI")
    method = traits.Enum("tv-admm", "tikhonov", "tkd", "rts", "medi-l1", usedefault=True)
    tkd_threshold = traits.Float(0.19, usedefault=True)
    rts_delta = traits.Float(0.15, usedefault=True)
    regularization = traits.Float(0.01, usedefault=True,
                                  desc="lambda of Tikhonov, TV-ADMM or MEDI")
    max_iter = traits.Int(100, usedefault=True)
    tolerance = traits.Float(1e-2, usedefault=True)
    num_threads = traits.Int(1, usedefault=True)


class _InvertOutputSpec(TraitedSpec):
    susceptibility_ppm = File(exists=True, desc="susceptibility (ppm), not yet referenced")


class InvertDipole(SimpleInterface):
    """Dipole inversion by TV-ADMM, iterative Tikhonov, TKD, RTS or MEDI
    (:mod:`qsmprep.qsm.inversion`)."""

    input_spec = _InvertInputSpec
    output_spec = _InvertOutputSpec

    def _run_interface(self, runtime):
        voxel_size, b0_direction = _geometry(self.inputs.mask)
        local_field_ppm = hz_to_ppm(load_array(self.inputs.local_field_hz),
                                    self.inputs.field_strength_t)
        mask = load_mask(self.inputs.mask)
        arguments = (local_field_ppm, mask, voxel_size, b0_direction)
        workers = self.inputs.num_threads
        magnitude = (load_array(self.inputs.magnitude)[..., 0]
                     if isdefined(self.inputs.magnitude) else None)
        method = self.inputs.method
        if method == "tkd":
            susceptibility = inversion.tkd(*arguments, threshold=self.inputs.tkd_threshold,
                                           workers=workers)
        elif method == "tikhonov":
            susceptibility = inversion.tikhonov_cg(
                *arguments, regularization=self.inputs.regularization,
                max_iter=self.inputs.max_iter, tolerance=self.inputs.tolerance, workers=workers)
        elif method == "tv-admm":
            susceptibility = inversion.tv_admm(*arguments, magnitude=magnitude,
                                               regularization=self.inputs.regularization,
                                               workers=workers)
        elif method == "rts":
            susceptibility = inversion.rts(*arguments, delta=self.inputs.rts_delta,
                                           workers=workers)
        else:
            echo_times = np.asarray(self.inputs.echo_times)
            echo_spacing_s = np.diff(echo_times).mean() if echo_times.size > 1 else echo_times[0]
            radians_per_ppm = (2 * np.pi * GYROMAGNETIC_RATIO_MHZ_PER_T
                               * self.inputs.field_strength_t * echo_spacing_s)
            susceptibility = inversion.medi_l1(*arguments, magnitude=magnitude,
                                               regularization=self.inputs.regularization,
                                               radians_per_ppm=radians_per_ppm, workers=workers)
        self._results["susceptibility_ppm"] = save_like(
            susceptibility, self.inputs.mask, _out(runtime, "susceptibility_ppm.nii.gz"))
        return runtime


# --- referencing ---------------------------------------------------------------------------
class _ReferenceInputSpec(BaseInterfaceInputSpec):
    susceptibility_ppm = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True,
                      desc="where the map is defined: the whole-brain reference region")
    r2star = File(exists=True, desc="R2* map (1/s), to find the lateral ventricles (CSF)")
    region = traits.Enum("whole-brain", "csf", usedefault=True, desc="the reference region")


class _ReferenceOutputSpec(TraitedSpec):
    chimap = File(exists=True, desc="referenced susceptibility (ppm)")
    csf_mask = File(desc="the CSF (lateral ventricle) reference region, when found")
    metadata = traits.Dict(desc="reference region and values, for the sidecars")


class ReferenceSusceptibility(SimpleInterface):
    """Subtract the mean over the reference region, whole brain or CSF
    (:mod:`qsmprep.qsm.referencing`). Both are measured and recorded whatever the choice, when
    an R2* map lets the ventricles be found (2024 QSM consensus)."""

    input_spec = _ReferenceInputSpec
    output_spec = _ReferenceOutputSpec

    def _run_interface(self, runtime):
        susceptibility = load_array(self.inputs.susceptibility_ppm)
        brain_mask = load_mask(self.inputs.brain_mask)
        csf_mask, metadata = None, {}
        if isdefined(self.inputs.r2star):
            voxel_size, _ = _geometry(self.inputs.brain_mask)
            try:
                csf_mask = referencing.csf_reference_mask(load_array(self.inputs.r2star),
                                                          brain_mask, voxel_size)
            except BadDataError as error:
                if self.inputs.region == "csf":
                    raise
                LOGGER.warning("No CSF reference region: %s", error)
        if csf_mask is not None:
            summary = referencing.reference_summary(susceptibility, brain_mask, csf_mask)
            metadata["CSFReference"] = {
                "MeanRelativeToWholeBrainPPM": round(
                    float(summary["csf_mean_relative_to_whole_brain_ppm"]), 6),
                "SDPPM": round(float(summary["csf_sd_ppm"]), 6),
                "Voxels": int(summary["csf_voxels"]),
            }
            self._results["csf_mask"] = save_like(csf_mask, self.inputs.brain_mask,
                                                  _out(runtime, "csf_mask.nii.gz"),
                                                  dtype=np.uint8)
        region_mask = csf_mask if self.inputs.region == "csf" else brain_mask
        referenced, reference_value_ppm = referencing.reference_to_region_mean(
            susceptibility, region_mask, output_mask=brain_mask)
        self._results["chimap"] = save_like(referenced, self.inputs.susceptibility_ppm,
                                            _out(runtime, "chimap.nii.gz"))
        self._results["metadata"] = {
            **metadata,
            "ReferenceRegion": self.inputs.region,
            "ReferenceValue": float(reference_value_ppm),
            "ReferenceValueUnits": "ppm",
            "ReferenceRegionVoxels": int(region_mask.sum()),
        }
        return runtime


# --- relaxometry ---------------------------------------------------------------------------
class _R2starInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    method = traits.Enum("loglinear", "arlo", usedefault=True)


class _R2starOutputSpec(TraitedSpec):
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")


class FitR2star(SimpleInterface):
    """R2* and T2* from the magnitudes by weighted log-linear fit or ARLO
    (:mod:`qsmprep.qsm.relaxometry`)."""

    input_spec = _R2starInputSpec
    output_spec = _R2starOutputSpec

    def _run_interface(self, runtime):
        estimate = (relaxometry.r2star_arlo if self.inputs.method == "arlo"
                    else relaxometry.r2star_loglinear)
        r2star_hz, t2star_s = estimate(load_array(self.inputs.magnitude),
                                       np.asarray(self.inputs.echo_times),
                                       load_mask(self.inputs.mask))
        self._results["r2star"] = save_like(r2star_hz, self.inputs.mask,
                                            _out(runtime, "r2star.nii.gz"))
        self._results["t2star"] = save_like(t2star_s, self.inputs.mask,
                                            _out(runtime, "t2star.nii.gz"))
        return runtime
