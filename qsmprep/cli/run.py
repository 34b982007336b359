"""The ``qsmprep`` entry point: parse, discover, build the graph, run it, map errors to exit codes."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network

from ..errors import (  # noqa: E402
    OutputIOError,
    QSMPrepError,
    WorkFolderBusyError,
    error_for_os_error,
)

LOGGER = logging.getLogger("qsmprep")

#: Exit code of a run stopped by SIGTERM (128 + 15, as a shell reports it); SIGINT gives 130.
TERMINATED_EXIT_CODE = 143
RESUME_HINT = "re-run the same command with the same work folder (-w) to resume"


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (``kill``, ``scancel``, a job's time limit)."""


def main(argv=None) -> None:
    """Console entry point: exits with the BIDS-App exit code of :func:`run`."""
    sys.exit(run(argv))


def run(argv=None) -> int:
    """Run qsmprep with command-line arguments ``argv``; returns the exit code.

    User errors (bad input, bad options) are reported in one message without a traceback;
    a failing node is reported with its crash file and exit code 1.
    """
    from .parser import parse_args

    _setup_console_logging()
    try:
        config = parse_args(argv)
        from .environment import configure_runtime  # threads and caches, before any worker

        configure_runtime(omp_nthreads=config.nipype.omp_nthreads)
        _setup_file_logging(config)
        if config.execution.analysis_level == "group":
            return _run_group_level(config)
        return _run_participant_level(config)
    except QSMPrepError as error:
        LOGGER.critical("%s", error)
        return error.exit_code
    except OSError as error:  # the output or work folder: unwritable, full
        qsmprep_error = error_for_os_error(error)
        if qsmprep_error is None:
            raise
        LOGGER.critical("%s", qsmprep_error)
        return qsmprep_error.exit_code
    except KeyboardInterrupt:
        LOGGER.critical("Interrupted; %s.", RESUME_HINT)
        return 130
    except Terminated:
        LOGGER.critical("Terminated (SIGTERM); %s.", RESUME_HINT)
        return TERMINATED_EXIT_CODE


def _run_group_level(config) -> int:
    from ..__about__ import __version__
    from ..group.level import run_group_level

    execution = config.execution
    LOGGER.info("qsmprep %s: %s", __version__, execution.command_line)
    run_group_level(execution.output_dir, execution.bids_dir,
                    site_column=config.workflow.site_column,
                    clinical_columns=list(config.workflow.clinical_columns))
    LOGGER.info("Group tables written to %s", Path(execution.output_dir) / "group")
    return 0


#: File in the work folder that a participant-level run locks while it uses the folder.
WORK_LOCK_NAME = ".qsmprep.lock"


@contextlib.contextmanager
def work_folder_lock(work_dir):
    """Hold an exclusive lock on ``work_dir`` (``flock`` on :data:`WORK_LOCK_NAME`) while a
    run uses it, so that two runs never write the same nipype nodes. The lock goes with the
    process (a crashed or killed run leaves none behind). A second run gets
    :class:`~qsmprep.errors.WorkFolderBusyError` naming the holder; where the file system has
    no locks (some network mounts) a warning is logged and the run goes on."""
    import fcntl

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / WORK_LOCK_NAME, "a+", encoding="utf-8") as stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "another process"
            raise WorkFolderBusyError(
                f"The work folder {work_dir} is in use by another qsmprep run ({holder}). "
                "Wait for it to finish, or give this run its own folder with -w.") from None
        except OSError as error:
            LOGGER.warning("Could not lock the work folder %s (%s); make sure no other run "
                           "uses it at the same time.", work_dir, error.strerror)
        else:
            stream.seek(0)
            stream.truncate()
            stream.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            stream.flush()
        yield


def _run_participant_level(config) -> int:
    with work_folder_lock(config.execution.work_dir):
        return _run_participants(config)


