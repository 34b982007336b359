"""Nipype interfaces for the QSM reconstruction stages.

Each interface is a thin wrapper: read the input images, call one stage function of
:mod:`qsmprep.qsm.pipeline` (the functions :func:`~qsmprep.qsm.pipeline.reconstruct` chains on
arrays), write the result next to the node. The names of the stage parameters among the
inputs are made from the stage's declaration (:data:`qsmprep.stages.STAGES`, by
:func:`with_stage_inputs`): ``method`` and one input per parameter, named as the keys of
:func:`qsmprep.qsm.pipeline.stage_arguments`, which the workflow passes through unchanged. All
the science lives in :mod:`qsmprep.qsm`.
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

from .. import stages
from ..qsm import pipeline
from ..imageio import (b0_direction_from_affine, load_array, load_mask, save_like,
                       voxel_size_from_affine)

LOGGER = logging.getLogger("qsmprep")


def _geometry(path):
    affine = nib.load(os.fspath(path)).affine
    return voxel_size_from_affine(affine), b0_direction_from_affine(affine)


def _out(runtime, name):
    return os.path.join(runtime.cwd, name)


def with_stage_inputs(stage_name: str):
    """Class decorator adding to an input spec the inputs of one stage's declaration
    (:func:`qsmprep.stages.stage`): ``method`` (its algorithms, the default first) when it has
    a choice, and one input per parameter, typed and defaulted as declared."""
    declared = stages.stage(stage_name)

    def decorate(spec):
        if declared.choice_key:
            spec.add_class_trait("method", traits.Enum(*declared.choices, usedefault=True,
                                                       desc=declared.help))
        for parameter in declared.parameters:
            trait = traits.Int if parameter.type is int else traits.Float
            spec.add_class_trait(parameter.field, trait(parameter.default, usedefault=True,
                                                        desc=parameter.help))
        return spec

    return decorate


def stage_inputs(inputs, stage_name: str) -> dict:
    """The values of the inputs :func:`with_stage_inputs` added, as keyword arguments of the
    stage function."""
    declared = stages.stage(stage_name)
    names = ["method"] if declared.choice_key else []
    names += [parameter.field for parameter in declared.parameters]
    return {name: getattr(inputs, name) for name in names}


def _first_echo(path) -> np.ndarray:
    """The first echo of a 4-D image (float32), without reading the other echoes."""
    image = nib.load(os.fspath(path))
    if len(image.shape) == 3:
        return np.asarray(image.get_fdata(dtype=np.float32))
    return np.asarray(image.dataobj[..., 0], dtype=np.float32)


# --- masking -------------------------------------------------------------------------------
@with_stage_inputs("masking")
class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D multi-echo magnitude")
    invalid_voxels = File(exists=True, desc="voxels with NaN/inf input, excluded from the mask")
    user_mask = File(exists=True, desc="a mask supplied by the user, used instead of the automatic one")


class _BrainMaskOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="brain mask (uint8)")


class BrainMask(SimpleInterface):
    """Brain mask from the first-echo magnitude
    (:func:`qsmprep.qsm.pipeline.compute_brain_mask`)."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        voxel_size, _ = _geometry(self.inputs.magnitude)
        first_echo = _first_echo(self.inputs.magnitude)
        if isdefined(self.inputs.user_mask):
            mask = load_mask(self.inputs.user_mask)
        else:
            mask = pipeline.compute_brain_mask(first_echo, voxel_size,
                                               **stage_inputs(self.inputs, "masking"))
        if isdefined(self.inputs.invalid_voxels):
            mask &= ~load_mask(self.inputs.invalid_voxels)
        _log_mask(mask, first_echo, voxel_size, automatic=not isdefined(self.inputs.user_mask))
        self._results["mask"] = save_like(mask, self.inputs.magnitude,
                                          _out(runtime, "brain_mask.nii"), dtype=np.uint8)
        return runtime


def _log_mask(mask, first_echo, voxel_size, *, automatic: bool) -> None:
    """Log the mask's volume and the share of the voxels with signal it keeps."""
    from ..qsm.masking import has_little_background

    with np.errstate(invalid="ignore"):
        signal = np.isfinite(first_echo) & (first_echo != 0)
    kept = np.count_nonzero(mask & signal) / max(1, np.count_nonzero(signal))
    volume_ml = np.count_nonzero(mask) * float(np.prod(voxel_size)) / 1000.0
    LOGGER.info("Brain mask: %.0f mL, %.0f %% of the voxels with signal.", volume_ml,
                100 * kept)
    if automatic and has_little_background(first_echo, voxel_size):
        LOGGER.warning("The field of view holds almost no background (a crop or slab of "
                       "tissue): the brain mask keeps every voxel brighter than a tenth of the "
                       "99th percentile instead of using Otsu's threshold.")


@with_stage_inputs("quality_mask")
class _QualityMaskInputSpec(BaseInterfaceInputSpec):
    brain_mask = File(exists=True, mandatory=True)
    residual = File(exists=True, mandatory=True, desc="echo-fit residual map")


