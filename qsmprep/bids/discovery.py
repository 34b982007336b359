"""Finding the multi-echo gradient-echo runs of a BIDS dataset and checking their metadata.

:func:`discover_runs` indexes the dataset with pybids (in memory: nothing is written into the
dataset), selects ``anat/`` images with suffix ``MEGRE`` (or ``T2starw`` for a single echo),
groups them into runs by (subject, session, acquisition, reconstruction, run), and each run
into echoes by the ``echo`` entity and parts by the ``part`` entity (``mag``/``phase`` or
``real``/``imag``). It checks what QSM needs before any processing starts -- echo times in
seconds, field strength, phase units, matching parts and voxel grids, read from sidecars and
NIfTI headers only -- and raises an error from :mod:`qsmprep.errors` that names the file and
the fix for every problem it finds.

BIDS naming of the inputs (BIDS 1.9, anatomical non-parametric images)::

    sub-<label>[/ses-<label>]/anat/
        sub-<label>[_ses-<label>][_acq-<label>][_rec-<label>][_run-<index>]_echo-<index>
            _part-<mag|phase|real|imag>_MEGRE.nii[.gz]   (+ .json sidecar with EchoTime)
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import math
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import (
    BadDataError,
    InvalidBIDSError,
    MissingInputError,
    NoMatchingRunsError,
    UsageError,
)
from ..imageio import voxel_size_from_affine
from .derivatives import entity_prefix
from .loading import same_grid_problem

LOGGER = logging.getLogger("qsmprep")

#: Suffixes of the images qsmprep reads, by the keys a BIDS filter file may use for them.
INPUT_SUFFIXES = {"megre": "MEGRE", "t2starw": "T2starw"}

#: Entities that identify a run (and name its derivatives), in BIDS order.
RUN_ENTITIES = ("subject", "session", "acquisition", "reconstruction", "run")

#: Sidecar fields of the first echo kept in :attr:`Run.metadata` for reports and boilerplate.
REPORTED_METADATA_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "SoftwareVersions",
    "MagneticFieldStrength",
    "ReceiveCoilName",
    "MRAcquisitionType",
    "RepetitionTime",
    "FlipAngle",
    "PulseSequenceType",
    "ParallelReductionFactorInPlane",
)

#: Entities qsmprep sets itself, which a BIDS filter may not change.
RESERVED_FILTER_ENTITIES = ("suffix", "datatype", "extension")

#: BIDS short keys that users often write in filter files, with the pybids name to use.
_PYBIDS_ENTITY_NAMES = {
    "sub": "subject",
    "ses": "session",
    "acq": "acquisition",
    "rec": "reconstruction",
    "ce": "ceagent",
    "dir": "direction",
}

#: Folders pybids need not index: everything but anat/ (and sidecars inheritable by anat/).
_NOT_ANATOMICAL = re.compile(r"^/sub-[^/]+/(?:ses-[^/]+/)?(?!anat(?:/|$)|ses-|sub-)[^/]+")

_LABEL = re.compile(r"^[a-zA-Z0-9]+$")
_INPUT_IMAGE_NAME = re.compile(r"_(MEGRE|T2starw)\.nii(\.gz)?$")
_NAMING_HELP = (
    "BIDS stores each echo of a multi-echo GRE as its own 3-D file, e.g. "
    "sub-01_echo-1_part-mag_MEGRE.nii.gz and sub-01_echo-1_part-phase_MEGRE.nii.gz, each with "
    "a JSON sidecar giving its EchoTime in seconds; split the 4-D file into one file per echo "
    "and part"
)


@dataclass(frozen=True)
class Echo:
    """The files of one echo of a run (absolute paths; None where a part is absent)."""

    echo_time_s: float
    magnitude: str | None
    phase: str | None
    real: str | None
    imaginary: str | None
    phase_units: str | None

    @property
    def has_magnitude_and_phase(self) -> bool:
        """True when this echo is stored as a magnitude/phase pair."""
        return self.magnitude is not None and self.phase is not None

    @property
    def files(self) -> tuple[str, ...]:
        """All files of this echo."""
        parts = (self.magnitude, self.phase, self.real, self.imaginary)
        return tuple(path for path in parts if path is not None)


@dataclass(frozen=True)
class Run:
    """One multi-echo GRE acquisition, ready to load with :func:`load_multiecho`.

    ``metadata`` holds the :data:`REPORTED_METADATA_FIELDS` present in the first echo's
    sidecar; ``field_strength_source`` says whether ``field_strength_t`` came from the
    ``'sidecar'`` or the ``'command line'``.
    """

    subject: str
    session: str | None
    acquisition: str | None
    reconstruction: str | None
    run: str | None
    suffix: str
    echoes: tuple[Echo, ...]
    field_strength_t: float
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    metadata: dict = field(compare=False)
    field_strength_source: str
    t1w: str | None = field(default=None, compare=False)
    #: When the run was acquired (ISO 8601, from the sessions or scans table; None: unknown)
    #: and the table it came from (relative to the dataset).
    acquisition_date: str | None = field(default=None, compare=False)
    acquisition_date_source: str | None = field(default=None, compare=False)

    @property
    def entities(self) -> dict:
        """BIDS entities naming this run's derivatives (pybids names; only those present)."""
        values = (self.subject, self.session, self.acquisition, self.reconstruction, self.run)
        return {name: value for name, value in zip(RUN_ENTITIES, values) if value is not None}

    @property
    def name(self) -> str:
        """File-name prefix of the run, e.g. ``'sub-01_ses-1_acq-x_run-1'``."""
        return entity_prefix(self.entities)

    @property
    def echo_times_s(self) -> tuple[float, ...]:
        """Echo times in seconds, ascending."""
        return tuple(echo.echo_time_s for echo in self.echoes)

    @property
    def phase_units(self) -> str | None:
        """Phase ``Units`` from the sidecars (shared by all echoes), or None if not stated."""
        return self.echoes[0].phase_units

    @property
    def load_arguments(self) -> dict:
        """Keyword arguments of :func:`qsmprep.bids.loading.load_multiecho` for this run."""
        if all(echo.has_magnitude_and_phase for echo in self.echoes):
            return {
                "magnitude_files": [echo.magnitude for echo in self.echoes],
                "phase_files": [echo.phase for echo in self.echoes],
                "phase_units": self.phase_units,
            }
        return {
            "real_files": [echo.real for echo in self.echoes],
            "imaginary_files": [echo.imaginary for echo in self.echoes],
        }

    def describe(self) -> str:
        """One line for the log, e.g. ``'sub-01 ses-1: MEGRE, 4 echoes, TE = 4, 8, ... ms'``."""
        label = " ".join(self.name.split("_"))
        echo_times_ms = ", ".join(f"{round(te * 1000, 3):g}" for te in self.echo_times_s)
        voxel = "x".join(f"{round(size, 3):g}" for size in self.voxel_size)
        count = len(self.echoes)
        return (
            f"{label}: {self.suffix}, {count} echo{'es' if count > 1 else ''}, "
            f"TE = {echo_times_ms} ms, {self.field_strength_t:g} T, "
            f"{'x'.join(map(str, self.shape))} at {voxel} mm"
            + (f"; T1w {Path(self.t1w).name}" if self.t1w else "")
        )