def _run_participants(config) -> int:
    from ..__about__ import __url__, __version__
    from ..bids.derivatives import write_dataset_description
    from ..bids.discovery import discover_runs
    from ..boilerplate import write_boilerplate

    execution = config.execution
    LOGGER.info("qsmprep %s: %s", __version__, execution.command_line)
    runs = discover_runs(
        execution.bids_dir,
        participant_labels=execution.participant_labels or None,
        session_labels=execution.session_labels or None,
        bids_filters=execution.bids_filters or None,
        field_strength_t=config.workflow.field_strength_t or None,
    )
    check_free_space(config, runs)
    workflow = _build_workflow(config, runs)

    output_dir = Path(execution.output_dir)
    logs_dir = output_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(output_dir, bids_dir=execution.bids_dir, version=__version__,
                              code_url=__url__)
    config_path = config.save(logs_dir)
    boilerplate_path = write_boilerplate(logs_dir, config=config, runs=runs)
    LOGGER.info("Configuration saved to %s", config_path)

    started = time.monotonic()
    exit_code = _execute(workflow, config, logs_dir, runs=runs)
    elapsed = time.monotonic() - started
    if exit_code == 0 and _is_graph_plugin(config.nipype.plugin):
        LOGGER.info("Submitted the graph of %d run(s) to the scheduler (%s); derivatives appear "
                    "in %s as its jobs finish, crash reports in %s. Re-run the same command to "
                    "resubmit what did not finish.", len(runs), config.nipype.plugin, output_dir,
                    logs_dir / f"crash-{config.execution.run_uuid}")
    elif exit_code == 0:
        LOGGER.info("Finished %d run(s) in %.1f s. Derivatives in %s; methods in %s",
                    len(runs), elapsed, output_dir, boilerplate_path)
    return exit_code


#: float32 volumes of one run's grid that the work folder holds per echo, and besides the
#: echoes (measured: 1.4 GB for a 160 x 192 x 160 run of 5 echoes, uncompressed images).
WORK_VOLUMES_PER_ECHO, WORK_VOLUMES_PER_RUN = 10, 20
#: Work-folder bytes of one run's registration and regions (template-grid images).
TEMPLATE_WORK_GB = 0.4
#: Below this share of the estimated need the run cannot finish and is refused.
REFUSED_BELOW = 0.25


def estimated_space_gb(runs, *, qsm_only: bool) -> float:
    """Upper estimate of the disk space (GB) the work and output folders need for ``runs``."""
    total = 0.0
    for run in runs:
        volumes = WORK_VOLUMES_PER_ECHO * len(run.echoes) + WORK_VOLUMES_PER_RUN
        total += math.prod(run.shape) * 4 * volumes / 1024**3
        total += 0.0 if qsm_only else TEMPLATE_WORK_GB
    return total


def check_free_space(config, runs) -> None:
    """Compare the free space of the work and output file systems with the run's estimated
    need: refuse (exit 74) when it cannot finish, warn when it may not."""
    held_gb = _folder_size_gb(Path(config.execution.work_dir) / "qsmprep_wf")
    need_gb = max(0.0, estimated_space_gb(runs, qsm_only=config.workflow.qsm_only) - held_gb)
    for name, folder in (("work", config.execution.work_dir),
                         ("output", config.execution.output_dir)):
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free_gb = shutil.disk_usage(existing).free / 1024**3
        message = (f"The {name} folder {folder} has {_size(free_gb)} free; this run needs up "
                   f"to about {_size(need_gb)}")
        if free_gb < REFUSED_BELOW * need_gb:
            raise OutputIOError(f"{message}: free some space or choose another folder.")
        if free_gb < need_gb:
            LOGGER.warning("%s; it may run out.", message)


def _folder_size_gb(folder: Path) -> float:
    """What ``folder`` already holds (a resumed run needs that much less), in GB."""
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total / 1024**3


def _size(gigabytes: float) -> str:
    return f"{gigabytes:.1f} GB" if gigabytes >= 1 else f"{gigabytes * 1024:.0f} MB"


