"""Regional statistics: values, references, hemispheres, composites, asymmetry, TSV round trip."""

import math

import numpy as np
import pytest

from qsmprep.regions import (COLUMNS, asymmetry_index, csf_reference_from_labels,
                             read_regional_table, reference_offsets, regional_statistics,
                             region_index_sets, write_regional_table)

TABLE = [
    {"index": 1, "name": "putamen", "hemisphere": "L"},
    {"index": 2, "name": "putamen", "hemisphere": "R"},
    {"index": 3, "name": "globus_pallidus_externa", "hemisphere": "L"},
    {"index": 4, "name": "globus_pallidus_externa", "hemisphere": "R"},
    {"index": 5, "name": "globus_pallidus_interna", "hemisphere": "L"},
    {"index": 6, "name": "globus_pallidus_interna", "hemisphere": "R"},
    {"index": 7, "name": "lateral_ventricle", "hemisphere": "L"},
    {"index": 8, "name": "lateral_ventricle", "hemisphere": "R"},
    {"index": 9, "name": "brainstem", "hemisphere": "bilateral"},
]
COMPOSITES = {"globus_pallidus": ("globus_pallidus_externa", "globus_pallidus_interna"),
              "missing_union": ("putamen", "not_in_atlas")}


def _row(rows, region, hemisphere, reference="whole-brain"):
    matches = [row for row in rows if (row["region"], row["hemisphere"], row["reference"])
               == (region, hemisphere, reference)]
    assert len(matches) == 1, (region, hemisphere, reference)
    return matches[0]


@pytest.fixture
def labelled_volume():
    """Blocks of known susceptibility: every label a 4x4x4 cube with its own value."""
    shape = (40, 12, 12)
    labels = np.zeros(shape, dtype=np.int16)
    chi_ppm = np.full(shape, -0.01, dtype=np.float32)  # "white matter" background
    values_ppm = {1: 0.040, 2: 0.060, 3: 0.100, 4: 0.100, 5: 0.140, 6: 0.180, 7: -0.005,
                  8: -0.005, 9: 0.020}
    for index, value in values_ppm.items():
        block = (slice(4 * index - 4, 4 * index), slice(4, 8), slice(4, 8))
        labels[block] = index
        chi_ppm[block] = value
    return chi_ppm, labels, values_ppm


def test_means_per_hemisphere_and_reference(labelled_volume):
    chi_ppm, labels, values_ppm = labelled_volume
    mask = np.ones(labels.shape, dtype=bool)
    csf = csf_reference_from_labels(labels, TABLE, mask)
    offsets = reference_offsets(chi_ppm, mask, csf)
    assert offsets["csf"] == pytest.approx(-0.005, abs=1e-7)
    assert offsets["whole-brain"] == pytest.approx(float(np.mean(chi_ppm, dtype=np.float64)))

    rows = regional_statistics(chi_ppm, labels, TABLE, mask=mask, voxel_size=(1.0, 1.0, 2.0),
                               offsets_ppm=offsets, composites=COMPOSITES)
    assert set(rows[0]) == set(COLUMNS)
    left = _row(rows, "putamen", "L", "csf")
    assert left["mean_ppb"] == pytest.approx(45.0, abs=1e-3)
    assert left["median_ppb"] == pytest.approx(45.0, abs=1e-3)
    assert left["sd_ppb"] == pytest.approx(0.0, abs=1e-3)
    assert left["n_voxels"] == 64 and left["volume_mm3"] == pytest.approx(128.0)
    right_wb = _row(rows, "putamen", "R", "whole-brain")
    assert right_wb["mean_ppb"] == pytest.approx((0.060 - offsets["whole-brain"]) * 1e3, abs=1e-3)
    both = _row(rows, "putamen", "bilateral", "csf")
    assert both["mean_ppb"] == pytest.approx(55.0, abs=1e-3)
    assert both["n_voxels"] == 128
    # 200 (65 - 45) / (65 + 45)
    assert both["ai_pct"] == pytest.approx(200 * 20 / 110, abs=1e-3)
    assert math.isnan(left["ai_pct"])


