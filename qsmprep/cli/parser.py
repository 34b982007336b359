"""The command line: a grouped argparse parser that validates before any work starts.

Usage errors exit with code 64 (BIDS-App execution spec); missing input folders with 66. Paths are
checked here, through argument types and :func:`parse_args`, so that a mistyped folder fails in
a second rather than after an hour of processing.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from ..__about__ import __version__
from ..config import DEFAULT_SEED, Config, ExecutionConfig, NipypeConfig, WorkflowConfig
from ..errors import MissingInputError, QSMPrepError, UnknownLevelError, UsageError
from ..stages import STAGES, Parameter, configuration_fields

#: The analysis levels of the BIDS-App specification that qsmprep runs.
ANALYSIS_LEVELS = ("participant", "group")


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean --nprocs?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors carry the BIDS-App usage exit code (64): one line naming
    the problem (with the closest option for a mistyped one), then where to find help."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            options = [flag for action in self._actions for flag in action.option_strings]
            hints = [did_you_mean(word.split("=")[0], options)
                     for word in message.split(":", 1)[1].split() if word.startswith("-")]
            message += "".join(dict.fromkeys(hint for hint in hints if hint))
        self.exit(UsageError.exit_code, f"{self.prog}: error: {message}\n"
                  f"Run '{self.prog} --help' for the options.\n")


def _number(value: str, kind, description: str):
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {description}, got {value!r}") from None


def _positive_int(value: str) -> int:
    number = _number(value, int, "a positive integer")
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = _number(value, int, "an integer of 0 or more")
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer of 0 or more, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = _number(value, float, "a positive number")
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def _label(prefix: str):
    def strip(value: str) -> str:
        label = value[len(prefix):] if value.startswith(prefix) else value
        if not label.isalnum():
            raise argparse.ArgumentTypeError(
                f"'{value}' is not a BIDS label (letters and digits only, optional '{prefix}')")
        return label
    return strip


def _in_range(parameter: Parameter):
    """Argument type of a stage parameter: its type, within its declared bounds."""
    kind = "an integer" if parameter.type is int else "a number"
    low = f"{'>=' if parameter.minimum_inclusive else '>'} {parameter.minimum:g}"
    high = "" if parameter.maximum is None else f" and < {parameter.maximum:g}"

    def convert(value: str):
        try:
            number = parameter.type(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value}") from None
        above = (number >= parameter.minimum if parameter.minimum_inclusive
                 else number > parameter.minimum)
        if not above or (parameter.maximum is not None and not number < parameter.maximum):
            raise argparse.ArgumentTypeError(f"expected {kind} {low}{high}, got {value}")
        return number

    convert.parameter = parameter  # the declaration, for the Boutiques descriptor
    return convert


def _add_stage_options(group) -> None:
    """One option per stage with a choice and per stage parameter (:data:`qsmprep.stages.STAGES`);
    each stores into the configuration field of the same name."""
    for stage in STAGES:
        if stage.choice_key:
            group.add_argument(stage.flag, *stage.aliases, dest=stage.name,
                               choices=stage.choices, default=stage.default, help=stage.help)
        for parameter in stage.parameters:
            group.add_argument(parameter.flag, dest=parameter.field, type=_in_range(parameter),
                               default=None if parameter.automatic else parameter.default,
                               metavar=parameter.metavar or parameter.option_name,
                               help=parameter.full_help)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where the help already says what the default is."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The qsmprep argument parser, grouped like fMRIPrep's."""
    parser = _Parser(
        prog="qsmprep",
        description=f"qsmprep {__version__}: quantitative susceptibility mapping from multi-echo "
        "gradient-echo BIDS data, with regional iron measures.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root folder of a BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="the folder where the BIDS derivatives are written")
    parser.add_argument("analysis_level", metavar="{participant,group}",
                        help="processing stage: participant (per scan) or group (all scans)")

    bids = parser.add_argument_group("Options for filtering BIDS queries")
    bids.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                      type=_label("sub-"), metavar="LABEL",
                      help="participants to process (with or without 'sub-'); default: all")
    bids.add_argument("--session-label", nargs="+", default=[], type=_label("ses-"),
                      metavar="LABEL", help="sessions to process (with or without 'ses-')")
    bids.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                      help="JSON of pybids entity filters, flat or keyed by 'megre'/'t2starw'")

    group = parser.add_argument_group("Group level")
    group.add_argument("--site-column", default="site", metavar="COLUMN",
                       help="column of participants.tsv (or sessions.tsv) naming the scanning "
                       "site; absent means one site")
    group.add_argument("--clinical-columns", nargs="+", default=[], metavar="COLUMN",
                       help="numeric columns of participants.tsv (or sessions.tsv), e.g. "
                       "UPDRS_III MMSE, correlated with every regional mean (Spearman, partial "
                       "Spearman adjusted for age, sex and site, FDR)")

    perf = parser.add_argument_group("Options to handle performance")
    perf.add_argument("--nprocs", "--nthreads", type=_positive_int, default=None,
                      help="maximum number of processes for the whole run (default: all CPUs)")
    perf.add_argument("--omp-nthreads", type=_positive_int, default=None,
                      help="threads per process for FFTs and ANTs (default: min(8, nprocs))")
    perf.add_argument("--mem-gb", "--mem", type=_positive_float, default=None,
                      help="memory limit for MultiProc, in GB (default: 90%% of the machine)")
    perf.add_argument("--use-plugin", type=Path, metavar="FILE",
                      help="nipype plugin YAML with 'plugin:' and 'plugin_args:' "
                      "(e.g. MultiProc, SLURMGraph, SGE)")
    perf.add_argument("--stop-on-first-crash", action="store_true",
                      help="stop at the first failing node instead of finishing the others")

    wf = parser.add_argument_group("Workflow configuration")
    wf.add_argument("--field-strength", type=_positive_float, metavar="TESLA",
                    help="main field strength; used when sidecars lack MagneticFieldStrength, "
                    "and overrides them otherwise")
    wf.add_argument("--qsm-only", action="store_true",
                    help="stop after the QSM derivatives (no registration or regions)")
    wf.add_argument("--template", default=WorkflowConfig().template,
                    choices=["MNI152NLin2009cAsym"],
                    help="registration template (embedded; taken from TEMPLATEFLOW_HOME when "
                    "that folder already holds it)")
    wf.add_argument("--atlas", type=Path, metavar="LABELS",
                    help="your own atlas: a label image in template space (needs --atlas-table)")
    wf.add_argument("--atlas-table", type=Path, metavar="TSV",
                    help="the TSV of --atlas: columns index, name and optionally hemisphere "
                    "(L, R or bilateral)")
    wf.add_argument("--template-stats", action="store_true",
                    help="also write regional statistics measured on the template-space Chimap")
    wf.add_argument("--random-seed", type=_non_negative_int, default=DEFAULT_SEED, metavar="SEED",
                    help="seed of ANTs registration, 0 or more (results are reproducible for a "
                    "given seed and --omp-nthreads)")
    wf.add_argument("--register-via-t1w", action="store_true",
                    help="register the magnitude rigidly to the session's T1w image and the T1w "
                    "to the template (runs without a T1w are registered directly)")
    wf.add_argument("--no-nuclei-refinement", action="store_true",
                    help="skip the susceptibility-driven refinement of the registration at the "
                    "deep grey-matter nuclei (pallidum, STN, red nucleus, nigra)")
    wf.add_argument("--reference-ranges", type=Path, metavar="TSV",
                    help="your own CBS/PSP/PD reference ranges for the report (columns as in "
                    "qsmprep/reports/data/reference_ranges.tsv); calibrate them locally")
    wf.add_argument("--brain-mask-dir", type=Path, metavar="DIR",
                    help="a derivatives folder with your own brain masks "
                    "(sub-*/[ses-*/]anat/*_desc-brain_mask.nii[.gz], same entities as the run); "
                    "they replace the automatic mask")

    _add_stage_options(parser.add_argument_group("QSM reconstruction stages"))

    other = parser.add_argument_group("Other options")
    other.add_argument("-w", "--work-dir", type=Path, default=Path("work"),
                       help="nipype working folder; re-running with the same one resumes")
    other.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log messages (-vv for debugging)")
    other.add_argument("--version", action="version", version=f"qsmprep {__version__}")
    return parser


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _read_plugin_file(path: Path) -> tuple[str, dict]:
    import yaml

    if not path.is_file():
        raise MissingInputError(f"--use-plugin: file not found: {path}")
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"--use-plugin: {path} is not valid YAML: {error}") from None
    if not isinstance(settings, dict) or "plugin" not in settings:
        raise UsageError(f"--use-plugin: {path} must define 'plugin:' (and optionally "
                         "'plugin_args:'), e.g. 'plugin: MultiProc'")
    plugin_args = settings.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise UsageError(f"--use-plugin: 'plugin_args' in {path} must be a mapping")
    return str(settings["plugin"]), plugin_args


