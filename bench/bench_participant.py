"""Wall time and peak memory of a whole participant run through the command line.

Simulates one 1 mm whole-head scan, 4 echoes at 3 T, as a BIDS dataset in a temporary folder:
the analytic head (default 200 x 230 x 190 voxels) or, with ``--anatomy template``, the digital
subject made from the template and atlas (176 x 216 x 176, oblique, deformed). Then times

    qsmprep bids/ out/ participant --qsm-only --nprocs 2 -w work/     (--mode qsm-only)
    qsmprep bids/ out/ participant --nprocs 2 -w work/                (--mode full: + registration
                                                                       and regions)

and reports the wall time, the peak resident memory of the largest process (the nipype workers
included), and for a full run the registration node's own time:

    python bench/bench_participant.py [--anatomy template] [--mode full] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qsmprep.phantom.dataset import (PhantomSubject, asymmetric_digital_subject,
                                     write_phantom_dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy", choices=["analytic", "template"], default="analytic")
    parser.add_argument("--mode", choices=["qsm-only", "full"], default="qsm-only")
    parser.add_argument("--shape", type=int, nargs=3, default=None,
                        help="grid (default: 200 230 190 analytic; the whole head, 176 216 176 "
                        "at 1 mm, for the template subject)")
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the dataset and outputs in this folder")
    opts = parser.parse_args(argv)

    base = opts.keep or Path(tempfile.mkdtemp(prefix="qsmprep-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if opts.anatomy == "template":
        subject = asymmetric_digital_subject(opts.voxel_size,
                                             **({"shape": tuple(opts.shape)} if opts.shape else {}))
    else:
        subject = PhantomSubject(subject="01", shape=tuple(opts.shape or (200, 230, 190)),
                                 voxel_size=(opts.voxel_size,) * 3, seed=1)
    opts.shape = subject.shape
    write_phantom_dataset(base / "bids", [subject], workers=opts.nprocs)
    simulation_s = time.perf_counter() - started

    command = [str(Path(sys.executable).with_name("qsmprep")), str(base / "bids"),
               str(base / "out"), "participant", "--nprocs", str(opts.nprocs),
               "-w", str(base / "work")]
    if opts.mode == "qsm-only":
        command.append("--qsm-only")
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    if result.returncode != 0:
        print(result.stderr[-3000:])
        raise SystemExit(f"qsmprep exited with {result.returncode}")

    shape = "x".join(map(str, opts.shape))
    registration_s = _node_seconds(base / "work", "register_to_template")
    mode = "--qsm-only" if opts.mode == "qsm-only" else "(full)"
    registration = "-" if registration_s is None else f"{registration_s:.1f}"
    print(f"| Scan | Simulation (s) | qsmprep participant {mode}, wall (s) | "
          f"Registration node (s) | Peak memory of one process (GB) |\n|---|---|---|---|---|\n"
          f"| {opts.anatomy} {shape} at {opts.voxel_size:g} mm, 4 echoes, "
          f"--nprocs {opts.nprocs} | {simulation_s:.1f} | {wall_s:.1f} | {registration} | "
          f"{peak_gb:.2f} |")
    done = [line for line in result.stderr.splitlines() if "done:" in line]
    print(f"\n{len(done)} nodes ran; log lines with their finishing times are in "
          f"{base / 'out' / 'logs'}.")
    if opts.keep is None:
        shutil.rmtree(base, ignore_errors=True)


def _node_seconds(work_dir: Path, node_name: str):
    """The run time nipype recorded for the node ``node_name`` (first match), or None."""
    from nipype.utils.filemanip import loadpkl

    for result_file in sorted(work_dir.rglob(f"{node_name}/result_{node_name}.pklz")):
        runtime = getattr(loadpkl(result_file), "runtime", None)
        if runtime is not None and getattr(runtime, "duration", None) is not None:
            return float(runtime.duration)
    return None


if __name__ == "__main__":
    main()
