"""Reading and writing the NIfTI files that nipype nodes pass to each other.

Intermediate images are float32 (masks uint8), keep the input affine, and are written into the
node's working folder with deterministic names, so nipype can cache and resume.
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
    """Write ``array`` as ``dtype`` with ``affine`` (qform and sform, scanner space)."""
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, os.fspath(out_path))
    return os.path.abspath(out_path)


def save_like(array, reference_path, out_path, *, dtype=np.float32) -> str:
    """Write ``array`` with the affine of ``reference_path``; returns the absolute path."""
    return save_array(array, nib.load(os.fspath(reference_path)).affine, out_path, dtype=dtype)
