"""Registration of the magnitude image to the template with ANTs (antspyx), and label transfer.

The magnitude (its echoes combined by root sum of squares) is bias-corrected with N4
(Tustison et al., IEEE Trans Med Imaging 2010;29:1310-1320), brain-extracted with the brain
mask and rescaled; it is then registered to the brain-extracted T1w template by rigid, affine and symmetric
normalisation (SyN; Avants et al., Med Image Anal 2008;12:26-41) stages, each driven by Mattes
mutual information (Mattes et al., IEEE Trans Med Imaging 2003;22:120-128), which does not
assume the two images share a contrast. Atlas labels are brought back to the native grid with
the inverse transform.

Conventions
-----------
* Images are NIfTI files; their geometry (voxel size, obliquity) comes from the header, so a
  coarse, anisotropic or oblique native grid is handled in physical space. ANTs works in LPS
  physical coordinates; the NIfTI affine is RAS.
* A *transform* is named by the direction in which it moves images. The forward transform
  moves a native image onto the template grid (``antsApplyTransforms`` with the template as
  reference); as a map of points it takes template points to native points. The inverse
  transform moves template images (labels) onto the native grid and takes native points to
  template points. Each is a single ANTs composite file (``.h5``), never needing inversion
  flags.
* Registration runs ``antsRegistration`` in a child process, so that the number of threads is
  set before ITK starts (ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process)
  and a crash inside ITK cannot bring the caller down. With a fixed seed and a fixed number of
  threads the result is bit-for-bit reproducible (the linear stages, whose multi-threaded
  gradient sums are not, always run single-threaded: see :func:`register_to_template`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import DEFAULT_SEED
from .errors import BadDataError, QSMPrepError
from .imageio import save_array

LOGGER = logging.getLogger("qsmprep")


_LPS = np.diag([-1.0, -1.0, 1.0])
_INTERPOLATORS = {
    "linear": "linear",
    "nearest": "nearestNeighbor",
    "nearestneighbor": "nearestNeighbor",
    "genericlabel": "genericLabel",
    "bspline": "bSpline",
    "lanczoswindowedsinc": "lanczosWindowedSinc",
}


@dataclasses.dataclass(frozen=True)
class RegistrationSettings:
    """Parameters of the rigid, affine and SyN stages.

    The pyramid is defined in millimetres: a level sampled at ``levels_mm[i]`` uses the shrink
    factor ``round(levels_mm[i] / fixed voxel size)`` (at least 1) and a Gaussian smoothing of
    ``smoothing_mm[i]``, so the same settings serve a 1 mm template and a coarser copy (levels
    that the grid cannot resolve are merged: see :func:`_pyramid`).
    The defaults follow the coarse-to-fine schedule of ``antsRegistrationSyNQuick.sh`` (levels
    at 8, 4, 2 and 1 mm, no iterations at the finest level, Mattes mutual information with 32
    bins, the linear stages sampling a regular grid of 25 % of the voxels with a seeded random
    perturbation) with two savings measured on a synthetic 1 mm participant
    (``bench/bench_registration.py``): the rigid stage stops at 4 mm (the affine stage that
    follows refines it at 2 mm), and SyN makes at most 20 iterations at 2 mm instead of 50
    (each takes about 1.6 s there on two cores; going from 15 to 30 iterations lowered the
    landmark error by only 0.07 mm, to 0.96 mm). A 1 mm registration then takes about a
    minute on two cores.

    ``crop_margin_mm``: the registration runs on the template cropped to the brain (the
    template mask, or its non-zero voxels) plus this margin, which halves the size of the SyN
    displacement fields for a 1 mm template; ``None`` keeps the whole grid.
    """

    levels_mm: tuple = (8.0, 4.0, 2.0, 1.0)
    smoothing_mm: tuple = (3.0, 2.0, 1.0, 0.0)
    rigid_iterations: tuple = (1000, 500, 0, 0)
    affine_iterations: tuple = (1000, 500, 250, 0)
    syn_iterations: tuple = (100, 70, 20, 0)
    linear_step: float = 0.1
    syn_step: float = 0.2
    syn_update_variance: float = 3.0
    syn_total_variance: float = 0.0
    metric: str = "Mattes"  # ANTs' name of Mattes mutual information
    mi_bins: int = 32
    sampling_fraction: float = 0.25
    convergence_threshold: float = 1e-6
    convergence_window: int = 10
    winsorize: tuple = (0.005, 0.995)
    crop_margin_mm: float | None = 10.0

    def __post_init__(self):
        lengths = {len(self.levels_mm), len(self.smoothing_mm), len(self.rigid_iterations),
                   len(self.affine_iterations), len(self.syn_iterations)}
        if len(lengths) != 1:
            raise ValueError("every per-level setting needs one value per pyramid level")


DEFAULT_SETTINGS = RegistrationSettings()

# Rigid alignment of two images of the same participant (magnitude to T1w): they share the
# scanner space, so the pyramid starts at 4 mm and no initial centring is applied.
INTRASUBJECT_SETTINGS = RegistrationSettings(
    levels_mm=(4.0, 2.0, 1.0), smoothing_mm=(2.0, 1.0, 0.0),
    rigid_iterations=(1000, 500, 50), affine_iterations=(0, 0, 0), syn_iterations=(0, 0, 0))


@dataclasses.dataclass(frozen=True)
class RegistrationResult:
    """Files written by a registration.

    ``forward_transform`` moves native images onto the template (template points to native
    points), ``inverse_transform`` moves template images onto the native grid; ``warped`` is
    the moving image resampled onto the template grid. ``elapsed_s`` is the wall time.
    """

    forward_transform: str
    inverse_transform: str
    warped: str
    elapsed_s: float
    log: str


# --- image I/O -----------------------------------------------------------------------------
def _ants():
    import ants  # imported on use: the import is slow and pulls in ITK

    return ants


def _load_volume(path, *, volume: int = 0):
    """Data (float32, the first volume of a 4-D image) and RAS affine of a NIfTI file."""
    image = nib.load(os.fspath(path))
    if image.ndim == 4:
        data = np.asarray(image.dataobj[..., volume], dtype=np.float32)
    elif image.ndim == 3:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    else:
        raise BadDataError(f"{path}: expected a 3-D or 4-D image, got {image.ndim} dimensions")
    if not np.all(np.isfinite(data)):
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data, image.affine


def _load_echoes(path, combination: str):
    """3-D magnitude of a 3-D image, or the echoes of a 4-D one combined (``"rss"`` or
    ``"first"``), and its RAS affine."""
    if combination not in ("rss", "first"):
        raise ValueError(f"unknown echo combination {combination!r}; use 'rss' or 'first'")
    image = nib.load(os.fspath(path))
    if image.ndim != 4 or combination == "first" or image.shape[3] == 1:
        return _load_volume(path)
    total = np.zeros(image.shape[:3], np.float64)
    for volume in range(image.shape[3]):
        total += np.square(_load_volume(path, volume=volume)[0], dtype=np.float64)
    return np.sqrt(total).astype(np.float32), image.affine


def _ants_geometry(affine):
    """ITK origin, spacing and direction (LPS) of a RAS voxel-to-world affine."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    u, _, vt = np.linalg.svd(linear / spacing)  # nearest rotation: drops any shear
    direction = _LPS @ (u @ vt)
    origin = _LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]
    return tuple(origin), tuple(spacing), direction


