"""The participant's own brain tissue classes (CSF, grey matter, white matter) in native space.

Three steps, each a plain function on arrays or files:

1. :func:`template_tissue_priors` writes CSF, grey- and white-matter probability maps on the
   MNI152NLin2009cAsym 1 mm grid, from the MNI ICBM 2009 tissue probability maps shipped with
   nilearn (Fonov et al., NeuroImage 2011;54:313-327). The caller warps them to the native grid
   with the inverse template transform.
2. :func:`classify_tissue` classifies the native brain with Atropos (Avants et al.,
   Neuroinformatics 2011;9:381-400): a Gaussian finite mixture model over one or more native
   contrasts (bias-corrected magnitude, R2*, susceptibility), initialised from the warped priors,
   which also weight the posterior probabilities, with a Markov random field (MRF) prior that
   smooths the labelling.
3. :func:`restrict_to_grey_matter` keeps the voxels of cortical atlas regions only where the
   participant's grey-matter posterior is high.

Class order and label values follow the usual Atropos convention for brain tissue:
1 CSF, 2 grey matter, 3 white matter (0 is background, outside the brain mask).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .config import DEFAULT_SEED
from .errors import BadDataError
from .registration import bounding_box

#: Tissue classes, in Atropos class order; the hard segmentation gives class ``k`` the label
#: ``k + 1``.
CLASSES = ("csf", "gm", "wm")
LABELS = {name: index + 1 for index, name in enumerate(CLASSES)}

#: Fewest brain-mask voxels :func:`classify_tissue` accepts.
MIN_MASK_VOXELS = 1000
#: Lower bound on each class' prior probability inside the brain mask (before the priors are
#: renormalised to sum to one): a warped prior of exactly zero would forbid a class outright
#: (posterior = prior^w * ...), whatever the images show, e.g. CSF in the enlarged ventricles or
#: sulci of an atrophic brain.
PRIOR_FLOOR = 0.01
#: Size of the seeded perturbation that breaks exact ties between prior probabilities.
TIE_BREAK_JITTER = 1e-5
#: Each feature is mapped to ``(x - p1) / (p99 - p1)`` (percentiles inside the mask) and clipped
#: to this range, so that vessels, calcifications or artefacts do not dominate the Gaussian
#: class covariances...
FEATURE_CLIP = (-1.0, 2.0)
#: ...then multiplied by this factor: Atropos rejects a class whose covariance determinant is
#: below 1e-6 (an absolute bound), which three unit-range features with a within-class
#: standard deviation of 0.1 already reach (0.01^3).
FEATURE_SCALE = 100.0
#: Bounds of a plausible classification: each class covers at least MIN_CLASS_FRACTION and at
#: most MAX_CLASS_FRACTION of the brain mask, and the hard grey-matter class overlaps the voxels
#: where the grey-matter prior exceeds 0.5 with a Dice coefficient of at least MIN_GM_PRIOR_DICE.
MIN_CLASS_FRACTION = 0.01
MAX_CLASS_FRACTION = 0.90
MIN_GM_PRIOR_DICE = 0.2


#: Changes whenever :func:`template_tissue_priors` writes different maps from the same inputs,
#: so that cached maps from an earlier recipe are rebuilt.
PRIORS_RECIPE_VERSION = 1
_PRIOR_LABELS = {"csf": "CSF", "gm": "GM", "wm": "WM"}


@dataclasses.dataclass(frozen=True)
class TissueResult:
    """Output of :func:`classify_tissue`.

    Attributes
    ----------
    posteriors : dict of str to numpy.ndarray
        ``{"csf", "gm", "wm"}``: posterior probability of each class (float32, native grid),
        summing to one inside the brain mask and zero outside.
    labels : numpy.ndarray of uint8
        Hard segmentation: 0 background (outside the mask), 1 CSF, 2 grey matter, 3 white
        matter (see :data:`LABELS`).
    volumes_ml : dict of str to float
        Volume of each class of the hard segmentation (mL).
    gm_prior_dice : float
        Dice coefficient of the hard grey-matter class with the voxels where the grey-matter
        prior exceeds 0.5 (a sanity check: see :data:`MIN_GM_PRIOR_DICE`).
    """

    posteriors: dict
    labels: np.ndarray
    volumes_ml: dict
    gm_prior_dice: float


# --- template priors --------------------------------------------------------------------------
def _priors_fingerprint(mask_bytes: bytes) -> str:
    import nilearn

    digest = hashlib.sha256()
    digest.update(hashlib.sha256(mask_bytes).digest())
    digest.update(json.dumps({"recipe": PRIORS_RECIPE_VERSION, "nilearn": nilearn.__version__},
                             sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def _write_atomically(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def template_tissue_priors(template_mask_path, out_dir) -> dict[str, Path]:
    """Write CSF, grey- and white-matter probability maps on the template grid.

    The grey- (GM) and white-matter (WM) maps are the MNI ICBM 2009 probability maps shipped
    with nilearn (``load_mni152_gm_template``/``load_mni152_wm_template``, 1 mm; Fonov et al.,
    NeuroImage 2011;54:313-327), carried onto the MNI152NLin2009cAsym 1 mm grid by world
    coordinates (:func:`qsmprep.atlases.build.template_tissue_probabilities`, the code path the
    cortical grey-matter restriction of the atlas uses). nilearn's maps belong to the ICBM 2009a
    nonlinear *symmetric* template; as for the atlas, they are taken as aligned with the 2009c
    asymmetric one. Inside the template brain mask,
    ``CSF = clip(1 - GM - WM, 0, 1)``, and where ``GM + WM`` exceeds one by rounding the two are
    scaled down so that the three sum to one; outside it all three are zero.

    The files are float32, gzipped with a gzip time stamp of 0, so the same inputs give
    byte-identical files. Each has a JSON sidecar holding a fingerprint of the inputs (the mask
    file's content, the nilearn version and :data:`PRIORS_RECIPE_VERSION`); when all three maps
    and sidecars exist with the fingerprint of the current inputs, nothing is recomputed.

    Parameters
    ----------
    template_mask_path : str or os.PathLike
        Brain mask of the MNI152NLin2009cAsym template, 1 mm
        (``tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz``).
    out_dir : str or os.PathLike
        Folder for the maps (created if needed).

    Returns
    -------
    dict of str to pathlib.Path
        ``{"csf": ..., "gm": ..., "wm": ...}``: the files
        ``tpl-MNI152NLin2009cAsym_res-01_label-<CSF|GM|WM>_probseg.nii.gz`` in ``out_dir``.

    Raises
    ------
    BadDataError
        When the mask is not on the template grid or is empty.

    References
    ----------
    Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL; Brain Development
    Cooperative Group. Unbiased average age-appropriate atlases for pediatric studies.
    NeuroImage 2011;54:313-327.
    """
    from qsmprep.atlases import TEMPLATE
    from qsmprep.atlases.build import (
        TEMPLATE_AFFINE,
        TEMPLATE_SHAPE,
        nifti_gz_bytes,
        template_tissue_probabilities,
    )

    mask_path = Path(template_mask_path)
    out_dir = Path(out_dir)
    names = {tissue: f"tpl-{TEMPLATE}_res-01_label-{label}_probseg"
             for tissue, label in _PRIOR_LABELS.items()}
    paths = {tissue: out_dir / f"{name}.nii.gz" for tissue, name in names.items()}
    sidecars = {tissue: out_dir / f"{name}.json" for tissue, name in names.items()}

    fingerprint = _priors_fingerprint(mask_path.read_bytes())
    if all(path.is_file() for path in paths.values()) and all(
            _sidecar_fingerprint(sidecar) == fingerprint for sidecar in sidecars.values()):
        return paths

    image = nib.load(os.fspath(mask_path))
    if image.shape != TEMPLATE_SHAPE or not np.allclose(image.affine, TEMPLATE_AFFINE,
                                                        atol=1e-3):
        raise BadDataError(f"template brain mask {mask_path}: expected the {TEMPLATE} 1 mm grid "
                           f"{TEMPLATE_SHAPE} with origin {TEMPLATE_AFFINE[:3, 3].tolist()}, "
                           f"got shape {image.shape} with origin {image.affine[:3, 3].tolist()}")
    mask = np.asarray(image.dataobj) > 0
    if not mask.any():
        raise BadDataError(f"template brain mask {mask_path} is empty")

    grey, white = (np.clip(np.asarray(data, np.float32), 0.0, 1.0)
                   for data in template_tissue_probabilities())
    total = grey + white
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-12), 1.0).astype(np.float32)
    grey, white = grey * scale * mask, white * scale * mask
    csf = np.clip(1.0 - grey - white, 0.0, 1.0) * mask
    maps = {"csf": csf, "gm": grey, "wm": white}

    out_dir.mkdir(parents=True, exist_ok=True)
    for tissue, data in maps.items():
        description = f"{_PRIOR_LABELS[tissue]} probability, MNI ICBM 2009 (nilearn)"
        _write_atomically(paths[tissue], nifti_gz_bytes(data.astype(np.float32), description))
        sidecar = {
            "Description": f"{_PRIOR_LABELS[tissue]} prior probability for tissue "
                           "classification",
            "Template": TEMPLATE,
            "Sources": "MNI ICBM 2009 grey- and white-matter probability maps (nilearn; "
                       "Fonov et al., NeuroImage 2011;54:313-327), carried onto the template "
                       "grid by world coordinates; CSF = clip(1 - GM - WM, 0, 1) inside the "
                       "template brain mask",
            "TemplateMask": mask_path.name,
            "Fingerprint": fingerprint,
        }
        _write_atomically(sidecars[tissue],
                          (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return paths


def _sidecar_fingerprint(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("Fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


# --- classification ---------------------------------------------------------------------------
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * np.count_nonzero(a & b) / total if total else float("nan")


def _named_features(features) -> list[tuple[str, np.ndarray]]:
    if isinstance(features, Mapping):
        items = [(f"feature {name!r}", value) for name, value in features.items()]
    elif isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        items = [(f"feature {index}", value) for index, value in enumerate(features)]
    else:
        raise BadDataError("features must be a list (or dict) of 3-D arrays, got "
                           f"{type(features).__name__}")
    if not items:
        raise BadDataError("no features given: give at least one 3-D image (e.g. the "
                           "bias-corrected magnitude)")
    return [(name, np.asarray(value)) for name, value in items]


def _normalised_feature(name: str, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(x - p1) / (p99 - p1)`` inside ``mask``, clipped to :data:`FEATURE_CLIP` and scaled by
    :data:`FEATURE_SCALE`; 0 outside."""
    values = data[mask].astype(np.float64)
    bad = np.count_nonzero(~np.isfinite(values))
    if bad:
        raise BadDataError(f"{name} has {bad} non-finite (NaN or infinite) voxels inside the "
                           "brain mask")
    if values.max() == values.min():
        raise BadDataError(f"{name} is constant ({values[0]:g}) inside the brain mask")
    low, high = np.percentile(values, [1.0, 99.0])
    if not high > low:
        raise BadDataError(f"{name} has no contrast inside the brain mask: its 1st and 99th "
                           f"percentiles are equal ({low:g})")
    normalised = np.zeros(data.shape, np.float32)
    normalised[mask] = FEATURE_SCALE * np.clip((values - low) / (high - low),
                                               *FEATURE_CLIP)
    return normalised


def _checked_priors(priors, mask: np.ndarray, box, seed) -> list[np.ndarray]:
    """The priors on the grid of ``box``, inside ``mask``: floored, jittered to break exact
    ties, and summing to one; zero outside the mask."""
    if not isinstance(priors, Mapping):
        raise BadDataError(f"priors must be a dict with keys {CLASSES}, got "
                           f"{type(priors).__name__}")
    missing = [name for name in CLASSES if name not in priors]
    if missing:
        raise BadDataError(f"priors lack the class(es) {missing}; expected keys {CLASSES}")
    mask_box = mask[box]
    arrays = []
    for name in CLASSES:
        data = np.asarray(priors[name], dtype=np.float32)
        if data.shape != mask.shape:
            raise BadDataError(f"{name} prior has shape {data.shape}, the brain mask "
                               f"{mask.shape}")
        values = data[box][mask_box]
        if not np.all(np.isfinite(values)):
            raise BadDataError(f"{name} prior has non-finite voxels inside the brain mask")
        if not np.any(values > 0):
            raise BadDataError(f"{name} prior is empty (zero everywhere) inside the brain mask: "
                               "were the template priors warped to this grid?")
        arrays.append(np.clip(values, 0.0, 1.0))
    stacked = np.stack(arrays)
    if not np.any(stacked[CLASSES.index("gm")] > 0.5):
        raise BadDataError("gm prior never exceeds 0.5 inside the brain mask, so the "
                           "classification cannot be checked against it")
    rng = np.random.default_rng(seed)
    stacked = np.maximum(stacked, PRIOR_FLOOR)
    stacked += rng.uniform(0.0, TIE_BREAK_JITTER, size=stacked.shape).astype(np.float32)
    stacked /= stacked.sum(axis=0, keepdims=True)
    volumes = []
    for values in stacked:
        volume = np.zeros(mask_box.shape, np.float32)
        volume[mask_box] = values
        volumes.append(volume)
    return volumes


def estimation_strides(spacing, estimation_voxel_mm) -> tuple[int, ...]:
    """Sampling step along each axis of the grid on which Atropos estimates the mixture model.

    ``max(1, round(estimation_voxel_mm / voxel size))`` per axis: 2 for a 1 mm grid and the
    default 2 mm, 1 (the full grid) for voxels of 1.5 mm or more; all 1 when
    ``estimation_voxel_mm`` is None or 0.
    """
    if not estimation_voxel_mm:
        return (1,) * len(spacing)
    return tuple(max(1, round(float(estimation_voxel_mm) / float(size))) for size in spacing)


@contextlib.contextmanager
def _output_to(path):
    """Send what this process writes to its stdout and stderr (file descriptors 1 and 2, where
    the C++ code of ANTs prints its messages) to the file ``path`` for the duration."""
    import ctypes

    def flush_c_streams():
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    flush_c_streams()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "wb") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                flush_c_streams()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for handle in saved:
            os.close(handle)


