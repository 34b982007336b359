"""How well the regional values separate diagnoses, and reference ranges learned from a cohort.

:func:`classify_diagnoses` fits, for each pair of diagnoses with enough scans, an L2-penalised
logistic regression on standardised features (scikit-learn; Pedregosa et al., JMLR
2011;12:2825-2830) and estimates its performance out of sample: leave-one-site-out
cross-validation when at least two sites hold both diagnoses (so that the classifier is always
tested on a scanner it was not trained on), stratified K-fold otherwise. The ROC AUC (Hanley &
McNeil, Radiology 1982;143:29-36) and the confusion matrix are computed from the pooled
out-of-fold predictions. Cross-validated AUCs of single regions show which regions carry the
separation. Small cohorts give optimistic or unstable estimates (Varoquaux, NeuroImage
2018;180:68-77): report the numbers with the cohort size.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..bids.derivatives import write_atomically
from ..reports.cbs import RANGE_PATTERNS

#: Fewest scans each diagnosis of a pair needs to be classified.
MIN_SCANS_PER_DIAGNOSIS = 5

SUMMARY_COLUMNS = ("group_a", "group_b", "n_a", "n_b", "n_features", "validation", "n_folds",
                   "auc", "accuracy", "balanced_accuracy", "tn", "fp", "fn", "tp")

#: Diagnosis labels read as the ``control`` pattern of a reference-range table.
CONTROL_LABELS = ("control", "controls", "hc", "healthy", "healthy_control", "healthy_controls",
                  "nc", "normal")


def _model(random_state):
    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=1.0, max_iter=1000, random_state=random_state))


def _splits(y, sites, n_splits, random_state):
    """Folds and their description: leave-one-site-out when >= 2 sites hold both classes."""
    both = [site for site in sorted(set(sites)) if len(set(y[sites == site])) == 2]
    if len(both) >= 2:
        folds = list(LeaveOneGroupOut().split(np.zeros(len(y)), y, sites))
        return folds, "leave-one-site-out"
    k = int(min(n_splits, np.bincount(y).min()))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
    return list(splitter.split(np.zeros(len(y)), y)), f"stratified {k}-fold"


def _out_of_fold(x, y, folds, random_state):
    probability = np.full(len(y), np.nan)
    for train, test in folds:
        model = _model(random_state).fit(x[train], y[train])
        probability[test] = model.predict_proba(x[test])[:, 1]
    return probability


def classify_diagnoses(table, features=None, *, group_column="diagnosis", site_column="site",
                       min_scans=MIN_SCANS_PER_DIAGNOSIS, n_splits=5, random_state=0) -> dict:
    """Cross-validated logistic regression for each pair of diagnoses.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per scan (a wide table, raw or harmonised), without the excluded scans.
    features : sequence of str, optional
        Feature columns (default: ``table.attrs["features"]``); scans with a missing value are
        left out.
    group_column, site_column : str
        Diagnosis and site columns.
    min_scans : int
        Diagnoses with fewer scans are not classified.
    n_splits : int
        Folds of the stratified K-fold (at most the smaller class' size).
    random_state : int
        Seed of the fold assignment and the solver: results are reproducible.

    Returns
    -------
    dict
        ``summary``: one row per pair (:data:`SUMMARY_COLUMNS`; ``group_b`` is the positive
        class, the confusion matrix is at probability 0.5: ``tn`` = a called a, ``fp`` = a
        called b, ...); ``single_region``: per pair and feature, ``auc_cv`` (the same
        cross-validation on that feature alone) and ``auc`` (in-sample AUC of the raw value,
        > 0.5 when higher in ``group_b``); ``predictions``: per pair and scan, the out-of-fold
        probability of ``group_b``; ``note``: why nothing was classified, or None.
    """
    features = list(features if features is not None else table.attrs.get("features", []))
    labels = table[group_column].astype(str).where(table[group_column].notna())
    counts = labels.value_counts()
    eligible = sorted(group for group, count in counts.items() if count >= min_scans)
    summary, single, predictions = [], [], []
    note = None
    if len(eligible) < 2:
        found = ", ".join(f"{group} ({count})" for group, count in sorted(counts.items()))
        note = (f"classification needs at least 2 diagnoses with {min_scans} or more scans; "
                f"found {found or 'none'}")
    for group_a, group_b in itertools.combinations(eligible, 2):
        rows = table[labels.isin([group_a, group_b]).to_numpy()]
        x = rows[features].to_numpy(dtype=np.float64)
        complete = np.all(np.isfinite(x), axis=1)
        rows, x = rows[complete], x[complete]
        y = (rows[group_column].astype(str) == group_b).to_numpy(dtype=int)
        if min(np.bincount(y, minlength=2)) < 2:
            continue
        sites = rows[site_column].astype(str).to_numpy()
        folds, validation = _splits(y, sites, n_splits, random_state)
        probability = _out_of_fold(x, y, folds, random_state)
        predicted = (probability >= 0.5).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
        sensitivity, specificity = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
        summary.append({"group_a": group_a, "group_b": group_b, "n_a": int((y == 0).sum()),
                        "n_b": int((y == 1).sum()), "n_features": len(features),
                        "validation": validation, "n_folds": len(folds),
                        "auc": float(roc_auc_score(y, probability)),
                        "accuracy": float((predicted == y).mean()),
                        "balanced_accuracy": float((sensitivity + specificity) / 2),
                        "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)})
        for index, feature in enumerate(features):
            alone = _out_of_fold(x[:, [index]], y, folds, random_state)
            single.append({"group_a": group_a, "group_b": group_b, "feature": feature,
                           "auc_cv": float(roc_auc_score(y, alone)),
                           "auc": float(roc_auc_score(y, x[:, index]))})
        predictions.extend({"group_a": group_a, "group_b": group_b, "scan": scan,
                            "diagnosis": diagnosis, "probability_b": float(p)}
                           for scan, diagnosis, p in zip(rows["scan"], rows[group_column],
                                                         probability))
    return {"summary": pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)),
            "single_region": pd.DataFrame(single, columns=["group_a", "group_b", "feature",
                                                           "auc_cv", "auc"]),
            "predictions": pd.DataFrame(predictions, columns=["group_a", "group_b", "scan",
                                                              "diagnosis", "probability_b"]),
            "note": note}


def _pattern(diagnosis):
    text = str(diagnosis).strip()
    for pattern in RANGE_PATTERNS:
        if text.lower() == pattern.lower():
            return pattern
    if text.lower().replace(" ", "_").replace("-", "_") in CONTROL_LABELS:
        return "control"
    return None


def learned_reference_ranges(tidy, *, reference="csf", hemisphere="bilateral", low=10.0,
                             high=90.0, min_scans=MIN_SCANS_PER_DIAGNOSIS, exclude_scans=()
                             ) -> pd.DataFrame:
    """Reference ranges from a cohort: the ``low``-``high`` percentiles of the scans' means.

    For every region and diagnosis with at least ``min_scans`` scans, the 10th and 90th
    percentiles (by default; linear interpolation) of the regional means relative to
    ``reference``. Diagnoses are matched to the patterns of a reference-range table (CBS, PSP,
    PD, MSA, control, any case; ``HC``, ``healthy`` ... as control); others are left out.

    Returns
    -------
    pandas.DataFrame
        Columns ``region``, ``pattern``, ``low_ppb``, ``high_ppb``, ``reference``, ``source``,
        ``n_scans``, sorted by region and pattern (table order): the format of
        ``--reference-ranges`` (:func:`qsmprep.reports.cbs.read_reference_ranges`); write it
        with :func:`write_reference_ranges`.
    """
    rows = tidy[(tidy["reference"] == reference) & (tidy["hemisphere"] == hemisphere)
                & ~tidy["scan"].isin(list(exclude_scans))]
    rows = rows.assign(pattern=rows["diagnosis"].map(lambda value: _pattern(value)
                                                     if isinstance(value, str) else None))
    out = []
    order = {pattern: index for index, pattern in enumerate(RANGE_PATTERNS)}
    for region in sorted(rows["region"].unique()):
        for pattern in sorted(rows["pattern"].dropna().unique(), key=order.get):
            values = rows.loc[(rows["region"] == region) & (rows["pattern"] == pattern),
                              "mean_ppb"].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size < min_scans:
                continue
            low_ppb, high_ppb = np.percentile(values, [low, high])
            out.append({"region": region, "pattern": pattern,
                        "low_ppb": round(float(low_ppb), 2), "high_ppb": round(float(high_ppb), 2),
                        "reference": reference,
                        "source": (f"learned from this cohort: {low:g}th-{high:g}th percentile "
                                   f"of {values.size} scans' {hemisphere} means"),
                        "n_scans": int(values.size)})
    return pd.DataFrame(out, columns=["region", "pattern", "low_ppb", "high_ppb", "reference",
                                      "source", "n_scans"])


def write_reference_ranges(ranges, path) -> Path:
    """Write :func:`learned_reference_ranges` as a tab-separated reference-range table."""
    stream = io.StringIO()
    writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
    writer.writerow(list(ranges.columns))
    for record in ranges.itertuples(index=False):
        writer.writerow(["n/a" if isinstance(value, float) and math.isnan(value)
                         else (f"{value:.2f}" if isinstance(value, float) else value)
                         for value in record])
    return write_atomically(path, stream.getvalue())

