"""Tissue classification (qsmprep.tissue): accuracy on a simulated brain with imperfect priors,
determinism, the errors for bad input, the cortical grey-matter restriction, and the template
tissue priors.

The simulated brain (60^3 voxels of 2 mm) has a white-matter core with a folded surface, a
grey-matter ribbon with sulci, a CSF shell, a ventricle and two deep grey-matter nuclei. Its
features have GRE-like contrasts with partial volume, noise and (for the magnitude) a smooth
bias field: magnitude CSF > GM > WM (long echo time), R2* WM > GM > CSF, susceptibility
GM > CSF > WM. Its priors are the true classes blurred (Gaussian, sigma 3 mm) and shifted by
2 mm, as warped template priors would be.
"""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("ants")

from qsmprep import tissue  # noqa: E402
from qsmprep.errors import BadDataError  # noqa: E402

VOXEL_MM = 2.0
AFFINE = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
CLASS_LABELS = {"csf": 1, "gm": 2, "wm": 3}


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def simulated_brain(size=60, voxel=VOXEL_MM):
    """True labels (1 CSF, 2 GM, 3 WM, 0 outside), brain mask and world coordinates (mm)."""
    centre = (size - 1) / 2.0
    x, y, z = np.meshgrid(*[(np.arange(size) - centre) * voxel] * 3, indexing="ij")
    radius = np.sqrt((x / 52.0) ** 2 + (y / 56.0) ** 2 + (z / 46.0) ** 2)
    polar = np.arctan2(np.hypot(x, y), z)
    azimuth = np.arctan2(y, x)
    fold = np.sin(7 * polar) * np.sin(6 * azimuth)
    brain = radius <= 1.0
    truth = np.zeros(brain.shape, np.uint8)
    truth[brain] = 1
    truth[brain & (radius < 0.93 - 0.12 * np.clip(-fold, 0, None) ** 2)] = 2  # sulci
    truth[brain & (radius < 0.70 + 0.09 * fold)] = 3  # folded white-matter surface
    nuclei = ((np.abs(x) - 18) / 7) ** 2 + (y / 10) ** 2 + ((z + 2) / 7) ** 2 <= 1
    truth[nuclei & brain] = 2
    ventricle = (x / 9) ** 2 + (y / 22) ** 2 + ((z - 4) / 9) ** 2 <= 1
    truth[ventricle & brain] = 1
    return truth, brain, (x, y, z)


def gre_features(truth, coords, seed=0):
    """Magnitude (with a smooth bias), R2* (1/s) and susceptibility (ppm), with partial volume
    (tissue fractions blurred by 0.6 voxel) and Gaussian noise."""
    rng = np.random.default_rng(seed)
    x, y, z = coords
    csf, grey, white = (ndimage.gaussian_filter((truth == k).astype(float), 0.6)
                        for k in (1, 2, 3))
    bias = 1.0 + 0.25 * x / 60.0 - 0.15 * z / 50.0 + 0.1 * (y / 60.0) ** 2
    magnitude = (1.0 * csf + 0.70 * grey + 0.55 * white) * bias
    r2star = 4.0 * csf + 17.0 * grey + 22.0 * white
    chi = 0.0 * csf + 0.025 * grey - 0.03 * white
    noisy = [magnitude + rng.normal(0, 0.03, x.shape), r2star + rng.normal(0, 1.5, x.shape),
             chi + rng.normal(0, 0.01, x.shape)]
    return {name: volume.astype(np.float32)
            for name, volume in zip(("magnitude", "r2star", "chi"), noisy)}


def imperfect_priors(truth, shift_mm=2.0, sigma_mm=3.0, voxel=VOXEL_MM):
    return {name: ndimage.shift(
        ndimage.gaussian_filter((truth == label).astype(np.float32), sigma_mm / voxel),
        (shift_mm / voxel, 0, 0), order=1).astype(np.float32)
        for name, label in CLASS_LABELS.items()}


@pytest.fixture(scope="module")
def brain():
    truth, mask, coords = simulated_brain()
    return {"truth": truth, "mask": mask, "features": gre_features(truth, coords),
            "priors": imperfect_priors(truth)}


