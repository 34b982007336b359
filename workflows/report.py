"""The CBS differentiation report: per-run content and figures, one HTML page per subject."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.bids.derivatives import derivative_path
from qsmprep.interfaces.bids import WriteDerivative
from qsmprep.interfaces.reports import ReportFigures, RunReport, SubjectReport

#: (figure name, output field of ReportFigures, suffix, desc) of the run's QC mosaics.
REPORT_FIGURES = (("qsm", "Chimap", "mosaic"), ("mask", "mask", "brain"),
                  ("r2star", "R2starmap", "mosaic"), ("lcurve", "Chimap", "lcurve"))


def report_json_path(run, output_dir) -> str:
    """Where a run's report JSON goes: ``<prefix>_desc-cbs_report.json`` beside its tables."""
    return str(Path(output_dir) / derivative_path(run.entities, suffix="report", desc="cbs",
                                                  extension=".json"))


def longitudinal_table_path(subject, output_dir) -> str:
    """Where a subject's change over time goes:
    ``sub-<label>/anat/sub-<label>_desc-longitudinal_stats.tsv`` (across sessions, so outside
    the session folders)."""
    return str(Path(output_dir) / derivative_path({"subject": subject}, suffix="stats",
                                                  desc="longitudinal", extension=".tsv"))


def init_run_report_wf(*, run, output_dir, acquisition, provenance, methods_markdown,
                       reference_ranges="", has_r2star=True, has_lcurve=False,
                       name="report_wf"):
    """Figures and report content of one run.

    Parameters
    ----------
    run : :class:`qsmprep.bids.discovery.Run`
    output_dir : str
    acquisition, provenance : dict
        For :func:`qsmprep.reports.render.build_report`.
    methods_markdown : str
        The methods boilerplate.
    reference_ranges : str
        A user's reference-range table, or '' for the package's.
    has_r2star : bool
        Whether an R2* map exists.
    has_lcurve : bool
        Whether the TV weight is chosen automatically (its L-curve is then drawn).

    Inputs
    ------
    chimap, native_labels, magnitude, brain_mask, quality_mask, fit_residual, r2star : str
        Native-space images.
    atlas_table : str
        The atlas TSV, whose names label the outlines of the QSM mosaic.
    regional_table, registration_figure : str
        Written derivatives (paths inside ``output_dir``).
    registration_quality : dict
    metadata : dict
        What the reconstruction found while running (its ``InputChecks`` go to the QC table).

    Outputs
    -------
    report : dict
        The run's report content.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "chimap", "native_labels", "magnitude", "brain_mask", "quality_mask", "fit_residual",
        "r2star", "regional_table", "registration_figure", "registration_quality",
        "metadata", "atlas_table"]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["report"]), name="outputnode")

    figures = pe.Node(ReportFigures(), name="report_figures", mem_gb=0.5)
    collect = pe.Node(niu.Function(function=_figure_paths,
                                   input_names=["qsm", "mask", "r2star", "registration",
                                                "lcurve"],
                                   output_names=["figures"]),
                      name="collect_figures", run_without_submitting=True)
    report = pe.Node(RunReport(entities=dict(run.entities), acquisition=acquisition,
                               provenance=provenance,
                               methods_markdown=methods_markdown,
                               reference_ranges=reference_ranges),
                     name="run_report", mem_gb=0.5)
    workflow.connect([
        (inputnode, figures, [("chimap", "chimap"), ("native_labels", "labels"),
                              ("magnitude", "magnitude"), ("brain_mask", "brain_mask"),
                              ("metadata", "reconstruction_metadata"),
                              ("atlas_table", "atlas_table")]),
        (inputnode, collect, [("registration_figure", "registration")]),
        (inputnode, report, [("regional_table", "regional_table"),
                             ("brain_mask", "brain_mask"), ("quality_mask", "quality_mask"),
                             ("fit_residual", "fit_residual"),
                             ("registration_quality", "registration_quality"),
                             ("metadata", "reconstruction_metadata")]),
        (collect, report, [("figures", "figures")]),
        (report, outputnode, [("report", "report")]),
    ])
    if has_r2star:
        workflow.connect(inputnode, "r2star", figures, "r2star")
    else:
        collect.inputs.r2star = None
    if not has_lcurve:
        collect.inputs.lcurve = None
    for field, suffix, desc in REPORT_FIGURES:
        if (field == "r2star" and not has_r2star) or (field == "lcurve" and not has_lcurve):
            continue
        sink = pe.Node(WriteDerivative(output_dir=str(output_dir), entities=run.entities,
                                           suffix=suffix, desc=desc, extension=".svg",
                                           datatype="figures"),
                       name=f"ds_{field}_figure", run_without_submitting=True, mem_gb=0.2)
        workflow.connect([(figures, sink, [(field, "in_file")]),
                          (sink, collect, [("out_file", field)])])
    return workflow


def _figure_paths(qsm, mask, r2star, registration, lcurve):
    """The report's figures: name -> written path (None when absent; an absent L-curve,
    of a weight given by the user, is left out)."""
    figures = {"qsm": qsm, "mask": mask, "registration": registration, "r2star": r2star}
    if lcurve:
        figures["lcurve"] = lcurve
    return figures


def init_subject_report_wf(*, subject, runs, output_dir, name="subject_report_wf"):
    """Write ``sub-<label>.html`` (every run of the subject) and each run's JSON; with two
    sessions or more, also the change over time (:func:`longitudinal_table_path`).

    Inputs
    ------
    in<i> : dict
        Report content of the i-th run of ``runs`` (1-based: ``inputnode.in1``, ...; the
        inputnode is a :class:`nipype.interfaces.utility.Merge`).

    Outputs
    -------
    None: the node writes ``sub-<label>.html``, its figures and every run's JSON report.
    """
    workflow = pe.Workflow(name=name)
    merge = pe.Node(niu.Merge(len(runs)), name="inputnode", run_without_submitting=True)
    write = pe.Node(SubjectReport(
        json_paths=[report_json_path(run, output_dir) for run in runs],
        html_path=str(Path(output_dir) / f"sub-{subject}.html"),
        figures_dir=str(Path(output_dir) / f"sub-{subject}" / "figures"),
        longitudinal_path=longitudinal_table_path(subject, output_dir)),
        name="write_report", run_without_submitting=True, mem_gb=0.5)
    workflow.connect(merge, "out", write, "reports")
    return workflow