def test_composite_is_union_of_parts(labelled_volume):
    chi_ppm, labels, _ = labelled_volume
    mask = np.ones(labels.shape, dtype=bool)
    rows = regional_statistics(chi_ppm, labels, TABLE, mask=mask, voxel_size=(1, 1, 1),
                               offsets_ppm={"csf": -0.005}, composites=COMPOSITES)
    pallidum_left = _row(rows, "globus_pallidus", "L", "csf")
    assert pallidum_left["n_voxels"] == 128
    assert pallidum_left["mean_ppb"] == pytest.approx((105 + 145) / 2, abs=1e-3)
    assert not [row for row in rows if row["region"] == "missing_union"]
    # A region only labelled bilaterally has a bilateral row and no asymmetry.
    stem = _row(rows, "brainstem", "bilateral", "csf")
    assert stem["n_voxels"] == 64 and math.isnan(stem["ai_abs_pct"])
    assert not [row for row in rows if row["region"] == "brainstem" and row["hemisphere"] != "bilateral"]


def test_mask_and_empty_regions(labelled_volume):
    chi_ppm, labels, _ = labelled_volume
    mask = np.ones(labels.shape, dtype=bool)
    mask[labels == 2] = False  # right putamen outside the reconstruction
    mask[0:2, 4:8, 4:8] = False  # half of the left putamen too
    rows = regional_statistics(chi_ppm, labels, TABLE, mask=mask, voxel_size=(1, 1, 1),
                               offsets_ppm={"whole-brain": 0.0})
    assert _row(rows, "putamen", "L")["n_voxels"] == 32
    right = _row(rows, "putamen", "R")
    assert right["n_voxels"] == 0 and math.isnan(right["mean_ppb"])
    assert math.isnan(_row(rows, "putamen", "bilateral")["ai_pct"])


def test_percentiles_on_a_ramp():
    labels = np.zeros((101, 1, 1), dtype=np.int16)
    labels[:, 0, 0] = 1
    chi_ppm = (np.arange(101, dtype=np.float32) / 1000.0).reshape(labels.shape)  # 0..100 ppb
    rows = regional_statistics(chi_ppm, labels, [{"index": 1, "name": "ramp", "hemisphere": "L"}],
                               mask=np.ones(labels.shape, bool), voxel_size=(1, 1, 1),
                               offsets_ppm={"whole-brain": 0.0})
    ramp = _row(rows, "ramp", "L")
    assert ramp["p05_ppb"] == pytest.approx(5.0, abs=1e-3)
    assert ramp["p95_ppb"] == pytest.approx(95.0, abs=1e-3)
    assert ramp["median_ppb"] == pytest.approx(50.0, abs=1e-3)
    assert ramp["sd_ppb"] == pytest.approx(np.std(np.arange(101), ddof=1), rel=1e-4)


def test_asymmetry_index_forms():
    assert asymmetry_index(120.0, 80.0) == pytest.approx((40.0, 40.0))
    plain, safe = asymmetry_index(-30.0, -10.0)  # both below the reference: R "less" than L
    assert plain == pytest.approx(100.0)  # the plain form points the wrong way
    assert safe == pytest.approx(-100.0)
    plain, safe = asymmetry_index(0.4, -0.4)
    assert math.isnan(plain) and safe == pytest.approx(200.0)
    assert all(math.isnan(value) for value in asymmetry_index(math.nan, 1.0))


def test_region_index_sets_order_and_sides():
    sets = region_index_sets(TABLE, COMPOSITES)
    assert list(sets)[:2] == ["putamen", "globus_pallidus_externa"]
    assert list(sets)[-1] == "globus_pallidus"
    assert sets["globus_pallidus"]["R"] == [4, 6]
    assert sets["putamen"]["bilateral"] == [1, 2]


