"""Change over time: session dates, per-participant change with its noise, cohort rates."""

import datetime
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from bids_helpers import make_bids_root, make_run
from test_cbs import CBS_PATIENT, regional_rows

from qsmprep.bids.discovery import discover_runs
from qsmprep.bids.sessions import parse_acq_time, years_between
from qsmprep.group.level import run_group_level
from qsmprep.group.longitudinal import (MIN_FOLLOWED_PARTICIPANTS, longitudinal_data,
                                        longitudinal_rates, write_longitudinal_rates)
from qsmprep.regions import write_regional_table
from qsmprep.reports import longitudinal, render

YEAR_S = 365.25 * 86400.0


# ------------------------------------------------------------------------------------- dates
@pytest.mark.parametrize("text, expected", [
    ("2021-03-02T10:15:00", datetime.datetime(2021, 3, 2, 10, 15)),
    ("2021-03-02T10:15:00.250000", datetime.datetime(2021, 3, 2, 10, 15, 0, 250000)),
    ("2021-03-02T10:15:00Z", datetime.datetime(2021, 3, 2, 10, 15)),
    ("2021-03-02T10:15:00-02:00", datetime.datetime(2021, 3, 2, 12, 15)),
    ("2021-03-02", datetime.datetime(2021, 3, 2)),
    ("n/a", None), ("", None)])
def test_acq_time_parses_iso_8601(text, expected):
    assert parse_acq_time(text) == expected


@pytest.mark.parametrize("text", ["03/02/2021", "2021-13-01T00:00:00", "2021-02-30",
                                  "yesterday", "2021-03-02T25:00:00"])
def test_malformed_acq_time_is_refused(text):
    with pytest.raises(ValueError, match="date"):
        parse_acq_time(text)


def _write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(row) + "\n" for row in rows))


def _dates_by_session(root, **options):
    return {run.session: (run.acquisition_date, run.acquisition_date_source)
            for run in discover_runs(root, **options)}


def test_dates_come_from_the_sessions_table(tmp_path):
    root = make_bids_root(tmp_path / "bids")
    for session in ("1", "2"):
        make_run(root, subject="01", session=session)
    _write_tsv(root / "sub-01" / "sub-01_sessions.tsv", ("session_id", "acq_time"),
               [("ses-1", "2020-01-15T08:00:00"), ("ses-2", "2022-07-15T08:00:00")])
    dates = _dates_by_session(root)
    assert dates == {"1": ("2020-01-15T08:00:00", "sub-01/sub-01_sessions.tsv"),
                     "2": ("2022-07-15T08:00:00", "sub-01/sub-01_sessions.tsv")}


def test_dates_come_from_the_scans_table_of_the_runs_files(tmp_path):
    root = make_bids_root(tmp_path / "bids")
    make_run(root, subject="01", session="1")
    other = make_run(root, subject="01", session="1", run="2")
    folder = root / "sub-01" / "ses-1"
    _write_tsv(folder / "sub-01_ses-1_scans.tsv", ("filename", "acq_time"), [
        ("anat/sub-01_ses-1_echo-1_part-mag_MEGRE.nii.gz", "2021-05-04T09:10:00"),
        ("anat/sub-01_ses-1_echo-2_part-mag_MEGRE.nii.gz", "2021-05-04T09:12:00"),
        # another run's file, earlier: not the date of the first run
        (other[(1, "mag")].relative_to(folder).as_posix(), "2021-05-04T08:00:00")])
    runs = {run.run: run for run in discover_runs(root)}
    assert runs[None].acquisition_date == "2021-05-04T09:10:00"
    assert runs[None].acquisition_date_source == "sub-01/ses-1/sub-01_ses-1_scans.tsv"
    assert runs["2"].acquisition_date == "2021-05-04T08:00:00"


def test_a_session_without_a_date_falls_back_to_the_scans_table(tmp_path):
    root = make_bids_root(tmp_path / "bids")
    make_run(root, subject="01", session="1")
    _write_tsv(root / "sub-01" / "sub-01_sessions.tsv", ("session_id", "acq_time"),
               [("ses-1", "n/a")])
    _write_tsv(root / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv", ("filename", "acq_time"),
               [("anat/sub-01_ses-1_echo-1_part-phase_MEGRE.nii.gz", "2019-11-30T17:45:00")])
    assert _dates_by_session(root)["1"][0] == "2019-11-30T17:45:00"


