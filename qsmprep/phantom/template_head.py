"""A digital subject built in template space from the MNI template and qsmprep's atlas, and its
warp into a native (scanner) space.

:func:`make_template_phantom` draws a labelled head on the grid of the MNI ICBM 2009c nonlinear
asymmetric template (MNI152NLin2009cAsym, 1 mm; Fonov et al., NeuroImage 2011;54:313-327),
resampled to any isotropic voxel size:

- tissue classes from the grey- and white-matter probability maps of the MNI ICBM 2009a
  nonlinear symmetric template shipped with nilearn (resampled by world coordinates), inside the
  template brain mask: grey matter, white matter, and CSF (sulcal CSF and the CSF around the
  brain are ``subarachnoid_csf``; CSF enclosed by the brain is ``internal_csf``);
- the regions of qsmprep's atlas (:func:`qsmprep.atlases.load_atlas`), left and right, named
  ``<region>_<left|right>``; cortical regions keep only their grey-matter voxels;
- healthy adult susceptibility (ppm relative to CSF) of the head phantom of the 2019 QSM
  reconstruction challenge (RC2; Marques et al., Magn Reson Med 2021;86:526-542) for grey matter,
  white matter and the deep nuclei, settable per region and per hemisphere (in ppb);
- M0 and R2* per tissue as in :mod:`qsmprep.phantom.head` (R2* of the iron-rich nuclei rising with
  their susceptibility), with a mild smooth texture;
- a closed head around the brain, grown from the brain mask by a distance transform: a 2 mm
  CSF layer, a 6 mm skull and a 5 mm scalp, the soft tissue of the face and of the top of the
  neck below the brain with a paranasal sinus and two ear canals (air), a CSF-filled spinal canal
  in a bony shell, and air outside.

:func:`warp_to_native` moves that subject into a native space by a known affine transform (a
rotation about the template origin, a scale and a translation) and a smooth random deformation
of a few millimetres, and resamples it onto an oblique native grid (labels by nearest
neighbour, continuous maps by linear interpolation). The result is a :class:`HeadPhantom` that
:func:`qsmprep.phantom.signal.simulate_multiecho_gre` images with the native affine.

World coordinates are RAS millimetres (x: left -> right, y: posterior -> anterior, z: inferior
-> superior), so "left" means world x < 0 in template space.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .head import (
    _LABEL_INDEX,
    _LABELS,
    _SCALP_THICKNESS_MM,
    _SKULL_THICKNESS_MM,
    _SUBARACHNOID_CSF_MM,
    HEALTHY_SUSCEPTIBILITY_PPM,
    HeadPhantom,
    _deep_grey_r2star_hz,
    _inside_ellipsoid,
)
from .signal import _rotation_matrix, oblique_affine

__all__ = [
    "ATLAS_LABEL_OFFSET",
    "DEFAULT_REGION_SUSCEPTIBILITY_PPB",
    "TEMPLATE_SPACE",
    "NativeTransform",
    "make_template_phantom",
    "native_grid_affine",
    "region_labels",
    "warp_to_native",
]

#: The template space of the digital subject.
TEMPLATE_SPACE = "MNI152NLin2009cAsym"

#: Healthy susceptibility (ppb relative to CSF) given to each atlas region unless set otherwise:
#: the RC2 values (globus pallidus for both pallidal segments, substantia nigra for both nigral
#: parts, cortical grey matter for the cortical regions). The subthalamic nucleus has no RC2
#: value; it takes the red-nucleus value. Ventricles are CSF, the reference (0).
DEFAULT_REGION_SUSCEPTIBILITY_PPB: dict[str, float] = {
    "precentral_ba4": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"],
    "precentral_ba6": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"],
    "precentral_other": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"],
    "ba4_outside_precentral": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"],
    "ba6_outside_precentral": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"],
    "globus_pallidus_externa": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["globus_pallidus"],
    "globus_pallidus_interna": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["globus_pallidus"],
    "subthalamic_nucleus": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["red_nucleus"],
    "red_nucleus": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["red_nucleus"],
    "substantia_nigra_compacta": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["substantia_nigra"],
    "substantia_nigra_reticulata": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["substantia_nigra"],
    "putamen": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["putamen"],
    "caudate": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["caudate"],
    "thalamus": 1000 * HEALTHY_SUSCEPTIBILITY_PPM["thalamus"],
    "lateral_ventricle": 0.0,
}

#: Atlas regions painted over one tissue class of the template only, with that tissue's value
#: unless set otherwise: grey-matter structures over grey matter, the white-matter tracts over
#: white matter. A healthy head therefore looks the same with or without them.
REGION_TISSUE = {
    "hippocampus": "grey_matter", "cerebellar_cortex": "grey_matter",
    "posterior_cingulate": "grey_matter", "superior_temporal_gyrus": "grey_matter",
    "superior_parietal_lobule": "grey_matter", "superior_frontal_gyrus": "grey_matter",
    "corticospinal_tract": "white_matter", "corpus_callosum": "white_matter",
}
for _name, _tissue in REGION_TISSUE.items():
    DEFAULT_REGION_SUSCEPTIBILITY_PPB[_name] = 1000 * HEALTHY_SUSCEPTIBILITY_PPM[
        "cortical_grey_matter" if _tissue == "grey_matter" else "white_matter"]
del _name, _tissue
#: Atlas regions of mixed tissue (the brain stem's grey nuclei and white tracts) that keep the
#: template's grey and white matter, and are not atlas regions of the subject, unless given a
#: value: then all their voxels take it.
MIXED_TISSUE_REGIONS = ("midbrain", "pons")

#: M0 of the atlas regions (as the matching nuclei of :mod:`qsmprep.phantom.head`).
_REGION_M0 = {
    "globus_pallidus_externa": 0.70, "globus_pallidus_interna": 0.70,
    "subthalamic_nucleus": 0.70, "red_nucleus": 0.70,
    "substantia_nigra_compacta": 0.70, "substantia_nigra_reticulata": 0.70,
    "putamen": 0.76, "caudate": 0.76, "thalamus": 0.74,
}

#: Tissue labels of the template subject (index -> name); atlas regions follow from
#: :data:`ATLAS_LABEL_OFFSET`. Names shared with :mod:`qsmprep.phantom.head` carry its properties.
_TISSUES = {
    0: "background",
    1: "scalp",
    2: "extracranial_soft_tissue",
    3: "skull",
    4: "paranasal_sinus",
    5: "ear_canal_left",
    6: "ear_canal_right",
    7: "subarachnoid_csf",
    8: "grey_matter",
    9: "internal_csf",
    10: "white_matter",
}
_TISSUE_INDEX = {name: index for index, name in _TISSUES.items()}
#: Label of atlas region with atlas index i: ATLAS_LABEL_OFFSET + i.
ATLAS_LABEL_OFFSET = 100

_SIDES = {"L": "left", "R": "right"}
_ATLAS_CACHE_SIZE = 2

# Head geometry in template world coordinates (mm): (centre, semi-axes).
_INFERIOR_PADDING_MM = 24.0  # grid extension below the template grid, for the lower head
_LOWER_HEAD = ((0.0, -10.0, -52.0), (68.0, 94.0, 44.0))  # face, skull base, top of the neck
_SPINAL_CANAL_BOTTOM_MM = -84.0
_SINUS = ((0.0, 38.0, -46.0), (16.0, 14.0, 10.0))
_EAR_CANAL = ((66.0, -22.0, -46.0), (8.0, 6.0, 6.0))  # right; mirrored for left
_SPINAL_CANAL_RADIUS_MM = 8.0
_TEXTURE_SD = 0.03
_TEXTURE_CORRELATION_MM = 8.0
_DEFORMATION_CORRELATION_MM = 30.0


# ----------------------------------------------------------------------------- grids, sampling

def _affine_transform(volume, matrix, **options):
    """``ndimage.affine_transform``; a 1-D ``matrix`` (diagonal) takes its separable path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The behavior of affine_transform with a 1-D")
        return ndimage.affine_transform(volume, matrix, **options)