def _to_ants(data, affine):
    ants = _ants()
    origin, spacing, direction = _ants_geometry(affine)
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=origin,
                           spacing=spacing, direction=direction)


def _read_ants(path):
    data, affine = _load_volume(path)
    return _to_ants(data, affine), affine


def _write_volume(data, affine, out_path, dtype=np.float32) -> str:
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    return save_array(data, affine, out_path, dtype=dtype)


# --- preparation ---------------------------------------------------------------------------
#: N4 fits the bias field on the image shrunk to voxels of at least this size (mm).
N4_SHRINK_TO_MM = 8.0


def prepare_moving_image(magnitude_path, mask_path, out_path, *,
                         spline_distance_mm: float = 200.0,
                         upper_percentile: float = 99.5,
                         echo_combination: str = "rss") -> str:
    """Bias-corrected, brain-extracted, rescaled magnitude for registration.

    N4 bias-field correction (Tustison et al., IEEE Trans Med Imaging 2010;29:1310-1320) inside
    the brain mask, with a B-spline control-point distance of ``spline_distance_mm``, fitted on
    the image shrunk to voxels of :data:`N4_SHRINK_TO_MM` or more (the field is smooth on the
    scale of the control-point distance; at 1 mm this takes N4 from about 10 s to 5 s on two
    cores). Everything outside the mask is then set to zero and intensities are divided by
    their ``upper_percentile`` inside the mask and clipped to [0, 1], so bright vessels or
    artefacts do not dominate the mutual-information histogram of the registration (Mattes
    et al., IEEE Trans Med Imaging 2003;22:120-128; Avants et al., Med Image Anal
    2008;12:26-41).

    ``magnitude_path`` is 3-D (first echo or echo-combined) or 4-D (one volume per echo);
    ``mask_path`` is on the same grid. The echoes of a 4-D magnitude are combined by
    ``echo_combination``: ``"rss"`` (default), the root sum of squares, whose later echoes add
    T2* weighting — grey/white-matter contrast and the dark iron-rich nuclei (pallidum,
    substantia nigra, subthalamic nucleus) that the first echo barely shows — and signal to
    noise; or ``"first"``, the first echo only. On the digital subject of
    ``bench/bench_regions.py`` (2 mm) the combination raised the Dice overlap of the
    subthalamic nucleus and the internal pallidum from about 0.6-0.7 to 0.75-0.85. Writes a
    float32 NIfTI with the magnitude's affine and returns its absolute path.
    """
    ants = _ants()
    magnitude, affine = _load_echoes(magnitude_path, echo_combination)
    mask_data, _ = _load_volume(mask_path)
    if mask_data.shape != magnitude.shape:
        raise BadDataError(f"brain mask {mask_path} {mask_data.shape} is not on the grid of "
                           f"{magnitude_path} {magnitude.shape}")
    mask = mask_data > 0.5
    if mask.sum() < 27:
        raise BadDataError(f"brain mask {mask_path} has fewer than 27 voxels")
    magnitude = np.abs(magnitude)
    floor = max(float(np.percentile(magnitude[mask], 1.0)), 1e-6) * 1e-2
    magnitude = np.where(mask, np.maximum(magnitude, floor), 0.0).astype(np.float32)

    voxel_size = np.linalg.norm(affine[:3, :3], axis=0)
    shrink = max(1, int(np.ceil(N4_SHRINK_TO_MM / float(voxel_size.min()))))
    corrected = ants.n4_bias_field_correction(
        _to_ants(magnitude, affine), mask=_to_ants(mask.astype(np.float32), affine),
        shrink_factor=shrink, convergence={"iters": [50, 50, 50, 50], "tol": 1e-7},
        spline_param=float(spline_distance_mm)).numpy()

    corrected = np.where(mask & np.isfinite(corrected), corrected, 0.0)
    scale = float(np.percentile(corrected[mask], upper_percentile))
    if not scale > 0:
        raise BadDataError(f"{magnitude_path} has no signal inside the brain mask {mask_path}")
    rescaled = np.clip(corrected / scale, 0.0, 1.0) * mask
    return _write_volume(rescaled, affine, out_path)