def parse_args(argv=None) -> Config:
    """Parse and validate the command line into a :class:`~qsmprep.config.Config`.

    Raises :class:`~qsmprep.errors.QSMPrepError` subclasses for invalid paths or settings;
    argparse itself exits with code 64 on malformed options.
    """
    from ..bids.discovery import load_bids_filters

    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    if opts.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownLevelError(f"analysis level {opts.analysis_level!r} is not available"
                                f"{did_you_mean(opts.analysis_level, ANALYSIS_LEVELS)}: "
                                f"choose {' or '.join(ANALYSIS_LEVELS)}")

    bids_dir = opts.bids_dir.expanduser().resolve()
    output_dir = opts.output_dir.expanduser().resolve()
    work_dir = opts.work_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f"BIDS folder not found: {opts.bids_dir}")
    for name, folder in (("output folder", output_dir), ("work folder", work_dir)):
        if _is_within(folder, bids_dir):
            raise UsageError(
                f"The {name} {folder} is inside the BIDS input {bids_dir}; qsmprep never writes "
                "into its input. Choose a folder outside it (e.g. a sibling 'derivatives/qsmprep').")
    if _is_within(bids_dir, output_dir):
        raise UsageError(f"The BIDS input {bids_dir} is inside the output folder {output_dir}.")
    if opts.brain_mask_dir is not None and not opts.brain_mask_dir.is_dir():
        raise MissingInputError(f"--brain-mask-dir: folder not found: {opts.brain_mask_dir}")
    if (opts.vsharp_min_radius_mm and opts.vsharp_max_radius_mm
            and opts.vsharp_min_radius_mm > opts.vsharp_max_radius_mm):
        raise UsageError("--vsharp-min-radius must not exceed --vsharp-max-radius")

    atlas, atlas_table = _validated_atlas(opts)
    reference_ranges = ""
    if opts.reference_ranges is not None:
        if not opts.reference_ranges.is_file():
            raise MissingInputError(f"--reference-ranges: file not found: {opts.reference_ranges}")
        from ..reports.cbs import read_reference_ranges

        read_reference_ranges(opts.reference_ranges)  # a malformed table stops here (exit 64)
        reference_ranges = str(opts.reference_ranges.resolve())

    bids_filters = load_bids_filters(opts.bids_filter_file) if opts.bids_filter_file else {}
    clinical_columns = []
    if opts.clinical_columns:
        from ..group.clinical import check_clinical_columns

        clinical_columns = check_clinical_columns(bids_dir, opts.clinical_columns)
    plugin, plugin_args = "MultiProc", {}
    if opts.use_plugin is not None:
        plugin, plugin_args = _read_plugin_file(opts.use_plugin)

    nprocs = opts.nprocs or int(plugin_args.get("n_procs", 0)) or os.cpu_count() or 1
    omp_nthreads = opts.omp_nthreads or min(8, nprocs)
    if omp_nthreads > nprocs:
        raise UsageError(f"--omp-nthreads ({omp_nthreads}) cannot exceed --nprocs ({nprocs})")
    mem_gb = opts.mem_gb or float(plugin_args.get("memory_gb", 0)) or _available_memory_gb()

    execution = ExecutionConfig(
        bids_dir=str(bids_dir),
        output_dir=str(output_dir),
        work_dir=str(work_dir),
        analysis_level=opts.analysis_level,
        participant_labels=list(dict.fromkeys(opts.participant_label)),
        session_labels=list(dict.fromkeys(opts.session_label)),
        bids_filters=bids_filters,
        brain_mask_dir=str(opts.brain_mask_dir.resolve()) if opts.brain_mask_dir else "",
        stop_on_first_crash=opts.stop_on_first_crash,
        command_line=" ".join(["qsmprep", *argv]),
        verbosity=opts.verbose,
    )
    nipype = NipypeConfig(plugin=plugin, plugin_args=plugin_args, nprocs=nprocs,
                          omp_nthreads=omp_nthreads, mem_gb=round(mem_gb, 2))
    workflow = WorkflowConfig(
        qsm_only=opts.qsm_only,
        template=opts.template,
        atlas=atlas,
        atlas_table=atlas_table,
        template_stats=opts.template_stats,
        random_seed=opts.random_seed,
        reference_ranges=reference_ranges,
        register_via_t1w=opts.register_via_t1w,
        nuclei_refinement=not opts.no_nuclei_refinement,
        site_column=opts.site_column,
        clinical_columns=clinical_columns,
        field_strength_t=opts.field_strength or 0.0,
        **{name: default if getattr(opts, name) is None else getattr(opts, name)
           for name, _, default in configuration_fields()},
    )
    return Config(execution=execution, nipype=nipype, workflow=workflow)


def _validated_atlas(opts) -> tuple[str, str]:
    """Absolute paths of the user's atlas and its table, checked now ("" when not given)."""
    if (opts.atlas is None) != (opts.atlas_table is None):
        raise UsageError("--atlas and --atlas-table go together: give both or neither")
    if opts.atlas is None:
        return "", ""
    if opts.qsm_only:
        raise UsageError("--atlas has no effect with --qsm-only (no registration or regions)")
    for option, path in (("--atlas", opts.atlas), ("--atlas-table", opts.atlas_table)):
        if not path.is_file():
            raise MissingInputError(f"{option}: file not found: {path}")
    from qsmprep.atlases import load_user_atlas

    labels, table = load_user_atlas(opts.atlas.resolve(), opts.atlas_table.resolve())
    return str(labels), str(table)


def _available_memory_gb() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return 0.9 * pages / 1024**3
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8.0


__all__ = ["build_parser", "parse_args", "QSMPrepError"]
