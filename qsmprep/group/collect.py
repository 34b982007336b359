"""Gather the participant-level results of an output folder into group tables.

Each run of the participant level leaves, in ``<output>/sub-<label>/[ses-<label>/]anat/``:

* ``<prefix>_desc-regions_stats.tsv``: regional statistics (:mod:`qsmprep.regions`), with a
  ``.json`` sidecar whose ``RegistrationQuality`` holds ``nmi`` and ``dice_brain``;
* ``<prefix>_desc-cbs_report.json``: the report, whose ``qc`` -> ``values`` holds
  ``mask_volume_ml``, ``poor_phase_fraction``, ``echo_fit_residual`` and ``registration``.

:func:`collect_participant_results` reads them all, with the covariates of the BIDS
``participants.tsv`` (and of ``sub-<label>/sub-<label>_sessions.tsv``, whose values take
precedence for their session), into one tidy table: one row per scan x region x hemisphere x
reference. A *scan* is one run, named by its file prefix (e.g. ``sub-01_ses-1_run-1``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BadDataError, MissingInputError
from ..regions import COLUMNS, HEMISPHERES, read_regional_table

STATISTICS = COLUMNS[3:]
#: Columns identifying a scan, in the order of the tables.
SCAN_COLUMNS = ("scan", "subject", "session", "run")
#: Covariate columns added from participants.tsv / sessions.tsv.
COVARIATE_COLUMNS = ("site", "diagnosis", "age", "sex", "affected_side")
#: Per-scan quality values added from the sidecar and the report.
QC_COLUMNS = ("registration_nmi", "registration_dice", "poor_phase_fraction", "mask_volume_ml",
              "echo_fit_residual")
#: Columns of participants.tsv taken as the diagnosis, first found first.
DIAGNOSIS_COLUMNS = ("diagnosis", "group")
#: Columns of participants.tsv taken as the clinically more affected side, first found first.
AFFECTED_SIDE_COLUMNS = ("affected_side", "more_affected_side", "side_affected",
                         "affected_hemisphere")
DEFAULT_SITE = "site-1"

_TABLE_SUFFIX = "_desc-regions_stats.tsv"
_REPORT_SUFFIX = "_desc-cbs_report.json"
_FEATURE = re.compile(r"^(?P<region>[a-z][a-z0-9_]*?)_(?P<hemisphere>L|R|bilateral)_"
                      r"(?P<statistic>[a-z0-9_]+)$")


def feature_name(region, hemisphere, statistic="mean_ppb") -> str:
    """Column name of one regional value in a wide table: ``<region>_<hemisphere>_<statistic>``.

    >>> feature_name("putamen", "L")
    'putamen_L_mean_ppb'
    """
    return f"{region}_{hemisphere}_{statistic}"


def parse_feature(name) -> tuple[str, str, str]:
    """``(region, hemisphere, statistic)`` of a wide-table column (:func:`feature_name`).

    >>> parse_feature("globus_pallidus_interna_bilateral_ai_abs_pct")
    ('globus_pallidus_interna', 'bilateral', 'ai_abs_pct')
    """
    for hemisphere in HEMISPHERES:
        for statistic in STATISTICS:
            suffix = f"_{hemisphere}_{statistic}"
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[:-len(suffix)], hemisphere, statistic
    match = _FEATURE.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a regional feature name "
                         "(<region>_<L|R|bilateral>_<statistic>)")
    return match["region"], match["hemisphere"], match["statistic"]


def _entities(prefix) -> dict:
    entities = {}
    for part in prefix.split("_"):
        key, _, value = part.partition("-")
        if value:
            entities[key] = value
    return entities


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise BadDataError(f"{path}: cannot be read as JSON ({error})") from None


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _scan_qc(table_path, prefix) -> dict:
    """QC values of one scan: the sidecar's RegistrationQuality, then the report's qc values."""
    sidecar = _read_json(table_path.with_suffix(".json"))
    report = _read_json(table_path.parent / f"{prefix}{_REPORT_SUFFIX}")
    values = ((report.get("qc") or {}).get("values") or {}) if isinstance(report, dict) else {}
    registration = dict(values.get("registration") or {})
    registration.update(sidecar.get("RegistrationQuality") or {})
    return {
        "registration_nmi": _number(registration.get("nmi")),
        "registration_dice": _number(registration.get("dice_brain")),
        "poor_phase_fraction": _number(values.get("poor_phase_fraction")),
        "mask_volume_ml": _number(values.get("mask_volume_ml")),
        "echo_fit_residual": _number(values.get("echo_fit_residual")),
    }


def _read_tsv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""],
                           keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise BadDataError(f"{path}: cannot be read as a tab-separated table ({error})") from None


def _with_prefix(value, prefix) -> str:
    value = str(value).strip()
    return value if value.startswith(f"{prefix}-") else f"{prefix}-{value}"


def _covariate_records(bids_dir, site_column) -> tuple[dict, dict]:
    """``({subject: row}, {(subject, session): row})`` of participants.tsv / sessions.tsv."""
    participants, sessions = {}, {}
    if bids_dir is None:
        return participants, sessions
    bids_dir = Path(bids_dir)
    path = bids_dir / "participants.tsv"
    if path.is_file():
        table = _read_tsv(path)
        if "participant_id" not in table.columns:
            raise BadDataError(f"{path}: no participant_id column (found "
                               f"{', '.join(table.columns) or 'nothing'})")
        for record in table.to_dict("records"):
            if isinstance(record["participant_id"], str):
                participants[_with_prefix(record["participant_id"], "sub")] = record
    for path in sorted(bids_dir.glob("sub-*/sub-*_sessions.tsv")):
        subject = path.parent.name
        table = _read_tsv(path)
        if "session_id" not in table.columns:
            raise BadDataError(f"{path}: no session_id column")
        for record in table.to_dict("records"):
            if isinstance(record["session_id"], str):
                sessions[subject, _with_prefix(record["session_id"], "ses")] = record
    return participants, sessions


def _first(record, columns):
    for column in columns:
        value = record.get(column)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _covariates(subject, session, participants, sessions, site_column) -> dict:
    record = dict(participants.get(subject, {}))
    record.update({key: value for key, value in sessions.get((subject, session), {}).items()
                   if isinstance(value, str)})
    site = _first(record, (site_column,))
    return {
        "site": site if site is not None else DEFAULT_SITE,
        "diagnosis": _first(record, DIAGNOSIS_COLUMNS),
        "age": _number(_first(record, ("age",))),
        "sex": _first(record, ("sex",)),
        "affected_side": _first(record, AFFECTED_SIDE_COLUMNS),
    }


def find_regional_tables(output_dir) -> list[Path]:
    """The ``*_desc-regions_stats.tsv`` of every run in ``output_dir``, sorted by path."""
    output_dir = Path(output_dir)
    found = set(output_dir.glob(f"sub-*/anat/sub-*{_TABLE_SUFFIX}"))
    found |= set(output_dir.glob(f"sub-*/ses-*/anat/sub-*{_TABLE_SUFFIX}"))
    return sorted(found)


def collect_participant_results(output_dir, bids_dir=None, *, site_column="site"
                                ) -> pd.DataFrame:
    """Every run's regional statistics, QC values and covariates as one tidy table.

    Parameters
    ----------
    output_dir : path
        The participant-level output folder.
    bids_dir : path, optional
        The BIDS dataset, for ``participants.tsv`` and ``sub-*/sub-*_sessions.tsv``.
    site_column : str
        Column of participants.tsv (or sessions.tsv) naming the site or scanner. When the
        column is absent (or a value is missing) the scan belongs to one site, ``site-1``.

    Returns
    -------
    pandas.DataFrame
        One row per scan x region x hemisphere x reference, sorted by those keys. Columns:
        ``scan`` (the file prefix), ``subject``, ``session``, ``run`` (None when absent), the
        regional table's columns, ``site``, ``diagnosis`` (column ``diagnosis`` or ``group``),
        ``age`` (float), ``sex``, ``affected_side`` (column ``affected_side`` or a variant; None
        when absent), the scan's QC values (:data:`QC_COLUMNS`; NaN when not recorded) and
        ``source`` (the table's path relative to ``output_dir``).

    Raises
    ------
    MissingInputError
        When ``output_dir`` does not exist or holds no regional tables.
    BadDataError
        When participants.tsv, a sessions.tsv or a JSON file cannot be read.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise MissingInputError(f"output folder {output_dir}: not found")
    tables = find_regional_tables(output_dir)
    if not tables:
        raise MissingInputError(
            f"output folder {output_dir}: no regional tables "
            f"(sub-*/[ses-*/]anat/*{_TABLE_SUFFIX}); run the participant level first")
    participants, sessions = _covariate_records(bids_dir, site_column)
    records = []
    for path in tables:
        prefix = path.name[:-len(_TABLE_SUFFIX)]
        entities = _entities(prefix)
        subject = f"sub-{entities['sub']}"
        session = f"ses-{entities['ses']}" if "ses" in entities else None
        scan = {"scan": prefix, "subject": subject, "session": session,
                "run": entities.get("run")}
        extra = {**_covariates(subject, session, participants, sessions, site_column),
                 **_scan_qc(path, prefix), "source": str(path.relative_to(output_dir))}
        try:
            rows = read_regional_table(path)
        except (OSError, KeyError, ValueError) as error:
            raise BadDataError(f"{path}: not a regional table ({error})") from None
        records.extend({**scan, **row, **extra} for row in rows)
    columns = [*SCAN_COLUMNS, *COLUMNS, *COVARIATE_COLUMNS, *QC_COLUMNS, "source"]
    tidy = pd.DataFrame.from_records(records, columns=columns)
    if tidy.empty:
        raise MissingInputError(f"output folder {output_dir}: the regional tables are empty")
    return _sorted(tidy)


def _sorted(tidy) -> pd.DataFrame:
    hemisphere_order = {name: index for index, name in enumerate(HEMISPHERES)}
    order = tidy.assign(_h=tidy["hemisphere"].map(hemisphere_order))
    order = order.sort_values(["scan", "region", "_h", "reference"], kind="mergesort")
    return order.drop(columns="_h").reset_index(drop=True)


def scan_table(tidy) -> pd.DataFrame:
    """One row per scan: its identifiers, covariates and QC values, sorted by scan."""
    columns = [column for column in (*SCAN_COLUMNS, *COVARIATE_COLUMNS, *QC_COLUMNS)
               if column in tidy.columns]
    scans = tidy[columns].drop_duplicates(subset="scan", keep="first")
    return scans.sort_values("scan", kind="mergesort").reset_index(drop=True)


def wide_table(tidy, reference="csf", *, statistic="mean_ppb", hemispheres=HEMISPHERES
               ) -> pd.DataFrame:
    """One row per scan, one column per region x hemisphere (:func:`feature_name`).

    Parameters
    ----------
    tidy : pandas.DataFrame
        From :func:`collect_participant_results` (optionally with scans removed).
    reference : str
        ``csf`` or ``whole-brain``: the reference of the values.
    statistic : str
        The statistic column to spread (e.g. ``mean_ppb``; ``ai_abs_pct`` with
        ``hemispheres=("bilateral",)`` for the asymmetry).
    hemispheres : sequence of str
        Hemispheres to keep.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`scan_table`, then ``<region>_<hemisphere>_<statistic>`` columns
        sorted by region and hemisphere (L, R, bilateral); NaN where a scan lacks a value.
        ``attrs["features"]`` lists the feature columns.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
    scans = scan_table(tidy)
    rows = tidy[(tidy["reference"] == reference) & tidy["hemisphere"].isin(hemispheres)]
    if rows.empty:
        raise BadDataError(f"no regional values relative to the {reference} reference")
    regions = sorted(rows["region"].unique())
    present = set(zip(rows["region"], rows["hemisphere"]))
    features = [(region, hemisphere) for region in regions for hemisphere in HEMISPHERES
                if hemisphere in hemispheres and (region, hemisphere) in present]
    names = [feature_name(region, hemisphere, statistic) for region, hemisphere in features]
    values = rows.pivot_table(index="scan", columns=["region", "hemisphere"], values=statistic,
                              aggfunc="first", dropna=False)
    values = values.reindex(index=scans["scan"], columns=pd.MultiIndex.from_tuples(features))
    block = pd.DataFrame(values.to_numpy(dtype=np.float64), columns=names)
    wide = pd.concat([scans.reset_index(drop=True), block], axis=1)
    wide.attrs["features"] = names
    return wide


def qc_exclusions(scans, *, min_dice=0.85, max_poor_phase=0.10) -> pd.DataFrame:
    """The scans that fail quality control, with the reasons.

    A scan is excluded when

    * its registration's brain Dice (``RegistrationQuality.dice_brain``) is below
      ``min_dice``;
    * the fraction of its brain mask with unreliable phase (``poor_phase_fraction``) is above
      ``max_poor_phase``;
    * it lacks a region x hemisphere x reference that another scan has, or has it empty
      (no voxels or no finite mean).

    QC values that were not recorded are not a reason for exclusion.

    Parameters
    ----------
    scans : pandas.DataFrame
        The tidy table of :func:`collect_participant_results`.

    Returns
    -------
    pandas.DataFrame
        Columns ``scan``, ``subject``, ``session``, ``run``, ``site``, ``diagnosis`` and
        ``reasons`` (the reasons joined by ``"; "``), one row per excluded scan, sorted by scan.
    """
    per_scan = scan_table(scans)
    usable = scans[(scans["n_voxels"] > 0) & np.isfinite(scans["mean_ppb"].astype(float))]
    expected = sorted(set(zip(scans["region"], scans["hemisphere"], scans["reference"])))
    have = {scan: set(zip(group["region"], group["hemisphere"], group["reference"]))
            for scan, group in usable.groupby("scan", sort=True)}
    rows = []
    for record in per_scan.to_dict("records"):
        reasons = []
        dice = record.get("registration_dice", math.nan)
        if dice is not None and np.isfinite(dice) and dice < min_dice:
            reasons.append(f"registration brain Dice {dice:.3f} below {min_dice:g}")
        poor = record.get("poor_phase_fraction", math.nan)
        if poor is not None and np.isfinite(poor) and poor > max_poor_phase:
            reasons.append(f"poor phase quality in {100 * poor:.1f}% of the brain mask "
                           f"(limit {100 * max_poor_phase:g}%)")
        missing = [key for key in expected if key not in have.get(record["scan"], set())]
        if missing:
            listed = ", ".join(f"{region} {hemisphere} ({reference})"
                               for region, hemisphere, reference in missing)
            reasons.append(f"missing regions: {listed}")
        if reasons:
            rows.append({key: record.get(key) for key in
                         ("scan", "subject", "session", "run", "site", "diagnosis")}
                        | {"reasons": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=["scan", "subject", "session", "run", "site", "diagnosis",
                                       "reasons"])