# --- antsRegistration ----------------------------------------------------------------------
_CHILD = "import sys, ants; ants.registration(sys.argv[1:], None)"


def _pyramid(settings: RegistrationSettings, fixed_path):
    """Shrink factors and smoothing of each level on the fixed image's grid.

    Levels finer than the grid all get shrink factor 1; consecutive levels with the same
    shrink factor are merged into one, which keeps the iterations of the first (coarsest) and
    the smoothing of the last (finest)."""
    voxel_size = float(np.linalg.norm(nib.load(os.fspath(fixed_path)).affine[:3, :3],
                                      axis=0).min())
    shrink = [max(1, int(round(level / voxel_size))) for level in settings.levels_mm]
    groups = []
    for index, factor in enumerate(shrink):
        if groups and shrink[groups[-1][0]] == factor:
            groups[-1].append(index)
        else:
            groups.append([index])
    return (groups, "x".join(str(shrink[g[0]]) for g in groups),
            "x".join(f"{settings.smoothing_mm[g[-1]]:g}" for g in groups) + "mm")


def _stage(transform, fixed, moving, iterations, pyramid, settings, *, dense, masks):
    groups, shrink, smoothing = pyramid
    if dense or settings.sampling_fraction >= 1:
        metric = f"{settings.metric}[{fixed},{moving},1,{settings.mi_bins}]"
    else:
        metric = (f"{settings.metric}[{fixed},{moving},1,{settings.mi_bins},Regular,"
                  f"{settings.sampling_fraction:g}]")
    schedule = "x".join(str(iterations[g[0]]) for g in groups)
    return ["--transform", transform, "--metric", metric,
            "--convergence", "[{},{:g},{}]".format(schedule, settings.convergence_threshold,
                                                   settings.convergence_window),
            "--shrink-factors", shrink, "--smoothing-sigmas", smoothing,
            "--masks", masks]


_ANTS_SEED_MODULUS = 2**31 - 1


def ants_seed(seed: int) -> int:
    """The ``--random-seed`` given to ``antsRegistration`` for qsmprep's ``seed``.

    ANTs takes a seed of 0 to mean "seed from the clock", so a run with ``--random-seed 0``
    would sample differently each time. qsmprep passes ``seed mod (2^31 - 1) + 1`` instead:
    never 0, a positive C ``int``, and one-to-one for seeds from 0 to 2^31 - 2.
    """
    return int(seed) % _ANTS_SEED_MODULUS + 1


