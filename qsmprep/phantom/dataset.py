"""Simulated BIDS datasets: the head phantom imaged by the forward model, written as raw BIDS
with its ground truth as a derivatives dataset beside it.

Used by the test suite and by ``qsmprep-demo``. Output is deterministic: the same subjects and
seeds give byte-identical files (gzip without timestamps).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.derivatives import derivative_path, entity_prefix
from .head import make_head_phantom
from .signal import oblique_affine, simulate_multiecho_gre

#: Where the ground truth goes, inside the raw dataset's ``derivatives/`` folder.
TRUTH_PIPELINE = "qsmprep-phantom"
#: Scanner-style integer range of phase in 'arbitrary' units.
ARBITRARY_PHASE_RANGE = (-4096, 4095)

#: Demo geometry: 2 mm isotropic, a 144 x 168 x 144 mm field of view (the head is drawn at
#: 0.875 of its reference size to fit), 4 echoes at 3 T; sub-02 is tilted about left-right.
DEMO_SHAPE = (72, 84, 72)
DEMO_VOXEL_SIZE_MM = (2.0, 2.0, 2.0)
DEMO_ECHO_TIMES_S = (0.004, 0.009, 0.014, 0.019)
DEMO_FIELD_STRENGTH_T = 3.0
DEMO_OBLIQUE_ROTATION_DEG = (15.0, 0.0, 0.0)


@dataclass(frozen=True)
class PhantomSubject:
    """One simulated scan of the head phantom and how it is written to BIDS."""

    subject: str = "01"
    session: str | None = None
    acquisition: str | None = None
    run: str | None = None
    rotation_deg: tuple = (0.0, 0.0, 0.0)
    voxel_size: tuple = (2.0, 2.0, 2.0)
    shape: tuple = (80, 96, 80)
    echo_times_s: tuple = (0.004, 0.009, 0.014, 0.019)
    field_strength_t: float = 3.0
    phase_units: str | None = "rad"
    suffix: str = "MEGRE"
    complex_parts: bool = False
    snr: float = 100.0
    seed: int = 0
    susceptibility_overrides_ppm: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.phase_units not in ("rad", "arbitrary", None):
            raise ValueError("phase_units must be 'rad', 'arbitrary' or None, "
                             f"not {self.phase_units!r}")
        if self.suffix not in ("MEGRE", "T2starw"):
            raise ValueError(f"suffix must be 'MEGRE' or 'T2starw', not {self.suffix!r}")
        if self.suffix == "T2starw" and len(self.echo_times_s) != 1:
            raise ValueError("a T2starw scan has exactly one echo")
        for entity in ("subject", "session", "acquisition", "run"):
            value = getattr(self, entity)
            if value is not None and not (isinstance(value, (str, int)) and str(value).isalnum()):
                raise ValueError(f"BIDS labels are alphanumeric: {entity}={value!r}")

    @property
    def entities(self) -> dict:
        """BIDS entities of the scan (pybids names)."""
        names = {"subject": self.subject, "session": self.session,
                 "acquisition": self.acquisition, "run": self.run}
        return {key: value for key, value in names.items() if value is not None}


def write_phantom_dataset(bids_dir, subjects, *, name="qsmprep phantom") -> dict:
    """Simulate every scan of ``subjects`` and write a raw BIDS dataset to ``bids_dir``.

    Per scan: ``sub-<s>/[ses-<x>/]anat/<entities>_echo-<n>_part-<mag|phase>_MEGRE.nii.gz``
    (``part-real``/``part-imag`` with ``complex_parts``; no ``echo-`` for a single-echo
    ``T2starw``), each with a sidecar holding ``EchoTime``, ``MagneticFieldStrength`` and, on
    phase images, ``Units`` as configured. The ground truth is written under
    ``derivatives/qsmprep-phantom/`` with BIDS derivative names: ``Chimap`` (ppm, brain only),
    ``desc-brain_mask``, ``desc-local_fieldmap``, ``desc-total_fieldmap`` (Hz), ``R2starmap``,
    ``dseg`` (+ ``dseg.tsv``).

    Returns
    -------
    dict
        ``entity prefix`` (e.g. ``sub-02_ses-1``) -> {truth name -> path}.
    """
    bids_dir = Path(bids_dir)
    truth_dir = bids_dir / "derivatives" / TRUTH_PIPELINE
    _write_json(bids_dir / "dataset_description.json", {
        "Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "qsmprep phantom"}]})
    _write_json(truth_dir / "dataset_description.json", {
        "Name": f"{name}: ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsmprep phantom"}]})
    (bids_dir / "README").write_text(
        "Simulated multi-echo gradient-echo data of an analytic head phantom, made by qsmprep's\n"
        "forward model (dipole convolution, multi-echo signal with M0, R2*, phase offset,\n"
        f"background field and noise). Ground truth: derivatives/{TRUTH_PIPELINE}/.\n")
    participants = sorted({subject.subject for subject in subjects})
    (bids_dir / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{label}\n" for label in participants))

    truths = {}
    for subject in subjects:
        truths[entity_prefix(subject.entities)] = _write_scan(bids_dir, truth_dir, subject)
    return truths


def make_demo_dataset(bids_dir, *, seed: int = 0) -> list[PhantomSubject]:
    """The demo: two participants at 2 mm, 4 echoes at 3 T; sub-02 (session 1) is oblique.

    Small enough for the whole participant level to run in about a minute on two cores.
    """
    grid = {"shape": DEMO_SHAPE, "voxel_size": DEMO_VOXEL_SIZE_MM,
            "echo_times_s": DEMO_ECHO_TIMES_S, "field_strength_t": DEMO_FIELD_STRENGTH_T}
    subjects = [
        PhantomSubject(subject="01", seed=seed + 1, **grid),
        PhantomSubject(subject="02", session="1", rotation_deg=DEMO_OBLIQUE_ROTATION_DEG,
                       seed=seed + 2, **grid),
    ]
    write_phantom_dataset(bids_dir, subjects, name="qsmprep demo")
    return subjects


def _write_scan(bids_dir: Path, truth_dir: Path, subject: PhantomSubject) -> dict:
    phantom = make_head_phantom(shape=subject.shape, voxel_size=subject.voxel_size,
                                seed=subject.seed,
                                susceptibility_overrides_ppm=subject.susceptibility_overrides_ppm
                                or None)
    affine = oblique_affine(shape=subject.shape, voxel_size=subject.voxel_size,
                            rotation_deg=subject.rotation_deg)
    acquisition = simulate_multiecho_gre(
        phantom, echo_times_s=subject.echo_times_s, field_strength_t=subject.field_strength_t,
        affine=affine, snr=subject.snr, seed=subject.seed)

    prefix = entity_prefix(subject.entities)
    anat = Path(bids_dir) / Path(derivative_path(subject.entities, suffix="x")).parent
    phase_scale = _phase_scale(subject.phase_units)
    for echo, echo_time in enumerate(subject.echo_times_s):
        magnitude = acquisition.magnitude[..., echo]
        phase = acquisition.phase[..., echo]
        if subject.complex_parts:
            parts = {"real": magnitude * np.cos(phase), "imag": magnitude * np.sin(phase)}
        else:
            parts = {"mag": magnitude, "phase": phase_scale(phase)}
        echo_entity = "" if subject.suffix == "T2starw" else f"_echo-{echo + 1}"
        for part, data in parts.items():
            stem = anat / f"{prefix}{echo_entity}_part-{part}_{subject.suffix}"
            _write_nifti(stem.with_suffix(".nii.gz"), data, affine)
            metadata = {"EchoTime": echo_time,
                        "MagneticFieldStrength": subject.field_strength_t,
                        "Manufacturer": "qsmprep phantom"}
            if part == "phase" and subject.phase_units is not None:
                metadata["Units"] = subject.phase_units
            _write_json(stem.with_suffix(".json"), metadata)

    truth = {
        "Chimap": (acquisition.susceptibility_ppm, {"suffix": "Chimap"}, {"Units": "ppm"}),
        "brain_mask": (acquisition.brain_mask, {"suffix": "mask", "desc": "brain"}, {}),
        "local_field": (acquisition.local_field_hz, {"suffix": "fieldmap", "desc": "local"},
                        {"Units": "Hz"}),
        "total_field": (acquisition.total_field_hz, {"suffix": "fieldmap", "desc": "total"},
                        {"Units": "Hz"}),
        "R2starmap": (acquisition.r2star_hz, {"suffix": "R2starmap"}, {"Units": "1/s"}),
        "dseg": (phantom.labels, {"suffix": "dseg"}, {}),
    }
    paths = {}
    for key, (data, naming, metadata) in truth.items():
        path = truth_dir / derivative_path(subject.entities, **naming)
        _write_nifti(path, data, affine)
        _write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                    {**metadata, "Description": f"ground truth: {key}"})
        paths[key] = path
    labels_tsv = paths["dseg"].with_name(paths["dseg"].name.replace(".nii.gz", ".tsv"))
    labels_tsv.write_text("index\tname\n" + "".join(
        f"{index}\t{label}\n" for index, label in sorted(phantom.label_names.items())))
    return paths


def _phase_scale(units):
    """Phase (rad, [-pi, pi)) as stored on disk for the given ``Units``."""
    if units == "arbitrary":
        low, high = ARBITRARY_PHASE_RANGE

        def to_integers(phase):
            scaled = (phase + np.pi) / (2 * np.pi) * (high - low + 1) + low
            return np.clip(np.round(scaled), low, high).astype(np.int16)

        return to_integers
    return lambda phase: phase


def _write_nifti(path: Path, data, affine) -> None:
    """Deterministic .nii.gz (no gzip timestamp), float32 / uint8 / int16 by content."""
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype.kind == "f":
        data = data.astype(np.float32)
    elif data.dtype.kind in "iu" and data.dtype != np.uint8:
        data = data.astype(np.int16)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image.to_bytes(), mtime=0))


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


__all__ = ["ARBITRARY_PHASE_RANGE", "DEMO_ECHO_TIMES_S", "DEMO_FIELD_STRENGTH_T",
           "DEMO_OBLIQUE_ROTATION_DEG", "DEMO_SHAPE", "DEMO_VOXEL_SIZE_MM", "TRUTH_PIPELINE",
           "PhantomSubject", "make_demo_dataset", "write_phantom_dataset"]