def load_bids_filters(path) -> dict:
    """Read a BIDS filter file (JSON), as given to ``--bids-filter-file``.

    The file holds pybids entity filters, either flat (``{"acquisition": "highres"}``,
    applied to every input) or by input kind (``{"megre": {...}, "t2starw": {...}}``).

    Raises
    ------
    MissingInputError
        The file does not exist.
    UsageError
        Invalid JSON (with the error position) or invalid filter keys and values.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"BIDS filter file {path} does not exist.")
    try:
        filters = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(
            f"BIDS filter file {path} is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}."
        ) from None
    check_bids_filters(filters, source=f"BIDS filter file {path}")
    return filters


def check_bids_filters(filters, *, source: str = "BIDS filters") -> None:
    """Raise :class:`UsageError` unless ``filters`` is a valid flat or per-suffix filter dict.

    Keys are pybids entity names (``acquisition``, ``run``, ...) except
    :data:`RESERVED_FILTER_ENTITIES`, or the input kinds of :data:`INPUT_SUFFIXES` holding such
    dicts. Values are strings, integers, lists of them, ``null`` (entity absent) or ``"*"``
    (entity present, any value).
    """
    if not isinstance(filters, dict):
        raise UsageError(f"{source} must hold a JSON object, not {type(filters).__name__}.")
    for key, value in filters.items():
        if key in INPUT_SUFFIXES:
            if not isinstance(value, dict):
                raise UsageError(
                    f"{source}: the value of {key!r} must be an object of entity filters."
                )
            for entity, entity_value in value.items():
                _check_filter_entry(entity, entity_value, source=f"{source} ({key})")
        else:
            _check_filter_entry(key, value, source=source)


def discover_runs(
    bids_dir,
    *,
    participant_labels=None,
    session_labels=None,
    bids_filters=None,
    field_strength_t: float | None = None,
) -> list[Run]:
    """Find and check the multi-echo GRE runs of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path-like
        Root of the raw BIDS dataset (read only).
    participant_labels, session_labels : list of str, optional
        Labels to process, with or without their ``sub-``/``ses-`` prefix; all by default.
    bids_filters : dict, optional
        pybids entity filters, flat or keyed by ``'megre'``/``'t2starw'``
        (see :func:`load_bids_filters`). Explicit participant/session labels take precedence
        over ``subject``/``session`` filters.
    field_strength_t : float, optional
        Main field (tesla) from the command line: used where sidecars lack
        ``MagneticFieldStrength`` and preferred (with a warning) where they disagree.

    Returns
    -------
    list of Run
        Sorted by entities; one INFO log line per run.

    Raises
    ------
    MissingInputError
        ``bids_dir`` does not exist; a magnitude without its phase or vice versa.
    InvalidBIDSError
        No readable ``dataset_description.json``.
    UsageError
        Malformed labels, filters or field strength.
    NoMatchingRunsError
        A label not in the dataset, or no run left after selection.
    BadDataError
        Missing, duplicated or implausible echo times, missing field strength, unknown phase
        units, 4-D files, or parts on different voxel grids.
    """
    root = Path(bids_dir).absolute()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise MissingInputError(f"BIDS dataset folder {root} {problem}.")
    _check_dataset_description(root)
    filters = {} if bids_filters is None else bids_filters
    check_bids_filters(filters)
    if field_strength_t is not None:
        field_strength_t = _checked_command_line_field_strength(field_strength_t)

    subjects = _select_labels(
        participant_labels, _folder_labels(root, "sub-*"), prefix="sub", kind="participant",
        root=root,
    )
    sessions = _select_labels(
        session_labels, _folder_labels(root, "sub-*/ses-*"), prefix="ses", kind="session",
        root=root,
    )

    _check_sidecars(root, subjects, sessions)
    layout = _index_dataset(root)
    files_by_run = defaultdict(list)
    for filter_key, suffix in INPUT_SUFFIXES.items():
        query = _suffix_query(filters, filter_key)
        query.update(datatype="anat", suffix=suffix, extension=[".nii", ".nii.gz"])
        if subjects is not None:
            query["subject"] = subjects
        if sessions is not None:
            query["session"] = sessions
        for bids_file in layout.get(**query):
            entities = bids_file.get_entities()
            key = (suffix, *(_label_or_none(entities.get(name)) for name in RUN_ENTITIES))
            files_by_run[key].append(bids_file)

    _check_files_pybids_skipped(root, layout, subjects)

    runs, magnitude_only_images = [], []
    for key in sorted(files_by_run, key=_run_sort_key):
        suffix, bids_files = key[0], files_by_run[key]
        if suffix == "T2starw" and all(f.get_entities().get("part") is None for f in bids_files):
            relative = _relative(root, bids_files[0].path)
            LOGGER.warning("%s: T2*-weighted image without phase; not used for QSM.", relative)
            magnitude_only_images.append(relative)
            continue
        runs.append(_build_run(root, key, bids_files, field_strength_t=field_strength_t))

    if not runs:
        if magnitude_only_images:
            raise MissingInputError(
                f"{magnitude_only_images[0]} is a magnitude-only T2*-weighted image: QSM needs "
                "the phase too. Add the phase images (part-phase) of each echo, named as BIDS "
                "MEGRE files."
            )
        raise NoMatchingRunsError(_nothing_found_message(root, subjects, sessions, filters))

    for subject in subjects or ():
        if not any(run.subject == subject for run in runs):
            LOGGER.warning("sub-%s: no MEGRE or T2starw run with phase found; skipped.", subject)
    runs = [_with_t1w(layout, run) for run in runs]
    runs = [_with_acquisition_date(root, run) for run in runs]
    for run in runs:
        LOGGER.info(run.describe())
    return runs


def _with_acquisition_date(root: Path, run: Run) -> Run:
    """``run`` with its acquisition date (:func:`qsmprep.bids.sessions.run_acquisition_date`:
    the sessions table, else the scans table; unknown, with a warning, when malformed)."""
    from dataclasses import replace

    from .sessions import run_acquisition_date

    date, source = run_acquisition_date(root, run)
    return replace(run, acquisition_date=date, acquisition_date_source=source)


def _with_t1w(layout, run: Run) -> Run:
    """``run`` with the T1-weighted image of its subject and session, if there is one (the
    first in name order, preferring one without ``run-``), for two-step registration."""
    from dataclasses import replace

    from bids.layout import Query

    images = layout.get(datatype="anat", suffix="T1w", extension=[".nii", ".nii.gz"],
                        subject=run.subject,
                        session=run.session if run.session is not None else Query.NONE)
    if not images:
        return run
    images.sort(key=lambda image: (image.get_entities().get("run") is not None, image.path))
    return replace(run, t1w=images[0].path)


# ----------------------------------------------------------------------------- dataset level


def _check_dataset_description(root: Path) -> None:
    description_path = root / "dataset_description.json"
    if not description_path.is_file():
        raise InvalidBIDSError(
            f"{root} has no dataset_description.json: it is not the root of a BIDS dataset. "
            'Point qsmprep at the dataset root, or add the file with at least "Name" and '
            '"BIDSVersion".'
        )
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        position = (
            f" at line {error.lineno}, column {error.colno}"
            if isinstance(error, json.JSONDecodeError)
            else ""
        )
        raise InvalidBIDSError(
            f"{description_path} is not valid JSON{position}: fix the file (a JSON object with "
            'at least "Name" and "BIDSVersion").'
        ) from None
    if not isinstance(description, dict):
        raise InvalidBIDSError(f"{description_path} must hold a JSON object.")
    missing = [key for key in ("Name", "BIDSVersion") if key not in description]
    if missing:
        raise InvalidBIDSError(
            f"{description_path} lacks the required field(s) {', '.join(missing)}: add them "
            '(e.g. "Name": "My study", "BIDSVersion": "1.9.0").'
        )


def _index_dataset(root: Path):
    """An in-memory pybids layout of the anatomical files (no database file is written)."""
    from bids.exceptions import BIDSValidationError
    from bids.layout import BIDSLayout, BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    indexer = BIDSLayoutIndexer(
        validate=True, ignore=[*DEFAULT_LOCATIONS_TO_IGNORE, _NOT_ANATOMICAL]
    )
    try:
        return BIDSLayout(root, validate=True, derivatives=False, indexer=indexer)
    except BIDSValidationError as error:
        raise InvalidBIDSError(f"{root} is not a valid BIDS dataset: {error}") from None


def _folder_labels(root: Path, pattern: str) -> set:
    """Labels of the subject (``sub-*``) or session (``sub-*/ses-*``) folders of the dataset."""
    return {path.name.split("-", 1)[1] for path in root.glob(pattern) if path.is_dir()}


def _select_labels(labels, available, *, prefix: str, kind: str, root: Path):
    """Labels without prefix, all present in the dataset; None when ``labels`` is empty."""
    if not labels:
        return None
    selected = []
    for label in labels:
        bare = str(label).removeprefix(f"{prefix}-")
        if not _LABEL.match(bare):
            raise UsageError(
                f"Invalid {kind} label {label!r}: use the letters and digits after "
                f"'{prefix}-', e.g. '01' or '{prefix}-01'."
            )
        if bare not in selected:
            selected.append(bare)
    missing = [label for label in selected if label not in available]
    if missing:
        listed = ", ".join(f"{prefix}-{label}" for label in sorted(available)) or "none"
        raise NoMatchingRunsError(
            f"{kind.capitalize()} label(s) {', '.join(f'{prefix}-{m}' for m in missing)} not "
            f"found in {root}. Available: {listed}."
        )
    return selected


@functools.cache
def _filterable_entities() -> frozenset:
    """pybids entity names a BIDS filter may use."""
    from bids.layout.models import Config

    return frozenset(Config.load("bids").entities) - set(RESERVED_FILTER_ENTITIES)


def _check_filter_entry(entity, value, *, source: str) -> None:
    known_entities = _filterable_entities()
    if entity in RESERVED_FILTER_ENTITIES:
        raise UsageError(f"{source}: qsmprep sets {entity!r} itself; remove it from the filters.")
    if entity not in known_entities:
        hint = (
            f" Did you mean {_PYBIDS_ENTITY_NAMES[entity]!r}?"
            if entity in _PYBIDS_ENTITY_NAMES
            else ""
        )
        raise UsageError(
            f"{source}: unknown key {entity!r}.{hint} Use pybids entity names "
            f"({', '.join(sorted(known_entities))}) or group them under "
            f"{' / '.join(repr(k) for k in INPUT_SUFFIXES)}."
        )
    values = value if isinstance(value, list) else [value]
    for item in values:
        if item is not None and (isinstance(item, bool) or not isinstance(item, (str, int))):
            raise UsageError(
                f"{source}: the filter on {entity!r} must be a string, an integer, a list of "
                f'them, null (entity absent) or "*" (any value), not {item!r}.'
            )


def _suffix_query(filters: dict, filter_key: str) -> dict:
    """pybids query from the flat filters updated with those keyed by ``filter_key``."""
    from bids.layout import Query

    entries = {k: v for k, v in filters.items() if k not in INPUT_SUFFIXES}
    entries.update(filters.get(filter_key, {}))
    special = {None: Query.NONE, "*": Query.ANY}
    return {
        entity: special[value] if (value is None or value == "*") else value
        for entity, value in entries.items()
    }


def _check_files_pybids_skipped(root: Path, layout, subjects) -> None:
    """Explain MEGRE/T2starw images whose names pybids rejected as not BIDS.

    A 4-D image holding all echoes is a common conversion result: raise BadDataError with the
    BIDS naming; warn about any other skipped image.
    """
    indexed = {os.path.normpath(path) for path in layout.get(return_type="file")}
    folders = [*root.glob("sub-*/anat"), *root.glob("sub-*/ses-*/anat")]
    for folder in sorted(folders):
        subject = folder.relative_to(root).parts[0].removeprefix("sub-")
        if subjects is not None and subject not in subjects:
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not _INPUT_IMAGE_NAME.search(path.name):
                continue
            if os.path.normpath(path) in indexed:
                continue
            relative = path.relative_to(root)
            image = _load_header(path, relative)
            if image.ndim == 4 and image.shape[3] > 1:
                raise BadDataError(
                    f"{relative} is a 4-D image ({image.shape[3]} volumes) and its name is not "
                    f"valid BIDS. {_NAMING_HELP}."
                )
            LOGGER.warning(
                "%s was skipped: its name is not valid BIDS (MEGRE files need an echo-<index> "
                "entity, and part-<mag|phase|real|imag> for phase data).",
                relative,
            )


def _run_sort_key(key) -> tuple:
    """Order runs by their entities (absent ones first), then by suffix."""
    suffix, *entity_values = key
    return (*("" if value is None else value for value in entity_values), suffix)


def _nothing_found_message(root, subjects, sessions, filters) -> str:
    searched = [
        "participants " + (", ".join(f"sub-{s}" for s in subjects) if subjects else "all"),
        "sessions " + (", ".join(f"ses-{s}" for s in sessions) if sessions else "all"),
    ]
    if filters:
        searched.append(f"BIDS filters {json.dumps(filters, sort_keys=True)}")
    return (
        f"No multi-echo GRE run found in {root} ({'; '.join(searched)}). qsmprep looks for "
        "anat/sub-<label>[_ses-<label>][_acq-<label>][_rec-<label>][_run-<index>]_echo-<index>"
        "_part-<mag|phase>_MEGRE.nii[.gz] files (or real/imag parts; T2starw for a single "
        "echo). Check the labels and filters, and that the files follow this naming."
    )


# --------------------------------------------------------------------------------- run level


def _build_run(root: Path, key, bids_files, *, field_strength_t) -> Run:
    """A checked :class:`Run` from its files; ``key`` is (suffix, *RUN_ENTITIES values)."""
    suffix, *entity_values = key
    files_by_echo = _files_by_echo_and_part(root, bids_files)
    echoes, metadata_by_echo = [], []
    for echo_label in sorted(files_by_echo, key=lambda label: (label is None, str(label))):
        parts = files_by_echo[echo_label]
        _check_parts_complete(root, parts)
        metadata = {part: bids_file.get_metadata() for part, bids_file in parts.items()}
        echoes.append(
            Echo(
                echo_time_s=_echo_time(root, parts, metadata),
                magnitude=_path_of(parts.get("mag")),
                phase=_path_of(parts.get("phase")),
                real=_path_of(parts.get("real")),
                imaginary=_path_of(parts.get("imag")),
                phase_units=_phase_units(root, parts, metadata),
            )
        )
        metadata_by_echo.append(metadata["mag"] if "mag" in metadata else metadata["real"])

    order = sorted(range(len(echoes)), key=lambda index: echoes[index].echo_time_s)
    echoes = tuple(echoes[index] for index in order)
    first_metadata = metadata_by_echo[order[0]]
    _check_echoes_consistent(root, echoes)
    shape, voxel_size = _check_voxel_grids(root, echoes)
    field_strength, source = _field_strength(
        root, echoes[0].files[0], first_metadata, command_line_t=field_strength_t
    )

    return Run(
        **dict(zip(RUN_ENTITIES, entity_values)),
        suffix=suffix,
        echoes=echoes,
        field_strength_t=field_strength,
        shape=shape,
        voxel_size=voxel_size,
        metadata={k: first_metadata[k] for k in REPORTED_METADATA_FIELDS if k in first_metadata},
        field_strength_source=source,
    )


def _files_by_echo_and_part(root: Path, bids_files) -> dict:
    """{echo label or None: {part: BIDSFile}}; a file without ``part`` is a magnitude."""
    files_by_echo: dict = defaultdict(dict)
    for bids_file in bids_files:
        entities = bids_file.get_entities()
        echo_label = _label_or_none(entities.get("echo"))
        part = entities.get("part") or "mag"
        earlier = files_by_echo[echo_label].get(part)
        if earlier is not None:
            raise BadDataError(
                f"{_relative(root, earlier.path)} and {_relative(root, bids_file.path)} are the "
                f"same echo and part of one run (they differ only in entities qsmprep does not "
                "group by, or in extension). Remove one, or select one with a BIDS filter file."
            )
        files_by_echo[echo_label][part] = bids_file
    return files_by_echo


def _check_parts_complete(root: Path, parts: dict) -> None:
    """Every echo needs magnitude and phase, or real and imaginary."""
    partners = (("mag", "phase"), ("phase", "mag"), ("real", "imag"), ("imag", "real"))
    if ("mag" in parts and "phase" in parts) or ("real" in parts and "imag" in parts):
        return
    for present, missing in partners:
        if present in parts and missing not in parts:
            relative = _relative(root, parts[present].path)
            expected = relative.replace(f"part-{present}", f"part-{missing}")
            raise MissingInputError(
                f"{relative} has no matching part-{missing} file: QSM needs both the {present} "
                f"and the {missing} image of every echo. Add {expected} (same entities, part "
                "changed)."
            )


def _echo_time(root: Path, parts: dict, metadata: dict) -> float:
    """EchoTime (s) of one echo, the same in all its parts' sidecars."""
    echo_times = {}
    for part, values in metadata.items():
        if "EchoTime" in values:
            relative = _relative(root, parts[part].path)
            echo_times[relative] = _seconds(values["EchoTime"], relative)
    first_file = _relative(root, next(iter(parts.values())).path)
    if not echo_times:
        raise BadDataError(
            f"{first_file} has no EchoTime in its JSON sidecar: add \"EchoTime\" (in seconds, "
            f"e.g. 0.004) to {_sidecar_name(first_file)} or to a sidecar it inherits from."
        )
    (first_name, first_value), *others = echo_times.items()
    for name, value in others:
        if not math.isclose(value, first_value, rel_tol=1e-6, abs_tol=1e-9):
            raise BadDataError(
                f"{name} has EchoTime {value:g} s but {first_name} (same echo) has "
                f"{first_value:g} s: the parts of one echo must share their echo time."
            )
    return first_value


