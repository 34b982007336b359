"""Accuracy of every reconstruction stage and chain on every head phantom, scored with QSM-CI.

One command::

    python bench/bench_accuracy.py            # every phantom at 1 mm (about an hour on 2 cores)
    python bench/bench_accuracy.py --quick    # every phantom at 2 mm (about 8 minutes)
    python bench/bench_accuracy.py --quick --phantom textured    # one of them

What it does
------------
1. Builds each phantom of :data:`PHANTOMS`: the analytic head of :mod:`qsmprep.phantom.head`
   (160 x 192 x 160 mm field of view, piecewise constant), the same head with the texture of
   :mod:`qsmprep.phantom.textured`, and the digital subject made from the MNI template
   (:mod:`qsmprep.phantom.template_head`); simulates a 4-echo GRE acquisition (TE
   4/9/14/19 ms, 3 T, B0 along z) of each twice:
   (a) with qsmprep's own forward model (:func:`qsmprep.phantom.signal.simulate_multiecho_gre`)
   and (b) with ``qsm-forward`` (an independent simulator: ``qsm_forward.generate_bids`` fed the
   same susceptibility, M0, R2*, brain mask and a per-tissue R1, writing BIDS MEGRE plus ground
   truth). Noise: a peak SNR of 100 by default, the convention of ``qsm-forward`` and of the 2019
   reconstruction challenge (noise SD per channel = peak signal / 100); the brain SNR of the
   first echo that results is printed.
2. Runs each stage alone from the truth of its input, as the QSM-CI stages do (the true brain
   mask is given to every stage but masking):
   brain mask (magnitude), field mapping = unwrapping x echo fit (raw phase -> total field),
   background removal (true total field -> local field), dipole inversion (true local field ->
   susceptibility).
3. Runs the full chain from raw phase with :func:`qsmprep.qsm.pipeline.reconstruct`, the chain
   the workflow runs node by node (magnitude mask -> unwrapping -> echo fit -> phase-quality
   mask -> background removal -> inversion -> whole-brain referencing): the default chain (the
   defaults of :class:`qsmprep.config.WorkflowConfig`) and, one stage at a time, every other
   choice of :data:`qsmprep.stages.STAGES`.
4. Runs qmrpy's split-Bregman QSM pipeline (a Python port of qMRLab's ``qsm_sb``) on the same
   data and compares it with qsmprep's default chain.
5. Ends with one row per phantom and simulator: the default chain, the default inversion
   alone from the true local field, and qsmprep's TKD from the same field (the dipole-only
   floor, :data:`FLOOR_INVERSION`), with whether the default holds that floor.

Scoring: :func:`qsm_ci.qsm_eval.score_arrays` over the true brain mask (the QSM-CI convention:
voxels a method leaves out count as 0, and ``coverage`` is the fraction of the brain it covers).
Susceptibility maps are referenced to their whole-brain mean (estimates over their own mask, the
truth over the true brain), fields are demeaned the same way; fields are scored in ppm. The
deep-grey-matter slope is the signed slope behind QSM-CI's ``dgm_linearity`` (= |1 - slope|):
regional means of QSM-CI labels 1-6 (caudate, pallidum, putamen, red nucleus, dentate,
substantia nigra), fitted with ``qsm_eval.linear_fit``.

Every stage runs through the stage functions of :mod:`qsmprep.qsm.pipeline` with the parameters
:func:`qsmprep.qsm.pipeline.stage_arguments` gives them (the workflow's), so a method added as a
choice of :data:`qsmprep.stages.STAGES` and of those functions is benchmarked here.

Bench/test-only dependencies: ``qsm-ci`` (scoring, required), ``qsm-forward`` and ``qmrpy``
(skipped with a note when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from qsmprep import config, stages
from qsmprep.phantom.head import make_head_phantom
from qsmprep.phantom.signal import oblique_affine, simulate_multiecho_gre
from qsmprep.qsm import pipeline, referencing
from qsmprep.qsm.dipole import hz_to_ppm, ppm_to_hz

try:
    from qsm_ci import qsm_eval
except ImportError:  # pragma: no cover - reported in main()
    qsm_eval = None

FIELD_OF_VIEW_MM = (160.0, 192.0, 160.0)
ECHO_TIMES_S = (0.004, 0.009, 0.014, 0.019)
FIELD_STRENGTH_T = 3.0
#: qsm-forward's gyromagnetic ratio (MHz/T): its phase is 2 pi field_ppm B0 42.58 TE.
QSM_FORWARD_GAMMA_MHZ_T = 42.58

#: QSM-CI segmentation labels (``qsm_ci.qsm_eval.DSEG_LABELS``) of the phantom's regions
#: (names without ``_left``/``_right``). Labels 1-6 are the nuclei of ``dgm_linearity``.
QSMCI_LABELS = {
    "caudate": 1, "globus_pallidus": 2, "putamen": 3, "red_nucleus": 4, "dentate_nucleus": 5,
    "substantia_nigra": 6, "thalamus": 7, "white_matter": 8, "brainstem": 8,
    "cortical_grey_matter": 9, "cerebellar_cortex": 9, "lateral_ventricle": 10,
    "third_ventricle": 10, "subarachnoid_csf": 10, "vein": 11, "skull": 13, "background": 14,
    "paranasal_sinus": 14, "ear_canal": 14, "scalp": 15, "extracranial_soft_tissue": 15,
}
DEEP_GREY_MATTER_LABELS = (1, 2, 3, 4, 5, 6)

#: Approximate R1 (1/s) at 3 T for qsm-forward's spoiled-GRE weighting, which our phantom does
#: not carry (T1 of WM ~0.85 s, GM ~1.35 s: Wansapura et al., JMRI 1999;9:531-538; CSF ~4 s;
#: blood ~1.65 s, muscle ~1.4 s, fat ~0.4 s: Stanisz et al., MRM 2005;54:507-512).
R1_3T_HZ = {
    "scalp": 2.0, "extracranial_soft_tissue": 0.75, "skull": 2.0, "subarachnoid_csf": 0.25,
    "lateral_ventricle": 0.25, "third_ventricle": 0.25, "cortical_grey_matter": 0.75,
    "cerebellar_cortex": 0.75, "white_matter": 1.15, "brainstem": 1.1, "caudate": 0.8,
    "putamen": 0.85, "globus_pallidus": 1.0, "thalamus": 0.95, "substantia_nigra": 1.0,
    "red_nucleus": 1.0, "dentate_nucleus": 1.0, "vein": 0.6,
}
#: qsm-forward acquisition: spoiled GRE, TR and flip angle of a usual 3 T multi-echo QSM scan.
REPETITION_TIME_S = 0.025
FLIP_ANGLE_DEG = 15.0

#: Stages of the chain that have alternatives, in order.
CHAIN_STAGES = ("masking", "unwrapping", "echo_fit", "background_removal", "inversion")
STAGE_TITLES = {"masking": "brain mask", "unwrapping": "unwrapping", "echo_fit": "echo fit",
                "background_removal": "background removal", "inversion": "dipole inversion"}

#: The dipole-only floor: qsmprep's TKD from the true local field. A default inversion that
#: loses to it by more than these margins (NRMSE points, XSIM) is a regression.
FLOOR_INVERSION = "tkd"
FLOOR_MARGINS = {"nrmse": 2.0, "xsim": 0.02}

#: Accuracy targets for the default chain from raw phase (1 mm, realistic noise) and for the
#: default dipole inversion alone from the true local field.
TARGETS = {"nrmse": 45.0, "xsim": 0.75, "slope": (0.9, 1.1), "coverage": 95.0,
           "dipole_nrmse": 30.0}


# --- data -----------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A simulated acquisition with the ground truth of every stage's input and output."""

    name: str
    magnitude: np.ndarray  # (x, y, z, echo) float32
    phase: np.ndarray  # wrapped (rad)
    echo_times_s: tuple
    field_strength_t: float
    voxel_size: tuple
    b0_direction: np.ndarray
    brain_mask: np.ndarray  # bool
    seg: np.ndarray  # QSM-CI labels, int32
    chi_ppm: np.ndarray  # true susceptibility in the brain, referenced to its whole-brain mean
    total_field_hz: np.ndarray  # true total field (what the echo fit should give)
    local_field_ppm: np.ndarray  # true local field
    true_phase: np.ndarray  # the unwrapped phase behind ``phase`` (noise-free, rad)
    simulation_s: float
    noise_sigma: float
    notes: list = field(default_factory=list)

    @property
    def scoring_box(self) -> tuple:
        """Bounding box of the brain plus 10 voxels: the scores are the same on it (both maps are
        zero outside the brain, XSIM's 5-voxel windows and HFEN's 8-voxel-radius LoG stay
        inside, and the deep-grey-matter labels lie in the brain), at a fraction of the cost."""
        corners = np.argwhere(self.brain_mask)
        low = np.maximum(corners.min(axis=0) - 10, 0)
        high = np.minimum(corners.max(axis=0) + 11, self.brain_mask.shape)
        return tuple(slice(a, b) for a, b in zip(low, high))

    @property
    def brain_snr(self) -> float:
        """Mean first-echo magnitude in the brain over the noise SD per channel."""
        return float(self.magnitude[..., 0][self.brain_mask].mean() / self.noise_sigma)


