"""Physics of qsmprep.qsm.dipole against analytic fields and geometry."""

import numpy as np
import pytest

from qsmprep import imageio
from qsmprep.qsm import dipole


def _centred_grid(shape):
    return [np.arange(n)[(slice(None),) + (None,) * (len(shape) - 1 - axis)] - n // 2
            for axis, n in enumerate(shape)]


def test_uniform_sphere_field_inside_zero_outside_dipole():
    n, radius, chi = 48, 8, 1.0
    x, y, z = _centred_grid((n, n, n))
    distance = np.sqrt(x**2 + y**2 + z**2)
    sphere = (distance <= radius).astype(np.float32) * chi
    field = dipole.forward_field_ppm(sphere, (1.0, 1.0, 1.0))
    # Lorentz-corrected kernel: no field inside a uniform sphere
    assert np.abs(field[distance < radius - 1]).mean() < 0.01 * chi
    # outside: a point dipole of the sphere's (discrete) volume
    moment = chi * sphere.sum() / (4 * np.pi)
    for r in (12, 16, 20):
        pole = field[n // 2, n // 2, n // 2 + r]
        equator = field[n // 2 + r, n // 2, n // 2]
        assert pole == pytest.approx(2 * moment / r**3, rel=0.05)
        assert equator == pytest.approx(-moment / r**3, rel=0.05)


@pytest.mark.parametrize("axis, expected", [(2, 1.0 / 3.0), (0, -1.0 / 6.0)])
def test_infinite_cylinder_internal_field(axis, expected):
    n = 32
    coords = _centred_grid((n, n, n))
    across = [c for a, c in enumerate(coords) if a != axis]
    disc = (across[0] ** 2 + across[1] ** 2) <= 36
    cylinder = np.broadcast_to(disc, (n, n, n)).astype(np.float32)
    pad = [0 if a == axis else 16 for a in range(3)]  # periodic along the axis: infinite
    field = dipole.forward_field_ppm(cylinder, (1.0, 1.0, 1.0), (0, 0, 1), pad_voxels=pad)
    centre_line = np.moveaxis(field, axis, 0)[:, n // 2, n // 2]
    assert centre_line == pytest.approx(np.full(n, expected), rel=0.05)


@pytest.mark.parametrize("theta", [0.0, 0.3, -0.7])
def test_b0_direction_from_rotated_affine(theta):
    c, s = np.cos(theta), np.sin(theta)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag([0.8, 1.0, 2.0])
    direction = imageio.b0_direction_from_affine(affine)
    assert direction == pytest.approx([0.0, s, c], abs=1e-12)
    assert imageio.voxel_size_from_affine(affine) == pytest.approx([0.8, 1.0, 2.0])


def test_padded_shape_fits_and_last_axis_even():
    for shape in [(33, 35, 37), (17, 19, 21), (64, 64, 63)]:
        out = dipole.padded_shape(shape, pad_voxels=(3, 0, 5))
        assert out[-1] % 2 == 0
        assert all(o >= n + 2 * p for o, n, p in zip(out, shape, (3, 0, 5)))


def test_hz_ppm_round_trip():
    assert float(dipole.ppm_to_hz(1.0, 3.0)) == pytest.approx(127.732434, rel=1e-6)
    values = np.linspace(-50, 50, 11)
    assert dipole.ppm_to_hz(dipole.hz_to_ppm(values, 7.0), 7.0) == pytest.approx(values, rel=1e-6)


def test_ball_anisotropic_extent_and_volume():
    ball = dipole.ball(6.0, (1.0, 1.0, 2.0))
    assert ball.shape == (13, 13, 7)
    volume_mm3 = ball.sum() * 2.0
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.08)
    assert ball[6, 6, 0] and ball[0, 6, 3] and not ball[0, 0, 3]


def test_sphere_kernel_is_spherical_mean():
    shape, voxel_size = (32, 32, 32), (1.0, 1.0, 1.5)
    kernel = dipole.sphere_kernel(shape, voxel_size, 4.0)
    assert kernel[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert np.abs(kernel).max() <= 1.0 + 1e-6
    # the mean over a sphere of a linear function is its value at the centre
    x, y, z = _centred_grid(shape)
    linear = np.broadcast_to(0.3 * x + 0.2 * y - 0.1 * z, shape).astype(np.float32)
    mean = dipole.irfftn(dipole.rfftn(linear) * kernel, shape)
    interior = (slice(8, 24),) * 3
    assert mean[interior] == pytest.approx(linear[interior], abs=1e-4)
