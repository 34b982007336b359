"""Simulated BIDS datasets: the head phantom imaged by the forward model, written as raw BIDS
with its ground truth as a derivatives dataset beside it.

Two anatomies are available per scan (:attr:`PhantomSubject.anatomy`): the analytic head of
:mod:`qsmprep.phantom.head`, drawn on the scan's grid, and a digital subject built in MNI template
space from the template and qsmprep's atlas (:mod:`qsmprep.phantom.template_head`), moved into
the scanner by a known affine transform and smooth deformation and resampled onto the scan's grid.

Used by the test suite and by ``qsmprep-demo``. Output is deterministic: the same subjects and
seeds give byte-identical files (gzip without timestamps).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.derivatives import derivative_path, entity_prefix
from ..regions import HEALTHY_ADULT_PPB
from .head import HeadPhantom, make_head_phantom
from .signal import SimulatedAcquisition, oblique_affine, simulate_multiecho_gre
from .template_head import (
    TEMPLATE_SPACE,
    _template_to_native_matrix,
    make_template_phantom,
    native_grid_affine,
    region_labels,
    warp_to_native,
)

#: Where the ground truth goes, inside the raw dataset's ``derivatives/`` folder.
TRUTH_PIPELINE = "qsmprep-phantom"
#: Scanner-style integer range of phase in 'arbitrary' units.
ARBITRARY_PHASE_RANGE = (-4096, 4095)

#: Demo geometry: 2 mm isotropic, a 144 x 168 x 144 mm field of view (the head is drawn at
#: 0.875 of its reference size to fit), 4 echoes at 3 T; sub-02 is tilted about left-right.
DEMO_VOXEL_SIZE_MM = (2.0, 2.0, 2.0)
DEMO_ECHO_TIMES_S = (0.004, 0.009, 0.014, 0.019)
DEMO_FIELD_STRENGTH_T = 3.0
DEMO_OBLIQUE_ROTATION_DEG = (15.0, 0.0, 0.0)

#: Anatomies of :class:`PhantomSubject`.
ANATOMIES = ("analytic", "template")
#: A native grid holding the whole template-sized head at 2 mm (176 x 216 x 176 mm).
TEMPLATE_NATIVE_SHAPE_2MM = (88, 108, 88)
#: Air (voxels) kept around the head on the grid where a template subject's field is computed.
_FIELD_GRID_MARGIN_VOXELS = 3


@dataclass(frozen=True)
class PhantomSubject:
    """One simulated scan of the head phantom and how it is written to BIDS.

    ``anatomy`` chooses the head: ``"analytic"`` (:func:`~qsmprep.phantom.head.make_head_phantom`
    on the scan's grid, regions set by ``susceptibility_overrides_ppm``) or ``"template"`` (the
    digital subject of :func:`~qsmprep.phantom.template_head.make_template_phantom`, at the scan's
    finest voxel size, with atlas regions set by ``region_susceptibility_ppb`` such as
    ``{"putamen": {"L": 40, "R": 60}, "red_nucleus": 90}``, moved into the scanner by
    ``native_rotation_deg`` / ``native_scale`` / ``native_translation_mm`` and a smooth
    deformation of at most ``deformation_mm``, see
    :func:`~qsmprep.phantom.template_head.warp_to_native`). ``rotation_deg`` is always the
    orientation of the scan's grid in the scanner (an oblique slab); ``shape`` and
    ``voxel_size`` are the scan's grid (:data:`TEMPLATE_NATIVE_SHAPE_2MM` holds the whole
    template-sized head at 2 mm).
    """

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
    group: str | None = None  # the participant's group in participants.tsv (e.g. a diagnosis)
    # the participant's clinical scores in participants.tsv, e.g. {"UPDRS_III": 32, "MMSE": 26}
    clinical: dict = field(default_factory=dict, hash=False)
    anatomy: str = "analytic"
    region_susceptibility_ppb: dict = field(default_factory=dict, hash=False)
    native_rotation_deg: tuple = (0.0, 0.0, 0.0)
    native_translation_mm: tuple = (0.0, 0.0, 0.0)
    native_scale: float = 1.0
    deformation_mm: float = 0.0
    acq_time: str | None = None  # the session's acq_time in sessions.tsv (ISO 8601)

    def __post_init__(self):
        if self.anatomy not in ANATOMIES:
            raise ValueError(f"anatomy must be one of {ANATOMIES}, not {self.anatomy!r}")
        if self.anatomy == "analytic":
            native = {"region_susceptibility_ppb": bool(self.region_susceptibility_ppb),
                      "native_rotation_deg": any(self.native_rotation_deg),
                      "native_translation_mm": any(self.native_translation_mm),
                      "native_scale": self.native_scale != 1.0,
                      "deformation_mm": bool(self.deformation_mm)}
            given = [name for name, used in native.items() if used]
            if given:
                raise ValueError(f"{', '.join(given)} apply to anatomy='template' only")
        elif self.susceptibility_overrides_ppm:
            raise ValueError("susceptibility_overrides_ppm applies to anatomy='analytic'; "
                             "use region_susceptibility_ppb (ppb) with anatomy='template'")
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


def write_phantom_dataset(bids_dir, subjects, *, name="qsmprep phantom",
                          workers: int = 1) -> dict:
    """Simulate every scan of ``subjects`` and write a raw BIDS dataset to ``bids_dir``.

    Per scan: ``sub-<s>/[ses-<x>/]anat/<entities>_echo-<n>_part-<mag|phase>_MEGRE.nii.gz``
    (``part-real``/``part-imag`` with ``complex_parts``; no ``echo-`` for a single-echo
    ``T2starw``), each with a sidecar holding ``EchoTime``, ``MagneticFieldStrength`` and, on
    phase images, ``Units`` as configured. The ground truth is written under
    ``derivatives/qsmprep-phantom/`` with BIDS derivative names: ``Chimap`` (ppm, brain only),
    ``desc-brain_mask``, ``desc-local_fieldmap``, ``desc-total_fieldmap`` (Hz), ``R2starmap``,
    ``dseg`` (+ ``dseg.tsv``). Template subjects add ``desc-truth_regions.tsv`` (+ ``.json``,
    which also records the true template-to-scanner transform): per atlas region and hemisphere
    the assigned susceptibility ``chi_ppb`` (relative to CSF), ``mean_native_ppb`` (mean of the
    ``Chimap`` truth over the region's voxels in the scan, after resampling; ``n/a`` when the
    region lies outside the field of view) and ``n_voxels``.

    ``workers`` is the number of threads of the simulation's FFTs (the files do not depend on
    it).

    Returns
    -------
    dict
        ``entity prefix`` (e.g. ``sub-02_ses-1``) -> {truth name -> path}; template subjects
        also have ``regions`` (the TSV).
    """
    bids_dir = Path(bids_dir)
    truth_dir = bids_dir / "derivatives" / TRUTH_PIPELINE
    _write_json(bids_dir / "dataset_description.json", {
        "Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "qsmprep phantom"}]})
    _write_json(truth_dir / "dataset_description.json", {
        "Name": f"{name}: ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsmprep phantom"}]})
    anatomy = ("an analytic head phantom" if all(s.anatomy == "analytic" for s in subjects)
               else f"head phantoms (analytic, or built in {TEMPLATE_SPACE} space from the\n"
               "MNI template and qsmprep's atlas and moved into the scanner)")
    (bids_dir / "README").write_text(
        f"Simulated multi-echo gradient-echo data of {anatomy}, made by qsmprep's\n"
        "forward model (dipole convolution, multi-echo signal with M0, R2*, phase offset,\n"
        f"background field and noise). Ground truth: derivatives/{TRUTH_PIPELINE}/.\n")
    groups = {subject.subject: subject.group for subject in subjects}
    clinical = {}
    for subject in subjects:  # the first scan of a participant gives its scores
        clinical.setdefault(subject.subject, dict(subject.clinical))
    scores = list(dict.fromkeys(name for values in clinical.values() for name in values))
    columns = ["participant_id", *(["group"] if any(groups.values()) else []), *scores]
    lines = ["\t".join(columns) + "\n"]
    for label in sorted(groups):
        cells = [f"sub-{label}", *([groups[label] or "n/a"] if "group" in columns else [])]
        cells += [_cell(clinical[label].get(name)) for name in scores]
        lines.append("\t".join(cells) + "\n")
    (bids_dir / "participants.tsv").write_text("".join(lines))

    _write_sessions_tables(bids_dir, subjects)

    truths = {}
    for subject in subjects:
        truths[entity_prefix(subject.entities)] = _write_scan(bids_dir, truth_dir, subject,
                                                             workers=workers)
    return truths


#: Susceptibility (ppb relative to CSF) of the asymmetric digital subject: every region has
#: different values left and right, so a swap of sides or a wrong asymmetry sign shows.
ASYMMETRIC_REGIONS_PPB = {
    "putamen": {"L": 40, "R": 80},
    "caudate": {"L": 70, "R": 40},
    "globus_pallidus_externa": {"L": 150, "R": 110},
    "globus_pallidus_interna": {"L": 120, "R": 170},
    "subthalamic_nucleus": {"L": 80, "R": 130},
    "red_nucleus": {"L": 130, "R": 90},
    "substantia_nigra_compacta": {"L": 100, "R": 150},
    "substantia_nigra_reticulata": {"L": 160, "R": 110},
    "thalamus": {"L": 10, "R": 35},
    "motor_cortex": {"L": 60, "R": 20},
    "premotor_cortex": {"L": 15, "R": 35},
}


def asymmetric_digital_subject(voxel_size_mm: float = 2.0, **overrides) -> PhantomSubject:
    """The digital subject of the regional accuracy checks: :data:`ASYMMETRIC_REGIONS_PPB`,
    4 echoes at 3 T, head rotated (6, -4, 5) degrees, moved (3, -5, 4) mm and deformed by a
    smooth 2 mm field; the grid holds the whole head at ``voxel_size_mm``."""
    shape = tuple(int(round(n * 2.0 / voxel_size_mm)) for n in TEMPLATE_NATIVE_SHAPE_2MM)
    settings = {"subject": "01", "anatomy": "template", "shape": shape,
                "voxel_size": (voxel_size_mm,) * 3, "echo_times_s": DEMO_ECHO_TIMES_S,
                "seed": 11, "region_susceptibility_ppb": ASYMMETRIC_REGIONS_PPB,
                "native_rotation_deg": (6.0, -4.0, 5.0), "native_translation_mm": (3.0, -5.0, 4.0),
                "deformation_mm": 2.0}
    settings.update(overrides)
    return PhantomSubject(**settings)


#: Digital patients of the demo: regional susceptibility (ppb relative to CSF) set on the
#: healthy head, following the patterns of the clinical reference ranges (CBS: asymmetric
#: motor and premotor cortex iron, here left-dominant, moderate GPi/STN/RN; PSP: high,
#: symmetric GPi, STN and RN; PD: nigral iron, asymmetric, low cortex and pallidum) and of
#: the wider differential diagnosis (ALS, MSA, AD: see qsmprep.reports.cbs and .motor).
DIGITAL_PATIENTS = {
    "control": {},
    "cbs": {"motor_cortex": {"L": 110, "R": 45}, "premotor_cortex": {"L": 85, "R": 35},
            "globus_pallidus_interna": 115, "red_nucleus": 80, "subthalamic_nucleus": 90,
            "substantia_nigra_compacta": 140, "substantia_nigra_reticulata": 140,
            "putamen": {"L": 85, "R": 70}, "thalamus": 45},
    "psp": {"motor_cortex": 25, "globus_pallidus_interna": 250, "globus_pallidus_externa": 200,
            "red_nucleus": 200, "subthalamic_nucleus": 200, "substantia_nigra_compacta": 200,
            "substantia_nigra_reticulata": 200, "putamen": 100, "thalamus": 70},
    "pd": {"motor_cortex": 20, "premotor_cortex": 15, "globus_pallidus_interna": 60,
           "globus_pallidus_externa": 70, "red_nucleus": 70, "subthalamic_nucleus": 75,
           "substantia_nigra_compacta": {"L": 250, "R": 340},
           "substantia_nigra_reticulata": {"L": 230, "R": 320}, "putamen": 45, "thalamus": 30},
    # ALS: bilateral precentral iron, most in the deep half of the grey matter (Costagli 2016),
    # and in the corticospinal tract; basal ganglia healthy
    "als": {"motor_cortex": 40, "motor_cortex_deep": 80, "corticospinal_tract": -5},
    # MSA: putaminal iron above the pallidum's, cerebellar cortex, some nigral iron
    "msa": {"putamen": {"L": 190, "R": 150}, "globus_pallidus_interna": 140,
            "globus_pallidus_externa": 140, "cerebellar_cortex": 65,
            "substantia_nigra_compacta": 150, "substantia_nigra_reticulata": 150},
    # AD: hippocampal and temporoparietal cortical iron, basal ganglia spared
    "ad": {"hippocampus": 65, "superior_temporal_gyrus": 60, "posterior_cingulate": 60,
           "superior_parietal_lobule": 60},
}


#: Participants of the demo scanned in sessions: label -> ((session, acq_time), ...), written
#: to ``sub-<label>_sessions.tsv``. sub-cbs returns two years after its first scan.
DEMO_SESSIONS = {
    "cbs": (("1", "2021-03-02T10:00:00"), ("2", "2023-03-02T10:30:00")),
    "psp": (("1", "2022-06-14T09:15:00"),),
}
#: Iron gained (ppb) by each follow-up session of the demo over the previous one: per region
#: and side, ``"other"`` for every other region and side the participant has values for
#: (sub-cbs: +60 ppb in the motor cortex of the affected left side, +10 ppb elsewhere).
DEMO_FOLLOW_UP_GAIN_PPB = {"cbs": {"motor_cortex": {"L": 60.0}, "other": 10.0}}


def with_iron_gain(values: dict, gain_ppb: dict) -> dict:
    """Regional values (:attr:`PhantomSubject.region_susceptibility_ppb`) after a gain of
    iron: ``gain_ppb`` maps regions to ``{side: ppb}``, with ``"other"`` (ppb) for every other
    region and side of ``values``. Scalar (both-side) values become ``{"L", "R"}`` values.

    >>> with_iron_gain({"motor_cortex": 100, "putamen": {"L": 80, "R": 70}},
    ...                {"motor_cortex": {"L": 25.0}, "other": 10.0})
    {'motor_cortex': {'L': 125.0, 'R': 110.0}, 'putamen': {'L': 90.0, 'R': 80.0}}
    """
    other = float(gain_ppb.get("other", 0.0))
    gained = {}
    for region, value in values.items():
        sides = value if isinstance(value, dict) else {"L": value, "R": value}
        specific = gain_ppb.get(region, {})
        gained[region] = {side: float(ppb) + float(specific.get(side, other))
                          for side, ppb in sides.items()}
    return gained


def _cell(value) -> str:
    """A participants.tsv cell: ``n/a`` for a missing value, numbers without a needless
    ``.0``."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _simulated_motor_cortex_ppb(label: str) -> float:
    """The motor-cortex iron (ppb, mean of both sides) of a demo participant: its
    :data:`DIGITAL_PATIENTS` value, the healthy cortical grey matter when not set."""
    value = DIGITAL_PATIENTS.get(label, {}).get("motor_cortex", HEALTHY_ADULT_PPB["grey_matter"])
    return float(np.mean(list(value.values()))) if isinstance(value, dict) else float(value)


