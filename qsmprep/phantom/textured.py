"""Texture that is not piecewise constant, added to a head phantom's susceptibility.

The phantoms of :mod:`qsmprep.phantom.head` give each region one value, where total
variation regularisation is at its best. Real brains are not like that: the in-vivo COSMOS
map of the 2016 QSM challenge (Langkammer et al., MRM 2018;79:1661-1673) shows fine
grey/white contrast, iron gradients inside nuclei, a dense tree of veins, fibre bundles whose
susceptibility differs from their neighbours, and small strong sources (microbleeds,
calcifications). :func:`add_texture` paints these from seeded random processes that owe
nothing to qsmprep's atlas or its tissue priors:

- a multi-scale (1/f-like) random field, correlation lengths 1.5, 3 and 6 mm, of
  ``texture_sd_ppm`` inside grey and white matter and twice that inside deep grey nuclei,
  whose mean stays the phantom's (so region means are unchanged on average);
- intra-nuclear gradients: a linear ramp of +-``nucleus_gradient_ppm`` along a random
  direction in each deep grey nucleus;
- a vessel tree: random-walk tubes of 0.5-1 mm radius from the cortex inwards, at the
  venous susceptibility;
- fibre bundles: tubes of 2-3 mm radius through the white matter at -0.02 to -0.06 ppm
  relative to it;
- microbleed-like spheres (+0.6 to +1.2 ppm, 1-1.5 mm) and calcification-like spheres
  (-0.3 to -0.5 ppm, 1-2 mm), a few of each in the parenchyma.

The magnitude and R2* of the phantom are left as they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .head import VEIN_SUSCEPTIBILITY_PPM, HeadPhantom

#: Regions that get the strong texture and the intra-nuclear gradients.
DEEP_GREY_REGIONS = ("caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus",
                     "substantia_nigra", "subthalamic_nucleus", "dentate")


def multiscale_texture(shape, voxel_size, *, rng, scales_mm=(1.5, 3.0, 6.0)) -> np.ndarray:
    """Zero-mean, unit-SD random field summing Gaussian-filtered white noise at
    ``scales_mm``, each scale weighted by its length (a 1/f-like spectrum), float32."""
    total = np.zeros(shape, np.float32)
    for scale in scales_mm:
        noise = rng.standard_normal(shape, dtype=np.float32)
        smooth = ndimage.gaussian_filter(noise, [scale / h for h in voxel_size], mode="wrap")
        total += np.float32(scale) * smooth / (smooth.std() + 1e-12)
    return ((total - total.mean()) / (total.std() + 1e-12)).astype(np.float32)


def _tube(shape, voxel_size, points_mm, radius_mm) -> np.ndarray:
    """Voxels within ``radius_mm`` of a polyline (points in mm, array axes)."""
    tube = np.zeros(shape, bool)
    for start, end in zip(points_mm[:-1], points_mm[1:]):
        length = np.linalg.norm(end - start)
        for fraction in np.linspace(0.0, 1.0, max(2, int(length / 0.5))):
            centre = start + fraction * (end - start)
            low = np.maximum(np.floor((centre - radius_mm) / voxel_size).astype(int), 0)
            high = np.minimum(np.ceil((centre + radius_mm) / voxel_size).astype(int) + 1, shape)
            if np.any(high <= low):
                continue
            axes = [np.arange(lo, hi) * h for lo, hi, h in zip(low, high, voxel_size)]
            x, y, z = np.meshgrid(*axes, indexing="ij")
            near = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
            tube[low[0]:high[0], low[1]:high[1], low[2]:high[2]] |= near <= radius_mm**2
    return tube


def _random_walk(start_mm, *, rng, steps, step_mm, inside) -> np.ndarray:
    """A smooth random walk that stays where ``inside(point)`` holds."""
    points = [np.asarray(start_mm, float)]
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    for _ in range(steps):
        direction = direction + 0.5 * rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        point = points[-1] + step_mm * direction
        if not inside(point):
            break
        points.append(point)
    return np.asarray(points)


def add_texture(phantom: HeadPhantom, *, seed: int = 0, texture_sd_ppm: float = 0.015,
                nucleus_gradient_ppm: float = 0.03, vessels: int = 40, bundles: int = 8,
                bleeds: int = 4, calcifications: int = 4) -> HeadPhantom:
    """A copy of ``phantom`` whose brain susceptibility carries real-brain-like texture (see
    the module docstring); everything else is unchanged.

    Parameters
    ----------
    phantom : HeadPhantom
    seed : int
        Seed of every random choice.
    texture_sd_ppm : float
        SD of the multi-scale texture in grey and white matter (twice in deep grey nuclei).
    nucleus_gradient_ppm : float
        Half-amplitude of the linear ramp across each deep grey nucleus.
    vessels, bundles, bleeds, calcifications : int
        How many of each to draw.

    Returns
    -------
    HeadPhantom
    """
    rng = np.random.default_rng(seed)
    shape, voxel_size = phantom.shape, np.asarray(phantom.voxel_size, float)
    chi = phantom.susceptibility_ppm.astype(np.float32).copy()
    brain = phantom.brain_mask
    names = phantom.label_names
    deep = np.zeros(shape, bool)
    for index, name in names.items():
        if any(name.startswith(region) for region in DEEP_GREY_REGIONS):
            region = phantom.labels == index
            deep |= region
            coordinates = np.argwhere(region) * voxel_size
            if len(coordinates) > 1:
                direction = rng.standard_normal(3)
                direction /= np.linalg.norm(direction)
                along = coordinates @ direction
                span = np.ptp(along) or 1.0
                ramp = (along - along.mean()) / (span / 2) * nucleus_gradient_ppm
                chi[tuple(np.argwhere(region).T)] += ramp.astype(np.float32)
    parenchyma = brain & np.isin(phantom.labels, [
        index for index, name in names.items()
        if index and not any(word in name for word in ("csf", "ventricle", "vein"))])
    texture = multiscale_texture(shape, tuple(voxel_size), rng=rng)
    amplitude = np.where(deep, 2 * texture_sd_ppm, texture_sd_ppm).astype(np.float32)
    chi[parenchyma] += (texture * amplitude)[parenchyma]

    def inside(point):
        index = np.round(point / voxel_size).astype(int)
        return bool(np.all(index >= 0) and np.all(index < shape) and parenchyma[tuple(index)])

    surface = np.argwhere(parenchyma & ~ndimage.binary_erosion(parenchyma, iterations=2))
    white = np.argwhere(parenchyma & ~deep & ndimage.binary_erosion(parenchyma, iterations=4))
    for _ in range(vessels if len(surface) else 0):
        start = surface[rng.integers(len(surface))] * voxel_size
        path = _random_walk(start, rng=rng, steps=30, step_mm=2.0, inside=inside)
        tube = _tube(shape, voxel_size, path, rng.uniform(0.5, 1.0)) & parenchyma
        chi[tube] = VEIN_SUSCEPTIBILITY_PPM
    for _ in range(bundles if len(white) else 0):
        start = white[rng.integers(len(white))] * voxel_size
        path = _random_walk(start, rng=rng, steps=20, step_mm=3.0, inside=inside)
        tube = _tube(shape, voxel_size, path, rng.uniform(2.0, 3.0)) & parenchyma & ~deep
        chi[tube] -= np.float32(rng.uniform(0.02, 0.06))
    spots = [(bleeds, (0.6, 1.2), (1.0, 1.5)), (calcifications, (-0.5, -0.3), (1.0, 2.0))]
    inner = np.argwhere(ndimage.binary_erosion(parenchyma, iterations=3))
    for count, values, radii in spots:
        for _ in range(count if len(inner) else 0):
            point = inner[rng.integers(len(inner))] * voxel_size
            sphere = _tube(shape, voxel_size, np.stack([point, point]), rng.uniform(*radii))
            chi[sphere & parenchyma] = np.float32(rng.uniform(*values))
    return dataclasses.replace(phantom, susceptibility_ppm=chi)
