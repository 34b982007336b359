"""V-SHARP background removal on a spherical brain with outside and inside sources."""

import numpy as np
import pytest

from qsmprep.qsm.background import default_radii_mm, resharp, vsharp
from qsmprep.qsm.dipole import forward_field_ppm, ppm_to_hz

VOXEL = (1.0, 1.0, 1.0)


def _sphere(shape, centre, radius):
    grids = np.indices(shape).astype(np.float32)
    return sum((g - (n - 1) / 2 - c) ** 2 for g, n, c in zip(grids, shape, centre)) <= radius**2


@pytest.fixture(scope="module")
def fields():
    shape = (56, 56, 56)
    brain = _sphere(shape, (0, 0, 0), 20)
    outside = (-9.0 * _sphere(shape, (0, 0, 25), 3.5)  # air-like, 1.5 mm from the brain
               + 4.0 * _sphere(shape, (24, 0, -8), 3))
    inside = (0.2 * _sphere(shape, (5, 3, 2), 4) - 0.1 * _sphere(shape, (-7, -4, -3), 3)
              + 0.15 * _sphere(shape, (0, 8, -6), 3))
    x, _, z = np.indices(shape)
    shim_hz = (0.5 * x + 0.2 * z).astype(np.float32)  # a linear (harmonic) field
    background_hz = ppm_to_hz(forward_field_ppm(outside, VOXEL), 3.0) + shim_hz
    local_hz = ppm_to_hz(forward_field_ppm(inside, VOXEL), 3.0)
    return brain, background_hz, local_hz


def test_background_from_outside_sources_removed(fields):
    brain, background_hz, _ = fields
    result = vsharp(background_hz, brain, VOXEL)
    valid = result.mask
    # valid where the smallest sphere (2 voxels) fits: a ball of radius 18 of the 20 voxels
    assert abs(valid.sum() / brain.sum() - (18 / 20) ** 3) < 0.04
    assert not np.any(valid & ~brain)
    assert np.all(result.local_field_hz[~valid] == 0)
    residual_rms = np.sqrt(np.mean(result.local_field_hz[valid] ** 2))
    assert residual_rms < 0.03 * background_hz[valid].std()


def test_local_field_from_inside_sources_survives(fields):
    brain, background_hz, local_hz = fields
    result = vsharp(background_hz + local_hz, brain, VOXEL)
    valid = result.mask
    assert np.corrcoef(result.local_field_hz[valid], local_hz[valid])[0, 1] > 0.93
    deep = valid & _sphere(brain.shape, (0, 0, 0), 12)  # where the 8+ mm spheres fit
    assert np.corrcoef(result.local_field_hz[deep], local_hz[deep])[0, 1] > 0.97


def test_anisotropic_voxels_and_radius_selection():
    voxel_size = (1.0, 1.0, 2.0)
    assert default_radii_mm(VOXEL) == tuple(float(r) for r in range(12, 1, -1))
    assert default_radii_mm(voxel_size) == tuple(float(r) for r in range(24, 3, -2))
    assert default_radii_mm((2.0, 2.0, 2.5)) == tuple(30.0 - 2.5 * k for k in range(11))
    assert default_radii_mm((1.0, 1.0, 1.0), largest_mm=8, smallest_mm=3) == (8, 7, 6, 5, 4, 3)
    shape = (40, 40, 20)
    x, y, z = np.indices(shape)
    brain = ((x - 19.5) ** 2 + (y - 19.5) ** 2 + (2 * (z - 9.5)) ** 2) <= 16.0**2
    linear_hz = (0.3 * x - 0.2 * y + 0.4 * z).astype(np.float32)
    result = vsharp(linear_hz, brain, voxel_size, radii_mm=(6, 4, 2, 1))  # 1 mm is skipped
    assert np.abs(result.local_field_hz[result.mask]).max() < 1e-3
    assert result.mask.sum() > 0
    with pytest.raises(ValueError, match="voxel size"):
        vsharp(linear_hz, brain, voxel_size, radii_mm=(1.0, 1.5))


def test_resharp_removes_background_and_keeps_local_field(fields):
    brain, background_hz, local_hz = fields
    background_only = resharp(background_hz, brain, VOXEL)
    valid = background_only.mask
    assert abs(valid.sum() / brain.sum() - (18 / 20) ** 3) < 0.04  # eroded by 2 voxels
    residual_rms = np.sqrt(np.mean(background_only.local_field_hz[valid] ** 2))
    assert residual_rms < 0.03 * background_hz[valid].std()
    both = resharp(background_hz + local_hz, brain, VOXEL)
    assert np.corrcoef(both.local_field_hz[valid], local_hz[valid])[0, 1] > 0.95


def test_resharp_is_closer_to_the_local_field_than_vsharp_at_the_same_erosion(fields):
    brain, background_hz, local_hz = fields
    via_resharp = resharp(background_hz + local_hz, brain, VOXEL, radius_mm=3)
    via_vsharp = vsharp(background_hz + local_hz, brain, VOXEL, radii_mm=range(12, 2, -1))
    valid = via_resharp.mask & via_vsharp.mask

    def error(result):
        difference = (result.local_field_hz - local_hz)[valid]
        return np.linalg.norm(difference - difference.mean())

    assert error(via_resharp) < error(via_vsharp)