#: Cognition (MMSE, 0-30) and disease duration (years) of the demo participants; labels not
#: in :data:`DIGITAL_PATIENTS` are not simulated.
_DEMO_MMSE_AND_DURATION = {
    "control": (30, 0.0), "cbs": (24, 3.0), "psp": (26, 3.5), "pd": (28, 6.0),
    "als": (28, 2.0), "msa": (27, 4.0), "ad": (19, 5.0),
}
#: UPDRS-III of the demo's patients: 20 points plus 0.3 per ppb of motor-cortex iron above the
#: healthy cortex (15 ppb), so that motor severity rises monotonically with the simulated
#: motor-cortex iron (as the review reports, "higher cortical iron correlates with UPDRS-III
#: scores"); the control scores 1.
DEMO_UPDRS_BASE, DEMO_UPDRS_PER_PPB = 20.0, 0.3

#: Clinical columns of the demo's participants.tsv by participant label: ``UPDRS_III``,
#: ``MMSE`` and ``disease_duration`` (years).
DEMO_CLINICAL = {
    label: {"UPDRS_III": 1 if label == "control" else int(round(
                DEMO_UPDRS_BASE + DEMO_UPDRS_PER_PPB * (
                    _simulated_motor_cortex_ppb(label) - HEALTHY_ADULT_PPB["grey_matter"]))),
            "MMSE": mmse, "disease_duration": duration}
    for label, (mmse, duration) in _DEMO_MMSE_AND_DURATION.items()
}


