"""Template registration and regional statistics of one run."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.config import DEFAULT_SEED
from qsmprep.interfaces.regions import RegionalStatistics
from qsmprep.interfaces.tissue import ClassifyTissue, RestrictCortex
from qsmprep.interfaces.registration import (
    ApplyTransformToTemplate,
    LabelsToNative,
    PlotRegistration,
    PrepareMovingImage,
    RefineDeepGreyRegistration,
    RegisterToTemplate,
)

from . import memory_gb


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
                      mem_gb=memory_gb(_TEMPLATE_VOXELS, 8))
    register = pe.Node(
        RegisterToTemplate(template=template_t1w, template_mask=template_mask, seed=seed,
                           num_threads=omp_nthreads),
        name="register_to_template", n_procs=omp_nthreads,
        mem_gb=memory_gb(_TEMPLATE_VOXELS, 60))
    if t1w:
        register.inputs.t1w = t1w
    quality = pe.Node(niu.Function(function=_quality_scores,
                                   input_names=["nmi", "dice_brain"],
                                   output_names=["quality"]),
                      name="registration_quality", run_without_submitting=True)
    plot = pe.Node(PlotRegistration(template=template_t1w), name="plot_registration",
                   mem_gb=memory_gb(_TEMPLATE_VOXELS, 8))

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


def init_nuclei_refinement_wf(*, seed, omp_nthreads, name="nuclei_refinement_wf"):
    """Refine the registration at the deep grey matter with the participant's Chimap.

    The small iron-rich nuclei barely show on the magnitude that drives the first registration;
    they are the brightest structures of the Chimap. A SyN stage registers the Chimap (through
    the first registration) to a template-space susceptibility prior on a box around the deep
    grey matter (:func:`qsmprep.refinement.refine_deep_grey_registration`); a refinement that
    diverges, or an atlas without deep grey-matter regions, leaves the first registration in
    place, saying so in the log, the sidecars and the report's quality control.

    Parameters
    ----------
    seed : int
        ANTs random seed.
    omp_nthreads : int
        Threads of ANTs.

    Inputs
    ------
    atlas_labels, atlas_table : str
        The atlas in template space and its TSV (the prior is painted from it).
    chimap, chimap_mask : str
        The native Chimap and the mask where it is defined.
    forward_transform, inverse_transform : str
        The first registration.
    quality : dict
        The first registration's quality scores.

    Outputs
    -------
    forward_transform, inverse_transform : str
        The refined transforms (or the first ones).
    quality : dict
        ``quality`` with ``deep_grey_refinement`` added (accepted, reason, measures).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "atlas_labels", "atlas_table", "chimap", "chimap_mask", "forward_transform",
        "inverse_transform", "quality"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "forward_transform", "inverse_transform", "quality"]), name="outputnode")
    refine = pe.Node(
        RefineDeepGreyRegistration(seed=seed, num_threads=omp_nthreads),
        name="refine_deep_grey", n_procs=omp_nthreads, mem_gb=memory_gb(_TEMPLATE_VOXELS, 12))
    merge = pe.Node(niu.Function(function=_with_refinement, input_names=["quality", "refinement"],
                                 output_names=["quality"]),
                    name="refinement_quality", run_without_submitting=True)
    workflow.connect([
        (inputnode, refine, [("atlas_labels", "atlas_labels"), ("atlas_table", "atlas_table"),
                             ("chimap", "chimap"), ("chimap_mask", "chimap_mask"),
                             ("forward_transform", "forward_transform"),
                             ("inverse_transform", "inverse_transform")]),
        (inputnode, merge, [("quality", "quality")]),
        (refine, merge, [("refinement", "refinement")]),
        (refine, outputnode, [("forward_transform", "forward_transform"),
                              ("inverse_transform", "inverse_transform")]),
        (merge, outputnode, [("quality", "quality")]),
    ])
    return workflow


def _with_refinement(quality, refinement):
    """The registration quality with the deep grey-matter refinement's record added."""
    return {**quality, "deep_grey_refinement": refinement}


def _quality_scores(nmi, dice_brain):
    """Registration quality for the sidecars: normalised mutual information (1 to 2, inside the
    template mask) and Dice of the registered brain mask and the template's."""
    return {"nmi": round(float(nmi), 4), "dice_brain": round(float(dice_brain), 4)}


