"""Region-by-region comparison of diagnoses.

For every feature (region x hemisphere) and every pair of diagnoses:

* the effect size Hedges' g: Cohen's d with the pooled SD, times the small-sample correction
  ``J = 1 - 3 / (4 (n_a + n_b) - 9)`` (Hedges, J Educ Stat 1981;6:107-128; Hedges & Olkin,
  Statistical Methods for Meta-Analysis, 1985), with its approximate 95% confidence interval;
* Welch's unequal-variance t-test (Welch, Biometrika 1947;34:28-35);
* p-values adjusted for the false discovery rate over all rows of the table (Benjamini &
  Hochberg, J R Stat Soc B 1995;57:289-300).

:func:`compare_asymmetry` applies the same to the absolute-value-safe asymmetry index
(``ai_abs_pct``, :mod:`qsmprep.regions`), and :func:`site_effects` tests for differences between
sites (one-way ANOVA), e.g. before and after harmonisation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

from .collect import parse_feature, wide_table

COMPARISON_COLUMNS = ("feature", "region", "hemisphere", "statistic", "group_a", "group_b",
                      "n_a", "n_b", "mean_a", "mean_b", "sd_a", "sd_b", "difference", "hedges_g",
                      "g_ci_low", "g_ci_high", "t", "df", "p", "p_fdr")


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and do not count.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.2]).round(3).tolist()
    [0.04, 0.053, 0.053, 0.2]
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    if valid.size == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="mergesort")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


def hedges_g(a, b) -> tuple[float, float, float]:
    """Hedges' g of ``a`` minus ``b`` and its approximate 95% CI ``(g, low, high)``.

    The CI uses the large-sample variance ``(n_a + n_b) / (n_a n_b) + g^2 / (2 (n_a + n_b))``
    (Hedges & Olkin 1985). NaN when a group has fewer than 2 values or the pooled SD is zero.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n_a, n_b = a.size, b.size
    if n_a < 2 or n_b < 2:
        return math.nan, math.nan, math.nan
    pooled = math.sqrt(((n_a - 1) * a.var(ddof=1) + (n_b - 1) * b.var(ddof=1)) / (n_a + n_b - 2))
    if pooled == 0:
        return math.nan, math.nan, math.nan
    correction = 1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)
    g = correction * (a.mean() - b.mean()) / pooled
    se = math.sqrt((n_a + n_b) / (n_a * n_b) + g ** 2 / (2.0 * (n_a + n_b)))
    return float(g), float(g - 1.959963984540054 * se), float(g + 1.959963984540054 * se)


def _features(table, features):
    return list(features if features is not None else table.attrs.get("features", []))


def _groups(table, column):
    values = table[column]
    return sorted(values[values.notna()].astype(str).unique())


