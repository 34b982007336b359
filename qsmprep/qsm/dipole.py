"""Physics shared by every stage: units, FFT padding and the k-space kernels.

All Fourier work in qsmprep goes through :func:`rfftn` / :func:`irfftn` (real FFTs with a
``workers`` count) on a grid padded by :func:`padded_shape`, and every stage takes its
dipole and Laplacian kernels from :func:`dipole_kernel` and :func:`laplacian_kernel`.

Conventions
-----------
- Fields are in Hz inside the pipeline; susceptibility is in ppm on disk, ppb in tables.
- ``voxel_size`` is in mm, ordered like the array axes.
- ``b0_direction`` is a unit vector in *voxel* coordinates (array axes), obtained from the
  image affine with :func:`qsmprep.imageio.b0_direction_from_affine`, so oblique slabs are handled.

The dipole kernel in k-space is D(k) = 1/3 - (k . b0)^2 / |k|^2 (Salomir et al., Concepts Magn
Reson B 2003;19B:26-34; Marques & Bowtell, Concepts Magn Reson B 2005;25B:65-78).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

#: Proton gyromagnetic ratio / (2 pi), in MHz/T (CODATA 2018).
GYROMAGNETIC_RATIO_MHZ_PER_T = 42.577478


def hz_to_ppm(field_hz, field_strength_t: float):
    """Convert a frequency shift in Hz to a relative field in ppm at ``field_strength_t``."""
    return np.asarray(field_hz, dtype=np.float32) / np.float32(
        GYROMAGNETIC_RATIO_MHZ_PER_T * field_strength_t
    )


def ppm_to_hz(field_ppm, field_strength_t: float):
    """Convert a relative field in ppm to a frequency shift in Hz at ``field_strength_t``."""
    return np.asarray(field_ppm, dtype=np.float32) * np.float32(
        GYROMAGNETIC_RATIO_MHZ_PER_T * field_strength_t
    )


def padded_shape(shape, *, pad_voxels=0) -> tuple[int, ...]:
    """FFT-friendly grid holding ``shape`` plus ``pad_voxels`` of zeros on each side.

    ``pad_voxels`` is an int or one int per axis. The last axis is rounded up to an even
    fast length so that real FFTs round-trip exactly.
    """
    pads = np.broadcast_to(np.asarray(pad_voxels, dtype=int), (len(shape),))
    out = []
    for axis, (n, pad) in enumerate(zip(shape, pads)):
        target = int(n) + 2 * int(pad)
        fast = scipy.fft.next_fast_len(target, real=True)
        if axis == len(shape) - 1 and fast % 2:
            fast = scipy.fft.next_fast_len(fast + 1, real=True)
        out.append(fast)
    return tuple(out)


def pad_to(volume, shape) -> np.ndarray:
    """Zero-pad ``volume`` centred into ``shape`` (float32)."""
    volume = np.asarray(volume, dtype=np.float32)
    before = [(t - n) // 2 for n, t in zip(volume.shape, shape)]
    out = np.zeros(shape, dtype=np.float32)
    out[tuple(slice(b, b + n) for b, n in zip(before, volume.shape))] = volume
    return out


def crop_to(volume, shape) -> np.ndarray:
    """Inverse of :func:`pad_to`: the centred block of ``shape``."""
    before = [(n - t) // 2 for n, t in zip(volume.shape, shape)]
    return volume[tuple(slice(b, b + t) for b, t in zip(before, shape))]


def rfftn(volume, *, workers: int = 1):
    """Real 3-D forward FFT (complex64 for float32 input)."""
    return scipy.fft.rfftn(np.asarray(volume, dtype=np.float32), workers=workers)


def irfftn(spectrum, shape, *, workers: int = 1) -> np.ndarray:
    """Inverse of :func:`rfftn` onto a real grid of ``shape`` (float32)."""
    return scipy.fft.irfftn(spectrum, s=shape, workers=workers).astype(np.float32, copy=False)


def kspace_coordinates(shape, voxel_size):
    """Broadcastable spatial-frequency grids (cycles/mm) of a real FFT over ``shape``.

    Returns three arrays of shapes (n0,1,1), (1,n1,1), (1,1,n2//2+1).
    """
    shape = tuple(int(n) for n in shape)
    k0 = scipy.fft.fftfreq(shape[0], d=voxel_size[0]).astype(np.float32)
    k1 = scipy.fft.fftfreq(shape[1], d=voxel_size[1]).astype(np.float32)
    k2 = scipy.fft.rfftfreq(shape[2], d=voxel_size[2]).astype(np.float32)
    return k0[:, None, None], k1[None, :, None], k2[None, None, :]


def dipole_kernel(shape, voxel_size, b0_direction=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit dipole response D(k) = 1/3 - (k.b0)^2/|k|^2 on the real-FFT half grid of ``shape``.

    D(0) is set to 0, so the mean of the field carries no susceptibility information
    (a susceptibility map is defined up to a constant; see :mod:`qsmprep.qsm.referencing`).

    On an even axis the Nyquist sample stands for both +k_N and -k_N. For an oblique b0 the
    two signs give different (k.b0)^2, so the kernel is averaged over them: the cross terms
    involving that axis vanish there. Without this the kernel is not Hermitian, and strong
    sharp sources (air, bone) leave a non-local checkerboard error along the whole axis.

    Returns float32 of shape (n0, n1, n2//2+1).
    """
    b0 = np.asarray(b0_direction, dtype=np.float64)
    b0 = b0 / np.linalg.norm(b0)
    coordinates = kspace_coordinates(shape, voxel_size)
    projections = [k * np.float32(b) for k, b in zip(coordinates, b0)]
    not_nyquist = [
        (np.abs(k) < np.float32(0.5 / h) * np.float32(1 - 1e-6)).astype(np.float32)
        if n % 2 == 0 else np.float32(1.0)
        for k, h, n in zip(coordinates, voxel_size, shape)
    ]
    k_dot_b_squared = sum(p**2 for p in projections)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        k_dot_b_squared = k_dot_b_squared + 2 * projections[i] * projections[j] * (
            not_nyquist[i] * not_nyquist[j])
    k_squared = sum(k**2 for k in coordinates)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.float32(1.0 / 3.0) - k_dot_b_squared / k_squared
    kernel[0, 0, 0] = 0.0
    return kernel.astype(np.float32, copy=False)


def laplacian_kernel(shape, voxel_size) -> np.ndarray:
    """Fourier symbol of the 7-point discrete Laplacian (mm^-2) on the real-FFT half grid.

    L(k) = sum_i (2 cos(2 pi k_i h_i) - 2) / h_i^2, which is <= 0 and 0 only at k = 0.
    Applying it by FFT is exactly the periodic finite-difference Laplacian.
    """
    total = None
    for axis_freq, h in zip(kspace_coordinates(shape, voxel_size), voxel_size):
        term = (2.0 * np.cos(2.0 * np.pi * axis_freq * h) - 2.0) / np.float32(h * h)
        total = term if total is None else total + term
    return total.astype(np.float32, copy=False)


def forward_field_ppm(susceptibility_ppm, voxel_size, b0_direction=(0.0, 0.0, 1.0), *,
                      pad_voxels=None, workers: int = 1) -> np.ndarray:
    """Field perturbation (ppm) produced by a susceptibility distribution (ppm).

    Convolution with the dipole kernel in k-space on a zero-padded grid (default padding:
    half the matrix on each side, which keeps wrap-around negligible).
    """
    susceptibility_ppm = np.asarray(susceptibility_ppm, dtype=np.float32)
    if pad_voxels is None:
        pad_voxels = [n // 2 for n in susceptibility_ppm.shape]
    shape = padded_shape(susceptibility_ppm.shape, pad_voxels=pad_voxels)
    kernel = dipole_kernel(shape, voxel_size, b0_direction)
    spectrum = rfftn(pad_to(susceptibility_ppm, shape), workers=workers) * kernel
    return crop_to(irfftn(spectrum, shape, workers=workers), susceptibility_ppm.shape)


#: Relative tolerance on squared distances in :func:`ball` (and the erosions that mimic it),
#: so that voxels lying exactly on the sphere are inside it whatever the rounding.
BALL_TOLERANCE = 1e-6


def ball(radius_mm: float, voxel_size) -> np.ndarray:
    """Boolean ball of ``radius_mm`` sampled on the voxel grid (anisotropic voxels in mm).

    A voxel offset ``d`` (mm) belongs to the ball when ``|d| <= radius_mm``. The array has odd
    length ``2 * floor(radius_mm / h) + 1`` along each axis, centred on the middle voxel. This
    is the structuring element of :mod:`qsmprep.qsm.masking` and the sphere of V-SHARP.
    """
    half_widths = [int(np.floor(radius_mm / h + 1e-6)) for h in voxel_size]
    offsets = [np.arange(-n, n + 1) * float(h) for n, h in zip(half_widths, voxel_size)]
    grids = np.meshgrid(*offsets, indexing="ij", sparse=True)
    distance_squared = sum(g**2 for g in grids)
    return distance_squared <= radius_mm**2 * (1.0 + BALL_TOLERANCE)


def sphere_kernel(shape, voxel_size, radius_mm: float, *, workers: int = 1) -> np.ndarray:
    """Fourier transform of the normalised :func:`ball` (spherical mean) on the grid ``shape``.

    The ball is centred on voxel 0 (wrapped around the edges), so S(k) is real and even,
    S(0) = 1. ``irfftn(rfftn(f) * S)`` is the mean of ``f`` over the sphere around each voxel,
    the operator of SHARP background removal (Schweser et al., NeuroImage 2011;54:2789-2807).
    Returns float32 of shape (n0, n1, n2//2+1).
    """
    sphere = ball(radius_mm, voxel_size)
    offsets = np.argwhere(sphere) - np.array(sphere.shape) // 2
    spatial = np.zeros(shape, dtype=np.float32)
    spatial[tuple((offsets % np.array(shape)).T)] = 1.0 / len(offsets)
    return rfftn(spatial, workers=workers).real.astype(np.float32)
