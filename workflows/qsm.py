"""The QSM reconstruction graph of one run: from echoes on disk to a referenced Chimap.

Only computation happens here; :mod:`qsmprep.workflows.outputs` writes the derivatives. One
node per stage, named after it (:data:`qsmprep.stages.STAGES`); each runs the stage function of :mod:`qsmprep.qsm.pipeline` with the
parameters :func:`qsmprep.qsm.pipeline.stage_arguments` gives, the same functions and
parameters that :func:`qsmprep.qsm.pipeline.reconstruct` chains on arrays.
"""

from __future__ import annotations

import math

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.bids import LoadMultiEcho
from qsmprep.interfaces.qsm import (
    BrainMask,
    FitEchoes,
    FitR2star,
    InvertDipole,
    QualityMask,
    ReferenceSusceptibility,
    RemoveBackground,
    UnwrapPhase,
)
from qsmprep.qsm.pipeline import stage_arguments

from . import memory_gb

#: Nodes hold about this many float32 copies of one 3-D volume per echo (measured peak / size).
_COPIES_PER_ECHO_VOLUME = 6
#: Dipole inversion works on a grid padded to about twice the size along each axis.
_INVERSION_COPIES = 40


def merge_metadata(loading: dict, inversion: dict, reference: dict) -> dict:
    """Sidecar fields computed while running, merged for the derivatives writers."""
    from qsmprep.bids.derivatives import merged_metadata

    return merged_metadata(loading, inversion, reference)