def make_demo_dataset(bids_dir, *, seed: int = 0, workers: int = 1) -> list[PhantomSubject]:
    """The demo: seven digital participants made in template space, 2 mm, 4 echoes at 3 T.

    ``sub-control`` (healthy), ``sub-cbs``, ``sub-psp``, ``sub-pd``, ``sub-als``, ``sub-msa``
    and ``sub-ad`` carry the regional iron of :data:`DIGITAL_PATIENTS`; ``participants.tsv`` names their group and their clinical
    scores (:data:`DEMO_CLINICAL`). Each head is moved and
    deformed into its own native space; sub-psp (session 1) is scanned on an oblique slab.
    Participants in :data:`DEMO_SESSIONS` get one scan per session and a ``sessions.tsv``
    with the acquisition times: sub-cbs is scanned twice, two years apart, the second time
    with more iron (:data:`DEMO_FOLLOW_UP_GAIN_PPB`) and otherwise the same simulation (head
    position, deformation and noise seed), so that the change seen is the iron's.
    Small enough for the whole participant level, registration and reports included, to run
    in a few minutes on two cores.
    """
    grid = {"shape": TEMPLATE_NATIVE_SHAPE_2MM, "voxel_size": DEMO_VOXEL_SIZE_MM,
            "echo_times_s": DEMO_ECHO_TIMES_S, "field_strength_t": DEMO_FIELD_STRENGTH_T,
            "anatomy": "template"}
    poses = [((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), ((5.0, -3.0, 4.0), (2.0, -4.0, 3.0)),
             ((-4.0, 2.0, -3.0), (-3.0, 3.0, -2.0)), ((3.0, 4.0, -2.0), (1.0, 2.0, -4.0))]
    subjects = []
    for index, (label, values) in enumerate(DIGITAL_PATIENTS.items()):
        rotation, translation = poses[index % len(poses)]
        oblique = label == "psp"
        for visit, (session, acq_time) in enumerate(DEMO_SESSIONS.get(label, ((None, None),))):
            if visit:  # same head, pose and noise seed: only the iron changes
                values = with_iron_gain(values, DEMO_FOLLOW_UP_GAIN_PPB.get(label, {}))
            subjects.append(PhantomSubject(
                subject=label, session=session, acq_time=acq_time,
                rotation_deg=DEMO_OBLIQUE_ROTATION_DEG if oblique else (0.0, 0.0, 0.0),
                native_rotation_deg=rotation, native_translation_mm=translation,
                deformation_mm=2.0 if index else 0.0, seed=seed + index + 1,
                region_susceptibility_ppb=values, group=label.upper() if index else "HC",
                clinical=DEMO_CLINICAL.get(label, {}),
                **grid))
    write_phantom_dataset(bids_dir, subjects, name="qsmprep demo", workers=workers)
    return subjects


def _write_sessions_tables(bids_dir: Path, subjects) -> None:
    """``sub-<label>/sub-<label>_sessions.tsv`` (``session_id``, ``acq_time``; ``n/a`` when
    a scan has none) for every participant scanned in sessions."""
    by_subject: dict[str, dict[str, str | None]] = {}
    for subject in subjects:
        if subject.session is not None:
            by_subject.setdefault(subject.subject, {})[str(subject.session)] = subject.acq_time
    for label, sessions in by_subject.items():
        lines = ["session_id\tacq_time\n"] + [f"ses-{session}\t{acq_time or 'n/a'}\n"
                                               for session, acq_time in sorted(sessions.items())]
        path = Path(bids_dir) / f"sub-{label}" / f"sub-{label}_sessions.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines))


def _write_scan(bids_dir: Path, truth_dir: Path, subject: PhantomSubject, *,
                workers: int = 1) -> dict:
    transform = None
    if subject.anatomy == "template":
        phantom, affine, acquisition, transform = simulate_template_subject(subject,
                                                                            workers=workers)
    else:
        overrides = subject.susceptibility_overrides_ppm or None
        phantom = make_head_phantom(shape=subject.shape, voxel_size=subject.voxel_size,
                                    seed=subject.seed, susceptibility_overrides_ppm=overrides)
        affine = oblique_affine(shape=subject.shape, voxel_size=subject.voxel_size,
                                rotation_deg=subject.rotation_deg)
        acquisition = simulate_multiecho_gre(
            phantom, echo_times_s=subject.echo_times_s, field_strength_t=subject.field_strength_t,
            affine=affine, snr=subject.snr, seed=subject.seed, workers=workers)

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
    if transform is not None:
        paths["regions"] = _write_region_truth(truth_dir, subject, phantom, acquisition, transform)
    return paths


def simulate_template_subject(subject: PhantomSubject, *, workers: int = 1):
    """Build, move and image the template digital subject of ``subject``.

    The field is computed on a grid that extends the scan's grid (same orientation and voxels)
    until it holds the whole head with a few voxels of air, then everything is cropped to the
    scan's grid: tissue cut by the field of view thus still contributes its field, as in a
    real head, instead of ending at an artificial tissue-air surface on the edge of the image.

    Returns
    -------
    phantom : HeadPhantom
        The subject on the scan's grid.
    affine : ndarray (4, 4)
        The scan's voxel-to-world affine.
    acquisition : SimulatedAcquisition
        On the scan's grid.
    transform : NativeTransform
        Template -> scanner relation, with the displacement field on the scan's grid.
    """
    shape = tuple(int(n) for n in subject.shape)
    voxel_size = tuple(float(v) for v in subject.voxel_size)
    template, template_affine = make_template_phantom(
        voxel_size_mm=min(voxel_size),
        region_susceptibility_ppb=subject.region_susceptibility_ppb or None, seed=subject.seed)
    motion = {"rotation_deg": subject.native_rotation_deg,
              "translation_mm": subject.native_translation_mm, "scale": subject.native_scale}
    affine = native_grid_affine(template, template_affine, native_shape=shape,
                                native_voxel_size=voxel_size,
                                grid_rotation_deg=subject.rotation_deg, **motion)
    low, high = _field_grid_padding(template, template_affine, affine, shape, subject)
    field_affine = affine.copy()
    field_affine[:3, 3] = affine[:3, :3] @ -low + affine[:3, 3]
    field_shape = tuple(int(n) for n in np.asarray(shape) + low + high)
    native, _, transform = warp_to_native(
        template, template_affine, deformation_mm=subject.deformation_mm,
        native_shape=field_shape, native_voxel_size=voxel_size, seed=subject.seed,
        grid_rotation_deg=subject.rotation_deg, native_affine=field_affine, **motion)
    del template
    acquisition = simulate_multiecho_gre(
        native, echo_times_s=subject.echo_times_s, field_strength_t=subject.field_strength_t,
        affine=field_affine, snr=subject.snr, seed=subject.seed, workers=workers)
    box = tuple(slice(int(a), int(a) + n) for a, n in zip(low, shape))
    phantom = replace(native, **{name: np.ascontiguousarray(getattr(native, name)[box])
                                 for name in ("susceptibility_ppm", "brain_mask", "head_mask",
                                              "m0", "r2star_hz", "labels")})
    acquisition = _crop_acquisition(acquisition, box, affine, phantom)
    displacement = np.ascontiguousarray(transform.displacement_mm[(slice(None),) + box])
    transform = replace(transform, native_affine=affine, displacement_mm=displacement)
    return phantom, affine, acquisition, transform


def _field_grid_padding(template: HeadPhantom, template_affine, affine, shape, subject):
    """Voxels to add below and above each axis of the scan's grid so that it holds the head."""
    step = 2
    head = np.argwhere(template.head_mask[::step, ::step, ::step]) * step
    matrix = _template_to_native_matrix(subject.native_rotation_deg, subject.native_translation_mm,
                                        subject.native_scale)
    to_scan = np.linalg.inv(affine) @ matrix @ np.asarray(template_affine, float)
    index = nib.affines.apply_affine(to_scan, head)
    margin = _FIELD_GRID_MARGIN_VOXELS + step + np.ceil(
        float(subject.deformation_mm) / np.asarray(subject.voxel_size, float))
    low = np.maximum(np.ceil(-index.min(axis=0) + margin), 0).astype(int)
    high = np.maximum(np.ceil(index.max(axis=0) - (np.asarray(shape) - 1) + margin), 0).astype(int)
    return low, high


def _crop_acquisition(acquisition: SimulatedAcquisition, box, affine, phantom: HeadPhantom):
    """``acquisition`` restricted to the voxels ``box`` (given the matching affine and phantom)."""
    spatial = ("total_field_hz", "local_field_hz", "background_field_hz", "susceptibility_ppm",
               "brain_mask", "head_mask", "m0", "r2star_hz", "phase_offset_rad", "shim_field_hz")
    cropped = {name: np.ascontiguousarray(getattr(acquisition, name)[box]) for name in spatial}
    for name in ("magnitude", "phase"):
        cropped[name] = np.ascontiguousarray(getattr(acquisition, name)[box + (slice(None),)])
    return replace(acquisition, affine=np.asarray(affine, float), phantom=phantom, **cropped)


def _write_region_truth(truth_dir: Path, subject: PhantomSubject, phantom: HeadPhantom,
                        acquisition: SimulatedAcquisition, transform) -> Path:
    """The regional truth table of a template subject and its sidecar."""
    path = truth_dir / derivative_path(subject.entities, suffix="regions", desc="truth",
                                       extension=".tsv")
    from qsmprep.atlases import COMPOSITE_REGIONS

    chi = acquisition.susceptibility_ppm
    lines = ["region\themisphere\tchi_ppb\tmean_native_ppb\tn_voxels\n"]
    labels_of = region_labels(phantom.label_names)
    rows = [(region, side, [index]) for (region, side), index
            in sorted(labels_of.items(), key=lambda item: item[1])]
    for composite, parts in COMPOSITE_REGIONS.items():
        for side in ("L", "R"):
            indices = [labels_of[(part, side)] for part in parts if (part, side) in labels_of]
            if len(indices) == len(parts):
                rows.append((composite, side, indices))
    for region, side, indices in rows:
        inside = np.isin(phantom.labels, indices)
        count = int(inside.sum())
        assigned_ppb = [1000.0 * phantom.region_susceptibility_ppm[phantom.label_names[index]]
                        for index in indices]
        weights = [max(int(np.count_nonzero(phantom.labels == index)), 1) for index in indices]
        assigned = float(np.average(assigned_ppb, weights=weights))
        mean = f"{1000.0 * float(chi[inside].mean(dtype=np.float64)):.4f}" if count else "n/a"
        lines.append(f"{region}\t{side}\t{assigned:.4f}\t{mean}\t{count}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    _write_json(path.with_suffix(".json"), {
        "Description": "ground truth: susceptibility of the atlas regions of the digital subject",
        "region": {"Description": "atlas region (qsmprep atlas names)"},
        "hemisphere": {"Description": "L: left (template x < 0), R: right"},
        "chi_ppb": {"Description": "susceptibility assigned to the region in template space, "
                                   "relative to CSF (composite regions: the native-voxel-weighted "
                                   "mean of their parts' values)", "Units": "ppb"},
        "mean_native_ppb": {"Description": "mean of the Chimap ground truth over the region's "
                                           "voxels on the scan's grid (nearest-neighbour labels, "
                                           "linearly interpolated susceptibility)",
                            "Units": "ppb"},
        "n_voxels": {"Description": "voxels of the region on the scan's grid"},
        "NativeTransform": transform.describe(),
    })
    return path


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


__all__ = ["ANATOMIES", "ARBITRARY_PHASE_RANGE", "DEMO_ECHO_TIMES_S", "DEMO_FIELD_STRENGTH_T",
           "ASYMMETRIC_REGIONS_PPB", "DEMO_OBLIQUE_ROTATION_DEG", "DEMO_SESSIONS",
           "DEMO_FOLLOW_UP_GAIN_PPB", "with_iron_gain", "DIGITAL_PATIENTS", "asymmetric_digital_subject", "DEMO_VOXEL_SIZE_MM", "TRUTH_PIPELINE",
           "TEMPLATE_NATIVE_SHAPE_2MM", "PhantomSubject", "make_demo_dataset",
           "simulate_template_subject", "write_phantom_dataset"]
