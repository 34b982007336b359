"""Brain masking, phase-quality refinement and mm-sized morphology on synthetic heads."""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.errors import BadDataError
from qsmprep.phantom.head import make_head_phantom
from qsmprep.phantom.signal import simulate_multiecho_gre
from qsmprep.qsm import masking
from qsmprep.qsm.echo_fit import nonlinear_complex_fit


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


def test_a_crop_of_tissue_keeps_its_tissue():
    """A field of view with no background (a crop or slab): Otsu would split grey from white
    matter; the mask keeps everything but dark voids instead."""
    rng = np.random.default_rng(0)
    shape = (40, 40, 30)
    tissue = np.where(rng.random(shape) < 0.5, 1.0, 0.6)  # two tissue classes, no air
    tissue = ndimage.gaussian_filter(tissue, 2.0)
    magnitude = np.abs(tissue + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    assert masking.has_little_background(magnitude, (1.0, 1.0, 1.0))
    assert masking.magnitude_brain_mask(magnitude, (1.0, 1.0, 1.0)).mean() > 0.95
    head = make_head_phantom(shape=(40, 48, 40), voxel_size=(4.0, 4.0, 4.0), seed=1)
    whole = simulate_multiecho_gre(head, echo_times_s=(0.004,), field_strength_t=3.0,
                                   snr=100, seed=1, workers=1).magnitude[..., 0]
    assert not masking.has_little_background(whole, (4.0, 4.0, 4.0))


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
    depth_mm = masking.distance_to_background_mm(blobs, voxel_size)
    # small balls are applied directly, the 9 mm one (1700 voxels) through distance transforms
    assert masking.ball(9.0, voxel_size).sum() > masking.MAX_DIRECT_BALL_VOXELS
    for radius in (1.0, 2.5, 3.4, 9.0):
        expected = ndimage.binary_erosion(blobs, masking.ball(radius, voxel_size))
        assert np.array_equal(masking.erode_mask(blobs, radius, voxel_size), expected)
        assert np.array_equal(masking.erode_mask(blobs, radius, voxel_size, depth_mm=depth_mm),
                              expected)
        expected = ndimage.binary_dilation(blobs, masking.ball(radius, voxel_size))
        assert np.array_equal(masking.dilate_mask(blobs, radius, voxel_size), expected)


def test_box_restricted_distance_and_hole_filling_match_the_whole_array():
    rng = np.random.default_rng(7)
    blobs = ndimage.gaussian_filter(rng.standard_normal((40, 36, 30)), 2.0) > 0.05
    distance = _distance_mm(blobs.shape, (1.0, 1.0, 1.0))
    blobs |= (distance <= 9) & (distance > 5)  # a hollow ball: a hole to fill
    blobs[:, :, :3] = False  # not touching every face: the box is smaller than the array
    assert ndimage.binary_fill_holes(blobs).sum() > blobs.sum() + 300
    voxel_size = (0.9, 1.1, 1.7)
    whole = ndimage.distance_transform_edt(np.pad(blobs, 1), sampling=voxel_size)[1:-1, 1:-1,
                                                                                  1:-1]
    np.testing.assert_allclose(masking.distance_to_background_mm(blobs, voxel_size), whole)
    assert np.array_equal(masking.fill_enclosed_holes(blobs), ndimage.binary_fill_holes(blobs))
    box = masking.bounding_box(blobs)
    assert box[2].start == 3 and blobs[box].sum() == blobs.sum()
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert not masking.distance_to_background_mm(empty, voxel_size).any()
    assert not masking.fill_enclosed_holes(empty).any()


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(2)
    dark, bright = rng.normal(1.0, 0.1, 5000), rng.normal(3.0, 0.2, 2000)
    level = masking.otsu_threshold(np.concatenate([dark, bright]))
    assert (dark < level).mean() > 0.99 and (bright > level).mean() > 0.99


# --- phase-quality refinement ----------------------------------------------------------------

def test_residual_quality_scale():
    residual = np.full((10, 10, 10), 0.02, np.float32)
    residual[0, 0, :3] = [0.0, 0.1, 1.0]  # perfect, 5 medians, 50 medians
    residual[0, 1, 0] = np.nan
    mask = np.ones(residual.shape, bool)
    mask[9] = False
    quality = masking.residual_quality(residual, mask)
    assert quality.dtype == np.float32 and quality.min() >= 0 and quality.max() <= 1
    assert quality[0, 0, :3] == pytest.approx([1.0, 0.5, 0.0])
    assert quality[0, 1, 0] == 0 and np.all(quality[~mask] == 0)
    assert quality[5, 5, 5] == pytest.approx(0.9)
    exact = masking.residual_quality(np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool))
    assert np.all(exact == 1)  # two echoes: the fit is exact everywhere


def test_quality_mask_removes_corrupted_edge_patch():
    voxel_size, echo_times = (2.5, 2.5, 2.5), (0.004, 0.009, 0.014, 0.019)
    phantom = make_head_phantom(shape=(64, 76, 64), voxel_size=voxel_size)
    acquisition = simulate_multiecho_gre(phantom, echo_times_s=echo_times, snr=50, seed=0)
    brain = acquisition.brain_mask
    # random phase in a 25 mm ball centred on the right edge of the brain
    brain_voxels = np.argwhere(brain)
    edge = brain_voxels[np.argmax(brain_voxels[:, 0])]
    offsets_mm = (np.indices(brain.shape).transpose(1, 2, 3, 0) - edge) * np.asarray(voxel_size)
    patch = np.linalg.norm(offsets_mm, axis=-1) <= 25.0
    phase = acquisition.phase.copy()
    phase[patch] = np.random.default_rng(1).uniform(-np.pi, np.pi, phase[patch].shape)

    fit = nonlinear_complex_fit(acquisition.magnitude, phase, echo_times, brain)
    quality = masking.residual_quality(fit.residual, brain)
    refined = masking.quality_mask(brain, quality, voxel_size=voxel_size)
    assert not (refined & ~brain).any()
    assert (refined & patch).sum() < 0.05 * (brain & patch).sum()
    assert (brain & ~patch & ~refined).sum() < 0.01 * brain.sum()  # interior stays
    assert _dice(refined, brain) > 0.9


def test_quality_mask_fills_holes_and_never_grows():
    distance = _distance_mm((40, 40, 40), (1.0, 1.0, 1.0))
    brain = distance <= 15.0
    rng = np.random.default_rng(0)
    quality = np.where(rng.random(brain.shape) < 0.05, 0.1, 0.9).astype(np.float32)
    quality[distance <= 4.0] = np.nan  # a poor core (e.g. a vein or dark nucleus)
    quality[~brain] = 1.0  # good quality outside the brain mask is not taken
    refined = masking.quality_mask(brain, quality, voxel_size=(1.0, 1.0, 1.0))
    assert refined[distance <= 12.0].all()
    assert not (refined & ~brain).any()
    holey = masking.quality_mask(brain, quality, voxel_size=(1.0, 1.0, 1.0), fill_holes=False)
    assert not holey[distance <= 4.0].any()
    with pytest.raises(BadDataError, match="phase quality"):
        masking.quality_mask(brain, np.zeros(brain.shape), voxel_size=(1.0, 1.0, 1.0))
