"""Change over time in one participant: regional values across sessions, with their noise.

QSM measures susceptibility on an absolute (referenced) scale, so the same region can be
compared between a participant's sessions. This module turns the run reports of one subject
(:func:`qsmprep.reports.render.build_report`) into a table of change: for every region of the
report's findings and every hemisphere (L, R, both), the value at each session, the change
since the previous session (ppb), the annualised rate (ppb/year, when both acquisition dates
are known) and whether the change exceeds the measurement noise.

Measurement uncertainty of a regional value
-------------------------------------------
The report's regional value is the core mean (the region's voxels one erosion away from its
edge) or, where there is no core, the mean (:mod:`qsmprep.regions`). Its standard uncertainty
``u`` combines two terms, both computed from the run's regional table
(:func:`measurement_uncertainty`):

The value is written as the region's mean plus the core's departure from it, and each part
gets its own term:

1. **Sampling noise of the regional mean.** The standard error ``SD / sqrt(n_eff)``, with
   ``SD`` the voxel-wise standard deviation over the region's label and ``n_eff`` the
   effective number of independent voxels among its ``n_voxels``. Neighbouring voxels of a
   susceptibility map are not independent: the dipole inversion, its regularisation and the
   background-field filters spread each voxel's noise over its neighbours. As with the
   resolution elements (resels) of smooth statistical images (Worsley et al., Hum Brain Mapp
   1996;4:58-73), the voxel count is divided by the number of voxels per independent sample,
   taken as a 2 x 2 x 2 block (:data:`VOXELS_PER_INDEPENDENT_SAMPLE`). The SD also holds real
   tissue variation, which is the same at every session, so the term errs on the large side.
2. **Partial-volume sensitivity.** The core mean and the plain mean are two estimates of the
   same regional value that treat the edge voxels differently; their disagreement
   ``D = |core mean - mean|`` bounds how much the value depends on where the region's edge
   falls, which changes with head position and registration between sessions. Treated as a
   rectangular distribution of full width ``D`` (a Type B evaluation, JCGM 100:2008 "Guide to
   the expression of uncertainty in measurement" (GUM), 4.3.7), it contributes
   ``D / (2 sqrt(3))``. A thin region (a cortical ribbon at 2 mm) whose small core sits far
   from its mean gets a large uncertainty here.

``u = sqrt(SE^2 + (D / (2 sqrt 3))^2)`` is the uncertainty of one session's value.

Uncertainty of a change
-----------------------
The combined standard uncertainty of the change between two sessions follows the law of
propagation of uncertainty for a difference (GUM 5.1-5.2). The sampling noise of the two
sessions is independent and adds in quadrature, ``SE_1^2 + SE_2^2``. The partial-volume
offset of the core (``core mean - mean``, signed) is not independent: it comes from the
participant's anatomy and the atlas, so most of it repeats at every session and cancels in
the difference (GUM 5.2, correlated input quantities). What does not cancel is how much the
offset itself changed, ``|offset_2 - offset_1|`` (head position, registration), taken again
as a rectangular Type B term::

    u_c = sqrt(SE_1^2 + SE_2^2 + (|offset_2 - offset_1| / (2 sqrt 3))^2)

A change is reported as **beyond measurement noise** only when ``|change| > k u_c`` with the
coverage factor ``k = 2`` (about 95 % coverage, GUM 6.2-6.3; :data:`COVERAGE_FACTOR`). This is
within-scan repeatability only: scanner upgrades, protocol changes or a different reference
region between sessions add errors it does not see.

Rates are the change divided by the interval between the acquisition dates in years of 365.25
days (dates from the BIDS ``sessions.tsv`` or ``scans.tsv``, :mod:`qsmprep.bids.sessions`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..bids.derivatives import write_atomically
from ..bids.sessions import parse_acq_time, years_between

#: Voxels per independent sample of a susceptibility map (a 2 x 2 x 2 block): the effective
#: number of independent voxels of a region is its voxel count divided by this.
VOXELS_PER_INDEPENDENT_SAMPLE = 8.0
#: Coverage factor: a change is beyond measurement noise when it exceeds this many combined
#: standard uncertainties.
COVERAGE_FACTOR = 2.0
#: Hemispheres of the change table and the findings keys holding their values.
SIDE_KEYS = {"L": "left_ppb", "R": "right_ppb", "bilateral": "bilateral_ppb"}
#: Columns of ``sub-<label>_desc-longitudinal_stats.tsv``, in order.
COLUMNS = ("region", "hemisphere", "session_from", "session_to", "date_from", "date_to",
           "interval_years", "value_from_ppb", "value_to_ppb", "uncertainty_from_ppb",
           "uncertainty_to_ppb", "change_ppb", "rate_ppb_per_year",
           "partial_volume_change_ppb", "combined_uncertainty_ppb", "noise_threshold_ppb",
           "beyond_noise")
#: Descriptions of :data:`COLUMNS` for the table's JSON sidecar (with units).
COLUMN_DESCRIPTIONS = {
    "region": ("atlas region of the report's findings", None),
    "hemisphere": ("L, R or bilateral (both hemispheres together)", None),
    "session_from": ("the earlier session (BIDS label)", None),
    "session_to": ("the later session (BIDS label)", None),
    "date_from": ("acquisition date of the earlier session (ISO 8601; n/a: unknown)", None),
    "date_to": ("acquisition date of the later session (ISO 8601; n/a: unknown)", None),
    "interval_years": ("time between the acquisitions (years of 365.25 days)", "year"),
    "value_from_ppb": ("regional value (core mean) at the earlier session", "ppb"),
    "value_to_ppb": ("regional value (core mean) at the later session", "ppb"),
    "uncertainty_from_ppb": ("standard uncertainty of value_from_ppb", "ppb"),
    "uncertainty_to_ppb": ("standard uncertainty of value_to_ppb", "ppb"),
    "change_ppb": ("value_to_ppb - value_from_ppb", "ppb"),
    "rate_ppb_per_year": ("change_ppb / interval_years (n/a: a date is unknown)", "ppb/year"),
    "partial_volume_change_ppb": ("|(core mean - mean) at the later session - (core mean - "
                                  "mean) at the earlier session|", "ppb"),
    "combined_uncertainty_ppb": ("standard uncertainty of change_ppb: sqrt(SE_from^2 + "
                                 "SE_to^2 + (partial_volume_change / (2 sqrt 3))^2)", "ppb"),
    "noise_threshold_ppb": ("coverage factor x combined uncertainty", "ppb"),
    "beyond_noise": ("true when |change_ppb| exceeds noise_threshold_ppb", None),
}


# ------------------------------------------------------------------------------- uncertainty
def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def measurement_uncertainty(*, mean_ppb, core_mean_ppb, sd_ppb, n_voxels,
                            core_n_voxels=None) -> dict:
    """The standard uncertainty of one regional value (see the module docstring).

    Parameters
    ----------
    mean_ppb, core_mean_ppb : float
        The region's plain and core means (``core_mean_ppb`` may be NaN or None: no core).
    sd_ppb : float
        The voxel-wise standard deviation over the region.
    n_voxels : int
        Voxels of the region (those ``sd_ppb`` describes).
    core_n_voxels : int, optional
        Voxels of the core; not used by the rule (accepted so that a regional-table row can
        be passed as it is).

    Returns
    -------
    dict
        ``value_ppb`` (core mean, else mean), ``effective_n`` (``n_voxels`` divided by
        :data:`VOXELS_PER_INDEPENDENT_SAMPLE`, at least 1), ``standard_error_ppb`` (of the
        regional mean),
        ``core_offset_ppb`` (``core mean - mean``; 0 without a core),
        ``core_mean_disagreement_ppb`` (its magnitude) and ``uncertainty_ppb``; None for what
        cannot be computed (an empty region).

    Examples
    --------
    >>> result = measurement_uncertainty(mean_ppb=100.0, core_mean_ppb=106.0, sd_ppb=40.0,
    ...                                  n_voxels=1000, core_n_voxels=800)
    >>> result["effective_n"], round(result["uncertainty_ppb"], 3)
    (125.0, 3.975)
    """
    mean, core, sd = _finite(mean_ppb), _finite(core_mean_ppb), _finite(sd_ppb)
    value = core if core is not None else mean
    count = _finite(n_voxels) or 0.0
    empty = {"value_ppb": value, "effective_n": None, "standard_error_ppb": None,
             "core_offset_ppb": None, "core_mean_disagreement_ppb": None,
             "uncertainty_ppb": None}
    if value is None or sd is None or count < 1:
        return empty
    effective_n = max(count / VOXELS_PER_INDEPENDENT_SAMPLE, 1.0)
    standard_error = sd / math.sqrt(effective_n)
    offset = core - mean if core is not None and mean is not None else 0.0
    uncertainty = math.hypot(standard_error, _rectangular(abs(offset)))
    return {"value_ppb": value, "effective_n": effective_n,
            "standard_error_ppb": standard_error, "core_offset_ppb": offset,
            "core_mean_disagreement_ppb": abs(offset), "uncertainty_ppb": uncertainty}


def _rectangular(width):
    """Standard uncertainty of a rectangular distribution of full ``width`` (GUM 4.3.7)."""
    return width / (2.0 * math.sqrt(3.0))


def regional_uncertainty(regional_rows, *, reference: str) -> list[dict]:
    """:func:`measurement_uncertainty` of every region x hemisphere of a regional table
    (:func:`qsmprep.regions.read_regional_table` rows) relative to ``reference``: the
    report's ``measurement_uncertainty`` list (``region``, ``hemisphere`` and the values,
    rounded to 0.01 ppb)."""
    entries = []
    for row in regional_rows:
        if row.get("reference") != reference:
            continue
        result = measurement_uncertainty(
            mean_ppb=row.get("mean_ppb"), core_mean_ppb=row.get("core_mean_ppb"),
            sd_ppb=row.get("sd_ppb"), n_voxels=row.get("n_voxels"),
            core_n_voxels=row.get("core_n_voxels"))
        entries.append({"region": row["region"], "hemisphere": row["hemisphere"],
                        **{key: (None if value is None else round(value, 2))
                           for key, value in result.items()}})
    return entries


# ---------------------------------------------------------------------------------- sessions
def _session_order(label) -> tuple:
    """Natural order of session labels: ``2`` before ``10``, numbers before words."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|\D+", str(label)))


