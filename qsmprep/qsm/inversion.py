"""Dipole inversion: susceptibility (ppm) from the local field (ppm).

The local field is the susceptibility convolved with the dipole kernel, F = D X in k-space.
D vanishes on the magic-angle cone, so the inversion needs regularisation. Two fast methods:

- TKD, truncated k-space division (Shmueli et al., MRM 2009;62:1510-1522; Wharton et al.,
  MRM 2010;63:1292-1304): closed form, one FFT pair; streaks and an underestimation that
  grows with the threshold.
- Iterative Tikhonov with a gradient penalty, solved by conjugate gradient (weighted field
  fit as in Kressler et al., IEEE TMI 2010;29:273-281; gradient-regularised L2 QSM as in
  Bilgic et al., JMRI 2014;40:181-191): smoother, fewer streaks, more underestimation.

The 2024 QSM consensus (MRM 2024, doi:10.1002/mrm.30006) recommends sparsity-regularised
methods (TV/L1); three are here:

- :func:`tv_admm`: total variation with a weighted linear data term, by ADMM with closed-form
  k-space steps (Bilgic et al., MRM 2014;72:1444-1459; FANSI, Milovic et al., MRM
  2018;80:814-821), optionally with MEDI's magnitude-edge weights.
- :func:`medi_l1`: morphology-enabled dipole inversion, edge-weighted L1 of the gradient with
  the nonlinear (complex exponential) data term, by Gauss-Newton and conjugate gradient
  (Liu J et al., NeuroImage 2012;59:2560-2568).
- :func:`rts`: rapid two-step, a short least-squares solve of the well-conditioned k-space
  then total variation filling the cone (Kames et al., NeuroImage 2018;167:276-283).

TKD and Tikhonov work on a grid padded by a quarter of the matrix on each side; the sparse
methods, whose data term is weighted by the mask, on the mask's bounding box plus a margin
(:data:`SUPPORT_MARGIN_MM`, :data:`TV_SUPPORT_MARGIN_MM` for TV-ADMM, whose susceptibility
outside the mask is nearly free: :func:`gradient_weights`). All return ppm masked to the
brain, not yet referenced (see :mod:`qsmprep.qsm.referencing`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import prange as numba_prange

from .compiled import compiled, threads
from .dipole import crop_to, dipole_kernel, irfftn, laplacian_kernel, pad_to, padded_shape, rfftn
from .solvers import conjugate_gradient


def _inversion_grid(shape):
    return padded_shape(shape, pad_voxels=[n // 4 for n in shape])


def tkd(local_field_ppm, mask, voxel_size, b0_direction, *, threshold: float = 0.19,
        workers: int = 1) -> np.ndarray:
    """Truncated k-space division (Shmueli et al., MRM 2009;62:1510-1522).

    chi(k) = F(k) / D(k) where |D(k)| > ``threshold``, and F(k) sign(D(k)) / ``threshold``
    elsewhere: near the cone the kernel is clamped to +-threshold (Shmueli's choice; setting
    those coefficients to 0 instead, as some codes do, underestimates more). The clamping
    still scales the contrast down (about 0.8x for threshold 0.19 on our test phantom);
    no correction factor is applied.

    Parameters
    ----------
    local_field_ppm : array_like, 3-D
        Local field in ppm of B0.
    mask : array_like of bool, 3-D
        Where the local field is valid; the field is zeroed outside and so is the result.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates
        (:func:`qsmprep.imageio.b0_direction_from_affine`).
    threshold : float
        Truncation level of |D|, in (0, 1/3]; 0.19 is the usual (Wharton et al. 2010) value.
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility (ppm), 0 outside ``mask``.
    """
    field, mask = _checked(local_field_ppm, mask)
    if not 0 < threshold <= 1.0 / 3.0:
        raise ValueError(f"TKD threshold must be in (0, 1/3], got {threshold}")
    shape = _inversion_grid(mask.shape)
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    clamped = np.where(np.abs(kernel) > threshold, kernel,
                       np.sign(kernel) * np.float32(threshold))
    inverse = np.divide(1.0, clamped, out=np.zeros_like(clamped), where=clamped != 0)
    spectrum = rfftn(pad_to(field, shape), workers=workers) * inverse
    susceptibility = crop_to(irfftn(spectrum, shape, workers=workers), mask.shape)
    return np.where(mask, susceptibility, 0.0).astype(np.float32)


def tikhonov_cg(local_field_ppm, mask, voxel_size, b0_direction, *,
                regularization: float = 0.01, weight=None, max_iter: int = 100,
                tolerance: float = 1e-2, workers: int = 1) -> np.ndarray:
    """Iterative Tikhonov inversion with a gradient penalty, by conjugate gradient.

    Minimises ``||W (D chi - f)||^2 + regularization * ||grad chi||^2`` over chi on the padded
    grid, with W = mask (times ``weight`` when given), by conjugate gradient on the normal
    equations ``(D W^2 D - regularization * L) chi = D W^2 f``; D and the Laplacian L (the
    finite-difference grad^T grad, :func:`qsmprep.qsm.dipole.laplacian_kernel`) are applied
    with real FFTs, two FFT pairs per iteration. Starting from chi = 0, the iterates keep a
    zero mean (D(0) = 0); reference the result afterwards.

    The measurements behind the defaults (``regularization`` 0.01 mm^2 with gradients in 1/mm,
    ``tolerance`` 0.01) are in ``bench/RESULTS.md``, "Iterative Tikhonov inversion".

    Parameters
    ----------
    local_field_ppm : array_like, 3-D
        Local field in ppm of B0.
    mask : array_like of bool, 3-D
        Where the local field is valid; the result is 0 outside.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates.
    regularization : float
        Weight (mm^2) of the squared gradient norm.
    weight : array_like, 3-D, optional
        Data-fidelity weights (e.g. from the echo-fit residual or magnitude), scaled to a
        mean of 1 inside the mask so that ``regularization`` keeps its meaning.
    max_iter : int
        Maximum conjugate-gradient iterations.
    tolerance : float
        Stop when ||residual|| / ||right-hand side|| of the normal equations falls below it.
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility (ppm), 0 outside ``mask``.
    """
    field, mask = _checked(local_field_ppm, mask)
    if regularization < 0:
        raise ValueError(f"regularization must be >= 0, got {regularization}")
    data_weight = _data_weight(mask, weight)

    shape = _inversion_grid(mask.shape)
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    gradient_penalty = np.float32(regularization) * -laplacian_kernel(shape, voxel_size)
    squared_weight = pad_to(data_weight**2, shape)

    def normal_operator(chi):
        chi_spectrum = rfftn(chi, workers=workers)
        weighted_field = squared_weight * irfftn(kernel * chi_spectrum, shape, workers=workers)
        return irfftn(kernel * rfftn(weighted_field, workers=workers)
                      + gradient_penalty * chi_spectrum, shape, workers=workers)

    right_hand_side = irfftn(kernel * rfftn(squared_weight * pad_to(field, shape),
                                            workers=workers), shape, workers=workers)
    chi = conjugate_gradient(normal_operator, right_hand_side, max_iter=max_iter,
                             tolerance=tolerance)
    return np.where(mask, crop_to(chi, mask.shape), 0.0).astype(np.float32)


def _checked(local_field_ppm, mask):
    field = np.asarray(local_field_ppm, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if field.shape != mask.shape or field.ndim != 3:
        raise ValueError(f"local field {field.shape} and mask {mask.shape} must be 3-D arrays "
                         "of the same shape")
    return np.where(mask, field, np.float32(0.0)), mask



def _data_weight(mask, weight):
    """Data-fidelity weights: the mask, or |weight| in the mask scaled to a mean of 1 there."""
    data_weight = mask.astype(np.float32)
    if weight is not None:
        weight = np.abs(np.asarray(weight, dtype=np.float32))
        if weight.shape != mask.shape:
            raise ValueError(f"weight {weight.shape} and mask {mask.shape} differ in shape")
        weight = weight * data_weight
        mean_weight = weight[mask].mean() if mask.any() else 0.0
        data_weight = weight / mean_weight if mean_weight > 0 else data_weight
    return data_weight


# Sparsity-regularised inversions (TV-ADMM, MEDI, RTS) and their shared pieces. ---------------

#: Margin (mm) of zeros kept around the mask's bounding box by the sparsity-regularised
#: methods. Their data term is weighted by the mask, so the field outside it is never used and
#: they work on that box instead of the padded field of view: 75 x 90 x 72 voxels on the 2 mm
#: head phantom instead of 120 x 144 x 120 for :func:`_inversion_grid`. A periodic copy of the
#: susceptibility then lies at least twice this margin away. TV-ADMM on the phantom with
#: margins of 8 / 16 / 32 / 48 mm: NRMSE 17.6 / 16.0 / 14.8 / 13.5 % from the true local
#: field, 41.8 / 42.9 / 44.8 / 44.8 % from V-SHARP's, in 3.4 / 6.3 / 11.0 / 17.9 s.
SUPPORT_MARGIN_MM = 16.0

#: Margin (mm) of :func:`tv_admm`'s grid around the mask's bounding box: with the susceptibility
#: outside the mask almost free, 8 mm gives the accuracy of 16 mm on a smaller grid (see there).
TV_SUPPORT_MARGIN_MM = 8.0

#: TV weight outside the mask in :func:`tv_admm` when magnitude edge weights are given.
DEFAULT_OUTSIDE_WEIGHT = 0.1

#: TV-ADMM's penalty on the split of the field (v = D chi) relative to ``penalty``, its penalty
#: on the split of the gradient (z = grad chi). On the phantom, ratios 1 to 10 took about as
#: many iterations and ended within 1 point of NRMSE of each other.
_FIELD_PENALTY_RATIO = 3.0


def _support_grid(mask, voxel_size, *, margin_mm=SUPPORT_MARGIN_MM):
    """Bounding box of ``mask`` grown by ``margin_mm``, and the FFT grid holding it.

    Returns the box (slices clipped to the array) and the grid shape: the box size plus the
    margin on each side, at fast FFT lengths, however much of the margin the array held.
    """
    margins = np.array([int(np.ceil(margin_mm / h)) for h in voxel_size])
    if mask.any():
        indices = np.argwhere(mask)
        low, high = indices.min(axis=0), indices.max(axis=0) + 1
    else:
        low, high = np.zeros(3, dtype=int), np.array(mask.shape)
    box = tuple(slice(max(lo - m, 0), min(hi + m, n))
                for lo, hi, m, n in zip(low, high, margins, mask.shape))
    return box, padded_shape(tuple(high - low + 2 * margins))


def _to_grid(volume, box, shape, *, fill=0.0):
    """The ``box`` of ``volume`` centred on a grid of ``shape``, ``fill`` around it (float32)."""
    block = np.asarray(volume, dtype=np.float32)[box]
    if fill == 0:
        return pad_to(block, shape)
    return pad_to(block - np.float32(fill), shape) + np.float32(fill)


def _from_grid(chi, box, mask) -> np.ndarray:
    """Inverse of :func:`_to_grid` for a result: the box back in place, 0 outside ``mask``."""
    out = np.zeros(mask.shape, dtype=np.float32)
    block_mask = mask[box]
    out[box] = np.where(block_mask, crop_to(chi, block_mask.shape), np.float32(0.0))
    return out


def _gradient(volume, voxel_size) -> np.ndarray:
    """Periodic forward differences (1/mm), stacked on a leading axis of length 3.

    Their Fourier symbols are E_i(k) = (exp(2 pi i k_i h_i) - 1) / h_i, and sum_i |E_i|^2 is
    ``-laplacian_kernel`` (:func:`qsmprep.qsm.dipole.laplacian_kernel`): the closed-form
    k-space updates below need only that sum, the differences themselves are taken in image
    space, which is cheaper than three FFTs.
    """
    volume = np.asarray(volume, dtype=np.float32)
    out = np.empty((3,) + volume.shape, dtype=np.float32)
    for axis, h in enumerate(voxel_size):
        np.subtract(np.roll(volume, -1, axis=axis), volume, out=out[axis])
        out[axis] *= np.float32(1.0 / h)
    return out


def _gradient_adjoint(vectors, voxel_size) -> np.ndarray:
    """Adjoint of :func:`_gradient`: minus the backward-difference divergence."""
    out = np.zeros(vectors.shape[1:], dtype=np.float32)
    for axis, h in enumerate(voxel_size):
        out += (np.roll(vectors[axis], 1, axis=axis) - vectors[axis]) * np.float32(1.0 / h)
    return out


def _edge_weights(magnitude, mask, voxel_size, *, edge_fraction, edge_weight) -> np.ndarray:
    """MEDI gradient weights: ``edge_weight`` at the strongest magnitude gradients, 1 elsewhere.

    Per component of the forward-difference gradient of the magnitude, the ``edge_fraction``
    of the in-mask values of largest absolute value are edges (Liu J et al., NeuroImage
    2012;59:2560-2568; the gradient mask of the MEDI toolbox). Penalising the susceptibility
    gradient everywhere except where the magnitude has edges keeps the anatomical boundaries
    sharp and flattens the rest. Outside the mask the weight is 1.

    ``magnitude`` is one 3-D image or the echoes (x, y, z, echo). With several echoes a
    component is an edge if it is one in any echo: each echo's absolute gradient is divided by
    its in-mask median (the mean if that is 0) and the largest of these counts. The contrast of
    tissues changes with the echo time (proton density and T1 early, T2* late, where iron
    raises both R2* and susceptibility), and can cancel in a sum of echoes: with the root sum
    of squares the edges of the qsm-forward phantoms were lost (NRMSE from the true local field
    13 -> 33 %). Default chain, 2 mm, first echo / union of all echoes, NRMSE and deep
    grey-matter slope: analytic head 13.8 % 0.92 / 13.3 % 0.99 (qsmprep simulator), 30.9 % 0.98
    / 19.4 % 1.00 (qsm-forward); template digital subject 16.5 % 0.895 / 15.8 % 1.00, 29.6 %
    0.97 / 19.4 % 0.99.
    Returns float32 of shape (3,) + mask.shape.
    """
    magnitude = np.asarray(magnitude, dtype=np.float32)
    echoes = magnitude[..., None] if magnitude.ndim == 3 else magnitude
    if echoes.shape[:3] != mask.shape or echoes.ndim != 4:
        raise ValueError(f"magnitude {magnitude.shape} and mask {mask.shape} differ in shape")
    if not 0 <= edge_fraction < 1:
        raise ValueError(f"edge_fraction must be in [0, 1), got {edge_fraction}")
    weights = np.ones((3,) + mask.shape, dtype=np.float32)
    if edge_fraction == 0 or not mask.any():
        return weights
    # work on the mask's bounding box plus one voxel: every in-mask component lies in it
    corners = np.argwhere(mask)
    box = tuple(slice(max(low - 1, 0), high + 2)
                for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    box_mask = mask[box]
    in_mask = np.flatnonzero(box_mask)
    sampled = in_mask[:: max(1, in_mask.size // 300_000)]  # enough for a median
    strength = np.zeros((3,) + box_mask.shape, dtype=np.float32)
    for echo in range(echoes.shape[-1]):
        echo_strength = np.abs(_gradient(echoes[box + (echo,)], voxel_size))
        sample = echo_strength.reshape(3, -1)[:, sampled]
        scale = np.median(sample) or sample.mean()  # the mean when most of it is flat
        if scale > 0:
            np.divide(echo_strength, np.float32(scale), out=echo_strength)
            np.maximum(strength, echo_strength, out=strength)
    threshold = np.quantile(strength[:, box_mask], 1.0 - edge_fraction)
    weights[(slice(None),) + box][(strength > threshold) & box_mask] = np.float32(edge_weight)
    return weights


def gradient_weights(mask, voxel_size, *, magnitude=None, edge_fraction: float = 0.3,
                     edge_weight: float = 0.1, outside_weight: float = 1.0) -> np.ndarray:
    """Weights of the TV penalty of :func:`tv_admm`, one per forward-difference component.

    A component (voxel i, axis a: chi[i + e_a] - chi[i]) gets

    - ``outside_weight`` unless both of its voxels lie in ``mask``: the field is only fitted
      in the mask, so outside it the susceptibility is a free variable that holds the
      sources of any background field the background removal left and the unobserved
      continuation of the brain, and the step across the mask edge has no meaning of its
      own. A small weight lets that region explain them at little cost, the idea of total
      field inversion, whose preconditioner makes the susceptibility outside the brain
      cheap to change (Liu Z et al., MRM 2018;79:2795-2803, MEDI+0 and preconditioned TFI;
      Liu Z et al., MRM 2017;78:303-315 for the preconditioner);
    - inside, ``edge_weight`` on the ``edge_fraction`` of components where ``magnitude``
      changes most (MEDI's gradient mask, Liu J et al., NeuroImage 2012;59:2560-2568) and 1
      elsewhere; 1 throughout without ``magnitude``.

    The array edge counts as outside (the difference would wrap around).

    Returns
    -------
    numpy.ndarray of float32, shape (3,) + mask.shape
    """
    mask = np.asarray(mask, dtype=bool)
    if not 0 < outside_weight <= 1:
        raise ValueError(f"outside_weight must be in (0, 1], got {outside_weight}")
    if magnitude is None:
        weights = np.ones((3,) + mask.shape, dtype=np.float32)
    else:
        weights = _edge_weights(magnitude, mask, voxel_size, edge_fraction=edge_fraction,
                                edge_weight=edge_weight)
    for axis in range(3):
        inside = np.zeros(mask.shape, dtype=bool)
        lower = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        inside[lower] = mask[lower] & mask[upper]
        weights[axis][~inside] = np.float32(outside_weight)
    return weights


def _tv_split_step_py(chi, dual, thresholds, inverse_steps, divergence_input):
    """One z/u step of the TV split, fused into one pass over the grid (compiled, see below).

    Per voxel and axis a: ``s = (chi[i + e_a] - chi[i]) / h_a + u_a`` (periodic forward
    difference plus the scaled dual), ``u_a <- clip(s, -t_a, t_a)`` (which is ``s`` minus its
    soft-thresholded value z_a, so the dual update needs no separate shrinkage), and
    ``divergence_input_a <- s - 2 u_a`` (= z_a - u_a, the vector whose adjoint gradient the
    chi step needs). ``thresholds`` has the shape of ``dual`` (it may be a broadcast view).
    """
    n0, n1, n2 = chi.shape
    for i in numba_prange(n0):
        i_next = i + 1 if i + 1 < n0 else 0
        for j in range(n1):
            j_next = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                k_next = k + 1 if k + 1 < n2 else 0
                centre = chi[i, j, k]
                differences = (chi[i_next, j, k] - centre, chi[i, j_next, k] - centre,
                               chi[i, j, k_next] - centre)
                for axis in range(3):
                    shifted = differences[axis] * inverse_steps[axis] + dual[axis, i, j, k]
                    limit = thresholds[axis, i, j, k]
                    clipped = min(max(shifted, -limit), limit)
                    dual[axis, i, j, k] = clipped
                    divergence_input[axis, i, j, k] = shifted - 2 * clipped


def _gradient_adjoint_py(vectors, inverse_steps, out):
    """:func:`_gradient_adjoint` in one pass (compiled, see below): writes into ``out``."""
    n0, n1, n2 = out.shape
    for i in numba_prange(n0):
        i_previous = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            j_previous = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                k_previous = k - 1 if k > 0 else n2 - 1
                out[i, j, k] = (
                    (vectors[0, i_previous, j, k] - vectors[0, i, j, k]) * inverse_steps[0]
                    + (vectors[1, i, j_previous, k] - vectors[1, i, j, k]) * inverse_steps[1]
                    + (vectors[2, i, j, k_previous] - vectors[2, i, j, k]) * inverse_steps[2])


def _field_split_step_py(squared_weight, field, predicted, field_dual, penalty, out):
    """The v and s steps of TV-ADMM's field split in one pass (compiled, see below).

    v = (W^2 f + mu (D chi + s)) / (W^2 + mu), then s <- s + D chi - v; ``out`` <- v - s,
    the image whose spectrum the next chi step needs.
    """
    n0, n1, n2 = out.shape
    for i in numba_prange(n0):
        for j in range(n1):
            for k in range(n2):
                weight = squared_weight[i, j, k]
                dual = field_dual[i, j, k]
                prediction = predicted[i, j, k]
                split = (weight * field[i, j, k] + penalty * (prediction + dual)) / (
                    weight + penalty)
                dual += prediction - split
                field_dual[i, j, k] = dual
                out[i, j, k] = split - dual


def _tv_admm_loop(solve_chi, shape, voxel_size, thresholds, *, max_iter, tolerance,
                  workers=1):
    """ADMM for ``min_chi Q(chi) + sum(penalty * thresholds * |grad chi|)`` (Boyd et al.,
    Found Trends Mach Learn 2011;3:1-122), with the split z = grad chi and scaled dual u.

    ``solve_chi(target)`` returns the minimiser of the caller's quadratic Q(chi) plus
    ``penalty / 2 ||grad chi - z + u||^2``, given ``target`` = grad^T (z - u) (0 for the
    first iterate); the z step is soft thresholding of grad chi + u by ``thresholds``
    (regularisation / penalty, per gradient component when weighted). The z and u steps and
    the adjoint gradient run as compiled loops on ``workers`` threads (two passes over the
    grid instead of a dozen numpy passes). Stops when ||chi_new - chi|| <= ``tolerance``
    ||chi_new|| or after ``max_iter`` iterations.
    """
    shape = tuple(shape)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (3,) + shape)
    inverse_steps = np.array([1.0 / h for h in voxel_size], dtype=np.float32)
    split_step = compiled(_tv_split_step_py)
    adjoint = compiled(_gradient_adjoint_py)
    dual = np.zeros((3,) + shape, dtype=np.float32)
    divergence_input = np.empty_like(dual)
    target = np.zeros(shape, dtype=np.float32)
    chi = solve_chi(target)
    for _ in range(int(max_iter)):
        with threads(workers):
            split_step(chi, dual, thresholds, inverse_steps, divergence_input)
            adjoint(divergence_input, inverse_steps, target)
        previous, chi = chi, solve_chi(target)
        previous -= chi
        if np.linalg.norm(previous) <= tolerance * np.linalg.norm(chi):
            break
    return chi


def _inverse_of(denominator) -> np.ndarray:
    """1 / denominator where it is positive, 0 elsewhere (the k = 0 term)."""
    return np.divide(1.0, denominator, out=np.zeros_like(denominator), where=denominator > 0)


# Automatic regularisation: the L-curve of the closed-form gradient-regularised solution. ----

#: Tikhonov weights (mm^2) scanned by :func:`tikhonov_lcurve` on 2 mm voxels
#: (:data:`LCURVE_REFERENCE_VOXEL_MM`): 0.125 decade apart, from 1e-4 to 0.1; other voxel sizes
#: scan them scaled by the square of the voxel edge (:func:`lcurve_weights`).
LCURVE_WEIGHTS = tuple(float(w) for w in np.logspace(-4.0, -1.0, 25))

#: Voxel edge (mm) at which :data:`LCURVE_WEIGHTS` are scanned as they are.
LCURVE_REFERENCE_VOXEL_MM = 2.0

#: TV weight (ppm mm) at which :func:`tv_weight_from_corner` maps a corner of the same value.
TV_REFERENCE_WEIGHT = 1e-3


@dataclasses.dataclass(frozen=True)
class LCurve:
    """The L-curve of :func:`tikhonov_lcurve` and its corner."""

    weights: tuple
    """Tikhonov weights (mm^2), ascending."""
    residual_norms: tuple
    """RMS of the field misfit D chi - f in the mask (ppm), one per weight."""
    solution_norms: tuple
    """RMS of the susceptibility gradient over the grid (ppm/mm), one per weight."""
    curvature: tuple
    """Signed curvature of (log residual, log solution norm), one per weight."""
    corner: float | None
    """Weight at the corner (:func:`lcurve_corner`); None when the curve has none in the
    scanned range."""


def lcurve_weights(voxel_size) -> tuple:
    """The Tikhonov weights (mm^2) :func:`tikhonov_lcurve` scans on ``voxel_size``:
    :data:`LCURVE_WEIGHTS` times (h / 2 mm)^2, h the geometric mean of the voxel edges.

    The gradient penalty lambda |E(k)|^2 reaches about 4 lambda / h^2 at the grid's highest
    frequencies, so a weight acts on the same fraction of the grid's spectrum when it scales
    with h^2; the corner of the curve, set by the noise and the texture at the scale of a
    voxel, moves with it. Scanned in fixed units, the curve of a noise-free field at 1 mm
    peaked below the scan and fell back to :data:`TV_REFERENCE_WEIGHT` (measured in
    ``bench/RESULTS.md``, "Automatic TV weight").
    """
    edge_mm = float(np.prod(np.asarray(voxel_size, dtype=np.float64))) ** (1.0 / 3.0)
    scale = (edge_mm / LCURVE_REFERENCE_VOXEL_MM) ** 2
    return tuple(weight * scale for weight in LCURVE_WEIGHTS)


def tikhonov_lcurve(local_field_ppm, mask, voxel_size, b0_direction, *,
                    weights=None, margin_mm: float = TV_SUPPORT_MARGIN_MM,
                    workers: int = 1) -> LCurve:
    """L-curve of the closed-form gradient-regularised (Tikhonov) dipole inversion.

    For each weight lambda, chi = D F(f) / (|D|^2 + lambda |E|^2) in k-space (|E|^2 the
    symbol of grad^T grad), the closed form of ``min ||D chi - f||^2 + lambda ||grad chi||^2``
    over the mask's bounding box plus ``margin_mm``, f set to 0 outside the mask (Bilgic et
    al., JMRI 2014;40:181-191, who pick lambda at the L-curve's corner). The curve is the
    misfit inside the mask against the gradient norm, on log scales; its corner, the point of
    largest curvature (Hansen PC, SIAM Review 1992;34:561-580; on a noisy field it may be a
    gentle bend, of negative curvature), is where more weight stops buying smoothness cheaply
    and starts costing misfit: it moves with the noise of the field and the texture of the
    tissue. One forward FFT, then one inverse FFT per weight (the
    misfit is measured in the mask only); the gradient norm is summed in k-space.

    Parameters
    ----------
    local_field_ppm : array_like, 3-D
        Local field (ppm), valid in ``mask``.
    mask : array_like of bool, 3-D
    voxel_size, b0_direction : sequences of 3 floats
    weights : sequence of float, optional
        Tikhonov weights (mm^2), ascending, at least 7; default :func:`lcurve_weights` of
        ``voxel_size``.
    margin_mm : float
        Margin (mm) around the mask's bounding box.
    workers : int
        FFT threads.

    Returns
    -------
    LCurve
    """
    field, mask = _checked(local_field_ppm, mask)
    if weights is None:
        weights = lcurve_weights(voxel_size)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size < 7 or np.any(np.diff(weights) <= 0) or weights[0] <= 0:
        raise ValueError("weights must be at least 7 positive values in ascending order")
    box, shape = _support_grid(mask, voxel_size, margin_mm=margin_mm)
    inside = _to_grid(mask, box, shape) > 0.5
    count = max(int(np.count_nonzero(inside)), 1)
    spectrum = rfftn(_to_grid(field, box, shape), workers=workers)
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    squared_kernel = kernel * kernel
    squared_gradient = -laplacian_kernel(shape, voxel_size)
    # Parseval on the real-FFT half grid: planes other than 0 (and Nyquist) stand for two.
    multiplicity = np.full(spectrum.shape[-1], 2.0, dtype=np.float32)
    multiplicity[0] = 1.0
    if shape[-1] % 2 == 0:
        multiplicity[-1] = 1.0
    power = (np.abs(spectrum) ** 2) * multiplicity / np.float32(np.prod(shape))
    gradient_kernel_power = squared_gradient * squared_kernel * power  # same for every weight
    del power
    residual_norms, solution_norms = [], []
    for weight in weights:
        denominator = squared_kernel + np.float32(weight) * squared_gradient
        denominator[denominator == 0] = 1.0
        # D chi - f = -lambda |E|^2 / (|D|^2 + lambda |E|^2) F
        misfit = irfftn(spectrum * (np.float32(-weight) * squared_gradient / denominator),
                        shape, workers=workers)
        residual_norms.append(float(np.sqrt(np.sum(misfit[inside].astype(np.float64) ** 2)
                                            / count)))
        gradient_power = gradient_kernel_power / denominator**2
        solution_norms.append(float(np.sqrt(gradient_power.sum(dtype=np.float64) / count)))
    curvature, corner = lcurve_corner(weights, residual_norms, solution_norms)
    return LCurve(tuple(float(w) for w in weights), tuple(residual_norms),
                  tuple(solution_norms), tuple(float(c) for c in curvature), corner)


#: Least rise (of the signed curvature of the log-log curve) that makes a peak a corner.
_CORNER_PROMINENCE = 1e-3


def lcurve_corner(weights, residual_norms, solution_norms) -> tuple[np.ndarray, float | None]:
    """Signed curvature of the L-curve (log residual, log solution norm) over log weight, and
    the weight at its corner: the largest curvature, where it peaks away from the two ends
    of the scan and rises above the curve's least curvature (a straight line has none).

    Returns
    -------
    curvature : numpy.ndarray
        Positive where the curve bends like an L.
    corner : float or None
    """
    t = np.log(np.asarray(weights, dtype=np.float64))
    rho = np.log(np.asarray(residual_norms, dtype=np.float64))
    eta = np.log(np.asarray(solution_norms, dtype=np.float64))
    drho, deta = np.gradient(rho, t), np.gradient(eta, t)
    ddrho, ddeta = np.gradient(drho, t), np.gradient(deta, t)
    speed = np.maximum(drho**2 + deta**2, 1e-30)
    curvature = (drho * ddeta - ddrho * deta) / speed**1.5
    peak = 2 + int(np.argmax(curvature[2:-2]))
    is_corner = (curvature[peak] > max(curvature[peak - 1], curvature[peak + 1])
                 and curvature[peak] - curvature.min() > _CORNER_PROMINENCE)
    return curvature, (float(np.exp(t[peak])) if is_corner else None)


def tv_weight_from_corner(corner: float) -> float:
    """TV-ADMM weight (ppm mm) for a Tikhonov L-curve corner (mm^2): their geometric mean with
    :data:`TV_REFERENCE_WEIGHT`, sqrt(corner x 1e-3).

    The corner of the L2 curve and the best L1 (TV) weight grow together with the noise and
    fall with texture, but the L1 weight moves about half as much on a log scale (fitted on
    the simulated heads of ``bench/RESULTS.md``, "Automatic TV weight").
    """
    return float(np.sqrt(corner * TV_REFERENCE_WEIGHT))


def tv_weight_for(curve: LCurve) -> float:
    """:func:`tv_weight_from_corner` of the curve's corner, or :data:`TV_REFERENCE_WEIGHT`
    when it has none."""
    return tv_weight_from_corner(curve.corner) if curve.corner is not None else TV_REFERENCE_WEIGHT


def automatic_tv_regularization(local_field_ppm, mask, voxel_size, b0_direction, *,
                                workers: int = 1) -> tuple[float, LCurve]:
    """TV-ADMM weight for this field (:func:`tv_weight_for` the curve of
    :func:`tikhonov_lcurve`), with the curve, for the record."""
    curve = tikhonov_lcurve(local_field_ppm, mask, voxel_size, b0_direction, workers=workers)
    return tv_weight_for(curve), curve


def tv_admm(local_field_ppm, mask, voxel_size, b0_direction, *, regularization: float = 1e-3,
            magnitude=None, edge_fraction: float = 0.3, edge_weight: float = 0.1,
            outside_weight: float | None = None, weight=None, max_iter: int = 300,
            tolerance: float = 3e-3, penalty: float = 0.1,
            margin_mm: float = TV_SUPPORT_MARGIN_MM, workers: int = 1) -> np.ndarray:
    """Total-variation dipole inversion by ADMM with closed-form k-space steps (FANSI-style).

    Minimises ``1/2 ||W (D chi - f)||^2 + regularization * ||M grad chi||_1`` (anisotropic
    TV of forward differences in 1/mm; Bilgic et al., MRM 2014;72:1444-1459, "fast QSM with
    TV-ADMM"; Milovic et al., MRM 2018;80:814-821, FANSI). W is the mask, times ``weight``
    when given (scaled to a mean of 1 in the mask); M holds the weights of
    :func:`gradient_weights`. Splitting z = grad chi and v = D chi (weighted linear FANSI)
    makes every step closed form, with no inner solver:

    - chi: ``(mu |D|^2 + rho |E|^2) chi = mu D F(v - s) + rho F(grad^T (z - u))`` in k-space,
      |E|^2 the symbol of grad^T grad; one division, two forward and two inverse real FFTs
      (chi and D chi).
    - z: soft thresholding of grad chi + u by ``regularization * M / rho``.
    - v: voxelwise ``(W^2 f + mu (D chi + s)) / (W^2 + mu)``; outside the mask W = 0, so the
      field there is free instead of being fitted as 0.
    - scaled duals u, s accumulate the split residuals.

    rho is ``penalty``, mu is 3 ``penalty``. The work is done on the mask's bounding box plus
    ``margin_mm``, not on the padded field of view; the voxelwise steps run as compiled loops
    on ``workers`` threads.

    Outside the mask (``outside_weight``): background removal leaves harmonic errors near the
    mask edge that sources outside the mask explain; weighting the TV penalty of gradients
    that leave the mask by ``outside_weight`` lets those sources absorb them, as in total
    field inversion (Liu Z et al., MRM 2018;79:2795-2803). It relies on the magnitude edges,
    so the default is 0.1 with ``magnitude`` and 1 without.

    With ``magnitude``, the gradient penalty is weighted as in MEDI (Liu J et al., NeuroImage
    2012;59:2560-2568): M = ``edge_weight`` on the ``edge_fraction`` of in-mask gradient
    components where the magnitude changes most (in any echo, see :func:`_edge_weights`), 1
    elsewhere.

    The measurements behind every default (data weighting, outside weight, margin,
    regularisation, tolerance, penalty, edge fraction, speed) are in ``bench/RESULTS.md``,
    "TV-ADMM dipole inversion".

    Parameters
    ----------
    local_field_ppm : array_like, 3-D
        Local field in ppm of B0.
    mask : array_like of bool, 3-D
        Where the local field is valid; the result is 0 outside.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates.
    regularization : float
        Weight (ppm mm) of the L1 norm of the gradient.
    magnitude : array_like, 3-D or 4-D (echoes last), optional
        Magnitude image, or the echoes, for the edge weights (an edge in any echo counts);
        None: plain TV.
    edge_fraction : float
        Fraction of in-mask gradient components treated as magnitude edges, in [0, 1).
    edge_weight : float
        Penalty weight at magnitude edges (1 in flat regions).
    outside_weight : float, optional
        Penalty weight, in (0, 1], of the gradient components that leave the mask (see
        above); default 0.1 with ``magnitude`` and 1 without.
    weight : array_like, 3-D, optional
        Data-fidelity weights (e.g. magnitude, or the inverse echo-fit residual).
    max_iter : int
        Maximum ADMM iterations.
    tolerance : float
        Stop when the relative change of chi between iterations falls below it.
    penalty : float
        ADMM penalty rho of the gradient split (the field split uses 3 rho); it sets the
        speed of convergence, and moves the iterate where ``tolerance`` stops it by 1 to 3
        points of NRMSE on the phantom (0.03 to 0.3).
    margin_mm : float
        Margin (mm) around the mask's bounding box on which the susceptibility is solved.
    workers : int
        FFT and loop threads.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility (ppm), 0 outside ``mask``.
    """
    field, mask = _checked(local_field_ppm, mask)
    if regularization <= 0 or penalty <= 0:
        raise ValueError(f"regularization ({regularization}) and penalty ({penalty}) must be "
                         "positive")
    if outside_weight is None:
        outside_weight = DEFAULT_OUTSIDE_WEIGHT if magnitude is not None else 1.0
    box, shape = _support_grid(mask, voxel_size, margin_mm=margin_mm)
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    weights = gradient_weights(mask, voxel_size, magnitude=magnitude,
                               edge_fraction=edge_fraction, edge_weight=edge_weight,
                               outside_weight=outside_weight)
    thresholds = np.float32(regularization / penalty) * np.stack(
        [_to_grid(w, box, shape, fill=outside_weight) for w in weights])
    del weights
    squared_weight = _to_grid(_data_weight(mask, weight), box, shape) ** 2
    field = _to_grid(field, box, shape)
    rho = np.float32(penalty)
    mu = np.float32(_FIELD_PENALTY_RATIO * penalty)
    inverse = _inverse_of(mu * kernel**2 - rho * laplacian_kernel(shape, voxel_size))
    field_dual = np.zeros_like(field)
    split_minus_dual = field.copy()  # v - s, with v = f and s = 0 before the first chi step
    predicted = None
    field_step = compiled(_field_split_step_py)

    def solve_chi(target):
        nonlocal predicted
        if predicted is not None:  # v and s steps, from the previous chi
            with threads(workers):
                field_step(squared_weight, field, predicted, field_dual, mu, split_minus_dual)
        spectrum = rfftn(split_minus_dual, workers=workers)
        spectrum *= mu * kernel
        spectrum += rho * rfftn(target, workers=workers)
        spectrum *= inverse
        predicted = irfftn(kernel * spectrum, shape, workers=workers)
        return irfftn(spectrum, shape, workers=workers)

    chi = _tv_admm_loop(solve_chi, shape, voxel_size, thresholds, max_iter=max_iter,
                        tolerance=tolerance, workers=workers)
    return _from_grid(chi, box, mask)


def medi_l1(local_field_ppm, mask, voxel_size, b0_direction, *, magnitude, noise_weight=None,
            regularization: float = 1e-3, edge_fraction: float = 0.3,
            radians_per_ppm: float = 4.0, max_iter: int = 10, tolerance: float = 1e-2,
            cg_max_iter: int = 50, cg_tolerance: float = 1e-2, smoothing: float = 1e-6,
            workers: int = 1) -> np.ndarray:
    """Morphology-enabled dipole inversion (MEDI) with a nonlinear data term.

    Minimises ``regularization * ||M grad chi||_1 + 1/(2 theta^2) ||W (exp(i theta D chi) -
    exp(i theta f))||^2`` (de Rochefort et al., MRM 2010;63:194-206; Liu J et al., NeuroImage
    2012;59:2560-2568; Liu T et al., MRM 2013;69:467-476 for the nonlinear fidelity). M is 0
    at the ``edge_fraction`` of in-mask gradient components where the magnitude changes most
    and 1 elsewhere (MEDI's gradient mask): TV penalises gradients except at edges seen in the
    magnitude. W is ``noise_weight`` (mean 1 in the mask) or the mask. theta =
    ``radians_per_ppm`` turns the field into phase, and dividing by theta^2 makes the data
    term tend to ``1/2 ||W (D chi - f)||^2`` for small phase, so ``regularization`` means the
    same as in :func:`tv_admm`.

    Solved by Gauss-Newton with lagged diffusivity, as in the MEDI toolbox: at each outer
    iteration the L1 term is replaced by the quadratic with weights
    1 / sqrt(|M grad chi|^2 + ``smoothing``) from the current chi, and the step dchi solves

        ``(D W^2 D + regularization grad^T M V M grad) dchi =
          -(D W^2 sin(theta (D chi - f)) / theta + regularization grad^T M V M grad chi)``

    by conjugate gradient (:func:`qsmprep.qsm.solvers.conjugate_gradient`, two FFT pairs per
    iteration), on the mask's bounding box plus :data:`SUPPORT_MARGIN_MM`. Starts from 0 and
    stops when ||dchi|| <= ``tolerance`` ||chi||.

    The measurements behind the defaults are in ``bench/RESULTS.md``, "MEDI inversion".

    Parameters
    ----------
    local_field_ppm : array_like, 3-D
        Local field in ppm of B0.
    mask : array_like of bool, 3-D
        Where the local field is valid; the result is 0 outside.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates.
    magnitude : array_like, 3-D or 4-D (echoes last)
        Magnitude image, or the echoes, for the edges (an edge in any echo counts).
    noise_weight : array_like, 3-D, optional
        Data-fidelity weights, proportional to 1 / field noise SD (e.g. the inverse echo-fit
        residual, or the magnitude); None: uniform in the mask.
    regularization : float
        Weight (ppm mm) of the L1 norm of the weighted gradient.
    edge_fraction : float
        Fraction of in-mask gradient components treated as magnitude edges, in [0, 1).
    radians_per_ppm : float
        Phase per ppm of field, 2 pi gamma B0 delta-TE; default 4.0 rad/ppm (3 T, 5 ms echo
        spacing). It only matters where the phase misfit is large (the fit then becomes
        robust to it); on the phantom 1e-3 and 10 give the same result as 4.
    max_iter : int
        Gauss-Newton (outer) iterations at most.
    tolerance : float
        Relative step size at which to stop.
    cg_max_iter, cg_tolerance : int, float
        Inner conjugate-gradient limits per outer iteration.
    smoothing : float
        (ppm/mm)^2 added under the square root of the lagged-diffusivity weights.
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility (ppm), 0 outside ``mask``.
    """
    field, mask = _checked(local_field_ppm, mask)
    if magnitude is None:
        raise ValueError("MEDI needs the magnitude image for its edge weights")
    if regularization <= 0 or radians_per_ppm <= 0 or smoothing <= 0:
        raise ValueError("regularization, radians_per_ppm and smoothing must be positive")
    box, shape = _support_grid(mask, voxel_size)
    edges = np.stack([_to_grid(w, box, shape, fill=1.0) for w in _edge_weights(
        magnitude, mask, voxel_size, edge_fraction=edge_fraction, edge_weight=0.0)])
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    squared_weight = _to_grid(_data_weight(mask, noise_weight), box, shape) ** 2
    field = _to_grid(field, box, shape)
    theta = np.float32(radians_per_ppm)
    lam = np.float32(regularization)

    def convolve(volume):
        return irfftn(kernel * rfftn(volume, workers=workers), shape, workers=workers)

    chi = np.zeros(shape, dtype=np.float32)
    for _ in range(int(max_iter)):
        weighted_gradient = edges * _gradient(chi, voxel_size)
        diffusivity = edges**2 / np.sqrt(weighted_gradient**2 + np.float32(smoothing))

        def regulariser(volume, diffusivity=diffusivity):
            return lam * _gradient_adjoint(diffusivity * _gradient(volume, voxel_size),
                                           voxel_size)

        def normal_operator(volume, regulariser=regulariser):
            return convolve(squared_weight * convolve(volume)) + regulariser(volume)

        misfit = np.sin(theta * (convolve(chi) - field)) / theta
        step = conjugate_gradient(normal_operator,
                                  -(convolve(squared_weight * misfit) + regulariser(chi)),
                                  max_iter=cg_max_iter, tolerance=cg_tolerance)
        chi += step
        if np.linalg.norm(step) <= tolerance * np.linalg.norm(chi):
            break
    return _from_grid(chi, box, mask)


def rts(local_field_ppm, mask, voxel_size, b0_direction, *, delta: float = 0.15,
        regularization: float = 7e-3, cg_max_iter: int = 8, weight=None, max_iter: int = 100,
        tolerance: float = 3e-3, penalty: float = 0.1, workers: int = 1) -> np.ndarray:
    """Rapid two-step dipole inversion (RTS; Kames, Wiggermann & Rauscher, NeuroImage
    2018;167:276-283).

    1. Well-conditioned k-space, where |D| > ``delta``: ``cg_max_iter`` conjugate-gradient
       iterations on ``min ||W (D_delta chi - f)||^2``, D_delta the kernel set to 0 where
       |D| <= delta, W the mask (times ``weight``); starting from 0 the iterates stay in the
       well-conditioned region, and stopping early regularises (Kames et al. use 4 LSMR
       iterations, which behave like CG on the normal equations).
    2. Ill-conditioned cone: ``min regularization * ||grad chi||_1 + 1/2 ||P (chi - chi_1)||^2``
       with P the well-conditioned mask in k-space, by the ADMM of :func:`tv_admm` with the
       closed-form step ``(P + rho |E|^2) chi = P chi_1 + rho F(grad^T (z - u))``: the data
       keep the well-conditioned coefficients, total variation fills the cone.

    Both steps run on the mask's bounding box plus :data:`SUPPORT_MARGIN_MM`.

    ``delta`` 0.15 is Kames et al.'s; the measurements behind the other defaults, and RTS's
    accuracy against TV-ADMM, are in ``bench/RESULTS.md``, "RTS inversion".

    Parameters
    ----------
    local_field_ppm : array_like, 3-D
        Local field in ppm of B0.
    mask : array_like of bool, 3-D
        Where the local field is valid; the result is 0 outside.
    voxel_size : sequence of 3 floats
        Voxel edge lengths (mm).
    b0_direction : sequence of 3 floats
        Main-field direction in voxel coordinates.
    delta : float
        |D| threshold of the well-conditioned region, in (0, 2/3).
    regularization : float
        Weight (ppm mm) of the TV term of step 2.
    cg_max_iter : int
        Conjugate-gradient iterations of step 1.
    weight : array_like, 3-D, optional
        Data-fidelity weights of step 1 (scaled to a mean of 1 in the mask).
    max_iter, tolerance, penalty : int, float, float
        ADMM limits and penalty rho of step 2 (as in :func:`tv_admm`).
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility (ppm), 0 outside ``mask``.
    """
    field, mask = _checked(local_field_ppm, mask)
    if not 0 < delta < 2.0 / 3.0:
        raise ValueError(f"RTS delta must be in (0, 2/3), got {delta}")
    if regularization <= 0 or penalty <= 0:
        raise ValueError(f"regularization ({regularization}) and penalty ({penalty}) must be "
                         "positive")
    box, shape = _support_grid(mask, voxel_size)
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    well = (np.abs(kernel) > delta).astype(np.float32)
    well_kernel = kernel * well
    squared_weight = _to_grid(_data_weight(mask, weight), box, shape) ** 2

    def convolve(volume):
        return irfftn(well_kernel * rfftn(volume, workers=workers), shape, workers=workers)

    right_hand_side = convolve(squared_weight * _to_grid(field, box, shape))
    chi_well = conjugate_gradient(lambda chi: convolve(squared_weight * convolve(chi)),
                                  right_hand_side, max_iter=cg_max_iter, tolerance=1e-6)
    well_spectrum = well * rfftn(chi_well, workers=workers)
    rho = np.float32(penalty)
    inverse = _inverse_of(well - rho * laplacian_kernel(shape, voxel_size))

    def solve_chi(target):
        return irfftn((well_spectrum + rho * rfftn(target, workers=workers)) * inverse, shape,
                      workers=workers)

    chi = _tv_admm_loop(solve_chi, shape, voxel_size, np.float32(regularization / penalty),
                        max_iter=max_iter, tolerance=tolerance, workers=workers)
    return _from_grid(chi, box, mask)
