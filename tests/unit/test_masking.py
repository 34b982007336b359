"""Brain masking and mm-sized morphology on synthetic heads."""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.errors import BadDataError
from qsmprep.qsm import masking


def _distance_mm(shape, voxel_size, centre_mm=(0.0, 0.0, 0.0)):
    axes = [(np.arange(n) - (n - 1) / 2) * h - c for n, h, c in zip(shape, voxel_size, centre_mm)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (1.0, 1.0, 1.5)])
def test_brain_separated_from_scalp_shell(voxel_size):
    shape = tuple(int(64 / h) for h in voxel_size)
    distance = _distance_mm(shape, voxel_size)
    brain = distance <= 18.0
    scalp = (distance >= 24.0) & (distance <= 28.0)  # 6 mm dark gap between them
    rng = np.random.default_rng(0)
    magnitude = 1.0 * brain + 1.3 * scalp + 0.4 * (distance <= 6.0) * brain  # bright centre
    magnitude = np.abs(magnitude + 0.05 * rng.standard_normal(shape)
                       + 1j * 0.05 * rng.standard_normal(shape)).astype(np.float32)
    mask = masking.magnitude_brain_mask(magnitude, voxel_size)
    assert _dice(mask, brain) > 0.95
    assert not mask[scalp].any()


def test_explicit_threshold_fraction():
    distance = _distance_mm((48, 48, 48), (1.0, 1.0, 1.0))
    magnitude = np.where(distance <= 15.0, 1.0, 0.02).astype(np.float32)
    mask = masking.magnitude_brain_mask(magnitude, (1, 1, 1), threshold=0.5)
    assert _dice(mask, distance <= 15.0) > 0.97
    with pytest.raises(BadDataError):
        masking.magnitude_brain_mask(magnitude, (1, 1, 1), threshold=5.0)


def test_holes_filled_and_thin_bridge_cut():
    distance = _distance_mm((48, 48, 48), (1.0, 1.0, 1.0))
    brain = distance <= 14.0
    ventricle = distance <= 4.0  # dark inside the brain
    blob = _distance_mm((48, 48, 48), (1.0, 1.0, 1.0), centre_mm=(0.0, 0.0, 19.5)) <= 3.0
    bridge = np.zeros_like(brain)
    bridge[23:25, 23:25, 30:45] = True  # 2 mm wide bridge to an eye-like blob
    magnitude = (1.0 * (brain & ~ventricle) + 0.05 * ventricle + 1.0 * (blob | bridge)
                 + 0.01).astype(np.float32)
    mask = masking.magnitude_brain_mask(magnitude, (1, 1, 1))
    assert mask[ventricle].all()
    assert not mask[blob].any()
    assert _dice(mask, brain) > 0.95


@pytest.mark.parametrize("image", [np.zeros((16, 16, 16)), np.full((16, 16, 16), 3.0)])
def test_empty_or_constant_image_is_bad_data(image):
    with pytest.raises(BadDataError, match="zero or constant"):
        masking.magnitude_brain_mask(image, (1, 1, 1))


def test_erosion_radius_in_mm_on_anisotropic_grid():
    voxel_size = (1.0, 1.0, 2.0)
    distance = _distance_mm((48, 48, 24), voxel_size)
    sphere = distance <= 20.0
    eroded = masking.erode_mask(sphere, 5.0, voxel_size)
    assert eroded[distance <= 14.0].all()
    assert not eroded[distance > 15.5].any()


def test_erosion_matches_binary_erosion_with_ball():
    rng = np.random.default_rng(1)
    blobs = ndimage.gaussian_filter(rng.standard_normal((30, 28, 20)), 2.0) > 0
    voxel_size = (0.9, 1.1, 1.7)
    for radius in (1.0, 2.5, 3.4):
        expected = ndimage.binary_erosion(blobs, masking.ball(radius, voxel_size))
        assert np.array_equal(masking.erode_mask(blobs, radius, voxel_size), expected)
        expected = ndimage.binary_dilation(blobs, masking.ball(radius, voxel_size))
        assert np.array_equal(masking.dilate_mask(blobs, radius, voxel_size), expected)


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(2)
    dark, bright = rng.normal(1.0, 0.1, 5000), rng.normal(3.0, 0.2, 2000)
    level = masking.otsu_threshold(np.concatenate([dark, bright]))
    assert (dark < level).mean() > 0.99 and (bright > level).mean() > 0.99
