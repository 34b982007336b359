"""Nipype interfaces of the per-subject report: thin wrappers around :mod:`qsmprep.reports`."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _ReportFiguresInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="referenced Chimap (native)")
    labels = File(exists=True, mandatory=True, desc="atlas labels on the Chimap's grid")
    atlas_table = File(exists=True, desc="atlas TSV (index, name): the outlines' legend")
    magnitude = File(exists=True, mandatory=True, desc="echo magnitudes (the first is shown)")
    brain_mask = File(exists=True, mandatory=True)
    r2star = File(exists=True, desc="R2* map (two echoes or more)")
    reconstruction_metadata = traits.Dict(desc="values found while reconstructing (the "
                                          "automatic TV weight's L-curve)")


class _ReportFiguresOutputSpec(TraitedSpec):
    qsm = File(exists=True, desc="SVG: Chimap mosaic with the regions' outlines")
    mask = File(exists=True, desc="SVG: brain mask over the magnitude")
    r2star = File(desc="SVG: R2* mosaic")
    lcurve = File(desc="SVG: the L-curve of an automatic TV weight")


class ReportFigures(SimpleInterface):
    """The quality-control mosaics of a run (:mod:`qsmprep.reports.figures`)."""

    input_spec = _ReportFiguresInputSpec
    output_spec = _ReportFiguresOutputSpec

    def _run_interface(self, runtime):
        from ..reports import figures, render

        def out(name):
            return os.path.join(runtime.cwd, name)

        names = None
        if isdefined(self.inputs.atlas_table):
            from qsmprep.atlases import read_atlas_table

            names = {row["index"]: row["name"] for row in read_atlas_table(self.inputs.atlas_table)}
        self._results["qsm"] = figures.plot_qsm_mosaic(self.inputs.chimap, self.inputs.labels,
                                                       out("qsm.svg"), names=names)
        self._results["mask"] = figures.plot_mask_mosaic(self.inputs.magnitude,
                                                         self.inputs.brain_mask, out("mask.svg"))
        if isdefined(self.inputs.r2star):
            self._results["r2star"] = figures.plot_r2star_mosaic(
                self.inputs.r2star, out("r2star.svg"), mask_path=self.inputs.brain_mask)
        selection = (render.regularization_record(self.inputs.reconstruction_metadata)
                     if isdefined(self.inputs.reconstruction_metadata) else None)
        if selection is not None:
            self._results["lcurve"] = figures.plot_lcurve(selection, out("lcurve.svg"))
        return runtime


class _RunReportInputSpec(BaseInterfaceInputSpec):
    regional_table = File(exists=True, mandatory=True, desc="the written *_desc-regions_stats.tsv")
    entities = traits.Dict(mandatory=True, desc="the run's BIDS entities (pybids names)")
    brain_mask = File(exists=True, mandatory=True)
    quality_mask = File(exists=True, desc="phase-quality mask")
    fit_residual = File(exists=True, desc="echo-fit residual map")
    registration_quality = traits.Dict(desc="{'nmi', 'dice_brain'}")
    reconstruction_metadata = traits.Dict(desc="values found while reconstructing (InputChecks)")
    figures = traits.Dict(desc="figure name -> written path")
    acquisition = traits.Dict(mandatory=True, desc="acquisition summary of the run")
    provenance = traits.Dict(mandatory=True, desc="date, command, processing parameters")
    methods_markdown = traits.Str(mandatory=True, desc="the methods boilerplate")
    reference_ranges = traits.Str(desc="user reference-range table ('' = the package's)")


class _RunReportOutputSpec(TraitedSpec):
    report = traits.Dict(desc="the report content (valid against the package schema)")


class RunReport(SimpleInterface):
    """One run's CBS differentiation report content
    (:func:`qsmprep.reports.render.build_report`)."""

    input_spec = _RunReportInputSpec
    output_spec = _RunReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports import render

        def optional(name):
            value = getattr(self.inputs, name)
            return value if isdefined(value) and value not in ("", {}) else None

        qc = render.qc_measurements(brain_mask_path=self.inputs.brain_mask,
                                    phase_quality_mask_path=optional("quality_mask"),
                                    residual_path=optional("fit_residual"),
                                    registration=optional("registration_quality"),
                                    input_checks=(optional("reconstruction_metadata")
                                                  or {}).get("InputChecks"),
                                    regularization=render.regularization_record(
                                        optional("reconstruction_metadata")))
        self._results["report"] = render.build_report(
            regional_table_path=self.inputs.regional_table,
            entities=dict(self.inputs.entities), qc=qc,
            acquisition=dict(self.inputs.acquisition), provenance=dict(self.inputs.provenance),
            methods_markdown=self.inputs.methods_markdown,
            figures=dict(optional("figures") or {}),
            reference_ranges_path=optional("reference_ranges"))
        return runtime


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    reports = InputMultiObject(traits.Dict, mandatory=True, desc="every run's report content")
    json_paths = traits.List(traits.Str, mandatory=True, desc="where each run's JSON goes")
    html_path = traits.Str(mandatory=True, desc="<output_dir>/sub-<label>.html")
    figures_dir = traits.Str(mandatory=True, desc="<output_dir>/sub-<label>/figures")
    longitudinal_path = traits.Str(desc="where the change over time goes (two sessions or "
                                   "more): sub-<label>_desc-longitudinal_stats.tsv")


class _SubjectReportOutputSpec(TraitedSpec):
    out_html = File(exists=True)
    out_json = traits.List(File(exists=True))


class SubjectReport(SimpleInterface):
    """Write the subject's HTML report and each run's JSON
    (:func:`qsmprep.reports.render.write_report`). Always runs."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from ..reports import render

        written = render.write_report(list(self.inputs.reports), html_path=self.inputs.html_path,
                                      json_path=list(self.inputs.json_paths),
                                      figures_dir=self.inputs.figures_dir,
                                      longitudinal_path=_given(self.inputs.longitudinal_path))
        self._results["out_html"] = os.fspath(written["html"])
        self._results["out_json"] = [os.fspath(path) for path in written["json"]]
        return runtime


def _given(value):
    """An optional string input: None when undefined or empty."""
    return value if isdefined(value) and value else None
