"""Deep-grey-matter refinement of the template registration, driven by susceptibility.

The magnitude-driven registration (:func:`qsmprep.registration.register_to_template`) aligns the
brain's outline, ventricles and grey/white-matter contrast, but the small iron-rich nuclei
(globus pallidus, subthalamic nucleus, red nucleus, substantia nigra: 0.2-1.4 mL each) are
barely visible on a T1-like magnitude. Misplaced by 1-1.5 mm, their labels mix in the
surrounding white matter and the regional means come out low. Those nuclei are the brightest
structures of a susceptibility map, so a second, local registration is run on that contrast:

1. a **template-space susceptibility prior** (:func:`susceptibility_prior`): each atlas region
   painted with a healthy adult value (the head phantom of the 2019 QSM reconstruction
   challenge; Marques et al., Magn Reson Med 2021;86:526-542), grey and white matter from the
   MNI ICBM 2009 tissue probability maps, softened by a Gaussian of 1 mm;
2. the participant's Chimap, carried into template space by the first registration, is
   registered to the prior with symmetric normalisation (SyN; Avants et al., Med Image Anal
   2008;12:26-41) under the neighbourhood cross-correlation metric (invariant to the contrast
   scale, so a patient's raised iron does not bias it), on a box around the deep grey matter,
   the metric restricted to the nuclei dilated by a few millimetres;
3. the resulting displacement is tapered to zero at the edge of the box and composed with the
   first registration into one forward and one inverse transform;
4. the refinement is **checked**: the largest displacement must stay below a bound and the
   correlation of the Chimap with the prior inside the deep-grey-matter mask must not
   decrease; otherwise the first registration is kept and the reason returned (for the log,
   the sidecars and the report's quality control).

The prior is a prior, not a measurement: only its pattern (where the nuclei are, brighter than
the white matter around them) drives the registration; its values are never reported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import registration
from .config import DEFAULT_SEED
from .errors import BadDataError
from .regions import HEALTHY_ADULT_PPB

LOGGER = logging.getLogger("qsmprep")

#: Healthy adult susceptibility (ppb, relative to CSF) painted into the prior: those of the
#: 2019 QSM challenge head phantom (:data:`qsmprep.regions.HEALTHY_ADULT_PPB`). The subthalamic
#: nucleus, absent from that phantom, takes the substantia nigra's value (both are iron-rich
#: nuclei of similar susceptibility in healthy adults; Keuken et al., NeuroImage
#: 2017;150:152-161 report them within 10-20 ppb of each other).
PRIOR_REGION_PPB = {
    **{name: HEALTHY_ADULT_PPB[name] for name in (
        "globus_pallidus_externa", "globus_pallidus_interna", "substantia_nigra_compacta",
        "substantia_nigra_reticulata")},
    "subthalamic_nucleus": HEALTHY_ADULT_PPB["substantia_nigra"],
    **{name: HEALTHY_ADULT_PPB[name] for name in (
        "red_nucleus", "caudate", "putamen", "thalamus", "lateral_ventricle")},
}
PRIOR_GREY_MATTER_PPB = HEALTHY_ADULT_PPB["grey_matter"]
PRIOR_WHITE_MATTER_PPB = HEALTHY_ADULT_PPB["white_matter"]
PRIOR_SMOOTHING_MM = 1.0

#: Regions whose placement the refinement targets (and whose dilation is the metric mask).
DEEP_GREY_REGIONS = ("globus_pallidus_externa", "globus_pallidus_interna",
                     "subthalamic_nucleus", "red_nucleus", "substantia_nigra_compacta",
                     "substantia_nigra_reticulata", "putamen", "caudate")


@dataclasses.dataclass(frozen=True)
class RefinementSettings:
    """Parameters of the deep-grey-matter refinement.

    ``levels_mm``/``smoothing_mm``/``iterations``: the SyN pyramid (shrink factor = level /
    template voxel size). ``cc_radius``: radius (voxels) of the cross-correlation window.
    ``mask_dilation_mm``: dilation of :data:`DEEP_GREY_REGIONS` forming the metric mask;
    ``box_margin_mm``: margin of the registration box around that mask, over which the
    displacement is tapered to zero. ``max_displacement_mm``: a refinement that moves any
    voxel of the mask further is rejected as diverged.
    """

    levels_mm: tuple = (2.0,)
    smoothing_mm: tuple = (0.0,)
    iterations: tuple = (40,)
    syn_step: float = 0.25
    syn_update_variance: float = 3.0
    syn_total_variance: float = 0.5
    cc_radius: int = 2
    mask_dilation_mm: float = 6.0
    box_margin_mm: float = 12.0
    max_displacement_mm: float = 5.0


DEFAULT_REFINEMENT = RefinementSettings()


@dataclasses.dataclass(frozen=True)
class RefinementResult:
    """Transforms after the refinement (or the first registration's, when it was rejected).

    ``accepted`` tells which; ``reason`` says why a refinement was rejected; ``quality`` holds
    the correlation with the prior before and after and the displacement statistics (mm).
    """

    forward_transform: str
    inverse_transform: str
    accepted: bool
    reason: str
    quality: dict


# --- the prior -----------------------------------------------------------------------------
def susceptibility_prior(labels, table, grey_probability, white_probability, *,
                         voxel_size_mm=1.0, region_ppb=None) -> np.ndarray:
    """Template-space susceptibility prior (ppm, relative to CSF).

    Parameters
    ----------
    labels : array_like of int, 3-D
        Atlas labels on the template grid.
    table : list of dict
        Atlas rows with ``index`` and ``name``.
    grey_probability, white_probability : array_like, 3-D
        Tissue probabilities on the same grid (outside the brain both 0: CSF/background).
    voxel_size_mm : float
        Template voxel edge, for the smoothing.
    region_ppb : dict, optional
        Region name -> value (ppb); default :data:`PRIOR_REGION_PPB`.

    Returns
    -------
    numpy.ndarray (float32): grey and white matter weighted by their probabilities
    (:data:`PRIOR_GREY_MATTER_PPB`, :data:`PRIOR_WHITE_MATTER_PPB`), every atlas region of
    ``region_ppb`` set to its value, then smoothed by a Gaussian of
    :data:`PRIOR_SMOOTHING_MM` standard deviation.

    References
    ----------
    Marques JP et al. QSM reconstruction challenge 2.0. Magn Reson Med 2021;86:526-542.
    Fonov V et al. Unbiased average age-appropriate atlases. NeuroImage 2011;54:313-327.
    """
    region_ppb = PRIOR_REGION_PPB if region_ppb is None else region_ppb
    labels = np.asarray(labels)
    prior_ppb = (PRIOR_GREY_MATTER_PPB * np.asarray(grey_probability, dtype=np.float32)
                 + PRIOR_WHITE_MATTER_PPB * np.asarray(white_probability, dtype=np.float32))
    largest = max([int(labels.max()), *(int(row["index"]) for row in table)])
    value_of_label = np.full(largest + 1, np.nan, dtype=np.float32)
    for row in table:
        if row["name"] in region_ppb:
            value_of_label[int(row["index"])] = region_ppb[row["name"]]
    painted = value_of_label[np.clip(labels, 0, None).astype(np.int64)]
    painted[labels <= 0] = np.nan
    prior_ppb = np.where(np.isfinite(painted), painted, prior_ppb)
    sigma = PRIOR_SMOOTHING_MM / float(voxel_size_mm)
    return (ndimage.gaussian_filter(prior_ppb, sigma) / 1000.0).astype(np.float32)


def deep_grey_matter_mask(labels, table, *, voxel_size_mm=1.0,
                          dilation_mm=DEFAULT_REFINEMENT.mask_dilation_mm) -> np.ndarray:
    """The :data:`DEEP_GREY_REGIONS` of the atlas dilated by ``dilation_mm`` (bool)."""
    indices = [int(row["index"]) for row in table if row["name"] in DEEP_GREY_REGIONS]
    nuclei = np.isin(np.asarray(labels), indices)
    if not nuclei.any():
        raise BadDataError("the atlas has none of the deep grey-matter regions "
                           + ", ".join(DEEP_GREY_REGIONS))
    radius = dilation_mm / float(voxel_size_mm)
    distance = ndimage.distance_transform_edt(~nuclei)
    return distance <= radius


def write_prior_files(atlas_labels_path, atlas_table_path, out_dir, *,
                      settings: RefinementSettings = DEFAULT_REFINEMENT) -> dict[str, str]:
    """Write the susceptibility prior and the deep-grey-matter mask of an atlas.

    Grey- and white-matter probabilities are nilearn's MNI ICBM 2009 maps carried onto the
    template grid by world coordinates
    (:func:`qsmprep.atlases.build.template_tissue_probabilities`).
    Returns ``{"prior": path, "mask": path}`` (float32 ppm and uint8 NIfTI files in
    ``out_dir``, with the atlas' affine).
    """
    from qsmprep.atlases import build, read_atlas_table

    image = nib.load(os.fspath(atlas_labels_path))
    labels = np.asarray(image.dataobj).astype(np.int32)
    table = read_atlas_table(atlas_table_path)
    voxel = float(np.linalg.norm(image.affine[:3, :3], axis=0).min())
    grey, white = build.template_tissue_probabilities()
    if grey.shape != labels.shape:
        raise BadDataError(f"the atlas {atlas_labels_path} is not on the template grid "
                           f"{grey.shape}; the deep grey-matter refinement needs it")
    prior = susceptibility_prior(labels, table, grey, white, voxel_size_mm=voxel)
    mask = deep_grey_matter_mask(labels, table, voxel_size_mm=voxel,
                                 dilation_mm=settings.mask_dilation_mm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "prior": registration._write_volume(prior, image.affine,
                                            out_dir / "prior_chimap.nii.gz"),
        "mask": registration._write_volume(mask, image.affine, out_dir / "deep_grey_mask.nii.gz",
                                           dtype=np.uint8),
    }


# --- the registration ----------------------------------------------------------------------
def _box(mask, affine, margin_mm):
    margin = np.ceil(margin_mm / np.linalg.norm(affine[:3, :3], axis=0)).astype(int)
    return registration.bounding_box(mask, affine, margin)


def _taper(shape, voxel_size, margin_mm):
    """1 inside, falling to 0 at the faces of the box over ``margin_mm`` (raised cosine)."""
    window = np.ones(shape, np.float32)
    for axis, (size, voxel) in enumerate(zip(shape, voxel_size)):
        distance_mm = np.minimum(np.arange(size), np.arange(size)[::-1]) * voxel
        ramp = np.clip(distance_mm / margin_mm, 0.0, 1.0)
        profile = (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)
        window *= profile.reshape([-1 if a == axis else 1 for a in range(3)])
    return window


def _nearest_subgrid(mask, shape):
    """``mask`` sampled at the voxels of a grid of ``shape`` spanning the same box."""
    indices = [np.minimum(np.rint(np.arange(n) * (m - 1) / max(n - 1, 1)).astype(int), m - 1)
               for n, m in zip(shape, mask.shape)]
    return mask[np.ix_(*indices)]


def _correlation(a, b, mask) -> float:
    a, b = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if a.size < 10 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _read_field(path):
    ants = registration._ants()
    field = ants.image_read(os.fspath(path))
    return field, field.numpy()


def _write_field(like, displacement, path):
    ants = registration._ants()
    image = ants.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32),
                            origin=like.origin, spacing=like.spacing, direction=like.direction,
                            has_components=True)
    ants.image_write(image, os.fspath(path))
    return os.fspath(path)


def refine_deep_grey_registration(chimap_path, chimap_mask_path, forward_transform,
                                  inverse_transform, prior_path, prior_mask_path, *,
                                  out_prefix, seed: int = DEFAULT_SEED,
                                  threads: int = 1,
                                  settings: RefinementSettings = DEFAULT_REFINEMENT
                                  ) -> RefinementResult:
    """Refine a native-to-template registration at the deep grey matter with the Chimap.

    Parameters
    ----------
    chimap_path, chimap_mask_path : path
        The participant's susceptibility map (native, ppm, any reference) and the mask where
        it is defined.
    forward_transform, inverse_transform : path
        The first registration (:func:`qsmprep.registration.register_to_template`).
    prior_path, prior_mask_path : path
        The template-space prior and deep-grey-matter mask (:func:`write_prior_files`).
    out_prefix : path
        Prefix of every file written.
    seed, threads : int
        ANTs seed and threads (the same inputs, seed and threads give identical output).
    settings : RefinementSettings

    Returns
    -------
    RefinementResult
        The refined composite transforms (``{out_prefix}Composite.h5`` and
        ``{out_prefix}InverseComposite.h5``), or the first registration's when the refinement
        was rejected (``accepted`` False, ``reason`` saying why). ``quality`` holds
        ``correlation_before``/``correlation_after`` (Pearson correlation of the Chimap with
        the prior inside the mask), ``displacement_mean_mm``/``displacement_max_mm`` (inside
        the mask) and ``elapsed_s``.

    References
    ----------
    Avants BB et al. Symmetric diffeomorphic image registration with cross-correlation.
    Med Image Anal 2008;12:26-41.
    """
    start = time.perf_counter()
    prefix = registration._prefix(out_prefix)
    prior, template_affine = registration._load_volume(prior_path)
    prior_mask = registration._load_volume(prior_mask_path)[0] > 0.5
    if prior.shape != prior_mask.shape or not prior_mask.any():
        raise BadDataError(f"the deep grey-matter mask {prior_mask_path} is empty or not on the "
                           f"grid of {prior_path}")
    box, box_affine = _box(prior_mask, template_affine, settings.box_margin_mm)
    fixed = registration._write_volume(prior[box], box_affine, f"{prefix}prior_box.nii")
    fixed_mask = registration._write_volume(prior_mask[box], box_affine,
                                            f"{prefix}prior_box_mask.nii", dtype=np.uint8)

    chimap, native_affine = registration._load_volume(chimap_path)
    native_mask = registration._load_volume(chimap_mask_path)[0] > 0.5
    if chimap.shape != native_mask.shape:
        raise BadDataError(f"{chimap_mask_path} {native_mask.shape} is not on the grid of "
                           f"{chimap_path} {chimap.shape}")
    masked = registration._write_volume(np.where(native_mask, chimap, 0.0), native_affine,
                                        f"{prefix}chimap_masked.nii.gz")
    moving = registration.apply_transforms_to_template(
        masked, fixed, [forward_transform], f"{prefix}chimap_in_template.nii", "linear")
    moving_data = registration._load_volume(moving)[0]
    before = _correlation(prior[box], moving_data, prior_mask[box])

    groups, shrink, smoothing = registration._pyramid(
        registration.RegistrationSettings(
            levels_mm=settings.levels_mm, smoothing_mm=settings.smoothing_mm,
            rigid_iterations=(0,) * len(settings.levels_mm),
            affine_iterations=(0,) * len(settings.levels_mm),
            syn_iterations=settings.iterations), fixed)
    schedule = "x".join(str(settings.iterations[g[0]]) for g in groups)
    arguments = [
        "--dimensionality", "3", "--float", "1",
        "--random-seed", str(registration.ants_seed(seed)),
        "--output", f"[{prefix}syn_,{prefix}syn_Warped.nii.gz]", "--verbose", "1",
        "--write-composite-transform", "0", "--collapse-output-transforms", "1",
        "--winsorize-image-intensities", "[0.005,0.995]", "--use-histogram-matching", "0",
        "--transform", f"SyN[{settings.syn_step:g},{settings.syn_update_variance:g},"
                       f"{settings.syn_total_variance:g}]",
        "--metric", f"CC[{fixed},{moving},1,{settings.cc_radius}]",
        "--convergence", f"[{schedule},1e-7,10]", "--shrink-factors", shrink,
        "--smoothing-sigmas", smoothing, "--masks", f"[{fixed_mask},NA]",
    ]
    log_path = f"{prefix}log.txt"
    if os.path.exists(log_path):
        os.remove(log_path)
    registration._run_ants_registration(arguments, threads=threads, log_path=log_path)

    # taper the displacement to zero at the box faces (the field may sit on a coarser grid
    # than the box when the finest level is shrunk)
    fields = {}
    for name in ("0Warp", "0InverseWarp"):
        like, displacement = _read_field(f"{prefix}syn_{name}.nii.gz")
        window = _taper(displacement.shape[:3], like.spacing, settings.box_margin_mm)
        tapered = displacement * window[..., None]
        fields[name] = (_write_field(like, tapered, f"{prefix}{name}_tapered.nii.gz"), tapered)
    field_mask = _nearest_subgrid(prior_mask[box], fields["0Warp"][1].shape[:3])
    magnitude_mm = np.linalg.norm(fields["0Warp"][1], axis=-1)[field_mask]
    quality = {"displacement_mean_mm": round(float(magnitude_mm.mean()), 3),
               "displacement_max_mm": round(float(magnitude_mm.max()), 3),
               "correlation_before": round(before, 4)}

    refined_moving = registration.apply_transforms_to_template(
        masked, fixed, [forward_transform, fields["0Warp"][0]],
        f"{prefix}chimap_refined.nii", "linear")
    after = _correlation(prior[box], registration._load_volume(refined_moving)[0],
                         prior_mask[box])
    quality["correlation_after"] = round(after, 4)

    reason = ""
    if not np.isfinite(after) or not np.isfinite(before):
        reason = "the Chimap has no contrast in the deep grey matter"
    elif quality["displacement_max_mm"] > settings.max_displacement_mm:
        reason = (f"it moved the deep grey matter by up to {quality['displacement_max_mm']:.1f} "
                  f"mm (more than {settings.max_displacement_mm:g} mm): diverged")
    elif after < before:
        reason = (f"it lowered the correlation of the Chimap with the prior ({before:.3f} -> "
                  f"{after:.3f})")
    if reason:
        quality["elapsed_s"] = round(time.perf_counter() - start, 1)
        return RefinementResult(os.fspath(forward_transform), os.fspath(inverse_transform),
                                accepted=False, reason=reason, quality=quality)

    template_path = prior_path
    compose_log = f"{prefix}compose_log.txt"
    # forward: template point -> refinement -> first registration -> native point
    registration._compose(template_path, masked, [fields["0Warp"][0], forward_transform],
                          prefix, seed=seed, log_path=compose_log, collapse=False)
    # inverse: native point -> first registration -> inverse refinement -> template point
    registration._compose(masked, template_path, [inverse_transform, fields["0InverseWarp"][0]],
                          f"{prefix}inverse_", seed=seed, log_path=compose_log,
                          collapse=False)
    inverse = f"{prefix}InverseComposite.h5"
    os.replace(f"{prefix}inverse_Composite.h5", inverse)
    for leftover in (f"{prefix}inverse_Warped.nii.gz", f"{prefix}Warped.nii.gz",
                     f"{prefix}inverse_InverseComposite.h5"):
        if os.path.exists(leftover):
            os.remove(leftover)
    quality["elapsed_s"] = round(time.perf_counter() - start, 1)
    return RefinementResult(f"{prefix}Composite.h5", inverse, accepted=True, reason="",
                            quality=quality)