def session_timepoints(reports) -> list[dict]:
    """One timepoint per session of one subject's run reports, in time order.

    A session with several runs is represented by the first run by name (the others are
    listed under ``unused``). Sessions are ordered by acquisition date when every session's
    date is known, by session label otherwise.

    Returns
    -------
    list of dict
        ``session``, ``prefix`` (the run used), ``date`` (ISO 8601 or None), ``report`` and
        ``unused`` (prefixes of the session's other runs); reports without a session are left
        out.
    """
    by_session: dict[str, list[dict]] = {}
    for report in reports:
        if report.get("session") is not None:
            by_session.setdefault(str(report["session"]), []).append(report)
    timepoints = []
    for session, items in by_session.items():
        items = sorted(items, key=lambda item: str(item.get("prefix", "")))
        date = (items[0].get("acquisition") or {}).get("acquisition_date")
        timepoints.append({"session": session, "prefix": items[0].get("prefix"),
                           "date": date, "report": items[0],
                           "unused": [str(item.get("prefix")) for item in items[1:]]})
    moments = {point["session"]: _moment(point["date"]) for point in timepoints}
    if all(moment is not None for moment in moments.values()):
        timepoints.sort(key=lambda point: (moments[point["session"]],
                                           _session_order(point["session"])))
    else:
        timepoints.sort(key=lambda point: _session_order(point["session"]))
    return timepoints