def _resample(volume, source_affine, target_affine, target_shape, *, order: int, cval=0.0):
    """``volume`` (on ``source_affine``) sampled at the voxel centres of a target grid by world
    coordinates; order 0: nearest neighbour, 1: linear."""
    to_source = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(target_affine, float)
    linear = to_source[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear))):
        linear = np.diag(linear)  # separable: faster path of affine_transform
    return _affine_transform(volume, linear, offset=to_source[:3, 3],
                             output_shape=tuple(target_shape), order=order, mode="constant",
                             cval=cval, prefilter=False)


def _world_axes(shape, affine) -> list[np.ndarray]:
    """World coordinates (mm) of an axis-aligned grid as three broadcastable float32 arrays."""
    axes = []
    for axis, n in enumerate(shape):
        coords = (affine[axis, axis] * np.arange(n) + affine[axis, 3]).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = n
        axes.append(coords.reshape(view))
    return axes


def _cubic_bspline_weights(n_fine: int, step: float, n_coarse: int, offset: float) -> np.ndarray:
    """(n_fine, n_coarse) weights of the cubic B-spline through coarse nodes, fine voxel i lying
    at coarse coordinate ``i / step + offset``."""
    distance = np.abs(np.arange(n_fine)[:, None] / step + offset - np.arange(n_coarse)[None, :])
    weights = np.where(distance < 1.0, 2.0 / 3.0 - distance**2 + distance**3 / 2.0,
                       np.where(distance < 2.0, (2.0 - distance) ** 3 / 6.0, 0.0))
    return weights.astype(np.float32)


