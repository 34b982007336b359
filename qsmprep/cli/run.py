"""The ``qsmprep`` entry point: parse, discover, build the graph, run it, map errors to exit codes."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network

from ..errors import BadDataError, QSMPrepError  # noqa: E402

LOGGER = logging.getLogger("qsmprep")


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
        _setup_file_logging(config)
        if config.execution.analysis_level == "group":
            return _run_group_level(config)
        return _run_participant_level(config)
    except QSMPrepError as error:
        LOGGER.critical("%s", error)
        return error.exit_code
    except KeyboardInterrupt:
        LOGGER.critical("Interrupted; re-run the same command to resume from the work folder.")
        return 130


def _run_group_level(config) -> int:
    from ..__about__ import __version__
    from ..group.level import run_group_level

    execution = config.execution
    LOGGER.info("qsmprep %s: %s", __version__, execution.command_line)
    written = run_group_level(execution.output_dir, execution.bids_dir,
                              site_column=config.workflow.site_column)
    LOGGER.info("Group tables written to %s", Path(execution.output_dir) / "group")
    return 0


def _run_participant_level(config) -> int:
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
    exit_code = _execute(workflow, config, logs_dir)
    elapsed = time.monotonic() - started
    if exit_code == 0:
        LOGGER.info("Finished %d run(s) in %.1f s. Derivatives in %s; methods in %s",
                    len(runs), elapsed, output_dir, boilerplate_path)
    return exit_code


def _build_workflow(config, runs):
    from qsmprep.workflows.base import init_qsmprep_wf

    workflow = init_qsmprep_wf(config=config, runs=runs)
    LOGGER.info("Built the workflow: %d run(s) of %d participant(s), %d nodes.", len(runs),
                len({run.subject for run in runs}), len(workflow._get_all_nodes()))
    return workflow


def _execute(workflow, config, logs_dir) -> int:
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
    plugin_args = dict(config.nipype.plugin_args)
    if config.nipype.plugin in ("MultiProc", "LegacyMultiProc"):
        plugin_args.setdefault("n_procs", config.nipype.nprocs)
        plugin_args.setdefault("memory_gb", config.nipype.mem_gb)
        plugin_args.setdefault("raise_insufficient", False)
        plugin_args.setdefault("status_callback", _log_node_status)
    try:
        workflow.run(plugin=config.nipype.plugin, plugin_args=plugin_args)
    except RuntimeError:
        crash_files = sorted(crash_dir.glob("crash-*.txt"))
        LOGGER.critical("Processing failed: %d node(s) crashed.", len(crash_files))
        exit_code = 1
        for crash_file in crash_files:
            summary = _summarise_crash(crash_file)
            LOGGER.critical("  %s", summary)
            if "BadDataError" in summary:  # a data problem found while loading the images
                exit_code = BadDataError.exit_code
        LOGGER.critical("Crash reports are in %s; fix the cause and re-run the same command "
                        "to resume.", crash_dir)
        return exit_code
    return 0


def _log_node_status(node, status):
    """MultiProc status callback: one log line per finished or failed node."""
    if status == "end":
        LOGGER.info("done: %s", node.fullname.removeprefix("qsmprep_wf."))
    elif status == "exception":
        LOGGER.error("failed: %s", node.fullname.removeprefix("qsmprep_wf."))


def _summarise_crash(crash_file: Path) -> str:
    """'node: last line of the traceback' from a nipype text crash file."""
    lines = [line.strip() for line in crash_file.read_text(errors="replace").splitlines()]
    node = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Node:")),
                crash_file.name)
    errors = [line for line in lines if line and not line.startswith(("File ", "^", "~"))]
    return f"{node}: {errors[-1] if errors else 'see the crash file'}"


_FORMATTER = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%y%m%d-%H:%M:%S")


def _setup_console_logging() -> None:
    """qsmprep's messages to standard error, one line each."""
    LOGGER.handlers.clear()
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_FORMATTER)
    LOGGER.addHandler(console)


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
