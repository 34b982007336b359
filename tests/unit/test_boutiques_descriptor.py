"""The Boutiques descriptor (``boutiques.json``): a valid BIDS-App descriptor, in step with the
command-line parser, and the command lines it generates are accepted by that parser."""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
from pathlib import Path

import pytest

boutiques = pytest.importorskip("boutiques")

from qsmprep import errors  # noqa: E402
from qsmprep.__about__ import __version__  # noqa: E402
from qsmprep.cli import run  # noqa: E402
from qsmprep.cli.parser import (  # noqa: E402
    ANALYSIS_LEVELS,
    _non_negative_int,
    _positive_float,
    _positive_int,
    build_parser,
    parse_args,
)
from qsmprep.cli.run import TERMINATED_EXIT_CODE  # noqa: E402

DESCRIPTOR = Path(__file__).resolve().parents[2] / "boutiques.json"
#: Value-keys of the positional arguments, as the BIDS-App convention names them.
POSITIONAL_KEYS = {"bids_dir": "[BIDS_DIR]", "output_dir": "[OUTPUT_DIR]",
                   "analysis_level": "[ANALYSIS_LEVEL]"}
#: Exit codes of a run stopped by Ctrl-C (SIGINT) and by SIGTERM, besides those of qsmprep.errors.
INTERRUPTED, TERMINATED = 130, TERMINATED_EXIT_CODE


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


@pytest.fixture(scope="module")
def inputs(descriptor) -> dict:
    return {item["id"]: item for item in descriptor["inputs"]}


def _options() -> list[argparse.Action]:
    """Every optional argument of the parser except --help and --version."""
    return [action for action in build_parser()._actions
            if action.option_strings
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))]


def _input_of(action, inputs: dict) -> dict:
    if isinstance(action, argparse._CountAction):  # -v, -vv: one input whose values are the flags
        short = next(flag for flag in action.option_strings if not flag.startswith("--"))
        matches = [item for item in inputs.values() if "command-line-flag" not in item
                   and item.get("value-choices")
                   and all(re.fullmatch(f"{short}+", choice) for choice in item["value-choices"])]
    else:
        matches = [item for item in inputs.values()
                   if item.get("command-line-flag") in action.option_strings]
    assert len(matches) == 1, f"{action.option_strings}: inputs {[m['id'] for m in matches]}"
    return matches[0]


def _simulate(descriptor_path, invocation: dict, tmp_path) -> str:
    invocation_path = tmp_path / "invocation.json"
    invocation_path.write_text(json.dumps(invocation))
    result = boutiques.execute("simulate", str(descriptor_path), "-i", str(invocation_path))
    assert result.exit_code == 0
    return result.stdout.strip()


def _qsmprep_arguments(command: str, output_dir: str) -> list[str]:
    """The arguments of qsmprep in ``mkdir -p <out>; qsmprep ...`` (checks the mkdir part)."""
    mkdir, qsmprep = command.split(";", 1)
    assert shlex.split(mkdir) == ["mkdir", "-p", output_dir]
    argv = shlex.split(qsmprep)
    assert argv[0] == "qsmprep"
    return argv[1:]


def test_descriptor_is_a_valid_bids_app_descriptor():
    boutiques.validate(str(DESCRIPTOR), "--bids")  # raises DescriptorValidationError if not


def test_versions_match_the_package(descriptor):
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"] == {"type": "docker",
                                             "image": f"qsmprep/qsmprep:{__version__}"}


def test_every_option_has_one_input_and_every_input_an_option(inputs, descriptor):
    matched = {_input_of(action, inputs)["id"] for action in _options()}
    positional = {item["id"] for item in inputs.values()
                  if item["value-key"] in POSITIONAL_KEYS.values()}
    assert matched.isdisjoint(positional)
    assert matched | positional == set(inputs), "inputs without a parser option"
    parser_flags = {flag for action in _options() for flag in action.option_strings}
    for item in inputs.values():
        if "command-line-flag" in item:
            assert item["command-line-flag"] in parser_flags, item["id"]
            assert item["command-line-flag"].startswith("--"), item["id"]
        assert item["value-key"] in descriptor["command-line"], item["id"]


