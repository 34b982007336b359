"""Speed, memory and accuracy of the registration to the template on a synthetic participant.

The participant is the 1 mm MNI152NLin2009cAsym brain template moved by a known
transformation (rotation of a few degrees, translation, anisotropic scaling and a smooth
sinusoidal deformation), given a magnitude-like contrast (inverted grey/white contrast, a
smooth receive bias and Rician noise) and resampled onto an oblique grid:

    python bench/bench_registration.py --threads 2

It times the three steps of :mod:`qsmprep.registration` a participant goes through (N4
preparation, registration, atlas labels to the native grid), reports the wall time, the peak
resident memory of this process and of the ``antsRegistration`` child process
(``resource.getrusage``), the target registration error (TRE) of 20 landmarks inside the brain
in both directions, the quality measures, and the machine's load average (other processes
sharing the cores slow everything down).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from qsmprep import registration
from qsmprep.atlases import OPEN_LABELS_NAME, TEMPLATE_DIR, template_files

LPS = np.diag([-1.0, -1.0, 1.0])
CENTRE_RAS = np.array([0.0, -18.0, 12.0])  # middle of the template brain (mm)


def rotation(degrees):
    rx, ry, rz = np.deg2rad(degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    about_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    about_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def synthetic_participant(template_path, mask_path, folder, *, voxel_size, oblique_deg,
                          extent_mm=(176.0, 216.0, 184.0), seed=0):
    """Write the moved, re-contrasted, oblique magnitude, its brain mask and the true
    transformation; return landmarks in native and template LPS coordinates."""
    import ants

    shape = tuple(int(round(e / v)) for e, v in zip(extent_mm, voxel_size))
    linear = rotation(oblique_deg) @ np.diag(voxel_size)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = CENTRE_RAS - linear @ ((np.array(shape) - 1) / 2)
    origin, spacing, direction = registration._ants_geometry(affine)

    # true map of native points to template points (LPS): x = A(y + u(y))
    moved = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3,
        matrix=rotation((4.0, -3.0, 5.0)) @ np.diag((1.03, 0.97, 1.02)),
        translation=np.array((3.0, -4.0, 2.0)), center=LPS @ CENTRE_RAS)
    ants.write_transform(moved, os.path.join(folder, "true_affine.mat"))
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape],
                               indexing="ij"), axis=-1).reshape(-1, 3)
    lps = (ijk @ linear.T.astype(np.float32) + affine[:3, 3].astype(np.float32)) @ LPS
    relative = lps - LPS @ CENTRE_RAS
    amplitude = 2.5
    displacement = np.stack([amplitude * np.sin(2 * np.pi * relative[:, 1] / 110 + 0.3),
                             amplitude * np.sin(2 * np.pi * relative[:, 2] / 100 + 1.0),
                             amplitude * np.cos(2 * np.pi * relative[:, 0] / 120)], axis=-1)
    field = ants.from_numpy(displacement.reshape(shape + (3,)).astype(np.float32),
                            origin=origin, spacing=spacing, direction=direction,
                            has_components=True)
    ants.image_write(field, os.path.join(folder, "true_warp.nii.gz"))
    true_transforms = [os.path.join(folder, "true_warp.nii.gz"),
                       os.path.join(folder, "true_affine.mat")]
    del ijk, lps, relative, displacement, field

    grid = ants.from_numpy(np.zeros(shape, np.float32), origin=origin, spacing=spacing,
                           direction=direction)
    template = ants.apply_transforms(grid, ants.image_read(str(template_path)), true_transforms,
                                     whichtoinvert=[False, False]).numpy()
    mask = ants.apply_transforms(grid, ants.image_read(str(mask_path)), true_transforms,
                                 whichtoinvert=[False, False]).numpy() > 0.5
    rng = np.random.default_rng(seed)
    magnitude = np.where(template > 0,
                         1.3 - 0.8 * np.clip(template / np.percentile(template[mask], 99), 0, 1.2),
                         0.0) + 0.03
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    magnitude *= np.exp(0.25 * k + 0.15 * i - 0.1 * j)
    noise = 0.02 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    magnitude = np.abs(magnitude + noise).astype(np.float32)
    paths = {"magnitude": os.path.join(folder, "magnitude.nii.gz"),
             "mask": os.path.join(folder, "brain_mask.nii.gz")}
    nib.save(nib.Nifti1Image(magnitude, affine), paths["magnitude"])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths["mask"])

    deep = ndimage.binary_erosion(mask, iterations=int(round(12 / min(voxel_size))))
    candidates = np.argwhere(deep)
    picked = candidates[rng.choice(len(candidates), 20, replace=False)]
    native = (picked @ affine[:3, :3].T + affine[:3, 3]) @ LPS
    template_points = _map_points(native, true_transforms)
    return paths, native, template_points


def _map_points(points_lps, transforms):
    import ants

    frame = pd.DataFrame(points_lps, columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(3, frame, list(transforms),
                                             whichtoinvert=[False] * len(transforms))
    return mapped[["x", "y", "z"]].to_numpy()


def _labels(folder, template_path):
    path = TEMPLATE_DIR / OPEN_LABELS_NAME
    if path.exists():
        return str(path)
    image = nib.load(str(template_path))
    centre = np.round(np.linalg.inv(image.affine) @ np.r_[CENTRE_RAS, 1])[:3].astype(int)
    labels = np.zeros(image.shape, np.int16)
    labels[tuple(slice(c - 6, c + 6) for c in centre)] = 1
    labels[tuple(slice(c + 10, c + 12) for c in centre)] = 2
    out = os.path.join(folder, "labels.nii.gz")
    nib.save(nib.Nifti1Image(labels, image.affine), out)
    return out


def _peak_gb(who):
    return resource.getrusage(who).ru_maxrss / 1024**2  # kB on Linux


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    parser.add_argument("--oblique", type=float, nargs=3, default=(12.0, 0.0, 5.0),
                        help="rotation of the native grid (degrees about x, y, z)")
    parser.add_argument("--syn-iterations", type=str, default=None,
                        help="override the SyN iterations, e.g. 100x70x20x0")
    parser.add_argument("--work-dir", default=None)
    opts = parser.parse_args(argv)

    files = template_files()
    folder = opts.work_dir or tempfile.mkdtemp(prefix="bench_registration_")
    os.makedirs(folder, exist_ok=True)
    settings = registration.DEFAULT_SETTINGS
    if opts.syn_iterations:
        import dataclasses

        settings = dataclasses.replace(
            settings, syn_iterations=tuple(int(i) for i in opts.syn_iterations.split("x")))

    started = time.perf_counter()
    paths, native_points, template_points = synthetic_participant(
        files["T1w"], files["mask"], folder, voxel_size=tuple(opts.voxel_size),
        oblique_deg=tuple(opts.oblique))
    simulation_s = time.perf_counter() - started
    start_error = np.linalg.norm(native_points - template_points, axis=1)

    times = {}
    started = time.perf_counter()
    prepared = registration.prepare_moving_image(paths["magnitude"], paths["mask"],
                                                 os.path.join(folder, "prepared.nii.gz"))
    times["prepare (N4, mask, rescale)"] = time.perf_counter() - started
    started = time.perf_counter()
    result = registration.register_to_template(
        prepared, files["T1w"], out_prefix=os.path.join(folder, "reg_"),
        template_mask_path=files["mask"], moving_mask_path=paths["mask"],
        threads=opts.threads, settings=settings)
    times["register (rigid + affine + SyN)"] = time.perf_counter() - started
    started = time.perf_counter()
    registration.labels_to_native(_labels(folder, files["T1w"]), paths["magnitude"],
                                  result.inverse_transform,
                                  os.path.join(folder, "labels_native.nii.gz"))
    times["labels to native"] = time.perf_counter() - started
    started = time.perf_counter()
    quality = registration.registration_quality(result.warped, files["T1w"], files["mask"])
    times["quality"] = time.perf_counter() - started

    forward = np.linalg.norm(_map_points(template_points, [result.forward_transform])
                             - native_points, axis=1)
    inverse = np.linalg.norm(_map_points(native_points, [result.inverse_transform])
                             - template_points, axis=1)
    shape = nib.load(paths["magnitude"]).shape
    print(f"Synthetic participant: {shape[0]}x{shape[1]}x{shape[2]} at "
          f"{'x'.join(f'{v:g}' for v in opts.voxel_size)} mm, oblique "
          f"{'/'.join(f'{a:g}' for a in opts.oblique)} deg; simulated in {simulation_s:.1f} s; "
          f"landmarks moved by {start_error.mean():.1f} mm on average "
          f"(max {start_error.max():.1f}); threads {opts.threads}")
    print(f"SyN iterations {'x'.join(str(i) for i in settings.syn_iterations)} at "
          f"{'x'.join(f'{v:g}' for v in settings.levels_mm)} mm\n")
    print("| Step | Time (s) |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total** | **{sum(times.values()):.1f}** |\n")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"CPU time of the antsRegistration process: "
          f"{children.ru_utime + children.ru_stime:.1f} s (wall time x threads when the cores "
          f"are free)")
    print(f"Peak resident memory: this process {_peak_gb(resource.RUSAGE_SELF):.2f} GB, "
          f"antsRegistration process {_peak_gb(resource.RUSAGE_CHILDREN):.2f} GB")
    print(f"TRE forward (template -> native points): mean {forward.mean():.2f} mm, "
          f"max {forward.max():.2f} mm")
    print(f"TRE inverse (native -> template points): mean {inverse.mean():.2f} mm, "
          f"max {inverse.max():.2f} mm")
    print(f"Quality: NMI {quality['nmi']:.3f}, brain Dice {quality['dice_brain']:.3f}")
    print("Load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
          + f" on {os.cpu_count()} cores")
    print(f"Files in {folder}")


if __name__ == "__main__":
    main()
