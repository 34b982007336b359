"""Helpers of the end-to-end tests: running the CLI, small phantoms, folder checksums."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from qsmprep.phantom.dataset import PhantomSubject

#: The demo's grid: a small head at 2 mm keeps each end-to-end run within a minute.
SMALL_GRID = {"shape": (72, 84, 72), "voxel_size": (2.0, 2.0, 2.0)}
ECHO_TIMES_S = (0.004, 0.009, 0.014, 0.019)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def tree_checksum(folder) -> str:
    """SHA-1 over every file path, size and content below ``folder`` (to prove it is untouched)."""
    digest = hashlib.sha1()
    for path in sorted(Path(folder).rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_cli(*args, cwd=None, env=None, timeout=None):
    """Run the installed ``qsmprep`` console script; returns the CompletedProcess.

    The run is its own process group. It has no time limit (every run of the suite is
    bounded by its data) unless ``timeout`` or the environment variable
    ``QSMPREP_TEST_TIMEOUT`` (seconds) sets one; past it the whole group, nipype's workers
    included, is killed, so no process outlives the test.
    """
    command = [str(Path(sys.executable).with_name("qsmprep")), *map(str, args)]
    environment = {**os.environ, **(env or {})}
    timeout = timeout or float(os.environ.get("QSMPREP_TEST_TIMEOUT") or 0) or None
    process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:  # a timeout, or the test run interrupted
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def small_subject(**overrides) -> PhantomSubject:
    """A PhantomSubject on the small grid, 4 echoes at 3 T."""
    settings = {"subject": "01", "echo_times_s": ECHO_TIMES_S, **SMALL_GRID}
    settings.update(overrides)
    return PhantomSubject(**settings)




#: Files of a derivatives folder that legitimately differ between two runs of the same command:
#: the saved configuration and the log are named after the run's id (a timestamp and a UUID)
#: and hold timestamps, paths and the plugin; crash reports exist only where a node failed.
RUN_SPECIFIC = ("logs/config-*.toml", "logs/qsmprep-*.log", "logs/crash-*")


def derivatives_differences(expected, found, *, ignore=RUN_SPECIFIC) -> list[str]:
    """How the derivatives folder ``found`` differs from ``expected`` (empty when identical).

    Paths matching a pattern of ``ignore`` (relative, ``fnmatch`` style) are skipped. NIfTI
    images are compared by data array (NaN equal to NaN), dtype, shape and affine; JSON files
    by their parsed content; ANTs transforms (``.h5``, whose HDF5 headers hold write times) by
    where they map a grid of points; anything else byte for byte.
    """
    import nibabel as nib
    import numpy as np

    def listing(root):
        root = Path(root)
        return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()
                and not any(fnmatch.fnmatch(str(path.relative_to(root)), pattern)
                            for pattern in ignore)}

    expected_files, found_files = listing(expected), listing(found)
    differences = [f"missing: {name}" for name in sorted(expected_files - found_files)]
    differences += [f"unexpected: {name}" for name in sorted(found_files - expected_files)]
    for name in sorted(expected_files & found_files):
        left, right = Path(expected) / name, Path(found) / name
        if name.endswith((".nii", ".nii.gz")):
            image_a, image_b = nib.load(left), nib.load(right)
            data_a, data_b = np.asanyarray(image_a.dataobj), np.asanyarray(image_b.dataobj)
            if data_a.dtype != data_b.dtype or data_a.shape != data_b.shape:
                differences.append(f"{name}: {data_a.dtype}{data_a.shape} != "
                                   f"{data_b.dtype}{data_b.shape}")
            elif not np.array_equal(data_a, data_b, equal_nan=data_a.dtype.kind == "f"):
                delta = np.nanmax(np.abs(data_a.astype(float) - data_b.astype(float)))
                differences.append(f"{name}: data differ (max |difference| {delta:.3g})")
            elif not np.array_equal(image_a.affine, image_b.affine):
                differences.append(f"{name}: affines differ")
        elif name.endswith(".json"):
            content_a, content_b = (json.loads(path.read_text()) for path in (left, right))
            if content_a != content_b:
                keys = sorted(key for key in set(content_a) | set(content_b)
                              if content_a.get(key) != content_b.get(key))
                differences.append(f"{name}: fields differ: {', '.join(keys) or '(not a mapping)'}")
        elif name.endswith(".h5"):
            if not np.array_equal(_mapped_points(left), _mapped_points(right)):
                differences.append(f"{name}: the transforms map points differently")
        elif left.read_bytes() != right.read_bytes():
            differences.append(f"{name}: contents differ")
    return differences


def _mapped_points(transform):
    """Where an ANTs transform file takes a 9 x 9 x 9 grid of points 20 mm apart around the
    origin (LPS millimetres)."""
    import ants
    import numpy as np
    import pandas as pd

    axis = np.linspace(-80.0, 80.0, 9)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    mapped = ants.apply_transforms_to_points(3, pd.DataFrame(points, columns=["x", "y", "z"]),
                                             [str(transform)])
    return mapped[["x", "y", "z"]].to_numpy()