#: Region names of the template-space digital subject that map onto the classes above.
TEMPLATE_SUBJECT_CLASSES = {
    "globus_pallidus_externa": "globus_pallidus", "globus_pallidus_interna": "globus_pallidus",
    "substantia_nigra_compacta": "substantia_nigra",
    "substantia_nigra_reticulata": "substantia_nigra", "subthalamic_nucleus": "red_nucleus",
    "grey_matter": "cortical_grey_matter", "motor_cortex": "cortical_grey_matter",
    "premotor_cortex": "cortical_grey_matter", "internal_csf": "lateral_ventricle",
    "ear_canal": "ear_canal", "precentral_ba4": "cortical_grey_matter",
    "precentral_ba6": "cortical_grey_matter", "precentral_other": "cortical_grey_matter",
    "ba4_outside_precentral": "cortical_grey_matter",
    "ba6_outside_precentral": "cortical_grey_matter",
    "hippocampus": "cortical_grey_matter", "posterior_cingulate": "cortical_grey_matter",
    "superior_frontal_gyrus": "cortical_grey_matter",
    "superior_parietal_lobule": "cortical_grey_matter",
    "superior_temporal_gyrus": "cortical_grey_matter",
    "corpus_callosum": "white_matter", "corticospinal_tract": "white_matter",
}
#: Classes without signal (air), which need no R1.
AIR_CLASSES = ("background", "paranasal_sinus", "ear_canal")


def _base_region(name: str) -> str:
    for side in ("_left", "_right"):
        if name.endswith(side):
            name = name[: -len(side)]
            break
    return TEMPLATE_SUBJECT_CLASSES.get(name, name)


def qsmci_segmentation(phantom) -> np.ndarray:
    """The phantom's labels translated to QSM-CI's segmentation labels."""
    seg = np.zeros(phantom.shape, dtype=np.int32)
    for index, name in phantom.label_names.items():
        seg[phantom.labels == index] = QSMCI_LABELS.get(_base_region(name), 0)
    return seg