def test_a_subject_without_sessions_is_dated_by_its_scans_table(tmp_path):
    root = make_bids_root(tmp_path / "bids")
    make_run(root, subject="01")
    _write_tsv(root / "sub-01" / "sub-01_scans.tsv", ("filename", "acq_time"),
               [("anat/sub-01_echo-1_part-mag_MEGRE.nii.gz", "2018-02-01T12:00:00")])
    (run,) = discover_runs(root)
    assert run.acquisition_date == "2018-02-01T12:00:00"


def test_malformed_dates_warn_naming_the_file_and_leave_the_date_unknown(tmp_path, caplog):
    root = make_bids_root(tmp_path / "bids")
    make_run(root, subject="01", session="1")
    make_run(root, subject="01", session="2")
    _write_tsv(root / "sub-01" / "sub-01_sessions.tsv", ("session_id", "acq_time"),
               [("ses-1", "15/01/2020"), ("ses-2", "2022-07-15T08:00:00")])
    with caplog.at_level(logging.WARNING, logger="qsmprep"):
        dates = _dates_by_session(root)
    assert dates["1"] == (None, None) and dates["2"][0] == "2022-07-15T08:00:00"
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING]
    assert any("sub-01/sub-01_sessions.tsv" in text and "15/01/2020" in text
               for text in warnings), warnings


def test_an_unreadable_sessions_table_is_a_warning_not_a_crash(tmp_path, caplog):
    root = make_bids_root(tmp_path / "bids")
    make_run(root, subject="01", session="1")
    path = root / "sub-01" / "sub-01_sessions.tsv"
    path.write_bytes(b"session_id\tacq_time\nses-1\t\xff\xfe2020\n")
    with caplog.at_level(logging.WARNING, logger="qsmprep"):
        assert _dates_by_session(root)["1"] == (None, None)
    assert any("sub-01_sessions.tsv" in record.getMessage() for record in caplog.records)


def test_the_run_report_carries_the_acquisition_date_and_uncertainty(tmp_path):
    (run,) = [item for item in _two_session_runs(tmp_path) if item.session == "2"]
    summary = render.acquisition_summary(run)
    assert summary["acquisition_date"] == "2023-03-02T10:30:00"
    report = _built_report(tmp_path / "out", "2", summary, CBS_PATIENT)
    assert render.validate_report(report)
    assert report["acquisition"]["acquisition_date"] == "2023-03-02T10:30:00"
    entry = next(item for item in report["measurement_uncertainty"]
                 if (item["region"], item["hemisphere"]) == ("motor_cortex", "L"))
    assert entry["uncertainty_ppb"] > 0


# ------------------------------------------------------------------------ uncertainty, change
def test_measurement_uncertainty_combines_standard_error_and_core_disagreement():
    result = longitudinal.measurement_uncertainty(mean_ppb=100.0, core_mean_ppb=106.0,
                                                  sd_ppb=40.0, n_voxels=1000,
                                                  core_n_voxels=800)
    effective_n = 1000 / longitudinal.VOXELS_PER_INDEPENDENT_SAMPLE
    standard_error = 40.0 / math.sqrt(effective_n)
    partial_volume = 6.0 / (2 * math.sqrt(3))
    assert result["value_ppb"] == 106.0
    assert result["standard_error_ppb"] == pytest.approx(standard_error)
    assert result["uncertainty_ppb"] == pytest.approx(math.hypot(standard_error, partial_volume))
    without_core = longitudinal.measurement_uncertainty(
        mean_ppb=100.0, core_mean_ppb=math.nan, sd_ppb=40.0, n_voxels=1000)
    assert without_core["value_ppb"] == 100.0
    assert without_core["uncertainty_ppb"] == pytest.approx(
        40.0 / math.sqrt(1000 / longitudinal.VOXELS_PER_INDEPENDENT_SAMPLE))
    assert longitudinal.measurement_uncertainty(mean_ppb=math.nan, core_mean_ppb=None,
                                                sd_ppb=math.nan, n_voxels=0)[
        "uncertainty_ppb"] is None


def _report_dict(session, date, values, uncertainty):
    """A hand-made run report: {region: (L, R, bilateral)} values and one uncertainty."""
    regions = [{"region": name, "label": name.replace("_", " "), "left_ppb": left,
                "right_ppb": right, "bilateral_ppb": both}
               for name, (left, right, both) in values.items()]
    return {"subject": "01", "session": session, "prefix": f"sub-01_ses-{session}",
            "acquisition": {"acquisition_date": date}, "findings": {"regions": regions},
            "measurement_uncertainty": [
                {"region": name, "hemisphere": side, "value_ppb": None,
                 "uncertainty_ppb": uncertainty}
                for name in values for side in ("L", "R", "bilateral")]}