def _smooth_random_field(shape, voxel_size, *, rng, correlation_mm: float) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field, float32.

    White noise on a coarse lattice (nodes every ``correlation_mm / 3``) is Gaussian-smoothed
    (sigma ``correlation_mm``) and carried onto the voxel grid by a separable cubic B-spline: the
    low-frequency field of a full-resolution Gaussian filter at a fraction of its cost.
    """
    node_mm = correlation_mm / 3.0
    steps = [max(node_mm / v, 1.0) for v in voxel_size]  # voxels per node
    margin = 3
    coarse_shape = tuple(int(np.ceil((n - 1) / s)) + 1 + 2 * margin for n, s in zip(shape, steps))
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    coarse = ndimage.gaussian_filter(noise, sigma=correlation_mm / node_mm, mode="wrap")
    wx, wy, wz = (_cubic_bspline_weights(n, s, c, margin)
                  for n, s, c in zip(shape, steps, coarse_shape))
    # one axis at a time, each as a single 2-D matrix product
    fine = (wx @ coarse.reshape(coarse_shape[0], -1)).reshape(shape[0], *coarse_shape[1:])
    fine = np.einsum("jb,abc->ajc", wy, fine, optimize=True)
    fine = (fine.reshape(-1, coarse_shape[2]) @ wz.T).reshape(shape)
    return (fine - fine.mean()) / np.float32(fine.std() + 1e-12)


def _template_grid(voxel_size_mm: float, template_affine, template_shape):
    """Shape and affine of the phantom grid: the template's field of view (extended below by
    :data:`_INFERIOR_PADDING_MM` for the lower head) sampled every ``voxel_size_mm``."""
    template_affine = np.asarray(template_affine, float)
    spacing = np.abs(np.diag(template_affine)[:3])
    start = template_affine[:3, 3].copy()
    extent = (np.asarray(template_shape) - 1) * spacing
    start[2] -= _INFERIOR_PADDING_MM
    extent[2] += _INFERIOR_PADDING_MM
    shape = tuple(int(np.floor(e / voxel_size_mm + 1e-6)) + 1 for e in extent)
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = start
    return shape, affine


# ----------------------------------------------------------------------------- template inputs

@functools.lru_cache(maxsize=_ATLAS_CACHE_SIZE)
def _template_inputs(atlas_dir: str | None):
    """Template brain mask, atlas labels (both on the template grid) and the atlas table."""
    from .. import atlases

    files = atlases.template_files()
    mask_image = nib.load(str(files["mask"]))

    def read(folder):
        labels_path, tsv_path = atlases.load_atlas(folder)
        image = nib.load(str(labels_path))
        labels = np.rint(np.asarray(image.dataobj)).astype(np.int16)
        return labels_path, image, labels, atlases.read_atlas_table(tsv_path)

    if atlas_dir is None:
        with tempfile.TemporaryDirectory(prefix="qsmprep-atlas-") as scratch:
            labels_path, atlas_image, atlas, table = read(scratch)
    else:
        labels_path, atlas_image, atlas, table = read(atlas_dir)
    if not np.allclose(atlas_image.affine, mask_image.affine, atol=1e-3) or (
            atlas_image.shape != mask_image.shape):
        raise ValueError(f"the atlas {labels_path} is not on the template grid of {files['mask']}")
    mask = np.asarray(mask_image.dataobj) > 0
    regions = []
    for row in table:
        side = str(row["hemisphere"]).strip().upper()[:1]
        if side not in _SIDES:
            raise ValueError(f"atlas region {row['name']!r}: hemisphere must be L or R, not "
                             f"{row['hemisphere']!r}")
        regions.append((int(row["index"]), str(row["name"]).strip(), side))
    for array in (mask, atlas):
        array.setflags(write=False)
    return mask, atlas, np.asarray(mask_image.affine, float), tuple(regions)


@functools.lru_cache(maxsize=1)
def _tissue_probability_maps():
    """nilearn's MNI ICBM 2009 grey- and white-matter probability maps (1 mm) and their affine."""
    from nilearn import datasets

    grey = datasets.load_mni152_gm_template(resolution=1)
    white = datasets.load_mni152_wm_template(resolution=1)
    grey_data = np.asarray(grey.get_fdata(dtype=np.float32))
    white_data = np.asarray(white.get_fdata(dtype=np.float32))
    if white.shape != grey.shape or not np.allclose(white.affine, grey.affine):
        white_data = _resample(white_data, white.affine, grey.affine, grey.shape, order=1)
    for array in (grey_data, white_data):
        array.setflags(write=False)
    return grey_data, white_data, np.asarray(grey.affine, float)


def region_labels(label_names: dict[int, str]) -> dict[tuple[str, str], int]:
    """(region, hemisphere 'L'/'R') -> label index, for the atlas regions among ``label_names``."""
    found = {}
    for index, name in label_names.items():
        if index < ATLAS_LABEL_OFFSET:
            continue
        region, side = name.rsplit("_", 1)
        found[(region, {"left": "L", "right": "R"}[side])] = index
    return found


#: Order in which overlapping composite regions are painted (later ones win where they share
#: parts): the motor cortex (precentral gyrus) over the primary motor and premotor areas.
COMPOSITE_PRECEDENCE = ("premotor_cortex", "primary_motor_cortex", "motor_cortex")


def _composite_regions() -> dict:
    from qsmprep.atlases import COMPOSITE_REGIONS

    return COMPOSITE_REGIONS


def _named_regions(region_susceptibility_ppb, regions) -> set[str]:
    """Atlas regions that ``region_susceptibility_ppb`` sets, directly or through a composite
    (keys as :func:`_resolve_region_values` reads them)."""
    names = {name for _, name, _ in regions}
    composites = _composite_regions()
    named = set()
    for key in region_susceptibility_ppb or {}:
        stem, _, suffix = key.rpartition("_")
        region = stem if suffix in ("left", "right") and stem in names | set(composites) else key
        named.update(composites.get(region, (region,)))
    return named