def test_positional_arguments(inputs):
    actions = {action.dest: action for action in build_parser()._actions
               if not action.option_strings}
    assert set(actions) == set(POSITIONAL_KEYS)
    by_key = {}
    for item in inputs.values():
        by_key.setdefault(item["value-key"], []).append(item)
    assert [item["type"] for item in by_key["[BIDS_DIR]"]] == ["File"]
    assert {item["type"] for item in by_key["[OUTPUT_DIR]"]} == {"File", "String"}
    (level,) = by_key["[ANALYSIS_LEVEL]"]
    assert level["value-choices"] == list(ANALYSIS_LEVELS)
    assert not any(item.get("optional") for item in by_key["[BIDS_DIR]"] + [level])


@pytest.mark.parametrize("action", _options(), ids=lambda action: action.dest)
def test_input_agrees_with_the_option(action, inputs):
    item = _input_of(action, inputs)
    assert item["id"] == action.dest
    assert item.get("optional", False) is True
    if isinstance(action, argparse._CountAction):
        assert item["type"] == "String" and "default-value" not in item
        return
    if isinstance(action, argparse._StoreTrueAction):
        assert item["type"] == "Flag" and not item.get("default-value", False)
        return
    assert bool(item.get("list")) == (action.nargs == "+")
    if action.choices is not None:
        assert item["value-choices"] == list(action.choices)
    else:
        assert "value-choices" not in item
    declared = getattr(action.type, "parameter", None)  # a stage parameter's bounded type
    if declared is not None:
        assert item["type"] == "Number" and bool(item.get("integer")) == (declared.type is int)
        assert item["minimum"] == declared.minimum
        assert bool(item.get("exclusive-minimum")) == (not declared.minimum_inclusive)
        assert item.get("maximum") == declared.maximum
        assert bool(item.get("exclusive-maximum")) == (declared.maximum is not None)
    elif action.type is _positive_int:
        assert (item["type"], item.get("integer"), item.get("minimum")) == ("Number", True, 1)
    elif action.type is _non_negative_int:
        assert (item["type"], item.get("integer"), item.get("minimum")) == ("Number", True, 0)
        assert not item.get("exclusive-minimum")
    elif action.type is _positive_float:
        assert (item["type"], item.get("minimum"), item.get("exclusive-minimum")) == \
            ("Number", 0, True)
        assert not item.get("integer")
    elif action.type is int:
        assert item["type"] == "Number" and item.get("integer") is True
    elif action.type is float:
        assert item["type"] == "Number" and not item.get("integer")
    elif action.type is Path:
        assert item["type"] in ("File", "String")
    else:  # strings, labels
        assert item["type"] == "String"
    if action.default in (None, []):
        assert "default-value" not in item
    elif isinstance(action.default, Path):
        assert item["default-value"] == str(action.default)
    else:
        assert item["default-value"] == action.default


def test_error_codes_are_those_of_the_cli(descriptor):
    expected = {cls.exit_code for cls in vars(errors).values()
                if isinstance(cls, type) and issubclass(cls, errors.QSMPrepError)}
    codes = [entry["code"] for entry in descriptor["error-codes"]]
    assert sorted(codes) == sorted(expected | {INTERRUPTED, TERMINATED})


@pytest.mark.parametrize("signal_error, code", [(KeyboardInterrupt, INTERRUPTED),
                                                (run.Terminated, TERMINATED)])
def test_a_stopped_run_exits_with_its_documented_code(signal_error, code, monkeypatch):
    from qsmprep.cli import parser

    def stop(argv=None):
        raise signal_error

    monkeypatch.setattr(parser, "parse_args", stop)
    monkeypatch.setattr(run, "_setup_console_logging", lambda: None)  # leave logging as it is
    assert run.run(["bids", "out", "participant"]) == code


