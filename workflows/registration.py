"""Template registration and regional statistics of one run."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.regions import RegionalStatistics
from qsmprep.interfaces.registration import (
    ApplyTransformToTemplate,
    LabelsToNative,
    PlotRegistration,
    PrepareMovingImage,
    RegisterToTemplate,
)


def _memory_gb(voxel_count: int, copies: float) -> float:
    return round(max(0.25, voxel_count * 4 * copies / 1024**3), 2)


#: Voxels of the 1 mm template grid (193 x 229 x 193).
_TEMPLATE_VOXELS = 193 * 229 * 193


def init_registration_wf(*, template_t1w, template_mask, seed, omp_nthreads, t1w=None,
                         name="registration_wf"):
    """Register the run's magnitude to the template (ANTs rigid + affine + SyN).

    Parameters
    ----------
    template_t1w, template_mask : str
        The template's brain-extracted T1 image and brain mask.
    seed : int
        ANTs random seed.
    omp_nthreads : int
        Threads of ANTs.
    t1w : str, optional
        The session's T1w image: register through it (magnitude -> T1w rigidly, T1w ->
        template), the T1w brain-extracted with the magnitude's mask carried over.

    Inputs
    ------
    magnitude : str
        The echo magnitudes (native space).
    brain_mask : str
        The native brain mask.

    Outputs
    -------
    forward_transform, inverse_transform : str
        Native -> template and template -> native transforms.
    warped_magnitude : str
        The prepared magnitude in template space.
    quality : dict
        Registration quality scores (normalised mutual information, Dice of brain masks).
    figure : str
        SVG of the template's edges over the warped magnitude.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["magnitude", "brain_mask"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "forward_transform", "inverse_transform", "warped_magnitude", "quality", "figure"]),
        name="outputnode")

    prepare = pe.Node(PrepareMovingImage(), name="prepare_magnitude",
                      mem_gb=_memory_gb(_TEMPLATE_VOXELS, 8))
    register = pe.Node(
        RegisterToTemplate(template=template_t1w, template_mask=template_mask, seed=seed,
                           num_threads=omp_nthreads),
        name="register_to_template", n_procs=omp_nthreads,
        mem_gb=_memory_gb(_TEMPLATE_VOXELS, 60))
    if t1w:
        register.inputs.t1w = t1w
    quality = pe.Node(niu.Function(function=_quality_scores,
                                   input_names=["nmi", "dice_brain"],
                                   output_names=["quality"]),
                      name="registration_quality", run_without_submitting=True)
    plot = pe.Node(PlotRegistration(template=template_t1w), name="plot_registration",
                   mem_gb=_memory_gb(_TEMPLATE_VOXELS, 8))

    workflow.connect([
        (inputnode, prepare, [("magnitude", "magnitude"), ("brain_mask", "mask")]),
        (prepare, register, [("prepared", "moving")]),
        (inputnode, register, [("brain_mask", "moving_mask")]),
        (register, quality, [("nmi", "nmi"), ("dice_brain", "dice_brain")]),
        (register, plot, [("warped", "warped")]),
        (register, outputnode, [("forward_transform", "forward_transform"),
                                ("inverse_transform", "inverse_transform"),
                                ("warped", "warped_magnitude")]),
        (quality, outputnode, [("quality", "quality")]),
        (plot, outputnode, [("out_report", "figure")]),
    ])
    return workflow


def _quality_scores(nmi, dice_brain):
    """Registration quality for the sidecars: normalised mutual information (1 to 2, inside the
    template mask) and Dice of the registered brain mask and the template's."""
    return {"nmi": round(float(nmi), 4), "dice_brain": round(float(dice_brain), 4)}


def init_regions_wf(*, template_t1w, atlas_labels, atlas_table, composites,
                    template_stats=False, name="regions_wf"):
    """Atlas into native space, Chimap into template space, and regional statistics.

    Parameters
    ----------
    template_t1w : str
        The template (grid of the template-space outputs).
    atlas_labels, atlas_table : str
        The atlas in template space and its TSV.
    composites : dict
        Regions reported as unions of atlas regions.
    template_stats : bool
        Also measure the regions on the template-space Chimap.

    Inputs
    ------
    chimap, local_field_mask : str
        The referenced Chimap and the mask where it is defined (native).
    forward_transform, inverse_transform : str
        From :func:`init_registration_wf`.

    Outputs
    -------
    native_labels : str
        The atlas on the native grid.
    template_chimap : str
        The Chimap in template space.
    regional_table, template_regional_table : str
        Regional statistics TSVs (native; template space when ``template_stats``).
    regional_metadata, template_regional_metadata : dict
        Reference values and coverage, for the sidecars.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "chimap", "local_field_mask", "forward_transform", "inverse_transform"]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "native_labels", "template_chimap", "regional_table", "regional_metadata",
        "template_regional_table", "template_regional_metadata"]), name="outputnode")

    to_native = pe.Node(LabelsToNative(labels=atlas_labels), name="atlas_to_native",
                        mem_gb=_memory_gb(_TEMPLATE_VOXELS, 10))
    to_template = pe.Node(ApplyTransformToTemplate(template=template_t1w),
                          name="chimap_to_template", mem_gb=_memory_gb(_TEMPLATE_VOXELS, 10))
    stats = pe.Node(RegionalStatistics(atlas_table=atlas_table, composites=composites),
                    name="regional_statistics", mem_gb=_memory_gb(_TEMPLATE_VOXELS, 6))
    workflow.connect([
        (inputnode, to_native, [("chimap", "reference"), ("inverse_transform", "transforms")]),
        (inputnode, to_template, [("chimap", "in_file"), ("forward_transform", "transforms")]),
        (inputnode, stats, [("chimap", "chimap"), ("local_field_mask", "mask")]),
        (to_native, stats, [("out_file", "labels")]),
        (to_native, outputnode, [("out_file", "native_labels")]),
        (to_template, outputnode, [("out_file", "template_chimap")]),
        (stats, outputnode, [("out_table", "regional_table"),
                             ("metadata", "regional_metadata")]),
    ])
    if template_stats:
        template_regions = pe.Node(
            RegionalStatistics(atlas_table=atlas_table, composites=composites,
                               labels=atlas_labels),
            name="template_regional_statistics", mem_gb=_memory_gb(_TEMPLATE_VOXELS, 6))
        workflow.connect([
            (to_template, template_regions, [("out_file", "chimap")]),
            (template_regions, outputnode, [("out_table", "template_regional_table"),
                                            ("metadata", "template_regional_metadata")]),
        ])
    return workflow
