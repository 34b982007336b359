"""Regional iron against clinical measures: correlations, asymmetry by affected side, ratio ROC.

The review behind the report ("Quantitative Susceptibility Mapping for Corticobasal
Syndrome", section "Correlation with Clinical Features") states that cortical iron follows
motor severity (UPDRS-III), that the QSM asymmetry index follows the clinical asymmetry
(r = 0.72), that posterior cingulate and thalamic iron follow cognition (MMSE), and that the
cortical-to-subcortical iron ratio separates CBS from PSP with 85 % accuracy. This module
tests such claims on a cohort:

* :func:`correlate_clinical`: every clinical column (``--clinical-columns``, numbers from
  ``participants.tsv`` and ``sessions.tsv``) against every regional mean: Spearman's rank
  correlation (Spearman, Am J Psychol 1904;15:72-101; :func:`scipy.stats.spearmanr`), and
  the partial rank correlation adjusted for age, sex and site (:func:`partial_spearman`),
  with Benjamini-Hochberg q-values (J R Stat Soc B 1995;57:289-300) over the whole table,
  separately for each method;
* :func:`asymmetry_by_affected_side`: the absolute-value-safe asymmetry index
  ``AI = 200 (R - L) / (|R| + |L|)`` (:func:`qsmprep.regions.asymmetry_index`) of each region
  between scans whose left and whose right side is clinically more affected (Mann-Whitney U;
  Spearman's rho with the side coded L = -1, R = +1);
* :func:`ratio_roc`: the cortical-to-subcortical ratio of the report
  (:func:`qsmprep.reports.cbs.cortical_subcortical_ratio`) per scan and its ROC AUC for every
  pair of diagnoses (:func:`roc_auc`: Mann-Whitney U / (n_a n_b), Hanley & McNeil,
  Radiology 1982;143:29-36, for its standard error).

Small cohorts: a test needs :data:`MIN_PAIRS` scans with both values (and at least
:data:`MIN_PER_SIDE` per side for the asymmetry), a diagnosis :data:`MIN_PER_DIAGNOSIS` scans
for the ROC; below that no row is written, only a note ("too few scans for this (n=...;
needs ...)"). With 5 pairs the smallest two-sided Spearman p is below 0.05 only for a perfect
rank agreement, so fewer pairs could never show anything.

Every function is a plain function of pandas/numpy tables; :func:`run_clinical_analyses`
chains them for :func:`qsmprep.group.level.run_group_level`.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UsageError
from ..reports.cbs import cortical_subcortical_ratio
from .collect import _covariate_records, _read_tsv, feature_name, parse_feature
from .statistics import benjamini_hochberg

#: Fewest scans with both values for a correlation or a comparison (see the module docstring).
MIN_PAIRS = 5
#: Fewest scans per clinically more affected side for the asymmetry comparison.
MIN_PER_SIDE = 2
#: Fewest scans per diagnosis for a ratio ROC.
MIN_PER_DIAGNOSIS = 3
#: Covariates of the partial correlations, used when present and varying.
ADJUSTMENT_COVARIATES = ("age", "sex", "site")
#: Columns of :func:`correlate_clinical`.
CORRELATION_COLUMNS = ("clinical", "feature", "region", "hemisphere", "n", "rho", "p", "q",
                       "covariates", "partial_n", "partial_rho", "partial_p", "partial_q")
#: Columns of :func:`asymmetry_by_affected_side`.
ASYMMETRY_COLUMNS = ("region", "feature", "n", "n_left", "n_right", "mean_ai_left",
                     "mean_ai_right", "difference", "u", "p", "q", "rho")
#: Columns of :func:`ratio_roc`.
ROC_COLUMNS = ("group_a", "group_b", "positive", "n_a", "n_b", "median_ratio_a",
               "median_ratio_b", "auc", "auc_se", "auc_ci_low", "auc_ci_high", "u", "p")
#: Values of the affected-side column read as left (-1) and right (+1), lower case.
SIDE_CODES = {"l": -1.0, "left": -1.0, "lh": -1.0, "r": 1.0, "right": 1.0, "rh": 1.0}

_Z95 = 1.959963984540054


def too_few(what: str, n: int, needs: str) -> str:
    """The note of a test left out: ``"<what>: too few scans for this (n=<n>; needs <needs>)"``."""
    return f"{what}: too few scans for this (n={n}; needs {needs})"


# --------------------------------------------------------------------- the clinical columns
def _column_sources(bids_dir) -> list[tuple[Path, list[str]]]:
    bids_dir = Path(bids_dir)
    paths = [bids_dir / "participants.tsv"] if (bids_dir / "participants.tsv").is_file() else []
    paths += sorted(bids_dir.glob("sub-*/sub-*_sessions.tsv"))
    return [(path, list(_read_tsv(path).columns)) for path in paths]


def check_clinical_columns(bids_dir, columns) -> list[str]:
    """``columns`` without repeats, after checking that each is a column of
    ``participants.tsv`` or of a ``sub-*/sub-*_sessions.tsv`` of ``bids_dir``.

    Raises
    ------
    UsageError
        Naming the missing columns and the files searched (with the columns they have).
    """
    columns = list(dict.fromkeys(str(column) for column in columns))
    if not columns:
        return columns
    sources = _column_sources(bids_dir)
    if not sources:
        raise UsageError(f"--clinical-columns: {Path(bids_dir) / 'participants.tsv'} does not "
                         "exist and no sub-*/sub-*_sessions.tsv either: nowhere to read "
                         f"{', '.join(columns)} from")
    present = {column for _, names in sources for column in names}
    missing = [column for column in columns if column not in present]
    if missing:
        searched = "; ".join(f"{path.relative_to(bids_dir)} "
                             f"({', '.join(names) or 'no columns'})" for path, names in
                             sources[:4])
        more = f"; and {len(sources) - 4} more sessions.tsv" if len(sources) > 4 else ""
        raise UsageError(f"--clinical-columns: no column {', '.join(map(repr, missing))} in "
                         f"participants.tsv or any sessions.tsv of {bids_dir} (searched: "
                         f"{searched}{more})")
    return columns


def _as_number(value):
    """``(number, is_text)``: NaN for a missing cell; ``is_text`` for a cell that is not one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan, False
    try:
        number = float(str(value).strip())
    except ValueError:
        return math.nan, True
    return (number, False) if math.isfinite(number) else (math.nan, True)