def _seconds(value, relative: str) -> float:
    """A sidecar EchoTime as float seconds (numbers stored as strings are accepted)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadDataError(
            f"EchoTime of {relative} is {value!r}: it must be one number of seconds (e.g. "
            f"0.004). Fix {_sidecar_name(relative)}."
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadDataError(
            f"EchoTime of {relative} is {value!r}: it must be a positive number of seconds."
        )
    if seconds > 1:
        raise BadDataError(
            f"EchoTime of {relative} is {value!r}, which looks like milliseconds: BIDS gives "
            f"echo times in seconds. Write {seconds / 1000:g} in {_sidecar_name(relative)}."
        )
    return seconds


def _phase_units(root: Path, parts: dict, metadata: dict) -> str | None:
    """Phase ``Units`` of a magnitude/phase echo: 'rad', 'arbitrary' or None if absent."""
    if "phase" not in parts:
        return None
    units = metadata["phase"].get("Units")
    if units is None:
        return None
    if str(units).lower() in ("rad", "arbitrary"):
        return str(units).lower()
    relative = _relative(root, parts["phase"].path)
    raise BadDataError(
        f"{relative} has Units {units!r}: phase images must say \"Units\": \"rad\" or "
        f"\"arbitrary\" (e.g. scanner integers). Fix {_sidecar_name(relative)}."
    )


def _check_echoes_consistent(root: Path, echoes) -> None:
    """One representation, distinct echo times and one phase unit across the echoes."""
    first = echoes[0]
    for echo in echoes[1:]:
        if echo.has_magnitude_and_phase != first.has_magnitude_and_phase:
            raise BadDataError(
                f"{_relative(root, first.files[0])} and {_relative(root, echo.files[0])} belong "
                "to one run but one is stored as magnitude/phase and the other as real/imag: "
                "give every echo of a run the same parts."
            )
    for earlier, later in zip(echoes, echoes[1:]):
        if math.isclose(earlier.echo_time_s, later.echo_time_s, rel_tol=1e-6):
            raise BadDataError(
                f"{_relative(root, earlier.files[0])} and {_relative(root, later.files[0])} have "
                f"the same EchoTime ({earlier.echo_time_s:g} s): each echo of a run needs its "
                "own echo time. Check the sidecars."
            )
    units = {echo.phase_units for echo in echoes if echo.phase_units is not None}
    if len(units) > 1:
        raise BadDataError(
            f"The phase images of the run of {_relative(root, first.files[0])} disagree on "
            f"Units ({', '.join(sorted(units))}): all echoes must use the same units."
        )
    if units and any(e.phase_units is None for e in echoes if e.has_magnitude_and_phase):
        unstated = next(e for e in echoes if e.has_magnitude_and_phase and e.phase_units is None)
        raise BadDataError(
            f"{_relative(root, unstated.phase)} states no Units while other echoes of its run "
            f"say {units.pop()!r}: add the same \"Units\" to its sidecar."
        )


def _check_voxel_grids(root: Path, echoes):
    """3-D shape and voxel size (mm), after checking that every file shares one grid."""
    reference_path = echoes[0].files[0]
    reference_relative = _relative(root, reference_path)
    reference = None
    for echo in echoes:
        for path in echo.files:
            relative = _relative(root, path)
            image = _load_header(path, relative)
            _check_image_complete(path, image, relative)
            if image.ndim == 4 and image.shape[3] > 1:
                raise BadDataError(
                    f"{relative} is 4-D ({image.shape[3]} volumes) but a BIDS {_suffix_of(path)} "
                    f"file holds one echo. {_NAMING_HELP}."
                )
            if image.ndim not in (3, 4):
                raise BadDataError(
                    f"{relative} has {image.ndim} dimensions: expected a 3-D volume."
                )
            if reference is None:
                reference = image
                continue
            problem = same_grid_problem(image, relative, reference, reference_relative)
            if problem:
                raise BadDataError(problem)
    shape = tuple(int(n) for n in reference.shape[:3])
    voxel_size = tuple(round(float(v), 6) for v in voxel_size_from_affine(reference.affine))
    return shape, voxel_size


def _suffix_of(path) -> str:
    """The suffix of an input file name (``MEGRE`` or ``T2starw``)."""
    match = _INPUT_IMAGE_NAME.search(os.path.basename(path))
    return match.group(1) if match else "image"


def _field_strength(root: Path, first_file: str, metadata: dict, *, command_line_t):
    """(tesla, source) from the sidecar and the command line; the command line wins."""
    relative = _relative(root, first_file)
    sidecar_value = metadata.get("MagneticFieldStrength")
    sidecar_t = None
    if sidecar_value is not None:
        sidecar_t = _tesla(sidecar_value)
        if sidecar_t is None and command_line_t is None:
            raise BadDataError(
                f"{relative} has MagneticFieldStrength {sidecar_value!r}, which is not a field "
                "strength in tesla: fix the sidecar or pass --field-strength (e.g. 3)."
            )
    if command_line_t is None:
        if sidecar_t is None:
            raise BadDataError(
                f"{relative} has no MagneticFieldStrength in its sidecar: pass the scanner's "
                "field strength in tesla with --field-strength (e.g. --field-strength 3)."
            )
        return sidecar_t, "sidecar"
    if sidecar_t is not None and math.isclose(sidecar_t, command_line_t, rel_tol=1e-3):
        return sidecar_t, "sidecar"
    if sidecar_value is not None:
        LOGGER.warning(
            "%s: MagneticFieldStrength %r in the sidecar differs from --field-strength %g; "
            "using %g T from the command line.",
            relative, sidecar_value, command_line_t, command_line_t,
        )
    return command_line_t, "command line"


def _tesla(value) -> float | None:
    """A field strength in tesla from a number or a string such as '3', '2.89' or '7T'."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        tesla = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:T|tesla)?\s*", str(value), re.IGNORECASE)
        if match is None:
            return None
        tesla = float(match.group(1))
    return tesla if 0 < tesla <= 30 else None