def _atropos_failure(log_path) -> str:
    """The error lines of an Atropos log (else its last lines), on one line."""
    try:
        lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "no log"
    descriptions = [line.split(":", 1)[1].strip() for line in lines
                    if line.startswith("Description:")]
    errors = [line for line in lines if "error" in line.lower()]
    return " | ".join((descriptions or errors or lines[-3:])[-3:]) or "no message"


def _run_atropos(features, mask, priors, spacing, *, prior_weight, iterations, mrf_smoothing):
    """Atropos on arrays sharing one grid; returns the posterior of each class (float32)."""
    import ants
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    def image(data, pixel_type="float"):
        # Atropos uses only the voxel spacing (MRF neighbour distances); origin and
        # direction are left at their defaults, the same for every input.
        return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                               spacing=tuple(float(s) for s in spacing)).clone(pixel_type)

    with tempfile.TemporaryDirectory(prefix="qsmprep-atropos-") as folder:
        prior_pattern = os.path.join(folder, "prior%02d.nii")
        posterior_pattern = os.path.join(folder, "posterior%02d.nii")
        for index, prior in enumerate(priors, start=1):
            ants.image_write(image(prior), prior_pattern % index)
        segmentation = image(np.zeros(mask.shape, np.float32), "unsigned int")
        arguments = ["-d", "3"]
        for feature in features:
            arguments += ["-a", image(feature)]
        arguments += [
            "-x", image(mask, "unsigned int"),
            "-i", f"PriorProbabilityImages[{len(CLASSES)},{prior_pattern},{prior_weight:g}]",
            "-k", "Gaussian",
            "-p", "Socrates[1]",
            "-m", f"[{mrf_smoothing:g},1x1x1]",
            "-c", f"[{int(iterations)},0]",
            # Atropos' own random generator (ties, unlabelled voxels) starts from its fixed
            # seed; without this it is seeded from the clock.
            "-r", "0",
            # The distance priors (used only where every prior is zero, which the floor rules
            # out) by a Euclidean distance map rather than fast marching: same result, and
            # about 6 s less on a 1 mm brain.
            "-e", "1",
            "-o", f"[{get_pointer_string(segmentation)},{posterior_pattern}]",
            "-v", "1",  # the log (kept only to explain a failure)
        ]
        log_path = os.path.join(folder, "atropos.log")
        with _output_to(log_path):
            status = get_lib_fn("Atropos")(process_arguments(arguments))
        if status != 0:
            raise RuntimeError(f"Atropos exited with status {status}: "
                               f"{_atropos_failure(log_path)}")
        posteriors = []
        for index in range(1, len(CLASSES) + 1):
            path = posterior_pattern % index
            if not os.path.isfile(path):
                raise RuntimeError(f"Atropos wrote no posterior probability image {index}")
            posteriors.append(ants.image_read(path).numpy().astype(np.float32))
    return posteriors