def _build_workflow(config, runs):
    from qsmprep.workflows.base import init_qsmprep_wf

    from .progress import count_nodes

    workflow = init_qsmprep_wf(config=config, runs=runs)
    LOGGER.info("Built the workflow: %d run(s) of %d participant(s), %d nodes to run.",
                len(runs), len({run.subject for run in runs}), count_nodes(workflow))
    return workflow


def _execute(workflow, config, logs_dir, runs=()) -> int:
    from .progress import Progress, count_nodes

    crash_dir = logs_dir / f"crash-{config.execution.run_uuid}"
    # the workflow holds its own copy of nipype's configuration, taken when it was created
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": str(config.execution.stop_on_first_crash).lower(),
        "remove_unnecessary_outputs": "false",
        "check_version": "false",
        "poll_sleep_duration": "0.5",
    })
    plugin, plugin_args = config.nipype.plugin, dict(config.nipype.plugin_args)
    if plugin in ("MultiProc", "LegacyMultiProc"):
        plugin_args.setdefault("n_procs", config.nipype.nprocs)
        plugin_args.setdefault("memory_gb", config.nipype.mem_gb)
        plugin_args.setdefault("raise_insufficient", False)
    if plugin in ("SLURM", "SLURMGraph"):
        _add_slurm_resources(workflow, plugin_args.get("sbatch_args") or "")
    progress = None
    if not _is_graph_plugin(plugin):  # graph plugins hand everything to the scheduler at once
        progress = Progress(count_nodes(workflow), logger=LOGGER, stream=sys.stderr,
                            interactive=_stderr_is_terminal())
        plugin_args.setdefault("status_callback", progress)
    runner = _make_runner(plugin, plugin_args)
    if _CONSOLE is not None:
        _CONSOLE.progress = progress
    previous_handler = _handle_sigterm()
    watch = DiskWatch([config.execution.work_dir, config.execution.output_dir],
                      enabled=not _is_graph_plugin(plugin))
    main_thread = threading.current_thread() is threading.main_thread()  # SIGTERM handled
    previous_excepthook = threading.excepthook
    threading.excepthook = functools.partial(_log_thread_exception, stop=main_thread)
    try:
        with watch:
            workflow.run(plugin=runner, plugin_args=plugin_args)
    except (KeyboardInterrupt, Terminated):
        _stop_workers(runner)
        _remove_partial_files(config.execution.output_dir, runs)
        if watch.full is not None:
            raise OutputIOError(
                f"The file system of {watch.full} is full: the run was stopped. Free some "
                "space (or choose another folder) and re-run the same command to resume."
            ) from None
        if _SCHEDULER_FAILURE:
            failure = _SCHEDULER_FAILURE.pop()
            _SCHEDULER_FAILURE.clear()
            kind = OutputIOError if isinstance(failure, OSError) else QSMPrepError
            raise kind(f"The run was stopped: nipype's scheduler failed ({failure}); with "
                       "I/O errors check the free space and permissions of the work and "
                       "output folders, then re-run the same command to resume.") from None
        raise
    except RuntimeError:
        crash_files = sorted(crash_dir.glob("crash-*.txt"))
        LOGGER.critical("Processing failed: %d node(s) crashed.", len(crash_files))
        exit_codes = []
        for crash_file in crash_files:
            summary = _summarise_crash(crash_file)
            LOGGER.critical("  %s", summary)
            exit_codes.append(crash_exit_code(summary))
        # A user-fixable error found inside a node (e.g. bad data while loading) wins.
        exit_code = max(exit_codes, key=lambda code: code != 1, default=1)
        LOGGER.critical("Crash reports are in %s; fix the cause and re-run the same command "
                        "to resume.", crash_dir)
        return exit_code
    finally:
        threading.excepthook = previous_excepthook
        _restore_sigterm(previous_handler)
        if progress is not None:
            progress.clear()
        if _CONSOLE is not None:
            _CONSOLE.progress = None
    return 0


#: Free space (bytes) below which a running graph is stopped: its file system is full.
MIN_FREE_BYTES = 1 << 20


