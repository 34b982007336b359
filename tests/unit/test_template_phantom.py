"""The digital subject built in MNI template space from the atlas, its warp into a native
(scanner) space, its simulation and the BIDS dataset written from it."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmprep.bids.discovery import discover_runs
from qsmprep.phantom.dataset import PhantomSubject, write_phantom_dataset
from qsmprep.phantom.signal import simulate_multiecho_gre
from qsmprep.phantom.template_head import (
    DEFAULT_REGION_SUSCEPTIBILITY_PPB,
    make_template_phantom,
    region_labels,
    warp_to_native,
)
from qsmprep.atlases import COMPOSITE_REGIONS
from qsmprep.imageio import b0_direction_from_affine
from qsmprep.qsm.dipole import forward_field_ppm, ppm_to_hz

VOXEL_MM = 3.0
REGION_VALUES_PPB = {"putamen": {"L": 40.0, "R": 80.0}, "red_nucleus": {"L": 150.0, "R": 90.0},
                     "motor_cortex_right": 70.0, "caudate": 55.0}
MOTION = {"rotation_deg": (10.0, -6.0, 15.0), "translation_mm": (5.0, -8.0, 12.0)}
NATIVE_GRID = {"native_shape": (60, 72, 60), "native_voxel_size": (VOXEL_MM,) * 3}


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("atlas")


@pytest.fixture(scope="module")
def template(atlas_dir):
    return make_template_phantom(voxel_size_mm=VOXEL_MM, seed=2, atlas_dir=atlas_dir,
                                 region_susceptibility_ppb=REGION_VALUES_PPB)


def _assigned_ppb(region, side):
    """The value given to an atlas region: its own, else that of a composite holding it
    (``motor_cortex_right`` sets the right precentral parts), else the default."""
    suffix = "left" if side == "L" else "right"
    value = DEFAULT_REGION_SUSCEPTIBILITY_PPB[region]
    for composite, parts in COMPOSITE_REGIONS.items():
        if region in parts:
            value = REGION_VALUES_PPB.get(composite, value)
            value = REGION_VALUES_PPB.get(f"{composite}_{suffix}", value)
    value = REGION_VALUES_PPB.get(region, value)
    value = REGION_VALUES_PPB.get(f"{region}_{suffix}", value)
    return value[side] if isinstance(value, dict) else value


def _centroid_mm(mask, affine):
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))


def test_atlas_regions_carry_their_values_on_the_right_side(template):
    phantom, affine = template
    regions = region_labels(phantom.label_names)
    assert {region for region, _ in regions} == set(DEFAULT_REGION_SUSCEPTIBILITY_PPB)
    for (region, side), index in regions.items():
        inside = phantom.labels == index
        assert inside.any(), (region, side)
        assert np.allclose(phantom.susceptibility_ppm[inside], _assigned_ppb(region, side) / 1000,
                           atol=1e-6), (region, side)
        x_mm = _centroid_mm(inside, affine)[0]
        assert (x_mm < 0) == (side == "L"), (region, side, x_mm)  # left: world x < 0
        assert phantom.brain_mask[inside].all()
    # asymmetric values are not swapped
    putamen_left = phantom.susceptibility_ppm[phantom.labels == regions[("putamen", "L")]]
    assert np.allclose(putamen_left, 0.040)
    for part in COMPOSITE_REGIONS["motor_cortex"]:  # the precentral gyrus
        assert phantom.region_susceptibility_ppm[f"{part}_right"] == pytest.approx(0.070)
        assert phantom.region_susceptibility_ppm[f"{part}_left"] == pytest.approx(0.015)
    assert phantom.region_susceptibility_ppm["ba4_outside_precentral_right"] == \
        pytest.approx(0.015)


def test_head_tissues_and_masks(template):
    phantom, _ = template
    chi, labels = phantom.susceptibility_ppm, phantom.labels

    def values(name):
        return chi[labels == phantom.label_index(name)]

    assert np.allclose(values("grey_matter"), 0.015)
    assert np.allclose(values("white_matter"), -0.030)
    assert np.allclose(values("skull"), -2.0) and np.allclose(values("background"), 9.4)
    for cavity in ("paranasal_sinus", "ear_canal_left", "ear_canal_right"):
        assert values(cavity).size and np.allclose(values(cavity), 9.4), cavity
        assert phantom.head_mask[labels == phantom.label_index(cavity)].all()
    # brain mask: parenchyma and ventricles, none of the CSF around the brain
    assert not phantom.brain_mask[labels == phantom.label_index("subarachnoid_csf")].any()
    assert phantom.brain_mask[labels == phantom.label_index("lateral_ventricle_left")].all()
    assert not np.any(phantom.brain_mask & ~phantom.head_mask)
    # the brain is wrapped in CSF, then skull: no brain voxel touches bone or air
    grown = ndimage.binary_dilation(phantom.brain_mask)
    assert not np.isin(labels[grown], [phantom.label_index("skull"), 0]).any()
    # realistic magnitude and R2*: grey matter brighter than white, iron raises R2*
    m0_grey = phantom.m0[labels == phantom.label_index("grey_matter")].mean()
    m0_white = phantom.m0[labels == phantom.label_index("white_matter")].mean()
    assert m0_grey > m0_white > 0.5
    r2 = {name: phantom.r2star_hz[labels == phantom.label_index(name)].mean()
          for name in ("putamen_left", "putamen_right", "thalamus_left")}
    assert r2["putamen_right"] > r2["putamen_left"] > r2["thalamus_left"]


def test_region_values_are_checked(atlas_dir):
    phantom, _ = make_template_phantom(voxel_size_mm=6.0, atlas_dir=atlas_dir, texture=False,
                                       region_susceptibility_ppb={"thalamus": 30,
                                                                  "caudate_right": 70})
    assert phantom.region_susceptibility_ppm["thalamus_left"] == pytest.approx(0.030)
    assert phantom.region_susceptibility_ppm["caudate_left"] == pytest.approx(0.039)
    assert phantom.region_susceptibility_ppm["caudate_right"] == pytest.approx(0.070)
    with pytest.raises(KeyError, match="dentate_nucleus"):  # not an atlas region
        make_template_phantom(voxel_size_mm=6.0, atlas_dir=atlas_dir,
                              region_susceptibility_ppb={"dentate_nucleus": 100})
    with pytest.raises(KeyError):
        make_template_phantom(voxel_size_mm=6.0, atlas_dir=atlas_dir,
                              region_susceptibility_ppb={"putamen": {"left-ish": 1}})


def test_warp_moves_regions_where_the_transform_puts_them(template):
    phantom, affine = template
    native, native_affine, transform = warp_to_native(phantom, affine, seed=1, **MOTION,
                                                      **NATIVE_GRID)
    assert native.shape == NATIVE_GRID["native_shape"]
    assert native.voxel_size == NATIVE_GRID["native_voxel_size"]
    # an oblique grid, elsewhere in the scanner than the template
    assert not np.allclose(native_affine[:3, :3], np.diag(np.diag(native_affine[:3, :3])))
    assert np.allclose(np.linalg.norm(native_affine[:3, :3], axis=0), VOXEL_MM)
    regions = region_labels(phantom.label_names)
    for key in (("putamen", "L"), ("thalamus", "R"), ("lateral_ventricle", "L"),
                ("red_nucleus", "R")):
        index = regions[key]
        template_centroid = _centroid_mm(phantom.labels == index, affine)
        native_centroid = _centroid_mm(native.labels == index, native_affine)
        predicted = nib.affines.apply_affine(transform.matrix, template_centroid)
        assert np.linalg.norm(native_centroid - predicted) < VOXEL_MM, key
        assert np.linalg.norm(native_centroid - template_centroid) > 10.0, key  # it moved
        # nearest-neighbour labels keep the values; the brain keeps away from bone and air
        assert np.allclose(native.susceptibility_ppm[native.labels == index],
                           phantom.susceptibility_ppm[phantom.labels == index][0], atol=0.2)
    # the brain's values are interpolated among themselves (and CSF), never with bone or air
    brain_values = native.susceptibility_ppm[native.brain_mask]
    assert brain_values.min() >= -0.030 - 1e-6 and brain_values.max() <= 0.150 + 1e-6


def test_warp_with_a_smooth_deformation(template):
    phantom, affine = template
    native, native_affine, transform = warp_to_native(phantom, affine, deformation_mm=4.0, seed=3,
                                                      **MOTION, **NATIVE_GRID)
    lengths = np.sqrt((transform.displacement_mm**2).sum(axis=0))
    assert lengths.max() == pytest.approx(4.0, rel=1e-4)
    assert np.abs(np.diff(transform.displacement_mm, axis=1)).max() < 1.0  # smooth (mm/voxel)
    points = np.array([[-20.0, 5.0, 3.0], [12.0, -18.0, 8.0], [0.0, 30.0, 40.0]])
    native_points = transform.template_to_native(points)
    assert np.allclose(transform.native_to_template(native_points), points, atol=1e-3)
    rigid = nib.affines.apply_affine(transform.matrix, points)
    assert np.linalg.norm(native_points - rigid, axis=1).max() > 0.5  # the deformation acts
    regions = region_labels(phantom.label_names)
    for key in (("putamen", "R"), ("thalamus", "L"), ("caudate", "R")):
        index = regions[key]
        template_centroid = _centroid_mm(phantom.labels == index, affine)
        native_centroid = _centroid_mm(native.labels == index, native_affine)
        predicted = transform.template_to_native(template_centroid)[0]
        assert np.linalg.norm(native_centroid - predicted) < VOXEL_MM, key
    assert json.loads(json.dumps(transform.describe()))["DeformationMm"] == 4.0


def test_simulated_field_is_the_dipole_field_of_the_brain(template):
    phantom, affine = template
    native, native_affine, _ = warp_to_native(phantom, affine, seed=1, **MOTION, **NATIVE_GRID)
    echo_times = (0.004, 0.008)
    acquisition = simulate_multiecho_gre(native, affine=native_affine, echo_times_s=echo_times,
                                         snr=None, workers=2)
    # field from the phase of the two echoes, less the true background field
    difference = np.angle(np.exp(1j * (acquisition.phase[..., 1] - acquisition.phase[..., 0])))
    measured = difference / (2 * np.pi * (echo_times[1] - echo_times[0]))
    local = measured - acquisition.background_field_hz
    b0 = b0_direction_from_affine(native_affine)
    assert abs(b0[2]) < 0.99  # an oblique slab: B0 tilted on the grid
    brain_chi = native.brain_susceptibility_ppm()
    expected = ppm_to_hz(forward_field_ppm(brain_chi, native.voxel_size, b0), 3.0)
    inside = (ndimage.binary_erosion(native.brain_mask, iterations=2)
              & (np.abs(acquisition.total_field_hz) < 100.0))
    assert inside.sum() > 5000
    correlation = np.corrcoef(local[inside], expected[inside])[0, 1]
    assert correlation > 0.95, correlation
    assert np.std(expected[inside]) > 0.3  # a real signal (Hz)


def _read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_dataset_with_a_template_subject(tmp_path):
    template_subject = PhantomSubject(
        subject="02", anatomy="template", shape=NATIVE_GRID["native_shape"],
        voxel_size=NATIVE_GRID["native_voxel_size"], echo_times_s=(0.004, 0.008, 0.012),
        rotation_deg=(12.0, 0.0, 0.0), native_rotation_deg=MOTION["rotation_deg"],
        native_translation_mm=MOTION["translation_mm"], deformation_mm=2.0,
        region_susceptibility_ppb=REGION_VALUES_PPB, seed=5)
    analytic_subject = PhantomSubject(subject="01", shape=(40, 48, 40), voxel_size=(4.0,) * 3,
                                      echo_times_s=(0.004, 0.008, 0.012))
    truths = write_phantom_dataset(tmp_path / "a", [analytic_subject, template_subject])
    runs = discover_runs(tmp_path / "a")
    assert [run.subject for run in runs] == ["01", "02"]
    run = runs[1]
    assert run.shape == NATIVE_GRID["native_shape"] and run.voxel_size == pytest.approx((3.0,) * 3)
    assert run.echo_times_s == pytest.approx((0.004, 0.008, 0.012))
    magnitude = nib.load(run.echoes[0].magnitude)
    assert abs(b0_direction_from_affine(magnitude.affine)[2]) < 0.99

    truth = truths["sub-02"]
    assert "regions" not in truths["sub-01"]
    expected_name = "sub-02_desc-truth_regions.tsv"
    assert truth["regions"] == (tmp_path / "a/derivatives/qsmprep-phantom/sub-02/anat"
                                / expected_name)
    rows = _read_tsv(truth["regions"])
    assert list(rows[0]) == ["region", "hemisphere", "chi_ppb", "mean_native_ppb", "n_voxels"]
    assert {(row["region"], row["hemisphere"]) for row in rows} == {
        (region, side) for region in [*DEFAULT_REGION_SUSCEPTIBILITY_PPB, *COMPOSITE_REGIONS]
        for side in "LR"}
    # the table agrees with the written truth images
    chi = nib.load(truth["Chimap"]).get_fdata()
    labels = nib.load(truth["dseg"]).get_fdata().astype(int)
    names = {row["name"]: int(row["index"]) for row in _read_tsv(
        truth["dseg"].with_name("sub-02_dseg.tsv"))}
    assert np.allclose(nib.load(truth["Chimap"]).affine, magnitude.affine)
    for row in rows:
        region, side = row["region"], row["hemisphere"]
        if region in COMPOSITE_REGIONS:  # unions of parts, checked below
            continue
        assert float(row["chi_ppb"]) == pytest.approx(_assigned_ppb(region, side))
        inside = labels == names[f"{region}_{'left' if side == 'L' else 'right'}"]
        assert int(row["n_voxels"]) == inside.sum() > 0
        assert float(row["mean_native_ppb"]) == pytest.approx(1000 * chi[inside].mean(), abs=1e-3)
        # linear interpolation mixes a region's edge with its neighbours (brain values only)
        assert -30.0 <= float(row["mean_native_ppb"]) <= max(float(row["chi_ppb"]), 0.0) + 5.0
        if region in ("putamen", "caudate", "thalamus"):  # large nuclei: a little below
            assert float(row["mean_native_ppb"]) == pytest.approx(float(row["chi_ppb"]), rel=0.3)
            core = ndimage.binary_erosion(inside, structure=np.ones((3, 3, 3)))
            assert np.median(1000 * chi[core]) == pytest.approx(float(row["chi_ppb"]), abs=1.0)
    means = {(row["region"], row["hemisphere"]): float(row["mean_native_ppb"]) for row in rows}
    assert means[("putamen", "R")] > means[("putamen", "L")] + 20
    assert means[("red_nucleus", "L")] > means[("red_nucleus", "R")] + 20
    assert means[("motor_cortex", "R")] > means[("motor_cortex", "L")] + 20
    sidecar = json.loads(truth["regions"].with_suffix(".json").read_text())
    assert np.allclose(sidecar["NativeTransform"]["NativeAffine"], magnitude.affine)
    assert sidecar["NativeTransform"]["DeformationMm"] == 2.0

    # deterministic: the same subject gives the same files, whatever the FFT threads
    write_phantom_dataset(tmp_path / "b", [template_subject], workers=2)
    for path in (tmp_path / "b").rglob("*.*"):
        if path.is_file() and "sub-02" in path.name:
            relative = path.relative_to(tmp_path / "b")
            assert path.read_bytes() == (tmp_path / "a" / relative).read_bytes(), relative


@pytest.mark.parametrize("settings", [
    {"anatomy": "mni"},
    {"region_susceptibility_ppb": {"putamen": 50}},
    {"deformation_mm": 2.0},
    {"anatomy": "template", "susceptibility_overrides_ppm": {"putamen": 0.05}},
])
def test_invalid_template_subjects_are_refused(settings):
    with pytest.raises(ValueError):
        PhantomSubject(**settings)


def test_wider_regions_keep_their_tissue_and_the_brain_stem_needs_a_value(atlas_dir):
    """Regions of the wider differential diagnosis take their tissue's value over that tissue
    only (a healthy head is unchanged); the midbrain and pons, of mixed tissue, are regions of
    the subject only when given a value, which all their voxels then take."""
    healthy, _ = make_template_phantom(voxel_size_mm=4.0, atlas_dir=atlas_dir, texture=False)
    names = set(healthy.label_names.values())
    assert {"hippocampus_left", "corticospinal_tract_right"} <= names
    assert not any(name.startswith(("midbrain", "pons")) for name in names)
    assert healthy.region_susceptibility_ppm["corticospinal_tract_left"] == pytest.approx(-0.030)
    assert healthy.region_susceptibility_ppm["hippocampus_right"] == pytest.approx(0.015)
    patient, _ = make_template_phantom(voxel_size_mm=4.0, atlas_dir=atlas_dir, texture=False,
                                       region_susceptibility_ppb={"midbrain": 80})
    index = {name: value for value, name in patient.label_names.items()}
    midbrain = np.isin(patient.labels, [index["midbrain_left"], index["midbrain_right"]])
    assert midbrain.any()
    np.testing.assert_allclose(patient.susceptibility_ppm[midbrain], 0.080)


def test_deep_motor_cortex_iron_fills_the_deep_half_of_the_precentral_grey_matter(atlas_dir):
    """``motor_cortex_deep`` raises the precentral grey-matter voxels nearer the white matter
    than the pial side, per side; the rest of the gyrus' grey matter keeps the motor cortex's
    value, and the gyrus' labels hold grey matter only."""
    phantom, _ = make_template_phantom(
        voxel_size_mm=2.0, atlas_dir=atlas_dir, texture=False,
        region_susceptibility_ppb={"motor_cortex": 40, "motor_cortex_deep": {"L": 120, "R": 90}})
    index = {name: value for value, name in phantom.label_names.items()}
    for side, deep_ppm in (("left", 0.120), ("right", 0.090)):
        gyrus = np.isin(phantom.labels, [index[f"{part}_{side}"] for part in
                                         ("precentral_ba4", "precentral_ba6", "precentral_other")])
        values = phantom.susceptibility_ppm[gyrus].astype(np.float64)
        is_deep, is_rest = np.isclose(values, deep_ppm), np.isclose(values, 0.040)
        assert np.all(is_deep | is_rest)
        assert is_deep.sum() > 50 and is_rest.sum() > 50, (side, is_deep.sum(), is_rest.sum())
