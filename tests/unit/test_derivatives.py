"""Derivative names, BIDS URIs, dataset description and deterministic, atomic writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmprep.bids import derivatives
from qsmprep.bids.derivatives import (
    SIDECAR_UNITS,
    bids_uri,
    derivative_path,
    write_dataset_description,
    write_derivative,
)

AFFINE = np.array([[0.5, 0, 0, -10], [0, 0.5, 0, -12], [0, 0, 1.0, -8], [0, 0, 0, 1]])


@pytest.fixture
def source_image(tmp_path):
    """A float64 map as a stage might leave it in its working folder."""
    data = np.random.default_rng(0).normal(0, 0.05, (6, 5, 4))
    path = tmp_path / "work" / "chi.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


# -------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("entities", "options", "expected"),
    [
        ({"subject": "01"}, {"suffix": "Chimap"}, "sub-01/anat/sub-01_Chimap.nii.gz"),
        (
            {"subject": "01", "session": "pre"},
            {"suffix": "R2starmap"},
            "sub-01/ses-pre/anat/sub-01_ses-pre_R2starmap.nii.gz",
        ),
        (
            {"run": "2", "acquisition": "fast", "subject": "01", "reconstruction": "nd",
             "session": "1"},
            {"suffix": "Chimap"},
            "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_rec-nd_run-2_Chimap.nii.gz",
        ),
        (
            {"subject": "01", "ceagent": "gd", "run": 3},
            {"suffix": "T2starmap"},
            "sub-01/anat/sub-01_ce-gd_run-3_T2starmap.nii.gz",
        ),
        (
            {"subject": "01", "echo": 2, "part": "phase"},
            {"suffix": "MEGRE", "desc": "unwrapped"},
            "sub-01/anat/sub-01_echo-2_part-phase_desc-unwrapped_MEGRE.nii.gz",
        ),
        (
            {"subject": "01", "run": "1"},
            {"suffix": "mask", "desc": "brain", "space": "MNI152NLin2009cAsym"},
            "sub-01/anat/sub-01_run-1_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
        ),
        (
            {"subject": "01", "session": "1"},
            {"suffix": "fieldmap", "desc": "local", "extension": ".json"},
            "sub-01/ses-1/anat/sub-01_ses-1_desc-local_fieldmap.json",
        ),
        (
            {"subject": "01", "session": None, "run": None},
            {"suffix": "regions", "extension": ".tsv"},
            "sub-01/anat/sub-01_regions.tsv",
        ),
    ],
)
def test_derivative_path_follows_bids_entity_order(entities, options, expected):
    assert derivative_path(entities, **options) == expected


@pytest.mark.parametrize(
    ("entities", "options", "message"),
    [
        ({"subject": "0_1"}, {"suffix": "Chimap"}, "subject label '0_1'"),
        ({"subject": "../x"}, {"suffix": "Chimap"}, "subject label"),
        ({"subject": "01"}, {"suffix": "Chimap", "desc": "brain-mask"}, "desc label"),
        ({"subject": "01"}, {"suffix": "Chi map"}, "suffix label"),
        ({"subject": "01", "task": "rest"}, {"suffix": "Chimap"}, "Unknown BIDS entities"),
        ({"session": "1"}, {"suffix": "Chimap"}, "needs the 'subject'"),
        ({"subject": "01"}, {"suffix": "Chimap", "extension": "nii"}, "extension"),
    ],
)
def test_derivative_path_refuses_invalid_names(entities, options, message):
    with pytest.raises(ValueError, match=message):
        derivative_path(entities, **options)


def test_bids_uri_of_raw_and_derivative_files(tmp_path):
    raw = tmp_path / "bids"
    source = raw / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"
    assert bids_uri(source, raw) == "bids:raw:sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"
    assert bids_uri("sub-01/anat/sub-01_Chimap.nii.gz", tmp_path / "out", dataset_name="") == (
        "bids::sub-01/anat/sub-01_Chimap.nii.gz"
    )


def test_bids_uri_refuses_files_outside_the_dataset(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        bids_uri(tmp_path / "elsewhere.nii.gz", tmp_path / "bids")
    with pytest.raises(ValueError, match="outside"):
        bids_uri("../escape.nii.gz", tmp_path / "bids")


# ---------------------------------------------------------------------- dataset description


def test_dataset_description_contents_and_idempotence(tmp_path):
    output = tmp_path / "out"
    path = write_dataset_description(
        output, bids_dir=tmp_path / "bids", version="0.1.0", code_url="https://example.org/q"
    )
    first_bytes = path.read_bytes()
    description = json.loads(first_bytes)

    assert description["DatasetType"] == "derivative"
    assert description["BIDSVersion"] == "1.9.0"
    assert description["Name"]
    assert description["GeneratedBy"] == [
        {"Name": "qsmprep", "Version": "0.1.0", "CodeURL": "https://example.org/q"}
    ]
    assert description["DatasetLinks"] == {"raw": str((tmp_path / "bids").absolute())}
    assert first_bytes.endswith(b"}\n")

    write_dataset_description(
        output, bids_dir=tmp_path / "bids", version="0.1.0", code_url="https://example.org/q"
    )
    assert path.read_bytes() == first_bytes
    assert sorted(os.listdir(output)) == ["dataset_description.json"]


# ---------------------------------------------------------------------------- writing


def test_write_derivative_image_and_sidecar(tmp_path, source_image):
    output = tmp_path / "out"
    metadata = {"SkullStripped": True, "Sources": ["bids:raw:sub-01/anat/x.nii.gz"],
                "Threshold": np.float32(0.25)}

    image_path, sidecar_path = write_derivative(
        source_image, output, {"subject": "01", "session": "1"}, suffix="Chimap",
        metadata=metadata,
    )

    assert image_path == str(output / "sub-01/ses-1/anat/sub-01_ses-1_Chimap.nii.gz")
    assert sidecar_path == str(output / "sub-01/ses-1/anat/sub-01_ses-1_Chimap.json")
    image = nib.load(image_path)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, AFFINE)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(
        image.get_fdata(), nib.load(source_image).get_fdata().astype(np.float32)
    )
    text = Path(sidecar_path).read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "SkullStripped"')
    sidecar = json.loads(text)
    assert sidecar["Units"] == "ppm"
    assert sidecar["Threshold"] == 0.25
    assert list(sidecar) == sorted(sidecar)


def test_masks_are_uint8_and_template_space_is_coded(tmp_path, source_image):
    image_path, _ = write_derivative(
        source_image, tmp_path / "out", {"subject": "01"}, suffix="mask", desc="brain",
        space="MNI152NLin2009cAsym", metadata={"Type": "Brain"},
    )
    image = nib.load(image_path)
    assert image.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(image.dataobj))) <= {0, 1}
    assert int(image.header["sform_code"]) == 4
    assert "space-MNI152NLin2009cAsym_desc-brain_mask" in image_path


def test_writing_is_deterministic(tmp_path, source_image):
    written = []
    for attempt in range(2):
        image_path, sidecar_path = write_derivative(
            source_image, tmp_path / f"out{attempt}", {"subject": "01"}, suffix="R2starmap",
            metadata={"SkullStripped": False},
        )
        written.append((Path(image_path).read_bytes(), Path(sidecar_path).read_bytes()))
        os.utime(source_image, (0, 1_000_000 * (attempt + 1)))
    assert written[0] == written[1]
    image_bytes = written[0][0]
    assert image_bytes[:2] == b"\x1f\x8b"
    assert image_bytes[4:8] == b"\x00\x00\x00\x00"  # no gzip timestamp


def test_rewriting_leaves_no_temporary_files(tmp_path, source_image):
    output = tmp_path / "out"
    for _ in range(2):
        write_derivative(source_image, output, {"subject": "01"}, suffix="Chimap",
                         metadata={"SkullStripped": True})
    assert sorted(os.listdir(output / "sub-01/anat")) == [
        "sub-01_Chimap.json", "sub-01_Chimap.nii.gz",
    ]


def test_interrupted_write_leaves_no_partial_file(tmp_path, source_image, monkeypatch):
    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(derivatives.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_derivative(source_image, tmp_path / "out", {"subject": "01"}, suffix="Chimap",
                         metadata={"SkullStripped": True})
    assert os.listdir(tmp_path / "out/sub-01/anat") == []


def test_sidecar_must_state_skull_stripping(tmp_path, source_image):
    with pytest.raises(ValueError, match="SkullStripped"):
        write_derivative(source_image, tmp_path / "out", {"subject": "01"}, suffix="Chimap",
                         metadata={})


def test_units_contradicting_the_suffix_are_refused(tmp_path, source_image):
    with pytest.raises(ValueError, match="ppb"):
        write_derivative(source_image, tmp_path / "out", {"subject": "01"}, suffix="Chimap",
                         metadata={"SkullStripped": True, "Units": "ppb"})


def test_names_escaping_the_output_folder_are_refused(tmp_path, source_image):
    with pytest.raises(ValueError):
        write_derivative(source_image, tmp_path / "out", {"subject": ".."}, suffix="Chimap",
                         metadata={"SkullStripped": True})
    assert not (tmp_path / "out").exists()


def test_sidecar_units_table():
    assert SIDECAR_UNITS["Chimap"] == "ppm"
    assert SIDECAR_UNITS["R2starmap"] == "1/s"
    assert SIDECAR_UNITS["T2starmap"] == "s"
    assert SIDECAR_UNITS["fieldmap"] == "Hz"
    assert SIDECAR_UNITS["mask"] is None


def test_segmentations_beyond_255_labels_are_uint16(tmp_path):
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[0, 0, 0], labels[1, 1, 1] = 7, 301
    source = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, AFFINE), source)
    image_path, _ = write_derivative(source, tmp_path / "out", {"subject": "01"}, suffix="dseg",
                                     desc="qsmprep", metadata={})
    image = nib.load(image_path)
    assert image.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), labels)


def test_other_files_are_copied_with_extra_entities(tmp_path):
    source = tmp_path / "transform.h5"
    source.write_bytes(b"\x89HDF\r\n\x1a\n payload")
    path, sidecar = write_derivative(
        source, tmp_path / "out", {"subject": "01", "run": "2"}, suffix="xfm", extension=".h5",
        extra_entities={"from": "MEGRE", "to": "MNI152NLin2009cAsym", "mode": "image"},
        metadata=None)
    assert path.endswith("sub-01/anat/sub-01_run-2_from-MEGRE_to-MNI152NLin2009cAsym_"
                         "mode-image_xfm.h5")
    assert Path(path).read_bytes() == source.read_bytes()
    assert sidecar is None
    table = tmp_path / "stats.tsv"
    table.write_text("region\tmean_ppb\nputamen\t50.00\n")
    path, sidecar = write_derivative(table, tmp_path / "out", {"subject": "01"}, suffix="stats",
                                     desc="regions", extension=".tsv", metadata={"Atlas": "x"})
    assert path.endswith("sub-01_desc-regions_stats.tsv")
    assert json.loads(Path(sidecar).read_text()) == {"Atlas": "x"}
    with pytest.raises(ValueError, match="Invalid BIDS"):
        write_derivative(table, tmp_path / "out", {"subject": "01"}, suffix="stats",
                         extension=".tsv", extra_entities={"from": "a_b"}, metadata=None)


def test_metadata_found_while_running_completes_nested_blocks():
    known = {"QSMProcessing": {"DipoleInversion": {"Algorithm": "tv-admm",
                                                   "Regularization": "chosen per run"},
                               "Unwrapping": {"Algorithm": "romeo"}}, "Units": "ppm"}
    found = {"QSMProcessing": {"DipoleInversion": {"Regularization": 0.0012}},
             "ReferenceValue": 0.01}
    merged = derivatives.merged_metadata(known, found)
    assert merged["QSMProcessing"]["DipoleInversion"] == {"Algorithm": "tv-admm",
                                                          "Regularization": 0.0012}
    assert merged["QSMProcessing"]["Unwrapping"] == {"Algorithm": "romeo"}
    assert (merged["Units"], merged["ReferenceValue"]) == ("ppm", 0.01)
    assert known["QSMProcessing"]["DipoleInversion"]["Regularization"] == "chosen per run"
