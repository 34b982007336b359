"""A corpus of bad and unusual inputs, each run through the installed command.

Every case asserts the exit code, words of the message that name the file or option and the
problem, no traceback on the console, the BIDS input byte-identical afterwards, and no
temporary file left in the output folder. The cases cover metadata, image files, units,
non-finite values, echo counts, geometry, paths and options; ``test_cli_errors.py``,
``test_input_variants.py``, ``test_resume.py`` and ``test_container.py`` hold the others
(interruption, concurrency, permissions, read-only installs).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_cli, small_subject, tree_checksum

from qsmprep.phantom.dataset import write_phantom_dataset

TINY = {"shape": (24, 28, 24), "voxel_size": (4.0, 4.0, 4.0)}
ANAT = Path("sub-01") / "anat"


@pytest.fixture(scope="module")
def template_bids(tmp_path_factory):
    bids_dir = tmp_path_factory.mktemp("corpus") / "bids"
    write_phantom_dataset(bids_dir, [small_subject(subject="01", **TINY)])
    return bids_dir


def _file(bids_dir, echo, part, extension=".nii.gz"):
    return bids_dir / ANAT / f"sub-01_echo-{echo}_part-{part}_MEGRE{extension}"


def _edit_sidecars(bids_dir, change, parts=("mag", "phase"), echoes=(1, 2, 3, 4)):
    for echo in echoes:
        for part in parts:
            path = _file(bids_dir, echo, part, ".json")
            metadata = json.loads(path.read_text())
            change(metadata)
            path.write_text(json.dumps(metadata))


def _edit_image(bids_dir, echo, part, change):
    path = _file(bids_dir, echo, part)
    image = nib.load(path)
    data = change(image.get_fdata(dtype=np.float32))
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), image.affine, image.header), path)


def _edit_all_images(bids_dir, part, change):
    for echo in (1, 2, 3, 4):
        _edit_image(bids_dir, echo, part, change)


def _remove_echoes(bids_dir, echoes):
    for echo in echoes:
        for path in (bids_dir / ANAT).glob(f"sub-01_echo-{echo}_part-*"):
            path.unlink()


def _set(**values):
    return lambda metadata: metadata.update(values)


def _drop(key):
    return lambda metadata: metadata.pop(key, None)


def _outside_nan(data):
    data = data.copy()
    data[:, :, :4] = np.nan
    data[:, :, -4:] = np.nan
    data[:4] = np.nan
    data[-4:] = np.nan
    return data


def _swap_parts(bids_dir, tmp_path):
    for echo in (1, 2, 3, 4):
        magnitude, phase = _file(bids_dir, echo, "mag"), _file(bids_dir, echo, "phase")
        spare = tmp_path / "spare.nii.gz"
        shutil.copyfile(magnitude, spare)
        shutil.copyfile(phase, magnitude)
        shutil.copyfile(spare, phase)


def _truncate(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _shift_origin(bids_dir):
    path = _file(bids_dir, 2, "phase")
    image = nib.load(path)
    affine = image.affine.copy()
    affine[:3, 3] += 12.0
    nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32), affine), path)


def _oblique(bids_dir):
    angle = np.deg2rad(15)
    rotation = np.array([[1, 0, 0, 0], [0, np.cos(angle), -np.sin(angle), 0],
                         [0, np.sin(angle), np.cos(angle), 0], [0, 0, 0, 1]])
    for path in (bids_dir / ANAT).glob("*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32), rotation @ image.affine),
                 path)


def _to_integers(data):
    """Phase in radians as a scanner stores it: whole numbers from -4096 to 4095."""
    return np.round((data + np.pi) / (2 * np.pi) * 8191 - 4096)


def _four_dimensional(bids_dir):
    path = _file(bids_dir, 2, "mag")
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), image.affine), path)


def _anisotropic(bids_dir):
    for path in (bids_dir / ANAT).glob("*.nii.gz"):
        image = nib.load(path)
        affine = image.affine.copy()
        affine[:3, 2] *= 0.5  # 4 x 4 x 2 mm voxels
        nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32), affine), path)


def _write(relative, text):
    def write(bids_dir, tmp_path):
        (bids_dir / relative).write_text(text)
    return write


#: (id, change of the dataset (bids_dir, tmp_path) -> None, extra options, exit code, words)
CASES = [
    # --- metadata -----------------------------------------------------------------------
    ("sidecar-not-json", _write(ANAT / "sub-01_echo-2_part-phase_MEGRE.json", "{EchoTime: 0.009"),
     [], 65, ["sub-01_echo-2_part-phase_MEGRE.json", "JSON"]),
    ("sidecar-a-list", _write(ANAT / "sub-01_echo-1_part-mag_MEGRE.json", "[0.004, 3]"),
     [], 65, ["sub-01_echo-1_part-mag_MEGRE.json", "object"]),
    ("echo-time-text", lambda b, t: _edit_sidecars(b, _set(EchoTime="nine ms"), echoes=(2,)),
     [], 65, ["EchoTime", "sub-01_echo-2"]),
    ("echo-time-negative", lambda b, t: _edit_sidecars(b, _set(EchoTime=-0.009), echoes=(2,)),
     [], 65, ["EchoTime", "sub-01_echo-2"]),
    ("echo-time-in-ms", lambda b, t: _edit_sidecars(b, _set(EchoTime=9.0), echoes=(2,)),
     [], 65, ["EchoTime", "sub-01_echo-2"]),
    ("echo-times-repeated", lambda b, t: _edit_sidecars(b, _set(EchoTime=0.004), echoes=(2,)),
     [], 65, ["EchoTime", "0.004"]),
    ("field-strength-missing", lambda b, t: _edit_sidecars(b, _drop("MagneticFieldStrength")),
     [], 65, ["MagneticFieldStrength", "--field-strength"]),
    ("field-strength-text", lambda b, t: _edit_sidecars(
        b, _set(MagneticFieldStrength="three tesla")), [], 65, ["MagneticFieldStrength"]),
    ("field-strength-with-unit", lambda b, t: _edit_sidecars(b, _set(MagneticFieldStrength="3T")),
     [], 0, []),
    ("field-strength-given", lambda b, t: _edit_sidecars(b, _drop("MagneticFieldStrength")),
     ["--field-strength", "3"], 0, []),
    ("phase-units-degrees", lambda b, t: _edit_sidecars(b, _set(Units="deg"), parts=("phase",)),
     [], 65, ["Units", "deg"]),
    ("phase-units-missing", lambda b, t: _edit_sidecars(b, _drop("Units"), parts=("phase",)),
     [], 0, ["inferred"]),
    ("echo-times-out-of-order", lambda b, t: (
        _edit_sidecars(b, _set(EchoTime=0.009), echoes=(1,)),
        _edit_sidecars(b, _set(EchoTime=0.004), echoes=(2,))), [], 0, []),
    ("dataset-description-missing", lambda b, t: (b / "dataset_description.json").unlink(),
     [], 16, ["dataset_description.json"]),
    ("dataset-description-not-json", _write("dataset_description.json", "Name: x"),
     [], 16, ["dataset_description.json"]),
    # --- image files --------------------------------------------------------------------
    ("truncated-gzip", lambda b, t: _truncate(_file(b, 3, "phase")),
     [], 65, ["sub-01_echo-3_part-phase_MEGRE.nii.gz"]),
    ("empty-file", lambda b, t: _file(b, 2, "mag").write_bytes(b""),
     [], 65, ["sub-01_echo-2_part-mag_MEGRE.nii.gz"]),
    ("not-an-image", lambda b, t: _file(b, 2, "mag").write_bytes(gzip.compress(b"hello")),
     [], 65, ["sub-01_echo-2_part-mag_MEGRE.nii.gz"]),
    ("phase-missing", lambda b, t: [p.unlink() for p in (b / ANAT).glob("*echo-4_part-phase*")],
     [], 66, ["sub-01_echo-4_part-mag_MEGRE", "phase"]),
    ("magnitude-only", lambda b, t: [p.unlink() for p in (b / ANAT).glob("*part-phase*")],
     [], 66, ["phase"]),
    ("four-dimensional-echo", lambda b, t: _four_dimensional(b),
     [], 65, ["sub-01_echo-2_part-mag_MEGRE.nii.gz", "4-D"]),
    ("grids-differ", lambda b, t: _shift_origin(b),
     [], 65, ["sub-01_echo-2_part-phase_MEGRE.nii.gz"]),
    # --- values -------------------------------------------------------------------------
    ("magnitude-phase-swapped", _swap_parts, [], 65, ["swapped", "part-mag"]),
    ("phase-constant", lambda b, t: _edit_all_images(b, "phase", np.zeros_like),
     [], 65, ["constant", "phase"]),
    ("phase-unwrapped-rad", lambda b, t: _edit_all_images(b, "phase", lambda d: d * 7.0),
     [], 0, ["wrapped into [-pi, pi)"]),
    ("phase-scanner-integers", lambda b, t: (
        _edit_all_images(b, "phase", _to_integers),
        _edit_sidecars(b, _set(Units="arbitrary"), parts=("phase",))), [], 0, []),
    ("integers-labelled-rad", lambda b, t: _edit_all_images(b, "phase", _to_integers),
     [], 0, ["whole numbers", "arbitrary"]),
    ("magnitude-all-zero", lambda b, t: _edit_all_images(b, "mag", np.zeros_like),
     [], 65, ["zero in every voxel"]),
    ("one-echo-without-signal", lambda b, t: _edit_image(b, 3, "mag", np.zeros_like),
     [], 65, ["Echo 3", "sub-01_echo-3_part-mag_MEGRE.nii.gz", "no signal"]),
    ("phase-all-nan", lambda b, t: _edit_image(b, 2, "phase", lambda d: np.full_like(d, np.nan)),
     [], 65, ["NaN", "sub-01_echo-2_part-phase_MEGRE.nii.gz"]),
    ("masked-export", lambda b, t: [_edit_all_images(b, part, _outside_nan)
                                    for part in ("mag", "phase")],
     [], 0, ["masked export"]),
    ("a-few-infinite-voxels", lambda b, t: _edit_image(
        b, 1, "phase", lambda d: np.where(np.arange(d.size).reshape(d.shape) % 997 == 0,
                                          np.inf, d)),
     [], 0, ["NaN or infinite"]),
    # --- echoes and geometry -----------------------------------------------------------
    ("single-echo", lambda b, t: _remove_echoes(b, (2, 3, 4)), [], 0, []),
    ("two-echoes", lambda b, t: _remove_echoes(b, (3, 4)), [], 0, []),
    ("oblique", lambda b, t: _oblique(b), [], 0, []),
    ("anisotropic", lambda b, t: _anisotropic(b), [], 0, []),
    # --- paths and options ---------------------------------------------------------------
    ("output-is-a-file", lambda b, t: (t / "out").write_text("not a folder"),
     [], 73, ["out"]),
    ("work-inside-input", lambda b, t: None, ["-w", "{bids}/work"], 64, ["work folder", "inside"]),
    ("output-is-the-input", lambda b, t: None, ["OUT={bids}"], 64, ["inside"]),
    ("unknown-session", lambda b, t: None, ["--session-label", "7"], 18, ["7"]),
    ("bids-filter-matches-nothing", _write("../filter.json", '{"megre": {"acquisition": "x"}}'),
     ["--bids-filter-file", "{tmp}/filter.json"], 18, ["filter"]),
    ("memory-zero", lambda b, t: None, ["--mem-gb", "0"], 64, ["--mem-gb"]),
    ("seed-negative", lambda b, t: None, ["--random-seed", "-1"], 64, ["--random-seed"]),
    ("reference-ranges-missing", lambda b, t: None, ["--reference-ranges", "{tmp}/r.tsv"], 66,
     ["--reference-ranges", "r.tsv"]),
    ("unknown-participant", lambda b, t: None, ["--participant-label", "99"], 18, ["99"]),
    ("bids-filter-not-json", _write("../filter.json", "{megre: "),
     ["--bids-filter-file", "{tmp}/filter.json"], 64, ["filter.json"]),
    ("brain-mask-dir-without-mask", lambda b, t: (t / "masks").mkdir(),
     ["--brain-mask-dir", "{tmp}/masks"], 66, ["--brain-mask-dir", "sub-01"]),
    ("mistyped-option", lambda b, t: None, ["--inversoin", "tkd"], 64, ["did you mean --inversion"]),
    ("mistyped-level", lambda b, t: None, ["LEVEL=partcipant"], 17, ["did you mean participant"]),
    ("number-as-word", lambda b, t: None, ["--nprocs", "two"], 64, ["--nprocs", "'two'"]),
    ("quality-threshold-one", lambda b, t: None, ["--quality-threshold", "1"], 64,
     ["--quality-threshold", "< 1"]),
    ("negative-lambda", lambda b, t: None, ["--tv-lambda", "-1"], 64, ["--tv-lambda"]),
    ("unknown-inversion", lambda b, t: None, ["--inversion", "ndi"], 64, ["--inversion", "ndi"]),
    ("atlas-without-table", lambda b, t: (t / "atlas.nii.gz").write_bytes(b""),
     ["--atlas", "{tmp}/atlas.nii.gz"], 64, ["--atlas-table"]),
    ("threads-above-processes", lambda b, t: None, ["--nprocs", "1", "--omp-nthreads", "2"], 64,
     ["--omp-nthreads"]),
]


@pytest.mark.parametrize("change, extra, expected_code, expected_words",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_or_unusual_input(template_bids, tmp_path, change, extra, expected_code,
                              expected_words):
    bids_dir = tmp_path / "bids"
    shutil.copytree(template_bids, bids_dir)
    change(bids_dir, tmp_path)
    checksum = tree_checksum(bids_dir)
    level, output_dir = "participant", tmp_path / "out"
    options = []
    for option in extra:
        if option.startswith("LEVEL="):
            level = option.removeprefix("LEVEL=")
        elif option.startswith("OUT="):
            output_dir = Path(option.removeprefix("OUT=").format(bids=bids_dir, tmp=tmp_path))
        else:
            options.append(option.format(bids=bids_dir, tmp=tmp_path))
    if "-w" not in options:
        options += ["-w", str(tmp_path / "work")]
    if "--atlas" not in options:
        options.append("--qsm-only")  # the failures come before registration: keep runs short
    result = run_cli(bids_dir, output_dir, level, "--nprocs", "2", *options)
    console = result.stderr
    assert result.returncode == expected_code, console[-3000:]
    assert "Traceback" not in console, console[-3000:]
    for word in expected_words:
        assert word in console, f"{word!r} not in: {console[-2000:]}"
    assert tree_checksum(bids_dir) == checksum, "the BIDS input was modified"
    if output_dir.is_dir() and output_dir != bids_dir:
        assert not list(output_dir.rglob("*.tmp")), "a partial file was left in the output"


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 55


@pytest.fixture
def tiny_file_system(tmp_path):
    """A 1.2 MB tmpfs (root can mount one; elsewhere the unit test of the disk watch in
    ``tests/unit/test_cli_parser.py`` covers the mechanism)."""
    import subprocess

    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_work_folder_that_fills_up_stops_with_exit_74(template_bids, tmp_path,
                                                          tiny_file_system):
    checksum = tree_checksum(template_bids)
    result = run_cli(template_bids, tmp_path / "out", "participant", "--qsm-only",
                     "-w", tiny_file_system / "work", timeout=600)
    assert result.returncode == 74, result.stderr[-3000:]
    assert "is full" in result.stderr and str(tiny_file_system) in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_checksum(template_bids) == checksum
    assert not list((tmp_path / "out").rglob("*.tmp"))
