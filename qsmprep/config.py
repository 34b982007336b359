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

#: Packages whose versions are recorded with every run.
KEY_DEPENDENCIES = (
    "nipype", "pybids", "nibabel", "nilearn", "templateflow", "antspyx", "numpy", "scipy",
)

#: Algorithm choices per stage; the first entry of each is the default.
ALGORITHMS = {
    "masking": ("magnitude-threshold",),
    "unwrapping": ("romeo", "laplacian"),
    "echo_fit": ("weighted-linear", "nonlinear"),
    "background_removal": ("pdf", "vsharp", "resharp", "lbv"),
    "inversion": ("tv-admm", "tikhonov", "tkd", "rts", "medi-l1"),
    "reference": ("whole-brain", "csf"),
    "r2star": ("loglinear", "arlo"),
}


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
class WorkflowConfig:
    """Every processing choice. Defaults follow the 2024 ISMRM QSM consensus where it applies."""

    qsm_only: bool = False
    template: str = "MNI152NLin2009cAsym"
    atlas: str = ""  # user atlas label image in template space ("" = the qsmprep atlas)
    atlas_table: str = ""  # its TSV
    template_stats: bool = False  # also measure regions on the template-space Chimap
    random_seed: int = 0  # seeds ANTs and every other random choice
    reference_ranges: str = ""  # user table of CBS/PSP/PD reference ranges ("" = the package's)
    register_via_t1w: bool = False  # magnitude -> T1w -> template when the session has a T1w
    nuclei_refinement: bool = True  # refine the registration at the deep grey matter on the Chimap
    site_column: str = "site"  # participants.tsv / sessions.tsv column naming the site (group)
    field_strength_t: float = 0.0
    masking: str = ALGORITHMS["masking"][0]
    mask_threshold: float = 0.0
    quality_threshold: float = 0.5  # 0 disables the phase-quality refinement of the mask
    unwrapping: str = ALGORITHMS["unwrapping"][0]
    echo_fit: str = ALGORITHMS["echo_fit"][0]
    background_removal: str = ALGORITHMS["background_removal"][0]
    vsharp_max_radius_mm: float = 0.0  # 0: 24 mm, or 12 voxel edges if larger
    vsharp_min_radius_mm: float = 0.0  # 0: 2 voxel edges
    vsharp_threshold: float = 0.05
    resharp_radius_mm: float = 0.0  # 0: 2 voxel edges
    resharp_regularization: float = 1e-3
    inversion: str = ALGORITHMS["inversion"][0]
    tkd_threshold: float = 0.19
    tv_regularization: float = 1e-3
    tv_outside_weight: float = 0.1  # TV weight of the gradients leaving the mask
    rts_delta: float = 0.15
    medi_regularization: float = 1e-3
    tikhonov_regularization: float = 0.01
    inversion_max_iter: int = 100
    inversion_tolerance: float = 1e-2
    reference: str = ALGORITHMS["reference"][0]
    r2star: str = ALGORITHMS["r2star"][0]

    def vsharp_radii_mm(self, voxel_size) -> list:
        """V-SHARP sphere radii (mm) for a run with ``voxel_size``, largest first."""
        from .qsm.background import default_radii_mm

        return list(default_radii_mm(voxel_size, largest_mm=self.vsharp_max_radius_mm or None,
                                     smallest_mm=self.vsharp_min_radius_mm or None))

    def resharp_radius(self, voxel_size) -> float:
        """RESHARP sphere radius (mm) for a run with ``voxel_size``."""
        return float(self.resharp_radius_mm or 2.0 * max(voxel_size))

    def _background_parameters(self, voxel_size) -> dict:
        if self.background_removal == "resharp":
            return {"Algorithm": "resharp", "RadiusMM": self.resharp_radius(voxel_size),
                    "Regularization": self.resharp_regularization}
        if self.background_removal in ("pdf", "lbv"):
            from .qsm.background import PDF_PEEL_VOXELS, default_peel_voxels

            peeled = (PDF_PEEL_VOXELS if self.background_removal == "pdf"
                      else default_peel_voxels(voxel_size))
            return {"Algorithm": self.background_removal, "PeeledVoxels": peeled}
        return {"Algorithm": "vsharp", "RadiiMM": self.vsharp_radii_mm(voxel_size),
                "Threshold": self.vsharp_threshold}

    def stage_parameters(self, voxel_size) -> dict:
        """The algorithm and parameters of each stage for a run with ``voxel_size``, as written
        into every sidecar."""
        inversion_parameters = {
            "tkd": {"Threshold": self.tkd_threshold},
            "tikhonov": {"Regularization": self.tikhonov_regularization,
                         "MaxIterations": self.inversion_max_iter,
                         "Tolerance": self.inversion_tolerance},
            "tv-admm": {"Regularization": self.tv_regularization,
                        "GradientWeights": "magnitude edges in any echo",
                        "OutsideMaskWeight": self.tv_outside_weight},
            "rts": {"Delta": self.rts_delta},
            "medi-l1": {"Regularization": self.medi_regularization,
                        "GradientWeights": "magnitude edges in any echo"},
        }[self.inversion]
        masking = {"Algorithm": self.masking}
        if self.masking == "magnitude-threshold":
            masking["Threshold"] = self.mask_threshold or "automatic (Otsu)"
        return {
            "Masking": masking,
            "PhaseQualityMasking": {"Quality": "1 - echo-fit residual / (10 x median residual)",
                                    "Threshold": self.quality_threshold},
            "Unwrapping": {"Algorithm": self.unwrapping},
            "EchoCombination": {"Algorithm": self.echo_fit, "Weights": "magnitude squared"},
            "BackgroundFieldRemoval": self._background_parameters(voxel_size),
            "DipoleInversion": {"Algorithm": self.inversion, **inversion_parameters},
            "Referencing": {"Region": self.reference},
            "R2star": {"Algorithm": self.r2star},
        }


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
        return cls(
            execution=ExecutionConfig(**data.get("execution", {})),
            nipype=NipypeConfig(**data.get("nipype", {})),
            workflow=WorkflowConfig(**data.get("workflow", {})),
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