def _moment(date):
    """The date-time of an ISO 8601 text; None when missing or malformed."""
    try:
        return parse_acq_time(date)
    except ValueError:
        return None


def _values(report) -> dict:
    """``{(region, hemisphere): measurement}`` of one report: ``value``, ``uncertainty``,
    ``standard_error`` and ``offset`` (core mean - mean). A report entry without a standard
    error counts its whole uncertainty as sampling noise (offset 0)."""
    entries = {(item["region"], item["hemisphere"]): item
               for item in report.get("measurement_uncertainty") or []}
    values = {}
    for region in report["findings"]["regions"]:
        for hemisphere, key in SIDE_KEYS.items():
            value = _finite(region.get(key))
            if value is None:
                continue
            entry = entries.get((region["region"], hemisphere), {})
            uncertainty = _finite(entry.get("uncertainty_ppb"))
            standard_error = _finite(entry.get("standard_error_ppb"))
            offset = _finite(entry.get("core_offset_ppb"))
            if standard_error is None:
                standard_error, offset = uncertainty, 0.0
            values[region["region"], hemisphere] = {
                "value": value, "uncertainty": uncertainty, "standard_error": standard_error,
                "offset": 0.0 if offset is None else offset}
    return values


def _regions(timepoints) -> list[tuple[str, str, str]]:
    """``(region, label, hemisphere)`` in findings order, over all sessions."""
    seen = {}
    for point in timepoints:
        for region in point["report"]["findings"]["regions"]:
            seen.setdefault(region["region"], region.get("label") or region["region"])
    return [(name, label, hemisphere) for name, label in seen.items() for hemisphere in SIDE_KEYS]


