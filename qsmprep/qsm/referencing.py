"""Susceptibility referencing.

The dipole kernel is zero at k = 0, so a susceptibility map is only defined up to a constant.
The 2024 QSM consensus (QSM Consensus Organization Committee, MRM 2024, doi:10.1002/mrm.30006)
asks to always name the reference region and to include the whole brain as a reference;
with another region (e.g. CSF), also report that region's mean relative to the whole brain.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import BadDataError
from .masking import bounding_box, distance_to_background_mm, fill_enclosed_holes


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


def csf_reference_mask(r2star_hz, brain_mask, voxel_size, *, labels=None,
                       max_r2star_hz: float = 5.0, min_depth_mm: float = 12.0,
                       max_centre_distance_mm: float = 40.0, min_volume_ml: float = 1.0):
    """The lateral ventricles as a CSF reference region, found from the R2* map.

    CSF relaxes slowly (R2* of a few 1/s against 15-45 1/s for brain tissue at 3 T), so:

    1. candidates are brain-mask voxels with ``R2* < max_r2star_hz``, at least
       ``min_depth_mm`` from the edge of the brain mask: this drops the subarachnoid CSF and
       sulci that a brain mask holds near its surface, whose susceptibility is biased by the
       nearby background field and its removal;
    2. they are split into 6-connected components, and only those whose centre of mass lies
       within ``max_centre_distance_mm`` of the brain mask's centre of mass are kept;
    3. the two largest of these (left and right lateral ventricle, or both when they touch)
       are the reference, without any that is smaller than a tenth of the largest (slivers);
    4. enclosed holes (noisy R2* inside a ventricle) are filled.

    This is the automatic ventricular CSF reference of MEDI+0 (Liu Z et al., MRM
    2018;79:2795-2803: R2* < 5 1/s, connected near the brain centre); on reference regions
    see also Straub et al., MRM 2017;78:204-214. The 2024 QSM consensus (MRM 2024,
    doi:10.1002/mrm.30006) asks to report its mean +- SD relative to the whole brain as well,
    see :func:`reference_summary`.

    Parameters
    ----------
    r2star_hz : array_like, 3-D
        R2* map (1/s), e.g. from :func:`qsmprep.qsm.relaxometry.r2star_loglinear`.
    brain_mask : array_like of bool, 3-D
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    labels : array_like, 3-D, optional
        A ventricle prior in the same space (e.g. atlas ventricles warped to the subject, as a
        label map or a boolean mask): candidates are restricted to its non-zero voxels.
    max_r2star_hz : float
        CSF-like voxels have R2* below this (1/s).
    min_depth_mm : float
        Least distance (mm) from the edge of the brain mask.
    max_centre_distance_mm : float
        Greatest distance (mm) of a component's centre of mass from the brain's.
    min_volume_ml : float
        Smallest plausible volume (ml) of the result.

    Returns
    -------
    numpy.ndarray of bool
        The CSF reference region, inside the brain mask.

    Raises
    ------
    BadDataError
        When no plausible ventricle is found (then reference to the whole brain).
    """
    r2star_hz = np.asarray(r2star_hz, dtype=np.float32)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if r2star_hz.shape != brain_mask.shape or len(voxel_size) != 3:
        raise ValueError(f"the R2* map {r2star_hz.shape}, brain mask {brain_mask.shape} and "
                         f"voxel size {tuple(voxel_size)} do not match")
    if not brain_mask.any():
        raise BadDataError("the brain mask is empty: no CSF reference region can be found")
    voxel_ml = float(np.prod(voxel_size)) / 1000.0
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != brain_mask.shape:
            raise ValueError(f"labels {labels.shape} do not match the brain mask "
                             f"{brain_mask.shape}")

    # every candidate lies in the brain mask, so the search runs on its bounding box; the
    # components are numbered as on the whole array (in the order of their first voxel)
    box = bounding_box(brain_mask)
    box_corner = [axis_box.start for axis_box in box]
    brain_in_box = brain_mask[box]
    depth_mm = distance_to_background_mm(brain_in_box, voxel_size)
    candidates = brain_in_box & (depth_mm >= min_depth_mm) & (r2star_hz[box] < max_r2star_hz)
    if labels is not None:
        candidates &= labels[box] != 0

    components, count = ndimage.label(candidates)
    component_labels = np.arange(1, count + 1)
    sizes, centres = _component_sizes_and_centres(candidates, components, count,
                                                  origin=box_corner)
    voxel_size_mm = np.asarray(voxel_size, dtype=np.float64)
    brain_centre_mm = _centre_of_mass(brain_mask) * voxel_size_mm
    centres_mm = voxel_size_mm * centres
    central = np.linalg.norm(centres_mm - brain_centre_mm, axis=1) <= max_centre_distance_mm
    kept = component_labels[central][np.argsort(sizes[central])[::-1]][:2]  # largest first
    if kept.size:
        kept = kept[sizes[kept - 1] >= 0.1 * sizes[kept[0] - 1]]
    csf_mask = np.zeros_like(brain_mask)
    csf_mask[box] = fill_enclosed_holes(np.isin(components, kept)) & brain_in_box

    volume_ml = csf_mask.sum() * voxel_ml
    if volume_ml < min_volume_ml:
        raise BadDataError(
            f"no plausible lateral ventricle for the CSF reference: {volume_ml:.2f} ml of "
            f"voxels with R2* < {max_r2star_hz:g} 1/s lie >= {min_depth_mm:g} mm inside the "
            f"brain mask within {max_centre_distance_mm:g} mm of its centre (at least "
            f"{min_volume_ml:g} ml needed); check the R2* map or reference to the whole brain")
    return csf_mask


def _centre_of_mass(mask) -> np.ndarray:
    """Centre of mass (voxel indices) of a non-empty boolean ``mask``, the value of
    :func:`scipy.ndimage.center_of_mass`, from the number of mask voxels in each plane along
    each axis rather than from a coordinate grid of the whole array.

    The sums of coordinates are whole numbers, exact in integers as in floating point, so the
    one division gives the same value.
    """
    voxel_count = np.count_nonzero(mask)
    centre = []
    for axis in range(mask.ndim):
        other_axes = tuple(other for other in range(mask.ndim) if other != axis)
        voxels_per_plane = np.count_nonzero(mask, axis=other_axes)
        centre.append(np.dot(np.arange(mask.shape[axis]), voxels_per_plane) / voxel_count)
    return np.asarray(centre, dtype=np.float64)


def _component_sizes_and_centres(mask, components, count: int, *, origin=(0, 0, 0)):
    """Voxel counts and centres of mass (voxel indices) of the labelled components of a
    boolean ``mask``, ``components`` being its :func:`scipy.ndimage.label` map.

    One pass over the coordinates of the mask's voxels with :func:`numpy.bincount`, instead
    of one pass over the whole array per axis in :func:`scipy.ndimage.center_of_mass`; the
    values are the same (sums of whole numbers, then one division). When ``mask`` is a box
    cut from a larger array, ``origin`` is the index of the box's corner in it: the centres
    are then summed and returned as indices of the larger array, equal to those computed on
    the larger array.

    Returns
    -------
    sizes : numpy.ndarray of float64, shape (count,)
        The voxel count of components 1 to ``count``.
    centres : numpy.ndarray of float64, shape (count, 3)
        Their centres of mass.
    """
    coordinates = np.nonzero(mask)
    voxel_labels = components[coordinates]
    sizes = np.bincount(voxel_labels, minlength=count + 1)[1:].astype(np.float64)
    coordinate_sums = [np.bincount(voxel_labels, weights=axis_coordinates + axis_origin,
                                   minlength=count + 1)[1:]
                       for axis_coordinates, axis_origin in zip(coordinates, origin)]
    centres = np.stack(coordinate_sums, axis=-1) / sizes[:, np.newaxis]
    return sizes, centres


def reference_summary(susceptibility_ppm, brain_mask, csf_mask) -> dict:
    """Whole-brain and CSF statistics of a susceptibility map, for the report.

    The 2024 QSM consensus (MRM 2024, doi:10.1002/mrm.30006) asks to include the whole brain
    as a reference and, when another region (CSF) is used, to report its mean +- SD relative
    to the whole brain, whichever reference was applied. The statistics are taken on the map
    as given (any referencing shifts all means alike and leaves the SD and the CSF - brain
    difference unchanged).

    Parameters
    ----------
    susceptibility_ppm : array_like, 3-D
    brain_mask, csf_mask : array_like of bool, 3-D

    Returns
    -------
    dict
        ``whole_brain_mean_ppm``, ``csf_mean_ppm``, ``csf_sd_ppm`` (population SD),
        ``csf_mean_relative_to_whole_brain_ppm`` (CSF mean minus whole-brain mean), and
        ``brain_voxels``, ``csf_voxels`` (counts); plain Python floats and ints.

    Raises
    ------
    BadDataError
        When a mask is empty or the map is not finite in it.
    """
    susceptibility_ppm = np.asarray(susceptibility_ppm, dtype=np.float64)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    csf_mask = np.asarray(csf_mask, dtype=bool)
    if brain_mask.shape != susceptibility_ppm.shape or csf_mask.shape != brain_mask.shape:
        raise ValueError(f"masks {brain_mask.shape}, {csf_mask.shape} do not match the "
                         f"susceptibility map {susceptibility_ppm.shape}")
    if not brain_mask.any() or not csf_mask.any():
        raise BadDataError("the brain mask or the CSF mask is empty: no reference summary")
    brain_values, csf_values = susceptibility_ppm[brain_mask], susceptibility_ppm[csf_mask]
    if not (np.isfinite(brain_values).all() and np.isfinite(csf_values).all()):
        raise BadDataError("the susceptibility map has NaN/inf values in the brain or CSF mask")
    whole_brain_mean = float(brain_values.mean())
    csf_mean = float(csf_values.mean())
    return {
        "whole_brain_mean_ppm": whole_brain_mean,
        "csf_mean_ppm": csf_mean,
        "csf_sd_ppm": float(csf_values.std()),
        "csf_mean_relative_to_whole_brain_ppm": csf_mean - whole_brain_mean,
        "brain_voxels": int(brain_mask.sum()),
        "csf_voxels": int(csf_mask.sum()),
    }