def _resolve_region_values(region_susceptibility_ppb, regions) -> dict[tuple[str, str], float]:
    """(region, side) -> ppb: defaults, then the given values.

    Accepted forms: ``{"putamen": 50}`` (both sides), ``{"putamen": {"L": 40, "R": 60}}``
    (``left``/``right`` also accepted as keys) and ``{"putamen_left": 40}``. A composite region
    of the atlas (``motor_cortex``: the precentral gyrus; ``premotor_cortex``; ...) sets all its
    parts; values of single regions override those of composites.
    """
    names = sorted({name for _, name, _ in regions})
    composites = {name: parts for name, parts in _composite_regions().items()
                  if set(parts) <= set(names)}
    values = {}
    for _, name, side in regions:
        default = DEFAULT_REGION_SUSCEPTIBILITY_PPB.get(name)
        if default is None:  # a region without a listed value: grey matter
            default = 1000 * HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"]
        values[(name, side)] = float(default)
    side_keys = {"l": "L", "left": "L", "r": "R", "right": "R"}
    known = set(names) | set(composites)

    def parsed(key):
        if key in known:
            return key, None
        stem, _, suffix = key.rpartition("_")
        if stem in known and suffix in ("left", "right"):
            return stem, side_keys[suffix]
        raise KeyError(f"unknown atlas region {key!r}; known: {sorted(known)}")

    # composites first (in the order of COMPOSITE_PRECEDENCE, so the motor cortex wins where it
    # overlaps the premotor cortex), then single regions, which override them
    given = [(key, value, *parsed(key)) for key, value in (region_susceptibility_ppb or {}).items()]
    given.sort(key=lambda item: (item[2] not in composites,
                                 COMPOSITE_PRECEDENCE.index(item[2])
                                 if item[2] in COMPOSITE_PRECEDENCE else 0))
    for key, value, region, side in given:
        parts = composites.get(region, (region,))
        if isinstance(value, dict):
            if side is not None:
                raise ValueError(f"{key!r} names a side already; give a number")
            for side_key, side_value in value.items():
                if str(side_key).lower() not in side_keys:
                    raise KeyError(f"{key!r}: sides are 'L' and 'R', not {side_key!r}")
                for part in parts:
                    values[(part, side_keys[str(side_key).lower()])] = float(side_value)
        else:
            for each in ([side] if side else ["L", "R"]):
                for part in parts:
                    values[(part, each)] = float(value)
    return {key: value for key, value in values.items() if key[0] in names}


def _tissue_properties(name: str):
    """(susceptibility ppm, M0, R2* Hz) of a tissue label, shared with the analytic head."""
    if name == "grey_matter":
        name = "cortical_grey_matter"
    if name == "internal_csf":
        name = "subarachnoid_csf"
    tissue = _LABELS[_LABEL_INDEX[name]][1]
    return tissue.susceptibility_ppm, tissue.m0, tissue.r2star_hz


def _region_properties(name: str, chi_ppm: float):
    """(M0, R2* Hz) of an atlas region given its susceptibility: R2* follows iron."""
    if name == "lateral_ventricle":
        return _tissue_properties("subarachnoid_csf")[1:]
    if name in _REGION_M0:
        return _REGION_M0[name], _deep_grey_r2star_hz(chi_ppm)
    if REGION_TISSUE.get(name) == "white_matter":
        return _tissue_properties("white_matter")[1:]
    chi_gm, m0_gm, r2s_gm = _tissue_properties("grey_matter")
    slope = _deep_grey_r2star_hz(1.0) - _deep_grey_r2star_hz(0.0)  # Hz per ppm of iron
    return m0_gm, max(r2s_gm, r2s_gm + slope * (chi_ppm - chi_gm))


#: Key of ``region_susceptibility_ppb`` that sets the deep half of the precentral grey matter.
DEEP_MOTOR_CORTEX = "motor_cortex_deep"


def _paint_deep_motor_cortex(susceptibility, labels, deep_grey, regions, value_ppb) -> None:
    """Set the deep grey-matter voxels of the precentral gyrus (the motor cortex's parts) to
    ``value_ppb`` (a number, or per side ``{"L": .., "R": ..}``), in place."""
    parts = _composite_regions()["motor_cortex"]
    per_side = value_ppb if isinstance(value_ppb, dict) else {"L": value_ppb, "R": value_ppb}
    for atlas_index, name, side in regions:
        if name in parts and side in per_side:
            voxels = deep_grey & (labels == ATLAS_LABEL_OFFSET + atlas_index)
            susceptibility[voxels] = float(per_side[side]) / 1000.0


# ----------------------------------------------------------------------------- template phantom

