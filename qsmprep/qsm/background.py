"""Background field removal: PDF (default), V-SHARP, RESHARP and LBV.

Fields from sources outside the brain (air, bone, the rest of the body, shim) are harmonic
inside it, so they equal their own mean over any sphere that fits in the brain
(mean-value property). SHARP (Schweser et al., NeuroImage 2011;54:2789-2807) removes them by
subtracting the spherical mean, (delta - s) * field, then undoes that high-pass on the local
field by a truncated deconvolution. V-SHARP (Li et al., NeuroImage 2011;55:1645-1656;
Wu et al., MRM 2012;67:137-147) uses spheres from large to small, so that voxels near the
brain edge, where only small spheres fit, are kept. The 2024 QSM consensus (MRM 2024,
doi:10.1002/mrm.30006) lists it among the recommended methods, with radii up to 12 mm.
RESHARP (Sun & Wilman, MRM 2014;71:1151-1157) replaces SHARP's truncated deconvolution by a
Tikhonov-regularised least-squares fit, which is more accurate at the same erosion.

Two methods need no spherical erosion. PDF (projection onto dipole fields; Liu T et al., NMR
Biomed 2011;24:1129-1136) fits the field in the brain with the dipole fields of sources
outside it. LBV (Laplacian boundary value; Zhou D et al., NMR Biomed 2014;27:312-319) takes
the background as the harmonic function that equals the total field on the mask boundary.

Accuracy on the full-size head phantom (``bench/bench_reconstruction.py``: 160x192x160 mm,
4 echoes, magnitude-derived mask, Laplacian unwrapping and weighted echo fit; each method with
its defaults). Demeaned NRMSE (%) of the local field inside ``result.mask & true brain``, at
2 mm for SNR 100 / SNR 50 / 15 degrees oblique, then at 1 mm (SNR 100); coverage of the true
brain at 2 mm; NRMSE of the susceptibility from :func:`qsmprep.qsm.inversion.tikhonov_cg` in
the same cases; wall time on 2 cores at 2 mm / 1 mm (machine shared, +-30 %):

=======  ========================  ========  ========================  ===========
method   local field (%)           coverage  susceptibility (%)        time (s)
=======  ========================  ========  ========================  ===========
V-SHARP  44.9 / 51.7 / 44.8; 56.8  92.5 %    58.6 / 64.9 / 53.4; 70.8  0.5 / 2.5-5
RESHARP  40.1 / 47.5 / 44.2; 59.1  92.5 %    55.6 / 62.2 / 53.1; 79.2  1.0 / 13
PDF      36.6 / 43.4 / 40.6; 42.2  100 %     54.9 / 60.5 / 56.4; 58.3  1.5 / 15-18
LBV      51.8 / 57.6 / 51.4; 69.3  93.0 %    54.7 / 61.4 / 58.6; 73.9  0.3 / 5-8
=======  ========================  ========  ========================  ===========

Correlations of the local field at 2 mm, SNR 100: 0.900, 0.919, 0.931, 0.889. At 1 mm the
coverage is 100 % (LBV 99.3 %): the magnitude mask there is larger than the brain. The PDF
row predates its bounding-box grid and one-layer peel (now 3.5-5 s at 1 mm); the default
chain's numbers are in :func:`pdf` and ``bench/bench_accuracy.py``.

For orientation, the QSM-CI challenge (qsm-forward head phantom) reports local-field NRMSEs
of 20.7 % for RESHARP, 42.6 % for V-SHARP and 44.5 % for PDF.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..errors import BadDataError
from .dipole import (crop_to, dipole_kernel, irfftn, pad_to, padded_shape, rfftn,
                     sphere_kernel)
from .masking import bounding_box, distance_to_background_mm, erode_mask
from .solvers import conjugate_gradient


class BackgroundRemoval(NamedTuple):
    """Result of :func:`vsharp`, :func:`resharp`, :func:`pdf` and :func:`lbv`."""

    local_field_hz: np.ndarray
    """Local field (Hz, float32), 0 outside :attr:`mask`."""
    mask: np.ndarray
    """Where the local field is valid (bool): the brain mask eroded by the smallest sphere
    (V-SHARP, RESHARP) or without its outer voxel layers (PDF, LBV)."""


def default_radii_mm(voxel_size, *, largest_mm: float | None = None,
                     smallest_mm: float | None = None) -> tuple[float, ...]:
    """V-SHARP radii, largest first, in whole-voxel steps (at most about 12 radii).

    Defaults: from 24 mm (or 12 voxel edges if larger) down to 2 voxel edges. A sphere of one
    voxel radius holds only the 6-neighbourhood and approximates the spherical mean poorly,
    and a small largest kernel makes the deconvolution unstable (Wu et al. MRM 2012; QSM.jl
    uses 18 to 2 voxels). The 2024 consensus example stops at 12 mm; on the head phantom the
    local-field NRMSE at 1 mm (V-SHARP mask within the brain) is 86 % with 12 -> 2 mm, 68 %
    with 24 -> 2 mm and 61 % with 36 -> 2 mm; at 2 mm, 24 -> 4 mm halves the error of
    12 -> 4 mm. The step is one voxel edge, or a multiple of it that keeps about 12 radii.
    """
    edge = float(max(voxel_size))
    largest = float(largest_mm) if largest_mm else max(24.0, 12.0 * edge)
    smallest = min(float(smallest_mm) if smallest_mm else 2.0 * edge, largest)
    step = edge * max(1, int(round((largest - smallest) / 11.0 / edge)))
    count = int(np.floor((largest - smallest) / step + 1e-6)) + 1
    return tuple(round(largest - index * step, 6) for index in range(count))


def vsharp(total_field_hz, mask, voxel_size, *, radii_mm=None, threshold: float = 0.05,
           workers: int = 1) -> BackgroundRemoval:
    """Remove the background field with V-SHARP (Li et al. 2011; Wu et al. 2012).

    For each radius r, from large to small: high-pass the masked field with
    (delta - normalised sphere of radius r) by FFT, and keep that value in the voxels whose
    sphere fits inside the mask (the mask eroded by r) and that no larger sphere fitted. The
    result is deconvolved with the largest radius' kernel, using a truncated inverse
    (1 / (1 - S(k)) where |1 - S(k)| >= ``threshold``, 0 elsewhere), and masked with the mask
    eroded by the smallest radius. Spheres are built in mm (anisotropic voxels); radii smaller
    than the largest voxel edge are skipped. Cost: one FFT of the field, then one kernel
    FFT and one inverse FFT per radius, all on a grid padded by the largest radius.

    Parameters
    ----------
    total_field_hz : array_like, 3-D
        Total field (Hz), e.g. :func:`qsmprep.qsm.echo_fit.weighted_linear_fit`.
    mask : array_like of bool, 3-D
        Brain mask.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    radii_mm : sequence of float, optional
        Sphere radii (mm), any order; default :func:`default_radii_mm` (24 mm down to 2 voxel
        edges). Radii below the largest voxel edge are skipped.
    threshold : float
        Truncation of the deconvolution, 0.05 as in Wu et al. 2012 and the consensus code.
    workers : int
        FFT threads.

    Returns
    -------
    BackgroundRemoval
        ``local_field_hz`` (float32) and the valid ``mask`` (bool).
    """
    total_field_hz = np.asarray(total_field_hz, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if total_field_hz.shape != mask.shape or mask.ndim != 3:
        raise ValueError(f"field {total_field_hz.shape} and mask {mask.shape} must be 3-D "
                         "arrays of the same shape")
    if radii_mm is None:
        radii_mm = default_radii_mm(voxel_size)
    radii = sorted((float(r) for r in radii_mm if r >= max(voxel_size)), reverse=True)
    if not radii:
        raise ValueError(f"no V-SHARP radius in {tuple(radii_mm)} mm is at least the voxel "
                         f"size {tuple(float(h) for h in voxel_size)} mm")

    shape = padded_shape(mask.shape, pad_voxels=[int(np.ceil(radii[0] / h)) for h in voxel_size])
    field_spectrum = rfftn(pad_to(np.where(mask, total_field_hz, 0.0), shape), workers=workers)

    depth_mm = distance_to_background_mm(mask, voxel_size)
    largest_sphere = sphere_kernel(shape, voxel_size, radii[0], workers=workers)
    high_passed = np.zeros(shape, dtype=np.float32)
    filled = np.zeros(shape, dtype=bool)
    for radius in radii:
        sphere = (largest_sphere if radius == radii[0]
                  else sphere_kernel(shape, voxel_size, radius, workers=workers))
        inside = pad_to(erode_mask(mask, radius, voxel_size, depth_mm=depth_mm), shape) > 0
        new_voxels = inside & ~filled
        if new_voxels.any():
            filtered = irfftn(field_spectrum * (1.0 - sphere), shape, workers=workers)
            high_passed[new_voxels] = filtered[new_voxels]
            filled |= new_voxels

    if not filled.any():
        raise BadDataError(f"the brain mask has no voxel deeper than {radii[-1]} mm: "
                           "it is too small for V-SHARP")
    largest_kernel = 1.0 - largest_sphere
    keep = np.abs(largest_kernel) >= threshold
    inverse = np.divide(1.0, largest_kernel, out=np.zeros_like(largest_kernel), where=keep)
    local_field = irfftn(rfftn(high_passed, workers=workers) * inverse, shape, workers=workers)

    valid = crop_to(filled, mask.shape)
    local_field_hz = np.where(valid, crop_to(local_field, mask.shape), 0.0).astype(np.float32)
    return BackgroundRemoval(local_field_hz, valid.copy())


def resharp(total_field_hz, mask, voxel_size, *, radius_mm=None, regularization: float = 1e-3,
            max_iter: int = 100, tolerance: float = 1e-3, workers: int = 1) -> BackgroundRemoval:
    """Remove the background field with RESHARP (Sun & Wilman, MRM 2014;71:1151-1157).

    With C = delta - s the spherical-mean high-pass of radius r (as in SHARP) and M_r the mask
    eroded by r, the local field x minimises
    ``||M_r (C x - C f)||^2 + regularization ||x||^2``: background fields vanish under C inside
    M_r, and the Tikhonov term picks the smallest local field that explains the high-passed
    data, instead of SHARP's truncated deconvolution. Solved by conjugate gradient on the
    normal equations ``(C M_r C + lambda) x = C M_r C f`` (:mod:`qsmprep.qsm.solvers`), with
    FFTs on a grid padded by r.

    On the 2 mm head phantom (``bench/bench_reconstruction.py``), with r = 2 voxels (the
    coverage of the default V-SHARP), the local-field NRMSE is 39 % against V-SHARP's 45 %,
    and the susceptibility from iterative Tikhonov 55 % against 59 %; lambda between 1e-4 and
    1e-3 gives the same result, 1e-2 over-smooths.

    Parameters
    ----------
    total_field_hz : array_like, 3-D
        Total field (Hz).
    mask : array_like of bool, 3-D
        Brain mask.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    radius_mm : float, optional
        Sphere radius; default two (largest) voxel edges.
    regularization : float
        Tikhonov weight lambda (dimensionless: C is dimensionless).
    max_iter : int
        Conjugate-gradient iterations at most.
    tolerance : float
        Relative residual at which CG stops.
    workers : int
        FFT threads.

    Returns
    -------
    BackgroundRemoval
        Local field (Hz) inside the eroded mask, and that mask.
    """
    total_field_hz = np.asarray(total_field_hz, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if total_field_hz.shape != mask.shape or mask.ndim != 3:
        raise ValueError(f"field {total_field_hz.shape} and mask {mask.shape} must be 3-D "
                         "arrays of the same shape")
    radius = float(radius_mm) if radius_mm else 2.0 * float(max(voxel_size))
    eroded = erode_mask(mask, radius, voxel_size)
    if not eroded.any():
        raise BadDataError(f"the brain mask has no voxel deeper than {radius} mm: "
                           "it is too small for RESHARP")
    shape = padded_shape(mask.shape, pad_voxels=[int(np.ceil(radius / h)) for h in voxel_size])
    high_pass = 1.0 - sphere_kernel(shape, voxel_size, radius, workers=workers)
    data_mask = pad_to(eroded, shape)

    def high_passed(volume):
        return irfftn(rfftn(volume, workers=workers) * high_pass, shape, workers=workers)

    def normal_operator(volume):
        return high_passed(data_mask * high_passed(volume)) + np.float32(regularization) * volume

    right_hand_side = high_passed(data_mask * high_passed(
        pad_to(np.where(mask, total_field_hz, 0.0), shape)))
    local_field = conjugate_gradient(normal_operator, right_hand_side, max_iter=max_iter,
                                     tolerance=tolerance)
    local_field_hz = np.where(eroded, crop_to(local_field, mask.shape), 0.0)
    return BackgroundRemoval(local_field_hz.astype(np.float32), eroded)


#: Thickness (mm) of the outer shell that :func:`lbv` peels off a brain mask by default; see
#: :func:`default_peel_voxels`.
DEFAULT_PEEL_MM = 2.0

#: Outer voxel layers that :func:`pdf` peels off a brain mask by default: none, since
#: :func:`rim_outliers` leaves out the bad voxels of the outer layer instead.
PDF_PEEL_VOXELS = 0

#: Departure, in robust SDs, beyond which :func:`rim_outliers` leaves an outer-layer voxel out.
RIM_OUTLIER_LIMIT = 5.0


def rim_outliers(total_field_hz, mask, *, limit: float = RIM_OUTLIER_LIMIT) -> np.ndarray:
    """Voxels of the mask's outer layer whose field does not continue the field inside it.

    A magnitude mask's outer layer holds brain voxels, whose field is as good as any, and
    partial-volume voxels of skull, air or vessels whose fitted field is tens to hundreds of
    Hz off. Peeling the whole layer drops the good with the bad, and the outer cortex with
    them: PDF then explains more of the brain's own field by sources outside the mask.
    Here each outer-layer voxel (a face neighbour outside the mask) is compared with the mean
    field of its neighbours in the 3 x 3 x 3 block that lie deeper (inside the eroded mask);
    the same departure is measured one layer deeper, where partial volume is rare, and its
    robust SD (1.4826 x the median absolute departure) is the scale: voxels departing by
    more than ``limit`` such SDs are outliers. Outer-layer voxels with no deeper neighbour
    are kept (no evidence either way). The measurements behind the rule are in
    ``bench/RESULTS.md``, "PDF background removal".

    Returns
    -------
    numpy.ndarray of bool
        The outliers (a subset of the outer layer of ``mask``).
    """
    field = np.asarray(total_field_hz, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    outliers = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return outliers
    box = bounding_box(mask)  # outside it is outside the mask: the filters pad with 0
    field, region = field[box], mask[box]
    face = ndimage.generate_binary_structure(3, 1)
    inner = ndimage.binary_erosion(region, structure=face, border_value=0)
    deeper = ndimage.binary_erosion(inner, structure=face, border_value=0)

    def departure(centre_region, neighbours):
        """|field - mean of the neighbours in ``neighbours``| where there are any."""
        count = ndimage.uniform_filter(neighbours.astype(np.float32), 3, mode="constant")
        total = ndimage.uniform_filter(np.where(neighbours, field, np.float32(0.0)), 3,
                                       mode="constant")
        has = centre_region & (count > 1e-3)
        values = np.full(field.shape, np.nan, dtype=np.float32)
        values[has] = np.abs(field[has] - total[has] / count[has])
        return values

    rim_departure = departure(region & ~inner, inner)
    second_layer = departure(inner & ~deeper, deeper)
    reference = second_layer[np.isfinite(second_layer)]
    if reference.size == 0:
        reference = rim_departure[np.isfinite(rim_departure)]
    if reference.size == 0:
        return outliers
    scale = 1.4826 * float(np.median(reference))
    if scale <= 0:
        return outliers
    with np.errstate(invalid="ignore"):
        outliers[box] = np.isfinite(rim_departure) & (rim_departure > limit * scale)
    return outliers


def default_peel_voxels(voxel_size) -> int:
    """Outer voxel layers that :func:`lbv` drops from the mask by default.

    About :data:`DEFAULT_PEEL_MM` (2 mm) in voxels of the geometric-mean edge, at least one:
    1 layer at 2 mm, 2 at 1 mm, 3 at 0.65 mm. A mask computed from the magnitude includes a
    rim of partial-volume and skull voxels whose field is noise; as boundary values they
    spoil LBV unless peeled (see its docstring). :func:`pdf` peels one layer at any voxel
    size instead (:data:`PDF_PEEL_VOXELS`).
    """
    mean_edge = float(np.prod(np.asarray(voxel_size, dtype=float))) ** (1.0 / 3.0)
    return max(1, int(round(DEFAULT_PEEL_MM / mean_edge)))


def pdf(total_field_hz, mask, voxel_size, b0_direction, *, weight=None, max_iter: int = 100,
        tolerance: float = 1e-3, pad_mm: float = 12.0, peel_voxels: int = PDF_PEEL_VOXELS,
        rim_limit: float | None = RIM_OUTLIER_LIMIT, workers: int = 1) -> BackgroundRemoval:
    """Remove the background field by projection onto dipole fields (PDF).

    Liu T et al., NMR Biomed 2011;24:1129-1136. The background field is modelled as the field
    of a susceptibility distribution chi_b outside the brain mask M; chi_b minimises the
    weighted misfit inside the mask, ``||W M (D chi_b - f)||^2``, where D is the dipole
    convolution along ``b0_direction`` (:func:`qsmprep.qsm.dipole.dipole_kernel`, so oblique
    acquisitions are handled) and W the data weights. It is found by conjugate gradient
    (:mod:`qsmprep.qsm.solvers`) on the normal equations
    ``(1 - M) D W^2 D (1 - M) chi_b = (1 - M) D W^2 f``, two FFT pairs per iteration;
    stopping early regularises. The local field is ``f - D chi_b`` in M.

    The sources live on the mask's bounding box grown by ``pad_mm`` on every side, beyond
    the field of view where the box reaches it (sources below a slab are represented).
    D(0) = 0, so a constant field cannot be fitted: the weighted mean of f in M is removed
    first and the local field is returned with a weighted mean of 0 in M (it is defined up to
    a constant anyway). The mask is first peeled by ``peel_voxels`` outer layers (none by
    default), then the outliers of its outer layer (:func:`rim_outliers`, partial-volume
    voxels with skull or air) are left out; what is left out joins the region where
    background sources may lie, and the result is valid on the rest.

    PDF removes part of the local field near the mask edge (its known non-orthogonality);
    the TV-ADMM inversion that follows by default leaves the susceptibility just outside the
    mask almost free, which repairs most of it. The measurements behind the margin, the peel,
    the tolerance, the weights and the speed are in ``bench/RESULTS.md``, "PDF background
    removal".

    Parameters
    ----------
    total_field_hz : array_like, 3-D
        Total field (Hz).
    mask : array_like of bool, 3-D
        Brain mask.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates
        (:func:`qsmprep.imageio.b0_direction_from_affine`).
    weight : array_like, 3-D, optional
        Data weights W (magnitude, or the inverse of the field's noise SD), scaled to a mean
        of 1 in the mask; default uniform.
    max_iter : int
        Conjugate-gradient iterations at most.
    tolerance : float
        Relative residual of the normal equations at which CG stops.
    pad_mm : float
        Margin (mm) around the mask's bounding box where background sources may lie.
    peel_voxels : int
        Outer mask layers (voxels with a face neighbour outside) to drop before the fit;
        0 keeps the whole mask.
    rim_limit : float or None
        ``limit`` of :func:`rim_outliers`, applied after peeling; None keeps the outer layer
        whole.
    workers : int
        FFT threads.

    Returns
    -------
    BackgroundRemoval
        Local field (Hz) in the mask that was fitted, and that mask.
    """
    total_field_hz, mask = _checked_field_and_mask(total_field_hz, mask)
    mask = _peel(mask, peel_voxels)
    if rim_limit is not None:
        mask &= ~rim_outliers(total_field_hz, mask, limit=rim_limit)
    if not mask.any():
        raise BadDataError(f"the brain mask is empty after peeling {peel_voxels} layers")
    data_weight = _normalised_weight(weight, mask)
    box = bounding_box(mask)
    squared_weight = data_weight[box] ** 2
    inside = mask[box]
    weighted_mean = np.float32(np.sum(squared_weight * total_field_hz[box])
                               / np.sum(squared_weight))
    field = np.where(inside, total_field_hz[box] - weighted_mean, np.float32(0.0))

    shape = padded_shape(inside.shape,
                         pad_voxels=[int(np.ceil(max(pad_mm, 0.0) / h)) for h in voxel_size])
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    source_region = 1.0 - pad_to(inside, shape)  # outside the mask, margin included
    squared_weight_padded = pad_to(squared_weight, shape)

    def dipole_field(volume):
        return irfftn(rfftn(volume, workers=workers) * kernel, shape, workers=workers)

    def normal_operator(sources):
        return source_region * dipole_field(
            squared_weight_padded * dipole_field(source_region * sources))

    right_hand_side = source_region * dipole_field(squared_weight_padded * pad_to(field, shape))
    sources = conjugate_gradient(normal_operator, right_hand_side, max_iter=max_iter,
                                 tolerance=tolerance)
    background_hz = crop_to(dipole_field(source_region * sources), inside.shape)
    local = np.where(inside, field - background_hz, np.float32(0.0))
    local -= np.float32(np.sum(squared_weight * local) / np.sum(squared_weight))
    local_field_hz = np.zeros(mask.shape, dtype=np.float32)
    local_field_hz[box] = np.where(inside, local, np.float32(0.0))
    return BackgroundRemoval(local_field_hz, mask)


def lbv(total_field_hz, mask, voxel_size, *, tolerance: float = 1e-5, max_iter: int = 2000,
        peel_voxels: int | None = None, workers: int = 1) -> BackgroundRemoval:
    """Remove the background field with the Laplacian boundary value method (LBV).

    Zhou D et al., NMR Biomed 2014;27:312-319. Background fields are harmonic in the brain,
    so the background is taken as the solution of Laplace's equation in the mask whose values
    on the mask boundary are those of the total field (the local field is assumed to vanish
    there); the local field is the total field minus it.

    Discretisation and solver: the 7-point Laplacian (axes weighted by 1/h^2 for anisotropic
    voxels). The boundary is the mask voxels with a face neighbour outside the mask, whose
    values are imposed; the unknowns are the other mask voxels. The negative Laplacian on
    them is symmetric positive definite and is solved matrix-free (numpy slicing on the
    mask's bounding box) by conjugate gradient (:mod:`qsmprep.qsm.solvers`) to a relative
    residual of ``tolerance``: 140 iterations, 0.2-0.4 s at 2 mm (80x96x80) and 260
    iterations, 5-8 s and 0.11 GB at 1 mm (160x192x160), on one core of a shared machine;
    1e-5 leaves 0.002 Hz RMS of difference to the converged solution at 2 mm (1e-4: 0.02 Hz,
    1e-3: 0.2 Hz).

    Peeling: ``peel_voxels`` outer layers are removed from the mask *before* solving, so that
    the boundary values come from reliable voxels, and the boundary layer of what remains
    (where the local field is 0 by construction) is not part of the result: the returned mask
    is the input mask without ``peel_voxels + 1`` layers. A mask from the magnitude includes
    skull voxels whose fitted field is noise (up to +-350 Hz on the phantom); as boundary
    values they ruin the solution (local-field NRMSE 175 % at 2 mm without peeling).

    Limitation: whatever part of the brain's own field is harmonic inside the mask cannot be
    told from a background field, and LBV, which removes every harmonic component fixed by
    the boundary values, removes all of it. On the head phantom the brain's field on its
    boundary has an SD of 1.4 Hz (cortex and white matter against CSF), as large as the local
    field inside (1.0-1.3 Hz); its harmonic extension is 0.85 Hz SD, so LBV's error depends on
    where the boundary falls (2 mm: 51.8 % with one layer peeled, 92.5 % with two, 28.8 % with
    three at 77 % coverage; with the exact brain mask 52.6 % at 2 mm and 93 % at 1 mm).

    The measurements behind the solver tolerance, the peel and its accuracy on the head phantom
    are in ``bench/RESULTS.md``, "LBV background removal".

    Parameters
    ----------
    total_field_hz : array_like, 3-D
        Total field (Hz).
    mask : array_like of bool, 3-D
        Brain mask.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    tolerance : float
        Relative residual at which CG stops.
    max_iter : int
        Conjugate-gradient iterations at most.
    peel_voxels : int, optional
        Outer mask layers dropped before solving; default :func:`default_peel_voxels`
        (2 mm: one layer at 2 mm, two at 1 mm). The boundary layer of the rest is dropped
        as well.
    workers : int
        Accepted so that every method takes the same options; the solver has no FFT and
        runs on one thread.

    Returns
    -------
    BackgroundRemoval
        Local field (Hz) inside the peeled mask less its boundary, and that mask.
    """
    del workers  # no FFT: numpy slicing only
    total_field_hz, mask = _checked_field_and_mask(total_field_hz, mask)
    if peel_voxels is None:
        peel_voxels = default_peel_voxels(voxel_size)
    mask = _peel(mask, peel_voxels)
    interior = _peel(mask, 1)
    if not interior.any():
        raise BadDataError(f"the brain mask has no voxel deeper than {int(peel_voxels) + 1} "
                           "layers: it is too thin for LBV")
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(mask))
    smallest = float(min(voxel_size))
    axis_weights = tuple(np.float32((smallest / float(h)) ** 2) for h in voxel_size)
    background_box = _laplace_dirichlet(total_field_hz[box], interior[box], axis_weights,
                                        tolerance=tolerance, max_iter=max_iter)
    local_field_hz = np.zeros(mask.shape, dtype=np.float32)
    local_field_hz[box] = np.where(interior[box], total_field_hz[box] - background_box, 0.0)
    return BackgroundRemoval(local_field_hz, interior)


def _checked_field_and_mask(total_field_hz, mask):
    """Field (float32, 0 outside the mask) and mask (bool); errors for bad shapes or an
    empty mask."""
    total_field_hz = np.asarray(total_field_hz, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if total_field_hz.shape != mask.shape or mask.ndim != 3:
        raise ValueError(f"field {total_field_hz.shape} and mask {mask.shape} must be 3-D "
                         "arrays of the same shape")
    if not mask.any():
        raise BadDataError("the brain mask is empty")
    return np.where(mask, total_field_hz, np.float32(0.0)), mask


def _normalised_weight(weight, mask):
    """Weights in the mask scaled to a mean of 1 there (0 outside); the mask when None."""
    data_weight = mask.astype(np.float32)
    if weight is None:
        return data_weight
    weight = np.asarray(weight, dtype=np.float32)
    if weight.shape != mask.shape:
        raise ValueError(f"weight {weight.shape} and mask {mask.shape} must have the same shape")
    weight = np.where(mask & np.isfinite(weight), np.abs(weight), 0.0).astype(np.float32)
    mean_weight = weight[mask].mean()
    return weight / mean_weight if mean_weight > 0 else data_weight


def _peel(mask, layers: int):
    """``mask`` without its ``layers`` outer layers, a layer being the voxels with a face
    neighbour outside (the array edge counts as outside)."""
    if int(layers) <= 0:
        return mask.copy()
    return ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                  iterations=int(layers), border_value=0)


def _neighbour_sum(volume, axis_weights):
    """sum over axes a of w_a (v[i - e_a] + v[i + e_a]), with 0 beyond the array edge."""
    total = np.zeros_like(volume)
    for axis, w in enumerate(axis_weights):
        lower = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        total[upper] += w * volume[lower]
        total[lower] += w * volume[upper]
    return total


def _laplace_dirichlet(values, interior, axis_weights, *, tolerance, max_iter):
    """Harmonic extension into ``interior`` of ``values`` given on its face neighbours.

    Solves the 7-point Laplace equation (axis weights ``axis_weights``) for the interior
    voxels, with the voxels of ``values`` outside ``interior`` as Dirichlet data; the interior
    must not touch the array edge. Returns the solution in ``interior`` and ``values``
    elsewhere (float32).
    """
    interior_weight = interior.astype(np.float32)
    diagonal = np.float32(2.0 * sum(axis_weights))
    known = np.where(interior, np.float32(0.0), values).astype(np.float32)

    def negative_laplacian(volume):
        return interior_weight * (diagonal * volume - _neighbour_sum(volume, axis_weights))

    right_hand_side = interior_weight * _neighbour_sum(known, axis_weights)
    solution = conjugate_gradient(negative_laplacian, right_hand_side, max_iter=max_iter,
                                  tolerance=tolerance)
    return np.where(interior, solution, known)
