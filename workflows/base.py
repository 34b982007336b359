"""The top of the graph: one sub-workflow per participant, one per run inside it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import nibabel as nib

from nipype.pipeline import engine as pe

from qsmprep.bids.derivatives import derivative_path
from qsmprep.errors import BadDataError, MissingInputError
from qsmprep.qsm.echo_fit import equally_spaced

from .outputs import init_ds_qsm_wf
from .qsm import init_qsm_wf

LOGGER = logging.getLogger("qsmprep")


def init_qsmprep_wf(*, config, runs):
    """Build the participant-level graph for all ``runs``.

    Parameters
    ----------
    config : :class:`qsmprep.config.Config`
        The run's configuration (folders, nipype and workflow sections).
    runs : list of :class:`qsmprep.bids.discovery.Run`
        The runs found by :func:`qsmprep.bids.discovery.discover_runs`.

    Returns
    -------
    nipype Workflow named ``qsmprep_wf`` with ``base_dir`` set to the work folder, holding one
    ``sub_<label>_wf`` per participant.
    """
    workflow = pe.Workflow(name="qsmprep_wf", base_dir=config.execution.work_dir)
    for subject in sorted({run.subject for run in runs}):
        subject_runs = [run for run in runs if run.subject == subject]
        workflow.add_nodes([init_participant_wf(config=config, subject=subject,
                                                runs=subject_runs)])
    return workflow


def init_participant_wf(*, config, subject, runs, name=None):
    """All runs of one participant (every session), each in its own ``init_run_wf``.

    Inputs / Outputs: none; every run is self-contained and writes its own derivatives.
    """
    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    workflow.add_nodes([init_run_wf(config=config, run=run) for run in runs])
    return workflow


def init_run_wf(*, config, run, name=None):
    """Reconstruct one run and write its derivatives.

    Parameters
    ----------
    config : :class:`qsmprep.config.Config`
    run : :class:`qsmprep.bids.discovery.Run`

    The run's files and metadata are set as node inputs here, so the graph has no inputs.
    """
    workflow = pe.Workflow(name=name or f"run_{run.name.replace('-', '_')}_wf")
    user_mask = find_user_mask(config.execution.brain_mask_dir, run)
    workflow_config = choices_for_run(config.workflow, run)
    qsm_wf = init_qsm_wf(
        echo_times=list(run.echo_times_s),
        field_strength_t=run.field_strength_t,
        workflow_config=workflow_config,
        omp_nthreads=config.nipype.omp_nthreads,
        shape=run.shape,
        voxel_size=run.voxel_size,
        use_user_mask=user_mask is not None,
    )
    inputs = qsm_wf.get_node("inputnode").inputs
    for name, value in run.load_arguments.items():
        setattr(inputs, name, value or "")
    if user_mask is not None:
        inputs.user_mask = str(user_mask)

    ds_wf = init_ds_qsm_wf(
        run=run,
        bids_dir=config.execution.bids_dir,
        output_dir=config.execution.output_dir,
        stage_parameters=_stage_parameters(workflow_config, run, user_mask),
        has_r2star=len(run.echoes) >= 2,
        has_csf_reference=workflow_config.reference == "csf",
    )
    fields = ["chimap", "brain_mask", "quality_mask", "local_field_mask", "total_field_hz",
              "local_field_hz", "metadata"]
    if workflow_config.reference == "csf":
        fields.append("csf_mask")
    if len(run.echoes) >= 2:
        fields += ["r2star", "t2star"]
    workflow.connect([
        (qsm_wf, ds_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in fields]),
    ])
    return workflow


def find_user_mask(mask_dir, run):
    """The user's brain mask for ``run`` in ``mask_dir`` (same entities as the run), or None."""
    if not mask_dir:
        return None
    relative = derivative_path(run.entities, suffix="mask", desc="brain")
    for candidate in (Path(mask_dir) / relative, Path(mask_dir) / relative.replace(".gz", "")):
        if candidate.is_file():
            mask_shape = nib.load(candidate).shape
            if tuple(mask_shape[:3]) != tuple(run.shape) or len(mask_shape) > 3:
                raise BadDataError(
                    f"--brain-mask-dir: {candidate} has shape {mask_shape}, but {run.name} has "
                    f"{tuple(run.shape)}; the mask must be on the run's voxel grid")
            return candidate
    raise MissingInputError(
        f"--brain-mask-dir: no brain mask for {run.name}; expected {Path(mask_dir) / relative}")


def choices_for_run(workflow_config, run):
    """``workflow_config`` with the choices this run cannot use replaced, with a warning.

    ARLO needs three or more equally spaced echoes (else the log-linear R2* fit is used); the
    CSF reference needs an R2* map, so two echoes or more (else the whole brain is used).
    """
    echo_times = run.echo_times_s
    changes = {}
    if workflow_config.r2star == "arlo" and not (len(echo_times) >= 3
                                                  and equally_spaced(echo_times)):
        LOGGER.warning("%s: ARLO needs 3 or more equally spaced echoes; using the log-linear "
                       "R2* fit.", run.name)
        changes["r2star"] = "loglinear"
    if workflow_config.reference == "csf" and len(echo_times) < 2:
        LOGGER.warning("%s: the CSF reference needs R2* (two echoes or more); referencing to "
                       "the whole brain.", run.name)
        changes["reference"] = "whole-brain"
    return dataclasses.replace(workflow_config, **changes) if changes else workflow_config


def _stage_parameters(workflow_config, run, user_mask):
    parameters = workflow_config.stage_parameters(run.voxel_size)
    if user_mask is not None:
        parameters["Masking"] = {"Algorithm": "user-supplied", "File": str(user_mask)}
    return parameters