def test_simulated_command_line_is_accepted_by_the_cli(tmp_path):
    bids_dir = tmp_path / "bids"
    bids_dir.mkdir()
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "empty", "BIDSVersion": "1.9.0"}))
    output_dir = tmp_path / "derivatives dir" / "qsmprep"  # a space: the value must be quoted
    work_dir = tmp_path / "work"
    invocation = {
        "bids_dir": str(bids_dir), "output_dir_name": str(output_dir),
        "analysis_level": "participant", "participant_label": ["control", "sub-cbs"],
        "session_label": ["1"], "nprocs": 2, "omp_nthreads": 1, "mem_gb": 3.5,
        "qsm_only": True, "background_removal": "vsharp", "vsharp_max_radius_mm": 10,
        "inversion": "rts", "rts_delta": 0.2, "quality_threshold": 0.25, "random_seed": 7,
        "work_dir": str(work_dir), "verbose": "-vv",
    }
    command = _simulate(DESCRIPTOR, invocation, tmp_path)
    argv = _qsmprep_arguments(command, str(output_dir))

    config = parse_args(argv)
    execution, nipype, workflow = config.execution, config.nipype, config.workflow
    assert (execution.bids_dir, execution.output_dir, execution.work_dir) == \
        (str(bids_dir), str(output_dir), str(work_dir))
    assert execution.analysis_level == "participant"
    assert execution.participant_labels == ["control", "cbs"]
    assert execution.session_labels == ["1"]
    assert execution.verbosity == 2
    assert (nipype.nprocs, nipype.omp_nthreads, nipype.mem_gb) == (2, 1, 3.5)
    assert workflow.qsm_only is True
    assert (workflow.background_removal, workflow.vsharp_max_radius_mm) == ("vsharp", 10.0)
    assert (workflow.inversion, workflow.rts_delta) == ("rts", 0.2)
    assert (workflow.quality_threshold, workflow.random_seed) == (0.25, 7)
    assert not workflow.register_via_t1w and not workflow.template_stats
    # options left out of the invocation get the descriptor's defaults, i.e. the parser's
    defaults = build_parser().parse_args([str(bids_dir), str(output_dir), "participant"])
    assert (workflow.unwrapping, workflow.echo_fit, workflow.referencing, workflow.r2star) == \
        (defaults.unwrapping, defaults.echo_fit, defaults.referencing, defaults.r2star)
    assert workflow.tikhonov_regularization == defaults.tikhonov_regularization
    # an automatic parameter has no default value in the descriptor: the configuration's 0
    assert defaults.tv_regularization is None and workflow.tv_regularization == 0.0


def _expected_value(item: dict, value):
    if item["type"] == "File":
        return Path(value)
    if item["type"] == "Number":
        return int(value) if item.get("integer") else pytest.approx(float(value))
    return value


@pytest.mark.parametrize("seed", range(6))
def test_random_invocations_round_trip_through_the_parser(seed, inputs, tmp_path):
    """Random complete invocations from ``bosh example -c``: every value reaches the parser."""
    random.seed(seed)  # boutiques draws its random values from the random module
    invocation = json.loads(boutiques.example(str(DESCRIPTOR), "-c"))
    # Both output-folder inputs share the [OUTPUT_DIR] value-key (the BIDS-App convention);
    # Boutiques keeps only the first one declared, so give the folder through that one.
    if "participant_level_analysis_dir" in invocation:
        invocation["output_dir_name"] = invocation.pop("participant_level_analysis_dir")
    for key in ("participant_label", "session_label"):  # random strings hold '_': not labels
        if key in invocation:
            invocation[key] = [re.sub("[^A-Za-z0-9]", "", label) for label in invocation[key]]
    command = _simulate(DESCRIPTOR, invocation, tmp_path)
    argv = _qsmprep_arguments(command, invocation["output_dir_name"])
    options = vars(build_parser().parse_args(argv))

    assert options["bids_dir"] == Path(invocation["bids_dir"])
    assert options["output_dir"] == Path(invocation["output_dir_name"])
    assert options["analysis_level"] == invocation["analysis_level"]
    checked = {"bids_dir", "output_dir_name", "analysis_level"}
    for key, value in invocation.items():
        if key in checked:
            continue
        item = inputs[key]
        if key == "verbose":
            assert options["verbose"] == value.count("v")
        elif item.get("list"):
            assert options[key] == [_expected_value(item, entry) for entry in value]
        elif key == "work_dir":
            assert options[key] == Path(value)
        else:
            assert options[key] == _expected_value(item, value), key
        checked.add(key)
    assert len(checked) > 20  # a complete invocation sets most options
