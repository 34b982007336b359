"""Nipype interfaces for the registration to the template and the label transfer.

Each interface is a thin wrapper around one function of :mod:`qsmprep.registration` (or
:mod:`qsmprep.reports.figures`), writing its result into the node's folder.
"""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from .. import registration
from ..config import DEFAULT_SEED


def _out(runtime, name):
    return os.path.join(runtime.cwd, name)


def _optional(value):
    return value if isdefined(value) else None


# --- preparation ---------------------------------------------------------------------------
class _PrepareMovingImageInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True,
                     desc="first-echo or echo-combined magnitude (4-D: the first echo is used)")
    mask = File(exists=True, mandatory=True, desc="brain mask on the magnitude's grid")


class _PrepareMovingImageOutputSpec(TraitedSpec):
    prepared = File(exists=True, desc="N4-corrected, brain-extracted magnitude in [0, 1]")


class PrepareMovingImage(SimpleInterface):
    """N4 bias correction, brain extraction and robust rescaling of the magnitude
    (:func:`qsmprep.registration.prepare_moving_image`)."""

    input_spec = _PrepareMovingImageInputSpec
    output_spec = _PrepareMovingImageOutputSpec

    def _run_interface(self, runtime):
        self._results["prepared"] = registration.prepare_moving_image(
            self.inputs.magnitude, self.inputs.mask, _out(runtime, "prepared_magnitude.nii"))
        return runtime


# --- registration --------------------------------------------------------------------------
class _RegisterToTemplateInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="prepared magnitude (native space)")
    template = File(exists=True, mandatory=True, desc="brain-extracted T1w template")
    template_mask = File(exists=True, desc="template brain mask (metric mask, quality)")
    moving_mask = File(exists=True, desc="native brain mask (metric mask, quality)")
    t1w = File(exists=True, desc="brain-extracted T1w of the same session: register through it")
    t1w_mask = File(exists=True, desc="brain mask of the T1w")
    seed = traits.Int(DEFAULT_SEED, usedefault=True,
                      desc="seed of the random metric sampling")
    num_threads = traits.Int(1, usedefault=True, desc="threads of antsRegistration")


class _RegisterToTemplateOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="composite transform, native images to template")
    inverse_transform = File(exists=True, desc="composite transform, template images to native")
    warped = File(exists=True, desc="the moving image on the template grid")
    warped_mask = File(desc="the native brain mask on the template grid (nearest neighbour)")
    nmi = traits.Float(desc="normalised mutual information with the template, in its mask")
    dice_brain = traits.Float(desc="Dice of the warped brain and the template mask")
    elapsed_s = traits.Float(desc="wall time of the registration (s)")


class RegisterToTemplate(SimpleInterface):
    """Rigid + affine + SyN registration to the template with Mattes mutual information
    (:func:`qsmprep.registration.register_to_template`), or through the participant's T1w when
    one is given (:func:`qsmprep.registration.register_two_step`), then the quality measures
    (:func:`qsmprep.registration.registration_quality`, when the template mask is given)."""

    input_spec = _RegisterToTemplateInputSpec
    output_spec = _RegisterToTemplateOutputSpec

    def _run_interface(self, runtime):
        common = dict(out_prefix=_out(runtime, "native2template_"),
                      template_mask_path=_optional(self.inputs.template_mask),
                      moving_mask_path=_optional(self.inputs.moving_mask),
                      seed=self.inputs.seed, threads=self.inputs.num_threads)
        if isdefined(self.inputs.t1w):
            result = registration.register_two_step(
                self.inputs.moving, self.inputs.t1w, self.inputs.template,
                t1w_mask_path=_optional(self.inputs.t1w_mask), **common)
        else:
            result = registration.register_to_template(self.inputs.moving, self.inputs.template,
                                                       **common)
        self._results.update(forward_transform=result.forward_transform,
                             inverse_transform=result.inverse_transform, warped=result.warped,
                             elapsed_s=result.elapsed_s)
        warped_mask = None
        if isdefined(self.inputs.moving_mask):
            warped_mask = registration.apply_transforms_to_template(
                self.inputs.moving_mask, self.inputs.template, result.forward_transform,
                _out(runtime, "native2template_mask.nii"), interpolation="nearest")
            self._results["warped_mask"] = warped_mask
        if isdefined(self.inputs.template_mask):
            quality = registration.registration_quality(
                result.warped, self.inputs.template, self.inputs.template_mask,
                warped_mask_path=warped_mask)
            self._results.update(quality)
        return runtime


# --- transforms ----------------------------------------------------------------------------
class _ApplyTransformToTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="native image (3-D or 4-D)")
    template = File(exists=True, mandatory=True, desc="template: the output grid")
    transforms = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="forward transform(s), as for antsApplyTransforms")
    interpolation = traits.Enum("linear", "nearest", "genericLabel", "bSpline",
                                "lanczosWindowedSinc", usedefault=True)


class _ApplyTransformToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image on the template grid")


class ApplyTransformToTemplate(SimpleInterface):
    """Resample a native image onto the template grid
    (:func:`qsmprep.registration.apply_transforms_to_template`)."""

    input_spec = _ApplyTransformToTemplateInputSpec
    output_spec = _ApplyTransformToTemplateOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = registration.apply_transforms_to_template(
            self.inputs.in_file, self.inputs.template, list(self.inputs.transforms),
            _out(runtime, "in_template.nii"), interpolation=self.inputs.interpolation)
        return runtime