def test_csf_reference_erodes_large_ventricles_only():
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[2:9, 2:9, 2:9] = 7
    mask = np.ones(labels.shape, dtype=bool)
    csf = csf_reference_from_labels(labels, TABLE, mask)
    assert np.count_nonzero(csf) == 5 ** 3
    tiny = np.zeros_like(labels)
    tiny[5:7, 5:7, 5:7] = 8
    assert np.count_nonzero(csf_reference_from_labels(tiny, TABLE, mask)) == 8
    assert not csf_reference_from_labels(labels, TABLE[:2], mask).any()


def test_table_round_trip(tmp_path, labelled_volume):
    chi_ppm, labels, _ = labelled_volume
    mask = np.ones(labels.shape, dtype=bool)
    rows = regional_statistics(chi_ppm, labels, TABLE, mask=mask, voxel_size=(1, 1, 1),
                               offsets_ppm=reference_offsets(chi_ppm, mask), composites=COMPOSITES)
    path = write_regional_table(rows, tmp_path / "stats.tsv")
    header = path.read_text().splitlines()[0].split("\t")
    assert tuple(header) == COLUMNS
    back = read_regional_table(path)
    assert len(back) == len(rows)
    for original, parsed in zip(rows, back):
        for column in ("mean_ppb", "p95_ppb", "ai_pct"):
            if math.isnan(original[column]):
                assert math.isnan(parsed[column])
            else:
                assert parsed[column] == pytest.approx(original[column], abs=0.006)
        assert parsed["n_voxels"] == original["n_voxels"]


def test_core_mean_ignores_the_partial_volume_rim_and_resists_a_misplaced_label():
    """A 9x9x9 nucleus of 150 ppb in -30 ppb white matter, its rim voxels at a partial-volume
    value (60 ppb). Over the right label the core mean is exact while the plain mean is diluted
    by the rim; over a label one voxel off, the core mean's error is under a third of the
    plain mean's."""
    from qsmprep.regions import label_core

    shape = (21, 21, 21)
    nucleus = np.zeros(shape, dtype=bool)
    nucleus[6:15, 6:15, 6:15] = True
    chi_ppm = np.where(nucleus, 0.150, -0.030).astype(np.float32)
    chi_ppm[nucleus & ~label_core(nucleus)] = 0.060  # partial volume at the edge
    table = [{"index": 1, "name": "nucleus", "hemisphere": "L"}]

    def left_row(labels):
        (row,) = [r for r in regional_statistics(
            chi_ppm, labels, table, mask=np.ones(shape, bool), voxel_size=(1, 1, 1),
            offsets_ppm={"csf": 0.0}) if r["hemisphere"] == "L"]
        return row

    exact = left_row(nucleus.astype(np.int16))
    assert exact["core_mean_ppb"] == pytest.approx(150.0, abs=1e-3)
    assert exact["core_n_voxels"] == 7 ** 3 and exact["n_voxels"] == 9 ** 3
    assert exact["mean_ppb"] < 120.0
    shifted = np.zeros(shape, dtype=np.int16)
    shifted[7:16, 6:15, 6:15] = 1  # one voxel off along x
    row = left_row(shifted)
    assert abs(row["core_mean_ppb"] - 150.0) < abs(row["mean_ppb"] - 150.0) / 3


def test_label_core_keeps_a_region_too_small_to_erode():
    from qsmprep.regions import MIN_CORE_VOXELS, label_core

    small = np.zeros((8, 8, 8), dtype=bool)
    small[3:5, 3:5, 3:5] = True  # 8 voxels: erosion would leave none
    assert np.array_equal(label_core(small), small)
    big = np.zeros((12, 12, 12), dtype=bool)
    big[2:10, 2:10, 2:10] = True
    core = label_core(big)
    assert core.sum() == 6 ** 3 >= MIN_CORE_VOXELS and not (core & ~big).any()
