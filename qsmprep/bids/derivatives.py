"""BIDS derivative names, BIDS URIs, sidecars and the writing of derivative files.

This module is the one place that knows how qsmprep derivatives are named. Every stage hands
over the source entities (as given by :attr:`qsmprep.bids.discovery.Run.entities`), a suffix
and optionally ``desc``/``space``; the name follows the BIDS entity order

``sub-<label>[_ses-<label>][_acq-<label>][_ce-<label>][_rec-<label>][_run-<index>]``
``[_echo-<index>][_part-<label>][_space-<label>][_desc-<label>]_<suffix><extension>``

inside ``sub-<label>/[ses-<label>/]anat/``. Files are written atomically (temporary file in
the same folder, then :func:`os.replace`) and deterministically (identical inputs give
byte-identical ``.nii.gz`` files and sidecars), so reruns are reproducible and an interrupted
run never leaves a partial file behind.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

#: Entities accepted in ``entities`` dictionaries, as (pybids name, BIDS key), in BIDS order.
ENTITY_ORDER = (
    ("subject", "sub"),
    ("session", "ses"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("run", "run"),
    ("echo", "echo"),
    ("part", "part"),
)

#: ``Units`` written into the sidecar of each suffix; None: no ``Units`` field.
SIDECAR_UNITS = {
    "Chimap": "ppm",
    "R2starmap": "1/s",
    "T2starmap": "s",
    "S0map": "arbitrary",
    "fieldmap": "Hz",
    "phase": "rad",
    "mask": None,
    "dseg": None,
}

#: Suffixes of label images, written as integers; every other image is written as float32.
LABEL_SUFFIXES = ("mask", "dseg")

#: NIfTI ``xform`` code of images in scanner space and in a template space.
_SCANNER_XFORM_CODE = 1
_TEMPLATE_XFORM_CODE = 4  # 'mni': every template qsmprep uses is an MNI space

_LABEL = re.compile(r"^[a-zA-Z0-9]+$")
_GZIP_LEVEL = 6

#: Version of the BIDS specification the derivatives follow.
BIDS_VERSION = "1.9.0"


def entity_prefix(entities: dict) -> str:
    """The ``sub-<label>[_ses-...][_acq-...]...`` part of a file name, in BIDS order.

    Parameters
    ----------
    entities : dict
        pybids entity names (``subject``, ``session``, ``acquisition``, ``ceagent``,
        ``reconstruction``, ``run``, ``echo``, ``part``) to labels; None values are skipped.
        ``subject`` is required.

    Raises
    ------
    ValueError
        Missing subject, an unknown entity, or a label that is not alphanumeric.
    """
    known = {name for name, _ in ENTITY_ORDER}
    unknown = sorted(set(entities) - known)
    if unknown:
        raise ValueError(
            f"Unknown BIDS entities {unknown} for a derivative name; "
            f"known entities: {sorted(known)}."
        )
    if entities.get("subject") is None:
        raise ValueError("A derivative name needs the 'subject' entity.")
    parts = []
    for name, key in ENTITY_ORDER:
        value = entities.get(name)
        if value is not None:
            parts.append(f"{key}-{_checked_label(value, name)}")
    return "_".join(parts)


def derivative_path(
    entities: dict,
    *,
    suffix: str,
    desc: str | None = None,
    space: str | None = None,
    extension: str = ".nii.gz",
    datatype: str = "anat",
    extra_entities: dict | None = None,
) -> str:
    """Relative path (POSIX separators) of a derivative within the output dataset.

    Examples
    --------
    >>> derivative_path({"subject": "01", "session": "1", "run": "2"}, suffix="Chimap")
    'sub-01/ses-1/anat/sub-01_ses-1_run-2_Chimap.nii.gz'
    >>> derivative_path({"subject": "01"}, suffix="mask", desc="brain", space="MNI152Lin")
    'sub-01/anat/sub-01_space-MNI152Lin_desc-brain_mask.nii.gz'
    >>> derivative_path({"subject": "01"}, suffix="xfm", extension=".h5",
    ...                 extra_entities={"from": "MEGRE", "to": "MNI152Lin", "mode": "image"})
    'sub-01/anat/sub-01_from-MEGRE_to-MNI152Lin_mode-image_xfm.h5'

    ``extra_entities`` (e.g. ``from``/``to``/``mode`` of transforms) follow ``desc`` in the
    order given. Figures (``datatype="figures"``) go to ``sub-<label>/figures/`` for every
    session, as in fMRIPrep's reports.
    """
    name = entity_prefix(entities)
    if space is not None:
        name += f"_space-{_checked_label(space, 'space')}"
    if desc is not None:
        name += f"_desc-{_checked_label(desc, 'desc')}"
    for key, value in (extra_entities or {}).items():
        name += f"_{_checked_label(key, 'entity')}-{_checked_label(value, key)}"
    name += f"_{_checked_label(suffix, 'suffix')}"
    if not re.fullmatch(r"(\.[a-zA-Z0-9]+)+", extension):
        raise ValueError(f"Invalid file extension {extension!r}: expected e.g. '.nii.gz'.")
    folders = [f"sub-{_checked_label(entities['subject'], 'subject')}"]
    if entities.get("session") is not None and datatype != "figures":
        folders.append(f"ses-{_checked_label(entities['session'], 'session')}")
    folders.append(_checked_label(datatype, "datatype"))
    return "/".join([*folders, name + extension])


def bids_uri(path, dataset_root, dataset_name: str = "raw") -> str:
    """BIDS URI of ``path``: ``bids:<dataset_name>:<path relative to dataset_root>``.

    Use ``dataset_name=''`` for a file of the current (derivative) dataset: ``bids::sub-01/...``.
    A relative ``path`` is taken as relative to ``dataset_root``.

    Raises
    ------
    ValueError
        ``path`` lies outside ``dataset_root``.
    """
    root = Path(dataset_root).absolute()
    target = Path(path)
    if not target.is_absolute():
        target = root / target
    relative = _relative_inside(target, root)
    return f"bids:{dataset_name}:{relative.as_posix()}"


def write_dataset_description(output_dir, *, bids_dir, version: str, code_url: str) -> Path:
    """Write ``dataset_description.json`` of the derivative dataset (idempotent).

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset (created if needed).
    bids_dir : path-like
        The raw dataset; recorded under ``DatasetLinks.raw`` so that ``bids:raw:`` URIs in
        ``Sources`` resolve.
    version, code_url : str
        qsmprep's version and source-code URL, recorded in ``GeneratedBy``.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    description = {
        "Name": "qsmprep: quantitative susceptibility mapping derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsmprep", "Version": str(version), "CodeURL": str(code_url)}],
        "DatasetLinks": {"raw": str(Path(bids_dir).absolute())},
    }
    target = Path(output_dir) / "dataset_description.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, sidecar_text(description).encode("utf-8"))
    return target


