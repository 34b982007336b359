"""Images on disk and their geometry: the one place that reads and writes the NIfTI files
nodes pass to each other, and turns an affine into voxel sizes and the main-field direction.

Intermediate images are float32 (masks uint8), keep the input affine (qform and sform,
scanner space) and go into the node's working folder under deterministic names, so nipype can
cache and resume. Derivatives are written by :func:`qsmprep.bids.derivatives.write_derivative`.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np


def load_array(path, dtype=np.float32) -> np.ndarray:
    """Image data as ``dtype`` (scaling applied)."""
    return np.asarray(nib.load(os.fspath(path)).get_fdata(dtype=np.float32), dtype=dtype)


def load_mask(path) -> np.ndarray:
    """A mask image as a boolean array."""
    return load_array(path) > 0.5


def save_array(array, affine, out_path, *, dtype=np.float32) -> str:
    """Write ``array`` as ``dtype`` with ``affine`` (qform and sform, scanner space); returns
    the absolute path."""
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, os.fspath(out_path))
    return os.path.abspath(out_path)


def save_like(array, reference_path, out_path, *, dtype=np.float32) -> str:
    """Write ``array`` with the affine of ``reference_path``; returns the absolute path."""
    return save_array(array, nib.load(os.fspath(reference_path)).affine, out_path, dtype=dtype)


def voxel_size_from_affine(affine) -> np.ndarray:
    """Voxel edge lengths (mm) along the array axes: the norms of the affine's columns."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def b0_direction_from_affine(affine, b0_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Main-field direction expressed in the voxel (array-axis) frame.

    The scanner field points along the world z axis (NIfTI scanner/RAS space). The affine's
    3x3 block maps voxel steps to world millimetres; normalising its columns gives the world
    direction of each array axis, and projecting B0 on them gives B0 in array coordinates.
    For an axial acquisition with an identity rotation this is (0, 0, 1).
    """
    rotation = np.asarray(affine, dtype=float)[:3, :3] / voxel_size_from_affine(affine)
    direction = rotation.T @ np.asarray(b0_world, dtype=float)
    return direction / np.linalg.norm(direction)