def clinical_values(scans, bids_dir, columns) -> tuple[pd.DataFrame, list[str]]:
    """The clinical ``columns`` of every scan as numbers, with notes on what was not a number.

    Values come from ``participants.tsv``; those of the scan's session in
    ``sub-<label>/sub-<label>_sessions.tsv`` take precedence, as for the covariates of
    :func:`qsmprep.group.collect.collect_participant_results`. Cells that are ``n/a``, empty
    or not a number (text such as ``severe``) are missing (NaN).

    Parameters
    ----------
    scans : pandas.DataFrame
        One row per scan with ``subject`` and ``session`` (a wide or scan table).
    bids_dir : path
        The BIDS dataset.
    columns : sequence of str
        The clinical columns.

    Returns
    -------
    (pandas.DataFrame, list of str)
        One float column per clinical column, rows aligned with ``scans``; and notes such as
        ``"UPDRS_III: 1 value that is not a number treated as missing ('severe' for sub-03)"``.
    """
    participants, sessions = _covariate_records(bids_dir, "site")
    values = {column: np.full(len(scans), np.nan) for column in columns}
    text = {column: [] for column in columns}
    for index, (subject, session) in enumerate(zip(scans["subject"], scans["session"])):
        record = dict(participants.get(subject, {}))
        session = session if isinstance(session, str) else None
        record.update({key: value for key, value in sessions.get((subject, session), {}).items()
                       if isinstance(value, str)})
        for column in columns:
            number, is_text = _as_number(record.get(column))
            values[column][index] = number
            if is_text:
                text[column].append(f"{record.get(column)!r} for {subject}"
                                    f"{'' if session is None else ' ' + session}")
    notes = []
    for column in columns:
        if text[column]:
            shown = ", ".join(text[column][:3]) + (", ..." if len(text[column]) > 3 else "")
            count = len(text[column])
            notes.append(f"{column}: {count} value{'s' if count > 1 else ''} that "
                         f"{'are' if count > 1 else 'is'} not a number treated as missing "
                         f"({shown})")
    return pd.DataFrame(values, index=scans.index), notes


