"""The package's imports point one way: down the layers of the README's layout.

Every ``import`` and ``from ... import`` in qsmprep (top-level, or inside a function) is read
with :mod:`ast`; a module may import its own layer and the layers below it, never one above.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Folder of each installed package (setup.cfg's package_dir).
PACKAGE_DIRS = {"qsmprep": ROOT / "qsmprep", "qsmprep.workflows": ROOT / "workflows",
                "qsmprep.atlases": ROOT / "atlases"}
#: Lowest first. A module belongs to the longest prefix listed.
LAYERS = (
    ("foundation", ("qsmprep", "qsmprep.__about__", "qsmprep.errors", "qsmprep.stages",
                    "qsmprep.config",
                    "qsmprep.imageio", "qsmprep.atlases")),
    ("bids", ("qsmprep.bids",)),
    ("qsm", ("qsmprep.qsm",)),
    ("anatomy", ("qsmprep.registration", "qsmprep.refinement", "qsmprep.tissue",
                 "qsmprep.depth", "qsmprep.regions")),
    ("reporting", ("qsmprep.reports", "qsmprep.group", "qsmprep.boilerplate",
                   "qsmprep.phantom")),
    ("interfaces", ("qsmprep.interfaces",)),
    ("workflows", ("qsmprep.workflows",)),
    ("cli", ("qsmprep.cli",)),
)


def _modules():
    """{module name: path} of every module of the installed packages."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


MODULES = _modules()


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for position, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length and (prefix != "qsmprep"
                                                          or module == "qsmprep"):
                best, best_length = position, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best


def imported_modules(module: str, path: Path):
    """qsmprep modules imported by ``module`` (``from package import module`` names the
    module; ``from module import name`` names the module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES
                       else source for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "qsmprep":
                yield node.lineno, target


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    own = layer_of(module)
    upward = [f"line {line}: {target} ({LAYERS[layer_of(target)][0]})"
              for line, target in imported_modules(module, MODULES[module])
              if layer_of(target) > own]
    assert not upward, f"{module} ({LAYERS[own][0]}) imports from above: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a module of the bids layer importing a workflow is caught."""
    path = tmp_path / "discovery.py"
    path.write_text("from ..workflows import base\nfrom . import loading\n")
    targets = [target for _, target in imported_modules("qsmprep.bids.discovery", path)]
    assert targets == ["qsmprep.workflows.base", "qsmprep.bids.loading"]
    assert layer_of("qsmprep.workflows.base") > layer_of("qsmprep.bids.discovery")
