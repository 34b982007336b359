"""The methods text names what ran and numbers its references in order of appearance."""

from __future__ import annotations

import re

from qsmprep.boilerplate import methods_boilerplate
from qsmprep.config import Config, WorkflowConfig


class _Run:
    voxel_size = (1.0, 1.0, 1.0)
    echoes = (1, 2, 3, 4)
    field_strength_t = 7.0


def test_default_methods_text():
    text = methods_boilerplate(config=Config(), runs=[_Run()])
    assert "projection onto dipole fields (PDF)" in text and "7 T" in text
    assert "total-variation" in text and "FANSI" in text and "RESHARP" not in text
    numbers = [int(n) for n in re.findall(r"\[(\d+)\]", text.split("### References")[0])]
    assert numbers == sorted(numbers) and numbers[0] == 1
    references = re.findall(r"^(\d+)\. ", text.split("### References")[1], flags=re.M)
    assert [int(n) for n in references] == list(range(1, max(numbers) + 1))


def test_alternative_algorithms_are_described_and_cited():
    config = Config(workflow=WorkflowConfig(background_removal="resharp", inversion="tkd"))
    text = methods_boilerplate(config=config, runs=[_Run()])
    assert "RESHARP" in text and "Sun H, Wilman AH" in text
    assert "TKD, threshold 0.19" in text and "Shmueli K" in text
    assert "V-SHARP" not in text and "PDF" not in text
    vsharp = methods_boilerplate(config=Config(workflow=WorkflowConfig(
        background_removal="vsharp")), runs=[_Run()])
    assert "V-SHARP" in vsharp and "24 down to 2 mm" in vsharp
