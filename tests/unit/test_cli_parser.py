"""The command line: validation before any work, options into one saved configuration."""

from __future__ import annotations

import json

import pytest

from qsmprep.cli.parser import parse_args
from qsmprep.config import Config
from qsmprep.errors import (
    MissingInputError,
    OutputIOError,
    UnknownLevelError,
    UsageError,
    WorkFolderBusyError,
)
from qsmprep.qsm.pipeline import stage_parameters


@pytest.fixture
def bids_dir(tmp_path):
    folder = tmp_path / "bids"
    folder.mkdir()
    (folder / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    return folder


def test_labels_accept_prefixes_and_deduplicate(bids_dir, tmp_path):
    config = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                         "--participant-label", "01", "sub-02", "sub-01",
                         "--session-label", "ses-1", "2"])
    assert config.execution.participant_labels == ["01", "02"]
    assert config.execution.session_labels == ["1", "2"]


def test_invalid_label_is_usage_error(bids_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                    "--participant-label", "sub-0_1"])
    assert exit_info.value.code == 64


def test_unknown_level_is_its_own_error_with_exit_code_17(bids_dir, tmp_path):
    with pytest.raises(UnknownLevelError, match="'session' is not available: choose "
                                                "participant or group") as error:
        parse_args([str(bids_dir), str(tmp_path / "out"), "session"])
    assert error.value.exit_code == 17


def test_missing_bids_dir(tmp_path):
    with pytest.raises(MissingInputError, match="nowhere"):
        parse_args([str(tmp_path / "nowhere"), str(tmp_path / "out"), "participant"])


@pytest.mark.parametrize("inside", ["out", "derivatives/qsmprep"])
def test_output_inside_input_refused(bids_dir, inside):
    with pytest.raises(UsageError, match="inside the BIDS input"):
        parse_args([str(bids_dir), str(bids_dir / inside), "participant"])


def test_work_dir_inside_input_refused(bids_dir, tmp_path):
    with pytest.raises(UsageError, match="work folder"):
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                    "-w", str(bids_dir / "work")])


def test_plugin_file(bids_dir, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: '--time=1:00:00'\n")
    config = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                         "--use-plugin", str(plugin)])
    assert config.nipype.plugin == "SLURMGraph"
    assert config.nipype.plugin_args == {"sbatch_args": "--time=1:00:00"}
    plugin.write_text("plugin_args: {}\n")
    with pytest.raises(UsageError, match="plugin:"):
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                    "--use-plugin", str(plugin)])


def test_threads_cannot_exceed_processes(bids_dir, tmp_path):
    with pytest.raises(UsageError, match="omp-nthreads"):
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                    "--nprocs", "1", "--omp-nthreads", "4"])


def test_bids_filter_file(bids_dir, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"megre": {"acquisition": "highres"}}))
    config = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                         "--bids-filter-file", str(filters)])
    assert config.execution.bids_filters == {"megre": {"acquisition": "highres"}}
    filters.write_text("{not json")
    with pytest.raises(UsageError, match="filters.json"):
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                    "--bids-filter-file", str(filters)])


def test_stage_options_reach_the_config_and_survive_a_round_trip(bids_dir, tmp_path):
    config = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                         "--inversion", "tkd", "--tkd-threshold", "0.15",
                         "--vsharp-max-radius", "8", "--field-strength", "7"])
    assert config.workflow.inversion == "tkd"
    assert stage_parameters(config.workflow, (1.0, 1.0, 1.0))["DipoleInversion"] == {
        "Algorithm": "tkd", "Threshold": 0.15}
    assert config.workflow.vsharp_max_radius_mm == 8.0
    config.workflow.background_removal = "vsharp"
    assert stage_parameters(config.workflow, (2.0, 2.0, 2.0))["BackgroundFieldRemoval"] == {
        "Algorithm": "vsharp", "RadiiMM": [8.0, 6.0, 4.0], "Threshold": 0.05}
    assert config.workflow.field_strength_t == 7.0
    saved = config.save(tmp_path / "logs")
    loaded = Config.load(saved)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.environment["numpy"] == config.environment["numpy"]