def init_qsm_wf(*, echo_times, field_strength_t, workflow_config, omp_nthreads, shape,
                voxel_size, use_user_mask=False, name="qsm_wf"):
    """Build the reconstruction of one multi-echo (or single-echo) GRE run.

    Stages: load and scale -> brain mask -> unwrapping -> echo fit (total field) ->
    background removal (local field) -> dipole inversion -> referencing, and R2*/T2* from the
    magnitudes when there are at least two echoes.

    Parameters
    ----------
    echo_times : list of float
        Echo times in seconds, ascending, one per echo of the run.
    field_strength_t : float
        Main field strength (T).
    workflow_config : :class:`qsmprep.config.WorkflowConfig`
        Algorithm choices and parameters.
    omp_nthreads : int
        Threads for FFT-heavy nodes.
    shape, voxel_size : tuple
        Matrix and voxel size (mm) of the run, for the V-SHARP radii and memory hints.
    use_user_mask : bool
        Take the brain mask from ``inputnode.user_mask`` instead of computing it.

    Inputs
    ------
    magnitude_files, phase_files, real_files, imaginary_files : lists of str
        Echo images (either magnitude/phase or real/imaginary).
    phase_units : str
        'rad', 'arbitrary' or '' (infer).
    user_mask : str
        Path of a user-supplied brain mask (when ``use_user_mask``).

    Outputs
    -------
    brain_mask, quality_mask, total_field_hz, fit_residual, local_field_hz, local_field_mask,
    chimap, csf_mask, r2star, t2star : str
        Images in the run's native space (R2*/T2* undefined for single-echo runs, the CSF mask
        only where the ventricles were found).
    magnitude : str
        The echo magnitudes (4D, scaled as loaded), for registration.
    metadata : dict
        Values found while running (phase units, B0 direction, the automatic TV weight and
        its L-curve, reference value).
    """
    config = workflow_config
    echo_count = len(echo_times)
    voxel_count = math.prod(shape)
    volume_mem = memory_gb(voxel_count, _COPIES_PER_ECHO_VOLUME * echo_count)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "magnitude_files", "phase_files", "real_files", "imaginary_files", "phase_units",
        "user_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "brain_mask", "quality_mask", "total_field_hz", "fit_residual", "local_field_hz",
        "local_field_mask", "chimap", "csf_mask", "r2star", "t2star", "magnitude", "metadata"]),
        name="outputnode")

    # the stage parameters of this run, as reconstruct() on arrays gets them
    arguments = stage_arguments(config)
    load = pe.Node(LoadMultiEcho(), name="load_echoes", mem_gb=volume_mem)
    mask = pe.Node(BrainMask(**arguments["masking"]), name="masking", mem_gb=volume_mem)
    unwrap = pe.Node(UnwrapPhase(echo_times=list(echo_times), num_threads=omp_nthreads,
                                 **arguments["unwrapping"]),
                     name="unwrapping", n_procs=omp_nthreads,
                     mem_gb=memory_gb(voxel_count, 16 + 2 * echo_count))
    fit = pe.Node(FitEchoes(echo_times=list(echo_times), **arguments["echo_fit"]),
                  name="echo_fit", mem_gb=volume_mem)
    quality = pe.Node(QualityMask(**arguments["quality_mask"]), name="quality_mask",
                      mem_gb=volume_mem)
    bg_removal = pe.Node(
        RemoveBackground(num_threads=omp_nthreads, **arguments["background_removal"]),
        name="background_removal", n_procs=omp_nthreads,
        mem_gb=memory_gb(voxel_count, _INVERSION_COPIES))
    invert = pe.Node(
        InvertDipole(field_strength_t=field_strength_t, echo_times=list(echo_times),
                     num_threads=omp_nthreads, **arguments["inversion"]),
        name="inversion", n_procs=omp_nthreads,
        mem_gb=memory_gb(voxel_count, _INVERSION_COPIES))
    reference = pe.Node(ReferenceSusceptibility(**arguments["referencing"]),
                        name="referencing", mem_gb=memory_gb(voxel_count, 4))
    metadata = pe.Node(niu.Function(function=merge_metadata,
                                    input_names=["loading", "inversion", "reference"],
                                    output_names=["metadata"]),
                       name="merge_metadata", run_without_submitting=True)

    workflow.connect([
        (inputnode, load, [("magnitude_files", "magnitude_files"), ("phase_files", "phase_files"),
                           ("real_files", "real_files"), ("imaginary_files", "imaginary_files"),
                           ("phase_units", "phase_units")]),
        (load, mask, [("magnitude", "magnitude"), ("invalid_voxels", "invalid_voxels")]),
        (load, unwrap, [("phase", "phase"), ("magnitude", "magnitude")]),
        (mask, unwrap, [("mask", "mask")]),
        (load, fit, [("magnitude", "magnitude"), ("phase", "phase")]),
        (unwrap, fit, [("unwrapped_phase", "unwrapped_phase")]),
        (mask, fit, [("mask", "mask")]),
        (mask, quality, [("mask", "brain_mask")]),
        (fit, quality, [("residual", "residual")]),
        (fit, bg_removal, [("total_field_hz", "total_field_hz")]),
        (quality, bg_removal, [("mask", "mask")]),
        (bg_removal, invert, [("local_field_hz", "local_field_hz"), ("mask", "mask")]),
        (load, invert, [("magnitude", "magnitude")]),
        (invert, reference, [("susceptibility_ppm", "susceptibility_ppm")]),
        (bg_removal, reference, [("mask", "brain_mask")]),
        (load, metadata, [("metadata", "loading")]),
        (invert, metadata, [("metadata", "inversion")]),
        (reference, metadata, [("metadata", "reference")]),
        (load, outputnode, [("magnitude", "magnitude")]),
        (mask, outputnode, [("mask", "brain_mask")]),
        (quality, outputnode, [("mask", "quality_mask")]),
        (reference, outputnode, [("csf_mask", "csf_mask")]),
        (fit, outputnode, [("total_field_hz", "total_field_hz"), ("residual", "fit_residual")]),
        (bg_removal, outputnode, [("local_field_hz", "local_field_hz"),
                                  ("mask", "local_field_mask")]),
        (reference, outputnode, [("chimap", "chimap")]),
        (metadata, outputnode, [("metadata", "metadata")]),
    ])
    if use_user_mask:
        workflow.connect(inputnode, "user_mask", mask, "user_mask")

    if echo_count >= 2:
        r2star = pe.Node(FitR2star(echo_times=list(echo_times), **arguments["r2star"]),
                         name="r2star", mem_gb=volume_mem)
        workflow.connect([
            (load, r2star, [("magnitude", "magnitude")]),
            (mask, r2star, [("mask", "mask")]),
            (r2star, reference, [("r2star", "r2star")]),
            (r2star, outputnode, [("r2star", "r2star"), ("t2star", "t2star")]),
        ])
    return workflow