def _common_arguments(out_prefix, warped, seed):
    return ["--dimensionality", "3", "--float", "1", "--random-seed", str(ants_seed(seed)),
            "--collapse-output-transforms", "1", "--write-composite-transform", "1",
            "--output", f"[{out_prefix},{warped}]", "--verbose", "1"]


def _run_ants_registration(arguments, *, threads: int, log_path) -> float:
    """Run ``antsRegistration`` with ``arguments`` in a child process using ``threads`` threads."""
    environment = dict(os.environ)
    environment["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(threads)))
    environment.pop("ITK_NUMBER_OF_THREADS", None)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("antsRegistration " + " ".join(arguments) + "\n")
        log.flush()
        completed = subprocess.run([sys.executable, "-c", _CHILD, *arguments], stdout=log,
                                   stderr=subprocess.STDOUT, env=environment, check=False)
    if completed.returncode != 0:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-20:])
        raise QSMPrepError(f"antsRegistration failed (exit code {completed.returncode}); "
                           f"log {log_path}:\n{tail}")
    return time.perf_counter() - start


def _check_3d(path, role):
    image = nib.load(os.fspath(path))
    if image.ndim != 3:
        raise BadDataError(f"{role} image {path} must be 3-D, got shape {image.shape}")
    return os.path.abspath(os.fspath(path))


def _mask_option(fixed_mask, moving_mask):
    fixed = os.path.abspath(os.fspath(fixed_mask)) if fixed_mask else "NA"
    moving = os.path.abspath(os.fspath(moving_mask)) if moving_mask else "NA"
    return f"[{fixed},{moving}]"


def _prefix(out_prefix) -> str:
    prefix = os.path.abspath(os.fspath(out_prefix))
    if os.fspath(out_prefix).endswith(os.sep):
        prefix += os.sep
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    return prefix