@pytest.fixture(scope="module")
def result(brain):
    return tissue.classify_tissue(list(brain["features"].values()), brain["mask"],
                                  brain["priors"], AFFINE)


def class_dice(labels, truth):
    return {name: dice(labels == label, truth == label) for name, label in CLASS_LABELS.items()}


def prior_dice(priors, truth, mask):
    most_probable = np.argmax(np.stack([priors[name] for name in CLASS_LABELS]), axis=0) + 1
    return class_dice(np.where(mask, most_probable, 0), truth)


# --- accuracy -----------------------------------------------------------------------------
def test_classification_recovers_the_simulated_tissues(brain, result):
    measured = class_dice(result.labels, brain["truth"])
    # Measured: CSF 0.986, GM 0.983, WM 0.989 (all three features).
    for name in CLASS_LABELS:
        assert measured[name] >= 0.95, (name, measured)


def test_classification_follows_the_images_rather_than_the_shifted_priors(brain, result):
    measured = class_dice(result.labels, brain["truth"])
    priors = prior_dice(brain["priors"], brain["truth"], brain["mask"])
    # Measured: the priors' own Dice CSF 0.878, GM 0.892, WM 0.932.
    for name in CLASS_LABELS:
        assert measured[name] >= priors[name] + 0.03, (name, measured, priors)


def test_a_single_feature_is_enough(brain):
    single = tissue.classify_tissue([brain["features"]["r2star"]], brain["mask"],
                                    brain["priors"], AFFINE)
    measured = class_dice(single.labels, brain["truth"])
    # Measured (R2* alone): CSF 0.984, GM 0.957, WM 0.957.
    for name in CLASS_LABELS:
        assert measured[name] >= 0.92, (name, measured)


def test_estimation_on_a_coarser_grid_matches_the_full_grid(brain, result):
    # On the 2 mm grid, estimation_voxel_mm=4 makes Atropos estimate the mixture on every
    # 2nd voxel and the posteriors of the full grid are computed from it.
    assert tissue.estimation_strides((2.0, 2.0, 2.0), 4.0) == (2, 2, 2)
    assert tissue.estimation_strides((1.0, 1.0, 1.0), 2.0) == (2, 2, 2)
    assert tissue.estimation_strides((2.0, 2.0, 2.0), 2.0) == (1, 1, 1)
    coarse = tissue.classify_tissue(list(brain["features"].values()), brain["mask"],
                                    brain["priors"], AFFINE, estimation_voxel_mm=4.0)
    measured = class_dice(coarse.labels, brain["truth"])
    # Measured: CSF 0.984, GM 0.982, WM 0.989 (the full grid: 0.986, 0.983, 0.989);
    # agreement with the full grid 0.998 or more per class.
    for name, label in CLASS_LABELS.items():
        assert measured[name] >= 0.95, (name, measured)
        assert dice(coarse.labels == label, result.labels == label) >= 0.97
    total = sum(coarse.posteriors.values())
    np.testing.assert_allclose(total[brain["mask"]], 1.0, atol=1e-5)


def test_outputs_are_consistent(brain, result):
    mask = brain["mask"]
    assert result.labels.dtype == np.uint8
    assert not result.labels[~mask].any()
    assert set(np.unique(result.labels[mask])) == {1, 2, 3}
    for name in CLASS_LABELS:
        posterior = result.posteriors[name]
        assert posterior.dtype == np.float32 and posterior.shape == mask.shape
        assert not posterior[~mask].any()
        assert posterior.min() >= 0.0 and posterior.max() <= 1.0 + 1e-6
    total = sum(result.posteriors.values())
    np.testing.assert_allclose(total[mask], 1.0, atol=1e-5)
    most_probable = np.argmax(np.stack([result.posteriors[n] for n in CLASS_LABELS]), 0) + 1
    assert np.array_equal(result.labels[mask], most_probable[mask])
    for name, label in CLASS_LABELS.items():
        expected_ml = np.count_nonzero(result.labels == label) * VOXEL_MM ** 3 / 1000.0
        assert result.volumes_ml[name] == pytest.approx(expected_ml)
    assert result.gm_prior_dice == pytest.approx(
        dice(result.labels == 2, (brain["priors"]["gm"] > 0.5) & mask))