def test_atlas_options_go_together_and_must_exist(bids_dir, tmp_path):
    base = [str(bids_dir), str(tmp_path / "out"), "participant"]
    with pytest.raises(UsageError, match="--atlas and --atlas-table go together"):
        parse_args([*base, "--atlas", str(tmp_path / "labels.nii.gz")])
    with pytest.raises(MissingInputError, match="--atlas: file not found"):
        parse_args([*base, "--atlas", str(tmp_path / "labels.nii.gz"),
                    "--atlas-table", str(tmp_path / "labels.tsv")])
    (tmp_path / "labels.nii.gz").write_bytes(b"")
    (tmp_path / "labels.tsv").write_text("index\tname\n1\tputamen_L\n")
    with pytest.raises(UsageError, match="--qsm-only"):
        parse_args([*base, "--qsm-only", "--atlas", str(tmp_path / "labels.nii.gz"),
                    "--atlas-table", str(tmp_path / "labels.tsv")])


def test_registration_options_in_config(bids_dir, tmp_path):
    config = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                         "--random-seed", "7", "--template-stats"])
    assert config.workflow.random_seed == 7
    assert config.workflow.template_stats
    with pytest.raises(SystemExit) as exit_info:
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--random-seed", "-1"])
    assert exit_info.value.code == 64
    assert config.workflow.template == "MNI152NLin2009cAsym"
    assert config.workflow.atlas == ""
    with pytest.raises(SystemExit):
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                    "--template", "Colin27"])


@pytest.mark.parametrize("summary, code", [
    ("run_sub_01_wf.qsm_wf.load_echoes: qsmprep.errors.BadDataError: sub-01_echo-2: no "
     "EchoTime", 65),
    ("load_echoes: MissingInputError: mask not found", 66),
    ("inversion: numpy.core._exceptions._ArrayMemoryError: Unable to allocate", 1),
    ("background_removal: ValueError: operands could not be broadcast", 1),
    ("see the crash file", 1),
    ("ds_chimap: OSError: [Errno 28] No space left on device: '/out/sub-01'", 74),
    ("load_echoes: PermissionError: [Errno 13] Permission denied: '/work/x'", 73),
    ("fit: OSError: [Errno 22] Invalid argument", 1),
])
def test_exit_code_of_a_crashed_node_comes_from_the_exception_type(summary, code):
    from qsmprep.cli.run import crash_exit_code

    assert crash_exit_code(summary) == code


def test_an_unwritable_output_folder_exits_73_with_its_name(bids_dir, tmp_path):
    """A folder where the output should go, taken by a file: a clear message, exit 73, no
    traceback."""
    from qsmprep.cli.run import run

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    assert run([str(bids_dir), str(blocker / "out"), "participant", "-w",
                str(tmp_path / "work")]) == 73


@pytest.mark.parametrize("number, code", [(28, 74), (122, 74), (13, 73), (30, 73), (2, None)])
def test_operating_system_errors_map_to_exit_codes(number, code):
    from qsmprep.errors import error_for_os_error

    mapped = error_for_os_error(OSError(number, "some reason", "/out/sub-01/anat/x.nii.gz"))
    if code is None:
        assert mapped is None
    else:
        assert mapped.exit_code == code and "/out/sub-01/anat/x.nii.gz" in str(mapped)


