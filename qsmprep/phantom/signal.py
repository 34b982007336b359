"""Multi-echo gradient-echo forward model of the head phantom.

Signal of echo n at echo time TE_n (complex, per voxel)::

    S_n = M0 exp(-R2* TE_n) exp(i (phi0 + 2 pi f TE_n)) + complex Gaussian noise

with ``f`` the total field (Hz) = dipole field of the total susceptibility + a smooth shim
residual, and noise of standard deviation sigma = mean brain M0 / snr in each of the real and
imaginary channels (so magnitude is Rician). The phase sign convention is
``phase = +2 pi f TE`` with ``f = ppm_to_hz(forward_field_ppm(chi))``, B0 along the scanner z
axis expressed in voxel coordinates by :func:`~qsmprep.imageio.b0_direction_from_affine`, so an
oblique affine tilts the dipole pattern on the grid.

The medium beyond the field of view is taken to continue the field-of-view border (the median of
the border voxels, air for the head phantom): that value is subtracted before the dipole
convolution, which changes only the k = 0 term inside the padded grid and so removes the
spurious susceptibility step that zero padding would otherwise put at the field-of-view edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..imageio import b0_direction_from_affine, voxel_size_from_affine
from ..qsm.dipole import forward_field_ppm, ppm_to_hz
from .head import HeadPhantom

__all__ = [
    "SimulatedAcquisition",
    "default_phase_offset_rad",
    "default_shim_field_hz",
    "oblique_affine",
    "simulate_multiecho_gre",
    "voxel_world_coordinates_mm",
    "wrap_phase",
]


@dataclass
class SimulatedAcquisition:
    """A simulated multi-echo GRE acquisition with its ground truth.

    Attributes
    ----------
    magnitude : ndarray, float32, shape (x, y, z, echo)
    phase : ndarray, float32, shape (x, y, z, echo)
        Wrapped phase (rad) in [-pi, pi).
    total_field_hz : ndarray, float32
        Field of all sources (brain, tissue outside the brain, air, bone) plus the shim field.
    local_field_hz : ndarray, float32
        Field of the sources inside the brain mask only, restricted to the brain (0 outside).
    background_field_hz : ndarray, float32
        ``total_field_hz - local_field_hz`` (inside the brain: field of the sources outside the
        brain plus the shim field; outside the brain: the total field).
    susceptibility_ppm : ndarray, float32
        Susceptibility inside the brain mask (ppm relative to CSF), 0 outside.
    b0_direction : ndarray, float64, shape (3,)
        Unit main-field direction in voxel coordinates.
    echo_times_s : tuple of float
    field_strength_t : float
    affine : ndarray, shape (4, 4)
    brain_mask, head_mask : ndarray, bool
    m0, r2star_hz : ndarray, float32
        Noise-free magnitude at TE = 0 and R2* (1/s).
    phase_offset_rad : ndarray, float32
        The echo-independent phase phi0.
    shim_field_hz : ndarray, float32
        The shim residual included in the total and background fields.
    noise_sigma : float
        Standard deviation of the noise in each of the real and imaginary channels (0: none).
    phantom : HeadPhantom
        The phantom that was imaged (labels, names, total susceptibility).
    """

    magnitude: np.ndarray
    phase: np.ndarray
    total_field_hz: np.ndarray
    local_field_hz: np.ndarray
    background_field_hz: np.ndarray
    susceptibility_ppm: np.ndarray
    b0_direction: np.ndarray
    echo_times_s: tuple[float, ...]
    field_strength_t: float
    affine: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    m0: np.ndarray
    r2star_hz: np.ndarray
    phase_offset_rad: np.ndarray
    shim_field_hz: np.ndarray
    noise_sigma: float
    phantom: HeadPhantom

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm)."""
        return tuple(float(v) for v in voxel_size_from_affine(self.affine))

    def complex_signal(self) -> np.ndarray:
        """Complex images (x, y, z, echo), complex64."""
        return (self.magnitude * np.exp(1j * self.phase)).astype(np.complex64)


