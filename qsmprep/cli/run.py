"""The ``qsmprep`` entry point: parse, discover, build the graph, run it, map errors to exit codes."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network

from ..errors import QSMPrepError, UnknownLevelError  # noqa: E402

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

    try:
        config = parse_args(argv)
        _setup_logging(config)
        if config.execution.analysis_level == "group":
            raise UnknownLevelError(
                "The group level is not yet available in this version of qsmprep; run "
                "'participant' first.")
        return _run_participant_level(config)
    except QSMPrepError as error:
        _setup_logging(None)
        LOGGER.critical("%s", error)
        return error.exit_code
    except KeyboardInterrupt:
        LOGGER.critical("Interrupted; re-run the same command to resume from the work folder.")
        return 130


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
    from nipype import config as nipype_config

    crash_dir = logs_dir / f"crash-{config.execution.run_uuid}"
    nipype_config.update_config({
        "execution": {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": config.execution.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "check_version": False,
            "poll_sleep_duration": 0.5,
        },
        "monitoring": {"enabled": False},
    })
    plugin_args = dict(config.nipype.plugin_args)
    if config.nipype.plugin in ("MultiProc", "LegacyMultiProc"):
        plugin_args.setdefault("n_procs", config.nipype.nprocs)
        plugin_args.setdefault("memory_gb", config.nipype.mem_gb)
        plugin_args.setdefault("raise_insufficient", False)
        plugin_args.setdefault("status_callback", _log_node_status)
    try:
        workflow.run(plugin=config.nipype.plugin, plugin_args=plugin_args)
    except RuntimeError as error:
        LOGGER.critical("Processing failed: %s", error)
        for crash_file in sorted(crash_dir.glob("crash-*.txt")):
            LOGGER.critical("  %s", _summarise_crash(crash_file))
        LOGGER.critical("Crash reports are in %s; fix the cause and re-run the same command "
                        "to resume.", crash_dir)
        return 1
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


def _setup_logging(config) -> None:
    """Console logging (and a log file in ``<output_dir>/logs`` when the config is known)."""
    if getattr(_setup_logging, "done", False) and config is None:
        return
    verbosity = config.execution.verbosity if config is not None else 0
    level = logging.DEBUG if verbosity >= 2 else logging.INFO
    formatter = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%y%m%d-%H:%M:%S")
    LOGGER.handlers.clear()
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    LOGGER.addHandler(console)
    if config is not None:
        logs_dir = Path(config.execution.output_dir) / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(logs_dir / f"qsmprep-{config.execution.run_uuid}.log")
        log_file.setFormatter(formatter)
        LOGGER.addHandler(log_file)
        from nipype import logging as nipype_logging

        nipype_level = logging.INFO if verbosity >= 1 else logging.WARNING
        for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
            nipype_logging.getLogger(name).setLevel(nipype_level)
    _setup_logging.done = True


if __name__ == "__main__":  # pragma: no cover
    main()