class DiskWatch:
    """While a graph runs, check the free space of ``folders`` every ``interval`` seconds;
    when one file system fills up, remember the folder (:attr:`full`) and stop the run with
    SIGTERM. nipype's scheduler would otherwise wait for ever for the results its workers
    could not write; the stop is reported as exit code 74."""

    def __init__(self, folders, *, interval: float = 1.0, enabled: bool = True,
                 min_free_bytes: int = MIN_FREE_BYTES):
        self.folders = [Path(folder) for folder in folders]
        self.interval = interval
        self.min_free_bytes = min_free_bytes
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.full: str | None = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="qsmprep-disk-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def _watch(self):
        while not self._stop.wait(self.interval):
            for folder in self.folders:
                try:
                    free = shutil.disk_usage(folder).free
                except OSError:
                    continue
                if free < self.min_free_bytes:
                    self.full = str(folder)
                    LOGGER.debug("%s: %d bytes free; stopping the run", folder, free)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return


#: The exception that stopped one of nipype's scheduler threads during this run, if any.
_SCHEDULER_FAILURE: list = []


def _log_thread_exception(arguments, *, stop: bool = True) -> None:
    """An exception in one of nipype's scheduler threads (e.g. a node's result file that could
    not be written on a full disk): nipype would then wait for ever, so the run is stopped
    (SIGTERM, handled in :func:`_execute`); one line on the console, the traceback in the log
    file."""
    LOGGER.error("Internal error in the scheduler (%s: %s); the log file has the details.",
                 arguments.exc_type.__name__, arguments.exc_value)
    LOGGER.error("Scheduler thread %s", getattr(arguments.thread, "name", "?"),
                 exc_info=(arguments.exc_type, arguments.exc_value, arguments.exc_traceback),
                 extra={"file_only": True})
    if stop and arguments.exc_type is not SystemExit:
        _SCHEDULER_FAILURE.append(arguments.exc_value)
        os.kill(os.getpid(), signal.SIGTERM)


def _is_graph_plugin(name: str) -> bool:
    """Graph plugins (SLURMGraph, SGEGraph, CondorDAGMan) submit every node as a job with its
    dependencies and return at once; the others run or wait for each node themselves."""
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import GraphPluginBase

    plugin_class = getattr(plugins, f"{name}Plugin", None)
    return isinstance(plugin_class, type) and issubclass(plugin_class, GraphPluginBase)


def _make_runner(name: str, plugin_args: dict):
    """The nipype plugin object (so that its worker pool can be stopped on interruption), or
    the name itself where nipype does not know it (nipype then reports the error)."""
    from nipype.pipeline import plugins

    plugin_class = getattr(plugins, f"{name}Plugin", None)
    return plugin_class(plugin_args=plugin_args) if isinstance(plugin_class, type) else name


def _add_slurm_resources(workflow, sbatch_args: str) -> None:
    """Turn each node's resource hints into its own sbatch options: ``--cpus-per-task`` from
    ``n_procs`` and ``--mem`` from ``mem_gb`` plus 0.5 GB for the job's Python process;
    an option already in the user's ``sbatch_args`` wins (it is then not added)."""
    words = sbatch_args.split()
    has_cpus = any(word.startswith(("--cpus-per-task", "-c")) for word in words)
    has_memory = any(word.startswith(("--mem", "--mem-per-cpu", "--mem-per-gpu"))
                     for word in words)
    from qsmprep.workflows import all_nodes

    for node in all_nodes(workflow):
        options = []
        if not has_cpus and node.n_procs and node.n_procs > 1:
            options.append(f"--cpus-per-task={int(node.n_procs)}")
        if not has_memory:
            options.append(f"--mem={math.ceil((node.mem_gb + 0.5) * 1024)}M")
        node_args = dict(node.plugin_args or {})
        if options and "sbatch_args" not in node_args:
            node_args["sbatch_args"] = " " + " ".join(options)  # appended to the user's
            node.plugin_args = node_args