def test_two_runs_are_identical(brain, result):
    again = tissue.classify_tissue(list(brain["features"].values()), brain["mask"],
                                   brain["priors"], AFFINE)
    assert np.array_equal(again.labels, result.labels)
    for name in CLASS_LABELS:
        assert np.array_equal(again.posteriors[name], result.posteriors[name])
    assert again.volumes_ml == result.volumes_ml


# --- errors -------------------------------------------------------------------------------
def _call(brain, features=None, mask=None, priors=None, **options):
    return tissue.classify_tissue(
        brain["features"] if features is None else features,
        brain["mask"] if mask is None else mask,
        brain["priors"] if priors is None else priors, AFFINE, **options)


def test_shape_mismatch_is_named(brain):
    features = dict(brain["features"], chi=brain["features"]["chi"][:-1])
    with pytest.raises(BadDataError, match=r"feature 'chi' has shape \(59, 60, 60\)"):
        _call(brain, features=features)
    priors = dict(brain["priors"], wm=brain["priors"]["wm"][:, :-1])
    with pytest.raises(BadDataError, match=r"wm prior has shape \(60, 59, 60\)"):
        _call(brain, priors=priors)


def test_empty_or_tiny_mask_is_refused(brain):
    empty = np.zeros_like(brain["mask"])
    with pytest.raises(BadDataError, match="brain mask is empty"):
        _call(brain, mask=empty)
    tiny = np.zeros_like(brain["mask"])
    tiny[28:33, 28:33, 28:33] = True
    with pytest.raises(BadDataError, match="brain mask is too small.*125 voxels"):
        _call(brain, mask=tiny)


def test_no_features_is_refused(brain):
    with pytest.raises(BadDataError, match="no features given"):
        _call(brain, features=[])


def test_non_finite_feature_is_named(brain):
    r2star = brain["features"]["r2star"].copy()
    r2star[30, 30, 30] = np.nan
    r2star[31, 30, 30] = np.inf
    features = [brain["features"]["magnitude"], r2star]
    with pytest.raises(BadDataError, match="feature 1 has 2 non-finite"):
        _call(brain, features=features)


def test_constant_feature_is_named(brain):
    features = dict(brain["features"], chi=np.full(brain["mask"].shape, 0.5, np.float32))
    with pytest.raises(BadDataError, match="feature 'chi' is constant"):
        _call(brain, features=features)


def test_missing_or_empty_priors_are_named(brain):
    priors = {name: brain["priors"][name] for name in ("csf", "gm")}
    with pytest.raises(BadDataError, match=r"priors lack the class\(es\) \['wm'\]"):
        _call(brain, priors=priors)
    priors = dict(brain["priors"], csf=np.zeros(brain["mask"].shape, np.float32))
    with pytest.raises(BadDataError, match="csf prior is empty"):
        _call(brain, priors=priors)


def box_brain(grey_slab, spheres, size=40, seed=1):
    """A box of white matter with a slab of ``grey_slab`` rows of grey matter and balls
    ``{label: (centre, radius)}`` (voxels), crisp; one noisy magnitude-like feature and the
    exact classes blurred by one voxel as priors."""
    rng = np.random.default_rng(seed)
    truth = np.full((size,) * 3, 3, np.uint8)
    truth[:grey_slab] = 2
    grid = np.indices(truth.shape)
    for label, (centre, radius) in spheres.items():
        ball = sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius ** 2
        truth[ball] = label
    magnitude = np.select([truth == 1, truth == 2, truth == 3], [1.0, 0.7, 0.55], 0.0)
    feature = (magnitude + rng.normal(0, 0.03, truth.shape)).astype(np.float32)
    priors = {name: ndimage.gaussian_filter((truth == label).astype(np.float32), 1.0)
              for name, label in CLASS_LABELS.items()}
    return [feature], np.ones(truth.shape, bool), priors, truth


