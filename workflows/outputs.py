"""Writing the derivatives of one run: names, sidecars and provenance, apart from computation."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.bids.derivatives import bids_uri, derivative_path
from qsmprep.interfaces.bids import WriteDerivative

#: (outputnode field, suffix, desc, units, is a mask, description) of each QSM derivative.
QSM_DERIVATIVES = (
    ("chimap", "Chimap", None, "ppm", False,
     "Magnetic susceptibility, referenced as stated in ReferenceRegion/ReferenceValue."),
    ("brain_mask", "mask", "brain", None, True,
     "Brain mask from the magnitude, without voxels whose input was not finite."),
    ("quality_mask", "mask", "phasequality", None, True,
     "Brain mask without voxels of poor phase quality (echo-fit residual); used for "
     "background removal."),
    ("csf_mask", "mask", "csf", None, True,
     "CSF reference region: the lateral ventricles, found as deep low-R2* voxels."),
    ("local_field_mask", "mask", "localfield", None, True,
     "Mask of the local field and the Chimap: the brain mask after background removal."),
    ("total_field_hz", "fieldmap", "total", "Hz", False,
     "Total field from the echo fit, before background removal."),
    ("local_field_hz", "fieldmap", "local", "Hz", False,
     "Local field after background field removal; defined inside the eroded mask."),
    ("r2star", "R2starmap", None, "1/s", False, "Effective transverse relaxation rate R2*."),
    ("t2star", "T2starmap", None, "s", False, "Effective transverse relaxation time T2*."),
)


def init_ds_qsm_wf(*, run, bids_dir, output_dir, stage_parameters, has_r2star=True,
                   has_csf_reference=False, name="ds_qsm_wf"):
    """Write the QSM derivatives of ``run`` into ``output_dir`` with BIDS names and sidecars.

    Every image gets a JSON sidecar with ``Units``, ``SkullStripped``, ``Sources`` (BIDS URIs),
    echo times, field strength, the algorithm and parameters of each stage, and the values
    found while running (``inputnode.metadata``: B0 direction, phase units, reference value).

    Parameters
    ----------
    run : :class:`qsmprep.bids.discovery.Run`
        The source run (its entities name the outputs).
    bids_dir, output_dir : str
        Roots of the input and derivatives datasets.
    stage_parameters : dict
        From :func:`qsmprep.qsm.pipeline.stage_parameters`.
    has_r2star : bool
        Whether R2*/T2* maps exist (two echoes or more).
    has_csf_reference : bool
        Whether the Chimap is referenced to CSF (then its mask is written).

    Inputs
    ------
    chimap, brain_mask, quality_mask, csf_mask, local_field_mask, total_field_hz,
    local_field_hz, r2star, t2star : str
        The images to write.
    metadata : dict
        Sidecar fields computed while running.

    Outputs
    -------
    chimap : str
        Path of the written Chimap (for later stages).
    """
    workflow = pe.Workflow(name=name)
    fields = [field for field, *_ in QSM_DERIVATIVES]
    inputnode = pe.Node(niu.IdentityInterface(fields=[*fields, "metadata"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["chimap"]), name="outputnode")

    raw_sources = [bids_uri(path, bids_dir, "raw") for echo in run.echoes
                   for path in (echo.magnitude, echo.phase, echo.real, echo.imaginary) if path]
    mask_uri = bids_uri(derivative_path(run.entities, suffix="mask", desc="brain"), output_dir, "")
    common = {
        "EchoTime": list(run.echo_times_s),
        "MagneticFieldStrength": run.field_strength_t,
        "QSMProcessing": stage_parameters,
    }
    for field, suffix, desc, units, is_mask, description in QSM_DERIVATIVES:
        if field in ("r2star", "t2star") and not has_r2star:
            continue
        if field == "csf_mask" and not has_csf_reference:
            continue
        metadata = {**common, "Description": description}
        if is_mask:
            metadata.update({"Type": "ROI" if field == "csf_mask" else "Brain",
                             "Sources": raw_sources})
        else:
            metadata.update({"Units": units, "SkullStripped": True,
                             "Sources": [*raw_sources, mask_uri]})
        node = pe.Node(
            WriteDerivative(output_dir=str(output_dir), entities=run.entities,
                                suffix=suffix, metadata=metadata, **({"desc": desc} if desc else {})),
            name=f"ds_{field}", run_without_submitting=True, mem_gb=0.2)
        workflow.connect([(inputnode, node, [(field, "in_file"), ("metadata", "extra_metadata")])])
        if field == "chimap":
            workflow.connect(node, "out_file", outputnode, "chimap")
    return workflow


def init_ds_regions_wf(*, run, output_dir, template, atlas_name, atlas_sources,
                       template_stats=False, name="ds_regions_wf"):
    """Write the registration and regional outputs of ``run``.

    Files (``<prefix>`` = the run's entities; ``<native>`` = its suffix, e.g. ``MEGRE``):
    ``<prefix>_from-<native>_to-<template>_mode-image_xfm.h5`` and its inverse,
    ``<prefix>_space-<template>_Chimap.nii.gz``, ``<prefix>_desc-<atlas>_dseg.nii.gz`` + ``.tsv``
    (the atlas on the native grid), ``<prefix>_desc-regions_stats.tsv`` + ``.json`` (and
    ``<prefix>_space-<template>_desc-regions_stats.tsv`` with ``template_stats``), and the
    figure ``sub-<label>/figures/<prefix>_desc-registration_T1w.svg``.

    Parameters
    ----------
    run : :class:`qsmprep.bids.discovery.Run`
    output_dir : str
    template : str
        Template name (the ``space``/``to`` label).
    atlas_name : str
        ``desc`` label of the native atlas (e.g. ``qsmprep``).
    atlas_sources : dict
        ``{"Atlas": ..., "AtlasTable": ..., "Template": ...}`` paths or names for the sidecars.
    template_stats : bool
        Whether template-space statistics exist.

    Inputs
    ------
    atlas_table : str
        The atlas's TSV, copied beside the native atlas.
    forward_transform, inverse_transform, template_chimap, native_labels, tissue_dseg,
    tissue_table, regional_table, template_regional_table, figure : str
    quality, regional_metadata, template_regional_metadata : dict

    Outputs
    -------
    regional_table, figure : str
        The written regional table and registration figure (for the report).
    """
    workflow = pe.Workflow(name=name)
    fields = ["atlas_table", "forward_transform", "inverse_transform", "template_chimap", "native_labels",
              "tissue_dseg", "tissue_table", "regional_table", "template_regional_table",
              "figure", "quality",
              "regional_metadata", "template_regional_metadata"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["regional_table", "figure"]),
                         name="outputnode")
    native = run.suffix
    chimap_uri = bids_uri(derivative_path(run.entities, suffix="Chimap"), output_dir, "")
    forward_relative = derivative_path(
        run.entities, suffix="xfm", extension=".h5",
        extra_entities={"from": native, "to": template, "mode": "image"})
    inverse_relative = derivative_path(
        run.entities, suffix="xfm", extension=".h5",
        extra_entities={"from": template, "to": native, "mode": "image"})
    dseg_relative = derivative_path(run.entities, suffix="dseg", desc=atlas_name)
    provenance = {
        **atlas_sources,
        "Transforms": {"NativeToTemplate": bids_uri(forward_relative, output_dir, ""),
                       "TemplateToNative": bids_uri(inverse_relative, output_dir, "")},
        "Sources": [chimap_uri, bids_uri(dseg_relative, output_dir, "")],
    }

    def sink(node_name, field, *, suffix, extension=".nii.gz", desc=None, space=None,
             extra_entities=None, metadata=None, extra_metadata_field=None, datatype_figures=False):
        options = {"extension": extension}
        if desc:
            options["desc"] = desc
        if space:
            options["space"] = space
        if extra_entities:
            options["extra_entities"] = extra_entities
        if metadata is not None:
            options["metadata"] = metadata
        if datatype_figures:
            options["datatype"] = "figures"
        interface = WriteDerivative(output_dir=str(output_dir), entities=run.entities,
                                        suffix=suffix, **options)
        node = pe.Node(interface, name=node_name, run_without_submitting=True, mem_gb=0.2)
        workflow.connect(inputnode, field, node, "in_file")
        if extra_metadata_field:
            workflow.connect(inputnode, extra_metadata_field, node, "extra_metadata")
        return node

    sink("ds_forward_transform", "forward_transform", suffix="xfm", extension=".h5",
         extra_entities={"from": native, "to": template, "mode": "image"})
    sink("ds_inverse_transform", "inverse_transform", suffix="xfm", extension=".h5",
         extra_entities={"from": template, "to": native, "mode": "image"})
    sink("ds_template_chimap", "template_chimap", suffix="Chimap", space=template,
         metadata={"Units": "ppm", "SkullStripped": True,
                   "Sources": [chimap_uri, bids_uri(forward_relative, output_dir, "")],
                   "Description": "The Chimap resampled into template space (linear)."})
    quality_metadata = pe.Node(niu.Function(function=_quality_metadata, input_names=["quality"],
                                            output_names=["metadata"]),
                               name="quality_metadata", run_without_submitting=True)
    workflow.connect([
        (inputnode, quality_metadata, [("quality", "quality")]),
        (quality_metadata, workflow.get_node("ds_template_chimap"), [("metadata",
                                                                      "extra_metadata")]),
    ])
    sink("ds_native_dseg", "native_labels", suffix="dseg", desc=atlas_name,
         metadata={**atlas_sources, "Description": "The atlas on the run's native grid "
                   "(inverse transform, generic-label interpolation, small nuclei kept).",
                   "Sources": [bids_uri(inverse_relative, output_dir, "")]})
    dseg_table = pe.Node(WriteDerivative(
        output_dir=str(output_dir), entities=run.entities, suffix="dseg", desc=atlas_name,
        extension=".tsv"), name="ds_native_dseg_table", run_without_submitting=True, mem_gb=0.2)
    workflow.connect(inputnode, "atlas_table", dseg_table, "in_file")

    sink("ds_tissue_dseg", "tissue_dseg", suffix="dseg", desc="tissue",
         metadata={"Description": "The participant's tissue classes: 1 CSF, 2 grey matter, 3 "
                   "white matter (Atropos on the first-echo magnitude, with the MNI ICBM "
                   "2009 priors carried to the native grid; the warped priors when the "
                   "classification failed its checks, see the regional table's sidecar). The "
                   "cortical regions are measured on its grey matter.",
                   "Sources": [bids_uri(inverse_relative, output_dir, "")]})
    sink("ds_tissue_dseg_table", "tissue_table", suffix="dseg", desc="tissue", extension=".tsv")

    merge = pe.Node(niu.Function(function=_stats_metadata,
                                 input_names=["provenance", "quality", "regional"],
                                 output_names=["metadata"]),
                    name="stats_metadata", run_without_submitting=True)
    merge.inputs.provenance = provenance
    workflow.connect([(inputnode, merge, [("quality", "quality"),
                                          ("regional_metadata", "regional")])])
    stats = sink("ds_regional_table", "regional_table", suffix="stats", desc="regions",
                 extension=".tsv", metadata={})
    workflow.connect([(merge, stats, [("metadata", "extra_metadata")]),
                      (stats, outputnode, [("out_file", "regional_table")])])
    if template_stats:
        template_merge = pe.Node(niu.Function(function=_stats_metadata,
                                              input_names=["provenance", "quality", "regional"],
                                              output_names=["metadata"]),
                                 name="template_stats_metadata", run_without_submitting=True)
        template_merge.inputs.provenance = {**provenance, "Space": template}
        workflow.connect([(inputnode, template_merge,
                           [("quality", "quality"), ("template_regional_metadata", "regional")])])
        template_table = sink("ds_template_regional_table", "template_regional_table",
                              suffix="stats", desc="regions", space=template, extension=".tsv",
                              metadata={})
        workflow.connect(template_merge, "metadata", template_table, "extra_metadata")
    figure = sink("ds_registration_figure", "figure", suffix="T1w", desc="registration",
                  extension=".svg", datatype_figures=True)
    workflow.connect(figure, "out_file", outputnode, "figure")
    return workflow


def _quality_metadata(quality):
    """Sidecar fields holding the registration quality scores."""
    return {"RegistrationQuality": quality}


def _stats_metadata(provenance, quality, regional):
    """Sidecar of a regional statistics table."""
    return {
        "Description": "Regional magnetic susceptibility (ppb) per region, hemisphere and "
                       "reference region; ai_pct = 200 (R - L) / (R + L), ai_abs_pct = "
                       "200 (R - L) / (|R| + |L|), on bilateral rows.",
        **provenance,
        "RegistrationQuality": quality,
        **regional,
    }