# ---------------------------------------------------------------------------- correlations
def spearman(x, y) -> tuple[float, float, int]:
    """Spearman's rank correlation ``(rho, p, n)`` of the pairs where both are finite.

    Spearman (Am J Psychol 1904;15:72-101) via :func:`scipy.stats.spearmanr` (average ranks
    for ties; two-sided p from Student's t with n - 2 degrees of freedom). NaN for rho and p
    when fewer than 3 pairs or either variable is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, n
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue), n


def _design(covariates: pd.DataFrame) -> np.ndarray:
    """Intercept, ranks of the numeric covariates and 0/1 indicators of all levels but the
    first of the others (``sex``, ``site``)."""
    blocks = [np.ones((len(covariates), 1))]
    for name in covariates.columns:
        column = covariates[name]
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().all():
            blocks.append(stats.rankdata(numeric.to_numpy(dtype=np.float64))[:, None])
        else:
            levels = sorted(column.astype(str).unique())
            blocks.extend((column.astype(str).to_numpy() == level).astype(float)[:, None]
                          for level in levels[1:])
    return np.hstack(blocks)


def partial_spearman(x, y, covariates=None) -> tuple[float, float, int]:
    """Partial Spearman correlation ``(rho, p, n)`` of ``x`` and ``y`` given ``covariates``.

    The partial rank correlation: the ranks of ``x`` and of ``y`` are each regressed (least
    squares) on the covariates (intercept, ranks of the numeric covariates, indicators of the
    categorical ones), and rho is the Pearson correlation of the two residuals (Conover,
    Practical Nonparametric Statistics, 3rd ed., 1999, section 5.5). p is two-sided, from
    ``t = rho sqrt(df / (1 - rho^2))`` with ``df = n - 2 - k`` (k: the covariate terms,
    counted as the rank of the design less the intercept), the usual test of a partial
    correlation. Without covariates this is exactly :func:`spearman`.

    Pairs with a missing value in ``x``, ``y`` or a covariate are left out. NaN for rho and p
    when ``df < 1`` or a residual is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    covariates = (pd.DataFrame(index=range(x.size)) if covariates is None
                  else pd.DataFrame(covariates).reset_index(drop=True))
    keep = np.isfinite(x) & np.isfinite(y) & covariates.notna().all(axis=1).to_numpy()
    n = int(keep.sum())
    if n < 3:
        return math.nan, math.nan, n
    design = _design(covariates[keep])
    df = n - np.linalg.matrix_rank(design) - 1
    if df < 1:
        return math.nan, math.nan, n
    ranks = np.column_stack([stats.rankdata(x[keep]), stats.rankdata(y[keep])])
    coefficients, *_ = np.linalg.lstsq(design, ranks, rcond=None)
    residuals = ranks - design @ coefficients
    spread = residuals.std(axis=0)
    if np.any(spread <= 1e-12 * max(n, 1)):
        return math.nan, math.nan, n
    rho = float(np.clip(np.corrcoef(residuals.T)[0, 1], -1.0, 1.0))
    if abs(rho) >= 1.0:
        return rho, 0.0, n
    t = rho * math.sqrt(df / (1.0 - rho * rho))
    return rho, float(2.0 * stats.t.sf(abs(t), df)), n


