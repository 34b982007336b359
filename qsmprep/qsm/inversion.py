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
methods (TV/L1); these two are the baseline and the fast alternative.

Both work on a grid padded by a quarter of the matrix on each side, and return ppm masked
to the brain, not yet referenced (see :mod:`qsmprep.qsm.referencing`).
"""

from __future__ import annotations

import numpy as np

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
        (:func:`qsmprep.qsm.dipole.b0_direction_from_affine`).
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

    Defaults (``regularization`` 0.01 mm^2 with gradients in 1/mm, ``tolerance`` 0.01) were
    chosen on the full-size 2 mm head phantom of :mod:`qsmprep.phantom` (realistic air/bone
    background, veins, 4 echoes, V-SHARP first; ``bench/bench_reconstruction.py``). Demeaned
    NRMSE / correlation in the V-SHARP mask at SNR 100 for lambda 0.002 / 0.005 / 0.01 / 0.02
    (tolerance 0.01): 62.7 / 59.9 / 58.6 / 58.8 % and 0.79 / 0.81 / 0.81 / 0.81; at SNR 50:
    76.4 / 69.0 / 64.9 / 62.6 %. Tightening the tolerance to 1e-3 costs 5x the time and adds
    noise (64 % at SNR 100): stopping early regularises. TKD (threshold 0.19) gives 61 % and
    71 %. Larger lambda lowers the deep grey-matter slope (0.70 at 0.005, 0.67 at 0.01, 0.63 at
    0.02). The first tuning, on the small phantom of ``tests/unit/test_inversion.py``, was
    flat between 0.002 and 0.012.

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
    data_weight = mask.astype(np.float32)
    if weight is not None:
        weight = np.abs(np.asarray(weight, dtype=np.float32)) * data_weight
        mean_weight = weight[mask].mean() if mask.any() else 0.0
        data_weight = weight / mean_weight if mean_weight > 0 else data_weight

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


# ---------------------------------------------------------------------------------------------
# Total-variation machinery shared by tv_admm, rts (ADMM) and medi_l1 (lagged diffusivity)
# ---------------------------------------------------------------------------------------------

def _gradient(volume, voxel_size) -> np.ndarray:
    """Periodic forward differences (1/mm) of a 3-D volume, stacked on a leading axis of 3.

    Their Fourier symbols are E_i(k) = (exp(2 pi i k_i h_i) - 1) / h_i, so sum_i |E_i|^2 is
    ``-laplacian_kernel``: the closed-form k-space updates below use that identity.
    """
    out = np.empty((3,) + volume.shape, dtype=np.float32)
    for axis, h in enumerate(voxel_size):
        ahead = np.roll(volume, -1, axis=axis)
        np.subtract(ahead, volume, out=out[axis])
        out[axis] *= np.float32(1.0 / h)
    return out


def _gradient_adjoint(vectors, voxel_size) -> np.ndarray:
    """Adjoint of :func:`_gradient` (minus the backward-difference divergence)."""
    out = np.zeros(vectors.shape[1:], dtype=np.float32)
    for axis, h in enumerate(voxel_size):
        component = vectors[axis]
        out += (np.roll(component, 1, axis=axis) - component) * np.float32(1.0 / h)
    return out


def _soft_threshold(values, threshold) -> np.ndarray:
    """Proximal map of ``threshold * |.|_1``: sign(v) max(|v| - threshold, 0), elementwise."""
    return np.sign(values) * np.maximum(np.abs(values) - threshold, np.float32(0.0))


def _edge_weights(magnitude, mask, voxel_size, edge_fraction, edge_weight):
    """MEDI-style gradient weights: ``edge_weight`` on the strongest magnitude gradients, else 1.

    Per gradient component, the ``edge_fraction`` of the in-mask values with the largest
    |forward difference| of the magnitude are edges (Liu J et al., NeuroImage 2012;59:2560;
    the MEDI toolbox's gradient mask); the rest, and everything outside the mask, get 1.
    Returns float32 of shape (3,) + mask.shape.
    """
    magnitude = np.asarray(magnitude, dtype=np.float32)
    if magnitude.shape != mask.shape:
        raise ValueError(f"magnitude {magnitude.shape} and mask {mask.shape} differ in shape")
    edges = np.abs(_gradient(magnitude, voxel_size))
    weights = np.ones_like(edges)
    if not 0 < edge_fraction < 1 or not mask.any():
        return weights
    threshold = np.quantile(edges[:, mask], 1.0 - edge_fraction)
    weights[(edges > threshold) & mask] = np.float32(edge_weight)
    return weights


def _tv_admm_loop(solve_chi, chi, voxel_size, thresholds, *, penalty, max_iter, tolerance):
    """ADMM on the split z = grad chi of ``sum(thresholds * penalty * |z|)`` (Boyd et al. 2011).

    ``solve_chi(target)`` returns the minimiser over chi of the caller's quadratic terms plus
    ``penalty / 2 ||grad chi - target||^2``; here target = z - u (u the scaled dual). The z
    step is soft thresholding by ``thresholds`` (regularisation / penalty, voxelwise when
    weighted). Stops when the relative change of chi falls below ``tolerance``.
    """
    dual = np.zeros((3,) + chi.shape, dtype=np.float32)
    for _ in range(int(max_iter)):
        gradient = _gradient(chi, voxel_size)
        gradient += dual
        split = _soft_threshold(gradient, thresholds)
        dual = gradient - split
        previous = chi
        chi = solve_chi(_gradient_adjoint(split - dual, voxel_size))
        change = np.linalg.norm(chi - previous) / max(np.linalg.norm(chi), 1e-12)
        if change < tolerance:
            break
    global _LAST_ITER
    _LAST_ITER = _
    return chi


def tv_admm(local_field_ppm, mask, voxel_size, b0_direction, *, regularization: float = 1e-3,
            magnitude=None, edge_fraction: float = 0.3, edge_weight: float = 0.1, weight=None,
            max_iter: int = 100, tolerance: float = 1e-2, penalty: float = 0.1,
            data_penalty: float = 1.0, weighted: bool = True, pad=True,
            workers: int = 1) -> np.ndarray:
    """TV-ADMM (draft)."""
    field, mask = _checked(local_field_ppm, mask)
    data_weight = _data_weight(mask, weight)
    shape = _inversion_grid(mask.shape) if pad else mask.shape
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    gradient_power = -laplacian_kernel(shape, voxel_size)
    thresholds = np.float32(regularization / penalty)
    if magnitude is not None:
        thresholds = pad_to(np.ones(1), (1,)) if False else thresholds
        weights = _edge_weights(magnitude, mask, voxel_size, edge_fraction, edge_weight)
        thresholds = np.stack([pad_to(w - 1, shape) + 1 for w in weights]) * thresholds
    field = pad_to(field, shape)
    if weighted:
        squared_weight = pad_to(data_weight, shape) ** 2
        denominator = data_penalty * kernel**2 + np.float32(penalty) * gradient_power
        inverse = np.divide(1.0, denominator, out=np.zeros_like(denominator),
                            where=denominator > 0)
        state = {"aux": field.copy(), "dual": np.zeros(shape, np.float32), "dchi": None}

        def solve_chi(target):
            if state["dchi"] is not None:
                dchi = state["dchi"]
                aux = (squared_weight * field + data_penalty * (dchi + state["dual"])) / (
                    squared_weight + data_penalty)
                state["dual"] += dchi - aux
                state["aux"] = aux
            spectrum = (data_penalty * kernel * rfftn(state["aux"] - state["dual"],
                                                     workers=workers)
                        + np.float32(penalty) * rfftn(target, workers=workers)) * inverse
            state["dchi"] = irfftn(kernel * spectrum, shape, workers=workers)
            return irfftn(spectrum, shape, workers=workers)
    else:
        denominator = kernel**2 + np.float32(penalty) * gradient_power
        inverse = np.divide(1.0, denominator, out=np.zeros_like(denominator),
                            where=denominator > 0)
        data_spectrum = kernel * rfftn(field, workers=workers)

        def solve_chi(target):
            return irfftn((data_spectrum + np.float32(penalty) * rfftn(target, workers=workers))
                          * inverse, shape, workers=workers)

    chi = solve_chi(np.zeros(shape, np.float32))
    chi = _tv_admm_loop(solve_chi, chi, voxel_size, thresholds, penalty=penalty,
                        max_iter=max_iter, tolerance=tolerance)
    return np.where(mask, crop_to(chi, mask.shape), 0.0).astype(np.float32)


def _data_weight(mask, weight):
    data_weight = mask.astype(np.float32)
    if weight is not None:
        weight = np.abs(np.asarray(weight, dtype=np.float32)) * data_weight
        mean_weight = weight[mask].mean() if mask.any() else 0.0
        data_weight = weight / mean_weight if mean_weight > 0 else data_weight
    return data_weight
