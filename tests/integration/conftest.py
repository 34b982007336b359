"""Fixtures of the end-to-end tests: simulated BIDS datasets and command-line runs."""

from __future__ import annotations

import pytest
from cli_helpers import run_cli, small_subject, tree_checksum

from qsmprep.phantom.dataset import make_demo_dataset, write_phantom_dataset


@pytest.fixture(scope="session")
def phantom_bids(tmp_path_factory):
    """Two simulated participants: sub-01 (axial) and sub-02 ses-1 (oblique, 20 degrees)."""
    bids_dir = tmp_path_factory.mktemp("phantom") / "bids"
    write_phantom_dataset(bids_dir, [
        small_subject(subject="01", seed=1),
        small_subject(subject="02", session="1", rotation_deg=(20.0, 0.0, 0.0), seed=2),
    ])
    return bids_dir


@pytest.fixture(scope="session")
def demo_bids(tmp_path_factory):
    """The built-in demo dataset (``qsmprep-demo``): four digital participants, 2 mm. Shared and
    never written to; a test that changes permissions works on its own copy."""
    bids_dir = tmp_path_factory.mktemp("demo") / "bids"
    make_demo_dataset(bids_dir, workers=2)
    return bids_dir


@pytest.fixture(scope="session")
def participant_run(phantom_bids, tmp_path_factory):
    """One participant-level run of the CLI on :func:`phantom_bids` (shared by several tests);
    QSM only: registration and regions are tested on the template-space digital subject."""
    base = tmp_path_factory.mktemp("participant")
    output_dir, work_dir = base / "out", base / "work"
    checksum_before = tree_checksum(phantom_bids)
    result = run_cli(phantom_bids, output_dir, "participant", "--participant-label", "01",
                     "sub-02", "-w", work_dir, "--nprocs", "2", "--omp-nthreads", "1",
                     "--qsm-only")
    return {
        "result": result, "bids_dir": phantom_bids, "output_dir": output_dir,
        "work_dir": work_dir, "checksum_before": checksum_before,
    }
