"""One configuration object per run, built from the command line and saved with the outputs.

The configuration has four sections, in the spirit of fMRIPrep's ``config`` module:

- ``execution``: what to process and where (folders, labels, filters, the command line);
- ``nipype``: how to run the graph (plugin, processes, threads, memory);
- ``workflow``: every processing choice, one field per algorithm and parameter;
- ``environment``: software versions, filled in when the object is created.

:meth:`Config.save` writes it as TOML into ``<output_dir>/logs/``; :meth:`Config.load` reads it
back, so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import uuid
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import tomli_w

from .__about__ import __version__
from .stages import configuration_fields

#: Packages whose versions are recorded with every run.
KEY_DEPENDENCIES = (
    "nipype", "pybids", "nibabel", "nilearn", "templateflow", "antspyx", "numpy", "scipy",
)

#: The one default seed of every random choice (ANTs sampling, the tissue classification's
#: tie-breaking, simulations): ``--random-seed``.
DEFAULT_SEED = 0


@dataclasses.dataclass
class ExecutionConfig:
    """What is processed, and where."""

    bids_dir: str = ""
    output_dir: str = ""
    work_dir: str = ""
    analysis_level: str = "participant"
    participant_labels: list = dataclasses.field(default_factory=list)
    session_labels: list = dataclasses.field(default_factory=list)
    bids_filters: dict = dataclasses.field(default_factory=dict)
    brain_mask_dir: str = ""
    stop_on_first_crash: bool = False
    command_line: str = ""
    verbosity: int = 0
    run_uuid: str = ""
    start_time: str = ""


@dataclasses.dataclass
class NipypeConfig:
    """How the nipype graph is executed."""

    plugin: str = "MultiProc"
    plugin_args: dict = dataclasses.field(default_factory=dict)
    nprocs: int = 0
    omp_nthreads: int = 0
    mem_gb: float = 0.0


@dataclasses.dataclass
class _RunChoices:
    """The processing choices outside the reconstruction stages."""

    qsm_only: bool = False
    template: str = "MNI152NLin2009cAsym"
    atlas: str = ""  # user atlas label image in template space ("" = the qsmprep atlas)
    atlas_table: str = ""  # its TSV
    template_stats: bool = False  # also measure regions on the template-space Chimap
    random_seed: int = DEFAULT_SEED  # seeds ANTs and every other random choice
    reference_ranges: str = ""  # user table of CBS/PSP/PD reference ranges ("" = the package's)
    register_via_t1w: bool = False  # magnitude -> T1w -> template when the session has a T1w
    nuclei_refinement: bool = True  # refine the registration at the deep grey matter on the Chimap
    site_column: str = "site"  # participants.tsv / sessions.tsv column naming the site (group)
    # numeric participants.tsv / sessions.tsv columns correlated with regional iron (group)
    clinical_columns: list = dataclasses.field(default_factory=list)
    field_strength_t: float = 0.0


#: Every processing choice: the fields of :class:`_RunChoices`, then one field per stage (its
#: algorithm) and per stage parameter, generated from :data:`qsmprep.stages.STAGES`. Defaults
#: follow the 2024 ISMRM QSM consensus where it applies.
WorkflowConfig = dataclasses.make_dataclass(
    "WorkflowConfig",
    [(name, kind, dataclasses.field(default=default))
     for name, kind, default in configuration_fields()],
    bases=(_RunChoices,),
    namespace={"__doc__": "Every processing choice: the run's (registration, atlas, seed, ...) "
               "and one field per reconstruction stage and stage parameter "
               "(:data:`qsmprep.stages.STAGES`)."},
)
WorkflowConfig.__module__ = __name__


@dataclasses.dataclass
class Config:
    """The whole configuration of one qsmprep run."""

    execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)
    nipype: NipypeConfig = dataclasses.field(default_factory=NipypeConfig)
    workflow: WorkflowConfig = dataclasses.field(default_factory=WorkflowConfig)
    environment: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.execution.run_uuid:
            now = datetime.now(timezone.utc)
            self.execution.start_time = now.isoformat(timespec="seconds")
            self.execution.run_uuid = f"{now:%Y%m%d-%H%M%S}_{uuid.uuid4()}"
        if not self.environment:
            self.environment = software_versions()

    def to_dict(self) -> dict:
        """Plain nested dictionary (TOML- and JSON-friendly)."""
        return _drop_empty(dataclasses.asdict(self))

    def save(self, folder) -> Path:
        """Write ``config-<run_uuid>.toml`` into ``folder`` and return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"config-{self.execution.run_uuid}.toml"
        path.write_text(tomli_w.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path) -> "Config":
        """Read a configuration written by :meth:`save`."""
        data = tomllib.loads(Path(path).read_text())
        workflow = data.get("workflow", {})
        if "reference" in workflow:  # the field of the referencing stage in older configurations
            workflow.setdefault("referencing", workflow.pop("reference"))
        return cls(
            execution=ExecutionConfig(**data.get("execution", {})),
            nipype=NipypeConfig(**data.get("nipype", {})),
            workflow=WorkflowConfig(**workflow),
            environment=data.get("environment", {}),
        )


def software_versions() -> dict:
    """Versions of Python, qsmprep and its key dependencies."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform(),
                "qsmprep": __version__}
    for name in KEY_DEPENDENCIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _drop_empty(value):
    """TOML has no null: drop ``None`` values recursively."""
    if isinstance(value, dict):
        return {key: _drop_empty(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_empty(item) for item in value if item is not None]
    return value