class _LabelsToNativeInputSpec(BaseInterfaceInputSpec):
    labels = File(exists=True, mandatory=True, desc="integer labels on the template grid")
    reference = File(exists=True, mandatory=True, desc="native image: the output grid")
    transforms = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="inverse transform(s), template to native")
    keep_small_labels = traits.Bool(True, usedefault=True,
                                    desc="give back voxels to labels that vanish on the grid")


class _LabelsToNativeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="integer labels on the native grid")


class LabelsToNative(SimpleInterface):
    """Atlas labels to the native grid with generic-label interpolation, keeping small nuclei
    (:func:`qsmprep.registration.labels_to_native`)."""

    input_spec = _LabelsToNativeInputSpec
    output_spec = _LabelsToNativeOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = registration.labels_to_native(
            self.inputs.labels, self.inputs.reference, list(self.inputs.transforms),
            _out(runtime, "labels_native.nii"),
            keep_small_labels=self.inputs.keep_small_labels)
        return runtime


# --- quality and figure --------------------------------------------------------------------
class _PlotRegistrationInputSpec(BaseInterfaceInputSpec):
    template = File(exists=True, mandatory=True)
    warped = File(exists=True, mandatory=True, desc="registered image on the template grid")


class _PlotRegistrationOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="SVG: the registered image with the template's edges")


class PlotRegistration(SimpleInterface):
    """Registration figure for the report (:func:`qsmprep.reports.figures.plot_registration`)."""

    input_spec = _PlotRegistrationInputSpec
    output_spec = _PlotRegistrationOutputSpec

    def _run_interface(self, runtime):
        from ..reports.figures import plot_registration

        self._results["out_report"] = plot_registration(
            self.inputs.template, self.inputs.warped, _out(runtime, "registration.svg"))
        return runtime


# --- deep grey-matter refinement -----------------------------------------------------------
class _RefineDeepGreyInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="native Chimap (ppm)")
    chimap_mask = File(exists=True, mandatory=True, desc="mask where the Chimap is defined")
    forward_transform = File(exists=True, mandatory=True, desc="first registration, forward")
    inverse_transform = File(exists=True, mandatory=True, desc="first registration, inverse")
    atlas_labels = File(exists=True, mandatory=True, desc="atlas on the template grid")
    atlas_table = File(exists=True, mandatory=True, desc="the atlas' TSV")
    seed = traits.Int(DEFAULT_SEED, usedefault=True, desc="ANTs seed")
    num_threads = traits.Int(1, usedefault=True, desc="threads of antsRegistration")


class _RefineDeepGreyOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="refined (or first) forward transform")
    inverse_transform = File(exists=True, desc="refined (or first) inverse transform")
    refinement = traits.Dict(desc="accepted, reason, correlation and displacement measures")


class RefineDeepGreyRegistration(SimpleInterface):
    """Susceptibility-driven refinement of the registration at the deep grey matter
    (:func:`qsmprep.refinement.refine_deep_grey_registration`, against the prior of
    :func:`qsmprep.refinement.write_prior_files`); falls back to the first registration, saying
    why, when the refinement diverges or the atlas has no deep grey-matter regions."""

    input_spec = _RefineDeepGreyInputSpec
    output_spec = _RefineDeepGreyOutputSpec

    def _run_interface(self, runtime):
        import logging

        from .. import refinement
        from ..errors import BadDataError

        logger = logging.getLogger("qsmprep")
        try:
            prior = refinement.write_prior_files(self.inputs.atlas_labels,
                                                 self.inputs.atlas_table, runtime.cwd)
        except BadDataError as error:
            result = None
            reason = f"not run: {error}"
        else:
            result = refinement.refine_deep_grey_registration(
                self.inputs.chimap, self.inputs.chimap_mask, self.inputs.forward_transform,
                self.inputs.inverse_transform, prior["prior"], prior["mask"],
                out_prefix=_out(runtime, "refine_"), seed=self.inputs.seed,
                threads=self.inputs.num_threads)
            reason = result.reason
        if result is not None and result.accepted:
            logger.info("Deep grey-matter refinement of %s: mean displacement %.2f mm, "
                        "correlation with the prior %.3f -> %.3f (%.0f s)", self.inputs.chimap,
                        result.quality["displacement_mean_mm"],
                        result.quality["correlation_before"],
                        result.quality["correlation_after"], result.quality["elapsed_s"])
            self._results.update(forward_transform=result.forward_transform,
                                 inverse_transform=result.inverse_transform)
        else:
            logger.warning("Deep grey-matter refinement of %s rejected (%s); the regions use "
                           "the first registration.", self.inputs.chimap, reason)
            self._results.update(forward_transform=self.inputs.forward_transform,
                                 inverse_transform=self.inputs.inverse_transform)
        self._results["refinement"] = {
            "Ran": result is not None,
            "Accepted": bool(result is not None and result.accepted),
            "Reason": reason,
            **({} if result is None else {
                "CorrelationWithPriorBefore": result.quality["correlation_before"],
                "CorrelationWithPriorAfter": result.quality.get("correlation_after"),
                "DisplacementMeanMM": result.quality["displacement_mean_mm"],
                "DisplacementMaxMM": result.quality["displacement_max_mm"]}),
        }
        return runtime
