"""The top of the graph: one sub-workflow per participant, one per run inside it."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path

import nibabel as nib

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.bids.derivatives import derivative_path
from qsmprep.errors import BadDataError, MissingInputError
from qsmprep.qsm.echo_fit import equally_spaced
from qsmprep.qsm.pipeline import chooses_tv_weight, stage_parameters

from .outputs import init_ds_qsm_wf, init_ds_regions_wf
from .qsm import init_qsm_wf
from .registration import init_nuclei_refinement_wf, init_registration_wf, init_regions_wf
from .report import init_run_report_wf, init_subject_report_wf

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
    ``sub_<label>_wf`` per participant and, unless ``--qsm-only``, the atlas node that feeds
    them all (the built-in atlas is merged by it while the graph runs, not while it is built).
    """
    workflow = pe.Workflow(name="qsmprep_wf", base_dir=config.execution.work_dir)
    anatomy = atlas = None
    if not config.workflow.qsm_only:
        anatomy = resolve_anatomy(config)  # each participant adds its own methods text
        anatomy["date"] = datetime.date.today().isoformat()
        atlas = init_atlas_node(anatomy)
    for subject in sorted({run.subject for run in runs}):
        subject_runs = [run for run in runs if run.subject == subject]
        participant_wf = init_participant_wf(config=config, subject=subject,
                                             runs=subject_runs, anatomy=anatomy)
        workflow.add_nodes([participant_wf])
        if atlas is not None:
            workflow.connect(atlas, "labels", participant_wf, "inputnode.atlas_labels")
            workflow.connect(atlas, "table", participant_wf, "inputnode.atlas_table")
    return workflow


def resolve_anatomy(config) -> dict:
    """The template and atlas of this run (embedded or the user's), found once; no file is
    written.

    Returns a dict with ``template`` (name), ``template_t1w``, ``template_mask``,
    ``atlas_labels`` and ``atlas_table`` (the user's files; None for the qsmprep atlas, which
    :func:`init_atlas_node` builds while the graph runs), ``atlas_name`` (``qsmprep`` or
    ``custom``), ``composites`` (unions of regions reported as regions) and
    ``cortical_regions`` (regions measured on the participant's grey matter only; none for a
    user's atlas) and ``depth_regions`` (regions also measured as a superficial and a deep half
    of their grey matter; none for a user's atlas).
    """
    from qsmprep import atlases

    template = atlases.template_files(config.workflow.template)
    if config.workflow.atlas:
        labels, table = config.workflow.atlas, config.workflow.atlas_table
        atlas_name = "custom"
    else:
        labels = table = None
        atlas_name = "qsmprep"
    LOGGER.info("Template %s: %s; atlas: %s", config.workflow.template, template["T1w"],
                labels or "qsmprep (built in the work folder)")
    return {"template": config.workflow.template, "template_t1w": str(template["T1w"]),
            "template_mask": str(template["mask"]), "atlas_labels": labels,
            "atlas_table": table, "atlas_name": atlas_name,
            "composites": {name: list(parts)
                           for name, parts in atlases.COMPOSITE_REGIONS.items()},
            "cortical_regions": [] if config.workflow.atlas else list(atlases.CORTICAL_REGIONS),
            "depth_regions": {} if config.workflow.atlas else {
                name: list(atlases.COMPOSITE_REGIONS[name]) for name in atlases.DEPTH_REGIONS}}


def init_atlas_node(anatomy: dict):
    """The node whose outputs ``labels`` and ``table`` are the atlas: the qsmprep atlas,
    merged while the graph runs (:class:`qsmprep.interfaces.regions.BuildAtlas`), or the
    user's files."""
    from qsmprep.interfaces.regions import BuildAtlas

    if anatomy["atlas_labels"] is None:
        return pe.Node(BuildAtlas(), name="build_atlas", mem_gb=2.0)
    atlas = pe.Node(niu.IdentityInterface(fields=["labels", "table"]), name="atlas")
    atlas.inputs.labels = anatomy["atlas_labels"]
    atlas.inputs.table = anatomy["atlas_table"]
    return atlas


def sidecar_sources(anatomy: dict) -> dict:
    """The atlas and template as the derivatives' sidecars name them.

    A user's atlas, or a template found under ``TEMPLATEFLOW_HOME``, is named by its path. The
    built-in atlas (written into the work folder, which may be deleted) and the template
    embedded in qsmprep (inside the installation) are named by their file names, so that the
    sidecars point to no scratch or installation folder and are the same for every run of the
    same qsmprep version.
    """
    from qsmprep import atlases

    builtin_atlas = anatomy["atlas_name"] == "qsmprep"
    template_image = Path(anatomy["template_t1w"])
    embedded_template = template_image.parent == atlases.TEMPLATE_DIR
    return {
        "Atlas": atlases.FULL_LABELS_NAME if builtin_atlas else anatomy["atlas_labels"],
        "AtlasTable": atlases.FULL_TABLE_NAME if builtin_atlas else anatomy["atlas_table"],
        "Template": anatomy["template"],
        "TemplateImage": template_image.name if embedded_template else str(template_image),
    }