def _checked_command_line_field_strength(value) -> float:
    tesla = _tesla(value)
    if tesla is None:
        raise UsageError(
            f"--field-strength {value!r} is not a field strength in tesla: give a number "
            "between 0 and 30, e.g. 3."
        )
    return tesla


# ----------------------------------------------------------------------------------- helpers


def _check_sidecars(root: Path, subjects, sessions) -> None:
    """Parse every JSON sidecar the runs may inherit from (the dataset's top level, the
    participant and session folders, their ``anat`` folders; selected ones only, hidden files
    left out as pybids leaves them) before pybids does, so that a broken one is named."""
    def wanted(folder, prefix, labels):
        return folder.is_dir() and (labels is None or folder.name[len(prefix):] in labels)

    folders = [root]
    for subject in sorted(root.glob("sub-*")):
        if wanted(subject, "sub-", subjects):
            folders += [subject, subject / "anat"]
            for session in sorted(subject.glob("ses-*")):
                if wanted(session, "ses-", sessions):
                    folders += [session, session / "anat"]
    paths = [path for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.json"))
             if not path.name.startswith(".") and path.name != "dataset_description.json"]
    for path in paths:
        relative = _relative(root, path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BadDataError(f"{relative} is not valid JSON ({error.msg} at line "
                               f"{error.lineno}, column {error.colno}): fix the sidecar.") from None
        except (UnicodeDecodeError, OSError) as error:
            raise BadDataError(f"{relative} cannot be read as a JSON sidecar: {error}") from None
        if not isinstance(content, dict):
            raise BadDataError(f"{relative} holds a JSON {type(content).__name__}; a BIDS "
                               'sidecar must hold a JSON object ({"EchoTime": ..., ...}).')


def _check_image_complete(path, image, relative) -> None:
    """Refuse an image file shorter than its header says (a truncated copy or download).

    Cheap: the size of an uncompressed file, or the size a gzip stream records in its last
    four bytes; only when that disagrees is the stream read through to confirm."""
    expected = (int(image.header.get_data_offset())
                + int(np.prod(image.shape)) * image.get_data_dtype().itemsize)
    path = os.fspath(path)
    if not path.endswith(".gz"):
        size = os.path.getsize(path)
        if size < expected:
            raise BadDataError(f"{relative} is truncated: it holds {size} bytes but its header "
                               f"describes {expected}. Copy or convert the file again.")
        return
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        recorded = int.from_bytes(stream.read(4), "little")
    if recorded == expected % 2**32:
        return
    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise BadDataError(f"{relative} is truncated or damaged ({error}): copy or convert the "
                           "file again.") from None
    if size < expected:
        raise BadDataError(f"{relative} is truncated: it decompresses to {size} bytes but its "
                           f"header describes {expected}. Copy or convert the file again.")


def _load_header(path, relative) -> nib.Nifti1Image:
    try:
        return nib.load(os.fspath(path))
    except Exception as error:  # nibabel raises several types for unreadable files
        raise BadDataError(f"{relative} is not a readable NIfTI image: {error}") from None


def _label_or_none(value) -> str | None:
    return None if value is None else str(value)


def _path_of(bids_file) -> str | None:
    return None if bids_file is None else os.path.normpath(bids_file.path)


def _relative(root: Path, path) -> str:
    return Path(os.path.relpath(os.fspath(path), root)).as_posix()


def _sidecar_name(relative: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", ".json", relative)
