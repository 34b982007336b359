"""The HTML report of the group level: ``<output_dir>/group/group.html``.

:func:`write_group_report` summarises the tables of :func:`qsmprep.group.level.run_group_level`
in one page: the cohort (scans, participants, sites, diagnoses), the scans excluded and why, the
site harmonisation and the site effects before and after it, the group descriptives and
comparisons (most significant first), the asymmetry comparisons, the classification, figures
(``group/figures/*.svg``, referenced by relative paths) and the notes of the skipped steps.
Rendered from the Jinja2 template ``qsmprep/reports/templates/group_report.html``
(autoescaped, inline CSS, no scripts). Nothing depends on the clock, so the same inputs give
the same bytes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from ..__about__ import __version__
from ..bids.derivatives import write_atomically
from .collect import scan_table
from .statistics import site_effects

TEMPLATE_NAME = "group_report.html"
#: Rows of the comparison tables shown in the HTML (the TSVs hold them all).
TOP_ROWS = 20

DISCLAIMER = (
    "Research aid, not a diagnosis. Group differences, classification accuracies and learned "
    "ranges describe this cohort only; small cohorts give optimistic or unstable estimates. "
    "Check the exclusions and the site harmonisation before reading the statistics.")

FIGURE_CAPTIONS = {
    "regions_raw": "Bilateral regional means (CSF reference) by diagnosis before harmonisation; "
                   "points are scans, coloured by site.",
    "regions_harmonised": "The same after ComBat harmonisation across sites.",
    "asymmetry": "Hemispheric asymmetry index (absolute-value-safe, ai_abs_pct, CSF "
                 "reference) per region by diagnosis.",
    "roc": "ROC curves of the cross-validated classifiers (out-of-fold predictions).",
    "clinical_scatter": "The strongest correlation of each clinical measure: regional mean "
                        "(CSF reference) against the measure, one point per scan, coloured by "
                        "diagnosis.",
    "ratio_roc": "ROC curves of the cortical-to-subcortical ratio (motor cortex of the higher "
                 "hemisphere / mean(GPi, red nucleus)) for each pair of diagnoses.",
}
#: Figures shown in the clinical section rather than with the other figures.
CLINICAL_FIGURES = ("clinical_scatter", "ratio_roc")

TABLE_TITLES = {
    "tidy": "Regional values, one row per scan x region x hemisphere x reference",
    "exclusions": "Excluded scans and the reasons",
    "wide": "Regional means per scan (CSF reference)",
    "harmonised": "Raw and ComBat-harmonised means per scan",
    "site_effects": "Site effects before and after harmonisation",
    "descriptives": "Group descriptives",
    "comparisons": "Group comparisons",
    "asymmetry": "Asymmetry comparisons",
    "classification": "Classification summary",
    "single_region_auc": "Single-region AUCs",
    "reference_ranges": "Reference ranges learned from the cohort",
    "clinical_correlations": "Clinical measures against regional iron (Spearman, partial "
                             "Spearman, FDR)",
    "clinical_asymmetry": "Asymmetry index by the clinically more affected side",
    "ratio_roc": "ROC of the cortical-to-subcortical ratio per pair of diagnoses",
    "longitudinal_rates": "Annual rates of change by diagnosis (linear mixed models)",
}


# --------------------------------------------------------------------------------- formatting
def _missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number(value, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, ``n/a`` when missing."""
    if _missing(value):
        return "n/a"
    return f"{float(value):.{digits}g}"


def _fixed(value, decimals: int = 1) -> str:
    if _missing(value):
        return "n/a"
    return f"{float(value):.{decimals}f}"


def _signed(value, decimals: int = 1) -> str:
    if _missing(value):
        return "n/a"
    return f"{float(value):+.{decimals}f}"


def _p_value(value) -> str:
    if _missing(value):
        return "n/a"
    value = float(value)
    return "< 0.0001" if value < 1e-4 else f"{value:.2g}" if value < 0.01 else f"{value:.3f}"


def _text(value) -> str:
    return "n/a" if _missing(value) else str(value)


