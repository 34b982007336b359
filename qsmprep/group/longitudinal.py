"""Change over time across the cohort: annual rates of regional susceptibility by diagnosis.

For participants scanned in two or more dated sessions, the CSF-referenced regional mean of
every region and hemisphere is modelled with a linear mixed-effects model (Laird & Ware,
Biometrics 1982;38:963-974), fitted by restricted maximum likelihood with statsmodels'
``MixedLM`` (Seabold & Perktold, Proc. 9th Python in Science Conf. 2010)::

    value_ij = b0 + b1 years_ij + b2[diagnosis_i] + b3[diagnosis_i] years_ij + u_i + e_ij

with ``years_ij`` the time since participant ``i``'s first dated session, a random intercept
``u_i ~ N(0, tau^2)`` per participant (each participant's own level) and residual
``e_ij ~ N(0, sigma^2)``. The fixed effects (years, diagnosis and their interaction) are coded
with one intercept and one slope per diagnosis, an equivalent parameterisation of the same
model whose slope coefficients are directly each diagnosis' annual rate (ppb/year); their
Wald 95 % confidence intervals and p-values (H0: no change) are reported, with p-values
adjusted for the false discovery rate over all rows (Benjamini & Hochberg 1995).

Participants seen once still inform their diagnosis' intercept and the variance components;
the slopes rest on those followed over time. A diagnosis needs at least
:data:`MIN_FOLLOWED_PARTICIPANTS` participants with two or more dated sessions; with fewer the
step says so in a note instead of writing rows of missing values. Values are the raw (not
site-harmonised) means: a participant who changes scanner between sessions confounds change
with site.

Acquisition dates come from each scan's report (``acquisition.acquisition_date``, read at the
participant level from the BIDS ``sessions.tsv`` or ``scans.tsv``), or else from the BIDS
dataset's ``sub-<label>_sessions.tsv``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..bids.derivatives import write_atomically
from ..bids.sessions import format_acq_time, parse_acq_time, session_date
from ..errors import BadDataError
from .statistics import benjamini_hochberg

LOGGER = logging.getLogger("qsmprep")

#: Seconds in a year of 365.25 days.
SECONDS_PER_YEAR = 365.25 * 86400.0
#: Fewest participants with two or more dated sessions a diagnosis needs for its rate.
MIN_FOLLOWED_PARTICIPANTS = 3
#: Columns of ``longitudinal_rates.tsv``, in order.
RATE_COLUMNS = ("feature", "region", "hemisphere", "diagnosis", "n_participants",
                "n_followed", "n_scans", "mean_follow_up_years", "rate_ppb_per_year", "se",
                "ci_low", "ci_high", "z", "p", "p_fdr", "intercept_ppb",
                "participant_sd_ppb", "residual_sd_ppb", "converged")
_Z_95 = 1.959963984540054
_REPORT_SUFFIX = "_desc-cbs_report.json"
_TABLE_SUFFIX = "_desc-regions_stats.tsv"


# ------------------------------------------------------------------------------------- dates
def scan_acquisition_dates(tidy, output_dir, bids_dir=None) -> pd.DataFrame:
    """When each scan of the tidy table was acquired.

    Parameters
    ----------
    tidy : pandas.DataFrame
        From :func:`qsmprep.group.collect.collect_participant_results` (columns ``scan``,
        ``subject``, ``session``, ``source``).
    output_dir : path
        The participant-level output folder (the scans' reports are read from it).
    bids_dir : path, optional
        The BIDS dataset, whose ``sessions.tsv`` dates the scans without a date in their
        report.

    Returns
    -------
    pandas.DataFrame
        ``scan``, ``subject``, ``session``, ``acquisition_date`` (ISO 8601; None when
        unknown), one row per scan, sorted by scan.
    """
    scans = tidy.drop_duplicates(subset="scan").sort_values("scan", kind="mergesort")
    rows = []
    for record in scans.to_dict("records"):
        date = _report_date(Path(output_dir), record.get("source"))
        session = record.get("session")
        if date is None and bids_dir is not None and isinstance(session, str):
            moment, _ = session_date(bids_dir, str(record["subject"]).removeprefix("sub-"),
                                     session.removeprefix("ses-"))
            date = None if moment is None else format_acq_time(moment)
        rows.append({"scan": record["scan"], "subject": record["subject"],
                     "session": session, "acquisition_date": date})
    return pd.DataFrame(rows, columns=["scan", "subject", "session", "acquisition_date"])


def _report_date(output_dir: Path, source) -> str | None:
    """``acquisition.acquisition_date`` of the report beside a regional table, if valid."""
    if not isinstance(source, str) or not source.endswith(_TABLE_SUFFIX):
        return None
    path = output_dir / (source[:-len(_TABLE_SUFFIX)] + _REPORT_SUFFIX)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise BadDataError(f"{path}: cannot be read as JSON ({error})") from None
    date = ((report.get("acquisition") or {}) if isinstance(report, dict) else {}).get(
        "acquisition_date")
    try:
        return None if parse_acq_time(date) is None else str(date)
    except ValueError:
        LOGGER.warning("%s: acquisition_date %r is not an ISO 8601 date-time; the scan is "
                       "treated as undated.", path, date)
        return None


# -------------------------------------------------------------------------------------- data
def longitudinal_data(tidy, dates, *, reference: str = "csf") -> pd.DataFrame:
    """The dated regional means, one row per scan x region x hemisphere.

    Parameters
    ----------
    tidy : pandas.DataFrame
        The tidy table (scans that failed quality control already left out).
    dates : pandas.DataFrame
        :func:`scan_acquisition_dates` (``scan``, ``acquisition_date``).
    reference : str
        The reference of the values.

    Returns
    -------
    pandas.DataFrame
        ``subject``, ``session``, ``scan``, ``diagnosis``, ``region``, ``hemisphere``,
        ``value`` (``mean_ppb``) and ``years`` (since the participant's first dated scan);
        undated scans, scans without a diagnosis and missing values are left out.
    """
    columns = ["subject", "session", "scan", "diagnosis", "region", "hemisphere", "value",
               "years"]
    rows = tidy[tidy["reference"] == reference]
    rows = rows.merge(dates[["scan", "acquisition_date"]], on="scan", how="left")
    rows = rows[rows["acquisition_date"].notna() & rows["diagnosis"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    moments = pd.Series([parse_acq_time(date) for date in rows["acquisition_date"]],
                        index=rows.index, dtype=object)
    first = moments.groupby(rows["subject"]).agg(min)
    years = [(moment - first[subject]).total_seconds() / SECONDS_PER_YEAR
             for subject, moment in zip(rows["subject"], moments)]
    data = pd.DataFrame({
        "subject": rows["subject"].astype(str).to_numpy(),
        "session": rows["session"].to_numpy(), "scan": rows["scan"].to_numpy(),
        "diagnosis": rows["diagnosis"].astype(str).to_numpy(),
        "region": rows["region"].to_numpy(), "hemisphere": rows["hemisphere"].to_numpy(),
        "value": rows["mean_ppb"].astype(float).to_numpy(),
        "years": np.asarray(years, dtype=np.float64)})
    data = data[np.isfinite(data["value"]) & np.isfinite(data["years"])]
    return data.reset_index(drop=True)[columns]


def followed_participants(data) -> dict[str, int]:
    """Participants per diagnosis with two or more sessions at different dates."""
    spans = data.groupby(["diagnosis", "subject"])["years"].agg(lambda years: years.max()
                                                                - years.min())
    followed = spans[spans > 0].reset_index()
    counts = followed.groupby("diagnosis")["subject"].nunique().to_dict()
    return {diagnosis: int(counts.get(diagnosis, 0))
            for diagnosis in sorted(data["diagnosis"].unique())}


# ------------------------------------------------------------------------------------- model
def fit_rates(data, diagnoses) -> list[dict]:
    """Fit the mixed model of one feature; one row per diagnosis (keys of
    :data:`RATE_COLUMNS` but the feature's names and ``p_fdr``).

    Parameters
    ----------
    data : pandas.DataFrame
        ``subject``, ``diagnosis``, ``value``, ``years`` of one region x hemisphere.
    diagnoses : sequence of str
        The diagnoses modelled (their rows only are used).

    Raises
    ------
    numpy.linalg.LinAlgError, ValueError
        When the model cannot be fitted (e.g. a singular design).
    """
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    data = data[data["diagnosis"].isin(list(diagnoses))].reset_index(drop=True)
    design = pd.DataFrame(index=data.index)
    for diagnosis in diagnoses:
        member = (data["diagnosis"] == diagnosis).astype(float)
        design[f"{diagnosis}"] = member
        design[f"{diagnosis}:years"] = member * data["years"]
    model = MixedLM(data["value"].astype(float), design, groups=data["subject"],
                    exog_re=np.ones((len(data), 1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(reml=True)
    converged = bool(getattr(result, "converged", True)) and not any(
        issubclass(item.category, ConvergenceWarning) for item in caught)
    participant_sd = float(np.sqrt(max(float(np.asarray(result.cov_re)[0, 0]), 0.0)))
    residual_sd = float(np.sqrt(result.scale))
    parameters, errors = result.fe_params, result.bse_fe
    rows = []
    for diagnosis in diagnoses:
        mine = data[data["diagnosis"] == diagnosis]
        spans = mine.groupby("subject")["years"].agg(lambda years: years.max() - years.min())
        slope = f"{diagnosis}:years"
        rate, se = float(parameters[slope]), float(errors[slope])
        z = rate / se if se > 0 else math.nan
        rows.append({
            "diagnosis": diagnosis, "n_participants": int(mine["subject"].nunique()),
            "n_followed": int((spans > 0).sum()), "n_scans": int(len(mine)),
            "mean_follow_up_years": float(spans[spans > 0].mean()) if (spans > 0).any()
            else math.nan,
            "rate_ppb_per_year": rate, "se": se, "ci_low": rate - _Z_95 * se,
            "ci_high": rate + _Z_95 * se, "z": z,
            "p": float(2.0 * stats.norm.sf(abs(z))) if math.isfinite(z) else math.nan,
            "intercept_ppb": float(parameters[f"{diagnosis}"]),
            "participant_sd_ppb": participant_sd, "residual_sd_ppb": residual_sd,
            "converged": converged})
    return rows


def longitudinal_rates(data, *, min_followed: int = MIN_FOLLOWED_PARTICIPANTS
                       ) -> tuple[pd.DataFrame | None, list[str]]:
    """Annual rate of every region x hemisphere for every diagnosis with enough follow-up.

    Parameters
    ----------
    data : pandas.DataFrame
        :func:`longitudinal_data`.
    min_followed : int
        Fewest participants with two or more dated sessions a diagnosis needs.

    Returns
    -------
    (table, notes)
        ``table``: :data:`RATE_COLUMNS`, sorted by feature (region, then L, R, bilateral) and
        diagnosis; None when no diagnosis has enough follow-up. ``notes``: plain sentences on
        what was left out and why (``too few participants ... (n=...)``).
    """
    counts = followed_participants(data) if len(data) else {}
    kept = [diagnosis for diagnosis, count in counts.items() if count >= min_followed]
    total = sum(counts.values())
    notes = []
    if not kept:
        notes.append(
            f"too few participants with two or more dated sessions for a model of change over "
            f"time (n={total}; at least {min_followed} per diagnosis are needed)")
        return None, notes
    for diagnosis, count in counts.items():
        if diagnosis not in kept:
            notes.append(f"too few participants with two or more dated sessions for a rate "
                         f"of change in {diagnosis} (n={count}; at least {min_followed})")
    order = {"L": 0, "R": 1, "bilateral": 2}
    features = sorted(set(zip(data["region"], data["hemisphere"])),
                      key=lambda item: (item[0], order.get(item[1], 3)))
    rows, failed = [], []
    for region, hemisphere in features:
        subset = data[(data["region"] == region) & (data["hemisphere"] == hemisphere)]
        try:
            fitted = fit_rates(subset, kept)
        except (np.linalg.LinAlgError, ValueError) as error:
            failed.append(f"{region} {hemisphere} ({error})")
            continue
        rows.extend({"feature": f"{region}_{hemisphere}_mean_ppb", "region": region,
                     "hemisphere": hemisphere, **row} for row in fitted)
    if failed:
        notes.append(f"no mixed model could be fitted for {', '.join(failed)}")
    if not rows:
        return None, notes
    table = pd.DataFrame(rows)
    table["p_fdr"] = benjamini_hochberg(table["p"].to_numpy(dtype=np.float64))
    return table[list(RATE_COLUMNS)], notes


# ----------------------------------------------------------------------------------- writing
def write_longitudinal_rates(tidy, path, *, output_dir, bids_dir=None,
                             min_followed: int = MIN_FOLLOWED_PARTICIPANTS) -> dict:
    """The group step: date the scans, fit the models, write ``longitudinal_rates.tsv``.

    Parameters
    ----------
    tidy : pandas.DataFrame
        The tidy table of the scans that passed quality control.
    path : path
        ``<output_dir>/group/longitudinal_rates.tsv``; removed (a stale table of an earlier
        run) when no rate can be estimated.
    output_dir, bids_dir : path
        For :func:`scan_acquisition_dates`.
    min_followed : int
        :data:`MIN_FOLLOWED_PARTICIPANTS` by default.

    Returns
    -------
    dict
        ``path`` (None when not written), ``table`` (None likewise), ``notes`` (list of str)
        and ``n_followed`` (participants with two or more dated sessions).
    """
    path = Path(path)
    dates = scan_acquisition_dates(tidy, output_dir, bids_dir)
    data = longitudinal_data(tidy, dates)
    table, notes = longitudinal_rates(data, min_followed=min_followed)
    followed = sum(followed_participants(data).values()) if len(data) else 0
    if table is None:
        path.unlink(missing_ok=True)
        return {"path": None, "table": None, "notes": notes, "n_followed": followed}
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g",
                        lineterminator="\n")
    write_atomically(path, text)
    return {"path": path, "table": table, "notes": notes, "n_followed": followed}