def init_participant_wf(*, config, subject, runs, anatomy=None, name=None):
    """All runs of one participant (every session), each in its own ``init_run_wf``, and,
    given ``anatomy``, the participant's report (its methods text counts this participant's
    runs and echoes).

    Inputs
    ------
    atlas_labels, atlas_table : str
        The atlas (given ``anatomy``), handed to every run.
    """
    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    if anatomy is not None:
        from qsmprep.boilerplate import methods_boilerplate

        # the participant's report describes the participant's own runs and echoes
        anatomy = {**anatomy, "methods_markdown": methods_boilerplate(config=config, runs=runs)}
    run_wfs = [init_run_wf(config=config, run=run, anatomy=anatomy) for run in runs]
    workflow.add_nodes(run_wfs)
    if anatomy is not None:
        inputnode = pe.Node(niu.IdentityInterface(fields=["atlas_labels", "atlas_table"]),
                            name="inputnode")
        report_wf = init_subject_report_wf(subject=subject, runs=runs,
                                           output_dir=config.execution.output_dir)
        for index, run_wf in enumerate(run_wfs, start=1):
            workflow.connect([
                (inputnode, run_wf, [("atlas_labels", "inputnode.atlas_labels"),
                                     ("atlas_table", "inputnode.atlas_table")]),
                (run_wf, report_wf, [("anatomy_wf.outputnode.report", f"inputnode.in{index}")]),
            ])
    return workflow