def _label(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        or value is pd.NA else str(value)


# ------------------------------------------------------------------------------ the sections
def _read_tsv(written: dict, name: str):
    path = written.get(name)
    if path is None or not Path(path).is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def _cohort(tidy, exclusions) -> dict:
    scans = scan_table(tidy)
    excluded = set(exclusions["scan"]) if exclusions is not None and len(exclusions) else set()
    scans = scans.assign(_site=[_label(value) for value in scans.get("site", [None] * len(scans))],
                         _diagnosis=[_label(value) for value in
                                     scans.get("diagnosis", [None] * len(scans))],
                         _excluded=scans["scan"].isin(excluded))
    diagnoses = sorted(set(scans["_diagnosis"]) - {"n/a"})
    diagnoses += ["n/a"] if "n/a" in set(scans["_diagnosis"]) else []
    sites = sorted(set(scans["_site"]))
    rows = []
    for site in [*sites, None]:
        chosen = scans if site is None else scans[scans["_site"] == site]
        rows.append({"site": "all sites" if site is None else site, "total": site is None,
                     "counts": [int((chosen["_diagnosis"] == diagnosis).sum())
                                for diagnosis in diagnoses],
                     "scans": len(chosen), "participants": int(chosen["subject"].nunique()),
                     "excluded": int(chosen["_excluded"].sum()),
                     "analysed": int((~chosen["_excluded"]).sum())})
    by_diagnosis = []
    for diagnosis in diagnoses:
        chosen = scans[scans["_diagnosis"] == diagnosis]
        by_diagnosis.append({"diagnosis": diagnosis, "scans": len(chosen),
                             "participants": int(chosen["subject"].nunique()),
                             "excluded": int(chosen["_excluded"].sum()),
                             "analysed": int((~chosen["_excluded"]).sum())})
    return {"scans": len(scans), "participants": int(scans["subject"].nunique()),
            "sites": len(sites), "diagnoses": diagnoses, "excluded": len(excluded),
            "analysed": len(scans) - int(scans["_excluded"].sum()), "rows": rows,
            "by_diagnosis": by_diagnosis}


def _exclusions(exclusions) -> list[dict]:
    if exclusions is None or len(exclusions) == 0:
        return []
    return [{"scan": _text(row.get("scan")), "site": _text(row.get("site")),
             "diagnosis": _text(row.get("diagnosis")), "reasons": _text(row.get("reasons"))}
            for row in exclusions.to_dict("records")]


def _harmonisation(wide, harmonised, notes) -> dict:
    sites = sorted({_label(value) for value in wide["site"]}) if "site" in wide else []
    note = next((note for note in notes if "harmonisation" in note), None)
    if harmonised is not None:
        features = list(harmonised.attrs.get("features", []))
        adjusted = list(harmonised.attrs.get("harmonised_features",
                                             [f"{feature}_harmonised" for feature in features]))
        covariates = list(harmonised.attrs.get("covariates", []))
        combat = harmonised.attrs.get("combat", {})
        status = (f"ComBat across {len(sites)} sites"
                  f"{' with empirical Bayes' if combat.get('empirical_bayes', True) else ''}; "
                  f"covariates preserved: {', '.join(covariates) if covariates else 'none'}.")
        before = site_effects(harmonised, features)
        after = site_effects(harmonised, adjusted)
        effects = [{"feature": feature, "f_raw": _number(raw_f), "p_raw": _p_value(raw_p),
                    "f_harmonised": _number(new_f), "p_harmonised": _p_value(new_p),
                    "significant_raw": not _missing(raw_p) and raw_p < 0.05,
                    "significant_harmonised": not _missing(new_p) and new_p < 0.05}
                   for feature, raw_f, raw_p, new_f, new_p in zip(
                       features, before["F"], before["p"], after["F"], after["p"])]
        return {"applied": True, "status": status, "effects": effects, "after": True}
    features = list(wide.attrs.get("features", []))
    effects = []
    if len(sites) > 1 and features:
        before = site_effects(wide, features)
        effects = [{"feature": feature, "f_raw": _number(f), "p_raw": _p_value(p),
                    "f_harmonised": "", "p_harmonised": "",
                    "significant_raw": not _missing(p) and p < 0.05,
                    "significant_harmonised": False}
                   for feature, f, p in zip(features, before["F"], before["p"])]
    if len(sites) <= 1:
        status = "One site: no harmonisation needed."
    elif note:
        status = f"Not harmonised: {note.removeprefix('no harmonisation: ')}."
    else:
        status = "Not harmonised."
    return {"applied": False, "status": status, "effects": effects, "after": False}


def _descriptives(table) -> dict | None:
    if table is None or table.empty:
        return None
    bilateral = table[table["hemisphere"].astype(str) == "bilateral"]
    table = bilateral if len(bilateral) else table
    groups = sorted(table["group"].astype(str).unique())
    rows = []
    for feature, block in table.groupby("feature", sort=False):
        cells = {str(row["group"]): f"{_fixed(row['mean'])} ± {_fixed(row['sd'])} "
                                    f"({int(row['n'])})" for row in block.to_dict("records")}
        region = block["region"].iloc[0]
        rows.append({"feature": feature, "region": _text(region) if not _missing(region)
                     else feature, "cells": [cells.get(group, "n/a") for group in groups]})
    return {"groups": groups, "rows": rows}


def _top_comparisons(table, rows: int = TOP_ROWS) -> dict | None:
    if table is None or table.empty:
        return None
    order = table.assign(_q=table["p_fdr"].astype(float).fillna(np.inf),
                         _p=table["p"].astype(float).fillna(np.inf))
    order = order.sort_values(["_q", "_p"], kind="mergesort")
    shown = []
    for row in order.head(rows).to_dict("records"):
        shown.append({
            "feature": row["feature"], "pair": f"{row['group_a']} vs {row['group_b']}",
            "n": f"{int(row['n_a'])} / {int(row['n_b'])}",
            "means": f"{_fixed(row['mean_a'])} / {_fixed(row['mean_b'])}",
            "difference": _fixed(row["difference"]),
            "g": _number(row["hedges_g"], 2),
            "ci": f"[{_number(row['g_ci_low'], 2)}, {_number(row['g_ci_high'], 2)}]",
            "t": _number(row["t"]), "p": _p_value(row["p"]), "p_fdr": _p_value(row["p_fdr"]),
            "significant": not _missing(row["p_fdr"]) and row["p_fdr"] < 0.05})
    significant = int((table["p_fdr"].astype(float) < 0.05).sum())
    return {"rows": shown, "total": len(table), "significant": significant}


def _classification(classification, written) -> dict:
    note = None
    single = None
    if classification is not None:
        summary = classification.get("summary")
        single = classification.get("single_region")
        note = classification.get("note")
    else:
        summary = _read_tsv(written, "classification")
        single = _read_tsv(written, "single_region_auc")
    pairs = []
    for row in ([] if summary is None else summary.to_dict("records")):
        a, b = str(row["group_a"]), str(row["group_b"])
        top = []
        if single is not None and len(single):
            mine = single[(single["group_a"].astype(str) == a)
                          & (single["group_b"].astype(str) == b)]
            mine = mine.assign(_auc=mine["auc_cv"].astype(float).fillna(-np.inf))
            mine = mine.sort_values("_auc", ascending=False, kind="mergesort").head(5)
            top = [{"feature": item["feature"], "auc_cv": _number(item["auc_cv"], 2),
                    "auc": _number(item["auc"], 2)} for item in mine.to_dict("records")]
        pairs.append({
            "group_a": a, "group_b": b, "n_a": int(row["n_a"]), "n_b": int(row["n_b"]),
            "n_features": int(row["n_features"]), "validation": _text(row["validation"]),
            "n_folds": int(row["n_folds"]), "auc": _number(row["auc"], 2),
            "accuracy": _number(row["accuracy"], 2),
            "balanced_accuracy": _number(row["balanced_accuracy"], 2),
            "matrix": [[int(row["tn"]), int(row["fp"])], [int(row["fn"]), int(row["tp"])]],
            "top": top})
    return {"pairs": pairs, "note": note}


def _correlation_rows(table, rows: int = TOP_ROWS) -> dict | None:
    if table is None or len(table) == 0:
        return None
    order = table.assign(_q=table["q"].astype(float).fillna(np.inf),
                         _r=-table["rho"].astype(float).abs().fillna(0.0))
    order = order.sort_values(["_q", "_r"], kind="mergesort")
    shown = [{"clinical": row["clinical"], "feature": row["feature"], "n": int(row["n"]),
              "rho": _number(row["rho"], 2), "p": _p_value(row["p"]), "q": _p_value(row["q"]),
              "significant": not _missing(row["q"]) and row["q"] < 0.05,
              "covariates": _text(row["covariates"]),
              "partial_rho": _number(row["partial_rho"], 2),
              "partial_p": _p_value(row["partial_p"]), "partial_q": _p_value(row["partial_q"]),
              "partial_significant": not _missing(row["partial_q"]) and row["partial_q"] < 0.05}
             for row in order.head(rows).to_dict("records")]
    return {"rows": shown, "total": len(table),
            "significant": int((table["q"].astype(float) < 0.05).sum()),
            "partial_significant": int((table["partial_q"].astype(float) < 0.05).sum())}


def _smallest_first(table, column: str, rows: int) -> list[dict]:
    """The ``rows`` records of ``table`` with the smallest ``column`` (missing values last,
    ties in table order)."""
    order = table.assign(_key=table[column].astype(float).fillna(np.inf))
    return order.sort_values("_key", kind="mergesort").head(rows).to_dict("records")


def _longitudinal(result: dict | None, *, top_rows: int = TOP_ROWS) -> dict | None:
    """The "Change over time" content from
    :func:`~qsmprep.group.longitudinal.write_longitudinal_rates`: ``rows`` (at most
    ``top_rows``, smallest p first, formatted), ``total``, ``notes``, ``n_followed``."""
    if result is None:
        return None
    table = result.get("table")
    rows = []
    if table is not None and len(table):
        for row in _smallest_first(table, "p", top_rows):
            rows.append({
                "feature": row["feature"], "diagnosis": row["diagnosis"],
                "n": f"{int(row['n_followed'])} / {int(row['n_participants'])}",
                "rate": _signed(row["rate_ppb_per_year"]),
                "ci": f"[{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]",
                "p": _p_value(row["p"]), "p_fdr": _p_value(row["p_fdr"]),
                "significant": not _missing(row["p_fdr"]) and row["p_fdr"] < 0.05,
                "converged": bool(row["converged"])})
    return {"rows": rows, "total": 0 if table is None else len(table),
            "notes": list(result.get("notes") or []), "n_followed": result.get("n_followed", 0)}


def _clinical(clinical, figures, group_dir) -> dict | None:
    """The clinical section: top rows of its tables, its figures and notes (None: no
    clinical analysis ran)."""
    if clinical is None:
        return None
    asymmetry = clinical.get("asymmetry")
    asymmetry_rows = []
    if asymmetry is not None and len(asymmetry):
        for row in _smallest_first(asymmetry, "q", TOP_ROWS):
            asymmetry_rows.append({
                "region": row["region"], "n": f"{int(row['n_left'])} / {int(row['n_right'])}",
                "means": f"{_fixed(row['mean_ai_left'])} / {_fixed(row['mean_ai_right'])}",
                "difference": _fixed(row["difference"]), "rho": _number(row["rho"], 2),
                "p": _p_value(row["p"]), "q": _p_value(row["q"]),
                "significant": not _missing(row["q"]) and row["q"] < 0.05})
    roc = clinical.get("ratio_roc")
    roc_rows = [{"pair": f"{row['group_a']} vs {row['group_b']}", "positive": row["positive"],
                 "n": f"{int(row['n_a'])} / {int(row['n_b'])}",
                 "medians": f"{_number(row['median_ratio_a'], 2)} / "
                            f"{_number(row['median_ratio_b'], 2)}",
                 "auc": _number(row["auc"], 2),
                 "ci": f"[{_number(row['auc_ci_low'], 2)}, {_number(row['auc_ci_high'], 2)}]",
                 "p": _p_value(row["p"]),
                 "significant": not _missing(row["p"]) and row["p"] < 0.05}
                for row in ([] if roc is None else roc.to_dict("records"))]
    return {"columns": list(clinical.get("columns") or []),
            "correlations": _correlation_rows(clinical.get("correlations")),
            "asymmetry": asymmetry_rows, "roc": roc_rows,
            "figures": [{"name": name, "src": _relative(figures[name], group_dir),
                         "caption": FIGURE_CAPTIONS[name]}
                        for name in CLINICAL_FIGURES if name in figures],
            "notes": [str(note) for note in clinical.get("notes") or []]}


def _relative(path, html_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), html_dir.resolve())).as_posix()


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("qsmprep.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


# ------------------------------------------------------------------------------------- writing
def write_group_figures(figures_dir, *, tidy, wide, harmonised=None, classification=None,
                        exclusions=None, clinical=None) -> dict:
    """Draw the group figures into ``figures_dir`` (``<name>.svg``, names of
    :data:`FIGURE_CAPTIONS`; those not drawn are removed); name -> path of those drawn.
    ``clinical`` is the result of :func:`qsmprep.group.clinical.run_clinical_analyses`."""
    from ..reports.figures import (plot_clinical_scatter, plot_group_asymmetry,
                                   plot_group_regions, plot_roc_curves)

    figures_dir = Path(figures_dir)
    excluded = set(exclusions["scan"]) if exclusions is not None and len(exclusions) else set()
    kept = tidy[~tidy["scan"].isin(excluded)] if tidy is not None else None
    drawn = {
        "regions_raw": plot_group_regions(
            wide, list(wide.attrs.get("features", [])), figures_dir / "regions_raw.svg",
            title="Regional susceptibility by diagnosis (raw, CSF reference)"),
    }
    if harmonised is not None:
        drawn["regions_harmonised"] = plot_group_regions(
            harmonised, list(harmonised.attrs.get("harmonised_features", [])),
            figures_dir / "regions_harmonised.svg",
            title="Regional susceptibility by diagnosis (ComBat-harmonised, CSF reference)")
    drawn["asymmetry"] = plot_group_asymmetry(kept, figures_dir / "asymmetry.svg")
    if classification is not None:
        drawn["roc"] = plot_roc_curves(classification.get("predictions"),
                                       figures_dir / "roc.svg")
    if clinical is not None:
        drawn["clinical_scatter"] = plot_clinical_scatter(
            clinical.get("values"), clinical.get("correlations"),
            figures_dir / "clinical_scatter.svg")
        drawn["ratio_roc"] = plot_roc_curves(
            clinical.get("ratio_scores"), figures_dir / "ratio_roc.svg",
            title="Cortical-to-subcortical ratio: ROC per pair of diagnoses")
    for name in FIGURE_CAPTIONS:  # a figure of an earlier run that is not drawn now
        if drawn.get(name) is None:
            (figures_dir / f"{name}.svg").unlink(missing_ok=True)
    return {name: Path(path) for name, path in drawn.items() if path is not None}


def write_group_report(output_dir, written: dict, *, tidy, wide, harmonised=None,
                       classification=None, exclusions, notes, longitudinal=None,
                       clinical=None) -> dict:
    """Write ``<output_dir>/group/figures/*.svg`` and ``<output_dir>/group/group.html``.

    Parameters
    ----------
    output_dir : path
        The output folder of the group level.
    written : dict
        Name -> path of the tables written by :func:`~qsmprep.group.level.run_group_level`;
        the descriptives and comparisons are read from them, and all are listed with relative
        links (other values, such as ``notes``, are ignored).
    tidy : pandas.DataFrame
        The tidy table of every scan (excluded ones included).
    wide : pandas.DataFrame
        The wide table of the analysed scans (``attrs["features"]``).
    harmonised : pandas.DataFrame, optional
        The output of :func:`~qsmprep.group.harmonise.harmonise`, when the sites were
        harmonised.
    classification : dict, optional
        The output of :func:`~qsmprep.group.classify.classify_diagnoses`.
    exclusions : pandas.DataFrame
        The output of :func:`~qsmprep.group.collect.qc_exclusions`.
    notes : list of str
        Why steps were skipped.
    clinical : dict, optional
        The output of :func:`~qsmprep.group.clinical.run_clinical_analyses`: its tables are
        shown (top rows) in the clinical section with their figures and notes.
    longitudinal : dict, optional
        The output of :func:`~qsmprep.group.longitudinal.write_longitudinal_rates` (the
        "Change over time" section).

    Returns
    -------
    dict
        ``html``: the path of the HTML; ``figures``: name -> path of each figure drawn.
    """
    group_dir = Path(output_dir) / "group"
    figures_dir = group_dir / "figures"
    group_dir.mkdir(parents=True, exist_ok=True)
    html_path = group_dir / "group.html"
    notes = [str(note) for note in (notes or [])]

    figures = write_group_figures(figures_dir, tidy=tidy, wide=wide, harmonised=harmonised,
                                  classification=classification, exclusions=exclusions,
                                  clinical=clinical)
    files = []
    for name, path in written.items():
        if isinstance(path, (str, os.PathLike)) and Path(path).is_file():
            files.append({"name": name, "title": TABLE_TITLES.get(name, name),
                          "href": _relative(path, group_dir)})
    hrefs = {item["name"]: item["href"] for item in files}
    classified = _classification(classification, written)
    if classified["note"] is None:
        classified["note"] = next((note.split(": ", 1)[-1] for note in notes
                                   if note.startswith("classification")), None)
    context = {
        "version": __version__,
        "disclaimer": DISCLAIMER,
        "cohort": _cohort(tidy, exclusions),
        "exclusions": _exclusions(exclusions),
        "harmonisation": _harmonisation(wide, harmonised, notes),
        "descriptives": _descriptives(_read_tsv(written, "descriptives")),
        "comparisons": _top_comparisons(_read_tsv(written, "comparisons")),
        "asymmetry": _top_comparisons(_read_tsv(written, "asymmetry")),
        "classification": classified,
        "figures": [{"name": name, "src": _relative(path, group_dir),
                     "caption": FIGURE_CAPTIONS.get(name, name)}
                    for name, path in figures.items() if name not in CLINICAL_FIGURES],
        "clinical": _clinical(clinical, figures, group_dir),
        "files": files,
        "hrefs": hrefs,
        "notes": notes,
        "top_rows": TOP_ROWS,
        "longitudinal": _longitudinal(longitudinal),
    }
    html = _environment().get_template(TEMPLATE_NAME).render(**context)
    write_atomically(html_path, html)
    return {"html": html_path, "figures": figures}
