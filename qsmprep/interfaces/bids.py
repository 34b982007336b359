"""Nipype interfaces at the edges of the graph: loading a BIDS run, writing derivatives."""

from __future__ import annotations

import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..bids.derivatives import merged_metadata, write_derivative
from ..bids.loading import load_multiecho
from ..imageio import b0_direction_from_affine, save_array, voxel_size_from_affine


class _LoadMultiEchoInputSpec(BaseInterfaceInputSpec):
    magnitude_files = InputMultiObject(File(exists=True), desc="one magnitude per echo")
    phase_files = InputMultiObject(File(exists=True), desc="one phase per echo")
    real_files = InputMultiObject(File(exists=True), desc="one real part per echo")
    imaginary_files = InputMultiObject(File(exists=True), desc="one imaginary part per echo")
    phase_units = traits.Str("", usedefault=True,
                             desc="'rad', 'arbitrary', or '' to infer from the values")


class _LoadMultiEchoOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc="4-D magnitude (echoes last)")
    phase = File(exists=True, desc="4-D wrapped phase in radians")
    invalid_voxels = File(exists=True, desc="voxels with NaN/inf in any input")
    metadata = traits.Dict(desc="what was found while loading, for the sidecars")


class LoadMultiEcho(SimpleInterface):
    """Stack the echoes of a run into 4-D magnitude and phase (radians)
    (:func:`qsmprep.bids.loading.load_multiecho`)."""

    input_spec = _LoadMultiEchoInputSpec
    output_spec = _LoadMultiEchoOutputSpec

    def _run_interface(self, runtime):
        def files(name):
            value = getattr(self.inputs, name)
            return list(value) if isdefined(value) and value else None

        data = load_multiecho(
            magnitude_files=files("magnitude_files"), phase_files=files("phase_files"),
            real_files=files("real_files"), imaginary_files=files("imaginary_files"),
            phase_units=self.inputs.phase_units or None)  # logs its own warnings

        def save(array, name, dtype=np.float32):
            return save_array(array, data.affine, os.path.join(runtime.cwd, name), dtype=dtype)

        self._results["magnitude"] = save(data.magnitude, "magnitude.nii")
        self._results["phase"] = save(data.phase, "phase.nii")
        self._results["invalid_voxels"] = save(data.invalid_voxels, "invalid_voxels.nii",
                                               dtype=np.uint8)
        self._results["metadata"] = {
            "PhaseUnits": data.phase_units,
            "B0Direction": [round(float(v), 6) for v in b0_direction_from_affine(data.affine)],
            "VoxelSizeMM": [round(float(v), 6) for v in voxel_size_from_affine(data.affine)],
            "InvalidInputVoxels": int(np.count_nonzero(data.invalid_voxels)),
        }
        if data.input_checks:
            self._results["metadata"]["InputChecks"] = dict(data.input_checks)
        return runtime


class _WriteDerivativeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the image to write")
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    entities = traits.Dict(mandatory=True, desc="BIDS entities of the source run")
    suffix = traits.Str(mandatory=True)
    desc = traits.Str(desc="desc- entity")
    space = traits.Str(desc="space- entity")
    extension = traits.Str(".nii.gz", usedefault=True,
                           desc="file extension; anything but .nii.gz is copied as it is")
    extra_entities = traits.Dict(desc="entities after desc-, in order (e.g. from/to/mode)")
    datatype = traits.Str("anat", usedefault=True, desc="folder: anat, or figures")
    metadata = traits.Dict(desc="sidecar fields known when the graph is built")
    extra_metadata = traits.Dict(desc="sidecar fields computed while running")


class _WriteDerivativeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the written file")
    out_meta = File(desc="its JSON sidecar, when one was written")


class WriteDerivative(SimpleInterface):
    """Write one image (or table, transform, figure) and its sidecar into the derivatives
    dataset with its BIDS name (:func:`qsmprep.bids.derivatives.write_derivative`). Named
    apart from niworkflows' ``DerivativesDataSink``, whose inputs differ (here: entities,
    suffix, desc, space and metadata, no source file). Always runs,
    so deleted outputs are restored on a re-run; writes are atomic. A non-image file gets a
    sidecar only when metadata is given."""

    input_spec = _WriteDerivativeInputSpec
    output_spec = _WriteDerivativeOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        metadata = None
        if isdefined(self.inputs.metadata) or isdefined(self.inputs.extra_metadata):
            metadata = merged_metadata(*(
                dict(value) for value in (self.inputs.metadata, self.inputs.extra_metadata)
                if isdefined(value)))
        image_path, sidecar_path = write_derivative(
            self.inputs.in_file, self.inputs.output_dir, dict(self.inputs.entities),
            suffix=self.inputs.suffix,
            desc=self.inputs.desc if isdefined(self.inputs.desc) else None,
            space=self.inputs.space if isdefined(self.inputs.space) else None,
            metadata=metadata, extension=self.inputs.extension,
            extra_entities=(dict(self.inputs.extra_entities)
                            if isdefined(self.inputs.extra_entities) else None),
            datatype=self.inputs.datatype)
        self._results["out_file"] = os.fspath(image_path)
        if sidecar_path is not None:
            self._results["out_meta"] = os.fspath(sidecar_path)
        return runtime
