"""Builders of tiny BIDS datasets for the discovery and loading tests.

Each builder writes real NIfTI files (8x8x6 voxels by default) and JSON sidecars into a
temporary folder, so tests exercise pybids and nibabel exactly as a user's dataset would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (8, 8, 6)
VOXEL_SIZE_MM = (2.0, 2.0, 2.5)
ECHO_TIMES_S = (0.004, 0.008, 0.012)
SCANNER_METADATA = {
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "Prisma",
    "MagneticFieldStrength": 3,
    "RepetitionTime": 0.03,
    "FlipAngle": 15,
}


def affine_for(voxel_size=VOXEL_SIZE_MM) -> np.ndarray:
    """A plain axial affine with the given voxel size."""
    affine = np.diag([*voxel_size, 1.0])
    affine[:3, 3] = -10.0
    return affine


def write_image(path, data, *, affine=None) -> Path:
    """Save ``data`` as NIfTI at ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine_for() if affine is None else affine), path)
    return path


def write_json(path, content) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))
    return path


def sidecar_of(image_path) -> Path:
    """The JSON sidecar path of a ``.nii`` or ``.nii.gz`` image."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.name.split(".nii")[0] + ".json")


def make_bids_root(root, *, description=None) -> Path:
    """An empty BIDS dataset: the root folder with its ``dataset_description.json``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        root / "dataset_description.json",
        {"Name": "tiny", "BIDSVersion": "1.9.0"} if description is None else description,
    )
    return root


def part_data(part: str, echo_index: int, *, shape=SHAPE, seed=0) -> np.ndarray:
    """Plausible values of one part of one echo (float32)."""
    rng = np.random.default_rng(seed + echo_index)
    if part == "mag":
        return (100.0 * np.exp(-0.02 * echo_index) + rng.random(shape)).astype(np.float32)
    if part == "phase":
        return rng.uniform(-np.pi, np.pi, shape).astype(np.float32)
    return rng.normal(0.0, 10.0, shape).astype(np.float32)  # real or imag


def make_run(
    root,
    *,
    subject="01",
    session=None,
    acquisition=None,
    reconstruction=None,
    run=None,
    suffix="MEGRE",
    echo_times=ECHO_TIMES_S,
    parts=("mag", "phase"),
    extension=".nii.gz",
    metadata=None,
    phase_metadata=None,
    with_echo_entity=True,
    shape=SHAPE,
) -> dict:
    """Write one run (one 3-D file per echo and part, each with a sidecar).

    ``metadata`` goes into every sidecar (on top of :data:`SCANNER_METADATA` and the
    EchoTime), ``phase_metadata`` into the phase sidecars only (default ``Units: rad``).
    Returns ``{(echo_index, part): image path}``.
    """
    folder = Path(root) / f"sub-{subject}"
    prefix = f"sub-{subject}"
    if session is not None:
        folder /= f"ses-{session}"
        prefix += f"_ses-{session}"
    for key, value in (("acq", acquisition), ("rec", reconstruction), ("run", run)):
        if value is not None:
            prefix += f"_{key}-{value}"
    phase_metadata = {"Units": "rad"} if phase_metadata is None else phase_metadata

    written = {}
    for echo_index, echo_time in enumerate(echo_times, start=1):
        for part in parts:
            name = prefix
            if with_echo_entity:
                name += f"_echo-{echo_index}"
            if part is not None:
                name += f"_part-{part}"
            path = folder / "anat" / f"{name}_{suffix}{extension}"
            write_image(path, part_data(part or "mag", echo_index, shape=shape))
            sidecar = {**SCANNER_METADATA, "EchoTime": echo_time, **(metadata or {})}
            if part == "phase":
                sidecar.update(phase_metadata)
            write_json(sidecar_of(path), {k: v for k, v in sidecar.items() if v is not None})
            written[(echo_index, part)] = path
    return written


def tree_checksums(root) -> dict:
    """{relative path: sha256} of every file under ``root``, plus the folders (as None)."""
    root = Path(root)
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        )
        for path in sorted(root.rglob("*"))
    }