def _referenced(values, mask) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(values)
    return np.where(mask, values - np.float32(values[mask].mean(dtype=np.float64)),
                    np.float32(0.0)).astype(np.float32)


def simulate_with_qsmprep(phantom, *, peak_snr, seed, workers) -> Dataset:
    """(a) qsmprep's forward model; ``snr`` set so that sigma = max(M0) / peak_snr."""
    started = time.perf_counter()
    brain_m0 = float(phantom.m0[phantom.brain_mask].mean())
    snr = peak_snr * brain_m0 / float(phantom.m0.max()) if peak_snr else None
    acquisition = simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES_S,
                                         field_strength_t=FIELD_STRENGTH_T, snr=snr, seed=seed,
                                         workers=workers)
    times = np.asarray(ECHO_TIMES_S, dtype=np.float64)
    true_phase = (acquisition.phase_offset_rad[..., None].astype(np.float64)
                  + 2 * np.pi * times * acquisition.total_field_hz[..., None].astype(np.float64))
    brain = acquisition.brain_mask
    return Dataset(
        name="qsmprep simulator", magnitude=acquisition.magnitude, phase=acquisition.phase,
        echo_times_s=ECHO_TIMES_S, field_strength_t=FIELD_STRENGTH_T,
        voxel_size=acquisition.voxel_size, b0_direction=acquisition.b0_direction,
        brain_mask=brain, seg=qsmci_segmentation(phantom),
        chi_ppm=_referenced(acquisition.susceptibility_ppm, brain),
        total_field_hz=acquisition.total_field_hz,
        local_field_ppm=hz_to_ppm(acquisition.local_field_hz, FIELD_STRENGTH_T).astype(np.float32),
        true_phase=true_phase.astype(np.float32), simulation_s=time.perf_counter() - started,
        noise_sigma=acquisition.noise_sigma or float("nan"))


def simulate_with_qsm_forward(phantom, *, peak_snr, seed, workdir) -> Dataset:
    """(b) qsm-forward from the same chi, M0, R2*, brain mask (and a per-tissue R1).

    Public API used: ``TissueParams`` (NIfTI paths: its array inputs other than chi are not
    usable, ``TissueParams.mask`` evaluates ``array or default``), ``ReconParams``,
    ``generate_bids`` (with ``save_field``/``save_shimmed_field`` for the field truths) and
    ``generate_phase_offset`` (to rebuild the true unwrapped phase: the offset is not saved).
    """
    import nibabel as nib
    import qsm_forward

    started = time.perf_counter()
    voxel_size = tuple(float(v) for v in phantom.voxel_size)
    affine = oblique_affine(shape=phantom.shape, voxel_size=voxel_size)
    inputs = os.path.join(workdir, "inputs")
    bids_dir = os.path.join(workdir, "bids")
    os.makedirs(inputs, exist_ok=True)
    r1 = np.zeros(phantom.shape, dtype=np.float32)
    unknown = sorted({_base_region(name) for name in phantom.label_names.values()}
                     - set(R1_3T_HZ) - set(AIR_CLASSES))
    if unknown:  # an R1 of 0 would give them no signal in qsm-forward's spoiled GRE
        raise ValueError(f"no R1 for the phantom's tissue classes {unknown}: map them in "
                         "TEMPLATE_SUBJECT_CLASSES or R1_3T_HZ")
    for index, name in phantom.label_names.items():
        r1[phantom.labels == index] = R1_3T_HZ.get(_base_region(name), 0.0)
    seg = qsmci_segmentation(phantom)

    def save(array, name):
        path = os.path.join(inputs, f"{name}.nii")
        nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), path)
        return path

    tissue = qsm_forward.TissueParams(
        chi=save(phantom.susceptibility_ppm, "chi"), M0=save(phantom.m0, "M0"),
        R1=save(r1, "R1"), R2star=save(phantom.r2star_hz, "R2star"),
        mask=save(phantom.brain_mask, "mask"), seg=save(seg, "seg"))
    recon = qsm_forward.ReconParams(
        subject="1", TR=REPETITION_TIME_S, TEs=np.asarray(ECHO_TIMES_S), flip_angle=FLIP_ANGLE_DEG,
        B0=FIELD_STRENGTH_T, B0_dir=np.array([0.0, 0.0, 1.0]), voxel_size=np.asarray(voxel_size),
        peak_snr=peak_snr if peak_snr else np.inf, random_seed=seed)
    with contextlib.redirect_stdout(io.StringIO()):
        qsm_forward.generate_bids(tissue, recon, bids_dir, save_field=True,
                                  save_shimmed_field=True)

    def load(path):
        return np.asarray(nib.load(path).get_fdata(dtype=np.float32))

    anat = os.path.join(bids_dir, "sub-1", "anat")
    truth = os.path.join(bids_dir, "derivatives", "qsm-forward", "sub-1", "anat")
    magnitude = np.stack([load(os.path.join(anat, f"sub-1_echo-{n + 1}_part-mag_MEGRE.nii"))
                          for n in range(len(ECHO_TIMES_S))], axis=-1)
    phase = np.stack([load(os.path.join(anat, f"sub-1_echo-{n + 1}_part-phase_MEGRE.nii"))
                      for n in range(len(ECHO_TIMES_S))], axis=-1)
    brain = load(os.path.join(truth, "sub-1_mask.nii")) > 0.5
    chi = load(os.path.join(truth, "sub-1_Chimap.nii"))
    dseg = np.rint(load(os.path.join(truth, "sub-1_dseg.nii"))).astype(np.int32)
    local_ppm = load(os.path.join(truth, "sub-1_fieldmap-local.nii"))
    total_ppm = load(os.path.join(truth, "sub-1_desc-shimmed_fieldmap.nii"))
    total_hz = (total_ppm * np.float32(QSM_FORWARD_GAMMA_MHZ_T * FIELD_STRENGTH_T)).astype(
        np.float32)
    offset = qsm_forward.generate_phase_offset(tissue.M0.get_fdata(), tissue.mask.get_fdata(),
                                               phantom.shape)
    times = np.asarray(ECHO_TIMES_S, dtype=np.float64)
    true_phase = offset[..., None] + 2 * np.pi * times * total_hz[..., None].astype(np.float64)
    air = phantom.labels == 0
    sigma = float(magnitude[..., 0][air].mean() / np.sqrt(np.pi / 2)) if air.any() else math.nan
    notes = []
    congruent = np.abs(np.angle(np.exp(1j * (true_phase[brain] - phase[brain]))))
    if np.median(congruent) > 0.5:  # the rebuilt truth does not explain the data
        notes.append("qsm-forward: rebuilt true phase does not match the simulated phase "
                     f"(median misfit {np.median(congruent):.2f} rad)")
    return Dataset(
        name="qsm-forward simulator", magnitude=magnitude, phase=phase,
        echo_times_s=ECHO_TIMES_S, field_strength_t=FIELD_STRENGTH_T, voxel_size=voxel_size,
        b0_direction=np.array([0.0, 0.0, 1.0]), brain_mask=brain, seg=dseg,
        chi_ppm=_referenced(chi, brain), total_field_hz=total_hz,
        local_field_ppm=local_ppm.astype(np.float32), true_phase=true_phase.astype(np.float32),
        simulation_s=time.perf_counter() - started, noise_sigma=sigma, notes=notes)