def write_derivative(
    source_image_path,
    output_dir,
    entities: dict,
    *,
    suffix: str,
    desc: str | None = None,
    space: str | None = None,
    metadata: dict | None,
    extension: str = ".nii.gz",
    extra_entities: dict | None = None,
    datatype: str = "anat",
) -> tuple[str, str | None]:
    """Write one derivative image and its JSON sidecar into the output dataset.

    A NIfTI image (``extension`` ``.nii.gz``) is re-encoded: float32 for maps, uint8 for label
    images (``mask``: voxels above 0.5 become 1; ``dseg``: rounded labels, uint16 when a label
    exceeds 255), the affine kept with qform and
    sform codes set (scanner, or MNI when ``space`` is given), gzip without timestamp, so that
    identical inputs give byte-identical files. ``Units`` is filled in from
    :data:`SIDECAR_UNITS` when the metadata lacks it. Any other file (a table, a transform, a
    figure) is copied as it is; its sidecar is written only when ``metadata`` is given.

    Parameters
    ----------
    source_image_path : path-like
        The image computed by a stage (any NIfTI nibabel reads).
    output_dir : path-like
        Root of the derivative dataset.
    entities : dict
        Source entities (see :func:`entity_prefix`).
    suffix, desc, space : str
        Naming, see :func:`derivative_path`.
    metadata : dict or None
        Sidecar content. Images other than masks/segmentations must state ``SkullStripped``
        (required by BIDS); ``Sources`` should hold BIDS URIs (:func:`bids_uri`).
    extension, extra_entities, datatype
        See :func:`derivative_path`.

    Returns
    -------
    tuple of str
        Absolute paths of the file and of the sidecar (None when no sidecar was written).

    Raises
    ------
    ValueError
        A name escaping ``output_dir``, missing ``SkullStripped``, ``Units`` contradicting
        the suffix, or labels that do not fit uint16.
    """
    relative_image = derivative_path(entities, suffix=suffix, desc=desc, space=space,
                                     extension=extension, extra_entities=extra_entities,
                                     datatype=datatype)
    output_root = Path(output_dir).absolute()
    image_path = output_root / relative_image
    _relative_inside(image_path, output_root)  # refuse names that escape the dataset
    sidecar_path = image_path.with_name(image_path.name[: -len(extension)] + ".json")

    if extension == ".nii.gz":
        sidecar = _complete_metadata(metadata or {}, suffix=suffix)
        image_bytes = _encode_image(nib.load(os.fspath(source_image_path)), suffix=suffix,
                                    space=space)
        content = gzip.compress(image_bytes, compresslevel=_GZIP_LEVEL, mtime=0)
    else:
        sidecar = metadata
        content = Path(source_image_path).read_bytes()

    image_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(image_path, content)
    if sidecar is None:
        return str(image_path), None
    write_atomically(sidecar_path, sidecar_text(sidecar).encode("utf-8"))
    return str(image_path), str(sidecar_path)