def describe_groups(table, features=None, *, group_column="diagnosis") -> pd.DataFrame:
    """Count, mean and SD of each feature per diagnosis.

    Returns columns ``feature``, ``region``, ``hemisphere``, ``statistic``, ``group``, ``n``,
    ``mean``, ``sd`` (sample SD), sorted by feature (table order) and group.
    """
    rows = []
    for feature in _features(table, features):
        region, hemisphere, statistic = _split(feature)
        for group in _groups(table, group_column):
            values = table.loc[table[group_column].astype(str) == group, feature]
            values = values.to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            rows.append({"feature": feature, "region": region, "hemisphere": hemisphere,
                         "statistic": statistic, "group": group, "n": int(values.size),
                         "mean": float(values.mean()) if values.size else math.nan,
                         "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan})
    return pd.DataFrame(rows, columns=["feature", "region", "hemisphere", "statistic", "group",
                                       "n", "mean", "sd"])


def _split(feature):
    """Region, hemisphere and statistic of a feature, also for suffixed (harmonised) names."""
    for candidate in (feature, feature.rsplit("_", 1)[0]):
        try:
            return parse_feature(candidate)
        except ValueError:
            continue
    return feature, None, None


def compare_groups(table, features=None, *, group_column="diagnosis") -> pd.DataFrame:
    """Every pair of diagnoses compared on every feature.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per scan (a wide table, raw or harmonised).
    features : sequence of str, optional
        Columns to compare (default: ``table.attrs["features"]``).
    group_column : str
        The diagnosis column; scans without a value are left out.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COMPARISON_COLUMNS`: for groups ``a < b`` (sorted names), sizes, means,
        SDs, ``difference`` (mean a - mean b), Hedges' g (a - b) with its 95% CI, Welch's t, its
        degrees of freedom and p, and ``p_fdr`` (Benjamini-Hochberg over all rows). Rows are
        ordered by feature (table order), then pair.
    """
    groups = _groups(table, group_column)
    labels = table[group_column].astype(str).where(table[group_column].notna())
    rows = []
    for feature in _features(table, features):
        region, hemisphere, statistic = _split(feature)
        values = table[feature].to_numpy(dtype=np.float64)
        for group_a, group_b in itertools.combinations(groups, 2):
            a = values[(labels == group_a).to_numpy()]
            b = values[(labels == group_b).to_numpy()]
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            g, low, high = hedges_g(a, b)
            if a.size >= 2 and b.size >= 2 and (a.var(ddof=1) > 0 or b.var(ddof=1) > 0):
                test = stats.ttest_ind(a, b, equal_var=False)
                t, p = float(test.statistic), float(test.pvalue)
                va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
                df = float((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)))
            else:
                t = p = df = math.nan
            rows.append({
                "feature": feature, "region": region, "hemisphere": hemisphere,
                "statistic": statistic, "group_a": group_a, "group_b": group_b,
                "n_a": int(a.size), "n_b": int(b.size),
                "mean_a": float(a.mean()) if a.size else math.nan,
                "mean_b": float(b.mean()) if b.size else math.nan,
                "sd_a": float(a.std(ddof=1)) if a.size > 1 else math.nan,
                "sd_b": float(b.std(ddof=1)) if b.size > 1 else math.nan,
                "difference": float(a.mean() - b.mean()) if a.size and b.size else math.nan,
                "hedges_g": g, "g_ci_low": low, "g_ci_high": high, "t": t, "df": df, "p": p})
    result = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS[:-1]))
    result["p_fdr"] = benjamini_hochberg(result["p"].to_numpy()) if len(result) else []
    return result


def compare_asymmetry(tidy, reference="csf", *, group_column="diagnosis",
                      exclude_scans=()) -> pd.DataFrame:
    """Diagnoses compared on the hemispheric asymmetry ``ai_abs_pct`` of each region.

    ``tidy`` is the table of :func:`qsmprep.group.collect.collect_participant_results`;
    ``exclude_scans`` names scans to leave out. Returns the columns of :func:`compare_groups`
    with features ``<region>_bilateral_ai_abs_pct`` (regions with no asymmetry left out).
    """
    tidy = tidy[~tidy["scan"].isin(list(exclude_scans))]
    wide = wide_table(tidy, reference, statistic="ai_abs_pct", hemispheres=("bilateral",))
    features = [feature for feature in wide.attrs["features"]
                if np.isfinite(wide[feature].to_numpy(dtype=np.float64)).any()]
    return compare_groups(wide, features, group_column=group_column)


def site_effects(table, features=None, *, site_column="site") -> pd.DataFrame:
    """One-way ANOVA of each feature across sites: columns ``feature``, ``F``, ``p``.

    NaN where fewer than 2 sites have values.
    """
    rows = []
    sites = sorted(table[site_column].astype(str).unique())
    for feature in _features(table, features):
        samples = []
        for site in sites:
            values = table.loc[table[site_column].astype(str) == site, feature]
            values = values.to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                samples.append(values)
        if len(samples) >= 2 and sum(sample.size for sample in samples) > len(samples):
            result = stats.f_oneway(*samples)
            rows.append({"feature": feature, "F": float(result.statistic),
                         "p": float(result.pvalue)})
        else:
            rows.append({"feature": feature, "F": math.nan, "p": math.nan})
    return pd.DataFrame(rows, columns=["feature", "F", "p"])