# --- stages -------------------------------------------------------------------------------------
def methods_of(stage) -> tuple:
    """The choices of ``stage`` (:func:`qsmprep.stages.stage`), default first."""
    return stages.stage(stage).choices


def settings_with(**choices) -> config.WorkflowConfig:
    """The workflow's default settings with some stages' algorithms changed."""
    return dataclasses.replace(config.WorkflowConfig(), **choices)


class Stages:
    """Each stage alone, through the stage functions of :mod:`qsmprep.qsm.pipeline` with the
    parameters the workflow gives them (:func:`qsmprep.qsm.pipeline.stage_arguments`)."""

    def __init__(self, data: Dataset, workers: int):
        self.data = data
        self.workers = workers

    def arguments(self, stage, **choices) -> dict:
        return pipeline.stage_arguments(settings_with(**choices))[stage]

    def brain_mask(self):
        return pipeline.compute_brain_mask(self.data.magnitude[..., 0], self.data.voxel_size,
                                           **self.arguments("masking"))

    def unwrap(self, name, mask):
        data = self.data
        return pipeline.unwrap_phase(data.phase, data.voxel_size, data.echo_times_s,
                                     magnitude_4d=data.magnitude, mask=mask, workers=self.workers,
                                     **self.arguments("unwrapping", unwrapping=name))

    def fit(self, name, unwrapped, mask):
        data = self.data
        return pipeline.fit_echoes(unwrapped, data.magnitude, data.echo_times_s, mask,
                                   phase_4d=data.phase,
                                   **self.arguments("echo_fit", echo_fit=name))

    def remove_background(self, name, total_field_hz, mask):
        data = self.data
        result = pipeline.remove_background(
            total_field_hz, mask, data.voxel_size, data.b0_direction, workers=self.workers,
            **self.arguments("background_removal", background_removal=name))
        return hz_to_ppm(result.local_field_hz, data.field_strength_t), result.mask

    def invert(self, name, local_field_ppm, mask):
        data = self.data
        chi = pipeline.invert_dipole(
            ppm_to_hz(local_field_ppm, data.field_strength_t), mask, data.voxel_size,
            data.b0_direction, data.field_strength_t, magnitude=data.magnitude,
            echo_times_s=data.echo_times_s, workers=self.workers,
            **self.arguments("inversion", inversion=name)).susceptibility_ppm
        referenced, _ = referencing.reference_to_region_mean(chi, mask)
        return referenced

    def chain(self, settings):
        """The whole chain from raw phase (:func:`qsmprep.qsm.pipeline.reconstruct`)."""
        data = self.data
        return pipeline.reconstruct(data.magnitude, data.phase, data.echo_times_s,
                                    data.voxel_size, data.b0_direction, data.field_strength_t,
                                    settings=settings, workers=self.workers)


def timed(function):
    """(value, seconds) of ``function()``."""
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


# --- scoring ------------------------------------------------------------------------------------
def score_chi(data: Dataset, chi_ppm, mask) -> dict:
    """QSM-CI 'chi' metrics (with segmentation) over the true brain, plus the signed DGM slope."""
    box = data.scoring_box
    estimate = _referenced(chi_ppm, mask)[box]
    inside, seg, chi_true = data.brain_mask[box], data.seg[box], data.chi_ppm[box]
    metrics, _ = qsm_eval.score_arrays(estimate, chi_true, inside.astype(np.uint8), "chi",
                                       seg=seg)
    # The signed slope behind dgm_linearity = |1 - slope|, on the arrays the scorer uses.
    recon = np.where(inside & np.isfinite(estimate), estimate, 0.0)
    truth = np.where(inside, chi_true, 0.0)
    true_means, recon_means = [], []
    for label in DEEP_GREY_MATTER_LABELS:
        region = seg == label
        if region.any():
            true_means.append(truth[region].mean())
            recon_means.append(recon[region].mean())
    slope = (qsm_eval.linear_fit(np.array(true_means), np.array(recon_means))[0]
             if len(true_means) >= 2 else math.nan)
    metrics["dgm_slope"] = slope
    return metrics