def _row(changes, region, hemisphere):
    return next(row for row in changes["rows"]
                if (row["region"], row["hemisphere"]) == (region, hemisphere))


def test_change_and_annual_rate_between_two_sessions():
    first = _report_dict("1", "2021-01-01T09:00:00", {"motor_cortex": (100.0, 50.0, 75.0)}, 4.0)
    second = _report_dict("2", "2023-01-01T09:00:00", {"motor_cortex": (125.0, 53.0, 89.0)}, 4.0)
    changes = longitudinal.longitudinal_changes([second, first])  # any order: dates decide
    assert [point["session"] for point in changes["sessions"]] == ["1", "2"]
    years = 730 * 86400.0 / YEAR_S
    assert changes["sessions"][1]["years_since_first"] == pytest.approx(years)
    left = _row(changes, "motor_cortex", "L")
    assert (left["value_from_ppb"], left["value_to_ppb"]) == (100.0, 125.0)
    assert left["change_ppb"] == pytest.approx(25.0)
    assert left["rate_ppb_per_year"] == pytest.approx(25.0 / years)
    assert left["combined_uncertainty_ppb"] == pytest.approx(math.sqrt(32.0))
    right = _row(changes, "motor_cortex", "R")
    assert right["change_ppb"] == pytest.approx(3.0)
    assert _row(changes, "motor_cortex", "bilateral")["change_ppb"] == pytest.approx(14.0)


@pytest.mark.parametrize("change, flagged", [(8.0, False), (-8.0, False), (15.0, True),
                                             (-15.0, True)])
def test_only_a_change_beyond_twice_the_combined_uncertainty_is_flagged(change, flagged):
    # u = 4 ppb per session: threshold 2 sqrt(4^2 + 4^2) = 11.3 ppb
    first = _report_dict("1", "2020-01-01", {"putamen": (60.0, 60.0, 60.0)}, 4.0)
    second = _report_dict("2", "2021-01-01", {"putamen": (60.0 + change, 60.0, 60.0)}, 4.0)
    row = _row(longitudinal.longitudinal_changes([first, second]), "putamen", "L")
    assert row["noise_threshold_ppb"] == pytest.approx(2 * math.sqrt(32.0))
    assert row["beyond_noise"] is flagged
    assert _row(longitudinal.longitudinal_changes([first, second]), "putamen", "R")[
        "beyond_noise"] is False


@pytest.mark.parametrize("offsets, flagged", [((0.0, 10.0), True), ((0.0, 40.0), False),
                                              ((30.0, 30.0), True)])
def test_only_the_change_of_the_core_offset_widens_the_noise(offsets, flagged):
    # SE 2 ppb per session, a change of 12 ppb; the core's partial-volume offset (core mean -
    # mean) counts by how much it moved between the sessions, not by its size
    reports = []
    for session, date, value, offset in (("1", "2020-01-01", 50.0, offsets[0]),
                                         ("2", "2022-01-01", 62.0, offsets[1])):
        report = _report_dict(session, date, {"caudate": (value, value, value)}, None)
        for entry in report["measurement_uncertainty"]:
            entry.update(standard_error_ppb=2.0, core_offset_ppb=offset)
        reports.append(report)
    row = _row(longitudinal.longitudinal_changes(reports), "caudate", "L")
    moved = abs(offsets[1] - offsets[0])
    expected = math.sqrt(2.0 ** 2 + 2.0 ** 2 + (moved / (2 * math.sqrt(3))) ** 2)
    assert row["partial_volume_change_ppb"] == pytest.approx(moved)
    assert row["combined_uncertainty_ppb"] == pytest.approx(expected)
    assert row["beyond_noise"] is flagged


def test_missing_dates_give_changes_without_rates_and_a_note():
    first = _report_dict("1", None, {"thalamus": (20.0, 20.0, 20.0)}, 2.0)
    second = _report_dict("2", "2022-05-01", {"thalamus": (40.0, 20.0, 30.0)}, 2.0)
    changes = longitudinal.longitudinal_changes([first, second])
    row = _row(changes, "thalamus", "L")
    assert row["change_ppb"] == pytest.approx(20.0) and row["rate_ppb_per_year"] is None
    assert row["beyond_noise"] is True
    assert not changes["dates_known"]
    assert any("ses-1" in note and "date missing" in note for note in changes["notes"])


