"""Progress of a participant-level run: node names read as participant, run and stage;
one updating status line on a terminal, one log line per node otherwise."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

#: Sub-workflow name -> the stage shown to the user.
STAGES = {
    "qsm_wf": "QSM",
    "ds_qsm_wf": "outputs",
    "registration_wf": "registration",
    "regions_wf": "regions",
    "ds_regions_wf": "outputs",
    "report_wf": "report",
}

#: Sub-workflows that only group others: the stage is named after the one inside.
CONTAINERS = ("anatomy_wf",)


@dataclass(frozen=True)
class NodeLabel:
    """Where a node sits in the graph: ``participant`` (``sub-01``), ``run`` (``sub-01_ses-1``
    or None for participant-wide nodes), ``stage`` (:data:`STAGES`) and ``node`` (its name)."""

    participant: str | None
    run: str | None
    stage: str | None
    node: str

    def __str__(self) -> str:
        where = self.run or self.participant
        parts = [part for part in (where, self.stage) if part]
        return f"{' '.join(parts)}: {self.node}" if parts else self.node


def _bids_name(underscored: str) -> str:
    """``sub_02_ses_1`` -> ``sub-02_ses-1`` (BIDS labels are alphanumeric, so the words pair)."""
    words = underscored.split("_")
    if len(words) % 2:
        return underscored
    return "_".join(f"{key}-{value}" for key, value in zip(words[::2], words[1::2]))


def parse_node_name(fullname: str) -> NodeLabel:
    """Read a node's full name (``qsmprep_wf.sub_01_wf.run_sub_01_wf.qsm_wf.inversion``)
    as its participant, run, stage and node name; unknown layouts keep the name only."""
    parts = fullname.split(".")
    if parts and parts[0] == "qsmprep_wf":
        parts = parts[1:]
    participant = run = stage = None
    rest = list(parts)
    if rest and rest[0].startswith("sub_") and rest[0].endswith("_wf") and len(rest) > 1:
        participant = "sub-" + rest.pop(0)[len("sub_"):-len("_wf")]
    if rest and rest[0].startswith("run_") and rest[0].endswith("_wf") and len(rest) > 1:
        run = _bids_name(rest.pop(0)[len("run_"):-len("_wf")])
    if rest and rest[0] in CONTAINERS and len(rest) > 2:
        rest.pop(0)
    if rest and len(rest) > 1 and rest[0].endswith("_wf"):
        workflow = rest.pop(0)
        stage = STAGES.get(workflow, workflow.removesuffix("_wf").replace("_", " "))
    if participant and stage is None and len(rest) > 1:
        stage = rest.pop(0).removesuffix("_wf")
    return NodeLabel(participant, run, stage, ".".join(rest) or fullname)


def format_elapsed(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_status(done: int, total: int, elapsed: float, running=(), failed: int = 0,
                  width: int = 100) -> str:
    """The one-line status: ``[12/34 nodes, 0:42] running sub-01 QSM: inversion (+1)``."""
    counts = f"{done}/{total} nodes" + (f", {failed} failed" if failed else "")
    line = f"[{counts}, {format_elapsed(elapsed)}]"
    running = list(running)
    if running:
        line += f" running {running[0]}" + (f" (+{len(running) - 1})" if len(running) > 1
                                             else "")
    if len(line) > width:
        line = line[:max(0, width - 3)] + "..."
    return line


class Progress:
    """A nipype status callback (``status_callback`` of MultiProc, Linear, SLURM, SGE...) that
    counts nodes and reports them.

    On a terminal (``interactive``) it redraws one status line on ``stream``; otherwise it logs
    ``done: sub-01 QSM: inversion (12/34 nodes, 0:42 elapsed)`` lines to ``logger``. The
    lines are logged in both modes (for the log file); :class:`ProgressAwareHandler` keeps
    them off a terminal, where the status line shows them.
    """

    def __init__(self, total: int, *, logger: logging.Logger, stream=None,
                 interactive: bool = False, clock=time.monotonic, width: int = 100):
        self.total = total
        self.logger = logger
        self.stream = stream
        self.interactive = interactive and stream is not None
        self.clock = clock
        self.width = width
        self.started = clock()
        self.done = 0
        self.failed = 0
        self.running: dict[str, NodeLabel] = {}
        self._lock = threading.Lock()
        self._shown = False

    def elapsed(self) -> float:
        return self.clock() - self.started

    def status_line(self) -> str:
        return format_status(self.done, max(self.total, self.done + len(self.running)),
                             self.elapsed(), [str(label) for label in self.running.values()],
                             self.failed, self.width)

    def __call__(self, node, status: str) -> None:
        label = parse_node_name(getattr(node, "fullname", str(node)))
        key = getattr(node, "fullname", str(node))
        with self._lock:
            if status == "start":
                self.running[key] = label
            elif status in ("end", "exception"):
                self.running.pop(key, None)
                self.done += 1
                self.failed += status == "exception"
                total = max(self.total, self.done + len(self.running))
                summary = (f"{label} ({self.done}/{total} nodes, "
                           f"{format_elapsed(self.elapsed())} elapsed)")
                # marked so that a terminal shows them in the status line, not as lines
                if status == "exception":
                    self.logger.error("failed: %s", summary, extra={"node_status": True})
                else:
                    self.logger.info("done: %s", summary, extra={"node_status": True})
            if self.interactive:
                self.redraw()

    def redraw(self) -> None:
        """Rewrite the status line (terminal only)."""
        if self.interactive:
            self.stream.write("\r\x1b[K" + self.status_line())
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Erase the status line, e.g. before a log message or at the end."""
        if self.interactive and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


class ProgressAwareHandler(logging.StreamHandler):
    """A console handler that erases the status line of :attr:`progress` before a message and
    draws it again after, so that messages and the status line do not mix. Records marked
    ``file_only`` (tracebacks kept for the log file) are not shown."""

    progress: Progress | None = None

    def emit(self, record):
        if getattr(record, "file_only", False):
            return
        progress = self.progress
        if progress is not None and progress.interactive:
            if getattr(record, "node_status", False) and record.levelno < logging.ERROR:
                return
            progress.clear()
            super().emit(record)
            progress.redraw()
        else:
            super().emit(record)


def count_nodes(workflow) -> int:
    """The number of nodes nipype will run: identity nodes (plain plumbing) are dropped from
    the executed graph, so they are not counted."""
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline.engine import JoinNode

    from qsmprep.workflows import all_nodes

    return sum(1 for node in all_nodes(workflow)
               if isinstance(node, JoinNode) or not isinstance(node.interface, IdentityInterface))
