"""Writing the derivatives of one run: names, sidecars and provenance, apart from computation."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.bids.derivatives import bids_uri, derivative_path
from qsmprep.interfaces.bids import DerivativesDataSink

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
        From :meth:`qsmprep.config.WorkflowConfig.stage_parameters`.
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
            DerivativesDataSink(output_dir=str(output_dir), entities=run.entities,
                                suffix=suffix, metadata=metadata, **({"desc": desc} if desc else {})),
            name=f"ds_{field}", run_without_submitting=True, mem_gb=0.2)
        workflow.connect([(inputnode, node, [(field, "in_file"), ("metadata", "extra_metadata")])])
        if field == "chimap":
            workflow.connect(node, "out_file", outputnode, "chimap")
    return workflow