def test_a_work_folder_in_use_exits_75_and_names_the_holder(bids_dir, tmp_path):
    """While another process holds the work folder's lock, a run stops at once with exit 75
    and a message naming the folder and the holder; once it is released the lock is free."""
    import subprocess
    import sys

    from qsmprep.cli.run import WORK_LOCK_NAME, run, work_folder_lock

    work = tmp_path / "work"
    work.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"f = open({str(work / WORK_LOCK_NAME)!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.write('pid 1234 on elsewhere\\n'); f.flush()\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run([str(bids_dir), str(tmp_path / "out"), "participant", "-w", str(work)]) == 75
        with pytest.raises(WorkFolderBusyError, match="pid 1234 on elsewhere"):
            with work_folder_lock(work):
                pass
    finally:
        holder.kill()
        holder.wait()
    with work_folder_lock(work):  # free again once the holder is gone
        assert (work / WORK_LOCK_NAME).read_text().startswith("pid ")


class _Run:
    def __init__(self, shape, echoes=4):
        self.shape, self.echoes = shape, tuple(range(echoes))


def test_free_space_is_checked_against_the_runs_need(bids_dir, tmp_path):
    from qsmprep.cli.run import check_free_space, estimated_space_gb

    one_mm = _Run((160, 192, 160), echoes=5)
    assert 1.0 < estimated_space_gb([one_mm], qsm_only=True) < 2.0  # measured: 1.4 GB
    assert (estimated_space_gb([one_mm], qsm_only=False)
            > estimated_space_gb([one_mm], qsm_only=True))
    config = parse_args([str(bids_dir), str(tmp_path / "out" / "new"), "participant",
                         "-w", str(tmp_path / "work" / "new")])
    check_free_space(config, [_Run((24, 28, 24))])  # a small run fits anywhere
    with pytest.raises(OutputIOError, match=r"work folder .* free; this run needs"):
        check_free_space(config, [_Run((10**5, 10**5, 10**4))])


def test_a_full_disk_stops_the_run_through_sigterm(tmp_path):
    """The disk watch records the full folder and signals the main thread, whose SIGTERM
    handler raises; the run then reports exit 74 (the threshold here makes any disk full)."""
    import time

    from qsmprep.cli.run import DiskWatch, Terminated, _handle_sigterm, _restore_sigterm

    previous = _handle_sigterm()
    watch = DiskWatch([tmp_path], interval=0.05, min_free_bytes=2**62)
    try:
        with pytest.raises(Terminated):
            with watch:
                time.sleep(10)  # interrupted by the watch within a fraction of a second
    finally:
        _restore_sigterm(previous)
    assert watch.full == str(tmp_path)
    quiet = DiskWatch([tmp_path], interval=0.05)
    with quiet:
        time.sleep(0.2)
    assert quiet.full is None


def test_a_failed_scheduler_thread_stops_the_run(tmp_path):
    """An exception in one of nipype's scheduler threads is logged and stops the run through
    SIGTERM (nipype would wait for ever); the failure is kept for the exit code."""
    import functools
    import threading
    import time

    from qsmprep.cli import run as run_module

    previous = run_module._handle_sigterm()
    previous_hook = threading.excepthook
    threading.excepthook = functools.partial(run_module._log_thread_exception, stop=True)
    try:
        with pytest.raises(run_module.Terminated):
            thread = threading.Thread(
                target=lambda: (_ for _ in ()).throw(FileNotFoundError("result_x.pklz")))
            thread.start()
            time.sleep(10)  # interrupted by the signal
    finally:
        threading.excepthook = previous_hook
        run_module._restore_sigterm(previous)
    assert isinstance(run_module._SCHEDULER_FAILURE.pop(), FileNotFoundError)
    run_module._SCHEDULER_FAILURE.clear()


def test_a_resumed_run_needs_only_what_its_work_folder_lacks(bids_dir, tmp_path):
    from qsmprep.cli.run import _folder_size_gb

    work = tmp_path / "work" / "qsmprep_wf" / "node"
    work.mkdir(parents=True)
    (work / "result.nii").write_bytes(bytes(3 * 1024**2))
    assert _folder_size_gb(tmp_path / "work" / "qsmprep_wf") == pytest.approx(3 / 1024)
    assert _folder_size_gb(tmp_path / "missing") == 0.0
