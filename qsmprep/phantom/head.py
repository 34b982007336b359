"""Analytic numerical head phantom for QSM: ellipsoids drawn on the voxel grid, in millimetres.

The phantom is a piecewise-constant susceptibility model of a head with

- a brain (cerebrum, cerebellum and brainstem ellipsoids) with a cortical grey-matter shell around
  white matter, lateral and third ventricles, and deep grey-matter nuclei left and right
  (caudate, putamen, globus pallidus, thalamus, substantia nigra, red nucleus, dentate) carrying
  the healthy adult values used by the head phantom of the 2019 QSM reconstruction challenge
  (RC2; Marques et al., Magn Reson Med 2021;86:526-542), and two thin vein-like sources;
- a thin layer of subarachnoid CSF, a ~6 mm skull (diamagnetic, dark), a ~5 mm scalp and the
  soft tissue of the face/skull base, which hold air cavities (a paranasal sinus and two ear
  canals);
- air outside the head.

Susceptibility is in ppm *relative to CSF/water* (CSF = 0). Air is +9.4 ppm relative to water
(chi_air ~ +0.36 ppm, chi_water ~ -9.05 ppm SI; Schenck, Med Phys 1996;23:815-850) and cortical
bone about -2 ppm (Hopkins & Wehrli, Magn Reson Med 1997;37:494-500), so the head sits in a
strong background field like a real one.

Coordinates: millimetres from the centre of the voxel grid, axis 0 = left -> right, axis 1 =
posterior -> anterior, axis 2 = inferior -> superior (RAS when the affine has no rotation).
Geometry is defined in millimetres, so anisotropic voxels are drawn correctly; the head is
shrunk uniformly when the field of view is smaller than :data:`REFERENCE_FIELD_OF_VIEW_MM`.
Region edges are sharp (binary labels); magnitude and R2* carry a mild smooth texture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "AIR_SUSCEPTIBILITY_PPM",
    "BONE_SUSCEPTIBILITY_PPM",
    "HEALTHY_SUSCEPTIBILITY_PPM",
    "REFERENCE_FIELD_OF_VIEW_MM",
    "HeadPhantom",
    "make_head_phantom",
]

#: Healthy adult regional susceptibility (ppm relative to CSF) of the RC2 head phantom.
HEALTHY_SUSCEPTIBILITY_PPM: dict[str, float] = {
    "dentate_nucleus": 0.142,
    "globus_pallidus": 0.124,
    "substantia_nigra": 0.102,
    "red_nucleus": 0.097,
    "caudate": 0.039,
    "putamen": 0.036,
    "thalamus": 0.016,
    "cortical_grey_matter": 0.015,
    "white_matter": -0.030,
    "csf": 0.0,
}

#: Air relative to water (ppm).
AIR_SUSCEPTIBILITY_PPM = 9.4
#: Cortical bone relative to water (ppm).
BONE_SUSCEPTIBILITY_PPM = -2.0
#: Deoxygenated venous blood relative to tissue (ppm), as in the RC2 phantom's veins.
VEIN_SUSCEPTIBILITY_PPM = 0.45

#: Field of view (mm) the head is designed for; smaller grids get a uniformly shrunk head.
REFERENCE_FIELD_OF_VIEW_MM = (160.0, 192.0, 160.0)

_SKULL_THICKNESS_MM = 6.0
_SCALP_THICKNESS_MM = 5.0
_SUBARACHNOID_CSF_MM = 2.0
_CORTEX_THICKNESS_MM = 4.0
_VEIN_RADIUS_MM = 1.5


def _deep_grey_r2star_hz(susceptibility_ppm: float) -> float:
    """R2* of an iron-rich nucleus rising with its susceptibility: 25 Hz (16 ppb) to 45 Hz (142 ppb).

    Iron drives both R2* and susceptibility (Langkammer et al., NeuroImage 2012;62:1593).
    """
    return 23.0 + 155.0 * susceptibility_ppm


@dataclass(frozen=True)
class _Tissue:
    """Properties of one labelled region."""

    susceptibility_ppm: float
    m0: float
    r2star_hz: float


def _deep(region: str, m0: float) -> _Tissue:
    chi = HEALTHY_SUSCEPTIBILITY_PPM[region]
    return _Tissue(chi, m0, _deep_grey_r2star_hz(chi))


# Label index -> (snake_case name, tissue). Order of drawing is given in make_head_phantom.
_CSF = _Tissue(0.0, 1.0, 2.0)
_LABELS: dict[int, tuple[str, _Tissue]] = {
    0: ("background", _Tissue(AIR_SUSCEPTIBILITY_PPM, 0.0, 0.0)),
    1: ("scalp", _Tissue(0.0, 0.55, 30.0)),
    2: ("extracranial_soft_tissue", _Tissue(0.0, 0.50, 30.0)),
    3: ("skull", _Tissue(BONE_SUSCEPTIBILITY_PPM, 0.03, 300.0)),
    4: ("paranasal_sinus", _Tissue(AIR_SUSCEPTIBILITY_PPM, 0.0, 0.0)),
    5: ("ear_canal_left", _Tissue(AIR_SUSCEPTIBILITY_PPM, 0.0, 0.0)),
    6: ("ear_canal_right", _Tissue(AIR_SUSCEPTIBILITY_PPM, 0.0, 0.0)),
    7: ("subarachnoid_csf", _CSF),
    8: ("cortical_grey_matter", _Tissue(HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"], 0.80, 15.0)),
    9: ("cerebellar_cortex", _Tissue(HEALTHY_SUSCEPTIBILITY_PPM["cortical_grey_matter"], 0.80, 15.0)),
    10: ("white_matter", _Tissue(HEALTHY_SUSCEPTIBILITY_PPM["white_matter"], 0.65, 20.0)),
    11: ("brainstem", _Tissue(HEALTHY_SUSCEPTIBILITY_PPM["white_matter"], 0.68, 22.0)),
    12: ("lateral_ventricle_left", _CSF),
    13: ("lateral_ventricle_right", _CSF),
    14: ("third_ventricle", _CSF),
    15: ("caudate_left", _deep("caudate", 0.76)),
    16: ("caudate_right", _deep("caudate", 0.76)),
    17: ("putamen_left", _deep("putamen", 0.76)),
    18: ("putamen_right", _deep("putamen", 0.76)),
    19: ("globus_pallidus_left", _deep("globus_pallidus", 0.70)),
    20: ("globus_pallidus_right", _deep("globus_pallidus", 0.70)),
    21: ("thalamus_left", _deep("thalamus", 0.74)),
    22: ("thalamus_right", _deep("thalamus", 0.74)),
    23: ("substantia_nigra_left", _deep("substantia_nigra", 0.70)),
    24: ("substantia_nigra_right", _deep("substantia_nigra", 0.70)),
    25: ("red_nucleus_left", _deep("red_nucleus", 0.70)),
    26: ("red_nucleus_right", _deep("red_nucleus", 0.70)),
    27: ("dentate_nucleus_left", _deep("dentate_nucleus", 0.70)),
    28: ("dentate_nucleus_right", _deep("dentate_nucleus", 0.70)),
    29: ("vein", _Tissue(VEIN_SUSCEPTIBILITY_PPM, 0.60, 45.0)),
}
_LABEL_INDEX = {name: index for index, (name, _) in _LABELS.items()}
_BRAIN_LABELS = tuple(range(8, 30))

# Geometry of the reference head (mm): (centre, semi-axes).
_INTRACRANIAL = (  # brain + subarachnoid CSF
    ((0.0, 0.0, 14.0), (62.0, 78.0, 52.0)),  # cerebrum
    ((0.0, -46.0, -28.0), (46.0, 28.0, 22.0)),  # posterior fossa / cerebellum
    ((0.0, -20.0, -24.0), (13.0, 13.0, 30.0)),  # brainstem
)
_LOWER_HEAD = ((0.0, 6.0, -40.0), (60.0, 78.0, 34.0))  # face, skull base, upper neck
_SINUS = ((0.0, 44.0, -50.0), (15.0, 13.0, 10.0))
_EAR_CANAL = ((46.0, -4.0, -38.0), (7.0, 9.0, 6.0))  # right; mirrored for left
_CEREBRUM_INDEX, _CEREBELLUM_INDEX, _BRAINSTEM_INDEX = 0, 1, 2

# Structures inside the brain: name -> (centre of the right-hemisphere copy, semi-axes); names
# without a side are drawn once at the given centre.
_BILATERAL = {
    "lateral_ventricle": ((10.0, -4.0, 22.0), (6.0, 26.0, 7.0)),
    "caudate": ((18.0, 16.0, 18.0), (6.0, 12.0, 8.0)),
    "putamen": ((27.0, 4.0, 6.0), (6.0, 16.0, 10.0)),
    "globus_pallidus": ((18.0, 0.0, 2.0), (4.5, 10.0, 6.0)),
    "thalamus": ((11.0, -18.0, 8.0), (8.0, 14.0, 9.0)),
    "substantia_nigra": ((11.0, -17.0, -12.0), (3.0, 8.0, 3.5)),
    "red_nucleus": ((5.0, -22.0, -8.0), (3.5, 4.5, 4.0)),
    "dentate_nucleus": ((16.0, -50.0, -30.0), (6.0, 8.0, 5.0)),
}
_THIRD_VENTRICLE = ((0.0, -10.0, 4.0), (2.5, 10.0, 7.0))
_VEINS = (  # segments (start, end) in the centrum semiovale
    ((-26.0, -30.0, 36.0), (-26.0, 24.0, 36.0)),
    ((26.0, -30.0, 36.0), (26.0, 24.0, 36.0)),
)


@dataclass
class HeadPhantom:
    """A labelled head phantom on a voxel grid.

    Attributes
    ----------
    susceptibility_ppm : ndarray, float32
        Total susceptibility (ppm relative to CSF), inside and outside the brain: air outside the
        head and in the cavities is +9.4 ppm, bone -2 ppm.
    brain_mask : ndarray, bool
        Brain parenchyma, ventricles and veins (subarachnoid CSF excluded).
    head_mask : ndarray, bool
        Everything inside the scalp surface (internal air cavities included).
    m0 : ndarray, float32
        Proton-density-like magnitude at TE = 0 (CSF 1, GM 0.8, WM 0.65, skull ~0, scalp 0.55).
    r2star_hz : ndarray, float32
        R2* (1/s).
    labels : ndarray, int16
        Label map, 0 outside the head; see ``label_names``.
    label_names : dict of int to str
        Label index -> snake_case region name (e.g. ``globus_pallidus_left``).
    voxel_size : tuple of float
        Voxel edge lengths (mm) along the array axes.
    region_susceptibility_ppm : dict of str to float
        Region name -> the susceptibility assigned to it (ppm).
    head_scale : float
        Uniform scale applied to the reference head geometry (1 for a full-size head).
    """

    susceptibility_ppm: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    m0: np.ndarray
    r2star_hz: np.ndarray
    labels: np.ndarray
    label_names: dict[int, str]
    voxel_size: tuple[float, float, float]
    region_susceptibility_ppm: dict[str, float] = field(default_factory=dict)
    head_scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(self.labels.shape)

    def label_index(self, name: str) -> int:
        """Label index of region ``name``."""
        for index, label_name in self.label_names.items():
            if label_name == name:
                return index
        raise KeyError(name)

    def brain_susceptibility_ppm(self) -> np.ndarray:
        """Susceptibility restricted to the brain mask (zero elsewhere), float32."""
        return np.where(self.brain_mask, self.susceptibility_ppm, np.float32(0.0)).astype(np.float32)


def _grid_mm(shape, voxel_size) -> list[np.ndarray]:
    """Broadcastable voxel-centre coordinates (mm) from the grid centre."""
    axes = []
    for axis, (n, size) in enumerate(zip(shape, voxel_size)):
        coords = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(size))
        view = [1, 1, 1]
        view[axis] = n
        axes.append(coords.reshape(view))
    return axes


def _inside_ellipsoid(grid, centre, semi_axes, *, scale: float, grow_mm: float = 0.0) -> np.ndarray:
    """Voxels inside the ellipsoid (centre, semi_axes) after scaling, with semi-axes grown by ``grow_mm``.

    Growing every semi-axis by t approximates the surface offset by t (exact for a sphere).
    """
    total = None
    for coords, c, a in zip(grid, centre, semi_axes):
        semi = a * scale + grow_mm
        if semi <= 0:
            return np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=bool)
        term = ((coords - np.float32(c * scale)) / np.float32(semi)) ** 2
        total = term if total is None else total + term
    return total <= 1.0


def _inside_union(grid, ellipsoids, *, scale: float, grow_mm: float = 0.0) -> np.ndarray:
    mask = None
    for centre, semi_axes in ellipsoids:
        inside = _inside_ellipsoid(grid, centre, semi_axes, scale=scale, grow_mm=grow_mm)
        mask = inside if mask is None else mask | inside
    return mask


def _near_segment(grid, start, end, *, scale: float, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the segment start-end (a thin tube)."""
    start = np.asarray(start, dtype=np.float32) * scale
    end = np.asarray(end, dtype=np.float32) * scale
    direction = end - start
    length_squared = float(direction @ direction)
    relative = [g - s for g, s in zip(grid, start)]
    along = sum(r * d for r, d in zip(relative, direction)) / np.float32(length_squared)
    along = np.clip(along, 0.0, 1.0)
    distance_squared = sum((r - along * d) ** 2 for r, d in zip(relative, direction))
    return distance_squared <= np.float32(radius_mm**2)


