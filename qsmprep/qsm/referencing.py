"""Susceptibility referencing.

The dipole kernel is zero at k = 0, so a susceptibility map is only defined up to a constant.
The 2024 QSM consensus (QSM Consensus Organization Committee, MRM 2024, doi:10.1002/mrm.30006)
asks to always name the reference region and to include the whole brain as a reference;
with another region (e.g. CSF), also report that region's mean relative to the whole brain.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadDataError


def reference_to_region_mean(susceptibility_ppm, region_mask, *, output_mask=None):
    """Subtract the mean susceptibility of a reference region (whole brain by default).

    Parameters
    ----------
    susceptibility_ppm : array_like, 3-D
        Unreferenced susceptibility (ppm).
    region_mask : array_like of bool, 3-D
        The reference region; pass the brain mask for whole-brain referencing.
    output_mask : array_like of bool, 3-D, optional
        Voxels kept in the output, 0 elsewhere. Defaults to ``region_mask``: pass the brain
        mask here whenever the region is smaller than the brain (e.g. CSF).

    Returns
    -------
    referenced_ppm : numpy.ndarray of float32
        ``susceptibility - reference_value`` inside ``output_mask``, 0 outside.
    reference_value_ppm : float
        The mean over the region that was subtracted (ppm).

    Raises
    ------
    BadDataError
        When the region is empty or its mean is not finite.
    """
    susceptibility_ppm = np.asarray(susceptibility_ppm, dtype=np.float32)
    region_mask = np.asarray(region_mask, dtype=bool)
    output_mask = region_mask if output_mask is None else np.asarray(output_mask, dtype=bool)
    if region_mask.shape != susceptibility_ppm.shape or output_mask.shape != region_mask.shape:
        raise ValueError(f"masks {region_mask.shape}, {output_mask.shape} do not match the "
                         f"susceptibility map {susceptibility_ppm.shape}")
    if not region_mask.any():
        raise BadDataError("the susceptibility reference region is empty")
    reference_value_ppm = float(np.mean(susceptibility_ppm[region_mask], dtype=np.float64))
    if not np.isfinite(reference_value_ppm):
        raise BadDataError("the susceptibility map has NaN/inf values in the reference region")
    referenced_ppm = np.where(output_mask, susceptibility_ppm - np.float32(reference_value_ppm),
                              np.float32(0.0)).astype(np.float32)
    return referenced_ppm, reference_value_ppm
