"""Discovery of multi-echo GRE runs in BIDS datasets: what is found, and every error path."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from bids_helpers import (
    ECHO_TIMES_S,
    SHAPE,
    VOXEL_SIZE_MM,
    affine_for,
    make_bids_root,
    make_run,
    sidecar_of,
    tree_checksums,
    write_image,
    write_json,
)

from qsmprep.bids.discovery import Echo, Run, discover_runs, load_bids_filters
from qsmprep.errors import (
    BadDataError,
    InvalidBIDSError,
    MissingInputError,
    NoMatchingRunsError,
    UsageError,
)


@pytest.fixture
def bids_root(tmp_path):
    return make_bids_root(tmp_path / "bids")


# ------------------------------------------------------------------------- what is found


@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
def test_finds_magnitude_phase_megre_run(bids_root, extension):
    files = make_run(bids_root, extension=extension)

    (run,) = discover_runs(bids_root)

    assert isinstance(run, Run)
    assert run.suffix == "MEGRE"
    assert run.echo_times_s == pytest.approx(ECHO_TIMES_S)
    assert all(isinstance(echo, Echo) for echo in run.echoes)
    assert run.echoes[0].magnitude == str(files[(1, "mag")])
    assert run.echoes[2].phase == str(files[(3, "phase")])
    assert run.echoes[0].real is None and run.echoes[0].imaginary is None
    assert run.phase_units == "rad"
    assert run.shape == SHAPE
    assert run.voxel_size == pytest.approx(VOXEL_SIZE_MM)
    assert run.field_strength_t == 3.0
    assert run.field_strength_source == "sidecar"
    assert run.metadata["Manufacturer"] == "Siemens"
    assert run.metadata["FlipAngle"] == 15
    assert "EchoTime" not in run.metadata
    assert run.entities == {"subject": "01"}
    assert run.name == "sub-01"


def test_load_arguments_of_magnitude_phase_run(bids_root):
    files = make_run(bids_root)
    (run,) = discover_runs(bids_root)
    assert run.load_arguments == {
        "magnitude_files": [str(files[(echo, "mag")]) for echo in (1, 2, 3)],
        "phase_files": [str(files[(echo, "phase")]) for echo in (1, 2, 3)],
        "phase_units": "rad",
    }


def test_echoes_are_sorted_by_echo_time(bids_root):
    make_run(bids_root, echo_times=(0.012, 0.004, 0.008))
    (run,) = discover_runs(bids_root)
    assert run.echo_times_s == pytest.approx((0.004, 0.008, 0.012))
    assert "echo-2" in run.echoes[0].magnitude


def test_records_real_imaginary_pairs(bids_root):
    files = make_run(bids_root, parts=("real", "imag"))
    (run,) = discover_runs(bids_root)
    assert run.echoes[1].real == str(files[(2, "real")])
    assert run.echoes[1].imaginary == str(files[(2, "imag")])
    assert run.echoes[1].magnitude is None and run.echoes[1].phase is None
    assert run.phase_units is None
    assert set(run.load_arguments) == {"real_files", "imaginary_files"}


def test_single_echo_t2starw_without_echo_entity(bids_root):
    make_run(bids_root, suffix="T2starw", echo_times=(0.02,), with_echo_entity=False)
    (run,) = discover_runs(bids_root)
    assert run.suffix == "T2starw"
    assert run.echo_times_s == (0.02,)


def test_magnitude_only_t2starw_is_skipped_next_to_a_megre_run(bids_root, caplog):
    make_run(bids_root)
    make_run(bids_root, suffix="T2starw", echo_times=(0.02,), parts=(None,),
             with_echo_entity=False)
    with caplog.at_level(logging.WARNING, logger="qsmprep"):
        runs = discover_runs(bids_root)
    assert [run.suffix for run in runs] == ["MEGRE"]
    assert "sub-01_T2starw.nii.gz" in caplog.text


def test_magnitude_only_t2starw_alone_is_missing_input(bids_root):
    make_run(bids_root, suffix="T2starw", echo_times=(0.02,), parts=(None,),
             with_echo_entity=False)
    with pytest.raises(MissingInputError, match="sub-01_T2starw.nii.gz"):
        discover_runs(bids_root)


def test_groups_runs_by_session_acquisition_and_run(bids_root):
    make_run(bids_root, session="1", acquisition="fast", run="1")
    make_run(bids_root, session="1", acquisition="fast", run="2")
    make_run(bids_root, session="2", acquisition="slow", reconstruction="nd")
    make_run(bids_root, subject="02")

    runs = discover_runs(bids_root)

    assert [run.name for run in runs] == [
        "sub-01_ses-1_acq-fast_run-1",
        "sub-01_ses-1_acq-fast_run-2",
        "sub-01_ses-2_acq-slow_rec-nd",
        "sub-02",
    ]
    assert runs[2].entities == {
        "subject": "01", "session": "2", "acquisition": "slow", "reconstruction": "nd",
    }
    assert all(len(run.echoes) == 3 for run in runs)


def test_run_label_keeps_its_zero_padding(bids_root):
    make_run(bids_root, run="01")
    (run,) = discover_runs(bids_root)
    assert run.run == "01"
    assert run.name == "sub-01_run-01"


def test_logs_one_line_per_run(bids_root, caplog):
    make_run(bids_root, session="1")
    with caplog.at_level(logging.INFO, logger="qsmprep"):
        discover_runs(bids_root)
    assert "sub-01 ses-1: MEGRE, 3 echoes, TE = 4, 8, 12 ms, 3 T, 8x8x6 at 2x2x2.5 mm" in (
        caplog.text
    )


def test_reads_inherited_sidecars(bids_root):
    make_run(bids_root, metadata={"MagneticFieldStrength": None})
    write_json(bids_root / "MEGRE.json", {"MagneticFieldStrength": 7})
    (run,) = discover_runs(bids_root)
    assert run.field_strength_t == 7.0


def test_pybids_writes_nothing_into_the_dataset(bids_root):
    make_run(bids_root, session="1")
    write_image(bids_root / "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz",
                np.zeros((4, 4, 4, 2), np.float32))
    before = tree_checksums(bids_root)
    discover_runs(bids_root)
    assert tree_checksums(bids_root) == before


# --------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("label", ["02", "sub-02"])
def test_participant_label_with_or_without_prefix(bids_root, label):
    make_run(bids_root, subject="01")
    make_run(bids_root, subject="02")
    assert [run.subject for run in discover_runs(bids_root, participant_labels=[label])] == ["02"]


@pytest.mark.parametrize("label", ["2", "ses-2"])
def test_session_label_with_or_without_prefix(bids_root, label):
    make_run(bids_root, session="1")
    make_run(bids_root, session="2")
    assert [run.session for run in discover_runs(bids_root, session_labels=[label])] == ["2"]


def test_unknown_participant_lists_the_available_ones(bids_root):
    make_run(bids_root, subject="01")
    make_run(bids_root, subject="02")
    with pytest.raises(NoMatchingRunsError, match=r"sub-03.*Available: sub-01, sub-02"):
        discover_runs(bids_root, participant_labels=["01", "03"])


def test_unknown_session_lists_the_available_ones(bids_root):
    make_run(bids_root, session="1")
    with pytest.raises(NoMatchingRunsError, match=r"ses-9.*Available: ses-1"):
        discover_runs(bids_root, session_labels=["9"])


def test_malformed_participant_label_is_a_usage_error(bids_root):
    make_run(bids_root)
    with pytest.raises(UsageError, match="sub_01"):
        discover_runs(bids_root, participant_labels=["sub_01"])


def test_participant_without_runs_is_skipped_with_a_warning(bids_root, caplog):
    make_run(bids_root, subject="01")
    write_image(bids_root / "sub-02/anat/sub-02_T1w.nii.gz", np.zeros(SHAPE, np.float32))
    with caplog.at_level(logging.WARNING, logger="qsmprep"):
        runs = discover_runs(bids_root, participant_labels=["01", "02"])
    assert [run.subject for run in runs] == ["01"]
    assert "sub-02" in caplog.text


# -------------------------------------------------------------------------------- filters


def test_flat_filter_applies_to_every_suffix(bids_root):
    make_run(bids_root, acquisition="fast")
    make_run(bids_root, acquisition="slow")
    runs = discover_runs(bids_root, bids_filters={"acquisition": "slow"})
    assert [run.acquisition for run in runs] == ["slow"]


def test_filter_keyed_by_suffix_applies_to_that_suffix_only(bids_root):
    make_run(bids_root, acquisition="fast")
    make_run(bids_root, acquisition="slow")
    make_run(bids_root, acquisition="fast", suffix="T2starw", echo_times=(0.02,),
             with_echo_entity=False)
    runs = discover_runs(bids_root, bids_filters={"megre": {"acquisition": "slow"}})
    assert [(run.suffix, run.acquisition) for run in runs] == [
        ("T2starw", "fast"), ("MEGRE", "slow"),
    ]


def test_null_filter_selects_files_without_the_entity(bids_root):
    make_run(bids_root)
    make_run(bids_root, acquisition="fast")
    runs = discover_runs(bids_root, bids_filters={"acquisition": None})
    assert [run.name for run in runs] == ["sub-01"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"acq": "fast"}, "Did you mean 'acquisition'"),
        ({"suffix": "T1w"}, "qsmprep sets 'suffix' itself"),
        ({"megre": "fast"}, "must be an object"),
        ({"megre": {"colour": "red"}}, "unknown key 'colour'"),
        ({"acquisition": 1.5}, "must be a string"),
        (["acquisition"], "JSON object"),
    ],
)
def test_invalid_filters_are_usage_errors(bids_root, filters, message):
    make_run(bids_root)
    with pytest.raises(UsageError, match=message):
        discover_runs(bids_root, bids_filters=filters)


def test_filters_matching_nothing_explain_what_was_searched(bids_root):
    make_run(bids_root, acquisition="fast")
    with pytest.raises(NoMatchingRunsError, match=r'"acquisition": "slow".*_MEGRE.nii'):
        discover_runs(bids_root, bids_filters={"acquisition": "slow"})


def test_dataset_without_megre_is_no_matching_runs(bids_root):
    write_image(bids_root / "sub-01/anat/sub-01_T1w.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(NoMatchingRunsError, match="No multi-echo GRE run found"):
        discover_runs(bids_root)


def test_load_bids_filters_reads_the_json_file(tmp_path):
    path = write_json(tmp_path / "filters.json", {"megre": {"acquisition": "fast"}})
    assert load_bids_filters(path) == {"megre": {"acquisition": "fast"}}


def test_load_bids_filters_missing_file(tmp_path):
    with pytest.raises(MissingInputError, match="nofile.json"):
        load_bids_filters(tmp_path / "nofile.json")


def test_load_bids_filters_reports_the_json_error_position(tmp_path):
    path = tmp_path / "filters.json"
    path.write_text('{"megre": {"acquisition": "fast",}}')
    with pytest.raises(UsageError, match=r"filters.json is not valid JSON.*line 1, column 34"):
        load_bids_filters(path)


def test_load_bids_filters_checks_the_keys(tmp_path):
    path = write_json(tmp_path / "filters.json", {"sub": "01"})
    with pytest.raises(UsageError, match=r"filters.json.*Did you mean 'subject'"):
        load_bids_filters(path)


# ------------------------------------------------------------------------ dataset errors


def test_missing_bids_dir(tmp_path):
    with pytest.raises(MissingInputError, match="nowhere"):
        discover_runs(tmp_path / "nowhere")


def test_missing_dataset_description(tmp_path):
    make_run(tmp_path)
    with pytest.raises(InvalidBIDSError, match="dataset_description.json"):
        discover_runs(tmp_path)


def test_unreadable_dataset_description(tmp_path):
    (tmp_path / "dataset_description.json").write_text('{"Name": "x",')
    with pytest.raises(InvalidBIDSError, match=r"dataset_description.json is not valid JSON"):
        discover_runs(tmp_path)


def test_dataset_description_without_required_fields(tmp_path):
    make_bids_root(tmp_path, description={"Name": "x"})
    with pytest.raises(InvalidBIDSError, match="BIDSVersion"):
        discover_runs(tmp_path)


# ---------------------------------------------------------------------------- echo times


def test_missing_echo_time_names_the_file(bids_root):
    files = make_run(bids_root)
    for part in ("mag", "phase"):
        sidecar = sidecar_of(files[(2, part)])
        content = json.loads(sidecar.read_text())
        del content["EchoTime"]
        write_json(sidecar, content)
    with pytest.raises(BadDataError, match=r"sub-01_echo-2_part-\w+_MEGRE.nii.gz has no EchoTime"):
        discover_runs(bids_root)


def test_echo_time_given_as_string_is_accepted(bids_root):
    make_run(bids_root, echo_times=("0.004", "0.008", "0.012"))
    (run,) = discover_runs(bids_root)
    assert run.echo_times_s == pytest.approx(ECHO_TIMES_S)


def test_echo_time_in_milliseconds_is_refused(bids_root):
    make_run(bids_root, echo_times=(4, 8, 12))
    with pytest.raises(BadDataError, match=r"echo-1_part-\w+_MEGRE.nii.gz.*milliseconds"):
        discover_runs(bids_root)


def test_unparsable_echo_time(bids_root):
    make_run(bids_root, echo_times=("4 ms", 0.008, 0.012))
    with pytest.raises(BadDataError, match=r"EchoTime of sub-01/anat/sub-01_echo-1"):
        discover_runs(bids_root)


def test_duplicate_echo_times(bids_root):
    make_run(bids_root, echo_times=(0.004, 0.008, 0.008))
    with pytest.raises(BadDataError, match=r"echo-2_part-mag.*echo-3_part-mag.*same EchoTime"):
        discover_runs(bids_root)


def test_parts_of_one_echo_with_different_echo_times(bids_root):
    files = make_run(bids_root)
    sidecar = sidecar_of(files[(1, "phase")])
    write_json(sidecar, {**json.loads(sidecar.read_text()), "EchoTime": 0.005})
    with pytest.raises(BadDataError, match=r"echo-1_part-phase_MEGRE.nii.gz has EchoTime 0.005"):
        discover_runs(bids_root)


# ------------------------------------------------------------------------ field strength


def test_field_strength_as_string_in_sidecar(bids_root):
    make_run(bids_root, metadata={"MagneticFieldStrength": "7"})
    (run,) = discover_runs(bids_root)
    assert run.field_strength_t == 7.0


def test_missing_field_strength_asks_for_the_option(bids_root):
    make_run(bids_root, metadata={"MagneticFieldStrength": None})
    with pytest.raises(BadDataError, match=r"echo-1_part-mag_MEGRE.nii.gz.*--field-strength"):
        discover_runs(bids_root)


def test_field_strength_from_the_command_line_when_sidecar_lacks_it(bids_root):
    make_run(bids_root, metadata={"MagneticFieldStrength": None})
    (run,) = discover_runs(bids_root, field_strength_t=3)
    assert run.field_strength_t == 3.0
    assert run.field_strength_source == "command line"


def test_command_line_field_strength_wins_with_a_warning(bids_root, caplog):
    make_run(bids_root, metadata={"MagneticFieldStrength": 1.5})
    with caplog.at_level(logging.WARNING, logger="qsmprep"):
        (run,) = discover_runs(bids_root, field_strength_t=3.0)
    assert run.field_strength_t == 3.0
    assert run.field_strength_source == "command line"
    assert "differs from --field-strength" in caplog.text


def test_agreeing_field_strengths_are_from_the_sidecar(bids_root):
    make_run(bids_root)
    (run,) = discover_runs(bids_root, field_strength_t=3.0)
    assert run.field_strength_source == "sidecar"


def test_implausible_command_line_field_strength(bids_root):
    make_run(bids_root)
    with pytest.raises(UsageError, match="--field-strength"):
        discover_runs(bids_root, field_strength_t=-3)


# --------------------------------------------------------------------------- phase units


@pytest.mark.parametrize(("units", "expected"), [("Rad", "rad"), ("arbitrary", "arbitrary"),
                                                 (None, None)])
def test_phase_units_from_the_sidecar(bids_root, units, expected):
    make_run(bids_root, phase_metadata={"Units": units})
    (run,) = discover_runs(bids_root)
    assert run.phase_units == expected


def test_unknown_phase_units(bids_root):
    make_run(bids_root, phase_metadata={"Units": "degrees"})
    with pytest.raises(BadDataError, match=r"echo-1_part-phase_MEGRE.nii.gz has Units 'degrees'"):
        discover_runs(bids_root)


# ---------------------------------------------------------------------------- parts, grids


def test_magnitude_without_phase_names_the_magnitude(bids_root):
    files = make_run(bids_root)
    files[(2, "phase")].unlink()
    with pytest.raises(MissingInputError,
                       match=r"sub-01_echo-2_part-mag_MEGRE.nii.gz has no matching part-phase"):
        discover_runs(bids_root)


def test_phase_without_magnitude_names_the_phase(bids_root):
    files = make_run(bids_root)
    files[(3, "mag")].unlink()
    with pytest.raises(MissingInputError,
                       match=r"sub-01_echo-3_part-phase_MEGRE.nii.gz has no matching part-mag"):
        discover_runs(bids_root)


def test_real_without_imaginary(bids_root):
    files = make_run(bids_root, parts=("real", "imag"))
    files[(1, "imag")].unlink()
    with pytest.raises(MissingInputError, match=r"echo-1_part-real_MEGRE.nii.gz.*part-imag"):
        discover_runs(bids_root)


def test_parts_with_different_shapes(bids_root):
    files = make_run(bids_root)
    write_image(files[(2, "phase")], np.zeros((8, 8, 5), np.float32))
    with pytest.raises(BadDataError, match=r"echo-2_part-phase_MEGRE.nii.gz has shape 8x8x5 "
                                           r"but sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz"
                                           r" has 8x8x6"):
        discover_runs(bids_root)


def test_parts_with_different_affines(bids_root):
    files = make_run(bids_root)
    write_image(files[(3, "mag")], np.ones(SHAPE, np.float32), affine=affine_for((1, 1, 1)))
    with pytest.raises(BadDataError, match=r"echo-3_part-mag_MEGRE.nii.gz and .*different affines"):
        discover_runs(bids_root)


def test_four_dimensional_echo_file_is_refused(bids_root):
    files = make_run(bids_root)
    write_image(files[(1, "mag")], np.ones((*SHAPE, 3), np.float32))
    with pytest.raises(BadDataError, match=r"echo-1_part-mag_MEGRE.nii.gz is 4-D \(3 volumes\)"):
        discover_runs(bids_root)


def test_four_dimensional_file_without_echo_entity_explains_bids_naming(bids_root):
    write_image(bids_root / "sub-01/anat/sub-01_part-mag_MEGRE.nii.gz",
                np.ones((*SHAPE, 4), np.float32))
    with pytest.raises(BadDataError, match=r"sub-01_part-mag_MEGRE.nii.gz is a 4-D image.*"
                                           r"sub-01_echo-1_part-mag_MEGRE.nii.gz"):
        discover_runs(bids_root)


def test_same_echo_twice_is_ambiguous(bids_root):
    files = make_run(bids_root)
    gz = files[(1, "mag")]
    write_image(gz.with_name(gz.name.replace(".nii.gz", ".nii")), np.ones(SHAPE, np.float32))
    with pytest.raises(BadDataError, match=r"echo-1_part-mag_MEGRE.nii.*same echo and part"):
        discover_runs(bids_root)


def test_t1w_of_the_same_session_is_attached(bids_root):
    make_run(bids_root, session="1")
    make_run(bids_root, session="2")
    anat = bids_root / "sub-01" / "ses-1" / "anat"
    write_image(anat / "sub-01_ses-1_run-2_T1w.nii.gz", np.ones((4, 4, 4), np.float32))
    write_image(anat / "sub-01_ses-1_T1w.nii.gz", np.ones((4, 4, 4), np.float32))
    runs = {run.session: run for run in discover_runs(bids_root)}
    assert runs["1"].t1w == str(anat / "sub-01_ses-1_T1w.nii.gz")
    assert runs["2"].t1w is None
    assert "T1w sub-01_ses-1_T1w.nii.gz" in runs["1"].describe()


def test_broken_sidecars_are_named_before_indexing_and_others_ignored(bids_root):
    files = make_run(bids_root)
    anat = bids_root / "sub-01" / "anat"
    (anat / "._sub-01_echo-1_part-mag_MEGRE.json").write_bytes(b"\x00\x05\x16\x07\xff")  # macOS
    (bids_root / "sub-01" / "func").mkdir()
    (bids_root / "sub-01" / "func" / "sub-01_task-rest_bold.json").write_text("{broken")
    assert len(discover_runs(bids_root)) == 1  # neither is a sidecar a MEGRE run can use
    sidecar = sidecar_of(files[(2, "phase")])
    sidecar.write_text('{"EchoTime": 0.009,')
    with pytest.raises(BadDataError, match=f"{sidecar.name} is not valid JSON"):
        discover_runs(bids_root)
    sidecar.write_text("[0.009]")
    with pytest.raises(BadDataError, match=f"{sidecar.name} holds a JSON list"):
        discover_runs(bids_root)


def test_a_truncated_image_is_named_before_processing(bids_root):
    files = make_run(bids_root)
    path = files[(1, "mag")]
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(BadDataError, match=f"{path.name}"):
        discover_runs(bids_root)