def adjustment_covariates(table, candidates=ADJUSTMENT_COVARIATES) -> tuple[list[str], list[str]]:
    """The covariates of ``candidates`` to adjust for in ``table`` (the scans of one test),
    and notes on those left out.

    A covariate is used when the column exists, has a value for every scan and takes at least
    two values; one missing for some scans is left out (so the partial correlation keeps the
    same scans as the plain one) with a note.
    """
    used, notes = [], []
    for name in candidates:
        if name not in table.columns:
            continue
        column = table[name]
        missing = int(column.isna().sum())
        if missing == len(column):
            continue
        if missing:
            notes.append(f"{name} missing for {missing} of {len(column)} scans: not adjusted for")
            continue
        if column.astype(str).nunique() > 1:
            used.append(name)
    return used, notes


def _summary_of_too_few(column, counts, needs):
    low, high = min(counts), max(counts)
    n = str(low) if low == high else f"{low} to {high}"
    return f"{column}: too few scans for this (n={n}; needs {needs})"


def correlate_clinical(wide, clinical, features=None, *,
                       covariates=ADJUSTMENT_COVARIATES) -> tuple[pd.DataFrame, list[str]]:
    """Every clinical column against every regional mean, plain and partial Spearman.

    Parameters
    ----------
    wide : pandas.DataFrame
        One row per scan (:func:`qsmprep.group.collect.wide_table`: CSF-referenced means of
        each region, left, right and bilateral), with the ``age``, ``sex`` and ``site``
        covariates.
    clinical : pandas.DataFrame
        One float column per clinical measure, rows aligned with ``wide``
        (:func:`clinical_values`).
    features : sequence of str, optional
        The regional columns (default: ``wide.attrs["features"]``).
    covariates : sequence of str
        Candidates for the adjustment; per clinical column those with a value for every scan
        that has the measure, and more than one value, are used (:func:`adjustment_covariates`).

    Returns
    -------
    (pandas.DataFrame, list of str)
        Columns :data:`CORRELATION_COLUMNS`: ``rho``, ``p`` (:func:`spearman`), ``q``
        (Benjamini-Hochberg over the whole table), ``covariates`` (those adjusted for, joined
        by ``", "``, or ``none``), ``partial_rho``, ``partial_p``, ``partial_q``
        (:func:`partial_spearman`, Benjamini-Hochberg over the whole table). One row per
        clinical column x feature with at least :data:`MIN_PAIRS` scans and a defined rho,
        ordered by clinical column, then feature; the rest is in the notes.
    """
    features = list(features if features is not None else wide.attrs.get("features", []))
    rows, notes = [], []
    wide = wide.reset_index(drop=True)
    clinical = clinical.reset_index(drop=True)
    for column in clinical.columns:
        measure = clinical[column].to_numpy(dtype=np.float64)
        has_measure = np.isfinite(measure)
        n_measure = int(has_measure.sum())
        if n_measure < MIN_PAIRS:
            notes.append(too_few(f"{column} against regional iron", n_measure,
                                 f"{MIN_PAIRS} scans with a value"))
            continue
        if np.ptp(measure[has_measure]) == 0:
            notes.append(f"{column}: the same value for every scan, no correlation")
            continue
        used, covariate_notes = adjustment_covariates(
            wide.loc[has_measure], [name for name in covariates if name != column])
        notes.extend(f"{column}: {note}" for note in covariate_notes)
        adjustment = wide[used] if used else None
        terms = np.linalg.matrix_rank(_design(wide.loc[has_measure, used])) - 1
        short, undefined, unadjusted = [], 0, []
        for feature in features:
            values = wide[feature].to_numpy(dtype=np.float64)
            rho, p, n = spearman(values, measure)
            if n < MIN_PAIRS:
                short.append(n)
                continue
            if not math.isfinite(rho):
                undefined += 1
                continue
            partial_rho, partial_p, partial_n = partial_spearman(values, measure, adjustment)
            if partial_n < MIN_PAIRS + terms:
                partial_rho = partial_p = math.nan
            if used and not math.isfinite(partial_p):
                unadjusted.append(partial_n)
            region, hemisphere, _ = parse_feature(feature)
            rows.append({"clinical": column, "feature": feature, "region": region,
                         "hemisphere": hemisphere, "n": n, "rho": rho, "p": p,
                         "covariates": ", ".join(used) or "none", "partial_n": partial_n,
                         "partial_rho": partial_rho, "partial_p": partial_p})
        if short:
            notes.append(_summary_of_too_few(f"{column} against {len(short)} region feature"
                                             f"{'s' if len(short) > 1 else ''}", short,
                                             MIN_PAIRS))
        if undefined:
            notes.append(f"{column}: {undefined} region feature{'s' if undefined > 1 else ''} "
                         "constant across scans, no correlation")
        if unadjusted:
            if min(unadjusted) < MIN_PAIRS + terms:
                notes.append(_summary_of_too_few(
                    f"{column}: partial correlation adjusted for {', '.join(used)}",
                    unadjusted, f"{MIN_PAIRS + terms} for {terms} covariate "
                    f"term{'s' if terms > 1 else ''}"))
            else:
                notes.append(f"{column}: partial correlation undefined for "
                             f"{len(unadjusted)} region feature(s): a residual is constant "
                             f"after adjusting for {', '.join(used)}")
    table = pd.DataFrame(rows, columns=[column for column in CORRELATION_COLUMNS
                                        if column not in ("q", "partial_q")])
    table.insert(table.columns.get_loc("p") + 1, "q",
                 benjamini_hochberg(table["p"].to_numpy(dtype=np.float64)))
    table["partial_q"] = benjamini_hochberg(table["partial_p"].to_numpy(dtype=np.float64))
    return table[list(CORRELATION_COLUMNS)], notes