def compare_sessions(value_from, standard_error_from, value_to, standard_error_to,
                     interval_years, *, offset_from=0.0, offset_to=0.0,
                     coverage_factor: float = COVERAGE_FACTOR) -> dict:
    """Change, annualised rate and noise test between two measurements of one region.

    Parameters
    ----------
    value_from, value_to : float
        The region's value (ppb) at the earlier and the later session.
    standard_error_from, standard_error_to : float
        The standard errors of the regional means (:func:`measurement_uncertainty`).
    interval_years : float or None
        Time between the sessions.
    offset_from, offset_to : float
        ``core mean - mean`` (ppb) at each session; only their difference counts.
    coverage_factor : float
        :data:`COVERAGE_FACTOR`.

    Returns
    -------
    dict
        ``change_ppb`` (to - from), ``rate_ppb_per_year`` (None without a positive interval),
        ``partial_volume_change_ppb`` (``|offset_to - offset_from|``),
        ``combined_uncertainty_ppb`` (``sqrt(SE_from^2 + SE_to^2 + (pv / (2 sqrt 3))^2)``, see
        the module docstring), ``noise_threshold_ppb`` (``coverage_factor`` times that) and
        ``beyond_noise`` (``|change| > threshold``; None when a standard error is unknown).
        A missing value gives None throughout.

    Examples
    --------
    >>> result = compare_sessions(100.0, 3.0, 125.0, 4.0, 2.0)
    >>> result["change_ppb"], result["rate_ppb_per_year"], result["beyond_noise"]
    (25.0, 12.5, True)
    >>> compare_sessions(100.0, 3.0, 108.0, 4.0, 2.0)["beyond_noise"]
    False
    >>> compare_sessions(100.0, 3.0, 125.0, 4.0, 2.0, offset_from=2.0, offset_to=50.0)[
    ...     "beyond_noise"]
    False
    """
    value_from, value_to = _finite(value_from), _finite(value_to)
    result = {"change_ppb": None, "rate_ppb_per_year": None,
              "partial_volume_change_ppb": None, "combined_uncertainty_ppb": None,
              "noise_threshold_ppb": None, "beyond_noise": None}
    if value_from is None or value_to is None:
        return result
    change = value_to - value_from
    result["change_ppb"] = change
    interval = _finite(interval_years)
    if interval is not None and interval > 0:
        result["rate_ppb_per_year"] = change / interval
    se_from, se_to = _finite(standard_error_from), _finite(standard_error_to)
    partial_volume = abs((_finite(offset_to) or 0.0) - (_finite(offset_from) or 0.0))
    result["partial_volume_change_ppb"] = partial_volume
    if se_from is not None and se_to is not None:
        combined = math.sqrt(se_from ** 2 + se_to ** 2 + _rectangular(partial_volume) ** 2)
        result["combined_uncertainty_ppb"] = combined
        result["noise_threshold_ppb"] = coverage_factor * combined
        result["beyond_noise"] = bool(abs(change) > coverage_factor * combined)
    return result


