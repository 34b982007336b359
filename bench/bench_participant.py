"""Wall time and peak memory of a whole participant run through the command line.

Simulates one 1 mm whole-head scan (default 200 x 230 x 190 voxels, 4 echoes at 3 T) as a BIDS
dataset in a temporary folder, then times

    qsmprep bids/ out/ participant --qsm-only --nprocs 2 -w work/

and reports its wall time and the peak resident memory of the largest process (the nipype
workers included):

    python bench/bench_participant.py [--shape 200 230 190] [--voxel-size 1.0] [--keep DIR]
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

from qsmprep.phantom.dataset import PhantomSubject, write_phantom_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 230, 190))
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the dataset and outputs in this folder")
    opts = parser.parse_args(argv)

    base = opts.keep or Path(tempfile.mkdtemp(prefix="qsmprep-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_phantom_dataset(base / "bids", [PhantomSubject(
        subject="01", shape=tuple(opts.shape), voxel_size=(opts.voxel_size,) * 3, seed=1)])
    simulation_s = time.perf_counter() - started

    command = [str(Path(sys.executable).with_name("qsmprep")), str(base / "bids"),
               str(base / "out"), "participant", "--qsm-only", "--nprocs", str(opts.nprocs),
               "-w", str(base / "work")]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    if result.returncode != 0:
        print(result.stderr[-3000:])
        raise SystemExit(f"qsmprep exited with {result.returncode}")

    shape = "x".join(map(str, opts.shape))
    print(f"| Scan | Simulation (s) | qsmprep participant --qsm-only, wall (s) | "
          f"Peak memory of one process (GB) |\n|---|---|---|---|\n"
          f"| {shape} at {opts.voxel_size:g} mm, 4 echoes, --nprocs {opts.nprocs} | "
          f"{simulation_s:.1f} | {wall_s:.1f} | {peak_gb:.2f} |")
    done = [line for line in result.stderr.splitlines() if "done:" in line]
    print(f"\n{len(done)} nodes ran; log lines with their finishing times are in "
          f"{base / 'out' / 'logs'}.")
    if opts.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
