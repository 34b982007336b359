"""Deep-grey-matter refinement: the susceptibility prior, and a registration that recovers a
known displacement of the nuclei, falls back when it diverges, and repeats exactly."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmprep import refinement, registration

TABLE = [{"index": 1, "name": "globus_pallidus_interna", "hemisphere": "L"},
         {"index": 2, "name": "red_nucleus", "hemisphere": "R"},
         {"index": 3, "name": "putamen", "hemisphere": "L"},
         {"index": 4, "name": "lateral_ventricle", "hemisphere": "L"}]


def test_prior_paints_regions_over_tissue_and_softens_edges():
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.int16)
    labels[5:25, 5:25, 5:25] = 1
    labels[30:36, 30:36, 30:36] = 4
    grey = np.full(shape, 0.5, np.float32)
    white = np.full(shape, 0.5, np.float32)
    prior_ppm = refinement.susceptibility_prior(labels, TABLE, grey, white)
    assert prior_ppm.dtype == np.float32
    assert prior_ppm[15, 15, 15] == pytest.approx(0.124, abs=1e-5)  # GPi, deep inside
    assert prior_ppm[33, 33, 33] == pytest.approx(0.0, abs=2e-3)  # ventricle: CSF
    # background: half grey (15 ppb), half white (-30 ppb)
    assert prior_ppm[38, 2, 2] == pytest.approx(-0.0075, abs=1e-5)
    edge = prior_ppm[24:27, 15, 15]  # across the GPi's edge: a smooth step, no jump
    assert 0.124 > edge[0] > edge[1] > edge[2] > -0.0075


def test_deep_grey_mask_dilates_the_nuclei_only():
    labels = np.zeros((30, 30, 30), np.int16)
    labels[14:16, 14:16, 14:16] = 2  # red nucleus
    labels[2:5, 2:5, 2:5] = 4  # ventricle: not a deep grey-matter region
    mask = refinement.deep_grey_matter_mask(labels, TABLE, dilation_mm=3.0)
    assert mask[14, 14, 14] and mask[11, 14, 14] and not mask[9, 14, 14]
    assert not mask[3, 3, 3]
    with pytest.raises(Exception, match="deep grey-matter"):
        refinement.deep_grey_matter_mask(np.where(labels == 4, 4, 0), TABLE)


def _identity(path):
    ants = registration._ants()
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(transform, str(path))
    return str(path)


@pytest.fixture(scope="module")
def displaced_nuclei(tmp_path_factory):
    """A template-space prior with four nuclei and a native Chimap on the same grid in which
    the nuclei sit 2 mm further along x (a smooth local shift that fades away from them), with
    identity first-registration transforms."""
    folder = tmp_path_factory.mktemp("refine")
    shape = (64, 64, 64)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -32.0
    labels = np.zeros(shape, np.int16)
    grid = np.indices(shape).astype(np.float32)
    for index, centre, radius in ((1, (24, 26, 30), 5), (2, (38, 34, 30), 4),
                                  (3, (30, 40, 26), 6), (1, (40, 22, 36), 4)):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2
        labels[inside] = index
    grey = np.full(shape, 0.3, np.float32)
    white = np.full(shape, 0.7, np.float32)
    prior = refinement.susceptibility_prior(labels, TABLE, grey, white)
    # native: the labels pulled 2 mm along +x inside a Gaussian envelope around the nuclei
    shift = 2.0 * np.exp(-sum((g - 32.0) ** 2 for g in grid) / (2 * 14.0 ** 2))
    coordinates = grid.copy()
    coordinates[0] -= shift
    native_labels = ndimage.map_coordinates(labels, coordinates, order=0)
    rng = np.random.default_rng(0)
    native_chi = refinement.susceptibility_prior(native_labels, TABLE, grey, white)
    native_chi = native_chi + rng.normal(0, 0.004, shape).astype(np.float32)
    paths = {}
    for name, data, dtype in (("prior", prior, np.float32), ("native_chi", native_chi, np.float32),
                              ("native_labels", native_labels, np.int16),
                              ("labels", labels, np.int16),
                              ("mask", np.ones(shape, np.uint8), np.uint8)):
        paths[name] = registration._write_volume(data, affine, folder / f"{name}.nii.gz",
                                                 dtype=dtype)
    prior_mask = refinement.deep_grey_matter_mask(labels, TABLE, dilation_mm=4.0)
    paths["prior_mask"] = registration._write_volume(prior_mask, affine,
                                                     folder / "prior_mask.nii.gz",
                                                     dtype=np.uint8)
    paths["identity"] = _identity(folder / "identity.mat")
    paths["folder"] = folder
    return paths


def _dice_per_label(a, b):
    return {index: 2 * np.sum((a == index) & (b == index))
            / max(1, np.sum(a == index) + np.sum(b == index)) for index in (1, 2, 3)}


def _refine(paths, prefix, **settings):
    options = dict(box_margin_mm=8.0, mask_dilation_mm=4.0)
    options.update(settings)
    return refinement.refine_deep_grey_registration(
        paths["native_chi"], paths["mask"], paths["identity"], paths["identity"],
        paths["prior"], paths["prior_mask"], out_prefix=str(paths["folder"] / prefix), seed=3,
        threads=1, settings=refinement.RefinementSettings(**options))


def test_refinement_recovers_the_displaced_nuclei(displaced_nuclei):
    paths = displaced_nuclei
    result = _refine(paths, "good_")
    assert result.accepted, result.reason
    assert result.quality["correlation_after"] > result.quality["correlation_before"]
    assert 0.5 < result.quality["displacement_max_mm"] < 3.5
    truth = np.asarray(nib.load(paths["native_labels"]).dataobj)
    before = registration.labels_to_native(paths["labels"], paths["native_chi"],
                                           [paths["identity"]],
                                           paths["folder"] / "before.nii.gz")
    after = registration.labels_to_native(paths["labels"], paths["native_chi"],
                                          [result.inverse_transform],
                                          paths["folder"] / "after.nii.gz")
    dice_before = _dice_per_label(np.asarray(nib.load(before).dataobj), truth)
    dice_after = _dice_per_label(np.asarray(nib.load(after).dataobj), truth)
    for index in (1, 2, 3):
        assert dice_after[index] > dice_before[index] + 0.05, (index, dice_before, dice_after)
        assert dice_after[index] > 0.85, (index, dice_after)
    # the forward transform brings the native map back onto the prior's nuclei
    warped = registration.apply_transforms_to_template(
        paths["native_chi"], paths["prior"], [result.forward_transform],
        paths["folder"] / "warped.nii.gz")
    prior = nib.load(paths["prior"]).get_fdata()
    inside = nib.load(paths["prior_mask"]).get_fdata() > 0.5
    corr_after = np.corrcoef(prior[inside], nib.load(warped).get_fdata()[inside])[0, 1]
    corr_before = np.corrcoef(prior[inside],
                              nib.load(paths["native_chi"]).get_fdata()[inside])[0, 1]
    assert corr_after > corr_before + 0.02


def test_refinement_is_repeatable(displaced_nuclei):
    first = _refine(displaced_nuclei, "again_a_", iterations=(5,))
    second = _refine(displaced_nuclei, "again_b_", iterations=(5,))
    assert first.quality == {**second.quality, "elapsed_s": first.quality["elapsed_s"]}
    folder = displaced_nuclei["folder"]
    a = nib.load(folder / "again_a_0Warp_tapered.nii.gz").get_fdata()
    b = nib.load(folder / "again_b_0Warp_tapered.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, b)


def test_a_diverging_refinement_keeps_the_first_registration(displaced_nuclei):
    paths = displaced_nuclei
    result = _refine(paths, "diverged_", max_displacement_mm=0.05)
    assert not result.accepted
    assert "diverged" in result.reason and "mm" in result.reason
    assert result.forward_transform == paths["identity"]
    assert result.inverse_transform == paths["identity"]
