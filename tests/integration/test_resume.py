"""Interrupt a participant-level run with SIGTERM, then resume it from its work folder.

SIGTERM (``kill``, ``scancel``, a job's time limit) stops the run promptly with exit code 143
and a one-line message, kills the worker processes and leaves no partial file among the
derivatives; running the same command again reuses the finished nodes and gives derivatives
identical to those of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import derivatives_differences, run_cli, small_subject

from qsmprep.phantom.dataset import write_phantom_dataset

OPTIONS = ("--nprocs", "2", "--omp-nthreads", "1", "--qsm-only")
FINISHED_BEFORE_SIGTERM = 6  # nodes; of the 36 of two participants


@pytest.fixture(scope="module")
def bids_dir(tmp_path_factory):
    bids = tmp_path_factory.mktemp("resume_bids") / "bids"
    write_phantom_dataset(bids, [small_subject(subject="01", seed=1),
                                 small_subject(subject="02", seed=2)])
    return bids


@pytest.fixture(scope="module")
def uninterrupted(bids_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(bids_dir, base / "out", "participant", "-w", base / "work", *OPTIONS)
    assert result.returncode == 0, result.stderr[-4000:]
    return base / "out"


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigterm_then_resume(bids_dir, uninterrupted, tmp_path):
    output_dir, work_dir = tmp_path / "out", tmp_path / "work"
    command = [str(Path(sys.executable).with_name("qsmprep")), str(bids_dir), str(output_dir),
               "participant", "-w", str(work_dir), *OPTIONS]
    stderr_path = tmp_path / "interrupted.err"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if stderr_path.read_text().count("done: ") >= FINISHED_BEFORE_SIGTERM:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before it could be interrupted"
        workers = _children(process.pid)
        assert workers, "MultiProc started no worker process"
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        exit_code = process.wait(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    message = stderr_path.read_text()
    print(f"stopped {stopped_after:.1f} s after SIGTERM")

    assert exit_code == 143, message[-3000:]
    assert stopped_after < 15
    assert "Traceback" not in message, message[-3000:]
    assert "Terminated (SIGTERM)" in message and "-w" in message
    assert not any(_alive(pid) for pid in workers), "a worker process outlived the run"
    partial = [str(path) for path in output_dir.rglob("*.tmp")]
    assert partial == []
    finished = sorted(work_dir.rglob("result_*.pklz"))
    assert finished, "no node had finished before SIGTERM"
    finished_times = {path: path.stat().st_mtime_ns for path in finished}

    resumed = run_cli(bids_dir, output_dir, "participant", "-w", work_dir, *OPTIONS)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # the nodes finished before the interruption were reused, not run again
    assert {path: path.stat().st_mtime_ns for path in finished} == finished_times
    assert derivatives_differences(uninterrupted, output_dir) == []
    assert os.listdir(output_dir / "logs")  # both runs logged
