"""The per-subject iron-pattern report: JSON content and its HTML rendering.

:func:`build_report` gathers one run's findings, pattern scores (:mod:`qsmprep.reports.cbs`),
quality checks, acquisition summary, provenance, figures and methods into one dictionary, the
content of ``<prefix>_desc-cbs_report.json``, checked against the JSON schema kept in the package
(``data/cbs_report.schema.json``). :func:`write_report` writes that JSON and renders
``sub-<label>.html`` from the Jinja2 template ``templates/cbs_report.html`` (autoescaped), with
one strip plot per findings row under the figures folder. Figures are referenced by paths
relative to the HTML file (``sub-<label>/figures/...``), so the output folder can be copied
elsewhere and still open. Nothing in the output depends on the clock: the only dates are the one
passed in ``provenance`` and the acquisition dates of the data. With two sessions or more the
HTML adds the change over time (:mod:`qsmprep.reports.longitudinal`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import jinja2

from ..__about__ import __version__
from ..bids.derivatives import report_entities, write_atomically
from ..regions import read_regional_table
from . import cbs, longitudinal, motor

LOGGER = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).parent / "data" / "cbs_report.schema.json"
TEMPLATE_NAME = "cbs_report.html"
SCHEMA_VERSION = "1.0"

#: Captions of the quality-control figures, by the key used in ``figures``.
FIGURE_CAPTIONS = {
    "qsm": "Susceptibility map (window: 1st to 99th percentile of the brain, on the colour "
           "bar) with the outlines of the measured regions.",
    "mask": "Brain mask (outline) over the first-echo magnitude.",
    "registration": "Registration: template edges over the subject's magnitude in template "
                    "space.",
    "r2star": "R2* map (1/s).",
    "lcurve": "Automatic regularisation: the L-curve of the closed-form Tikhonov solution of "
              "this run's local field; its corner (circled) sets the TV weight.",
}

#: Colours of the patterns in the report and its strip plots (Okabe-Ito, colour-blind safe).
PATTERN_COLOURS = {"CBS": "#E69F00", "PSP": "#CC79A7", "PD": "#009E73", "MSA": "#56B4E9",
                   "AD": "#0072B2", "control": "#999999"}

#: The processing checklist of the 2024 ISMRM QSM consensus (QSM Consensus Organization
#: Committee, Magn Reson Med 2024, doi:10.1002/mrm.30006), as reported per run.
CONSENSUS_ITEMS = (
    ("acquisition", "Multi-echo 3D gradient echo (monopolar readout) with magnitude and phase"),
    ("echo_combination", "Echoes combined before background removal (magnitude-weighted linear "
                         "fit or nonlinear complex fit), giving a residual map"),
    ("unwrapping", "Exact phase unwrapping (path following or region growing, e.g. ROMEO; "
                   "Laplacian unwrapping is not exact)"),
    ("masking", "Brain mask plus phase-quality masking"),
    ("background", "Background field removal with a SHARP-family method, PDF or LBV"),
    ("inversion", "Dipole inversion with sparsity regularisation (TV / L1)"),
    ("referencing", "Reference region named; whole brain included as a reference; with a CSF "
                    "reference, its mean ± SD relative to the whole brain reported"),
    ("reporting", "Field strength, vendor, echo times, voxel size, every algorithm and "
                  "parameter, software and version reported"),
)



# --------------------------------------------------------------------------------- validation
def load_schema() -> dict:
    """The JSON schema of the report (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(report: dict) -> bool:
    """Check ``report`` against :func:`load_schema`.

    Returns True when checked, False when the ``jsonschema`` package is not installed (then
    nothing is checked). Raises ValueError naming the first offending field otherwise.
    """
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        LOGGER.debug("jsonschema is not installed: the report is not validated")
        return False
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(report), key=lambda error: list(error.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(part) for part in first.absolute_path) or "(top level)"
        raise ValueError(f"the report does not match its schema at {where}: {first.message}"
                         + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return True


# ------------------------------------------------------------------------------------ helpers
def _json_ready(value):
    """Replace non-finite floats by None (JSON has no NaN) throughout."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def _acquisition(acquisition: dict) -> dict:
    """The acquisition summary with known keys normalised (lists of numbers, None for
    missing), unknown keys kept as given."""
    summary = dict(acquisition or {})
    for key in ("echo_times_ms", "voxel_size_mm"):
        if summary.get(key) is not None:
            summary[key] = [round(float(item), 4) for item in summary[key]]
    if summary.get("matrix") is not None:
        summary["matrix"] = [int(item) for item in summary["matrix"]]
    if summary.get("field_strength_t") is not None:
        summary["field_strength_t"] = float(summary["field_strength_t"])
    return _json_ready(summary)


def acquisition_summary(run) -> dict:
    """The ``acquisition`` of :func:`build_report` from a discovered run
    (:class:`qsmprep.bids.discovery.Run`): field strength, echo times, voxel size, matrix and
    the scanner fields of the first echo's sidecar that are present."""
    metadata = dict(getattr(run, "metadata", None) or {})
    summary = {
        "field_strength_t": float(run.field_strength_t),
        "field_strength_source": getattr(run, "field_strength_source", None),
        "echo_times_ms": [1e3 * float(time) for time in run.echo_times_s],
        "voxel_size_mm": [float(size) for size in run.voxel_size],
        "matrix": [int(size) for size in run.shape],
        "manufacturer": metadata.get("Manufacturer"),
        "model": metadata.get("ManufacturersModelName"),
    }
    for key, name in (("SoftwareVersions", "scanner_software"),
                      ("ReceiveCoilName", "receive_coil"),
                      ("MRAcquisitionType", "acquisition_type")):
        if metadata.get(key) not in (None, ""):
            summary[name] = str(metadata[key])
    if getattr(run, "acquisition_date", None):  # sessions.tsv / scans.tsv acq_time
        summary["acquisition_date"] = run.acquisition_date
        summary["acquisition_date_source"] = run.acquisition_date_source
    return summary


def regularization_record(reconstruction_metadata) -> dict | None:
    """The automatic TV weight and its L-curve, from the sidecar fields found while running
    (``QSMProcessing.DipoleInversion``): the ``RegularizationSelection`` block plus ``weight``;
    None when the weight was given."""
    processing = (reconstruction_metadata or {}).get("QSMProcessing") or {}
    block = processing.get("DipoleInversion") or {}
    selection = block.get("RegularizationSelection")
    if not isinstance(selection, dict):
        return None
    return {**selection, "weight": block.get("Regularization")}


def qc_measurements(*, brain_mask_path, phase_quality_mask_path=None, residual_path=None,
                    registration=None, input_checks=None, regularization=None) -> dict:
    """The ``qc`` of :func:`build_report` from the run's images.

    ``mask_volume_ml``: the brain mask's volume; ``poor_phase_fraction``: the fraction of the
    brain mask missing from the phase-quality mask; ``echo_fit_residual``: the median of the
    echo-fit residual map (rad) in the brain mask; ``registration``: passed through (the
    ``RegistrationQuality`` of the regional table's sidecar); ``input_checks``: how the input
    was interpreted (the sidecars' ``InputChecks``); ``regularization``: the automatic TV
    weight and its L-curve corner (:func:`regularization_record`). Absent inputs are left
    out.
    """
    import nibabel as nib
    import numpy as np

    brain_image = nib.load(str(brain_mask_path))
    brain = np.asarray(brain_image.dataobj) > 0.5
    voxel_ml = float(np.prod(brain_image.header.get_zooms()[:3])) / 1000.0
    values = {"mask_volume_ml": float(np.count_nonzero(brain)) * voxel_ml}
    count = np.count_nonzero(brain)
    if phase_quality_mask_path is not None and count:
        kept = (np.asarray(nib.load(str(phase_quality_mask_path)).dataobj) > 0.5) & brain
        values["poor_phase_fraction"] = 1.0 - np.count_nonzero(kept) / count
    if residual_path is not None and count:
        residual = np.asarray(nib.load(str(residual_path)).dataobj, dtype=np.float64)[brain]
        residual = residual[np.isfinite(residual)]
        if residual.size:
            values["echo_fit_residual"] = float(np.median(residual))
    if input_checks:
        values["input_checks"] = dict(input_checks)
    if regularization:
        values["regularization"] = {"weight": regularization.get("weight"),
                                    "corner": regularization.get("TikhonovCorner")}
    if registration:
        values["registration"] = {key: float(value) for key, value in registration.items()
                                  if isinstance(value, (int, float))}
        if isinstance(registration.get("deep_grey_refinement"), dict):
            values["deep_grey_refinement"] = registration["deep_grey_refinement"]
    return values


def _status(condition, *, partly=False):
    if condition is None:
        return "not recorded"
    if condition:
        return "met"
    return "partly met" if partly else "not met"


def _csf_relative_to_whole_brain(rows):
    """Mean and SD (ppb) of the lateral ventricles relative to the whole brain, if measured."""
    for row in rows:
        if (row["region"], row["hemisphere"], row["reference"]) == (
                "lateral_ventricle", "bilateral", "whole-brain"):
            mean, sd = row["mean_ppb"], row["sd_ppb"]
            if math.isfinite(mean):
                return mean, sd
    return None


def consensus_checklist(*, acquisition: dict, processing: dict | None, regional_rows,
                        version: str) -> list[dict]:
    """The consensus checklist items (:data:`CONSENSUS_ITEMS`) with what this run did.

    ``processing`` is the ``QSMProcessing`` record of the sidecars (``Unwrapping``,
    ``EchoCombination``, ``PhaseQualityMasking``, ``BackgroundFieldRemoval``,
    ``DipoleInversion``, ``Referencing``, each with ``Algorithm``/``Threshold``/``Region``);
    items it would answer are ``not recorded`` when it is missing.
    """
    processing = processing or {}

    def algorithm(stage):
        return (processing.get(stage) or {}).get("Algorithm")

    items = {}
    echoes = acquisition.get("echo_times_ms") or []
    if echoes:
        items["acquisition"] = (_status(len(echoes) >= 2),
                                f"{len(echoes)} echo(es), TE "
                                f"{', '.join(f'{te:g}' for te in echoes)} ms; readout polarity "
                                "as recorded by the scanner")
    else:
        items["acquisition"] = ("not recorded", "echo times not given")
    fit = algorithm("EchoCombination")
    items["echo_combination"] = (
        _status(None if fit is None else fit in ("weighted-linear", "nonlinear")),
        f"{fit} fit of the unwrapped phase over echo time, before background removal"
        if fit else "not recorded")
    unwrapping = algorithm("Unwrapping")
    items["unwrapping"] = (
        _status(None if unwrapping is None else unwrapping == "romeo"),
        {"romeo": "ROMEO-style quality-guided region growing (exact)",
         "laplacian": "Laplacian (fast, not exact)"}.get(unwrapping, unwrapping or "not recorded"))
    quality = (processing.get("PhaseQualityMasking") or {}).get("Threshold")
    items["masking"] = (
        _status(None if quality is None else float(quality) > 0, partly=True),
        "not recorded" if quality is None else (
            f"brain mask, then phase-quality threshold {float(quality):g}" if float(quality) > 0
            else "brain mask only (phase-quality masking disabled)"))
    background = algorithm("BackgroundFieldRemoval")
    items["background"] = (
        _status(None if background is None else background in ("vsharp", "resharp", "pdf",
                                                                 "lbv")),
        background.upper().replace("VSHARP", "V-SHARP") if background else "not recorded")
    inversion = algorithm("DipoleInversion")
    if inversion is None:
        items["inversion"] = ("not recorded", "not recorded")
    elif inversion in ("tv-admm", "medi-l1", "rts"):
        items["inversion"] = ("met", f"{inversion} (sparsity-regularised)")
    elif inversion == "tikhonov":
        items["inversion"] = ("partly met", "iterative Tikhonov (fast alternative)")
    else:
        items["inversion"] = ("not met", f"{inversion} (baseline method)")
    reference = (processing.get("Referencing") or {}).get("Region")
    references = {row["reference"] for row in regional_rows}
    csf = _csf_relative_to_whole_brain(regional_rows)
    detail = [f"map referenced to {reference or 'a region not recorded'}",
              f"regional values relative to {' and '.join(sorted(references))}"]
    if csf is not None:
        detail.append(f"CSF (lateral ventricles) {csf[0]:.1f} ± {csf[1]:.1f} ppb relative to "
                      "the whole brain")
    complete = "whole-brain" in references and ("csf" not in references or csf is not None)
    items["referencing"] = (_status(complete, partly=True), "; ".join(detail))
    wanted = {"field strength": acquisition.get("field_strength_t"),
              "vendor": acquisition.get("manufacturer"), "echo times": echoes or None,
              "voxel size": acquisition.get("voxel_size_mm"),
              "algorithms and parameters": processing or None, "software version": version}
    missing = [name for name, value in wanted.items() if value in (None, "", [])]
    items["reporting"] = (
        _status(not missing, partly=True),
        "all reported (header and methods)" if not missing
        else f"missing from the sidecars: {', '.join(missing)}")
    return [{"item": text, "status": items[key][0], "detail": items[key][1]}
            for key, text in CONSENSUS_ITEMS]


def report_methods_text(findings_: dict, ranges: dict) -> str:
    """A methods paragraph describing the pattern scoring (for the report's methods)."""
    source = ("approximate published ranges (review 'Quantitative Susceptibility Mapping for "
              "Corticobasal Syndrome')" if ranges["default"]
              else f"user-supplied ranges ({Path(ranges['path']).name})")
    return (
        f"Regional mean susceptibility relative to {findings_['reference']} was compared with "
        f"{source} for CBS, PSP and PD. The asymmetry index 200 (R - L) / (|R| + |L|) named a "
        f"favoured side when its magnitude reached {cbs.ASYMMETRY_THRESHOLD_PCT:g} % and the "
        f"hemispheres differed by at least {cbs.ASYMMETRY_MIN_DIFFERENCE_PPB:g} ppb. Each "
        "pattern was scored by the fraction of its discriminating features that agreed "
        "(motor-cortex elevation and asymmetry, the motor-cortex to mean(GPi, red nucleus) "
        f"ratio with cut-offs {cbs.RATIO_CBS_MIN:g} and {cbs.RATIO_PSP_MAX:g}, GPi/STN/red "
        "nucleus elevation and symmetry, a nigral pattern with substantia nigra above "
        f"{cbs.NIGRAL_SN_MIN_PPB:g} ppb (Murakami et al., AJNR 2015;36:1102-1108) and the "
        "fraction of regions within each pattern's ranges); a pattern was retained only when "
        "its hallmark feature was present, results within "
        f"{cbs.MIXED_MARGIN:g} of each other were reported as mixed, and the confidence was "
        "lowered one level for each flagged quality category (registration, mask, phase, "
        "region size, reference). These rules are a research aid, not a diagnosis, and "
        "their thresholds require local calibration.")


# ---------------------------------------------------------------------------------- build
def build_report(*, regional_table_path, entities: dict, qc: dict, acquisition: dict,
                 provenance: dict, methods_markdown: str, figures: dict,
                 reference_ranges_path=None) -> dict:
    """The content of one run's report (``<prefix>_desc-cbs_report.json``).

    Parameters
    ----------
    regional_table_path : path
        The run's ``*_desc-regions_stats.tsv``.
    entities : dict
        The run's BIDS entities (pybids names: ``subject``, ``session``, ``acquisition``,
        ``reconstruction``, ``run``), which name the report and its figures.
    qc : dict
        Quality values for :func:`qsmprep.reports.cbs.assess_quality`: ``registration``
        (``{"dice_brain", "nmi"}``), ``mask_volume_ml``, ``echo_fit_residual`` (median, rad),
        ``poor_phase_fraction`` (0-1). Missing ones are shown as not measured.
    acquisition : dict
        ``field_strength_t``, ``echo_times_ms``, ``voxel_size_mm``, ``matrix``,
        ``manufacturer``, ``model`` (those known; others are kept and shown as given).
    provenance : dict
        ``date`` (of the run; the only date in the output), ``command`` (the command line),
        ``version`` (default: this qsmprep) and ``processing`` (the sidecars' ``QSMProcessing`` record, for the consensus checklist).
    methods_markdown : str
        The methods boilerplate (``CITATION.md``): paragraphs, headings and a numbered
        reference list.
    figures : dict
        ``{"qsm", "mask", "registration", "r2star", ...: path}``: the figures as written in the
        output folder (absolute paths, or paths relative to the HTML report's folder);
        :func:`write_report` makes them relative and leaves out those that do not exist.
    reference_ranges_path : path, optional
        A user's reference-range table (``--reference-ranges``); the package table otherwise.

    Returns
    -------
    dict
        Valid against :func:`load_schema` (checked when ``jsonschema`` is installed).
    """
    regional_table_path = Path(regional_table_path)
    rows = read_regional_table(regional_table_path)
    ranges = cbs.read_reference_ranges(reference_ranges_path)
    present = cbs.available_references(rows)
    reference = ranges["reference"] if ranges["reference"] in present else (
        present[0] if present else ranges["reference"])
    findings_ = cbs.findings(rows, reference=reference, reference_ranges=ranges)
    quality = cbs.assess_quality(qc, findings_)
    quality["values"] = _json_ready(dict(qc or {}))
    scores = cbs.score_patterns(findings_, quality=quality)

    entities = report_entities(entities)
    if "sub" not in entities:
        raise ValueError(f"no subject among the entities of {regional_table_path.name}")
    acquisition_summary = _acquisition(acquisition)
    version = str(provenance.get("version") or __version__)
    report = {
        "schema_version": SCHEMA_VERSION,
        "subject": entities["sub"],
        "session": entities.get("ses"),
        "run": entities.get("run"),
        "entities": entities,
        "prefix": "_".join(f"{key}-{value}" for key, value in entities.items()),
        "generated_by": {"name": "qsmprep", "version": version,
                         "date": provenance.get("date"), "command": provenance.get("command")},
        "acquisition": acquisition_summary,
        "regional_table": regional_table_path.name,
        "reference_ranges": ranges,
        "findings": findings_,
        "scores": {key: scores[key] for key in ("features", "patterns", "not_assessed")},
        "interpretation": scores["interpretation"],
        "qc": quality,
        "figures": {str(key): (None if value is None else str(value))
                    for key, value in (figures or {}).items()},
        "methods": {
            "markdown": methods_markdown or "",
            "report_methods": report_methods_text(findings_, ranges),
            "checklist": consensus_checklist(acquisition=acquisition_summary,
                                             processing=provenance.get("processing"),
                                             regional_rows=rows, version=version),
        },
        "thresholds": cbs.thresholds(),
        "motor_profile": motor.motor_neuron_profile(rows, reference=findings_["reference"],
                                                    reference_ranges=ranges),
        "measurement_uncertainty": longitudinal.regional_uncertainty(
            rows, reference=findings_["reference"]),
    }
    report = _json_ready(report)
    if ranges["default"]:
        report["reference_ranges"]["path"] = "qsmprep:reports/data/reference_ranges.tsv"
    validate_report(report)
    return report


# ---------------------------------------------------------------------------------- render
def markdown_blocks(text: str) -> list[dict]:
    """Split the methods Markdown into blocks for the template: headings (``#``), ordered
    (``1.``) and unordered (``-``) lists, and paragraphs. Inline markup is left as text (the
    boilerplate has none but escaped asterisks, which are unescaped)."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", (text or "").strip()):
        lines = [line.strip() for line in chunk.strip().splitlines() if line.strip()]
        while lines:
            heading = re.match(r"^(#{1,6})\s+(.*)$", lines[0])
            if heading:
                blocks.append({"kind": "heading", "level": len(heading.group(1)),
                               "text": _unescape(heading.group(2))})
                lines = lines[1:]
                continue
            if all(re.match(r"^\d+[.)]\s+", line) for line in lines):
                blocks.append({"kind": "ordered", "items": [
                    {"number": int(re.match(r"^(\d+)", line).group(1)),
                     "text": _unescape(re.sub(r"^\d+[.)]\s+", "", line))} for line in lines]})
            elif all(re.match(r"^[-*]\s+", line) for line in lines):
                blocks.append({"kind": "unordered", "items": [
                    _unescape(re.sub(r"^[-*]\s+", "", line)) for line in lines]})
            else:
                blocks.append({"kind": "paragraph", "text": _unescape(" ".join(lines))})
            lines = []
    return blocks


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\`*_{}\[\]()#+\-.!])", r"\1", text)


def _relative(path, html_dir: Path):
    """``path`` relative to the HTML's folder (paths given relative are taken as such); None
    for a figure that does not exist. A figure outside that folder would break when the folder
    is copied: ValueError."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    if not path.is_file():
        LOGGER.warning("report figure %s does not exist; it is left out", path)
        return None
    relative = Path(os.path.relpath(path.resolve(), html_dir.resolve()))
    if relative.parts[:1] == ("..",):
        raise ValueError(f"figure {path} is not inside the report's folder {html_dir}")
    return relative.as_posix()


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("qsmprep.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)
    environment.filters["ppb"] = lambda value: "n/a" if value is None else f"{value:.1f}"
    environment.filters["signed"] = lambda value: "n/a" if value is None else f"{value:+.1f}"
    environment.filters["markdown_blocks"] = markdown_blocks
    environment.globals["range_patterns"] = range_patterns
    return environment


def range_patterns(report: dict) -> list[str]:
    """Patterns with a range for at least one findings row, in :data:`cbs.RANGE_PATTERNS`
    order (the range columns of the findings table)."""
    present = {item["pattern"] for region in report["findings"]["regions"]
               for item in region["ranges"]}
    return [pattern for pattern in cbs.RANGE_PATTERNS if pattern in present]


def render_html(reports: list[dict]) -> str:
    """The HTML text of the report of one subject's runs (figure paths as in ``reports``)."""
    template = _environment().get_template(TEMPLATE_NAME)
    return template.render(reports=reports, subject=reports[0]["subject"],
                           longitudinal=longitudinal.longitudinal_changes(reports),
                           captions=FIGURE_CAPTIONS, colours=PATTERN_COLOURS,
                           disclaimer=cbs.DISCLAIMER, version=reports[0]["generated_by"]["version"])


def write_report(report, *, html_path, json_path=None, figures_dir, strip_plots=True,
                 longitudinal_path=None):
    """Write the JSON of each run and the subject's HTML report.

    Parameters
    ----------
    report : dict or list of dict
        From :func:`build_report`: one run, or every run of one subject (one HTML section each).
    html_path : path
        ``<output_dir>/sub-<label>.html``.
    json_path : path or list of paths, optional
        Where each run's JSON goes (``..._desc-cbs_report.json`` beside the regional table);
        none written when omitted.
    figures_dir : path
        ``<output_dir>/sub-<label>/figures``: the strip plots are drawn there
        (``<prefix>_desc-<region>_stripplot.svg``).
    strip_plots : bool
        Draw the per-region strip plots (matplotlib).
    longitudinal_path : path, optional
        ``<output_dir>/sub-<label>/anat/sub-<label>_desc-longitudinal_stats.tsv``: where the
        change over time goes (:mod:`qsmprep.reports.longitudinal`) when the subject has two
        sessions or more; not written otherwise.

    Returns
    -------
    dict
        ``{"html": Path, "json": [Path, ...], "figures": [Path, ...], "longitudinal": Path or
        None}``.
    """
    reports = [report] if isinstance(report, dict) else list(report)
    if not reports:
        raise ValueError("no report to write")
    subjects = {item["subject"] for item in reports}
    if len(subjects) > 1:
        raise ValueError(f"one HTML report per subject; got {', '.join(sorted(subjects))}")
    json_paths = ([] if json_path is None else
                  [json_path] if isinstance(json_path, (str, os.PathLike)) else list(json_path))
    if json_paths and len(json_paths) != len(reports):
        raise ValueError(f"{len(reports)} report(s) but {len(json_paths)} JSON path(s)")
    html_path = Path(html_path)
    html_dir = html_path.parent
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    html_dir.mkdir(parents=True, exist_ok=True)

    written_figures, finished = [], []
    for item in reports:
        item = json.loads(json.dumps(item))  # a copy: the caller's dict is left as it was
        item["figures"] = {key: _relative(value, html_dir)
                           for key, value in item["figures"].items()}
        for region in item["findings"]["regions"]:
            region["strip_plot"] = None
            if strip_plots and region["ranges"] and any(
                    region[key] is not None for key in ("left_ppb", "right_ppb",
                                                        "bilateral_ppb")):
                from .figures import plot_range_strip

                name = f"{item['prefix']}_desc-{region['region'].replace('_', '')}_stripplot.svg"
                path = plot_range_strip(region, figures_dir / name, colours=PATTERN_COLOURS)
                written_figures.append(Path(path))
                region["strip_plot"] = _relative(Path(path).resolve(), html_dir)
        profile = item.get("motor_profile")
        if profile is not None:
            profile["figure"] = None
            if strip_plots and profile["measured"]:
                from .figures import plot_motor_profile

                path = plot_motor_profile(
                    profile, figures_dir / f"{item['prefix']}_desc-motorprofile_Chimap.svg")
                written_figures.append(Path(path))
                profile["figure"] = _relative(Path(path).resolve(), html_dir)
        validate_report(item)
        finished.append(item)

    for item, path in zip(finished, json_paths):
        write_atomically(path, json.dumps(item, indent=2, ensure_ascii=False) + "\n")
    write_atomically(html_path, render_html(finished))
    changes = longitudinal.longitudinal_changes(finished) if longitudinal_path else None
    if changes is not None:
        longitudinal.write_longitudinal_table(changes, longitudinal_path)
    return {"html": html_path, "json": [Path(path) for path in json_paths],
            "figures": written_figures,
            "longitudinal": Path(longitudinal_path) if changes is not None else None}