@pytest.mark.parametrize("grey_slab, spheres, message", [
    # CSF: a ball of 0.5 % of the volume
    (16, {1: ((28, 20, 20), 4.2)}, r"degenerated: csf takes 0\.\d % of the brain mask"),
    # CSF and grey matter: balls of 3 % each, white matter 94 %
    (0, {1: ((11, 11, 11), 7.7), 2: ((28, 28, 28), 7.7)},
     r"degenerated: wm takes 9\d\.\d % of the brain mask"),
])
def test_degenerate_classification_is_refused(grey_slab, spheres, message):
    features, mask, priors, truth = box_brain(grey_slab, spheres)
    fractions = [np.mean(truth == label) for label in (1, 2, 3)]
    assert min(fractions) < 0.01 or max(fractions) > 0.9  # the truth itself is degenerate
    with pytest.raises(BadDataError, match=message):
        tissue.classify_tissue(features, mask, priors, AFFINE)


def test_grey_matter_disagreeing_with_its_prior_is_refused(brain):
    # The grey-matter prior reaches 0.5 only in a patch of white matter (a misaligned prior):
    # the images make that patch white matter, and grey matter lies where the prior is < 0.5.
    truth, _, (x, y, z) = simulated_brain()
    patch = ((x / 10) ** 2 + ((y - 5) / 10) ** 2 + ((z + 20) / 8) ** 2 <= 1) & (truth == 3)
    priors = {name: volume.copy() for name, volume in brain["priors"].items()}
    priors["gm"] = np.minimum(priors["gm"], 0.45)
    priors["gm"][patch], priors["wm"][patch], priors["csf"][patch] = 0.9, 0.05, 0.05
    with pytest.raises(BadDataError, match=r"disagrees with the grey-matter prior: Dice .* 0\.0"):
        _call(brain, priors=priors)


def test_atropos_failure_is_wrapped_and_explained(brain):
    # Noise-free, piecewise-constant image with exact priors: every class covariance is zero.
    truth = brain["truth"]
    feature = np.select([truth == 1, truth == 2, truth == 3], [1.0, 0.7, 0.55], 0.0)
    priors = {name: (truth == label).astype(np.float32) for name, label in CLASS_LABELS.items()}
    with pytest.raises(BadDataError, match="Atropos tissue classification failed.*singular"):
        _call(brain, features=[feature.astype(np.float32)], priors=priors)


# --- cortical grey-matter restriction ------------------------------------------------------
TABLE = [
    {"index": 17, "name": "thalamus", "hemisphere": "L"},
    {"index": 21, "name": "motor_cortex", "hemisphere": "L"},
    {"index": 22, "name": "motor_cortex", "hemisphere": "R"},
    {"index": "23", "name": "premotor_cortex", "hemisphere": "L"},
]


def test_restrict_to_grey_matter_trims_only_cortical_regions():
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 17, 21, 22, 23], size=(20, 20, 20)).astype(np.int16)
    grey = rng.uniform(0, 1, labels.shape).astype(np.float32)
    restricted = tissue.restrict_to_grey_matter(
        labels, TABLE, grey, cortical_regions=("motor_cortex", "premotor_cortex",
                                               "precentral_gyrus"))
    assert restricted.dtype == labels.dtype and restricted is not labels
    cortical = np.isin(labels, [21, 22, 23])
    assert np.array_equal(restricted[~cortical], labels[~cortical])  # thalamus, background
    assert not restricted[cortical & (grey < 0.5)].any()
    assert np.array_equal(restricted[cortical & (grey >= 0.5)],
                          labels[cortical & (grey >= 0.5)])
    assert 0 < np.count_nonzero(restricted[cortical]) < np.count_nonzero(cortical)

    strict = tissue.restrict_to_grey_matter(labels, TABLE, grey,
                                            cortical_regions=["motor_cortex"], threshold=0.8)
    motor = np.isin(labels, [21, 22])
    assert not strict[motor & (grey < 0.8)].any()
    assert np.array_equal(strict[~motor], labels[~motor])  # premotor untouched now

    untouched = tissue.restrict_to_grey_matter(labels, TABLE, grey,
                                               cortical_regions=["precentral_gyrus"])
    assert np.array_equal(untouched, labels)


def test_restrict_to_grey_matter_checks_the_grid():
    with pytest.raises(BadDataError, match="not on the same grid"):
        tissue.restrict_to_grey_matter(np.zeros((4, 4, 4), np.int16), TABLE,
                                       np.zeros((4, 4, 5), np.float32),
                                       cortical_regions=["motor_cortex"])