def score_field(data: Dataset, field_ppm, mask, truth_ppm) -> dict:
    """QSM-CI 'field' metrics (ppm) over the true brain, both demeaned, plus the RMS error (Hz)."""
    box = data.scoring_box
    estimate = _referenced(field_ppm, mask)[box]
    truth = _referenced(truth_ppm, data.brain_mask)[box]
    metrics, _ = qsm_eval.score_arrays(estimate, truth, data.brain_mask[box].astype(np.uint8),
                                       "field")
    both = data.brain_mask[box] & np.asarray(mask, dtype=bool)[box]
    error_ppm = (estimate - truth)[both]
    metrics["rmse_hz"] = float(np.sqrt(np.mean(error_ppm.astype(np.float64) ** 2))
                               * 42.577478 * data.field_strength_t) if both.any() else math.nan
    return metrics


def unwrapping_exactness(data: Dataset, unwrapped) -> float:
    """Fraction (%) of brain voxels unwrapped to the true number of turns in every echo, each
    echo allowed one global offset of whole turns (the mode)."""
    brain = data.brain_mask
    good = np.ones(int(brain.sum()), dtype=bool)
    for echo in range(unwrapped.shape[-1]):
        turns = np.rint((unwrapped[..., echo][brain].astype(np.float64)
                         - data.true_phase[..., echo][brain]) / (2 * np.pi)).astype(np.int64)
        values, counts = np.unique(turns, return_counts=True)
        good &= turns == values[np.argmax(counts)]
    return 100.0 * good.mean()


# --- qmrpy ----------------------------------------------------------------------------------------
def run_qmrpy(data: Dataset, mask):
    """qmrpy's QSMSplitBregman (qMRLab qsm_sb: Laplacian unwrapping, SHARP, split-Bregman L1)
    with its defaults, on the phase difference of the last and first echo.

    qsm_sb is a single-echo pipeline with no phase-offset removal, so it gets
    ``angle(S_last conj(S_first))`` (offset-free, effective TE = TE_last - TE_first) and the same
    brain mask as qsmprep's chain. Its output is in radians of that phase: divided by
    2 pi gamma B0 dTE for ppm. Its dipole kernel is only consistent for a square in-plane matrix
    (``kspace_kernel`` builds (ny, nx, nz) for data of shape (nx, ny, nz)), so the inputs are
    zero-padded to a square matrix and cropped back.
    """
    from qmrpy.models.qsm import QSMSplitBregman

    signal_first = data.magnitude[..., 0] * np.exp(1j * data.phase[..., 0])
    signal_last = data.magnitude[..., -1] * np.exp(1j * data.phase[..., -1])
    phase = np.angle(signal_last * np.conj(signal_first))
    delta_te = data.echo_times_s[-1] - data.echo_times_s[0]
    shape = phase.shape
    side = max(shape[0], shape[1])
    padding = [(0, side - shape[0]), (0, side - shape[1]), (0, 0)]
    model = QSMSplitBregman()
    result = model.fit(np.pad(phase, padding), np.pad(mask.astype(np.float64), padding),
                       image_resolution_mm=np.asarray(data.voxel_size, dtype=np.float64))
    chi_rad = np.asarray(result["chi_sb"])[: shape[0], : shape[1], : shape[2]]
    pad = model.pad_size
    mask_out = np.asarray(result.diagnostics["mask_out"])
    mask_out = mask_out[pad[0]: mask_out.shape[0] - pad[0], pad[1]: mask_out.shape[1] - pad[1],
                        pad[2]: mask_out.shape[2] - pad[2]][: shape[0], : shape[1], : shape[2]] > 0
    chi_ppm = chi_rad / (2 * np.pi * 42.577478 * data.field_strength_t * delta_te)
    return chi_ppm.astype(np.float32), mask_out