def make_template_phantom(
    *,
    voxel_size_mm: float = 1.0,
    region_susceptibility_ppb: dict | None = None,
    seed: int = 0,
    atlas_dir=None,
    texture: bool = True,
) -> tuple[HeadPhantom, np.ndarray]:
    """Build the digital subject in template (MNI152NLin2009cAsym) space.

    Parameters
    ----------
    voxel_size_mm : float
        Isotropic voxel size of the grid (mm): the template grid (1 mm, 193 x 229 x 193, extended
        24 mm downwards for the lower head) resampled.
    region_susceptibility_ppb : dict, optional
        Susceptibility of atlas regions (ppb relative to CSF) replacing
        :data:`DEFAULT_REGION_SUSCEPTIBILITY_PPB`: ``{"putamen": 50}`` sets both sides,
        ``{"putamen": {"L": 40, "R": 60}}`` or ``{"putamen_left": 40}`` one side.
        ``"motor_cortex_deep"`` (a number or ``{"L": .., "R": ..}``) sets the deep half of the
        precentral grey matter (:func:`qsmprep.depth.cortical_depth` of the template's tissue
        classes > 0.5), where ALS gathers iron, over the value of its region; the precentral
        labels then cover the gyrus' grey matter only.
    seed : int
        Seed of the smooth M0 / R2* texture.
    atlas_dir : path, optional
        Folder where :func:`qsmprep.atlases.load_atlas` writes (or finds) the atlas; default: a
        temporary folder. Loaded atlases are kept in memory for the process.
    texture : bool
        Add a mild smooth texture (3 % SD) to M0 and R2* inside the head.

    Returns
    -------
    phantom : HeadPhantom
        Labels: the tissues (``grey_matter``, ``white_matter``, ``subarachnoid_csf``, skull,
        scalp, air cavities, ...) and the atlas regions ``<region>_<left|right>`` (label
        ``100 + atlas index``). ``brain_mask``: parenchyma and ventricles.
        ``region_susceptibility_ppm``: label name -> assigned susceptibility (ppm).
    affine : ndarray, shape (4, 4)
        Voxel-to-world (MNI mm) affine of the grid.
    """
    voxel_size_mm = float(voxel_size_mm)
    if not voxel_size_mm > 0:
        raise ValueError(f"voxel_size_mm must be positive, not {voxel_size_mm}")
    region_susceptibility_ppb = dict(region_susceptibility_ppb or {})
    deep_motor_ppb = region_susceptibility_ppb.pop(DEEP_MOTOR_CORTEX, None)
    key = None if atlas_dir is None else str(Path(atlas_dir).resolve())
    template_mask, template_atlas, template_affine, regions = _template_inputs(key)
    named = _named_regions(region_susceptibility_ppb, regions)
    regions = tuple(region for region in regions
                    if region[1] not in MIXED_TISSUE_REGIONS or region[1] in named)
    grey_map, white_map, tissue_affine = _tissue_probability_maps()
    shape, affine = _template_grid(voxel_size_mm, template_affine, template_mask.shape)
    voxel_size = (voxel_size_mm,) * 3

    # Tissue classes inside the template brain mask.
    inside = _resample(template_mask.view(np.uint8), template_affine, affine, shape, order=0) > 0
    grey = _resample(grey_map, tissue_affine, affine, shape, order=1)
    white = _resample(white_map, tissue_affine, affine, shape, order=1)
    atlas = _resample(template_atlas, template_affine, affine, shape, order=0)
    parenchyma = inside & (grey + white >= 0.5)
    labels = np.zeros(shape, dtype=np.int16)
    labels[inside] = _TISSUE_INDEX["subarachnoid_csf"]
    labels[parenchyma & (grey >= white)] = _TISSUE_INDEX["grey_matter"]
    labels[parenchyma & (grey < white)] = _TISSUE_INDEX["white_matter"]
    if deep_motor_ppb is not None:
        from qsmprep.depth import cortical_depth
        from qsmprep.tissue import LABELS as TISSUE_CLASSES

        classes = np.where(parenchyma, np.where(grey >= white, TISSUE_CLASSES["gm"],
                                                TISSUE_CLASSES["wm"]), 0)
        deep_grey = cortical_depth(classes, voxel_size) > 0.5  # as qsmprep.depth's halves
        del classes
    del grey, white

    # Atlas regions: cortical regions keep their grey matter; ventricles first, nuclei last.
    values_ppb = _resolve_region_values(region_susceptibility_ppb, regions)
    tissue_voxels = {name: labels == _TISSUE_INDEX[name] for name in ("grey_matter",
                                                                       "white_matter")}
    ordered = sorted(regions, key=lambda region: (region[1] != "lateral_ventricle", region[0]))
    # with a deep-layer value the precentral labels hold grey matter only: their depth is the
    # cortex's, and the white matter under the gyrus stays white matter
    grey_only = set(_composite_regions()["motor_cortex"]) if deep_motor_ppb is not None else ()
    for atlas_index, name, _side in ordered:
        region = atlas == atlas_index
        if name in REGION_TISSUE:
            region &= tissue_voxels[REGION_TISSUE[name]]
        elif name.endswith("cortex") or name in grey_only:
            region &= tissue_voxels["grey_matter"]
        labels[region] = ATLAS_LABEL_OFFSET + atlas_index
    del atlas, tissue_voxels

    brain = np.isin(labels, [_TISSUE_INDEX["grey_matter"], _TISSUE_INDEX["white_matter"]])
    brain |= labels >= ATLAS_LABEL_OFFSET
    enclosed = ndimage.binary_fill_holes(brain) & ~brain
    labels[enclosed] = _TISSUE_INDEX["internal_csf"]
    brain |= enclosed

    # The head: spinal canal below the brainstem, CSF layer, skull and scalp by distance.
    world = _world_axes(shape, affine)
    intracranial = inside | _spinal_canal(inside, world, voxel_size_mm)
    labels[intracranial & (labels == 0)] = _TISSUE_INDEX["subarachnoid_csf"]
    distance = _distance_outside(intracranial, voxel_size_mm)
    csf_edge = max(_SUBARACHNOID_CSF_MM, voxel_size_mm)  # at least one voxel of CSF
    skull_edge = csf_edge + _SKULL_THICKNESS_MM
    scalp_edge = skull_edge + _SCALP_THICKNESS_MM
    lower_head = _inside_ellipsoid(world, *_LOWER_HEAD, scale=1.0)
    outside = labels == 0
    labels[outside & (distance <= scalp_edge)] = _TISSUE_INDEX["scalp"]
    labels[outside & lower_head & (distance > skull_edge)] = _TISSUE_INDEX[
        "extracranial_soft_tissue"]
    labels[outside & (distance <= skull_edge)] = _TISSUE_INDEX["skull"]
    labels[outside & (distance <= csf_edge)] = _TISSUE_INDEX["subarachnoid_csf"]
    head_mask = intracranial | (distance <= scalp_edge) | lower_head
    solid = np.isin(labels, [_TISSUE_INDEX[name] for name in
                             ("skull", "extracranial_soft_tissue", "scalp")])
    labels[_inside_ellipsoid(world, *_SINUS, scale=1.0) & solid & (distance > csf_edge + 1.0)] = (
        _TISSUE_INDEX["paranasal_sinus"])
    (cx, cy, cz), semi = _EAR_CANAL
    for side, x in (("right", cx), ("left", -cx)):
        canal = _inside_ellipsoid(world, (x, cy, cz), semi, scale=1.0) & solid
        labels[canal & (distance > csf_edge + 1.0)] = _TISSUE_INDEX[f"ear_canal_{side}"]
    del distance, solid

    # Properties per label.
    label_names = dict(_TISSUES)
    chi_lut = np.zeros(ATLAS_LABEL_OFFSET + max([0] + [r[0] for r in regions]) + 1, np.float32)
    m0_lut = np.zeros_like(chi_lut)
    r2s_lut = np.zeros_like(chi_lut)
    region_susceptibility = {}
    for index, name in _TISSUES.items():
        chi, m0_lut[index], r2s_lut[index] = _tissue_properties(name)
        chi_lut[index] = region_susceptibility[name] = float(chi)
    for atlas_index, name, side in regions:
        index = ATLAS_LABEL_OFFSET + atlas_index
        label_names[index] = f"{name}_{_SIDES[side]}"
        chi = values_ppb[(name, side)] / 1000.0
        chi_lut[index] = region_susceptibility[label_names[index]] = chi
        m0_lut[index], r2s_lut[index] = _region_properties(name, chi)
    susceptibility = chi_lut[labels]
    if deep_motor_ppb is not None:
        _paint_deep_motor_cortex(susceptibility, labels, deep_grey, regions, deep_motor_ppb)
        del deep_grey
    m0 = m0_lut[labels]
    r2star = r2s_lut[labels]
    if texture:
        rng = np.random.default_rng(seed)
        tissue = head_mask & (m0 > 0.1)
        for volume in (m0, r2star):
            field_ = _smooth_random_field(shape, voxel_size, rng=rng,
                                          correlation_mm=_TEXTURE_CORRELATION_MM)
            volume[tissue] *= 1.0 + np.float32(_TEXTURE_SD) * field_[tissue]

    phantom = HeadPhantom(
        susceptibility_ppm=susceptibility.astype(np.float32),
        brain_mask=brain,
        head_mask=head_mask,
        m0=m0.astype(np.float32),
        r2star_hz=r2star.astype(np.float32),
        labels=labels,
        label_names=label_names,
        voxel_size=voxel_size,
        region_susceptibility_ppm=region_susceptibility,
        head_scale=1.0,
    )
    return phantom, affine


