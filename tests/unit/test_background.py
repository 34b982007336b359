"""Background field removal (V-SHARP, RESHARP, PDF, LBV) on a spherical brain with outside
and inside sources."""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.errors import BadDataError
from qsmprep.qsm import background
from qsmprep.qsm.background import (PDF_PEEL_VOXELS, default_peel_voxels, default_radii_mm, lbv,
                                    pdf, resharp, vsharp)
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
    assert default_radii_mm(VOXEL) == tuple(float(r) for r in range(24, 1, -2))
    assert default_radii_mm(voxel_size) == tuple(float(r) for r in range(24, 3, -2))
    assert default_radii_mm((2.0, 2.0, 2.5)) == tuple(30.0 - 2.5 * k for k in range(11))
    assert default_radii_mm((0.5, 0.5, 0.5)) == tuple(24.0 - 2.0 * k for k in range(12))
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


def _residual_fraction(result, background_hz):
    """RMS of what is left of a pure background field, over its SD, in the result's mask."""
    valid = result.mask
    return np.sqrt(np.mean(result.local_field_hz[valid] ** 2)) / background_hz[valid].std()


def _check_output(result, brain):
    assert result.local_field_hz.dtype == np.float32
    assert result.mask.dtype == bool and result.mask.shape == brain.shape
    assert not np.any(result.mask & ~brain)
    assert np.all(result.local_field_hz[~result.mask] == 0)


@pytest.mark.parametrize("method", ["pdf", "lbv"])
def test_pdf_and_lbv_remove_background_and_keep_local_field(fields, method):
    brain, background_hz, local_hz = fields
    if method == "pdf":
        run = lambda field: pdf(field, brain, VOXEL, (0.0, 0.0, 1.0))  # noqa: E731
    else:
        run = lambda field: lbv(field, brain, VOXEL)  # noqa: E731
    background_only = run(background_hz)
    _check_output(background_only, brain)
    # PDF leaves out the rim voxels whose field departs from the field inside (here the
    # steepest, next to the air-like sphere: a few % of the rim); LBV peels 2 mm and also
    # drops the boundary layer on which it imposes the total field
    if method == "pdf":
        left_out = brain & ~background_only.mask
        rim = brain & ~ndimage.binary_erosion(brain)
        assert not np.any(left_out & ~rim) and left_out.sum() < 0.05 * rim.sum()
        assert np.array_equal(left_out, background.rim_outliers(background_hz, brain))
    else:
        assert np.array_equal(background_only.mask, ndimage.binary_erosion(brain, iterations=3))
    assert _residual_fraction(background_only, background_hz) < 0.03
    both = run(background_hz + local_hz)
    _check_output(both, brain)
    valid = both.mask
    assert np.corrcoef(both.local_field_hz[valid], local_hz[valid])[0, 1] > 0.9


def test_rim_outliers_are_the_partial_volume_voxels_of_the_outer_layer(fields):
    """Rim voxels given the field of skull or air (+-150 Hz) are found, and only they: the
    smooth field of the rest of the rim, and every deeper voxel, are kept, even a deep
    voxel as far off; PDF leaves them out of its fit and removes the background as if they
    were not there."""
    brain = fields[0]
    rim = brain & ~ndimage.binary_erosion(brain)
    x, y, z = np.indices(brain.shape)
    background_hz = (0.5 * x + 0.2 * z + 0.01 * (x**2 - y**2)).astype(np.float32)  # harmonic
    rng = np.random.default_rng(4)
    field = background_hz + rng.normal(0, 0.5, brain.shape).astype(np.float32)
    spoiled = np.zeros_like(brain)
    spoiled.flat[np.flatnonzero(rim)[::40]] = True
    spoiled_field = np.where(spoiled, field + rng.choice([-150.0, 150.0], brain.shape), field)
    deep = np.unravel_index(np.flatnonzero(ndimage.binary_erosion(brain, iterations=4))[0],
                            brain.shape)
    spoiled_field[deep] += 150.0
    outliers = background.rim_outliers(spoiled_field, brain)
    assert np.array_equal(outliers, spoiled)
    assert not background.rim_outliers(field, brain).any()
    result = pdf(spoiled_field.astype(np.float32), brain, VOXEL, (0.0, 0.0, 1.0))
    assert np.array_equal(result.mask, brain & ~spoiled)
    peeled = pdf(spoiled_field.astype(np.float32), brain, VOXEL, (0.0, 0.0, 1.0),
                 rim_limit=None)
    assert peeled.mask.sum() == brain.sum()
    # the same fit as on a mask that never held the spoiled voxels
    without = pdf(spoiled_field.astype(np.float32), brain & ~spoiled, VOXEL, (0.0, 0.0, 1.0),
                  rim_limit=None)
    assert np.allclose(result.local_field_hz, without.local_field_hz, atol=1e-4)
    elsewhere = result.mask.copy()
    elsewhere[deep] = False
    assert 2 * _residual_fraction(result._replace(mask=elsewhere), background_hz) < \
        _residual_fraction(peeled._replace(mask=elsewhere), background_hz)


def test_default_peel_is_about_two_millimetres_for_lbv_and_none_for_pdf():
    assert PDF_PEEL_VOXELS == 0
    assert default_peel_voxels((2.0, 2.0, 2.0)) == 1
    assert default_peel_voxels((1.0, 1.0, 1.0)) == 2
    assert default_peel_voxels((0.65, 0.65, 0.65)) == 3
    assert default_peel_voxels((3.0, 3.0, 3.0)) == 1