def _smooth_texture(shape, voxel_size, *, rng, correlation_mm: float = 8.0) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field (Gaussian-filtered white noise), float32."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    sigma = [correlation_mm / s for s in voxel_size]
    smooth = ndimage.gaussian_filter(noise, sigma=sigma, mode="wrap")
    return ((smooth - smooth.mean()) / (smooth.std() + 1e-12)).astype(np.float32)


def _resolve_overrides(overrides) -> dict[str, float]:
    """Expand region overrides: 'putamen' sets both sides, 'putamen_left' only one."""
    resolved: dict[str, float] = {}
    if not overrides:
        return resolved
    names = {name for name, _ in _LABELS.values()}
    for region, value in overrides.items():
        sided = [f"{region}_left", f"{region}_right"]
        if region in names:
            targets = [region]
        elif all(name in names for name in sided):
            targets = sided
        else:
            raise KeyError(f"Unknown phantom region {region!r}; known: {sorted(names)}")
        for target in targets:
            resolved[target] = float(value)
    return resolved


def make_head_phantom(
    *,
    shape=(80, 96, 80),
    voxel_size=(2.0, 2.0, 2.0),
    seed: int = 0,
    head_scale: float | None = None,
    susceptibility_overrides_ppm: dict[str, float] | None = None,
    texture: bool = True,
) -> HeadPhantom:
    """Build the analytic head phantom on a voxel grid.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (3 axes).
    voxel_size : tuple of float
        Voxel edge lengths (mm) along the array axes; anisotropic voxels are allowed.
    seed : int
        Seed of the smooth magnitude/R2* texture.
    head_scale : float, optional
        Uniform scale of the reference head. Default: 1, or smaller so that the head fits a
        field of view smaller than :data:`REFERENCE_FIELD_OF_VIEW_MM`.
    susceptibility_overrides_ppm : dict, optional
        Region -> susceptibility (ppm) replacing the healthy value, e.g.
        ``{"globus_pallidus": 0.2, "putamen_left": 0.08}`` (a name without side sets both sides).
    texture : bool
        Add a mild smooth texture (3 % SD in M0 and in R2*) inside each region.

    Returns
    -------
    HeadPhantom
    """
    shape = tuple(int(n) for n in shape)
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(shape) != 3 or len(voxel_size) != 3:
        raise ValueError("shape and voxel_size need three entries")
    if head_scale is None:
        field_of_view = [n * v for n, v in zip(shape, voxel_size)]
        head_scale = min(1.0, *(f / r for f, r in zip(field_of_view, REFERENCE_FIELD_OF_VIEW_MM)))
    scale = float(head_scale)
    grid = _grid_mm(shape, voxel_size)

    def ellipsoid(centre, semi_axes, grow_mm=0.0):
        return _inside_ellipsoid(grid, centre, semi_axes, scale=scale, grow_mm=grow_mm * scale)

    def union(ellipsoids, grow_mm=0.0):
        return _inside_union(grid, ellipsoids, scale=scale, grow_mm=grow_mm * scale)

    labels = np.zeros(shape, dtype=np.int16)
    index = _LABEL_INDEX

    # Outside the brain: soft tissue, scalp, skull, air cavities, subarachnoid CSF.
    skull_outer = _SKULL_THICKNESS_MM
    scalp_outer = _SKULL_THICKNESS_MM + _SCALP_THICKNESS_MM
    lower_head = ellipsoid(*_LOWER_HEAD)
    scalp = union(_INTRACRANIAL, scalp_outer)
    head_mask = lower_head | scalp
    labels[scalp] = index["scalp"]
    labels[lower_head] = index["extracranial_soft_tissue"]
    labels[union(_INTRACRANIAL, skull_outer)] = index["skull"]
    soft = labels == index["extracranial_soft_tissue"]
    labels[ellipsoid(*_SINUS) & soft] = index["paranasal_sinus"]
    (cx, cy, cz), semi = _EAR_CANAL
    labels[ellipsoid((cx, cy, cz), semi) & soft] = index["ear_canal_right"]
    labels[ellipsoid((-cx, cy, cz), semi) & soft] = index["ear_canal_left"]
    labels[union(_INTRACRANIAL)] = index["subarachnoid_csf"]

    # Brain: parenchyma = intracranial shrunk by the CSF layer; cortex = its outer shell.
    parenchyma = union(_INTRACRANIAL, -_SUBARACHNOID_CSF_MM)
    core = union(_INTRACRANIAL, -_SUBARACHNOID_CSF_MM - _CORTEX_THICKNESS_MM)
    cerebrum = ellipsoid(*_INTRACRANIAL[_CEREBRUM_INDEX], -_SUBARACHNOID_CSF_MM)
    labels[parenchyma] = index["white_matter"]
    shell = parenchyma & ~core
    labels[shell & cerebrum] = index["cortical_grey_matter"]
    labels[shell & ~cerebrum] = index["cerebellar_cortex"]
    labels[ellipsoid(*_INTRACRANIAL[_BRAINSTEM_INDEX], -_SUBARACHNOID_CSF_MM) & parenchyma] = index[
        "brainstem"
    ]
    labels[ellipsoid(*_THIRD_VENTRICLE) & parenchyma] = index["third_ventricle"]
    for region, ((cx, cy, cz), semi) in _BILATERAL.items():
        for side, x in (("right", cx), ("left", -cx)):
            labels[ellipsoid((x, cy, cz), semi) & parenchyma] = index[f"{region}_{side}"]
    for start, end in _VEINS:
        vein = _near_segment(grid, start, end, scale=scale, radius_mm=_VEIN_RADIUS_MM * max(scale, 0.5))
        labels[vein & (labels == index["white_matter"])] = index["vein"]

    # Properties per label.
    overrides = _resolve_overrides(susceptibility_overrides_ppm)
    n_labels = max(_LABELS) + 1
    chi_lut = np.zeros(n_labels, dtype=np.float32)
    m0_lut = np.zeros(n_labels, dtype=np.float32)
    r2s_lut = np.zeros(n_labels, dtype=np.float32)
    region_susceptibility = {}
    for label, (name, tissue) in _LABELS.items():
        chi = overrides.get(name, tissue.susceptibility_ppm)
        chi_lut[label] = chi
        m0_lut[label] = tissue.m0
        r2s_lut[label] = tissue.r2star_hz
        if name in overrides and name.rsplit("_", 1)[0] in _BILATERAL:
            r2s_lut[label] = _deep_grey_r2star_hz(chi)  # iron raises R2* with susceptibility
        region_susceptibility[name] = float(chi_lut[label])
    susceptibility = chi_lut[labels]
    m0 = m0_lut[labels]
    r2star = r2s_lut[labels]

    if texture:
        rng = np.random.default_rng(seed)
        tissue = head_mask & (m0 > 0.1)
        m0 = np.where(tissue, m0 * (1.0 + 0.03 * _smooth_texture(shape, voxel_size, rng=rng)), m0)
        r2star = np.where(tissue, r2star * (1.0 + 0.03 * _smooth_texture(shape, voxel_size, rng=rng)), r2star)

    brain_mask = np.isin(labels, _BRAIN_LABELS)
    return HeadPhantom(
        susceptibility_ppm=susceptibility.astype(np.float32),
        brain_mask=brain_mask,
        head_mask=head_mask,
        m0=m0.astype(np.float32),
        r2star_hz=r2star.astype(np.float32),
        labels=labels,
        label_names={label: name for label, (name, _) in _LABELS.items()},
        voxel_size=voxel_size,
        region_susceptibility_ppm=region_susceptibility,
        head_scale=scale,
    )