# --- report ---------------------------------------------------------------------------------------
def _fmt(value, digits=1, missing="-"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return f"{value:.{digits}f}"


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


METRIC_HEADERS = ["NRMSE (%)", "dNRMSE (%)", "XSIM", "HFEN (%)", "Corr.", "DGM slope",
                  "Coverage (%)", "Time (s)"]


def metric_cells(metrics, seconds):
    if metrics is None:
        return ["-"] * (len(METRIC_HEADERS) - 1) + [_fmt(seconds, 1)]
    return [_fmt(metrics.get("nrmse")), _fmt(metrics.get("nrmse_detrend")),
            _fmt(metrics.get("xsim"), 3), _fmt(metrics.get("hfen")),
            _fmt(metrics.get("correlation"), 3), _fmt(metrics.get("dgm_slope"), 2),
            _fmt(100 * metrics["coverage"] if "coverage" in metrics else None),
            _fmt(seconds, 1)]


@dataclass
class Results:
    stage_rows: list = field(default_factory=list)  # (stage, method, metrics, seconds, note)
    chain_rows: list = field(default_factory=list)  # (label, chain, metrics, seconds)
    default_chain: dict | None = None
    default_chain_s: float = math.nan
    dipole_default: dict | None = None
    dipole_floor: dict | None = None
    """TKD alone from the true local field: the dipole-only floor a default must not lose to."""
    default_regularization: float | None = None
    """The TV weight the default chain chose (automatic), if it chose one."""
    default_stage_seconds: dict = field(default_factory=dict)
    qmrpy: dict | None = None
    qmrpy_s: float = math.nan


def _attempt(notes, label, function):
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - a draft method must not stop the bench
        notes.append(f"{label}: failed with {type(error).__name__}: {error}")
        return None


def evaluate(data: Dataset, *, workers, skip: set, notes: list, timings: dict, slow_s: float,
             run_qmrpy_too: bool) -> Results:
    """Every stage alone, every chain, and qmrpy, on one dataset.

    ``timings`` holds the stage-alone seconds of each (stage, method) on the datasets evaluated
    before; this one's are added to it at the end.
    """
    previous_timings, timings_here = dict(timings), {}
    results = Results()
    stages = Stages(data, workers)
    brain = data.brain_mask

    def wanted(stage, name):
        if name in skip:
            return False
        previous = previous_timings.get((stage, name))
        if slow_s and previous is not None and previous > slow_s and name != methods_of(stage)[0]:
            notes.append(f"{data.name}: {STAGE_TITLES[stage]} '{name}' skipped (took "
                         f"{previous:.0f} s > --slow-s {slow_s:g} on the first simulator)")
            return False
        return True

    def record(stage, name, seconds):
        timings_here.setdefault((stage, name), seconds)

    # 1. brain mask ------------------------------------------------------------------------------
    for name in methods_of("masking"):
        outcome = _attempt(notes, f"{data.name}: mask {name}", lambda: timed(stages.brain_mask))
        if outcome is None:
            continue
        mask, seconds = outcome
        record("masking", name, seconds)
        covered = (mask & brain).sum() / brain.sum()
        dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
        outside = (mask & ~brain).sum() / max(mask.sum(), 1)
        results.stage_rows.append(("brain mask", name, {"coverage": covered}, seconds,
                                   f"Dice {dice:.3f}; {100 * outside:.1f} % of the mask is "
                                   "outside the brain (mostly CSF)"))

    # 2. field mapping: unwrapping x echo fit, true brain mask -----------------------------------
    for unwrap_name in methods_of("unwrapping"):
        if not wanted("unwrapping", unwrap_name):
            continue
        outcome = _attempt(notes, f"{data.name}: unwrapping {unwrap_name}",
                           lambda: timed(lambda: stages.unwrap(unwrap_name, brain)))
        if outcome is None:
            continue
        unwrapped, unwrap_s = outcome
        record("unwrapping", unwrap_name, unwrap_s)
        exact = unwrapping_exactness(data, unwrapped)
        for fit_name in methods_of("echo_fit"):
            if not wanted("echo_fit", fit_name):
                continue
            outcome = _attempt(notes, f"{data.name}: echo fit {fit_name}",
                               lambda: timed(lambda: stages.fit(fit_name, unwrapped, brain)))
            if outcome is None:
                continue
            fit, fit_s = outcome
            record("echo_fit", fit_name, fit_s)
            metrics = score_field(data, hz_to_ppm(fit.total_field_hz, data.field_strength_t),
                                  brain, hz_to_ppm(data.total_field_hz, data.field_strength_t))
            results.stage_rows.append((
                "field mapping", f"{unwrap_name} + {fit_name}", metrics, unwrap_s + fit_s,
                f"{exact:.2f} % of brain voxels unwrapped exactly; RMS error "
                f"{metrics['rmse_hz']:.2f} Hz"))

    # 3. background removal from the true total field ---------------------------------------------
    true_total_hz = np.where(brain, data.total_field_hz, np.float32(0.0))
    for name in methods_of("background_removal"):
        if not wanted("background_removal", name):
            continue
        outcome = _attempt(notes, f"{data.name}: background {name}", lambda: timed(
            lambda: stages.remove_background(name, true_total_hz, brain)))
        if outcome is None:
            continue
        (local_ppm, local_mask), seconds = outcome
        record("background_removal", name, seconds)
        metrics = score_field(data, local_ppm, local_mask, data.local_field_ppm)
        results.stage_rows.append(("background removal", name, metrics, seconds,
                                   f"RMS error {metrics['rmse_hz']:.2f} Hz where defined"))

    # 4. dipole inversion from the true local field -----------------------------------------------
    true_local = np.where(brain, data.local_field_ppm, np.float32(0.0))
    for name in methods_of("inversion"):
        if not wanted("inversion", name):
            continue
        outcome = _attempt(notes, f"{data.name}: inversion {name}",
                           lambda: timed(lambda: stages.invert(name, true_local, brain)))
        if outcome is None:
            continue
        chi, seconds = outcome
        record("inversion", name, seconds)
        metrics = score_chi(data, chi, brain)
        results.stage_rows.append(("dipole inversion", name, metrics, seconds, ""))
        if name == methods_of("inversion")[0]:
            results.dipole_default = metrics
        if name == FLOOR_INVERSION:
            results.dipole_floor = metrics

    # 5. full chains: the default, then one stage at a time -------------------------------------
    variants = [("default", {})]
    for stage in CHAIN_STAGES:
        for name in methods_of(stage)[1:]:
            if wanted(stage, name):
                variants.append((f"{STAGE_TITLES[stage]}: {name}", {stage: name}))
    default_mask = None
    for label, choices in variants:
        settings = settings_with(**choices)
        outcome = _attempt(notes, f"{data.name}: chain {label}",
                           lambda: timed(lambda: stages.chain(settings)))
        if outcome is None:
            continue
        reconstruction, seconds = outcome
        metrics = score_chi(data, reconstruction.chimap_ppm, reconstruction.local_field_mask)
        chain = " -> ".join(getattr(settings, stage) for stage in CHAIN_STAGES[1:])
        results.chain_rows.append((label, chain, metrics, seconds))
        if label == "default":
            results.default_chain, results.default_chain_s = metrics, seconds
            results.default_stage_seconds = reconstruction.stage_seconds
            results.default_regularization = reconstruction.inversion_sidecar.get(
                "Regularization")
            default_mask = reconstruction.brain_mask

    # 6. qmrpy on the same data, same brain mask ---------------------------------------------------
    if run_qmrpy_too and default_mask is not None:
        try:
            import qmrpy  # noqa: F401
        except ImportError:
            notes.append("qmrpy is not installed: its comparison is skipped")
        else:
            started = time.perf_counter()
            outcome = _attempt(notes, f"{data.name}: qmrpy", lambda: run_qmrpy(data, default_mask))
            results.qmrpy_s = time.perf_counter() - started
            if outcome is not None:
                results.qmrpy = score_chi(data, *outcome)
    for key, seconds in timings_here.items():
        timings.setdefault(key, seconds)
    return results


def print_dataset(data: Dataset, results: Results):
    print(f"\n### {data.name}: each stage alone, from the truth of its input\n")
    rows = [[stage, name] + metric_cells(metrics, seconds) + [note]
            for stage, name, metrics, seconds, note in results.stage_rows]
    print(markdown_table(["Stage", "Method"] + METRIC_HEADERS + ["Notes"], rows))
    print(f"\n### {data.name}: full chain from raw phase\n")
    rows = [[label, chain] + metric_cells(metrics, seconds)
            for label, chain, metrics, seconds in results.chain_rows]
    print(markdown_table(["Variant", "Unwrapping -> fit -> background -> inversion"]
                         + METRIC_HEADERS, rows))
    if results.default_stage_seconds:
        print("\nDefault chain, seconds per stage: " + ", ".join(
            f"{stage} {seconds:.1f}" for stage, seconds in results.default_stage_seconds.items()))


def print_summary(datasets, all_results):
    print("\n### qsmprep default chain vs qmrpy (split-Bregman, qMRLab qsm_sb port)\n")
    rows = []
    for data, results in zip(datasets, all_results):
        rows.append([data.name, "qsmprep default chain"]
                    + metric_cells(results.default_chain, results.default_chain_s))
        rows.append([data.name, "qmrpy QSMSplitBregman"]
                    + metric_cells(results.qmrpy, results.qmrpy_s))
    print(markdown_table(["Data", "Pipeline"] + METRIC_HEADERS, rows))

    print("\n### Accuracy targets\n")
    headers = ["Target"] + [data.name for data in datasets]

    def check(ok, text):
        return f"{text} {'pass' if ok else 'FAIL'}"

    rows = []
    for label, getter in (
            (f"default chain NRMSE <= {TARGETS['nrmse']:g} %",
             lambda r: (r.default_chain or {}).get("nrmse"), ),
            (f"default chain XSIM >= {TARGETS['xsim']:g}",
             lambda r: (r.default_chain or {}).get("xsim")),
            ("default chain DGM slope in [0.9, 1.1]",
             lambda r: (r.default_chain or {}).get("dgm_slope")),
            (f"default chain coverage >= {TARGETS['coverage']:g} %",
             lambda r: 100 * (r.default_chain or {}).get("coverage", math.nan)),
            (f"default inversion alone NRMSE <= {TARGETS['dipole_nrmse']:g} %",
             lambda r: (r.dipole_default or {}).get("nrmse"))):
        cells = [label]
        for results in all_results:
            value = getter(results)
            if value is None or not math.isfinite(value):
                cells.append("-")
                continue
            if "NRMSE" in label and "alone" in label:
                ok, text = value <= TARGETS["dipole_nrmse"], f"{value:.1f}"
            elif "NRMSE" in label:
                ok, text = value <= TARGETS["nrmse"], f"{value:.1f}"
            elif "XSIM" in label:
                ok, text = value >= TARGETS["xsim"], f"{value:.3f}"
            elif "slope" in label:
                ok, text = TARGETS["slope"][0] <= value <= TARGETS["slope"][1], f"{value:.2f}"
            else:
                ok, text = value >= TARGETS["coverage"], f"{value:.1f}"
            cells.append(check(ok, text))
        rows.append(cells)
    print(markdown_table(headers, rows))


def print_phantom_summary(evaluated):
    """One row per phantom and simulator: the default chain, the default inversion alone and
    the TKD floor (both from the true local field), and whether the default holds the floor."""
    print("\n## Every phantom: default chain and dipole-only floor\n")
    rows = []
    for phantom_name, data, results in evaluated:
        chain = results.default_chain or {}
        alone, floor = results.dipole_default or {}, results.dipole_floor or {}
        holds = "-"
        if alone and floor:
            ok = (alone["nrmse"] <= floor["nrmse"] + FLOOR_MARGINS["nrmse"]
                  and alone["xsim"] >= floor["xsim"] - FLOOR_MARGINS["xsim"])
            holds = "yes" if ok else "NO"
        rows.append([phantom_name, data.name.replace(" simulator", ""),
                     _fmt(chain.get("nrmse")), _fmt(chain.get("xsim"), 3),
                     _fmt(chain.get("dgm_slope"), 2),
                     _fmt(100 * chain["coverage"] if "coverage" in chain else None),
                     (f"{results.default_regularization:.3g}"
                      if results.default_regularization else "fixed"),
                     f"{_fmt(alone.get('nrmse'))} / {_fmt(alone.get('xsim'), 3)}",
                     f"{_fmt(floor.get('nrmse'))} / {_fmt(floor.get('xsim'), 3)}", holds])
    print(markdown_table(["Phantom", "Simulator", "Chain NRMSE (%)", "XSIM", "DGM slope",
                          "Coverage (%)", "TV weight (auto)",
                          "Default inversion alone NRMSE / XSIM",
                          "TKD floor NRMSE / XSIM",
                          f"Holds the floor (+{FLOOR_MARGINS['nrmse']:g} pt, "
                          f"-{FLOOR_MARGINS['xsim']:g})"], rows))


def _version(distribution):
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:  # noqa: BLE001
        return "not installed"


#: The phantoms of the bench, in the order they run.
PHANTOMS = ("analytic", "textured", "template")


def make_phantom(name: str, *, voxel: float, seed: int):
    """One of :data:`PHANTOMS` at ``voxel`` mm."""
    if name == "template":
        from qsmprep.phantom.template_head import make_template_phantom

        return make_template_phantom(voxel_size_mm=voxel, seed=seed)[0]
    shape = tuple(int(round(fov / voxel)) for fov in FIELD_OF_VIEW_MM)
    phantom = make_head_phantom(shape=shape, voxel_size=(voxel,) * 3, seed=seed)
    if name == "textured":
        from qsmprep.phantom.textured import add_texture

        phantom = add_texture(phantom, seed=seed)
    return phantom


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 mm voxels instead of 1 mm (same head, a few minutes)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="isotropic voxel (mm); default 1, or 2 with --quick")
    parser.add_argument("--peak-snr", type=float, default=100.0,
                        help="noise SD per channel = peak signal / this (0: no noise)")
    parser.add_argument("--workers", type=int, default=2, help="FFT threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phantom", default="all",
                        help="comma-separated phantoms, or 'all' (the default: "
                        f"{', '.join(PHANTOMS)}): the analytic head; the analytic head with "
                        "real-brain-like texture (qsmprep.phantom.textured: multi-scale "
                        "texture, gradients in nuclei, veins, fibre bundles, microbleeds, "
                        "calcifications); the digital subject made from the MNI template, its "
                        "tissue maps and the atlas (template space, whole head)")
    parser.add_argument("--simulators", default="qsmprep,qsm-forward",
                        help="comma-separated: qsmprep, qsm-forward")
    parser.add_argument("--skip", default="", help="comma-separated method names to leave out")
    parser.add_argument("--no-qmrpy", action="store_true", help="leave out qmrpy")
    parser.add_argument("--slow-s", type=float, default=None,
                        help="a non-default method slower than this (s) on the first simulator "
                             "is not rerun on the others; default 60 at 1 mm, off with --quick; "
                             "0: always rerun")
    opts = parser.parse_args(argv)
    if qsm_eval is None:
        parser.error("qsm-ci is needed for the scoring: pip install qsm-ci")
    voxel = opts.voxel_size or (2.0 if opts.quick else 1.0)
    slow_s = opts.slow_s if opts.slow_s is not None else (0.0 if opts.quick else 60.0)
    skip = {name.strip() for name in opts.skip.split(",") if name.strip()}
    notes = []
    started = time.perf_counter()

    phantoms = PHANTOMS if opts.phantom == "all" else tuple(
        name.strip() for name in opts.phantom.split(",") if name.strip())
    for name in phantoms:
        if name not in PHANTOMS:
            parser.error(f"unknown phantom {name!r}: choose from {', '.join(PHANTOMS)} or all")
    simulators = [s.strip() for s in opts.simulators.split(",") if s.strip()]
    for simulator in simulators:
        if simulator not in ("qsmprep", "qsm-forward"):
            parser.error(f"unknown simulator {simulator!r}")
    print(f"## Accuracy bench: {', '.join(phantoms)} at {voxel:g} mm, "
          f"{len(ECHO_TIMES_S)} echoes (TE {', '.join(f'{1000 * t:g}' for t in ECHO_TIMES_S)} "
          f"ms), {FIELD_STRENGTH_T:g} T, peak SNR {opts.peak_snr:g}, {opts.workers} FFT threads\n")
    print("Versions: " + ", ".join(f"{name} {_version(name)}" for name in (
        "qsmprep", "qsm-ci", "qsm-forward", "qmrpy", "numpy", "scipy")))
    print("Methods (default first): " + "; ".join(
        f"{STAGE_TITLES[stage]}: {', '.join(methods_of(stage))}" for stage in CHAIN_STAGES))

    evaluated, timings = [], {}
    for phantom_name in phantoms:
        phantom = make_phantom(phantom_name, voxel=voxel, seed=opts.seed)
        shape = phantom.shape
        print(f"\n## {phantom_name} phantom, {shape[0]}x{shape[1]}x{shape[2]}")
        datasets, all_results = [], []
        for simulator in simulators:
            if simulator == "qsmprep":
                datasets.append(simulate_with_qsmprep(phantom, peak_snr=opts.peak_snr,
                                                      seed=opts.seed, workers=opts.workers))
                continue
            try:
                import qsm_forward  # noqa: F401
            except ImportError:
                notes.append("qsm-forward is not installed: its simulation is skipped")
                continue
            with tempfile.TemporaryDirectory(prefix="qsmprep-bench-") as workdir:
                datasets.append(simulate_with_qsm_forward(phantom, peak_snr=opts.peak_snr,
                                                          seed=opts.seed, workdir=workdir))
        for data in datasets:
            print(f"- {data.name}: simulated in {data.simulation_s:.1f} s; first-echo brain SNR "
                  f"{data.brain_snr:.0f}; true brain {int(data.brain_mask.sum())} voxels")
            notes.extend(data.notes)
        for data in datasets:
            results = evaluate(data, workers=opts.workers, skip=skip, notes=notes,
                               timings=timings, slow_s=slow_s,
                               run_qmrpy_too=not opts.no_qmrpy)
            print_dataset(data, results)
            all_results.append(results)
            evaluated.append((phantom_name, data, results))
            sys.stdout.flush()
        if datasets:
            print_summary(datasets, all_results)
    if evaluated:
        print_phantom_summary(evaluated)
    if notes:
        print("\nNotes:\n" + "\n".join(f"- {note}" for note in dict.fromkeys(notes)))
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