def init_run_wf(*, config, run, anatomy=None, name=None):
    """Reconstruct one run and write its derivatives; then, given ``anatomy``
    (:func:`resolve_anatomy`), register it to the template and measure the atlas regions
    (:func:`init_anatomy_wf`).

    Parameters
    ----------
    config : :class:`qsmprep.config.Config`
    run : :class:`qsmprep.bids.discovery.Run`
    anatomy : dict, optional
        Template and atlas; None stops after the QSM derivatives.

    Inputs
    ------
    atlas_labels, atlas_table : str
        The atlas (given ``anatomy``). The run's files and metadata are set as node inputs
        here.
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
        has_csf_reference=workflow_config.referencing == "csf",
    )
    fields = ["chimap", "brain_mask", "quality_mask", "local_field_mask", "total_field_hz",
              "local_field_hz", "metadata"]
    if workflow_config.referencing == "csf":
        fields.append("csf_mask")
    if len(run.echoes) >= 2:
        fields += ["r2star", "t2star"]
    workflow.connect([
        (qsm_wf, ds_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in fields]),
    ])
    if anatomy is not None:
        inputnode = pe.Node(niu.IdentityInterface(fields=["atlas_labels", "atlas_table"]),
                            name="inputnode")
        anatomy_wf = init_anatomy_wf(config=config, run=run, anatomy=anatomy,
                                     workflow_config=workflow_config)
        images = ["chimap", "local_field_mask", "magnitude", "brain_mask", "quality_mask",
                  "fit_residual", "metadata"] + (["r2star"] if len(run.echoes) >= 2 else [])
        workflow.connect([
            (inputnode, anatomy_wf, [("atlas_labels", "inputnode.atlas_labels"),
                                     ("atlas_table", "inputnode.atlas_table")]),
            (qsm_wf, anatomy_wf, [(f"outputnode.{image}", f"inputnode.{image}")
                                  for image in images]),
        ])
    return workflow


def init_anatomy_wf(*, config, run, anatomy, workflow_config, name="anatomy_wf"):
    """Registration to the template (refined at the deep grey matter), the atlas on the
    run's grid, regional statistics, their derivatives and the run's report.

    Parameters
    ----------
    config : :class:`qsmprep.config.Config`
    run : :class:`qsmprep.bids.discovery.Run`
    anatomy : dict
        From :func:`resolve_anatomy`, with ``methods_markdown`` and ``date``.
    workflow_config : :class:`qsmprep.config.WorkflowConfig`
        The choices this run was reconstructed with (:func:`choices_for_run`).

    Inputs
    ------
    atlas_labels, atlas_table : str
        The atlas in template space and its TSV.
    chimap, local_field_mask, magnitude, brain_mask, quality_mask, fit_residual, r2star : str
        From :func:`qsmprep.workflows.qsm.init_qsm_wf` (``r2star`` with two echoes or more).
    metadata : dict
        What the reconstruction found while running (for the report's QC).

    Outputs
    -------
    report : dict
        The run's report content, for the participant's report.
    """
    from qsmprep.reports.render import acquisition_summary

    if config.workflow.register_via_t1w and not run.t1w:
        LOGGER.warning("%s: no T1w image in this session; registering the magnitude directly "
                       "to the template.", run.name)
    has_r2star = len(run.echoes) >= 2
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "atlas_labels", "atlas_table", "chimap", "local_field_mask", "magnitude", "brain_mask",
        "quality_mask", "fit_residual", "r2star", "metadata"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["report"]), name="outputnode")

    registration_wf = init_registration_wf(
        template_t1w=anatomy["template_t1w"], template_mask=anatomy["template_mask"],
        seed=config.workflow.random_seed, omp_nthreads=config.nipype.omp_nthreads,
        t1w=run.t1w if config.workflow.register_via_t1w else None)
    regions_wf = init_regions_wf(
        template_t1w=anatomy["template_t1w"], template_mask=anatomy["template_mask"],
        composites=anatomy["composites"], cortical_regions=anatomy["cortical_regions"],
        depth_regions=anatomy.get("depth_regions"), seed=config.workflow.random_seed,
        template_stats=config.workflow.template_stats)
    ds_wf = init_ds_regions_wf(
        run=run, output_dir=config.execution.output_dir, template=anatomy["template"],
        atlas_name=anatomy["atlas_name"], atlas_sources=sidecar_sources(anatomy),
        template_stats=config.workflow.template_stats)
    atlas = [("atlas_labels", "inputnode.atlas_labels"),
             ("atlas_table", "inputnode.atlas_table")]
    transforms = [("outputnode.forward_transform", "inputnode.forward_transform"),
                  ("outputnode.inverse_transform", "inputnode.inverse_transform")]
    regional = [("outputnode.native_labels", "inputnode.native_labels"),
                ("outputnode.tissue_dseg", "inputnode.tissue_dseg"),
                ("outputnode.tissue_table", "inputnode.tissue_table"),
                ("outputnode.template_chimap", "inputnode.template_chimap"),
                ("outputnode.regional_table", "inputnode.regional_table"),
                ("outputnode.regional_metadata", "inputnode.regional_metadata")]
    if config.workflow.template_stats:
        regional += [("outputnode.template_regional_table", "inputnode.template_regional_table"),
                     ("outputnode.template_regional_metadata",
                      "inputnode.template_regional_metadata")]
    workflow.connect([
        (inputnode, registration_wf, [("magnitude", "inputnode.magnitude"),
                                      ("brain_mask", "inputnode.brain_mask")]),
        (inputnode, regions_wf, [*atlas, ("chimap", "inputnode.chimap"),
                                 ("local_field_mask", "inputnode.local_field_mask"),
                                 ("magnitude", "inputnode.magnitude"),
                                 ("brain_mask", "inputnode.brain_mask")]),
        (inputnode, ds_wf, [("atlas_table", "inputnode.atlas_table")]),
        (registration_wf, regions_wf, [("outputnode.inverse_transform",
                                        "inputnode.tissue_inverse_transform")]),
        (registration_wf, ds_wf, [("outputnode.figure", "inputnode.figure")]),
        (regions_wf, ds_wf, regional),
    ])
    registered = registration_wf  # the workflow whose outputnode holds the final transforms
    if config.workflow.nuclei_refinement:
        registered = init_nuclei_refinement_wf(
            seed=config.workflow.random_seed, omp_nthreads=config.nipype.omp_nthreads)
        workflow.connect([
            (inputnode, registered, [*atlas, ("chimap", "inputnode.chimap"),
                                     ("local_field_mask", "inputnode.chimap_mask")]),
            (registration_wf, registered, [*transforms,
                                           ("outputnode.quality", "inputnode.quality")]),
        ])
    workflow.connect([
        (registered, regions_wf, transforms),
        (registered, ds_wf, [*transforms, ("outputnode.quality", "inputnode.quality")]),
    ])

    report_wf = init_run_report_wf(
        run=run, output_dir=config.execution.output_dir,
        acquisition=acquisition_summary(run),
        provenance={"date": anatomy["date"], "command": config.execution.command_line,
                    "processing": stage_parameters(workflow_config, run.voxel_size)},
        methods_markdown=anatomy["methods_markdown"],
        reference_ranges=config.workflow.reference_ranges, has_r2star=has_r2star,
        has_lcurve=chooses_tv_weight(workflow_config))
    images = ["chimap", "magnitude", "brain_mask", "quality_mask", "fit_residual", "metadata",
              "atlas_table"]
    if has_r2star:
        images.append("r2star")
    workflow.connect([
        (inputnode, report_wf, [(image, f"inputnode.{image}") for image in images]),
        (regions_wf, report_wf, [("outputnode.native_labels", "inputnode.native_labels")]),
        (registered, report_wf, [("outputnode.quality", "inputnode.registration_quality")]),
        (ds_wf, report_wf, [("outputnode.regional_table", "inputnode.regional_table"),
                            ("outputnode.figure", "inputnode.registration_figure")]),
        (report_wf, outputnode, [("outputnode.report", "report")]),
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
    if workflow_config.referencing == "csf" and len(echo_times) < 2:
        LOGGER.warning("%s: the CSF reference needs R2* (two echoes or more); referencing to "
                       "the whole brain.", run.name)
        changes["referencing"] = "whole-brain"
    return dataclasses.replace(workflow_config, **changes) if changes else workflow_config


def _stage_parameters(workflow_config, run, user_mask):
    parameters = stage_parameters(workflow_config, run.voxel_size)
    if user_mask is not None:
        parameters["Masking"] = {"Algorithm": "user-supplied", "File": str(user_mask)}
    return parameters
