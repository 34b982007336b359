"""``qsmprep-demo OUT/``: simulate seven digital participants (a control and CBS, PSP, PD,
ALS, MSA and AD patients) and run the participant level on them, reports included.

Everything happens offline: the dataset comes from the package's forward model
(:func:`qsmprep.phantom.dataset.make_demo_dataset`), with its ground truth beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> None:
    """Console entry point."""
    sys.exit(run(argv))


def run(argv=None) -> int:
    """Build ``OUT/bids`` (the simulated dataset), then run ``qsmprep OUT/bids OUT/qsmprep
    participant -w OUT/work``; extra arguments after ``--`` are passed to qsmprep."""
    parser = argparse.ArgumentParser(prog="qsmprep-demo", description=run.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the demo dataset and results")
    parser.add_argument("qsmprep_args", nargs=argparse.REMAINDER,
                        help="further qsmprep options, e.g. -- --inversion tkd")
    opts = parser.parse_args(argv)
    from ..phantom.dataset import make_demo_dataset
    from .run import run as run_qsmprep

    out_dir = opts.out_dir.resolve()
    bids_dir, output_dir, work_dir = out_dir / "bids", out_dir / "qsmprep", out_dir / "work"
    if not (bids_dir / "dataset_description.json").exists():
        print(f"Simulating the demo dataset in {bids_dir} ...", flush=True)
        make_demo_dataset(bids_dir, workers=min(2, os.cpu_count() or 1))
    extra = [arg for arg in opts.qsmprep_args if arg != "--"]
    exit_code = run_qsmprep([str(bids_dir), str(output_dir), "participant",
                             "-w", str(work_dir), *extra])
    if exit_code == 0:
        reports = sorted(output_dir.glob("sub-*.html"))
        print("\nCBS differentiation reports (open in a browser):")
        for report in reports:
            print(f"  {report}")
        print(f"\nDemo finished.\n  input (simulated BIDS): {bids_dir}\n"
              f"  ground truth:           {bids_dir / 'derivatives' / 'qsmprep-phantom'}\n"
              f"  qsmprep derivatives:    {output_dir}\n"
              f"  regional iron (ppb):    {output_dir}/sub-*/**/anat/*_desc-regions_stats.tsv\n"
              f"  registration figures:   {output_dir}/sub-*/figures/\n"
              f"  methods boilerplate:    {output_dir / 'logs' / 'CITATION.md'}")
    return exit_code


if __name__ == "__main__":  # pragma: no cover
    main()