def _mixture_from_posteriors(samples: np.ndarray, posteriors: np.ndarray):
    """Proportion, mean and covariance of each class, weighted by its posterior (the M-step).

    ``samples`` is (voxels, features), ``posteriors`` (classes, voxels)."""
    model = []
    for name, weights in zip(CLASSES, posteriors.astype(np.float64)):
        total = float(weights.sum())
        if not total > 0:
            raise BadDataError(f"tissue classification degenerated: the {name} class is empty")
        mean = weights @ samples / total
        centred = samples - mean
        covariance = (centred * weights[:, None]).T @ centred / total
        model.append((total / samples.shape[0], mean, covariance))
    return model


def _log_likelihoods(samples: np.ndarray, model) -> np.ndarray:
    """Gaussian log-likelihood of every sample under every class, floored like Atropos'
    likelihoods (at 1e-10); (classes, voxels)."""
    from scipy.linalg import solve_triangular

    dimension = samples.shape[1]
    result = np.empty((len(model), samples.shape[0]), np.float64)
    for index, (name, (_, mean, covariance)) in enumerate(zip(CLASSES, model)):
        try:
            factor = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError as error:
            raise BadDataError(f"tissue classification degenerated: the covariance of the "
                               f"{name} class is singular ({error})") from error
        whitened = solve_triangular(factor, (samples - mean).T, lower=True)
        log_determinant = 2.0 * float(np.sum(np.log(np.diag(factor))))
        result[index] = -0.5 * (np.sum(whitened ** 2, axis=0) + log_determinant
                                + dimension * np.log(2.0 * np.pi))
    return np.maximum(result, np.log(1e-10))