class _QualityMaskOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="brain mask without voxels of poor phase quality")


class QualityMask(SimpleInterface):
    """Refine the brain mask by phase quality from the echo-fit residual
    (:func:`qsmprep.qsm.pipeline.refine_mask`)."""

    input_spec = _QualityMaskInputSpec
    output_spec = _QualityMaskOutputSpec

    def _run_interface(self, runtime):
        voxel_size, _ = _geometry(self.inputs.brain_mask)
        mask = pipeline.refine_mask(load_mask(self.inputs.brain_mask),
                                    load_array(self.inputs.residual), voxel_size,
                                    **stage_inputs(self.inputs, "quality_mask"))
        self._results["mask"] = save_like(mask, self.inputs.brain_mask,
                                          _out(runtime, "quality_mask.nii"), dtype=np.uint8)
        return runtime


# --- unwrapping ----------------------------------------------------------------------------
@with_stage_inputs("unwrapping")
class _UnwrapInputSpec(BaseInterfaceInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D wrapped phase (rad)")
    magnitude = File(exists=True, desc="4-D magnitude, for ROMEO's edge weights")
    mask = File(exists=True, desc="brain mask, where ROMEO grows")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    num_threads = traits.Int(1, usedefault=True)


class _UnwrapOutputSpec(TraitedSpec):
    unwrapped_phase = File(exists=True, desc="4-D unwrapped phase (rad)")


class UnwrapPhase(SimpleInterface):
    """Multi-echo phase unwrapping (:func:`qsmprep.qsm.pipeline.unwrap_phase`)."""

    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        voxel_size, _ = _geometry(self.inputs.phase)
        unwrapped = pipeline.unwrap_phase(
            load_array(self.inputs.phase), voxel_size, self.inputs.echo_times,
            **stage_inputs(self.inputs, "unwrapping"),
            magnitude_4d=(load_array(self.inputs.magnitude)
                          if isdefined(self.inputs.magnitude) else None),
            mask=load_mask(self.inputs.mask) if isdefined(self.inputs.mask) else None,
            workers=self.inputs.num_threads)
        self._results["unwrapped_phase"] = save_like(
            unwrapped, self.inputs.phase, _out(runtime, "unwrapped_phase.nii"))
        return runtime


# --- echo combination ----------------------------------------------------------------------
@with_stage_inputs("echo_fit")
class _FitEchoesInputSpec(BaseInterfaceInputSpec):
    unwrapped_phase = File(exists=True, mandatory=True)
    magnitude = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    phase = File(exists=True, desc="wrapped phase (rad), for the nonlinear complex fit")


class _FitEchoesOutputSpec(TraitedSpec):
    total_field_hz = File(exists=True, desc="total field (Hz)")
    residual = File(exists=True, desc="weighted RMS misfit of the fit (rad)")


class FitEchoes(SimpleInterface):
    """Echo combination into the total field (:func:`qsmprep.qsm.pipeline.fit_echoes`)."""

    input_spec = _FitEchoesInputSpec
    output_spec = _FitEchoesOutputSpec

    def _run_interface(self, runtime):
        fit = pipeline.fit_echoes(
            load_array(self.inputs.unwrapped_phase), load_array(self.inputs.magnitude),
            self.inputs.echo_times, load_mask(self.inputs.mask),
            **stage_inputs(self.inputs, "echo_fit"),
            phase_4d=(load_array(self.inputs.phase)  # only the nonlinear fit reads it
                      if self.inputs.method == "nonlinear" and isdefined(self.inputs.phase)
                      else None))
        for name in ("total_field_hz", "residual"):  # the phase offset is not used downstream
            self._results[name] = save_like(getattr(fit, name), self.inputs.mask,
                                            _out(runtime, f"{name}.nii"))
        return runtime


# --- background field removal --------------------------------------------------------------
@with_stage_inputs("background_removal")
class _BackgroundInputSpec(BaseInterfaceInputSpec):
    total_field_hz = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    num_threads = traits.Int(1, usedefault=True)


class _BackgroundOutputSpec(TraitedSpec):
    local_field_hz = File(exists=True, desc="local field (Hz)")
    mask = File(exists=True, desc="the (eroded) mask where the local field is valid")


class RemoveBackground(SimpleInterface):
    """Background field removal by PDF, V-SHARP, RESHARP or LBV
    (:func:`qsmprep.qsm.pipeline.remove_background`)."""

    input_spec = _BackgroundInputSpec
    output_spec = _BackgroundOutputSpec

    def _run_interface(self, runtime):
        voxel_size, b0_direction = _geometry(self.inputs.mask)
        result = pipeline.remove_background(
            load_array(self.inputs.total_field_hz), load_mask(self.inputs.mask), voxel_size,
            b0_direction, **stage_inputs(self.inputs, "background_removal"),
            workers=self.inputs.num_threads)
        self._results["local_field_hz"] = save_like(
            result.local_field_hz, self.inputs.mask, _out(runtime, "local_field_hz.nii"))
        self._results["mask"] = save_like(
            result.mask, self.inputs.mask, _out(runtime, "local_field_mask.nii"),
            dtype=np.uint8)
        return runtime


# --- dipole inversion ----------------------------------------------------------------------
@with_stage_inputs("inversion")
class _InvertInputSpec(BaseInterfaceInputSpec):
    local_field_hz = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    field_strength_t = traits.Float(mandatory=True)
    echo_times = traits.List(traits.Float, desc="echo times (s): MEDI's phase noise scale")
    magnitude = File(exists=True, desc="4-D magnitude; edges in any echo weight TV and MEDI")
    num_threads = traits.Int(1, usedefault=True)


class _InvertOutputSpec(TraitedSpec):
    susceptibility_ppm = File(exists=True, desc="susceptibility (ppm), not yet referenced")
    metadata = traits.Dict(desc="sidecar entries chosen while running (the automatic TV "
                           "weight and its L-curve), under QSMProcessing.DipoleInversion")


class InvertDipole(SimpleInterface):
    """Dipole inversion by TV-ADMM, iterative Tikhonov, TKD, RTS or MEDI
    (:func:`qsmprep.qsm.pipeline.invert_dipole`)."""

    input_spec = _InvertInputSpec
    output_spec = _InvertOutputSpec

    def _run_interface(self, runtime):
        voxel_size, b0_direction = _geometry(self.inputs.mask)
        inverted = pipeline.invert_dipole(
            load_array(self.inputs.local_field_hz), load_mask(self.inputs.mask), voxel_size,
            b0_direction, self.inputs.field_strength_t,
            **stage_inputs(self.inputs, "inversion"),
            magnitude=(load_array(self.inputs.magnitude)
                       if isdefined(self.inputs.magnitude) else None),
            echo_times_s=self.inputs.echo_times if isdefined(self.inputs.echo_times) else None,
            workers=self.inputs.num_threads)
        self._results["susceptibility_ppm"] = save_like(
            inverted.susceptibility_ppm, self.inputs.mask,
            _out(runtime, "susceptibility_ppm.nii"))
        self._results["metadata"] = (
            {"QSMProcessing": {"DipoleInversion": inverted.sidecar}} if inverted.sidecar else {})
        return runtime


# --- referencing ---------------------------------------------------------------------------
@with_stage_inputs("referencing")
class _ReferenceInputSpec(BaseInterfaceInputSpec):
    susceptibility_ppm = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True,
                      desc="where the map is defined: the whole-brain reference region")
    r2star = File(exists=True, desc="R2* map (1/s), to find the lateral ventricles (CSF)")