def _spinal_canal(brain, world, voxel_size_mm: float) -> np.ndarray:
    """A CSF-filled cylinder from the lowest slice of the brainstem down into the neck."""
    slices = np.flatnonzero(brain.any(axis=(0, 1)))
    if slices.size == 0:
        return np.zeros_like(brain)
    lowest = int(slices[0])
    # centre of the brainstem a few millimetres above its cut end
    level = min(lowest + int(round(3.0 / voxel_size_mm)), brain.shape[2] - 1)
    i, j = np.nonzero(brain[:, :, level])
    x = float(world[0].ravel()[i].mean())
    y = float(world[1].ravel()[j].mean())
    disc = (world[0] - x) ** 2 + (world[1] - y) ** 2 <= _SPINAL_CANAL_RADIUS_MM**2
    below = np.zeros(brain.shape[2], dtype=bool)
    below[: level + 1] = True
    below &= world[2].ravel() >= _SPINAL_CANAL_BOTTOM_MM
    return disc & below.reshape(1, 1, -1)


def _distance_outside(mask, voxel_size_mm: float) -> np.ndarray:
    """Distance (mm) from each voxel outside ``mask`` to the mask (0 inside), float32.

    Computed in the bounding box of the mask grown by the scalp depth; farther voxels get inf.
    """
    reach = int(np.ceil((max(_SUBARACHNOID_CSF_MM, voxel_size_mm) + _SKULL_THICKNESS_MM
                         + _SCALP_THICKNESS_MM) / voxel_size_mm)) + 2
    distance = np.full(mask.shape, np.inf, dtype=np.float32)
    where = np.argwhere(mask)
    if where.size == 0:
        return distance
    low = np.maximum(where.min(axis=0) - reach, 0)
    high = np.minimum(where.max(axis=0) + reach + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    distance[box] = ndimage.distance_transform_edt(~mask[box], sampling=voxel_size_mm)
    return distance


# ----------------------------------------------------------------------------- native space

@dataclass
class NativeTransform:
    """The true spatial relation between the template-space subject and its native image.

    A template point x (world mm) sits at the native (scanner) point y with

        x = A^-1 y + u(y),   A = [R S | t]

    where ``matrix`` = A (a rotation R about the template origin, an isotropic scale S and a
    translation t, applied in that order) and u is the smooth displacement field
    ``displacement_mm`` (template mm, sampled on the native grid). Without deformation
    ``y = A x`` exactly.

    Attributes
    ----------
    matrix : ndarray (4, 4)
        Template world -> native world affine A.
    displacement_mm : ndarray, float32, shape (3, *native_shape)
        u at the native voxel centres (mm along the template world axes).
    native_affine, template_affine : ndarray (4, 4)
        Voxel-to-world affines of the native and template grids.
    rotation_deg, translation_mm : tuple of float
    scale, deformation_mm : float
        Parameters that made ``matrix`` and the displacement (largest displacement length).
    seed : int
    """

    matrix: np.ndarray
    displacement_mm: np.ndarray
    native_affine: np.ndarray
    template_affine: np.ndarray
    rotation_deg: tuple
    translation_mm: tuple
    scale: float
    deformation_mm: float
    seed: int
    grid_rotation_deg: tuple = field(default=(0.0, 0.0, 0.0))

    def _displacement_at(self, native_points_mm) -> np.ndarray:
        """u (mm) at native world points (n, 3), trilinear."""
        points = np.asarray(native_points_mm, float).reshape(-1, 3)
        index = nib.affines.apply_affine(np.linalg.inv(self.native_affine), points).T
        return np.stack([ndimage.map_coordinates(component, index, order=1, mode="nearest")
                         for component in self.displacement_mm], axis=1)

    def native_to_template(self, points_mm) -> np.ndarray:
        """Template world points (n, 3) of native world points (n, 3)."""
        points = np.asarray(points_mm, float).reshape(-1, 3)
        return (nib.affines.apply_affine(np.linalg.inv(self.matrix), points)
                + self._displacement_at(points))

    def template_to_native(self, points_mm, *, iterations: int = 20) -> np.ndarray:
        """Native world points (n, 3) of template world points (n, 3) (fixed-point inverse)."""
        points = np.asarray(points_mm, float).reshape(-1, 3)
        native = nib.affines.apply_affine(self.matrix, points)
        if not self.deformation_mm:
            return native
        for _ in range(iterations):
            native = nib.affines.apply_affine(self.matrix, points - self._displacement_at(native))
        return native

    def describe(self) -> dict:
        """JSON-ready description (no displacement field)."""
        return {
            "TemplateSpace": TEMPLATE_SPACE,
            "TemplateToNativeAffine": np.round(self.matrix, 9).tolist(),
            "RotationDeg": [float(v) for v in self.rotation_deg],
            "RotationConvention": "R = Rz Ry Rx about the world x, y, z axes through the origin",
            "Scale": float(self.scale),
            "TranslationMm": [float(v) for v in self.translation_mm],
            "DeformationMm": float(self.deformation_mm),
            "DeformationCorrelationMm": _DEFORMATION_CORRELATION_MM,
            "Seed": int(self.seed),
            "GridRotationDeg": [float(v) for v in self.grid_rotation_deg],
            "NativeAffine": np.round(self.native_affine, 9).tolist(),
            "TemplateAffine": np.round(self.template_affine, 9).tolist(),
            "Mapping": "x_template = inv(A) y_native + u(y_native)",
        }


def _head_centre_mm(phantom: HeadPhantom, template_affine, field_of_view_mm) -> np.ndarray:
    """Template point put at the native grid centre: the middle of the head (left-right,
    front-back) and of the brain (up-down), raised where needed to keep the top of the head plus
    8 mm inside the field of view."""
    axes = _world_axes(phantom.shape, np.asarray(template_affine, float))
    centre = np.zeros(3)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        source = phantom.head_mask if axis < 2 else phantom.brain_mask
        coords = axes[axis].ravel()[np.flatnonzero(source.any(axis=other))]
        centre[axis] = (coords.min() + coords.max()) / 2.0
    head_top = float(axes[2].ravel()[np.flatnonzero(phantom.head_mask.any(axis=(0, 1)))].max())
    centre[2] = max(centre[2], head_top + 8.0 - field_of_view_mm[2] / 2.0)
    return centre


def _template_to_native_matrix(rotation_deg, translation_mm, scale) -> np.ndarray:
    """A = [R S | t]: rotation about the template origin, isotropic scale, then translation."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, not {scale}")
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation_matrix(rotation_deg) * float(scale)
    matrix[:3, 3] = np.asarray(translation_mm, float)
    return matrix


def native_grid_affine(
    phantom: HeadPhantom,
    template_affine,
    *,
    rotation_deg=(0.0, 0.0, 0.0),
    translation_mm=(0.0, 0.0, 0.0),
    scale: float = 1.0,
    native_shape=(176, 216, 176),
    native_voxel_size=(1.0, 1.0, 1.0),
    grid_rotation_deg=None,
) -> np.ndarray:
    """Voxel-to-world affine of the native grid that :func:`warp_to_native` uses by default.

    The grid is rotated by ``grid_rotation_deg`` (default: ``rotation_deg``, a slab that follows
    the head) and centred on the moved head (see :func:`warp_to_native`).
    """
    matrix = _template_to_native_matrix(rotation_deg, translation_mm, scale)
    if grid_rotation_deg is None:
        grid_rotation_deg = rotation_deg
    field_of_view = np.asarray(native_shape, float) * np.asarray(native_voxel_size, float)
    centre = _head_centre_mm(phantom, template_affine, field_of_view / float(scale))
    affine = oblique_affine(shape=native_shape, voxel_size=native_voxel_size,
                            rotation_deg=grid_rotation_deg)
    affine[:3, 3] += nib.affines.apply_affine(matrix, centre)
    return affine


def warp_to_native(
    phantom: HeadPhantom,
    template_affine,
    *,
    rotation_deg=(0.0, 0.0, 0.0),
    translation_mm=(0.0, 0.0, 0.0),
    deformation_mm: float = 0.0,
    native_shape=(176, 216, 176),
    native_voxel_size=(1.0, 1.0, 1.0),
    seed: int = 0,
    scale: float = 1.0,
    grid_rotation_deg=None,
    native_affine=None,
) -> tuple[HeadPhantom, np.ndarray, NativeTransform]:
    """Move a template-space subject into a native space and resample it on a native grid.

    Parameters
    ----------
    phantom : HeadPhantom
        Subject in template space, e.g. from :func:`make_template_phantom`.
    template_affine : ndarray (4, 4)
        Its voxel-to-world affine.
    rotation_deg : tuple of float
        Head rotation (degrees) about the world x, y, z axes through the template origin
        (R = Rz Ry Rx).
    translation_mm : tuple of float
        Head translation (mm) after rotation and scale.
    deformation_mm : float
        Largest length (mm) of the smooth random displacement (Gaussian-smoothed noise,
        correlation length 30 mm); 0 for a purely affine relation.
    native_shape, native_voxel_size : tuple
        Native grid (voxels, mm).
    seed : int
        Seed of the displacement field.
    scale : float
        Isotropic scale of the head (1: template size).
    grid_rotation_deg : tuple of float, optional
        Orientation of the native grid in the scanner (an oblique slab). Default:
        ``rotation_deg`` (the slab follows the head).
    native_affine : ndarray (4, 4), optional
        The native grid's voxel-to-world affine; default :func:`native_grid_affine`: centred on
        the middle of the moved head (of the brain up-down, raised to keep the top of the head
        in the field of view).

    Returns
    -------
    phantom : HeadPhantom
        The subject on the native grid: labels (and masks) by nearest neighbour; susceptibility
        (brain and non-brain sources separately, so that the brain's values never mix with bone
        or air), M0 and R2* by linear interpolation.
    affine : ndarray (4, 4)
        Voxel-to-world (scanner) affine of the native grid.
    transform : NativeTransform
        The true template <-> native relation.
    """
    template_affine = np.asarray(template_affine, float)
    native_shape = tuple(int(n) for n in native_shape)
    native_voxel_size = tuple(float(v) for v in native_voxel_size)
    rotation_deg = tuple(float(v) for v in rotation_deg)
    translation_mm = tuple(float(v) for v in translation_mm)
    grid_rotation_deg = tuple(float(v) for v in (rotation_deg if grid_rotation_deg is None
                                                  else grid_rotation_deg))
    matrix = _template_to_native_matrix(rotation_deg, translation_mm, scale)
    if native_affine is None:
        native_affine = native_grid_affine(
            phantom, template_affine, rotation_deg=rotation_deg, translation_mm=translation_mm,
            scale=scale, native_shape=native_shape, native_voxel_size=native_voxel_size,
            grid_rotation_deg=grid_rotation_deg)
    native_affine = np.asarray(native_affine, float)
    if not np.allclose(np.linalg.norm(native_affine[:3, :3], axis=0), native_voxel_size,
                       rtol=1e-4):
        raise ValueError("native_affine does not have the voxel size native_voxel_size")

    # Template voxel coordinates of every native voxel centre.
    rng = np.random.default_rng(seed)
    if deformation_mm:
        displacement = np.stack([
            _smooth_random_field(native_shape, native_voxel_size, rng=rng,
                                 correlation_mm=_DEFORMATION_CORRELATION_MM)
            for _ in range(3)])
        largest = float(np.sqrt((displacement**2).sum(axis=0)).max())
        displacement *= np.float32(float(deformation_mm) / largest)
    else:
        displacement = np.zeros((3,) + native_shape, dtype=np.float32)
    to_template = np.linalg.inv(template_affine) @ np.linalg.inv(matrix) @ native_affine
    to_voxel = np.linalg.inv(template_affine)[:3, :3]
    index = [np.arange(n, dtype=np.float32).reshape([n if a == axis else 1 for a in range(3)])
             for axis, n in enumerate(native_shape)]
    coordinates = np.empty((3,) + native_shape, dtype=np.float32)
    for row in range(3):
        m = to_template[row]
        coordinates[row] = m[0] * index[0] + m[1] * index[1] + m[2] * index[2] + m[3]
        for column in range(3):
            if to_voxel[row, column]:
                coordinates[row] += np.float32(to_voxel[row, column]) * displacement[column]
    del index

    def sample(volume, order, cval=0.0):
        return ndimage.map_coordinates(volume, coordinates, order=order, mode="constant",
                                       cval=cval, prefilter=False)

    labels = sample(phantom.labels, 0)
    brain_mask = np.isin(labels, _brain_label_indices(phantom))
    head_mask = sample(phantom.head_mask.view(np.uint8), 0).astype(bool)
    chi = phantom.susceptibility_ppm
    outside_value = float(np.median(np.concatenate(
        [face.ravel() for face in (chi[0], chi[-1], chi[:, 0], chi[:, -1], chi[:, :, 0],
                                   chi[:, :, -1])])))
    brain_chi = sample(phantom.brain_susceptibility_ppm(), 1)
    other_chi = sample(np.where(phantom.brain_mask, np.float32(0.0), chi), 1, cval=outside_value)
    susceptibility = np.where(brain_mask, brain_chi, other_chi).astype(np.float32)
    del brain_chi, other_chi
    m0 = sample(phantom.m0, 1)
    r2star = sample(phantom.r2star_hz, 1)
    del coordinates

    native = HeadPhantom(
        susceptibility_ppm=susceptibility,
        brain_mask=brain_mask,
        head_mask=head_mask,
        m0=m0.astype(np.float32),
        r2star_hz=r2star.astype(np.float32),
        labels=labels.astype(np.int16),
        label_names=dict(phantom.label_names),
        voxel_size=native_voxel_size,
        region_susceptibility_ppm=dict(phantom.region_susceptibility_ppm),
        head_scale=phantom.head_scale * float(scale),
    )
    transform = NativeTransform(
        matrix=matrix, displacement_mm=displacement, native_affine=native_affine,
        template_affine=template_affine, rotation_deg=rotation_deg,
        translation_mm=translation_mm, scale=float(scale), deformation_mm=float(deformation_mm),
        seed=int(seed), grid_rotation_deg=grid_rotation_deg)
    return native, native_affine, transform


def _brain_label_indices(phantom: HeadPhantom) -> list[int]:
    """Labels that lie (wholly) in the phantom's brain mask."""
    inside = np.unique(phantom.labels[phantom.brain_mask])
    outside = set(np.unique(phantom.labels[~phantom.brain_mask]).tolist())
    return [int(label) for label in inside if int(label) not in outside]