# --------------------------------------------------------------------------------- asymmetry
def side_codes(values) -> np.ndarray:
    """The clinically more affected side coded ``L = -1``, ``R = +1`` (:data:`SIDE_CODES`,
    case-insensitive); NaN for anything else (missing, ``bilateral``, ``none``)."""
    return np.array([SIDE_CODES.get(str(value).strip().lower(), math.nan)
                     if isinstance(value, str) else math.nan for value in values],
                    dtype=np.float64)


def asymmetry_by_affected_side(tidy, reference="csf") -> tuple[pd.DataFrame, list[str]]:
    """The QSM asymmetry index of each region between left- and right-affected scans.

    The index is the absolute-value-safe ``AI = 200 (R - L) / (|R| + |L|)`` (``ai_abs_pct``
    of the ``reference`` values; positive: more iron on the right). The clinically more
    affected side (``affected_side`` of :func:`qsmprep.group.collect.collect_participant_results`)
    is coded L = -1, R = +1 (:func:`side_codes`). Per region:

    * the mean AI of the left- and of the right-affected scans and their difference
      (right minus left);
    * the Mann-Whitney U test of the AI between the two sides (two-sided, exact for small
      samples without ties; Mann & Whitney, Ann Math Stat 1947;18:50-60), ``q`` its
      Benjamini-Hochberg adjustment over the regions;
    * ``rho``: Spearman's correlation of the AI with the side code. With a two-valued side
      it is the point-biserial correlation of the AI's ranks (Glass's rank-biserial
      correlation up to a factor), whose test is the Mann-Whitney test above, so the table
      reports that test's exact p. A negative rho means more iron contralateral to the
      affected side, as expected where iron follows the degeneration (CBS, PD).

    The review's r = 0.72 correlates a graded clinical asymmetry with the AI; a column that
    names only the side gives the direction, not the degree, of the clinical asymmetry, so
    rho here is not the same quantity (and smaller for the same data).

    Returns
    -------
    (pandas.DataFrame, list of str)
        Columns :data:`ASYMMETRY_COLUMNS`, one row per region with at least
        :data:`MIN_PAIRS` scans and :data:`MIN_PER_SIDE` per side; notes otherwise.
    """
    notes = []
    if tidy is None or len(tidy) == 0 or "affected_side" not in tidy.columns:
        return pd.DataFrame(columns=list(ASYMMETRY_COLUMNS)), notes
    rows = tidy[(tidy["hemisphere"] == "bilateral") & (tidy["reference"] == reference)]
    if rows["affected_side"].isna().all():
        return pd.DataFrame(columns=list(ASYMMETRY_COLUMNS)), notes
    scans = rows.drop_duplicates("scan")
    codes = side_codes(scans["affected_side"])
    unknown = sorted({str(value) for value, code in zip(scans["affected_side"], codes)
                      if isinstance(value, str) and not np.isfinite(code)})
    if unknown:
        notes.append(f"affected side: {', '.join(map(repr, unknown))} is neither left nor right; "
                     "those scans are left out of the asymmetry comparison")
    side_of = dict(zip(scans["scan"], codes))
    results = []
    counts = []
    for region, block in rows.groupby("region", sort=True):
        ai = block["ai_abs_pct"].to_numpy(dtype=np.float64)
        side = block["scan"].map(side_of).to_numpy(dtype=np.float64)
        keep = np.isfinite(ai) & np.isfinite(side)
        left, right = ai[keep & (side < 0)], ai[keep & (side > 0)]
        if left.size + right.size < MIN_PAIRS or min(left.size, right.size) < MIN_PER_SIDE:
            counts.append((left.size, right.size))
            continue
        test = stats.mannwhitneyu(right, left, alternative="two-sided")
        rho, _, _ = spearman(ai[keep], side[keep])
        results.append({"region": region, "feature": feature_name(region, "bilateral",
                                                                  "ai_abs_pct"),
                        "n": int(left.size + right.size), "n_left": int(left.size),
                        "n_right": int(right.size), "mean_ai_left": float(left.mean()),
                        "mean_ai_right": float(right.mean()),
                        "difference": float(right.mean() - left.mean()),
                        "u": float(test.statistic), "p": float(test.pvalue), "rho": rho})
    if counts:
        totals = [left + right for left, right in counts]
        notes.append(too_few(
            "asymmetry index against the affected side",
            min(totals) if min(totals) == max(totals) else f"{min(totals)} to {max(totals)}",
            f"{MIN_PAIRS} scans with a left or right affected side, {MIN_PER_SIDE} per side; "
            f"left/right: {counts[0][0]}/{counts[0][1]}"))
    table = pd.DataFrame(results, columns=[column for column in ASYMMETRY_COLUMNS
                                           if column != "q"])
    table.insert(table.columns.get_loc("p") + 1, "q",
                 benjamini_hochberg(table["p"].to_numpy(dtype=np.float64)))
    return table[list(ASYMMETRY_COLUMNS)], notes


