"""Progress reporting: node names read as participant/run/stage, the status line, the log
lines of batch runs and the terminal display; plus static checks of the SLURM array script."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from qsmprep.cli.progress import (NodeLabel, Progress, ProgressAwareHandler, format_elapsed,
                                  format_status, parse_node_name)

ARRAY_SCRIPT = Path(__file__).resolve().parents[2] / "workflows" / "slurm_array.sh"


@pytest.mark.parametrize("fullname, expected", [
    ("qsmprep_wf.sub_01_wf.run_sub_01_wf.qsm_wf.inversion",
     NodeLabel("sub-01", "sub-01", "QSM", "inversion")),
    ("qsmprep_wf.sub_02_wf.run_sub_02_ses_1_wf.ds_qsm_wf.ds_chimap",
     NodeLabel("sub-02", "sub-02_ses-1", "outputs", "ds_chimap")),
    ("qsmprep_wf.sub_03_wf.run_sub_03_ses_pre_run_2_wf.anatomy_wf.registration_wf."
     "register_to_template",
     NodeLabel("sub-03", "sub-03_ses-pre_run-2", "registration", "register_to_template")),
    ("qsmprep_wf.sub_01_wf.subject_report_wf.write_report",
     NodeLabel("sub-01", None, "subject report", "write_report")),
    ("sub_01_wf.run_sub_01_wf.anatomy_wf.regions_wf.regional_statistics",
     NodeLabel("sub-01", "sub-01", "regions", "regional_statistics")),
    ("some_node", NodeLabel(None, None, None, "some_node")),
    ("qsmprep_wf.build_atlas", NodeLabel(None, None, None, "build_atlas")),
])
def test_parse_node_name(fullname, expected):
    assert parse_node_name(fullname) == expected


def test_node_label_text():
    assert str(NodeLabel("sub-02", "sub-02_ses-1", "QSM", "echo_fit")) == \
        "sub-02_ses-1 QSM: echo_fit"
    assert str(NodeLabel("sub-01", None, None, "x")) == "sub-01: x"
    assert str(NodeLabel(None, None, None, "x")) == "x"


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (75, "1:15"),
                                           (3725, "1:02:05"), (-3, "0:00")])
def test_format_elapsed(seconds, text):
    assert format_elapsed(seconds) == text


def test_format_status():
    assert format_status(12, 34, 42, ["sub-01 QSM: inversion"]) == \
        "[12/34 nodes, 0:42] running sub-01 QSM: inversion"
    assert format_status(3, 10, 5, ["a", "b", "c"], failed=1) == \
        "[3/10 nodes, 1 failed, 0:05] running a (+2)"
    assert format_status(0, 5, 0) == "[0/5 nodes, 0:00]"
    long = format_status(1, 2, 3, ["x" * 200], width=40)
    assert len(long) == 40 and long.endswith("...")


class _Node:
    def __init__(self, fullname):
        self.fullname = fullname


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _logger(stream, progress=None):
    logger = logging.getLogger(f"qsmprep.test_progress.{id(stream)}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = ProgressAwareHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def test_batch_progress_logs_one_line_per_node():
    stream, clock = io.StringIO(), _Clock()
    logger, _ = _logger(stream)
    progress = Progress(2, logger=logger, stream=stream, interactive=False, clock=clock)
    node = _Node("qsmprep_wf.sub_01_wf.run_sub_01_wf.qsm_wf.load_echoes")
    progress(node, "start")
    clock.now += 65
    progress(node, "end")
    failing = _Node("qsmprep_wf.sub_02_wf.run_sub_02_wf.qsm_wf.masking")
    progress(failing, "start")
    progress(failing, "exception")
    assert stream.getvalue().splitlines() == [
        "INFO done: sub-01 QSM: load_echoes (1/2 nodes, 1:05 elapsed)",
        "ERROR failed: sub-02 QSM: masking (2/2 nodes, 1:05 elapsed)",
    ]
    assert "\r" not in stream.getvalue()


def test_interactive_progress_redraws_one_line():
    stream, clock = io.StringIO(), _Clock()
    logger, handler = _logger(stream)
    progress = Progress(3, logger=logger, stream=stream, interactive=True, clock=clock)
    handler.progress = progress
    node = _Node("qsmprep_wf.sub_01_wf.run_sub_01_wf.qsm_wf.unwrapping")
    progress(node, "start")
    clock.now += 5
    logger.warning("a message")
    progress(node, "end")
    progress.clear()
    text = stream.getvalue()
    assert "\r\x1b[K[0/3 nodes, 0:00] running sub-01 QSM: unwrapping" in text
    assert "\r\x1b[K[1/3 nodes, 0:05]" in text
    # messages are printed on a cleared line, node lines stay off the terminal
    assert "\r\x1b[KWARNING a message\n" in text
    assert "done:" not in text
    assert text.endswith("\r\x1b[K")


def test_total_grows_with_unexpected_nodes():
    stream = io.StringIO()
    logger, _ = _logger(stream)
    progress = Progress(1, logger=logger, interactive=False)
    for name in ("a", "b"):
        progress(_Node(name), "end")
    assert progress.status_line().startswith("[2/2 nodes")


def test_array_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ARRAY_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = ARRAY_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "flock" in text and "SLURM_ARRAY_TASK_ID" in text and "QSMPREP_SIF" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_array_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(ARRAY_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_array_script_runs_one_participant_outside_slurm(tmp_path):
    """The script's own logic with a stand-in for qsmprep: participant choice, work folder,
    arguments and the exit-code table."""
    bids = tmp_path / "bids"
    for label in ("02", "01", "03"):
        (bids / f"sub-{label}").mkdir(parents=True)
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-03\t70\nsub-01\t65\n")
    fake = tmp_path / "fake_qsmprep"
    fake.write_text('#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/args.txt"\nexit 3\n')
    fake.chmod(0o755)
    table = tmp_path / "codes.tsv"
    env = {"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "77",
           "SLURM_CPUS_PER_TASK": "3", "SLURM_MEM_PER_NODE": "4096", "QSMPREP": str(fake),
           "QSMPREP_EXIT_CODES": str(table)}
    result = subprocess.run(["bash", str(ARRAY_SCRIPT), bids, tmp_path / "out", tmp_path / "work",
                             "--qsm-only"], env=env, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    args = (tmp_path / "args.txt").read_text().split()
    assert args[2:5] == ["participant", "--participant-label", "01"]
    assert args[5:7] == ["-w", str(tmp_path / "work" / "sub-01")]
    assert "--nprocs" in args and args[args.index("--nprocs") + 1] == "3"
    assert args[args.index("--mem-gb") + 1] == "4.0" and args[-1] == "--qsm-only"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0][:2] == ["participant_id", "exit_code"]
    assert rows[1][:3] == ["sub-01", "3", "77_2"]
    # a task beyond the list is refused
    env["SLURM_ARRAY_TASK_ID"] = "3"
    result = subprocess.run(["bash", str(ARRAY_SCRIPT), bids, tmp_path / "out", tmp_path / "w"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "there are 2 participants" in result.stderr
