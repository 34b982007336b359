"""When each run was acquired: ``acq_time`` of the BIDS sessions and scans tables.

BIDS (1.9, "Sessions file" and "Scans file") records acquisition times in two optional tables:

* ``sub-<label>/sub-<label>_sessions.tsv``: one row per session (``session_id``), with an
  ``acq_time`` column giving when the session started;
* ``sub-<label>/[ses-<label>/]sub-<label>[_ses-<label>]_scans.tsv``: one row per file
  (``filename``, relative to the folder of the table), with an ``acq_time`` column.

Both use ISO 8601 date-times (``YYYY-MM-DDThh:mm:ss[.ffffff][Z|+hh:mm]``; anonymised datasets
may shift the dates). :func:`run_acquisition_date` gives the date of a run from the sessions
table when it names the run's session, or else from the scans table (the earliest time of the
run's files). A value that is not an ISO 8601 date-time, or a table that cannot be read, is
logged as a warning naming the file, and the date is then unknown: a missing or malformed date
never stops the participant level.
"""

from __future__ import annotations

import csv
import datetime
import logging
import os
import re
from pathlib import Path

LOGGER = logging.getLogger("qsmprep")

#: BIDS ``acq_time`` (ISO 8601): a date, optionally with a time, fraction and time-zone offset.
_ISO_8601 = re.compile(r"^\d{4}-\d{2}-\d{2}"
                       r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")
#: Cell values BIDS (and common practice) use for "not available".
_MISSING = {"", "n/a", "na", "nan"}


def parse_acq_time(value) -> datetime.datetime | None:
    """An ``acq_time`` cell as a naive date-time (UTC when an offset is given).

    Returns None for an empty or ``n/a`` cell.

    Raises
    ------
    ValueError
        When the value is not an ISO 8601 date or date-time (e.g. ``03/02/2021`` or
        ``2021-13-01``).

    Examples
    --------
    >>> parse_acq_time("2021-03-02T10:15:00")
    datetime.datetime(2021, 3, 2, 10, 15)
    >>> parse_acq_time("2021-03-02T10:15:00+01:00")
    datetime.datetime(2021, 3, 2, 9, 15)
    >>> parse_acq_time("n/a") is None
    True
    """
    text = "" if value is None else str(value).strip()
    if text.lower() in _MISSING:
        return None
    if not _ISO_8601.match(text):
        raise ValueError(f"{text!r} is not an ISO 8601 date-time (YYYY-MM-DDThh:mm:ss)")
    normalised = text[:-1] + "+00:00" if text.endswith("Z") else text
    if re.search(r"[+-]\d{4}$", normalised) and "T" in normalised:
        normalised = normalised[:-2] + ":" + normalised[-2:]
    try:
        moment = datetime.datetime.fromisoformat(normalised)
    except ValueError as error:
        raise ValueError(f"{text!r} is not a valid date-time ({error})") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return moment


def format_acq_time(moment: datetime.datetime) -> str:
    """The ISO 8601 text of a date-time as stored in reports (seconds precision).

    >>> format_acq_time(datetime.datetime(2021, 3, 2, 10, 15))
    '2021-03-02T10:15:00'
    """
    return moment.replace(microsecond=0).isoformat()


def _read_rows(path: Path, key_column: str, root: Path) -> list[dict] | None:
    """The rows of a BIDS TSV that has ``key_column`` and ``acq_time``; None (after a warning)
    when it cannot be read or lacks a needed column, [] when it has no ``acq_time``."""
    relative = _relative(root, path)
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream, delimiter="\t")
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        LOGGER.warning("%s cannot be read as a tab-separated table (%s); its acquisition dates "
                       "are treated as unknown.", relative, error)
        return None
    if "acq_time" not in columns:
        return []
    if key_column not in columns:
        LOGGER.warning("%s has an acq_time column but no %s column; its acquisition dates are "
                       "treated as unknown.", relative, key_column)
        return None
    return rows


def _checked_time(value, path: Path, root: Path, what: str) -> datetime.datetime | None:
    try:
        return parse_acq_time(value)
    except ValueError as error:
        LOGGER.warning("%s: acq_time of %s is malformed (%s); the date is treated as unknown. "
                       "Write it as YYYY-MM-DDThh:mm:ss.", _relative(root, path), what, error)
        return None


def session_date(bids_dir, subject: str, session: str) -> tuple[datetime.datetime | None,
                                                                  str | None]:
    """``(date-time, source)`` of a session from ``sub-<subject>_sessions.tsv``; ``(None,
    None)`` when the table, the session's row or its ``acq_time`` is missing or malformed.
    ``source`` is the table's path relative to ``bids_dir``."""
    root = Path(bids_dir)
    path = root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    if not path.is_file():
        return None, None
    rows = _read_rows(path, "session_id", root)
    for row in rows or []:
        label = str(row.get("session_id") or "").strip()
        if label.removeprefix("ses-") == str(session):
            moment = _checked_time(row.get("acq_time"), path, root, f"session {label}")
            return (moment, _relative(root, path)) if moment is not None else (None, None)
    return None, None


def scans_date(bids_dir, subject: str, session: str | None, files) -> tuple[
        datetime.datetime | None, str | None]:
    """``(date-time, source)`` of a run from its scans table: the earliest ``acq_time`` of
    the rows naming ``files`` (absolute paths or paths relative to the scans table's folder);
    ``(None, None)`` when none is known."""
    root = Path(bids_dir)
    folder = root / f"sub-{subject}"
    name = f"sub-{subject}"
    if session is not None:
        folder = folder / f"ses-{session}"
        name += f"_ses-{session}"
    path = folder / f"{name}_scans.tsv"
    if not path.is_file():
        return None, None
    rows = _read_rows(path, "filename", root)
    wanted = {_relative(folder, file) if os.path.isabs(os.fspath(file)) else
              Path(file).as_posix() for file in files}
    times = []
    for row in rows or []:
        filename = Path(str(row.get("filename") or "").strip()).as_posix()
        if filename in wanted:
            moment = _checked_time(row.get("acq_time"), path, root, filename)
            if moment is not None:
                times.append(moment)
    return (min(times), _relative(root, path)) if times else (None, None)


def run_acquisition_date(bids_dir, run) -> tuple[str | None, str | None]:
    """``(ISO 8601 date-time, source table)`` of a discovered run
    (:class:`qsmprep.bids.discovery.Run`): its session's ``acq_time`` in the sessions table,
    or else the earliest ``acq_time`` of its files in the scans table; ``(None, None)`` when
    neither gives one."""
    moment, source = (None, None)
    if run.session is not None:
        moment, source = session_date(bids_dir, run.subject, run.session)
    if moment is None:
        files = [path for echo in run.echoes for path in echo.files]
        moment, source = scans_date(bids_dir, run.subject, run.session, files)
    return (format_acq_time(moment), source) if moment is not None else (None, None)


def years_between(earlier, later) -> float | None:
    """Years (of 365.25 days) from ``earlier`` to ``later`` (ISO 8601 texts or date-times);
    None when either is missing or malformed.

    >>> round(years_between("2021-03-02", "2023-03-02"), 3)
    1.999
    """
    try:
        first = earlier if isinstance(earlier, datetime.datetime) else parse_acq_time(earlier)
        second = later if isinstance(later, datetime.datetime) else parse_acq_time(later)
    except ValueError:
        return None
    if first is None or second is None:
        return None
    return (second - first).total_seconds() / (365.25 * 86400.0)


def _relative(root, path) -> str:
    return Path(os.path.relpath(os.fspath(path), os.fspath(root))).as_posix()
