"""One declaration per stage (qsmprep.stages): the configuration, the command line, the stage
functions, their interfaces, the sidecar, the methods text, the README table and the Boutiques
descriptor all follow it."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from qsmprep.boilerplate import CITATIONS, methods_boilerplate
from qsmprep.cli import docs
from qsmprep.cli.parser import build_parser
from qsmprep.config import Config, WorkflowConfig
from qsmprep.interfaces import qsm as interfaces
from qsmprep.qsm import pipeline
from qsmprep.stages import STAGES, all_parameters, choice_stages

ROOT = Path(__file__).resolve().parents[2]
PARAMETERS = all_parameters()


class _Run:
    voxel_size = (1.0, 1.0, 1.0)
    echoes = (1, 2, 3, 4)
    field_strength_t = 3.0


def _changed_value(parameter):
    """A value other than the default, within the parameter's bounds."""
    value = parameter.default * 0.5 if parameter.default else 3
    return parameter.type(value if parameter.type is float else max(2, int(value)))


def test_names_are_unique_and_the_pipeline_runs_the_declared_order():
    names = [stage.name for stage in STAGES] + [p.field for p in PARAMETERS]
    assert len(names) == len(set(names))
    flags = [stage.flag for stage in choice_stages()] + [p.flag for p in PARAMETERS]
    flags += [alias for stage in STAGES for alias in stage.aliases]
    assert len(flags) == len(set(flags))
    assert pipeline.STAGES == tuple(stage.name for stage in STAGES)
    assert len({stage.sidecar for stage in STAGES}) == len(STAGES)


def test_every_parameter_belongs_to_an_algorithm_of_its_stage_and_cites_known_papers():
    for stage in STAGES:
        assert stage.algorithms, stage.name
        for parameter in stage.parameters:
            assert set(parameter.algorithms) <= set(stage.choices), parameter.field
            if parameter.automatic:
                assert not parameter.default, parameter.field  # 0 stands for "automatic"
        for algorithm in stage.algorithms:
            assert set(algorithm.citations) <= set(CITATIONS), algorithm.name


def test_configuration_fields_are_the_declarations():
    defaults = WorkflowConfig()
    for stage in choice_stages():
        assert getattr(defaults, stage.name) == stage.default
    for parameter in PARAMETERS:
        value = getattr(defaults, parameter.field)
        assert value == parameter.default and type(value) is parameter.type


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_stage_function_and_interface_take_the_declared_keywords(stage):
    function = getattr(pipeline, stage.function)
    interface = getattr(interfaces, stage.interface)
    declared = (["method"] if stage.choice_key else []) + [p.field for p in stage.parameters]
    keywords = [name for name, argument in inspect.signature(function).parameters.items()
                if argument.kind is inspect.Parameter.KEYWORD_ONLY]
    assert set(declared) <= set(keywords)
    assert set(pipeline.stage_arguments(WorkflowConfig())[stage.name]) == set(declared)
    spec = interface.input_spec()
    for parameter in stage.parameters:
        assert getattr(spec, parameter.field) == parameter.default
    if stage.choice_key:
        assert spec.method == stage.default
        for choice in stage.choices:
            spec.method = choice  # every declared algorithm is a valid input


def test_every_option_stores_into_its_configuration_field():
    actions = {action.dest: action for action in build_parser()._actions}
    for stage in choice_stages():
        action = actions[stage.name]
        assert stage.flag in action.option_strings
        assert set(stage.aliases) <= set(action.option_strings)
        assert tuple(action.choices) == stage.choices and action.default == stage.default
    for parameter in PARAMETERS:
        action = actions[parameter.field]
        assert action.option_strings == [parameter.flag]
        assert action.type(str(_changed_value(parameter))) == _changed_value(parameter)


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda parameter: parameter.field)
def test_a_parameter_set_on_the_command_line_reaches_the_stage_sidecar_and_methods(
        parameter, tmp_path):
    """The whole path of one declaration: flag -> configuration -> stage arguments -> sidecar
    block and methods text of a run."""
    from qsmprep.cli.parser import parse_args

    stage = next(stage for stage in STAGES if parameter in stage.parameters)
    value = _changed_value(parameter)
    (tmp_path / "bids").mkdir()
    argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
            parameter.flag, str(value)]
    if parameter.algorithms and stage.flag:
        argv += [stage.flag, parameter.algorithms[0]]
    config = parse_args(argv)
    assert getattr(config.workflow, parameter.field) == value
    assert pipeline.stage_arguments(config.workflow)[stage.name][parameter.field] == value
    block = pipeline.stage_parameters(config.workflow, _Run.voxel_size)[stage.sidecar]
    if parameter.sidecar:
        assert block[parameter.sidecar] == value
    else:  # a radius: reported as the radii the stage works out from it
        default = dataclasses.replace(config.workflow, **{parameter.field: parameter.default})
        assert block != pipeline.stage_parameters(default, _Run.voxel_size)[stage.sidecar]
    text = methods_boilerplate(config=config, runs=[_Run()])
    if f"{{{parameter.field}}}" in stage.methods + "".join(a.methods for a in stage.algorithms):
        assert f"{value:g}" in text


def test_sidecar_blocks_hold_what_each_algorithm_uses():
    for stage in choice_stages():
        for choice in stage.choices:
            settings = dataclasses.replace(WorkflowConfig(), **{stage.name: choice})
            block = pipeline.stage_parameters(settings, (1.0, 1.0, 1.0))[stage.sidecar]
            assert block[stage.choice_key] == choice
            used = {p.sidecar for p in stage.parameters_of(choice) if p.sidecar}
            unused = {p.sidecar for p in stage.parameters if p.sidecar} - used
            assert used <= set(block) and not (unused & set(block)), (stage.name, choice)


def test_methods_text_names_every_chosen_algorithm():
    for stage in choice_stages():
        for algorithm in stage.algorithms:
            settings = dataclasses.replace(WorkflowConfig(), **{stage.name: algorithm.name})
            text = methods_boilerplate(config=Config(workflow=settings), runs=[_Run()])
            phrase = algorithm.methods.split("[@")[0].split("{")[0].strip()
            assert phrase in text, (stage.name, algorithm.name)
            for key in algorithm.citations:
                if f"[@{key}]" in algorithm.methods:
                    assert CITATIONS[key] in text


def test_readme_table_and_boutiques_inputs_are_current():
    """Run ``python -m qsmprep.cli.docs`` after changing a declaration."""
    readme = (ROOT / "README.md").read_text()
    assert docs.readme_with_table(readme) == readme
    descriptor = json.loads((ROOT / "boutiques.json").read_text())
    assert docs.descriptor_with_stage_inputs(descriptor) == descriptor


def test_short_citations_name_the_first_author_and_year():
    assert docs.short_citation("pdf") == "[Liu et al. 2011](https://doi.org/10.1002/nbm.1670)"
    assert docs.short_citation("otsu").startswith("[Otsu 1979](")