# ----------------------------------------------------------------------------------- ratio ROC
def roc_auc(negative, positive) -> dict:
    """The area under the ROC curve of ``positive`` against ``negative`` scores.

    ``AUC = U / (n_neg n_pos)``, U the Mann-Whitney statistic of the positive scores (the
    probability that a positive scores higher than a negative, ties counting one half). Its
    standard error is that of Hanley & McNeil (Radiology 1982;143:29-36):
    ``SE^2 = (A (1 - A) + (n_pos - 1) (Q1 - A^2) + (n_neg - 1) (Q2 - A^2)) / (n_pos n_neg)``
    with ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``; the 95 % interval ``A +- 1.96 SE`` is
    clipped to [0, 1]. ``p``: the two-sided Mann-Whitney test of AUC = 0.5.

    >>> roc_auc([1.0, 2.0], [3.0, 1.5])["auc"]
    0.75

    Returns
    -------
    dict
        ``auc``, ``auc_se``, ``auc_ci_low``, ``auc_ci_high``, ``u``, ``p``, ``n_negative``,
        ``n_positive`` (NaN values when a group is empty).
    """
    negative = np.asarray(negative, dtype=np.float64)
    positive = np.asarray(positive, dtype=np.float64)
    negative, positive = negative[np.isfinite(negative)], positive[np.isfinite(positive)]
    result = {"auc": math.nan, "auc_se": math.nan, "auc_ci_low": math.nan,
              "auc_ci_high": math.nan, "u": math.nan, "p": math.nan,
              "n_negative": int(negative.size), "n_positive": int(positive.size)}
    if negative.size == 0 or positive.size == 0:
        return result
    test = stats.mannwhitneyu(positive, negative, alternative="two-sided")
    area = float(test.statistic) / (negative.size * positive.size)
    q1, q2 = area / (2.0 - area), 2.0 * area * area / (1.0 + area)
    variance = (area * (1.0 - area) + (positive.size - 1) * (q1 - area * area)
                + (negative.size - 1) * (q2 - area * area)) / (positive.size * negative.size)
    se = math.sqrt(max(variance, 0.0))
    result.update(auc=area, auc_se=se, auc_ci_low=max(0.0, area - _Z95 * se),
                  auc_ci_high=min(1.0, area + _Z95 * se), u=float(test.statistic),
                  p=float(test.pvalue))
    return result