def _handle_sigterm():
    """Make SIGTERM stop the run like Ctrl-C (main thread only); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    main_pid = os.getpid()

    def terminate(signum, frame):
        if os.getpid() != main_pid:  # a forked worker: leave at once, the main process tidies
            os._exit(TERMINATED_EXIT_CODE)
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


def _restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def _stop_workers(runner) -> None:
    """Kill the worker processes of a MultiProc-like plugin, so that none outlives the run."""
    pool = getattr(runner, "pool", None)
    if pool is None:
        return
    # the pool reports each future broken by the kill with a traceback: expected here
    logging.getLogger("concurrent.futures").disabled = True
    processes = multiprocessing.active_children()  # the pool's workers are our children
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):
            pass
    for process in processes:
        try:
            process.join(timeout=10)
        except (OSError, ValueError, AttributeError, AssertionError):
            pass
    try:
        if hasattr(pool, "terminate"):
            pool.terminate()
        else:
            pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 (a broken pool cannot be shut down more cleanly)
        pass


def _remove_partial_files(output_dir, runs) -> None:
    """Delete the temporary files that killed workers may have left in the folders of this
    run's participants (:func:`qsmprep.bids.derivatives.remove_temporary_files`); finished
    derivatives are written atomically."""
    from ..bids.derivatives import remove_temporary_files

    for subject in sorted({f"sub-{run.subject}" for run in runs}):
        folder = Path(output_dir) / subject
        if folder.is_dir():
            for path in remove_temporary_files(folder):
                LOGGER.debug("removed the partial file %s", path)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def crash_exit_code(summary: str) -> int:
    """The exit code of the exception a crashed node raised: its class is found by name (the
    last line of the traceback reads ``qsmprep.errors.BadDataError: ...``) among the
    :class:`~qsmprep.errors.QSMPrepError` subclasses, whose ``exit_code`` it takes; an
    operating-system error number of a full disk (74) or an unwritable folder (73) maps as in
    :func:`qsmprep.errors.error_for_os_error`; anything else is a processing failure (1)."""
    from .. import errors

    for name in re.findall(r"(?:^|[\s.:])([A-Za-z_]\w*Error)\s*:", summary):
        error_class = getattr(errors, name, None)
        if isinstance(error_class, type) and issubclass(error_class, QSMPrepError):
            return error_class.exit_code
    number = re.search(r"\[Errno (\d+)\]", summary)
    if number:  # an operating-system error inside the node: a full disk, a read-only folder
        mapped = errors.error_for_os_error(OSError(int(number.group(1)), "", None))
        if mapped is not None:
            return mapped.exit_code
    return QSMPrepError.exit_code


def _summarise_crash(crash_file: Path) -> str:
    """'node: last line of the traceback' from a nipype text crash file."""
    lines = [line.strip() for line in crash_file.read_text(errors="replace").splitlines()]
    node = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Node:")),
                crash_file.name)
    errors = [line for line in lines if line and not line.startswith(("File ", "^", "~"))]
    return f"{node}: {errors[-1] if errors else 'see the crash file'}"


_CONSOLE = None  # the console handler; it knows the progress display while a graph runs
_FORMATTER = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%y%m%d-%H:%M:%S")


def _setup_console_logging() -> None:
    """qsmprep's messages to standard error, one line each."""
    global _CONSOLE
    from .progress import ProgressAwareHandler

    LOGGER.handlers.clear()
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    _CONSOLE = ProgressAwareHandler(sys.stderr)
    _CONSOLE.setFormatter(_FORMATTER)
    LOGGER.addHandler(_CONSOLE)


def _setup_file_logging(config) -> None:
    """Also log to ``<output_dir>/logs/qsmprep-<run>.log``; set the verbosity of nipype."""
    verbosity = config.execution.verbosity
    LOGGER.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    logs_dir = Path(config.execution.output_dir) / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(logs_dir / f"qsmprep-{config.execution.run_uuid}.log")
    log_file.setFormatter(_FORMATTER)
    LOGGER.addHandler(log_file)
    from nipype import logging as nipype_logging

    nipype_level = logging.INFO if verbosity >= 1 else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nipype_logging.getLogger(name).setLevel(nipype_level)


if __name__ == "__main__":  # pragma: no cover
    main()
