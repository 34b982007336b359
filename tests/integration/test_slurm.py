"""qsmprep on a real (single-host) SLURM cluster: the SLURMGraph plugin and the array-job script
give the same derivatives as MultiProc, and every node ran as a job recorded by accounting.

The cluster (munged, slurmctld, slurmd, slurmdbd on a private MariaDB) is started in a
temporary folder by :mod:`slurm_cluster`; without SLURM (or without root) the tests skip.
Two participants of the demo dataset, QSM only: with registration and regions two
participants take over 4 minutes with MultiProc alone on a 2-core machine, and the graph
plugin adds a Python start-up per job; the distribution itself is the same.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import RUN_SPECIFIC, derivatives_differences, run_cli
from slurm_cluster import LocalSlurmCluster, accounting_available, missing_requirements

from qsmprep.phantom.dataset import DIGITAL_PATIENTS

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(missing_requirements() is not None,
                       reason=str(missing_requirements())),
]

ARRAY_SCRIPT = Path(__file__).resolve().parents[2] / "workflows" / "slurm_array.sh"
QSMPREP_OPTIONS = ("--omp-nthreads", "1", "--qsm-only")
#: The first two participants of the demo's participants.tsv, which lists them sorted (the
#: array tasks 1 and 2).
PARTICIPANTS = tuple(sorted(DIGITAL_PATIENTS))[:2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    local = LocalSlurmCluster(root, accounting=accounting_available()).start()
    print(f"SLURM cluster up in {time.monotonic() - started:.1f} s")
    yield local
    local.stop()


@pytest.fixture(scope="module")
def bids_dir(demo_bids):
    return demo_bids


@pytest.fixture(scope="module")
def multiproc_run(bids_dir, tmp_path_factory):
    """The reference: the same participants with the default MultiProc plugin."""
    base = tmp_path_factory.mktemp("multiproc")
    result = run_cli(bids_dir, base / "out", "participant", "-w", base / "work",
                     "--participant-label", *PARTICIPANTS, "--nprocs", "2", *QSMPREP_OPTIONS)
    assert result.returncode == 0, result.stderr[-4000:]
    return base / "out"


def test_slurmgraph_matches_multiproc(cluster, bids_dir, multiproc_run, tmp_path):
    plugin = tmp_path / "slurm.yml"
    plugin.write_text(
        "plugin: SLURMGraph\n"
        "plugin_args:\n"
        "  sbatch_args: --partition=debug --time=30\n"
        "  dont_resubmit_completed_jobs: true\n")
    output_dir, work_dir = tmp_path / "out", tmp_path / "work"
    started = time.monotonic()
    result = run_cli(bids_dir, output_dir, "participant", "-w", work_dir,
                     "--participant-label", *PARTICIPANTS, "--use-plugin", plugin,
                     *QSMPREP_OPTIONS, env=cluster.env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Submitted the graph" in result.stderr
    cluster.wait_for_empty_queue(timeout=400)
    print(f"SLURMGraph: all jobs finished {time.monotonic() - started:.1f} s after submission")

    assert derivatives_differences(multiproc_run, output_dir) == []

    # one job per node, each with its own batch script; all recorded as completed
    scripts = sorted(work_dir.rglob("batchscript_*.sh"))
    assert len(scripts) >= 30
    jobs = _finished_jobs(cluster, expected=len(scripts))
    assert len(jobs) == len(scripts), jobs
    assert all(state == "COMPLETED" and exit_code == "0:0"
               for state, exit_code in jobs.values()), jobs
    assert any(name.endswith("_inversion") for name in jobs)
    # resource hints became sbatch options of each node's job
    submit = next(work_dir.rglob("submit_jobs.sh")).read_text()
    assert "--mem=" in submit and "--partition=debug" in submit


def _finished_jobs(cluster, expected: int, timeout: float = 60.0) -> dict:
    """{job name: (state, exit code)} of the finished jobs, from ``sacct`` where accounting
    runs, else from the jobcomp/filetxt record (written as each job ends)."""
    deadline = time.monotonic() + timeout
    jobs: dict = {}
    while time.monotonic() < deadline:
        jobs = {}
        if cluster.accounting:
            result = cluster.run("sacct", "--allusers", "--allocations", "--noheader",
                                 "--parsable2", "--starttime=now-1day",
                                 "--format=JobName,State,ExitCode")
            assert result.returncode == 0, result.stderr
            for line in result.stdout.splitlines():
                name, state, exit_code = line.split("|")
                jobs[name] = (state, exit_code)
        elif cluster.jobcomp_file.is_file():
            for line in cluster.jobcomp_file.read_text().splitlines():
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                jobs[fields.get("Name")] = (fields.get("JobState"), fields.get("ExitCode"))
        jobs = {name: value for name, value in jobs.items() if name and name.startswith("j")}
        if len(jobs) >= expected:
            break
        time.sleep(1.0)  # slurmdbd stores finished jobs asynchronously
    return jobs


def test_array_script_one_participant_per_task(cluster, bids_dir, multiproc_run, tmp_path):
    output_dir, work_root = tmp_path / "out", tmp_path / "work"
    table = tmp_path / "exit_codes.tsv"
    qsmprep = Path(sys.executable).with_name("qsmprep")
    env = {**cluster.env, "QSMPREP": str(qsmprep), "QSMPREP_EXIT_CODES": str(table)}
    started = time.monotonic()
    result = cluster.run(
        "sbatch", "--array=1-2", "--wait", "--cpus-per-task=1", "--mem=2G",
        f"--output={tmp_path / 'task-%a.out'}", f"--chdir={tmp_path}", ARRAY_SCRIPT,
        bids_dir, output_dir, work_root, *QSMPREP_OPTIONS, timeout=600,
        env=env)
    logs = "\n".join(path.read_text() for path in sorted(tmp_path.glob("task-*.out")))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    print(f"array job: {time.monotonic() - started:.1f} s")

    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0][:3] == ["participant_id", "exit_code", "job_id"]
    assert sorted((row[0], row[1]) for row in rows[1:]) == sorted(
        (f"sub-{label}", "0") for label in PARTICIPANTS)
    assert {path.name for path in work_root.iterdir()} == {f"sub-{label}" for label in PARTICIPANTS}
    # the methods text describes the runs of one invocation: here each task's one participant
    ignore = (*RUN_SPECIFIC, "logs/CITATION.md")
    assert derivatives_differences(multiproc_run, output_dir, ignore=ignore) == []


def test_cluster_is_torn_down_cleanly(tmp_path):
    """A second cluster starts and stops without leaving a daemon behind."""
    local = LocalSlurmCluster(tmp_path, accounting=False).start()
    processes = list(local._processes.values())
    local.stop()
    assert all(process.poll() is not None for process in processes)
    assert not any(_is_alive(process.pid) for process in processes)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