RATIO_REGIONS = ("motor_cortex", "globus_pallidus_interna", "red_nucleus")


def scan_ratios(wide) -> np.ndarray | None:
    """The cortical-to-subcortical ratio of each scan of a wide table (CSF-referenced means):
    :func:`qsmprep.reports.cbs.cortical_subcortical_ratio` of the motor cortex (L, R,
    bilateral), GPi and red nucleus; None when the table lacks one of these regions."""
    def column(region, hemisphere):
        name = feature_name(region, hemisphere)
        return wide[name].to_numpy(dtype=np.float64) if name in wide.columns else None

    gpi, red_nucleus = (column(region, "bilateral") for region in RATIO_REGIONS[1:])
    sides = [column("motor_cortex", hemisphere) for hemisphere in ("L", "R", "bilateral")]
    if gpi is None or red_nucleus is None or all(side is None for side in sides):
        return None
    missing = np.full(len(wide), np.nan)
    left, right, both = (missing if side is None else side for side in sides)
    return np.asarray(cortical_subcortical_ratio(left, right, gpi, red_nucleus,
                                                 motor_bilateral=both), dtype=np.float64)


def ratio_roc(wide, *, group_column="diagnosis") -> tuple[pd.DataFrame, pd.DataFrame,
                                                          list[str]]:
    """ROC of the cortical-to-subcortical ratio for every pair of diagnoses.

    For each pair (names sorted, ``group_a < group_b``) with at least
    :data:`MIN_PER_DIAGNOSIS` scans with a ratio each: :func:`roc_auc` with ``positive`` the
    diagnosis whose ratios rank higher (the direction is read from the data, so the AUC is
    at least 0.5 and optimistic in small groups; the two-sided Mann-Whitney p allows for
    that choice).

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame, list of str)
        The table (:data:`ROC_COLUMNS`), the scores for
        :func:`qsmprep.reports.figures.plot_roc_curves` (``group_a`` the negative and
        ``group_b`` the positive diagnosis, ``diagnosis``, ``probability_b`` = the ratio), and
        notes.
    """
    empty = (pd.DataFrame(columns=list(ROC_COLUMNS)),
             pd.DataFrame(columns=["group_a", "group_b", "scan", "diagnosis", "probability_b"]))
    if wide is None or len(wide) == 0 or group_column not in wide.columns \
            or wide[group_column].notna().sum() == 0:
        return (*empty, [])
    ratios = scan_ratios(wide)
    if ratios is None:
        return (*empty, ["cortical-to-subcortical ratio: the regional tables lack "
                         f"{', '.join(RATIO_REGIONS)} (all three are needed)"])
    labels = wide[group_column].astype(str).where(wide[group_column].notna()).to_numpy()
    groups = sorted({label for label in labels if isinstance(label, str)})
    counts = {group: int(np.sum((labels == group) & np.isfinite(ratios))) for group in groups}
    enough = [group for group in groups if counts[group] >= MIN_PER_DIAGNOSIS]
    rows, scores = [], []
    for group_a, group_b in itertools.combinations(enough, 2):
        a = ratios[(labels == group_a) & np.isfinite(ratios)]
        b = ratios[(labels == group_b) & np.isfinite(ratios)]
        b_higher = roc_auc(a, b)["auc"] >= 0.5
        negative, positive = (group_a, group_b) if b_higher else (group_b, group_a)
        result = roc_auc(a, b) if b_higher else roc_auc(b, a)
        rows.append({"group_a": group_a, "group_b": group_b, "positive": positive,
                     "n_a": int(a.size), "n_b": int(b.size), "median_ratio_a": float(np.median(a)),
                     "median_ratio_b": float(np.median(b)),
                     **{key: result[key] for key in ROC_COLUMNS[7:]}})
        chosen = np.flatnonzero(np.isin(labels, [group_a, group_b]) & np.isfinite(ratios))
        scores.append(pd.DataFrame({"group_a": negative, "group_b": positive,
                                    "scan": wide["scan"].to_numpy()[chosen],
                                    "diagnosis": labels[chosen],
                                    "probability_b": ratios[chosen]}))
    notes = []
    short = [group for group in groups if group not in enough]
    if len(groups) >= 2 and short:
        listed = ", ".join(f"{group} {counts[group]}" for group in short)
        notes.append(too_few("cortical-to-subcortical ratio ROC", listed,
                             f"{MIN_PER_DIAGNOSIS} scans with a ratio per diagnosis"))
    table = pd.DataFrame(rows, columns=list(ROC_COLUMNS))
    predictions = pd.concat(scores, ignore_index=True) if scores else empty[1]
    return table, predictions, notes