class _ReferenceOutputSpec(TraitedSpec):
    chimap = File(exists=True, desc="referenced susceptibility (ppm)")
    csf_mask = File(desc="the CSF (lateral ventricle) reference region, when found")
    metadata = traits.Dict(desc="reference region and values, for the sidecars")


class ReferenceSusceptibility(SimpleInterface):
    """Subtract the mean over the reference region, whole brain or CSF
    (:func:`qsmprep.qsm.pipeline.reference_susceptibility`). Both are measured and recorded
    whatever the choice, when an R2* map lets the ventricles be found (2024 QSM consensus)."""

    input_spec = _ReferenceInputSpec
    output_spec = _ReferenceOutputSpec

    def _run_interface(self, runtime):
        voxel_size, _ = _geometry(self.inputs.brain_mask)
        result = pipeline.reference_susceptibility(
            load_array(self.inputs.susceptibility_ppm), load_mask(self.inputs.brain_mask),
            voxel_size, **stage_inputs(self.inputs, "referencing"),
            r2star_hz=load_array(self.inputs.r2star) if isdefined(self.inputs.r2star) else None,
            logger=LOGGER)
        if result.csf_mask is not None:
            self._results["csf_mask"] = save_like(result.csf_mask, self.inputs.brain_mask,
                                                  _out(runtime, "csf_mask.nii"),
                                                  dtype=np.uint8)
        self._results["chimap"] = save_like(result.chimap_ppm, self.inputs.susceptibility_ppm,
                                            _out(runtime, "chimap.nii"))
        self._results["metadata"] = result.metadata
        return runtime


# --- relaxometry ---------------------------------------------------------------------------
@with_stage_inputs("r2star")
class _R2starInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")


class _R2starOutputSpec(TraitedSpec):
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")


class FitR2star(SimpleInterface):
    """R2* and T2* from the magnitudes by weighted log-linear fit or ARLO
    (:func:`qsmprep.qsm.pipeline.fit_r2star`)."""

    input_spec = _R2starInputSpec
    output_spec = _R2starOutputSpec

    def _run_interface(self, runtime):
        r2star_hz, t2star_s = pipeline.fit_r2star(
            load_array(self.inputs.magnitude), self.inputs.echo_times,
            load_mask(self.inputs.mask), **stage_inputs(self.inputs, "r2star"))
        self._results["r2star"] = save_like(r2star_hz, self.inputs.mask,
                                            _out(runtime, "r2star.nii"))
        self._results["t2star"] = save_like(t2star_s, self.inputs.mask,
                                            _out(runtime, "t2star.nii"))
        return runtime