def _rotation_matrix(rotation_deg) -> np.ndarray:
    """Rotation R = Rz @ Ry @ Rx from Euler angles (degrees) about the world x, y, z axes."""
    ax, ay, az = np.deg2rad(np.asarray(rotation_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(*, shape, voxel_size, rotation_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel-to-world (RAS mm) affine of a grid centred on the world origin, possibly oblique.

    Parameters
    ----------
    shape : tuple of int
    voxel_size : tuple of float
        Voxel edge lengths (mm).
    rotation_deg : tuple of float
        Euler angles (degrees) about the world x (left-right), y and z axes, applied in that
        order. ``(15, 0, 0)`` tilts the slab 15 degrees about the left-right axis.

    Returns
    -------
    ndarray, shape (4, 4)
    """
    linear = _rotation_matrix(rotation_deg) @ np.diag(np.asarray(voxel_size, dtype=float))
    centre_voxel = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ centre_voxel
    # Clean round-off so that axis-aligned affines are exact.
    affine[np.abs(affine) < 1e-12] = 0.0
    return affine


def voxel_world_coordinates_mm(shape, affine) -> list[np.ndarray]:
    """World (scanner) coordinates (mm) of every voxel centre: three float32 arrays of ``shape``."""
    affine = np.asarray(affine, dtype=float)
    index = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return [
        (affine[row, 0] * index[0] + affine[row, 1] * index[1] + affine[row, 2] * index[2]
         + affine[row, 3]).astype(np.float32)
        for row in range(3)
    ]


def default_shim_field_hz(shape, affine) -> np.ndarray:
    """A small harmonic shim residual (Hz) in scanner coordinates, float32.

    A constant, first-order gradients (x, y, z) and the second-order z2 term
    ``2 z^2 - x^2 - y^2``, all harmonic, giving a few tens of Hz across the head.
    """
    x, y, z = voxel_world_coordinates_mm(shape, affine)
    field = (
        np.float32(3.0)
        + np.float32(0.20) * x
        - np.float32(0.15) * y
        + np.float32(0.30) * z
        + np.float32(0.0015) * (2.0 * z * z - x * x - y * y)
    )
    return field.astype(np.float32)


def default_phase_offset_rad(shape) -> np.ndarray:
    """A smooth echo-independent phase offset (rad), like that left by coil combination, float32.

    Low-order terms in coordinates normalised to [-1, 1] along each axis, spanning about
    [-2.5, 2.5] rad.
    """
    u, v, w = (
        np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([n if a == i else 1 for a in range(3)])
        for i, n in enumerate(shape)
    )
    offset = 0.4 + 1.0 * u - 0.6 * v + 0.5 * w + 0.8 * u * w - 0.7 * v * v
    return np.broadcast_to(offset, tuple(shape)).astype(np.float32)


def wrap_phase(phase) -> np.ndarray:
    """Wrap phase (rad) into [-pi, pi), float32 (also after rounding to single precision)."""
    wrapped = (np.mod(np.asarray(phase, dtype=np.float64) + np.pi, 2.0 * np.pi) - np.pi).astype(np.float32)
    wrapped[wrapped >= np.float32(np.pi)] -= np.float32(2.0 * np.pi)
    return wrapped


def _surrounding_susceptibility_ppm(susceptibility_ppm) -> float:
    """Median of the field-of-view border voxels: the medium assumed beyond the field of view."""
    chi = susceptibility_ppm
    faces = [chi[0], chi[-1], chi[:, 0], chi[:, -1], chi[:, :, 0], chi[:, :, -1]]
    return float(np.median(np.concatenate([f.ravel() for f in faces])))


def _as_volume(value, shape, name) -> np.ndarray:
    volume = np.broadcast_to(np.asarray(value, dtype=np.float32), tuple(shape))
    if volume.shape != tuple(shape):
        raise ValueError(f"{name} does not broadcast to {shape}")
    return np.ascontiguousarray(volume)


def _rotation_to_z(direction) -> np.ndarray:
    """Rotation matrix R (Rodrigues) with R @ direction = (0, 0, 1)."""
    direction = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    axis = np.cross(direction, (0.0, 0.0, 1.0))
    sine, cosine = np.linalg.norm(axis), float(direction[2])
    if sine < 1e-12:
        return np.diag([1.0, 1.0, 1.0]) if cosine > 0 else np.diag([1.0, -1.0, -1.0])
    axis /= sine
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + sine * cross + (1 - cosine) * cross @ cross


def _field_in_b0_frame_ppm(susceptibility_ppm, voxel_size, b0_direction, *, workers=1):
    """Dipole field of strong (air, bone) sources, computed on a grid aligned with B0.

    On a grid tilted against B0 the sampled kernel's cross terms k_i k_j jump at the Nyquist
    frequency, and sharp sources of several ppm leave a non-local, non-harmonic error that no
    real head produces. On a grid whose third axis is B0 the kernel is 1/3 - kz^2/|k|^2, smooth
    across Nyquist: the sources are resampled (trilinear) onto such an isotropic grid, the field
    is computed there and resampled back onto the voxel grid.
    """
    voxel_size = np.asarray(voxel_size, dtype=float)
    b0_direction = np.asarray(b0_direction, dtype=float)
    if abs(abs(b0_direction[2]) - 1.0) < 1e-9:
        return forward_field_ppm(susceptibility_ppm, voxel_size, b0_direction, workers=workers)
    to_b0_frame = _rotation_to_z(b0_direction)  # voxel-frame mm -> B0-frame mm
    spacing = float(voxel_size.min())
    shape = np.asarray(susceptibility_ppm.shape)
    extent_mm = (shape - 1) * voxel_size
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * extent_mm
    centre_mm = extent_mm / 2
    rotated = (corners - centre_mm) @ to_b0_frame.T
    aligned_shape = tuple(int(np.ceil(n)) + 1 for n in np.ptp(rotated, axis=0) / spacing)
    aligned_centre = (np.asarray(aligned_shape) - 1) / 2
    # aligned index -> voxel index: v = diag(1/h) (R^T (a - c_a) * spacing + c_mm)
    to_voxel = np.diag(1 / voxel_size) @ to_b0_frame.T * spacing
    offset = (centre_mm - to_b0_frame.T @ aligned_centre * spacing) / voxel_size
    aligned = ndimage.affine_transform(susceptibility_ppm, to_voxel, offset=offset,
                                       output_shape=aligned_shape, order=1, cval=0.0)
    aligned_field = forward_field_ppm(aligned, (spacing,) * 3, (0.0, 0.0, 1.0), workers=workers)
    # voxel index -> aligned index: a = R diag(h) (v - c_mm / h) / spacing + c_a
    to_aligned = to_b0_frame @ np.diag(voxel_size) / spacing
    back_offset = aligned_centre - to_b0_frame @ centre_mm / spacing
    return ndimage.affine_transform(aligned_field, to_aligned, offset=back_offset,
                                    output_shape=tuple(shape), order=1,
                                    mode="nearest").astype(np.float32)


def simulate_multiecho_gre(
    phantom: HeadPhantom,
    *,
    echo_times_s=(0.004, 0.008, 0.012, 0.016),
    field_strength_t: float = 3.0,
    affine=None,
    snr: float | None = 100.0,
    phase_offset_rad=None,
    shim_field_hz=None,
    seed: int = 0,
    workers: int = 1,
) -> SimulatedAcquisition:
    """Simulate a multi-echo GRE acquisition of ``phantom``.

    Parameters
    ----------
    phantom : HeadPhantom
    echo_times_s : sequence of float
        Echo times (s).
    field_strength_t : float
        Main field (T).
    affine : ndarray (4, 4), optional
        Voxel-to-world affine; default: axis-aligned, centred on the origin. Its column norms must
        equal the phantom's voxel size. B0 is along world z.
    snr : float or None
        Mean brain M0 over the noise SD per channel. ``None`` or ``inf``: no noise.
    phase_offset_rad : array_like, optional
        Echo-independent phase phi0 (scalar or volume). Default: :func:`default_phase_offset_rad`.
    shim_field_hz : array_like, optional
        Shim residual field (Hz, scalar or volume) added to the field. Default:
        :func:`default_shim_field_hz`; pass 0 for none.
    seed : int
        Seed of the noise.
    workers : int
        Threads of the FFTs (scipy.fft ``workers``).

    Returns
    -------
    SimulatedAcquisition
    """
    shape = phantom.shape
    echo_times_s = tuple(float(te) for te in echo_times_s)
    if not echo_times_s:
        raise ValueError("at least one echo time is needed")
    if affine is None:
        affine = oblique_affine(shape=shape, voxel_size=phantom.voxel_size)
    affine = np.asarray(affine, dtype=float)
    voxel_size = voxel_size_from_affine(affine)
    if not np.allclose(voxel_size, phantom.voxel_size, rtol=1e-4):
        raise ValueError(f"affine voxel size {voxel_size} differs from the phantom's {phantom.voxel_size}")
    b0_direction = b0_direction_from_affine(affine)

    # Fields: brain sources, and all other sources relative to the surrounding medium.
    brain_chi = phantom.brain_susceptibility_ppm()
    outside_chi = np.where(phantom.brain_mask, np.float32(0.0), phantom.susceptibility_ppm)
    outside_chi = outside_chi - np.float32(_surrounding_susceptibility_ppm(phantom.susceptibility_ppm))
    brain_field_hz = ppm_to_hz(
        forward_field_ppm(brain_chi, voxel_size, b0_direction, workers=workers), field_strength_t
    )
    outside_field_hz = ppm_to_hz(
        _field_in_b0_frame_ppm(outside_chi, voxel_size, b0_direction, workers=workers),
        field_strength_t,
    )
    if shim_field_hz is None:
        shim_field_hz = default_shim_field_hz(shape, affine)
    shim_field_hz = _as_volume(shim_field_hz, shape, "shim_field_hz")
    total_field_hz = (brain_field_hz + outside_field_hz + shim_field_hz).astype(np.float32)
    local_field_hz = np.where(phantom.brain_mask, brain_field_hz, np.float32(0.0)).astype(np.float32)
    background_field_hz = (total_field_hz - local_field_hz).astype(np.float32)

    if phase_offset_rad is None:
        phase_offset_rad = default_phase_offset_rad(shape)
    phase_offset_rad = _as_volume(phase_offset_rad, shape, "phase_offset_rad")

    # Signal, echo by echo (float64 phase accumulation keeps the wrapped phase exact).
    noisy = snr is not None and np.isfinite(snr)
    noise_sigma = float(phantom.m0[phantom.brain_mask].mean() / snr) if noisy else 0.0
    rng = np.random.default_rng(seed)
    magnitude = np.empty(shape + (len(echo_times_s),), dtype=np.float32)
    phase = np.empty_like(magnitude)
    for echo, te in enumerate(echo_times_s):
        clean_magnitude = phantom.m0 * np.exp(-phantom.r2star_hz * np.float32(te))
        clean_phase = phase_offset_rad.astype(np.float64) + 2.0 * np.pi * te * total_field_hz.astype(np.float64)
        if noisy:
            clean_phase = wrap_phase(clean_phase)
            real = clean_magnitude * np.cos(clean_phase) + noise_sigma * rng.standard_normal(shape, dtype=np.float32)
            imag = clean_magnitude * np.sin(clean_phase) + noise_sigma * rng.standard_normal(shape, dtype=np.float32)
            magnitude[..., echo] = np.hypot(real, imag)
            phase[..., echo] = wrap_phase(np.arctan2(imag, real))
        else:
            magnitude[..., echo] = clean_magnitude
            phase[..., echo] = wrap_phase(clean_phase)

    return SimulatedAcquisition(
        magnitude=magnitude,
        phase=phase,
        total_field_hz=total_field_hz,
        local_field_hz=local_field_hz,
        background_field_hz=background_field_hz,
        susceptibility_ppm=brain_chi,
        b0_direction=b0_direction,
        echo_times_s=echo_times_s,
        field_strength_t=float(field_strength_t),
        affine=affine,
        brain_mask=phantom.brain_mask,
        head_mask=phantom.head_mask,
        m0=phantom.m0,
        r2star_hz=phantom.r2star_hz,
        phase_offset_rad=phase_offset_rad,
        shim_field_hz=shim_field_hz,
        noise_sigma=noise_sigma,
        phantom=phantom,
    )