# ------------------------------------------------------------------------------ orchestration
def run_clinical_analyses(tidy, wide, bids_dir=None, clinical_columns=()) -> dict:
    """The clinical analyses of the group level, on the scans that passed quality control.

    Parameters
    ----------
    tidy : pandas.DataFrame
        The tidy table of the analysed scans (for the asymmetry index).
    wide : pandas.DataFrame
        Their wide table (CSF-referenced means; ``attrs["features"]``).
    bids_dir : path, optional
        The BIDS dataset, for the clinical columns.
    clinical_columns : sequence of str
        The clinical columns to correlate (none: no correlations).

    Returns
    -------
    dict
        ``correlations``, ``asymmetry``, ``ratio_roc`` (tables, possibly empty),
        ``ratio_scores`` (for the ROC figure), ``values`` (``wide`` with the clinical columns,
        for the scatter figure), ``columns`` and ``notes``.
    """
    notes = []
    columns = [str(column) for column in clinical_columns or ()]
    clinical = pd.DataFrame(index=wide.index)
    if columns:
        if bids_dir is None:
            notes.append("clinical columns need the BIDS dataset's participants.tsv")
        else:
            clinical, value_notes = clinical_values(wide, bids_dir, columns)
            notes.extend(value_notes)
    correlations, correlation_notes = correlate_clinical(wide, clinical)
    notes.extend(correlation_notes)
    asymmetry, asymmetry_notes = asymmetry_by_affected_side(tidy)
    notes.extend(asymmetry_notes)
    roc, scores, roc_notes = ratio_roc(wide)
    notes.extend(roc_notes)
    values = wide.drop(columns=[column for column in clinical.columns if column in wide.columns])
    values = pd.concat([values, clinical], axis=1)
    values.attrs = dict(wide.attrs)
    return {"correlations": correlations, "asymmetry": asymmetry, "ratio_roc": roc,
            "ratio_scores": scores, "values": values, "columns": list(clinical.columns),
            "notes": notes}