def test_pdf_follows_an_oblique_main_field():
    shape = (48, 48, 48)
    b0 = np.array([0.0, np.sqrt(0.5), np.sqrt(0.5)])  # 45 degrees from the z axis
    brain = _sphere(shape, (0, 0, 0), 16)
    outside = -9.0 * _sphere(shape, (0, 6, 20), 3.5) + 4.0 * _sphere(shape, (19, -5, -6), 3)
    inside = 0.2 * _sphere(shape, (4, 3, 2), 4) - 0.1 * _sphere(shape, (-6, -4, -3), 3)
    background_hz = ppm_to_hz(forward_field_ppm(outside, VOXEL, b0), 3.0)
    local_hz = ppm_to_hz(forward_field_ppm(inside, VOXEL, b0), 3.0)
    right = pdf(background_hz, brain, VOXEL, b0, pad_mm=8)  # all sources lie in the grid
    wrong = pdf(background_hz, brain, VOXEL, (0.0, 0.0, 1.0), pad_mm=8)
    _check_output(right, brain)
    assert _residual_fraction(right, background_hz) < 0.02
    # sources outside can mimic much of any harmonic field, but not all of it with the wrong
    # kernel: about 3x more background is left with the axial b0
    assert _residual_fraction(right, background_hz) < 0.5 * _residual_fraction(
        wrong, background_hz)
    both = pdf(background_hz + local_hz, brain, VOXEL, b0, pad_mm=8)
    valid = both.mask
    assert np.corrcoef(both.local_field_hz[valid], local_hz[valid])[0, 1] > 0.85  # 0.90


def test_pdf_only_needs_a_margin_around_the_mask(fields):
    """Sources live on the mask's bounding box plus ``pad_mm``: the same problem in a field of
    view four times larger, or with a larger margin, gives the same local field."""
    brain, background_hz, local_hz = fields
    total_hz = background_hz + local_hz
    reference = pdf(total_hz, brain, VOXEL, (0.0, 0.0, 1.0), pad_mm=12, tolerance=1e-6,
                    max_iter=500)
    padding = [(30, 30), (10, 20), (25, 5)]
    larger = pdf(np.pad(total_hz, padding), np.pad(brain, padding), VOXEL, (0.0, 0.0, 1.0),
                 pad_mm=12, tolerance=1e-6, max_iter=500)
    inner = tuple(slice(before, before + n) for (before, _), n in zip(padding, brain.shape))
    assert np.array_equal(larger.mask[inner], reference.mask)
    assert not larger.mask.sum() - reference.mask.sum()
    difference = larger.local_field_hz[inner] - reference.local_field_hz
    assert np.abs(difference).max() < 1e-3 * local_hz[brain].std()
    wider = pdf(total_hz, brain, VOXEL, (0.0, 0.0, 1.0), pad_mm=24, tolerance=1e-6,
                max_iter=500)
    difference = (wider.local_field_hz - reference.local_field_hz)[reference.mask]
    assert np.sqrt(np.mean(difference**2)) < 0.05 * local_hz[brain].std()


def test_lbv_ignores_added_harmonic_fields(fields):
    brain, background_hz, local_hz = fields
    x, y, z = np.indices(brain.shape)
    linear_hz = (40.0 + 3.0 * x - 2.0 * y + 1.5 * z).astype(np.float32)
    total_hz = background_hz + local_hz
    plain = lbv(total_hz, brain, VOXEL, tolerance=1e-7)
    shifted = lbv(total_hz + linear_hz, brain, VOXEL, tolerance=1e-7)
    assert np.array_equal(plain.mask, shifted.mask)
    difference = shifted.local_field_hz - plain.local_field_hz
    assert np.abs(difference).max() < 1e-3 * np.abs(linear_hz[brain]).max()
    assert np.abs(difference).max() < 0.02 * local_hz[plain.mask].std()


def test_lbv_weights_anisotropic_axes():
    voxel_size = (1.0, 1.5, 2.0)
    shape = (40, 28, 22)
    x, y, z = (np.indices(shape) - (np.array(shape) - 1)[:, None, None, None] / 2) * np.reshape(
        voxel_size, (3, 1, 1, 1))  # mm
    brain = (x / 17) ** 2 + (y / 18) ** 2 + (z / 19) ** 2 <= 1
    harmonic_hz = (0.02 * (x**2 - z**2) + 0.03 * x * y + 0.5 * z).astype(np.float32)
    result = lbv(harmonic_hz, brain, voxel_size, peel_voxels=0, tolerance=1e-8)
    assert result.mask.sum() > 0.5 * brain.sum()
    assert np.abs(result.local_field_hz).max() < 1e-3 * np.abs(harmonic_hz[brain]).max()


def test_pdf_and_lbv_reject_bad_input(fields):
    brain, background_hz, _ = fields
    with pytest.raises(ValueError, match="same shape"):
        pdf(background_hz[:-1], brain, VOXEL, (0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        lbv(background_hz, brain[:-1], VOXEL)
    tiny = np.zeros(brain.shape, dtype=bool)
    tiny[10:12, 10:12, 10:12] = True  # two voxels thick: nothing left after peeling
    with pytest.raises(BadDataError):
        lbv(background_hz, tiny, VOXEL)
    with pytest.raises(BadDataError):
        pdf(background_hz, np.zeros(brain.shape, dtype=bool), VOXEL, (0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="weight"):
        pdf(background_hz, brain, VOXEL, (0.0, 0.0, 1.0), weight=np.ones((3, 3, 3)))
