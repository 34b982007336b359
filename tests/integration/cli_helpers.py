"""Helpers of the end-to-end tests: running the CLI, small phantoms, folder checksums."""

from __future__ import annotations

import hashlib
import os
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


def run_cli(*args, cwd=None, env=None):
    """Run the installed ``qsmprep`` console script; returns the CompletedProcess."""
    command = [str(Path(sys.executable).with_name("qsmprep")), *map(str, args)]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=900)


def small_subject(**overrides) -> PhantomSubject:
    """A PhantomSubject on the small grid, 4 echoes at 3 T."""
    settings = {"subject": "01", "echo_times_s": ECHO_TIMES_S, **SMALL_GRID}
    settings.update(overrides)
    return PhantomSubject(**settings)