# --- template priors ----------------------------------------------------------------------
def _mean_around(volume, affine, world_mm, radius=3):
    index = np.rint(np.linalg.inv(affine) @ np.r_[world_mm, 1.0])[:3].astype(int)
    return float(volume[tuple(slice(i - radius, i + radius + 1) for i in index)].mean())


def test_template_tissue_priors(tmp_path):
    from qsmprep.atlases import template_files

    mask_path = template_files()["mask"]
    paths = tissue.template_tissue_priors(mask_path, tmp_path)
    assert set(paths) == {"csf", "gm", "wm"}
    images = {name: nib.load(path) for name, path in paths.items()}
    mask_image = nib.load(mask_path)
    mask = np.asarray(mask_image.dataobj) > 0
    data = {}
    for name, image in images.items():
        assert image.get_data_dtype() == np.float32
        assert image.shape == mask.shape and np.allclose(image.affine, mask_image.affine)
        data[name] = np.asarray(image.dataobj)
        assert data[name].min() >= 0.0 and data[name].max() <= 1.0
        assert not data[name][~mask].any()
        with open(paths[name], "rb") as stream:
            assert stream.read(10)[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    total = data["csf"] + data["gm"] + data["wm"]
    np.testing.assert_allclose(total[mask], 1.0, atol=1e-5)

    affine = mask_image.affine
    for cortex in ((-8.0, -80.0, 8.0), (50.0, -20.0, 10.0)):  # cuneus, superior temporal
        assert _mean_around(data["gm"], affine, cortex) > 0.6
        assert _mean_around(data["gm"], affine, cortex) > _mean_around(data["wm"], affine, cortex)
    for centrum in ((-25.0, -10.0, 30.0), (25.0, -10.0, 30.0)):  # centrum semiovale
        assert _mean_around(data["wm"], affine, centrum) > 0.9
        assert _mean_around(data["wm"], affine, centrum) > _mean_around(data["gm"], affine,
                                                                          centrum)

    # Cached: the same inputs leave the files alone...
    stamps = {name: os.stat(path).st_mtime_ns for name, path in paths.items()}
    assert tissue.template_tissue_priors(mask_path, tmp_path) == paths
    assert {name: os.stat(path).st_mtime_ns for name, path in paths.items()} == stamps
    # ...a sidecar with another fingerprint makes them be rebuilt, byte for byte the same.
    contents = {name: path.read_bytes() for name, path in paths.items()}
    sidecar = paths["gm"].with_name(paths["gm"].name.replace(".nii.gz", ".json"))
    fields = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(dict(fields, Fingerprint="stale")))
    tissue.template_tissue_priors(mask_path, tmp_path)
    assert json.loads(sidecar.read_text())["Fingerprint"] == fields["Fingerprint"]
    assert {name: path.read_bytes() for name, path in paths.items()} == contents


def test_template_tissue_priors_refuses_another_grid(tmp_path):
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)), mask_path)
    with pytest.raises(BadDataError, match="expected the MNI152NLin2009cAsym 1 mm grid"):
        tissue.template_tissue_priors(mask_path, tmp_path / "priors")


def test_classes_from_priors_is_the_normalised_priors_and_their_most_probable_class():
    """The fallback of a failed classification: posteriors are the priors normalised inside
    the mask, the hard classes their argmax, the volumes counted on the affine's voxels."""
    from qsmprep.tissue import classes_from_priors

    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    priors = {"csf": np.full(mask.shape, 0.2, np.float32),
              "gm": np.full(mask.shape, 0.6, np.float32),
              "wm": np.full(mask.shape, 0.2, np.float32)}
    priors["wm"][1, 1, 1] = 1.8  # one voxel more white than grey
    result = classes_from_priors(priors, mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert np.allclose(sum(result.posteriors.values())[mask], 1.0)
    assert not any(p[~mask].any() for p in result.posteriors.values())
    assert result.labels[1, 1, 1] == 3 and np.count_nonzero(result.labels == 2) == 7
    assert result.volumes_ml == pytest.approx({"csf": 0.0, "gm": 7 * 0.008, "wm": 0.008})
