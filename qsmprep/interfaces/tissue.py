"""Nipype interfaces for the participant's tissue classes and the grey-matter restriction of
cortical labels: thin wrappers around :mod:`qsmprep.tissue`."""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..config import DEFAULT_SEED
from ..imageio import load_array, load_mask, save_array

LOGGER = logging.getLogger("qsmprep")

#: Names of the tissue classes in the tables.
TISSUE_NAMES = {"csf": "tissue_csf", "gm": "tissue_grey_matter", "wm": "tissue_white_matter"}


class _ClassifyTissueInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True,
                     desc="echo magnitudes (native, 3-D or 4-D: the first echo is used)")
    mask = File(exists=True, mandatory=True, desc="brain mask where the tissue is classified")
    inverse_transforms = InputMultiObject(File(exists=True), mandatory=True,
                                          desc="template -> native transform(s)")
    template_mask = File(exists=True, mandatory=True, desc="template brain mask (prior grid)")
    seed = traits.Int(DEFAULT_SEED, usedefault=True,
                      desc="seed of the tie-breaking perturbation")


class _ClassifyTissueOutputSpec(TraitedSpec):
    tissue_dseg = File(exists=True, desc="0 background, 1 CSF, 2 grey matter, 3 white matter")
    tissue_table = File(exists=True, desc="the dseg's TSV (index, name)")
    gm_probability = File(exists=True, desc="grey-matter probability (native)")
    tissue = traits.Dict(desc="Succeeded, Reason, Features, VolumesML, GMPriorDice")


class ClassifyTissue(SimpleInterface):
    """CSF / grey / white matter of the participant with Atropos
    (:func:`qsmprep.tissue.classify_tissue`), from the N4-corrected first-echo magnitude and
    the template priors carried to the native grid. A classification that fails its checks
    falls back to the warped template priors, saying so in the log and in the ``tissue``
    record.

    Only the first echo is used: R2*, the susceptibility and the later echoes all follow iron,
    so a classifier fed with them calls iron-laden cortex white matter and the grey-matter
    restriction removes the very cortex whose iron is to be measured (on the demo's CBS
    patient, 2 mm: the left motor cortex kept 325 voxels with magnitude, R2* and
    susceptibility as features, 3883 with the first echo alone)."""

    input_spec = _ClassifyTissueInputSpec
    output_spec = _ClassifyTissueOutputSpec

    def _run_interface(self, runtime):
        from .. import registration, tissue
        from ..errors import BadDataError

        reference = self.inputs.mask
        affine = nib.load(reference).affine
        mask = load_mask(self.inputs.mask)
        template_priors = tissue.template_tissue_priors(self.inputs.template_mask, runtime.cwd)
        priors = {}
        for name in tissue.CLASSES:
            warped = registration.template_image_to_native(
                template_priors[name], reference, list(self.inputs.inverse_transforms),
                os.path.join(runtime.cwd, f"prior_{name}_native.nii"))
            priors[name] = np.clip(load_array(warped), 0.0, 1.0) * mask
        first_echo = registration.prepare_moving_image(
            self.inputs.magnitude, self.inputs.mask,
            os.path.join(runtime.cwd, "first_echo_n4.nii"), echo_combination="first")
        features = {"first-echo magnitude": load_array(first_echo)}
        record = {"Features": list(features)}
        try:
            result = tissue.classify_tissue(features, mask, priors, affine,
                                            seed=self.inputs.seed)
        except BadDataError as error:
            LOGGER.warning("Tissue classification of %s failed (%s); the cortical regions use "
                           "the template's grey-matter prior instead.", reference, error)
            result = tissue.classes_from_priors(priors, mask, affine)
            record.update(Succeeded=False, Reason=str(error))
        else:
            record.update(Succeeded=True, Reason="",
                          GMPriorDice=round(float(result.gm_prior_dice), 4))
        posteriors, labels = result.posteriors, result.labels
        record["VolumesML"] = {name: round(volume, 2)
                               for name, volume in result.volumes_ml.items()}
        self._results["tissue_dseg"] = save_array(
            labels.astype(np.uint8), affine, os.path.join(runtime.cwd, "tissue_dseg.nii"),
            dtype=np.uint8)
        table_path = os.path.join(runtime.cwd, "tissue_dseg.tsv")
        with open(table_path, "w") as stream:
            stream.write("index\tname\n" + "".join(
                f"{index}\t{TISSUE_NAMES[name]}\n" for name, index in tissue.LABELS.items()))
        self._results["tissue_table"] = table_path
        self._results["gm_probability"] = save_array(
            posteriors["gm"], affine, os.path.join(runtime.cwd, "gm_probability.nii"))
        self._results["tissue"] = record
        return runtime


class _RestrictCortexInputSpec(BaseInterfaceInputSpec):
    labels = File(exists=True, mandatory=True, desc="atlas labels on the native grid")
    atlas_table = File(exists=True, mandatory=True, desc="atlas TSV")
    gm_probability = File(exists=True, mandatory=True, desc="grey-matter probability (native)")
    cortical_regions = traits.List(traits.Str, mandatory=True,
                                   desc="names of the regions kept on grey matter only")


class _RestrictCortexOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="labels with cortical voxels outside grey matter cleared")


class RestrictCortex(SimpleInterface):
    """Cortical labels restricted to the participant's grey matter
    (:func:`qsmprep.tissue.restrict_to_grey_matter`)."""

    input_spec = _RestrictCortexInputSpec
    output_spec = _RestrictCortexOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.atlases import read_atlas_table

        from ..tissue import restrict_to_grey_matter

        image = nib.load(self.inputs.labels)
        labels = np.asarray(image.dataobj)
        restricted = restrict_to_grey_matter(
            labels, read_atlas_table(self.inputs.atlas_table),
            load_array(self.inputs.gm_probability),
            cortical_regions=list(self.inputs.cortical_regions))
        self._results["out_file"] = save_array(
            restricted, image.affine, os.path.join(runtime.cwd, "labels_grey_matter.nii"),
            dtype=labels.dtype)
        return runtime
