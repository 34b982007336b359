"""The group level: every participant's regional results into one harmonised, analysed dataset.

:func:`run_group_level` chains the steps of this package and writes their tables to
``<output_dir>/group/`` (tab-separated, ``n/a`` for missing values, fixed number format, so a
second run writes the same bytes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..bids.derivatives import write_atomically
from ..errors import BadDataError
from .classify import classify_diagnoses, learned_reference_ranges, write_reference_ranges
from .clinical import run_clinical_analyses
from .collect import collect_participant_results, qc_exclusions, scan_table, wide_table
from .harmonise import harmonise
from .longitudinal import write_longitudinal_rates
from .report import write_group_report
from .statistics import compare_asymmetry, compare_groups, describe_groups, site_effects

LOGGER = logging.getLogger("qsmprep")

#: Number format of the written tables.
FLOAT_FORMAT = "%.6g"


def _write(table: pd.DataFrame, path: Path) -> Path:
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format=FLOAT_FORMAT,
                        lineterminator="\n")
    return write_atomically(path, text)


def run_group_level(output_dir, bids_dir=None, *, site_column: str = "site",
                    clinical_columns=()) -> dict:
    """Collect, quality-control, harmonise, compare and classify; write ``output_dir/group/``.

    Files: ``regions_tidy.tsv`` (one row per scan x region x hemisphere x reference),
    ``scans_wide.tsv`` (one row per scan, CSF-referenced means), ``exclusions.tsv`` (scans left
    out and why), ``scans_harmonised.tsv`` (raw and ComBat-harmonised side by side, when there
    are several sites and each has enough scans), ``site_effects.tsv`` (before and after),
    ``group_descriptives.tsv``, ``group_comparisons.tsv`` (Hedges' g, Welch's t, FDR),
    ``asymmetry_comparisons.tsv``, ``classification.tsv`` and ``single_region_auc.tsv`` (when
    two diagnoses have enough scans) and ``reference_ranges_learned.tsv`` (usable with
    ``--reference-ranges``); ``longitudinal_rates.tsv`` (annual rates by diagnosis from mixed
    models, when enough participants have two or more dated sessions); and ``group.html``
    with its figures (``figures/*.svg``).

    Clinical analyses (:mod:`qsmprep.group.clinical`): ``clinical_correlations.tsv`` (each
    of ``clinical_columns``, numeric columns of participants.tsv / sessions.tsv, against
    each regional mean: Spearman and partial Spearman with FDR), ``clinical_asymmetry.tsv``
    (asymmetry index by the clinically more affected side) and ``ratio_roc.tsv`` (ROC of the
    cortical-to-subcortical ratio per pair of diagnoses), each when there are enough scans.

    Returns
    -------
    dict
        Name -> written path, plus ``notes``: why a step was skipped.

    Raises
    ------
    MissingInputError
        No participant results in ``output_dir``.
    """
    output_dir = Path(output_dir)
    group_dir = output_dir / "group"
    group_dir.mkdir(parents=True, exist_ok=True)
    written, notes = {}, []

    tidy = collect_participant_results(output_dir, bids_dir, site_column=site_column)
    scans = scan_table(tidy)
    LOGGER.info("Group level: %d scan(s) of %d participant(s) from %d site(s).", len(scans),
                scans["subject"].nunique(), scans["site"].nunique())
    excluded = qc_exclusions(tidy)
    for row in excluded.itertuples():
        LOGGER.warning("Excluded %s: %s", row.scan, row.reasons)
    kept = tidy[~tidy["scan"].isin(set(excluded["scan"]))]
    written["tidy"] = _write(tidy, group_dir / "regions_tidy.tsv")
    written["exclusions"] = _write(excluded, group_dir / "exclusions.tsv")
    wide = wide_table(kept, reference="csf")
    written["wide"] = _write(wide, group_dir / "scans_wide.tsv")
    features = list(wide.attrs["features"])

    analysed, analysed_features = wide, features
    harmonised, result = None, None
    if wide["site"].nunique() > 1:
        try:
            harmonised = harmonise(wide, features, site_column="site")
        except BadDataError as error:
            notes.append(f"no harmonisation: {error}")
            LOGGER.warning("No site harmonisation: %s", error)
        else:
            written["harmonised"] = _write(harmonised, group_dir / "scans_harmonised.tsv")
            analysed_features = [f"{feature}_harmonised" for feature in features]
            analysed = harmonised
            effects = pd.concat([
                site_effects(harmonised, features).assign(values="raw"),
                site_effects(harmonised, analysed_features).assign(values="harmonised")])
            written["site_effects"] = _write(effects, group_dir / "site_effects.tsv")
    else:
        notes.append("one site: no harmonisation needed")

    if wide["diagnosis"].notna().any():
        written["descriptives"] = _write(describe_groups(analysed, analysed_features),
                                         group_dir / "group_descriptives.tsv")
        written["comparisons"] = _write(compare_groups(analysed, analysed_features),
                                        group_dir / "group_comparisons.tsv")
        written["asymmetry"] = _write(compare_asymmetry(kept),
                                      group_dir / "asymmetry_comparisons.tsv")
        result = classify_diagnoses(analysed, analysed_features)
        if result.get("note"):
            notes.append(f"classification: {result['note']}")
        if len(result.get("summary", [])):
            written["classification"] = _write(result["summary"],
                                               group_dir / "classification.tsv")
            written["single_region_auc"] = _write(result["single_region"],
                                                  group_dir / "single_region_auc.tsv")
        ranges = learned_reference_ranges(kept)
        if len(ranges):
            written["reference_ranges"] = write_reference_ranges(
                ranges, group_dir / "reference_ranges_learned.tsv")
    else:
        notes.append("no diagnosis column in participants.tsv: no group comparisons")
    longitudinal = write_longitudinal_rates(kept, group_dir / "longitudinal_rates.tsv",
                                            output_dir=output_dir, bids_dir=bids_dir)
    if longitudinal["path"] is not None:
        written["longitudinal_rates"] = longitudinal["path"]
    notes.extend(f"change over time: {note}" for note in longitudinal["notes"])
    clinical = run_clinical_analyses(kept, wide, bids_dir, clinical_columns)
    for name, key in (("clinical_correlations", "correlations"),
                      ("clinical_asymmetry", "asymmetry"), ("ratio_roc", "ratio_roc")):
        stale = group_dir / f"{name}.tsv"
        if len(clinical[key]):
            written[name] = _write(clinical[key], stale)
        else:
            stale.unlink(missing_ok=True)  # of an earlier run
    for note in clinical["notes"]:
        LOGGER.info("Group level, clinical: %s", note)
    report = write_group_report(output_dir, written, tidy=tidy, wide=wide,
                                harmonised=harmonised, classification=result,
                                exclusions=excluded, notes=notes, longitudinal=longitudinal,
                                clinical=clinical)
    written["report"] = report["html"]
    for note in notes:
        LOGGER.info("Group level: %s", note)
    written["notes"] = notes
    return written