def longitudinal_changes(reports) -> dict | None:
    """The change-over-time table of one subject, or None with fewer than two sessions.

    Parameters
    ----------
    reports : list of dict
        The subject's run reports (:func:`qsmprep.reports.render.build_report`), each with
        ``session``, ``acquisition.acquisition_date`` (or None), ``findings.regions`` and
        ``measurement_uncertainty``.

    Returns
    -------
    dict or None
        ``subject``; ``sessions`` (``session``, ``prefix``, ``date``, ``years_since_first``);
        ``rows``: one per region x hemisphere x pair of consecutive sessions where both values
        exist, with the keys of :data:`COLUMNS` plus ``label`` (the region's name in words);
        ``dates_known`` (every session dated); ``notes`` (runs not used, missing dates) and
        ``method`` (the uncertainty rule in words).
    """
    timepoints = session_timepoints(reports)
    if len(timepoints) < 2:
        return None
    first_date = timepoints[0]["date"]
    sessions = [{"session": point["session"], "prefix": point["prefix"], "date": point["date"],
                 "years_since_first": years_between(first_date, point["date"])}
                for point in timepoints]
    values = [_values(point["report"]) for point in timepoints]
    rows = []
    for region, label, hemisphere in _regions(timepoints):
        for index in range(1, len(timepoints)):
            earlier, later = timepoints[index - 1], timepoints[index]
            before = values[index - 1].get((region, hemisphere))
            after = values[index].get((region, hemisphere))
            if before is None or after is None:
                continue
            interval = years_between(earlier["date"], later["date"])
            comparison = compare_sessions(
                before["value"], before["standard_error"], after["value"],
                after["standard_error"], interval, offset_from=before["offset"],
                offset_to=after["offset"])
            rows.append({"region": region, "label": label, "hemisphere": hemisphere,
                         "session_from": earlier["session"], "session_to": later["session"],
                         "date_from": earlier["date"], "date_to": later["date"],
                         "interval_years": interval, "value_from_ppb": before["value"],
                         "value_to_ppb": after["value"],
                         "uncertainty_from_ppb": before["uncertainty"],
                         "uncertainty_to_ppb": after["uncertainty"], **comparison})
    notes = [f"{prefix} not compared: one run per session is ({point['prefix']} is used)"
             for point in timepoints for prefix in point["unused"]]
    undated = [f"ses-{point['session']}" for point in timepoints if point["date"] is None]
    if undated:
        notes.append(f"acquisition date missing for {', '.join(undated)} (acq_time in "
                     "sub-<label>_sessions.tsv or the scans table): changes are given without "
                     "annual rates and the sessions are in label order")
    return {"subject": str(timepoints[0]["report"]["subject"]), "sessions": sessions,
            "rows": rows, "dates_known": not undated, "notes": notes,
            "method": method_text()}


def method_text() -> str:
    """The uncertainty rule in one paragraph, for the report and the table's sidecar."""
    return (
        "Each regional value's standard uncertainty combines the standard error of the "
        "regional mean, SD / sqrt(n_eff) with n_eff the region's voxels divided by "
        f"{VOXELS_PER_INDEPENDENT_SAMPLE:g} (neighbouring voxels of a susceptibility map are "
        "correlated; resels, Worsley et al. 1996), and the partial-volume sensitivity "
        "|core mean - mean| / (2 sqrt 3) (a rectangular Type B uncertainty, GUM JCGM "
        "100:2008 4.3.7). A change between two sessions is beyond measurement noise when it "
        f"exceeds {COVERAGE_FACTOR:g} (the coverage factor) times its combined standard "
        "uncertainty, sqrt(SE1^2 + SE2^2 + (|offset2 - offset1| / (2 sqrt 3))^2): the "
        "sessions' sampling noise is independent, while the core's partial-volume offset "
        "(core mean - mean) largely repeats between sessions of one participant and only its "
        "change counts (GUM 5.2). Rates are per year of 365.25 days between the acquisition "
        "dates. Within-scan repeatability only: scanner or protocol changes between "
        "sessions are not covered.")


# ----------------------------------------------------------------------------------- writing
def _cell(value, column: str) -> str:
    if value is None:
        return "n/a"
    if column == "beyond_noise":
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4f}" if column == "interval_years" else f"{value:.2f}"
    return str(value)


def longitudinal_tsv_text(changes: dict) -> str:
    """The rows of :func:`longitudinal_changes` as tab-separated text (:data:`COLUMNS`,
    ``n/a`` for missing values, ppb to 0.01)."""
    lines = ["\t".join(COLUMNS)]
    for row in changes["rows"]:
        lines.append("\t".join(_cell(row.get(column), column) for column in COLUMNS))
    return "\n".join(lines) + "\n"


def write_longitudinal_table(changes: dict, path) -> Path:
    """Write ``sub-<label>_desc-longitudinal_stats.tsv`` and its JSON sidecar (column
    descriptions and units, the sessions and the method)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, longitudinal_tsv_text(changes))
    sidecar = {column: ({"Description": text, "Units": unit} if unit else
                        {"Description": text})
               for column, (text, unit) in COLUMN_DESCRIPTIONS.items()}
    sidecar["Sessions"] = [{key: point[key] for key in ("session", "prefix", "date")}
                           for point in changes["sessions"]]
    sidecar["Method"] = changes["method"]
    if changes["notes"]:
        sidecar["Notes"] = list(changes["notes"])
    write_atomically(path.with_suffix(".json"),
                     json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    return path