def init_regions_wf(*, template_t1w, template_mask, composites, cortical_regions=(),
                    depth_regions=None, seed=DEFAULT_SEED, template_stats=False,
                    name="regions_wf"):
    """Tissue classes, atlas into native space, Chimap into template space, and regional
    statistics.

    Parameters
    ----------
    template_t1w, template_mask : str
        The template (grid of the template-space outputs) and its brain mask (grid of the
        tissue priors).
    composites : dict
        Regions reported as unions of atlas regions.
    cortical_regions : sequence of str
        Atlas regions kept on the participant's grey matter only (empty: no restriction).
    depth_regions : dict, optional
        Region -> atlas regions whose grey matter is also measured as a superficial and a deep
        half (:mod:`qsmprep.depth`; the motor cortex of the ALS profile).
    seed : int
        Seed of the tissue classification's tie-breaking.
    template_stats : bool
        Also measure the regions on the template-space Chimap.

    Inputs
    ------
    atlas_labels, atlas_table : str
        The atlas in template space and its TSV.
    chimap, local_field_mask : str
        The referenced Chimap and the mask where it is defined (native).
    magnitude, brain_mask : str
        The echo magnitudes and the brain mask (native): the first echo inside the brain
        feeds the tissue classification, which so runs beside the dipole inversion.
    forward_transform, inverse_transform : str
        From :func:`init_registration_wf` (or its refinement).
    tissue_inverse_transform : str
        The template -> native transform that carries the tissue priors (the first
        registration's: the deep grey-matter refinement does not move the cortex, and the
        classification then runs beside the refinement).

    Outputs
    -------
    native_labels : str
        The atlas on the native grid (cortical regions on grey matter only).
    tissue_dseg, tissue_table : str
        The participant's tissue classes (1 CSF, 2 grey matter, 3 white matter) and their TSV.
    template_chimap : str
        The Chimap in template space.
    regional_table, template_regional_table : str
        Regional statistics TSVs (native; template space when ``template_stats``).
    regional_metadata, template_regional_metadata : dict
        Reference values, coverage and the tissue classification's record, for the sidecars.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "atlas_labels", "atlas_table", "chimap", "local_field_mask", "magnitude", "brain_mask",
        "forward_transform", "inverse_transform", "tissue_inverse_transform"]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "native_labels", "tissue_dseg", "tissue_table", "template_chimap", "regional_table",
        "regional_metadata", "template_regional_table", "template_regional_metadata"]),
        name="outputnode")

    to_native = pe.Node(LabelsToNative(), name="atlas_to_native",
                        mem_gb=memory_gb(_TEMPLATE_VOXELS, 10))
    tissue = pe.Node(ClassifyTissue(template_mask=template_mask, seed=seed),
                     name="classify_tissue", mem_gb=memory_gb(_TEMPLATE_VOXELS, 24))
    to_template = pe.Node(ApplyTransformToTemplate(template=template_t1w),
                          name="chimap_to_template", mem_gb=memory_gb(_TEMPLATE_VOXELS, 10))
    stats = pe.Node(RegionalStatistics(composites=composites,
                                       depth_regions=dict(depth_regions or {})),
                    name="regional_statistics", mem_gb=memory_gb(_TEMPLATE_VOXELS, 8))
    workflow.connect([
        (inputnode, to_native, [("atlas_labels", "labels"), ("chimap", "reference"),
                                ("inverse_transform", "transforms")]),
        (inputnode, tissue, [("magnitude", "magnitude"), ("brain_mask", "mask"),
                             ("tissue_inverse_transform", "inverse_transforms")]),
        (inputnode, to_template, [("chimap", "in_file"), ("forward_transform", "transforms")]),
        (inputnode, stats, [("atlas_table", "atlas_table"), ("chimap", "chimap"),
                            ("local_field_mask", "mask")]),
        (tissue, stats, [("tissue_dseg", "tissue_dseg"), ("tissue_table", "tissue_table"),
                         ("tissue", "tissue")]),
        (tissue, outputnode, [("tissue_dseg", "tissue_dseg"), ("tissue_table", "tissue_table")]),
        (to_template, outputnode, [("out_file", "template_chimap")]),
        (stats, outputnode, [("out_table", "regional_table"),
                             ("metadata", "regional_metadata")]),
    ])
    if cortical_regions:
        restrict = pe.Node(RestrictCortex(cortical_regions=list(cortical_regions)),
                           name="cortex_on_grey_matter", mem_gb=memory_gb(_TEMPLATE_VOXELS, 4))
        workflow.connect([
            (inputnode, restrict, [("atlas_table", "atlas_table")]),
            (to_native, restrict, [("out_file", "labels")]),
            (tissue, restrict, [("gm_probability", "gm_probability")]),
            (restrict, stats, [("out_file", "labels")]),
            (restrict, outputnode, [("out_file", "native_labels")]),
        ])
    else:
        workflow.connect([(to_native, stats, [("out_file", "labels")]),
                          (to_native, outputnode, [("out_file", "native_labels")])])
    if template_stats:
        template_regions = pe.Node(
            RegionalStatistics(composites=composites),
            name="template_regional_statistics", mem_gb=memory_gb(_TEMPLATE_VOXELS, 6))
        workflow.connect([
            (inputnode, template_regions, [("atlas_labels", "labels"),
                                           ("atlas_table", "atlas_table")]),
            (to_template, template_regions, [("out_file", "chimap")]),
            (template_regions, outputnode, [("out_table", "template_regional_table"),
                                            ("metadata", "template_regional_metadata")]),
        ])
    return workflow