def _mrf_kernel(spacing) -> np.ndarray:
    """Inverse physical distance to each of the 26 neighbours (0 at the centre)."""
    offsets = np.stack(np.meshgrid(*([np.arange(-1, 2)] * 3), indexing="ij"), axis=-1)
    distance = np.sqrt(np.sum((offsets * np.asarray(spacing, np.float64)) ** 2, axis=-1))
    kernel = np.zeros(distance.shape)
    kernel[distance > 0] = 1.0 / distance[distance > 0]
    return kernel


def _softmax(log_values: np.ndarray) -> np.ndarray:
    shifted = np.exp(log_values - log_values.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def _classify_full_resolution(features, mask, priors, spacing, model, *, prior_weight,
                              mrf_smoothing, sweeps: int = 2) -> list[np.ndarray]:
    """Posteriors on the full grid from a mixture model estimated elsewhere.

    Atropos' "Socrates" posterior of class k at a voxel,
    ``(prior_k pi_k / sum_c prior_c pi_c)^w (likelihood_k mrf_k)^(1 - w)``, normalised over the
    classes, with ``mrf_k = softmax_k(beta * sum of 1/distance over the 26 neighbours labelled
    k)``. The labels start as the most probable class without the MRF term and are updated
    synchronously ``sweeps`` times.
    """
    from scipy import ndimage

    samples = np.stack([feature[mask] for feature in features], axis=1).astype(np.float64)
    prior = np.stack([volume[mask] for volume in priors]).astype(np.float64)
    proportions = np.array([entry[0] for entry in model])[:, None]
    weighted = np.maximum(prior * proportions, 1e-10)
    log_prior = np.log(weighted / weighted.sum(axis=0, keepdims=True))
    log_likelihood = _log_likelihoods(samples, model)
    data_term = prior_weight * log_prior + (1.0 - prior_weight) * log_likelihood
    posterior = _softmax(data_term)
    if mrf_smoothing > 0:
        kernel = _mrf_kernel(spacing)
        for _ in range(sweeps):
            labels = np.argmax(posterior, axis=0)
            neighbours = np.empty_like(posterior)
            for index in range(len(CLASSES)):
                members = np.zeros(mask.shape, np.float32)
                members[mask] = labels == index
                neighbours[index] = ndimage.correlate(members, kernel, mode="constant")[mask]
            log_mrf = np.log(np.maximum(_softmax(mrf_smoothing * neighbours), 1e-10))
            posterior = _softmax(data_term + (1.0 - prior_weight) * log_mrf)
    volumes = []
    for values in posterior.astype(np.float32):
        volume = np.zeros(mask.shape, np.float32)
        volume[mask] = values
        volumes.append(volume)
    return volumes


def classify_tissue(features, mask, priors, affine, *, prior_weight: float = 0.25,
                    iterations: int = 5, mrf_smoothing: float = 0.1,
                    estimation_voxel_mm: float | None = 2.0,
                    seed: int = DEFAULT_SEED) -> TissueResult:
    """Classify the native brain into CSF, grey and white matter with Atropos.

    Each feature is normalised robustly inside the brain mask (``(x - p1) / (p99 - p1)`` with
    its 1st and 99th percentiles, clipped to :data:`FEATURE_CLIP`), so that contrasts in
    different units (arbitrary magnitude units, R2* in 1/s, susceptibility in ppm) weigh alike.
    Atropos (Avants et al., 2011) then fits a three-class Gaussian mixture to the joint
    feature vectors by expectation-maximisation, initialised from the priors
    (``PriorProbabilityImages``), with the "Socrates" posterior
    ``prior^w * (likelihood * MRF)^(1 - w)`` (``w = prior_weight``) and a Markov random field
    (MRF) over the 26 neighbours of each voxel. The priors are first floored at
    :data:`PRIOR_FLOOR` and renormalised, so that the images can overrule a wrong prior
    (atrophy, enlarged ventricles).

    **Estimation on a coarser grid.** Atropos' MRF costs about 4 s per iteration on a 1 mm
    brain (single-threaded), so on grids finer than ``estimation_voxel_mm`` the mixture
    model is estimated by Atropos on every n-th voxel along each axis
    (:func:`estimation_strides`; every 2nd on a 1 mm grid, i.e. 2 mm voxels holding the
    full-resolution noise and partial volume), and the posteriors of the full grid are then
    computed from that model with the same Socrates formula and two synchronous MRF sweeps
    (:func:`_classify_full_resolution`). On coarser grids, or with
    ``estimation_voxel_mm=None``, Atropos classifies the full grid itself.

    The result is repeatable: Atropos' random generator (used only to break ties) runs from its
    fixed seed (``--use-random-seed 0``), and exact ties between prior probabilities are broken
    beforehand by a perturbation of at most :data:`TIE_BREAK_JITTER` drawn from ``seed``. The
    same inputs and seed give bit-identical output.

    The result is checked: every class must cover between :data:`MIN_CLASS_FRACTION` and
    :data:`MAX_CLASS_FRACTION` of the brain mask, and the hard grey-matter class must overlap
    the voxels where the grey-matter prior exceeds 0.5 with a Dice coefficient of at least
    :data:`MIN_GM_PRIOR_DICE` (a grey-matter class elsewhere means that the classes swapped or
    that the priors are not aligned with the images).

    Parameters
    ----------
    features : list (or dict) of numpy.ndarray, 3-D
        One or more contrasts on the native grid, e.g. the bias-corrected echo-combined
        magnitude, R2* (1/s) and susceptibility (ppm); at most six (Atropos' limit). With a
        dict, its keys name the features in error messages.
    mask : numpy.ndarray of bool, 3-D
        Native brain mask; voxels outside it are background.
    priors : dict of str to numpy.ndarray, 3-D
        ``{"csf", "gm", "wm"}``: prior probabilities on the native grid (the maps of
        :func:`template_tissue_priors` warped by the caller).
    affine : array_like, 4 x 4
        Voxel-to-world affine of the native grid; its voxel size sets the distances of the
        MRF neighbourhood and the class volumes.
    prior_weight : float, optional
        Weight ``w`` in [0, 1] of the priors in the posterior (0: initialisation only).
    iterations : int, optional
        Number of expectation-maximisation iterations of Atropos (all are run).
    mrf_smoothing : float, optional
        MRF smoothing factor ``beta`` (0: no spatial smoothing).
    estimation_voxel_mm : float or None, optional
        Voxel size (mm) of the grid on which the mixture model is estimated (see above);
        None: always the full grid.
    seed : int, optional
        Seed of the tie-breaking perturbation of the priors.

    Returns
    -------
    TissueResult
        Posterior probability maps (float32), hard segmentation (uint8: the most probable
        class, 1 CSF, 2 GM, 3 WM; 0 outside the mask), class volumes (mL) and the grey-matter
        prior Dice.

    Raises
    ------
    BadDataError
        When shapes differ, the mask is empty or smaller than :data:`MIN_MASK_VOXELS`, a feature
        is not finite inside the mask or has no contrast there, a prior is missing or empty
        inside the mask, Atropos fails, or the classification is implausible (see above).

    References
    ----------
    Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework for
    n-tissue segmentation with evaluation on public data. Neuroinformatics 2011;9:381-400.
    """
    named = _named_features(features)
    if len(named) > 6:
        raise BadDataError(f"{len(named)} features given; Atropos takes at most 6")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise BadDataError(f"brain mask must be 3-D, got shape {mask.shape}")
    mask = mask.astype(bool)
    for name, data in named:
        if data.shape != mask.shape:
            raise BadDataError(f"{name} has shape {data.shape}, the brain mask {mask.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise BadDataError(f"affine must be a finite 4 x 4 matrix, got shape {affine.shape}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(spacing > 0):
        raise BadDataError(f"affine has a zero voxel size: {spacing.tolist()}")
    if not 0.0 <= prior_weight <= 1.0:
        raise BadDataError(f"prior_weight must be in [0, 1], got {prior_weight}")
    if int(iterations) < 1:
        raise BadDataError(f"iterations must be at least 1, got {iterations}")
    if mrf_smoothing < 0:
        raise BadDataError(f"mrf_smoothing must be non-negative, got {mrf_smoothing}")
    voxels = int(np.count_nonzero(mask))
    if voxels == 0:
        raise BadDataError("brain mask is empty")
    if voxels < MIN_MASK_VOXELS:
        raise BadDataError(f"brain mask is too small for tissue classification: {voxels} voxels "
                           f"(at least {MIN_MASK_VOXELS} needed)")

    box = bounding_box(mask, margin_voxels=1)
    mask_box = mask[box]
    normalised = [_normalised_feature(name, np.asarray(data)[box], mask_box)
                  for name, data in named]
    prior_volumes = _checked_priors(priors, mask, box, seed)

    strides = estimation_strides(spacing, estimation_voxel_mm)
    coarse = tuple(slice(None, None, step) for step in strides)
    if np.count_nonzero(mask_box[coarse]) < MIN_MASK_VOXELS:
        strides, coarse = (1, 1, 1), (slice(None),) * 3
    settings = {"prior_weight": float(prior_weight), "iterations": int(iterations),
                "mrf_smoothing": float(mrf_smoothing)}
    try:
        estimated = _run_atropos([feature[coarse] for feature in normalised], mask_box[coarse],
                                 [volume[coarse] for volume in prior_volumes],
                                 spacing * np.asarray(strides), **settings)
    except Exception as error:  # antspyx/ITK raise plain exceptions
        raise BadDataError(f"Atropos tissue classification failed: "
                           f"{type(error).__name__}: {error}") from error
    if strides == (1, 1, 1):
        posteriors_box = estimated
    else:
        coarse_mask = mask_box[coarse]
        samples = np.stack([feature[coarse][coarse_mask] for feature in normalised], axis=1)
        model = _mixture_from_posteriors(
            samples.astype(np.float64), np.stack([volume[coarse_mask] for volume in estimated]))
        posteriors_box = _classify_full_resolution(
            normalised, mask_box, prior_volumes, spacing, model,
            prior_weight=float(prior_weight), mrf_smoothing=float(mrf_smoothing))

    posteriors = {}
    for name, data in zip(CLASSES, posteriors_box):
        full = np.zeros(mask.shape, np.float32)
        full[box] = np.where(mask_box, data, 0.0)
        posteriors[name] = full
    stacked = np.stack([posteriors[name][mask] for name in CLASSES])
    if not np.all(np.isfinite(stacked)) or np.any(stacked.sum(axis=0) <= 0):
        raise BadDataError("Atropos returned non-finite or all-zero posterior probabilities "
                           "inside the brain mask")
    labels = np.zeros(mask.shape, np.uint8)
    labels[mask] = (np.argmax(stacked, axis=0) + 1).astype(np.uint8)

    inside = labels[mask]
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    volumes_ml = {}
    for name, label in LABELS.items():
        count = int(np.count_nonzero(inside == label))
        fraction = count / voxels
        if not MIN_CLASS_FRACTION <= fraction <= MAX_CLASS_FRACTION:
            raise BadDataError(
                f"tissue classification degenerated: {name} takes {100 * fraction:.1f} % of the "
                f"brain mask (expected {100 * MIN_CLASS_FRACTION:g}-"
                f"{100 * MAX_CLASS_FRACTION:g} %); check the features and the prior alignment")
        volumes_ml[name] = count * voxel_ml
    gm_prior = np.asarray(priors["gm"]) > 0.5
    dice = _dice(labels == LABELS["gm"], gm_prior & mask)
    if not dice >= MIN_GM_PRIOR_DICE:
        raise BadDataError(
            f"tissue classification disagrees with the grey-matter prior: Dice of the grey-"
            f"matter class with prior > 0.5 is {dice:.2f} (at least {MIN_GM_PRIOR_DICE:g} "
            "expected); the classes may have swapped or the priors are misaligned")
    return TissueResult(posteriors=posteriors, labels=labels, volumes_ml=volumes_ml,
                        gm_prior_dice=float(dice))


def classes_from_priors(priors, mask, affine) -> TissueResult:
    """The fallback of a failed :func:`classify_tissue`: the priors themselves, normalised to
    sum to one inside ``mask``, as posteriors, and their most probable class as the hard
    segmentation (no image information; ``gm_prior_dice`` is 1 by construction)."""
    mask = np.asarray(mask, dtype=bool)
    stacked = np.stack([np.clip(np.asarray(priors[name], np.float32), 0, None) * mask
                        for name in CLASSES])
    total = stacked.sum(axis=0)
    stacked = np.where(total > 0, stacked / np.maximum(total, 1e-6), 0.0).astype(np.float32)
    labels = np.where(mask, np.argmax(stacked, axis=0) + 1, 0).astype(np.uint8)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    return TissueResult(
        posteriors=dict(zip(CLASSES, stacked)), labels=labels,
        volumes_ml={name: int(np.count_nonzero(labels == label)) * voxel_ml
                    for name, label in LABELS.items()},
        gm_prior_dice=1.0)


# --- cortical regions -------------------------------------------------------------------------
def restrict_to_grey_matter(labels, table, gm_probability, *, cortical_regions,
                            threshold: float = 0.5) -> np.ndarray:
    """Keep the voxels of cortical atlas regions only where the participant has grey matter.

    A cortical label warped from a template (e.g. a cytoarchitectonic motor or premotor
    cortex) also covers the white matter under the cortex and the CSF of the sulci. Cortical
    iron, the hallmark of corticobasal syndrome (CBS), is diluted in such a region's mean by the
    white matter (whose susceptibility is negative) and by the sulcal CSF. This function removes
    the voxels of the named regions whose grey-matter posterior (:func:`classify_tissue`) is
    below ``threshold``; other labels are returned untouched.

    Parameters
    ----------
    labels : numpy.ndarray of int, 3-D
        Atlas labels on the native grid.
    table : list of dict
        Atlas rows with ``index`` and ``name``.
    gm_probability : numpy.ndarray, 3-D
        Grey-matter posterior probability on the same grid (``TissueResult.posteriors["gm"]``).
    cortical_regions : sequence of str
        Names (the table's ``name``) of the regions to restrict, e.g. ``motor_cortex``,
        ``premotor_cortex``, ``precentral_gyrus``. Names the table lacks are ignored, so one
        list serves atlases with and without those regions.
    threshold : float, optional
        Smallest grey-matter probability a cortical voxel keeps its label at.

    Returns
    -------
    numpy.ndarray
        A copy of ``labels`` (same dtype) with the cortical voxels below ``threshold`` set to 0.

    Raises
    ------
    BadDataError
        When the grids differ or ``gm_probability`` is not finite on the cortical voxels.

    References
    ----------
    Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework for
    n-tissue segmentation with evaluation on public data. Neuroinformatics 2011;9:381-400.
    """
    labels = np.asarray(labels)
    gm_probability = np.asarray(gm_probability)
    if labels.shape != gm_probability.shape:
        raise BadDataError(f"atlas labels {labels.shape} and grey-matter probability "
                           f"{gm_probability.shape} are not on the same grid")
    if isinstance(cortical_regions, str):
        cortical_regions = (cortical_regions,)
    wanted = set(cortical_regions)
    indices = [int(row["index"]) for row in table if str(row["name"]) in wanted]
    restricted = labels.copy()
    if not indices:
        return restricted
    cortical = np.isin(labels, indices)
    probability = gm_probability[cortical]
    if not np.all(np.isfinite(probability)):
        raise BadDataError("grey-matter probability is not finite on the cortical-region voxels")
    drop = np.zeros(labels.shape, bool)
    drop[cortical] = probability < threshold
    restricted[drop] = 0
    return restricted