def bounding_box(mask, affine=None, margin_voxels=0):
    """The bounding box of ``mask`` grown by ``margin_voxels`` (an int or one per axis) and
    clipped to the grid: a tuple of slices, and with ``affine`` the affine of the box's grid
    too (``(slices, box_affine)``)."""
    mask = np.asarray(mask, dtype=bool)
    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - margin_voxels, 0)
    high = np.minimum(where.max(axis=0) + np.asarray(margin_voxels) + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    if affine is None:
        return box
    box_affine = np.array(affine, dtype=np.float64)
    box_affine[:3, 3] = box_affine[:3, :3] @ low + box_affine[:3, 3]
    return box, box_affine


def _crop_to_brain(template_path, mask_path, margin_mm, prefix):
    """Template and mask cut to the brain's bounding box plus ``margin_mm`` (uncompressed
    NIfTI files beside ``prefix``) and the first voxel of the box; ``None`` when cropping would
    save less than a fifth of the grid."""
    if margin_mm is None:
        return None
    data, affine = _load_volume(template_path)
    support = (_load_volume(mask_path)[0] > 0.5) if mask_path else data != 0
    if not support.any():
        return None
    margin = np.ceil(margin_mm / np.linalg.norm(affine[:3, :3], axis=0)).astype(int)
    box, box_affine = bounding_box(support, affine, margin)
    if np.prod([b.stop - b.start for b in box]) > 0.8 * data.size:
        return None
    cropped = _write_volume(data[box], box_affine, f"{prefix}template_crop.nii")
    cropped_mask = (_write_volume(support[box], box_affine, f"{prefix}template_crop_mask.nii",
                                  dtype=np.uint8) if mask_path else None)
    return cropped, cropped_mask, tuple(b.start for b in box)


def _uncrop(warped_path, template_path, low):
    """Put the registration's output, computed on the cropped template, back on the whole
    template grid (zero outside the box)."""
    data, _ = _load_volume(warped_path)
    template = nib.load(os.fspath(template_path))
    full = np.zeros(template.shape, np.float32)
    full[tuple(slice(a, a + n) for a, n in zip(low, data.shape))] = data
    _write_volume(full, template.affine, warped_path)


def register_to_template(moving_path, template_path, *, out_prefix, template_mask_path=None,
                         moving_mask_path=None, seed: int = DEFAULT_SEED, threads: int = 1,
                         settings: RegistrationSettings = DEFAULT_SETTINGS,
                         initial_centring: bool = True) -> RegistrationResult:
    """Register ``moving_path`` (prepared magnitude or T1w) to the template.

    Three ``antsRegistration`` stages, coarse to fine (:class:`RegistrationSettings`): rigid,
    affine and symmetric image normalisation (SyN; Avants et al., Med Image Anal
    2008;12:26-41), all with the Mattes mutual-information metric (Mattes et al., IEEE Trans
    Med Imaging 2003;22:120-128), after aligning the centres of mass (``initial_centring``).
    The masks, when given, restrict the metric to the brain. Intensities are winsorised at
    the 0.5 and 99.5 percentiles; no histogram matching (the contrasts differ).

    Reproducibility: the random sampling of the linear stages is seeded with ``seed``. ITK
    sums the gradient of a linear transform over threads in an order that varies from run to
    run, so the rigid and affine stages run single-threaded (about a fifth of the time); the
    SyN stage, whose gradient is computed voxel by voxel, runs with ``threads`` threads in a
    second process started from the affine result. The same inputs, seed and threads give
    bit-identical outputs.

    Returns a :class:`RegistrationResult`: ``{out_prefix}Composite.h5`` (forward, native to
    template, the linear and SyN parts together), ``{out_prefix}InverseComposite.h5``,
    ``{out_prefix}Warped.nii.gz`` (the moving image on the template grid) and the log
    ``{out_prefix}log.txt``; ``{out_prefix}linear_Composite.h5`` keeps the affine result.
    """
    start = time.perf_counter()
    template = _check_3d(template_path, "template")
    moving = _check_3d(moving_path, "moving")
    prefix = _prefix(out_prefix)
    warped = f"{prefix}Warped.nii.gz"
    log_path = f"{prefix}log.txt"
    if os.path.exists(log_path):
        os.remove(log_path)
    crop = _crop_to_brain(template, template_mask_path, settings.crop_margin_mm, prefix)
    fixed, fixed_mask = (crop[0], crop[1]) if crop else (template, template_mask_path)
    pyramid = _pyramid(settings, fixed)
    masks = _mask_option(fixed_mask, moving_mask_path)
    intensities = ["--winsorize-image-intensities", "[{:g},{:g}]".format(*settings.winsorize),
                   "--use-histogram-matching", "0"]
    linear = []
    if any(settings.rigid_iterations):
        linear += _stage(f"Rigid[{settings.linear_step:g}]", fixed, moving,
                         settings.rigid_iterations, pyramid, settings, dense=False, masks=masks)
    if any(settings.affine_iterations):
        linear += _stage(f"Affine[{settings.linear_step:g}]", fixed, moving,
                         settings.affine_iterations, pyramid, settings, dense=False, masks=masks)
    deformable = []
    if any(settings.syn_iterations):
        deformable = _stage(
            f"SyN[{settings.syn_step:g},{settings.syn_update_variance:g},"
            f"{settings.syn_total_variance:g}]", fixed, moving, settings.syn_iterations, pyramid,
            settings, dense=True, masks=masks)
    if not (linear or deformable):
        raise ValueError("the registration settings have no iterations in any stage")
    centring = (["--initial-moving-transform", f"[{fixed},{moving},1]"] if initial_centring
                else [])
    try:
        if linear and deformable:
            _run_ants_registration(
                _common_arguments(f"{prefix}linear_", f"{prefix}linear_Warped.nii.gz", seed)
                + centring + intensities + linear, threads=1, log_path=log_path)
            os.remove(f"{prefix}linear_Warped.nii.gz")
            os.remove(f"{prefix}linear_InverseComposite.h5")
            centring = ["--initial-moving-transform", f"{prefix}linear_Composite.h5"]
            linear = []
        _run_ants_registration(
            _common_arguments(prefix, warped, seed) + centring + intensities + linear
            + deformable, threads=threads if deformable else 1, log_path=log_path)
        if crop:
            _uncrop(warped, template, crop[2])
    finally:
        for path in crop[:2] if crop else ():
            if os.path.exists(path):
                os.remove(path)
    return RegistrationResult(forward_transform=f"{prefix}Composite.h5",
                              inverse_transform=f"{prefix}InverseComposite.h5",
                              warped=warped, elapsed_s=time.perf_counter() - start,
                              log=log_path)


def _compose(fixed, moving, transforms, prefix, *, seed, log_path, collapse=True):
    """One composite transform (and the moving image resampled once) from a chain of
    transforms listed as for ``antsApplyTransforms`` (the first one listed acts first on
    points of ``fixed``): ``antsRegistration`` with the chain as initial transform and a single
    stage of zero iterations, so the composite it writes is exactly the chain. With
    ``collapse`` False the transforms are stored one after the other (displacement fields on
    different grids cannot be merged into one)."""
    arguments = _common_arguments(prefix, f"{prefix}Warped.nii.gz", seed)
    if not collapse:
        arguments[arguments.index("--collapse-output-transforms") + 1] = "0"
    for transform in transforms:
        arguments += ["--initial-moving-transform", os.path.abspath(os.fspath(transform))]
    arguments += ["--transform", "Translation[0.1]",
                  "--metric", f"MeanSquares[{fixed},{moving},1,0]",
                  "--convergence", "[0,1e-6,10]", "--shrink-factors", "1",
                  "--smoothing-sigmas", "0vox"]
    return _run_ants_registration(arguments, threads=1, log_path=log_path)


def register_two_step(moving_path, t1w_path, template_path, *, out_prefix,
                      template_mask_path=None, moving_mask_path=None, t1w_mask_path=None,
                      seed: int = DEFAULT_SEED, threads: int = 1,
                      settings: RegistrationSettings = DEFAULT_SETTINGS) -> RegistrationResult:
    """Register the magnitude to the template through the participant's T1w image.

    First the magnitude is aligned rigidly to the (brain-extracted) T1w of the same session
    (:data:`INTRASUBJECT_SETTINGS`: Mattes mutual information, Mattes et al. 2003; both images
    share the scanner space, so no centring), then the T1w is registered to the template by
    :func:`register_to_template` (rigid, affine, SyN; Avants et al., Med Image Anal
    2008;12:26-41). The two are composed into single forward and inverse composite transforms,
    and the magnitude is resampled onto the template once, so the result has the form of
    :func:`register_to_template`'s; the intermediate files keep the prefixes
    ``{out_prefix}native2t1w_`` and ``{out_prefix}t1w2template_``.

    A whole-head T1w is fine when ``t1w_mask_path`` is not given but ``moving_mask_path`` is:
    the magnitude's brain mask, carried onto the T1w by the rigid step (nearest neighbour),
    brain-extracts the T1w, which is then bias-corrected and rescaled like the magnitude
    (:func:`prepare_moving_image`) before the normalisation.
    """
    moving = _check_3d(moving_path, "moving")
    t1w = _check_3d(t1w_path, "T1w")
    fixed = _check_3d(template_path, "template")
    prefix = _prefix(out_prefix)
    start = time.perf_counter()
    rigid = register_to_template(
        moving, t1w, out_prefix=f"{prefix}native2t1w_", template_mask_path=t1w_mask_path,
        moving_mask_path=moving_mask_path, seed=seed, threads=threads,
        settings=INTRASUBJECT_SETTINGS, initial_centring=False)
    if t1w_mask_path is None and moving_mask_path is not None:
        t1w_mask_path = apply_transforms_to_template(
            moving_mask_path, t1w, [rigid.forward_transform], f"{prefix}t1w_brain_mask.nii.gz",
            interpolation="nearest")
        t1w = prepare_moving_image(t1w, t1w_mask_path, f"{prefix}t1w_brain.nii.gz")
    normalisation = register_to_template(
        t1w, fixed, out_prefix=f"{prefix}t1w2template_", template_mask_path=template_mask_path,
        moving_mask_path=t1w_mask_path, seed=seed, threads=threads, settings=settings)
    log_path = f"{prefix}log.txt"
    if os.path.exists(log_path):
        os.remove(log_path)
    # forward: template point -> T1w point -> native point; inverse: native -> T1w -> template
    _compose(fixed, moving, [normalisation.forward_transform, rigid.forward_transform],
             prefix, seed=seed, log_path=log_path)
    _compose(moving, fixed, [rigid.inverse_transform, normalisation.inverse_transform],
             f"{prefix}inverse_", seed=seed, log_path=log_path)
    inverse = f"{prefix}InverseComposite.h5"
    os.replace(f"{prefix}inverse_Composite.h5", inverse)
    os.remove(f"{prefix}inverse_Warped.nii.gz")
    return RegistrationResult(forward_transform=f"{prefix}Composite.h5",
                              inverse_transform=inverse, warped=f"{prefix}Warped.nii.gz",
                              elapsed_s=time.perf_counter() - start, log=log_path)


# --- applying transforms -------------------------------------------------------------------
def _transform_list(transforms) -> list[str]:
    if isinstance(transforms, (str, os.PathLike)):
        transforms = [transforms]
    paths = [os.path.abspath(os.fspath(t)) for t in transforms]
    for path in paths:
        if not os.path.exists(path):
            raise BadDataError(f"transform {path} does not exist")
    return paths


def _interpolator(name: str) -> str:
    try:
        return _INTERPOLATORS[name.replace("_", "").lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; use one of "
                         + ", ".join(sorted(set(_INTERPOLATORS.values())))) from None


def _resample(moving_image, reference_image, transforms, interpolator):
    ants = _ants()
    return ants.apply_transforms(fixed=reference_image, moving=moving_image,
                                 transformlist=transforms, interpolator=interpolator,
                                 whichtoinvert=[False] * len(transforms)).numpy()


def apply_transforms_to_template(image_path, template_path, transforms, out_path,
                                 interpolation: str = "linear") -> str:
    """Resample a native image onto the template grid with the forward transform(s).

    ``transforms`` is one transform file or a list as for ``antsApplyTransforms`` (ANTs SyN
    registration, Avants et al., Med Image Anal 2008;12:26-41: e.g. the forward composite of
    :func:`register_to_template`). ``interpolation``: ``linear``, ``nearest``,
    ``genericLabel``, ``bSpline`` or ``lanczosWindowedSinc``. 4-D images are resampled volume by
    volume. Integer-valued images (labels, masks) resampled with ``nearest`` or
    ``genericLabel`` are written as integers, everything else as float32, with the template's
    affine.
    """
    transforms = _transform_list(transforms)
    interpolator = _interpolator(interpolation)
    template, template_affine = _read_ants(template_path)
    image = nib.load(os.fspath(image_path))
    _, affine = _load_volume(image_path)
    volumes = image.shape[3] if image.ndim == 4 else 1
    resampled, integers = [], interpolator in ("genericLabel", "nearestNeighbor")
    for volume in range(volumes):
        data, _ = _load_volume(image_path, volume=volume)
        integers = integers and bool(np.all(data == np.rint(data)))
        resampled.append(_resample(_to_ants(data, affine), template, transforms, interpolator))
    result = np.stack(resampled, axis=-1) if image.ndim == 4 else resampled[0]
    if integers:
        return _write_volume(np.rint(result), template_affine, out_path,
                             dtype=_label_dtype(result))
    return _write_volume(result, template_affine, out_path)


def template_image_to_native(image_path, reference_path, inverse_transforms, out_path,
                             interpolation: str = "linear") -> str:
    """Resample a template-space image (e.g. a tissue probability map) onto the native grid of
    ``reference_path`` with the inverse transform(s) of the registration (ANTs; Avants et al.,
    Med Image Anal 2008;12:26-41). Writes float32 with the reference's affine."""
    transforms = _transform_list(inverse_transforms)
    reference_data, reference_affine = _load_volume(reference_path)
    reference = _to_ants(np.zeros(reference_data.shape, np.float32), reference_affine)
    data, affine = _load_volume(image_path)
    resampled = _resample(_to_ants(data, affine), reference, transforms,
                          _interpolator(interpolation))
    return _write_volume(np.where(np.isfinite(resampled), resampled, 0.0), reference_affine,
                         out_path)


def _label_dtype(values):
    largest = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return np.int16 if largest < 32767 else np.int32


def labels_to_native(labels_path, reference_path, inverse_transforms, out_path, *,
                     keep_small_labels: bool = True) -> str:
    """Bring template-space labels onto the native grid of ``reference_path``.

    Labels are resampled with ANTs' ``genericLabel`` interpolation (each label's indicator is
    interpolated linearly and every voxel takes the label of largest weight) through the
    inverse transform(s) of the registration (ANTs SyN; Avants et al., Med Image Anal
    2008;12:26-41). On a coarse native grid a small nucleus can lose every voxel that way;
    with ``keep_small_labels`` such a label is put back: its indicator, smoothed to the native
    voxel size (Gaussian of full width at half maximum one native voxel, which keeps its
    volume), is resampled linearly, and the label takes the ``max(1, round(sum))`` native
    voxels where that fraction is highest (smallest labels first; voxels already given back to
    another small label are skipped). Writes integer labels with the reference's affine
    (the first volume's grid of a 4-D reference).
    """
    transforms = _transform_list(inverse_transforms)
    reference_data, reference_affine = _load_volume(reference_path)
    reference = _to_ants(np.zeros(reference_data.shape, np.float32), reference_affine)
    labels_data, labels_affine = _load_volume(labels_path)
    labels_int = np.rint(labels_data).astype(np.int64)
    native = np.rint(_resample(_to_ants(labels_int.astype(np.float32), labels_affine),
                               reference, transforms, "genericLabel")).astype(np.int64)
    if keep_small_labels:
        native = _restore_vanished_labels(native, labels_int, labels_affine, reference,
                                          reference_affine, transforms)
    return _write_volume(native, reference_affine, out_path, dtype=_label_dtype(native))


def _restore_vanished_labels(native, labels, labels_affine, reference, reference_affine,
                             transforms):
    present = set(np.unique(native).tolist())
    values, counts = np.unique(labels[labels != 0], return_counts=True)
    vanished = [(count, value) for value, count in zip(values.tolist(), counts.tolist())
                if value not in present]
    if not vanished:
        return native
    labels_voxel = np.linalg.norm(labels_affine[:3, :3], axis=0)
    native_voxel = float(np.linalg.norm(reference_affine[:3, :3], axis=0).max())
    sigma_vox = native_voxel / (2 * np.sqrt(2 * np.log(2))) / labels_voxel
    margin = np.ceil(4 * sigma_vox).astype(int) + 2
    taken = np.zeros(native.shape, dtype=bool)
    for _, value in sorted(vanished):
        indicator = labels == value
        where = np.argwhere(indicator)
        low = np.maximum(where.min(axis=0) - margin, 0)
        high = np.minimum(where.max(axis=0) + margin + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        smoothed = ndimage.gaussian_filter(indicator[box].astype(np.float32), sigma_vox,
                                           mode="constant", truncate=4.0)
        box_affine = labels_affine.copy()
        box_affine[:3, 3] = labels_affine[:3, :3] @ low + labels_affine[:3, 3]
        fraction = _resample(_to_ants(smoothed, box_affine), reference, transforms, "linear")
        fraction = np.where(np.isfinite(fraction), fraction, 0.0)
        fraction[taken] = 0.0
        candidates = np.flatnonzero(fraction.ravel() > 0)
        if candidates.size == 0:
            LOGGER.warning("Label %d lies outside the native grid: not kept", value)
            continue
        wanted = max(1, int(round(float(fraction.sum()))))
        order = candidates[np.argsort(-fraction.ravel()[candidates], kind="stable")][:wanted]
        voxels = np.unravel_index(order, native.shape)
        native[voxels] = value
        taken[voxels] = True
        LOGGER.info("Label %d vanished on the native grid; kept in %d voxel(s)", value,
                    order.size)
    return native


# --- quality -------------------------------------------------------------------------------
def normalized_mutual_information(a, b, *, bins: int = 64) -> float:
    """Normalised mutual information (H(A) + H(B)) / H(A, B) of two samples (Studholme et al.,
    Pattern Recognit 1999;32:71-86): 1 for independent images, 2 for a one-to-one relation.
    Each sample is binned between its 0.5 and 99.5 percentiles (values beyond fall in the end
    bins)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()

    def _bin(values):
        low, high = np.percentile(values, [0.5, 99.5])
        if not high > low:
            return np.zeros(values.shape, dtype=np.int64)
        return np.clip(((values - low) / (high - low) * bins).astype(np.int64), 0, bins - 1)

    joint = np.bincount(_bin(a) * bins + _bin(b), minlength=bins * bins).astype(np.float64)
    joint /= joint.sum()

    def _entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_2d = joint.reshape(bins, bins)
    joint_entropy = _entropy(joint)
    if joint_entropy == 0:
        return 2.0
    return (_entropy(joint_2d.sum(axis=1)) + _entropy(joint_2d.sum(axis=0))) / joint_entropy


def registration_quality(warped_moving_path, template_path, template_mask_path, *,
                         warped_mask_path=None, bins: int = 64) -> dict:
    """Agreement of a registered image with the template.

    ``nmi``: normalised mutual information (Studholme et al., Pattern Recognit 1999;32:71-86)
    between the warped image and the template inside the template brain mask — the quantity
    the Mattes mutual-information metric of the registration (Mattes et al. 2003) optimises,
    scale-free, between 1 and 2. ``dice_brain``: Dice overlap of the warped brain (the
    warped mask when ``warped_mask_path`` is given, otherwise the warped image above 5 % of
    its 99th percentile, holes filled) with the template mask. All images must be on the
    template grid.
    """
    warped, _ = _load_volume(warped_moving_path)
    template, _ = _load_volume(template_path)
    template_mask = _load_volume(template_mask_path)[0] > 0.5
    for name, array in (("warped image", warped), ("template mask", template_mask)):
        if array.shape != template.shape:
            raise BadDataError(f"{name} {array.shape} is not on the template grid "
                               f"{template.shape} of {template_path}")
    if not template_mask.any():
        raise BadDataError(f"template mask {template_mask_path} is empty")
    if warped_mask_path is not None:
        warped_mask = _load_volume(warped_mask_path)[0] > 0.5
    else:
        positive = warped[warped > 0]
        threshold = 0.05 * float(np.percentile(positive, 99)) if positive.size else 0.0
        warped_mask = ndimage.binary_fill_holes(warped > threshold)
    overlap = np.logical_and(warped_mask, template_mask).sum()
    dice = 2.0 * overlap / (warped_mask.sum() + template_mask.sum())
    nmi = normalized_mutual_information(template[template_mask], warped[template_mask],
                                        bins=bins)
    return {"nmi": float(nmi), "dice_brain": float(dice)}