def merged_metadata(*parts: dict) -> dict:
    """Sidecar fields of ``parts`` merged left to right; nested objects are merged key by key
    (a ``QSMProcessing`` block found while running completes the one known beforehand)."""
    merged: dict = {}
    for part in parts:
        for key, value in (part or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merged_metadata(merged[key], value)
            else:
                merged[key] = value
    return merged


def sidecar_text(metadata: dict) -> str:
    """JSON text of a sidecar: sorted keys, indent 2, trailing newline; numpy values allowed."""
    return json.dumps(metadata, sort_keys=True, indent=2, default=_json_value) + "\n"


def _complete_metadata(metadata: dict, *, suffix: str) -> dict:
    sidecar = dict(metadata)
    expected_units = SIDECAR_UNITS.get(suffix)
    if expected_units is not None:
        given_units = sidecar.setdefault("Units", expected_units)
        if given_units != expected_units:
            raise ValueError(
                f"Sidecar Units {given_units!r} contradict the suffix {suffix!r}, "
                f"whose unit is {expected_units!r}."
            )
    if suffix not in LABEL_SUFFIXES and "SkullStripped" not in sidecar:
        raise ValueError(
            f"The sidecar of a {suffix!r} image must state 'SkullStripped' (BIDS requires it)."
        )
    return sidecar


def _encode_image(image, *, suffix: str, space: str | None) -> bytes:
    """Uncompressed NIfTI-1 bytes of ``image`` with qsmprep's data type and xform codes."""
    data = np.asanyarray(image.dataobj)
    if suffix == "mask":
        data = (data > 0.5).astype(np.uint8)
    elif suffix in LABEL_SUFFIXES:
        labels = np.rint(np.nan_to_num(np.asarray(data, dtype=np.float64)))
        if labels.size and (np.nanmin(labels) < 0 or np.nanmax(labels) > 65535):
            raise ValueError(f"Labels of a {suffix!r} image must lie in 0..65535.")
        data = labels.astype(np.uint8 if not labels.size or labels.max() <= 255 else np.uint16)
    else:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)

    affine = image.affine
    output = nib.Nifti1Image(data, affine)
    output.set_data_dtype(data.dtype)
    code = _SCANNER_XFORM_CODE if space is None else _TEMPLATE_XFORM_CODE
    output.set_qform(affine, code=code)
    output.set_sform(affine, code=code)
    output.header.set_xyzt_units(xyz="mm", t="sec")
    return output.to_bytes()


#: Name pattern of the temporary files :func:`write_atomically` writes before renaming them.
TEMPORARY_FILES = ".*.tmp"


def write_atomically(target, content: bytes | str) -> Path:
    """Write ``content`` (text is UTF-8 encoded) to ``target`` through a temporary file in
    the same folder (:data:`TEMPORARY_FILES`), renamed into place; creates the folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return target


def remove_temporary_files(folder) -> list[Path]:
    """Delete the temporary files of :func:`write_atomically` that a killed process left
    under ``folder``; returns those removed."""
    removed = []
    for path in Path(folder).rglob(TEMPORARY_FILES):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def report_entities(entities: dict) -> dict:
    """The entities a report names its run by, with their BIDS keys (``sub``, ``ses``,
    ``acq``, ``rec``, ``run``), from pybids entity names."""
    return {key: str(entities[name]) for name, key in ENTITY_ORDER
            if key in ("sub", "ses", "acq", "rec", "run") and entities.get(name) is not None}


def _relative_inside(path: Path, root: Path) -> Path:
    """``path`` relative to ``root``, refusing paths that leave ``root`` (``..``, absolute)."""
    normalised = Path(os.path.normpath(path))
    try:
        return normalised.relative_to(os.path.normpath(root))
    except ValueError:
        raise ValueError(f"Path {os.fspath(path)!r} lies outside {os.fspath(root)!r}.") from None


def _checked_label(value, entity: str) -> str:
    label = str(value)
    if not _LABEL.match(label):
        raise ValueError(
            f"Invalid BIDS {entity} label {label!r}: labels may only contain letters and digits."
        )
    return label


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Cannot write {type(value).__name__} {value!r} into a JSON sidecar.")