def test_one_session_has_no_change_table():
    only = _report_dict("1", "2020-01-01", {"thalamus": (20.0, 20.0, 20.0)}, 2.0)
    assert longitudinal.longitudinal_changes([only]) is None
    assert longitudinal.longitudinal_changes(
        [{**only, "session": None, "prefix": "sub-01"}]) is None


def _two_session_runs(tmp_path):
    root = make_bids_root(tmp_path / "bids")
    for session in ("1", "2"):
        make_run(root, subject="01", session=session)
    _write_tsv(root / "sub-01" / "sub-01_sessions.tsv", ("session_id", "acq_time"),
               [("ses-1", "2021-03-02T10:00:00"), ("ses-2", "2023-03-02T10:30:00")])
    return discover_runs(root)


def _built_report(out, session, acquisition, values, *, core_shift=3.0):
    rows = regional_rows(values)
    for row in rows:
        row["core_mean_ppb"] = row["mean_ppb"] + core_shift
        row["core_n_voxels"] = max(row["n_voxels"] // 2, 1)
    anat = out / "sub-01" / f"ses-{session}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    table = write_regional_table(rows, anat / f"sub-01_ses-{session}_desc-regions_stats.tsv")
    return render.build_report(
        regional_table_path=table, entities={"subject": "01", "session": session},
        qc={}, acquisition=acquisition, provenance={"date": "2026-12-01", "command": "qsmprep"},
        methods_markdown="", figures={})


def test_the_subject_report_and_table_carry_the_same_numbers(tmp_path):
    runs = {run.session: run for run in _two_session_runs(tmp_path)}
    out = tmp_path / "out"
    later = {**CBS_PATIENT, "motor_cortex": (CBS_PATIENT["motor_cortex"][0] + 30,
                                             CBS_PATIENT["motor_cortex"][1])}
    reports = [_built_report(out, "1", render.acquisition_summary(runs["1"]), CBS_PATIENT),
               _built_report(out, "2", render.acquisition_summary(runs["2"]), later)]
    table_path = out / "sub-01" / "anat" / "sub-01_desc-longitudinal_stats.tsv"
    written = render.write_report(reports, html_path=out / "sub-01.html",
                                  figures_dir=out / "sub-01" / "figures", strip_plots=False,
                                  longitudinal_path=table_path)
    assert written["longitudinal"] == table_path
    table = pd.read_csv(table_path, sep="\t", na_values=["n/a"], keep_default_na=False)
    assert list(table.columns) == list(longitudinal.COLUMNS)
    changes = longitudinal.longitudinal_changes(reports)
    assert len(table) == len(changes["rows"])
    motor = table[(table["region"] == "motor_cortex") & (table["hemisphere"] == "L")].iloc[0]
    expected = _row(changes, "motor_cortex", "L")
    assert motor["change_ppb"] == pytest.approx(30.0)
    assert motor["rate_ppb_per_year"] == pytest.approx(expected["rate_ppb_per_year"], abs=0.01)
    assert motor["noise_threshold_ppb"] == pytest.approx(expected["noise_threshold_ppb"],
                                                         abs=0.01)
    assert str(motor["beyond_noise"]).lower() == "true"
    unchanged = table[(table["region"] == "putamen") & (table["hemisphere"] == "L")].iloc[0]
    assert unchanged["change_ppb"] == pytest.approx(0.0)
    assert str(unchanged["beyond_noise"]).lower() == "false"
    sidecar = json.loads(table_path.with_suffix(".json").read_text())
    assert sidecar["rate_ppb_per_year"]["Units"] == "ppb/year" and "GUM" in sidecar["Method"]
    html = written["html"].read_text()
    assert 'id="change-over-time"' in html and "Change over time" in html
    assert f"{expected['rate_ppb_per_year']:+.1f}" in html


def test_a_single_session_writes_no_change_section_or_table(tmp_path):
    (run, _) = _two_session_runs(tmp_path)
    out = tmp_path / "out"
    report = _built_report(out, run.session, render.acquisition_summary(run), CBS_PATIENT)
    table_path = out / "sub-01" / "anat" / "sub-01_desc-longitudinal_stats.tsv"
    written = render.write_report(report, html_path=out / "sub-01.html",
                                  figures_dir=out / "sub-01" / "figures", strip_plots=False,
                                  longitudinal_path=table_path)
    assert written["longitudinal"] is None and not table_path.exists()
    assert 'id="change-over-time"' not in written["html"].read_text()


# ------------------------------------------------------------------------------- group level
SLOPES = {"HC": {"L": 0.0, "R": 0.0}, "CBS": {"L": 12.0, "R": 4.0},
          "PSP": {"L": 5.0, "R": 5.0}}


def _simulated_tidy(per_diagnosis=10, sessions=3, seed=7, followed=None):
    """A tidy table of a cohort scanned in yearly sessions: the motor cortex changes at
    :data:`SLOPES` (ppb/year) around a participant's own level."""
    rng = np.random.default_rng(seed)
    rows, dates = [], []
    for diagnosis, slopes in SLOPES.items():
        for number in range(per_diagnosis):
            subject = f"sub-{diagnosis.lower()}{number:02d}"
            level = 60.0 + rng.normal(0.0, 20.0)
            count = sessions if followed is None or number < followed else 1
            start = datetime.datetime(2020, 1, 1) + datetime.timedelta(days=int(rng.integers(0,
                                                                                          300)))
            for visit in range(count):
                years = visit + (rng.uniform(-0.1, 0.1) if visit else 0.0)
                moment = start + datetime.timedelta(seconds=years * YEAR_S)
                scan = f"{subject}_ses-{visit + 1}"
                dates.append({"scan": scan, "acquisition_date": moment.isoformat()})
                for side, slope in slopes.items():
                    value = level + slope * years + rng.normal(0.0, 3.0)
                    for reference, shift in (("csf", 0.0), ("whole-brain", -10.0)):
                        rows.append({"scan": scan, "subject": subject,
                                     "session": f"ses-{visit + 1}", "region": "motor_cortex",
                                     "hemisphere": side, "reference": reference,
                                     "mean_ppb": value + shift, "diagnosis": diagnosis})
    return pd.DataFrame(rows), pd.DataFrame(dates)


def test_the_mixed_model_recovers_each_diagnosis_rate():
    tidy, dates = _simulated_tidy()
    data = longitudinal_data(tidy, dates)
    assert set(data["hemisphere"]) == {"L", "R"} and data["years"].min() == 0.0
    table, notes = longitudinal_rates(data)
    assert notes == []
    assert len(table) == len(SLOPES) * 2
    for row in table.to_dict("records"):
        true = SLOPES[row["diagnosis"]][row["hemisphere"]]
        assert abs(row["rate_ppb_per_year"] - true) < 2.0, row
        assert row["ci_low"] < true < row["ci_high"], row
        assert row["n_followed"] == 10 and row["converged"]
    cbs_left = table[(table["diagnosis"] == "CBS") & (table["hemisphere"] == "L")].iloc[0]
    hc_left = table[(table["diagnosis"] == "HC") & (table["hemisphere"] == "L")].iloc[0]
    assert cbs_left["p"] < 1e-6 and hc_left["p"] > 0.001
    assert cbs_left["participant_sd_ppb"] > 5 * cbs_left["residual_sd_ppb"]


def test_too_few_followed_participants_give_a_note_not_rows(tmp_path):
    tidy, dates = _simulated_tidy(per_diagnosis=4, followed=MIN_FOLLOWED_PARTICIPANTS - 1)
    table, notes = longitudinal_rates(longitudinal_data(tidy, dates))
    assert table is None
    total = 3 * (MIN_FOLLOWED_PARTICIPANTS - 1)
    assert notes == [f"too few participants with two or more dated sessions for a model of "
                     f"change over time (n={total}; at least {MIN_FOLLOWED_PARTICIPANTS} per "
                     "diagnosis are needed)"]


def test_a_diagnosis_with_too_few_is_left_out_with_a_note():
    tidy, dates = _simulated_tidy(per_diagnosis=5)
    few = tidy["subject"].str.startswith("sub-psp") & (tidy["session"] != "ses-1")
    few &= ~tidy["subject"].isin(["sub-psp00"])
    table, notes = longitudinal_rates(longitudinal_data(tidy[~few], dates))
    assert set(table["diagnosis"]) == {"CBS", "HC"}
    assert notes == ["too few participants with two or more dated sessions for a rate of "
                     f"change in PSP (n=1; at least {MIN_FOLLOWED_PARTICIPANTS})"]


def _write_cohort_outputs(tmp_path, tidy, dates):
    """Participant-level outputs (regional tables, reports with dates) and participants.tsv."""
    out, bids = tmp_path / "out", tmp_path / "bids"
    bids.mkdir(parents=True)
    date_of = dict(zip(dates["scan"], dates["acquisition_date"]))
    for scan, rows in tidy.groupby("scan"):
        subject, session = scan.split("_")
        anat = out / subject / session / "anat"
        anat.mkdir(parents=True)
        table_rows = []
        for reference, sides in rows.groupby("reference"):
            means = dict(zip(sides["hemisphere"], sides["mean_ppb"]))
            means["bilateral"] = (means["L"] + means["R"]) / 2
            for hemisphere, mean in means.items():
                table_rows.append({"region": "motor_cortex", "hemisphere": hemisphere,
                                   "reference": reference, "mean_ppb": mean,
                                   "median_ppb": mean, "sd_ppb": 10.0, "p05_ppb": mean - 15,
                                   "p95_ppb": mean + 15, "n_voxels": 100, "volume_mm3": 800.0,
                                   "ai_pct": math.nan,
                                   "ai_abs_pct": (200 * (means["R"] - means["L"])
                                                  / (abs(means["R"]) + abs(means["L"]))
                                                  if hemisphere == "bilateral" else math.nan)})
        write_regional_table(table_rows, anat / f"{scan}_desc-regions_stats.tsv")
        (anat / f"{scan}_desc-cbs_report.json").write_text(json.dumps(
            {"acquisition": {"acquisition_date": date_of[scan]}, "qc": {"values": {}}}))
    diagnoses = tidy.drop_duplicates("subject")[["subject", "diagnosis"]]
    (bids / "participants.tsv").write_text("participant_id\tdiagnosis\n" + "".join(
        f"{subject}\t{diagnosis}\n" for subject, diagnosis in diagnoses.itertuples(index=False)))
    return out, bids


def test_the_group_level_writes_rates_and_a_change_section(tmp_path):
    tidy, dates = _simulated_tidy(per_diagnosis=4, sessions=2)
    out, bids = _write_cohort_outputs(tmp_path, tidy, dates)
    written = run_group_level(out, bids)
    rates = pd.read_csv(written["longitudinal_rates"], sep="\t")
    assert written["longitudinal_rates"].name == "longitudinal_rates.tsv"
    assert set(rates["diagnosis"]) == set(SLOPES) and len(rates) == 3 * len(SLOPES)
    cbs_left = rates[(rates["diagnosis"] == "CBS") & (rates["hemisphere"] == "L")].iloc[0]
    assert cbs_left["rate_ppb_per_year"] == pytest.approx(12.0, abs=4.0)
    html = (out / "group" / "group.html").read_text()
    assert 'id="change-over-time"' in html and "motor_cortex_L_mean_ppb" in html


def test_the_group_level_with_one_followed_participant_states_why(tmp_path):
    tidy, dates = _simulated_tidy(per_diagnosis=2, sessions=2, followed=0)
    follow_up = tidy["subject"] == "sub-cbs00"
    extra, extra_dates = _simulated_tidy(per_diagnosis=1, sessions=2, seed=3)
    extra = extra[extra["subject"] == "sub-cbs00"]
    tidy = pd.concat([tidy[~follow_up], extra])
    dates = pd.concat([dates[~dates["scan"].str.startswith("sub-cbs00")],
                       extra_dates[extra_dates["scan"].str.startswith("sub-cbs00")]])
    out, bids = _write_cohort_outputs(tmp_path, tidy, dates)
    stale = out / "group" / "longitudinal_rates.tsv"
    stale.parent.mkdir(parents=True)
    stale.write_text("left from an earlier run\n")
    written = run_group_level(out, bids)
    assert "longitudinal_rates" not in written and not stale.exists()
    assert any("too few participants with two or more dated sessions" in note and "(n=1;" in note
               for note in written["notes"])
    html = (out / "group" / "group.html").read_text()
    section = html[html.index('id="change-over-time"'):]
    section = section[:section.index("</section>")]
    assert "too few participants" in section and "n/a" not in section


def test_undated_scans_are_not_modelled(tmp_path):
    tidy, dates = _simulated_tidy(per_diagnosis=3, sessions=2)
    dates = dates.assign(acquisition_date=None)
    result = write_longitudinal_rates(tidy, tmp_path / "rates.tsv", output_dir=tmp_path)
    assert result["path"] is None and result["n_followed"] == 0
    assert longitudinal_data(tidy, dates).empty


def test_years_between_uses_years_of_365_25_days():
    assert years_between("2020-01-01", "2021-01-01") == pytest.approx(366 / 365.25)
    assert years_between(None, "2021-01-01") is None
