"""Nipype interface for regional statistics: a thin wrapper around :mod:`qsmprep.regions`."""

from __future__ import annotations

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

from .. import regions
from ..imageio import load_array, load_mask, voxel_size_from_affine


class _RegionalStatisticsInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="referenced susceptibility map (ppm)")
    labels = File(exists=True, mandatory=True, desc="atlas labels on the Chimap's grid")
    atlas_table = File(exists=True, mandatory=True, desc="atlas TSV (index, name, hemisphere)")
    mask = File(exists=True, desc="voxels where the Chimap is defined (default: Chimap != 0)")
    composites = traits.Dict(desc="region -> list of regions reported as their union")
    tissue_dseg = File(exists=True, desc="tissue classes on the Chimap's grid: their rows are "
                       "added to the table")
    tissue_table = File(exists=True, desc="TSV of tissue_dseg (index, name)")
    tissue = traits.Dict(desc="the tissue classification's record, for the sidecar")
    depth_regions = traits.Dict(desc="region -> atlas regions whose grey matter is also "
                                "reported as a superficial and a deep half (needs tissue_dseg)")


class _RegionalStatisticsOutputSpec(TraitedSpec):
    out_table = File(exists=True, desc="regional statistics TSV (ppb)")
    metadata = traits.Dict(desc="reference values and region coverage, for the sidecar")


class RegionalStatistics(SimpleInterface):
    """Statistics of every atlas region, per hemisphere and reference
    (:func:`qsmprep.regions.regional_statistics`); the CSF reference is the atlas' lateral
    ventricles (:func:`qsmprep.regions.csf_reference_from_labels`)."""

    input_spec = _RegionalStatisticsInputSpec
    output_spec = _RegionalStatisticsOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.atlases import read_atlas_table

        image = nib.load(self.inputs.chimap)
        chi_ppm = load_array(self.inputs.chimap)
        labels = np.rint(load_array(self.inputs.labels)).astype(np.int32)
        if labels.shape != chi_ppm.shape:
            raise ValueError(f"labels {self.inputs.labels} {labels.shape} are not on the grid of "
                             f"{self.inputs.chimap} {chi_ppm.shape}")
        mask = (load_mask(self.inputs.mask) if isdefined(self.inputs.mask)
                else chi_ppm != 0) & np.isfinite(chi_ppm)
        table = read_atlas_table(self.inputs.atlas_table)
        csf_mask = regions.csf_reference_from_labels(labels, table, mask)
        offsets_ppm = regions.reference_offsets(chi_ppm, mask, csf_mask)
        composites = dict(self.inputs.composites) if isdefined(self.inputs.composites) else {}
        rows = regions.regional_statistics(
            chi_ppm, labels, table, mask=mask, voxel_size=voxel_size_from_affine(image.affine),
            offsets_ppm=offsets_ppm, composites=composites)
        if isdefined(self.inputs.tissue_dseg):
            tissue_labels = np.rint(load_array(self.inputs.tissue_dseg)).astype(np.int32)
            tissue_rows = [{**row, "hemisphere": "bilateral"}
                           for row in read_atlas_table(self.inputs.tissue_table)]
            rows += regions.regional_statistics(
                chi_ppm, tissue_labels, tissue_rows, mask=mask,
                voxel_size=voxel_size_from_affine(image.affine), offsets_ppm=offsets_ppm)
            if isdefined(self.inputs.depth_regions) and self.inputs.depth_regions:
                from ..depth import cortical_depth, depth_half_labels

                depth = cortical_depth(tissue_labels, voxel_size_from_affine(image.affine))
                half_labels, half_rows = depth_half_labels(
                    labels, table, depth, dict(self.inputs.depth_regions))
                rows += regions.regional_statistics(
                    chi_ppm, half_labels, half_rows, mask=mask,
                    voxel_size=voxel_size_from_affine(image.affine), offsets_ppm=offsets_ppm)
        out_table = os.path.join(runtime.cwd, "regions.tsv")
        regions.write_regional_table(rows, out_table)

        labelled = np.isin(labels, [row["index"] for row in table])
        self._results["out_table"] = out_table
        self._results["metadata"] = {
            "ReferenceValues": {
                name: {"ValuePPB": round(value * 1e3, 3),
                       "Region": ("reconstruction mask (whole brain)" if name == "whole-brain"
                                  else "atlas lateral ventricles inside the mask, eroded by one "
                                  "voxel"),
                       "NumberOfVoxels": int(np.count_nonzero(mask if name == "whole-brain"
                                                              else csf_mask))}
                for name, value in offsets_ppm.items()},
            "LabelledVoxelsInsideMask": round(
                float(np.count_nonzero(labelled & mask)) / max(1, np.count_nonzero(labelled)), 4),
            "CompositeRegions": {name: list(parts) for name, parts in composites.items()},
        }
        if isdefined(self.inputs.tissue):
            self._results["metadata"]["TissueClassification"] = dict(self.inputs.tissue)
        return runtime


class _BuildAtlasOutputSpec(TraitedSpec):
    labels = File(exists=True, desc="the qsmprep atlas on the template grid")
    table = File(exists=True, desc="its TSV (index, name, hemisphere, source, licence)")


class BuildAtlas(SimpleInterface):
    """The full qsmprep atlas, merged in the node's folder while the graph runs
    (:func:`qsmprep.atlases.load_atlas`; a few seconds, once per work folder)."""

    input_spec = BaseInterfaceInputSpec
    output_spec = _BuildAtlasOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.atlases import load_atlas

        labels, table = load_atlas(runtime.cwd)
        self._results["labels"] = os.fspath(labels)
        self._results["table"] = os.fspath(table)
        return runtime
