"""Cortical depth on analytic tissue layouts, and the superficial and deep halves of a region."""

import numpy as np
import pytest

from qsmprep.depth import cortical_depth, depth_half_labels
from qsmprep.regions import regional_statistics
from qsmprep.tissue import LABELS


def _slab(grey_voxels=4, shape=(12, 6, 6)):
    """Along x: 3 voxels of CSF, ``grey_voxels`` of grey matter, white matter to the end."""
    tissue = np.full(shape, LABELS["wm"], np.int16)
    tissue[:3] = LABELS["csf"]
    tissue[3:3 + grey_voxels] = LABELS["gm"]
    return tissue


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 2.0, 3.0)])
def test_depth_across_a_flat_cortex_is_linear(spacing):
    """Flat cortex of 4 voxels: the k-th grey voxel (1-based) is k voxels from the CSF and
    5 - k from the white matter, so its depth is k / 5, whatever the voxel size across it."""
    depth = cortical_depth(_slab(), spacing)
    profile = depth[3:7, 3, 3]
    np.testing.assert_allclose(profile, [0.2, 0.4, 0.6, 0.8], atol=1e-6)
    assert np.all(np.isnan(depth[:3])) and np.all(np.isnan(depth[7:]))


def test_depth_grows_towards_the_white_matter_of_a_sphere():
    """A grey shell around a white core, inside CSF: depth rises monotonically with the
    distance from the outer surface, on every ray."""
    grid = np.indices((41, 41, 41)) - 20
    radius = np.sqrt((grid ** 2).sum(axis=0))
    tissue = np.full(radius.shape, LABELS["csf"], np.int16)
    tissue[radius <= 15] = LABELS["gm"]
    tissue[radius <= 10] = LABELS["wm"]
    depth = cortical_depth(tissue, (1.0, 1.0, 1.0))
    ray = depth[20, 20, 31:36][::-1]  # from the outside (r = 15) inwards (r = 11)
    assert np.all(np.diff(ray) > 0), ray
    assert ray[0] < 0.3 and ray[-1] > 0.7


def test_depth_is_undefined_without_white_matter():
    tissue = np.full((5, 5, 5), LABELS["gm"], np.int16)
    tissue[0] = LABELS["csf"]
    assert np.all(np.isnan(cortical_depth(tissue, (1, 1, 1))))


def test_halves_split_a_region_and_measure_a_deep_rise():
    """A motor cortex of two parts on the left of a flat cortex: the halves hold two voxels of
    the depth each, and their means recover a susceptibility that rises only in the deep half."""
    tissue = _slab()
    depth = cortical_depth(tissue, (1.0, 1.0, 1.0))
    labels = np.zeros(tissue.shape, np.int16)
    labels[3:7, :3] = 21  # part one, left
    labels[3:7, 3:] = 23  # part two, left
    table = [{"index": 21, "name": "precentral_ba4", "hemisphere": "L"},
             {"index": 23, "name": "precentral_ba6", "hemisphere": "L"},
             {"index": 99, "name": "putamen", "hemisphere": "L"}]
    halves, rows = depth_half_labels(
        labels, table, depth, {"motor_cortex": ("precentral_ba4", "precentral_ba6"),
                               "missing": ("no_such_region",)})
    assert [(row["name"], row["hemisphere"]) for row in rows] == [
        ("motor_cortex_superficial", "L"), ("motor_cortex_deep", "L")]
    assert np.count_nonzero(halves == 1) == np.count_nonzero(halves == 2) == 2 * 6 * 6
    chi_ppm = np.zeros(tissue.shape)
    chi_ppm[3:5] = 0.015   # superficial half: healthy cortex
    chi_ppm[5:7] = 0.060   # deep half: iron-laden layers
    stats = regional_statistics(chi_ppm, halves, rows, mask=np.ones(tissue.shape, bool),
                                voxel_size=(1, 1, 1), offsets_ppm={"csf": 0.0})
    means = {(row["region"], row["hemisphere"]): row["mean_ppb"] for row in stats}
    assert means[("motor_cortex_superficial", "L")] == pytest.approx(15.0)
    assert means[("motor_cortex_deep", "L")] == pytest.approx(60.0)


def test_halves_need_one_grid():
    with pytest.raises(ValueError, match="one grid"):
        depth_half_labels(np.zeros((3, 3, 3)), [], np.zeros((3, 3, 4)), {})


def test_a_voxel_halfway_belongs_to_neither_half():
    """A cortex three voxels thick: depths 1/4, 1/2, 3/4; the middle one is in neither half."""
    tissue = _slab(grey_voxels=3)
    depth = cortical_depth(tissue, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(depth[3:6, 2, 2], [0.25, 0.5, 0.75])
    labels = np.where(tissue == LABELS["gm"], 21, 0)
    halves, rows = depth_half_labels(labels, [{"index": 21, "name": "precentral_ba4",
                                               "hemisphere": "R"}], depth,
                                     {"motor_cortex": ("precentral_ba4",)})
    assert list(halves[3:6, 2, 2]) == [1, 0, 2]
