"""End to end: the demo's digital patients (control, CBS, PSP, PD, ALS, MSA, AD) through the
CLI; each report names the right pattern and favoured side, the ALS profile flags the deep
precentral grey matter, and the control is not called CBS or PSP with high confidence."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cli_helpers import run_cli

from qsmprep.phantom.dataset import DEMO_SESSIONS, DIGITAL_PATIENTS
from qsmprep.reports.render import validate_report

EXPECTED = {  # subject: (pattern, favoured side or None when not checked)
    "control": ("none", None),  # no disease pattern: every hallmark measured and absent
    "cbs": ("CBS", "L"),
    "psp": ("PSP", None),
    "pd": ("PD", "R"),
    # bilateral, symmetric precentral iron: not the CBS hallmark; the motor-neuron profile
    # carries it (test below)
    "als": ("indeterminate", None),
    "msa": ("MSA", "L"),
    "ad": ("AD", None),
}


@pytest.fixture(scope="module")
def demo_run(demo_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("demo_run")
    result = run_cli(demo_bids, base / "out", "participant", "-w", base / "work",
                     "--nprocs", "2", "--omp-nthreads", "1")
    return {"result": result, "out": base / "out", "bids": demo_bids}


def _reports(out, subject):
    """Every report of ``subject``, one per session (in session order)."""
    paths = sorted(out.glob(f"sub-{subject}/**/anat/*_desc-cbs_report.json"))
    assert len(paths) == len(DEMO_SESSIONS.get(subject, [None])), paths
    reports = [json.loads(path.read_text()) for path in paths]
    for report in reports:
        assert validate_report(report)
    return reports


def _report(out, subject):
    """The report of ``subject``'s first (or only) session."""
    return _reports(out, subject)[0]


def test_demo_runs(demo_run):
    assert demo_run["result"].returncode == 0, demo_run["result"].stderr[-4000:]
    for subject in DIGITAL_PATIENTS:
        assert (demo_run["out"] / f"sub-{subject}.html").is_file()


@pytest.mark.parametrize("subject", sorted(EXPECTED))
def test_patients_get_their_pattern_and_side(demo_run, subject):
    pattern, side = EXPECTED[subject]
    for report in _reports(demo_run["out"], subject):  # every session
        interpretation = report["interpretation"]
        assert interpretation["pattern"] == pattern, (report["prefix"], interpretation)
        if side is not None:
            assert interpretation["asymmetry"]["side"] == side, interpretation["asymmetry"]


def test_the_cbs_patients_change_over_time_shows_the_iron_increase(demo_run):
    out = demo_run["out"]
    dates = [report["acquisition"]["acquisition_date"] for report in _reports(out, "cbs")]
    assert dates == [acq_time for _, acq_time in DEMO_SESSIONS["cbs"]]
    table = (out / "sub-cbs" / "anat" / "sub-cbs_desc-longitudinal_stats.tsv").read_text()
    header, *lines = [line.split("\t") for line in table.splitlines()]
    rows = {(row[0], row[1]): dict(zip(header, row)) for row in lines}
    motor = rows["motor_cortex", "L"]
    assert (motor["session_from"], motor["session_to"]) == ("1", "2")
    assert float(motor["interval_years"]) == pytest.approx(2.0, abs=0.01)
    assert float(motor["rate_ppb_per_year"]) > 0, motor
    assert motor["beyond_noise"] == "true", motor
    html = (out / "sub-cbs.html").read_text()
    assert 'id="change-over-time"' in html
    assert 'id="change-over-time"' not in (out / "sub-pd.html").read_text()


def test_the_als_profile_flags_the_precentral_grey_matter(demo_run):
    """The ALS patient's profile flags the precentral grey matter and its interpretation
    points to it; the control's profile flags nothing. (At the demo's 2 mm the cortex is one
    or two voxels thick, too thin to separate the deep half: that is measured at 1 mm, see
    the README.)"""
    report = _report(demo_run["out"], "als")
    profile = report["motor_profile"]
    assert profile["flagged"] and profile["elevated_sides"], profile
    by_name = {region["region"]: region for region in profile["regions"]}
    assert {"motor_cortex_superficial", "motor_cortex_deep",
            "corticospinal_tract"} <= set(by_name)
    assert all(by_name["corticospinal_tract"]["elevated"].values()), by_name
    assert "motor-neuron profile" in report["interpretation"]["statement"]
    assert not _report(demo_run["out"], "control")["motor_profile"]["flagged"]
    html = (demo_run["out"] / "sub-als.html").read_text()
    assert "Motor-neuron profile (ALS)" in html and "motorprofile_Chimap.svg" in html


def test_control_is_not_called_cbs_or_psp_with_high_confidence(demo_run):
    interpretation = _report(demo_run["out"], "control")["interpretation"]
    assert not (interpretation["pattern"] in ("CBS", "PSP")
                and interpretation["confidence"] == "high"), interpretation
    # its motor cortex sits at healthy values: no side is favoured in the statement
    assert interpretation["asymmetry"]["statement"] == "near healthy values"


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _screenshot(html, png):
    """Render ``html`` in headless Chromium: (its DOM after loading, the PNG screenshot)."""
    options = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([_chromium(), *options, "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([_chromium(), *options, "--window-size=1280,2400",
                           f"--screenshot={png}", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.stat().st_size > 10000, shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return dom.stdout


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian package "
                    "'chromium')")
@pytest.mark.parametrize("subject", sorted(DIGITAL_PATIENTS))
def test_every_demo_report_renders_in_chromium_with_legends_and_units(demo_run, subject,
                                                                       tmp_path):
    """Each participant's report loads in a browser and screenshots; every figure has its
    caption (legend) and every table of values its unit."""
    dom = _screenshot(demo_run["out"] / f"sub-{subject}.html", tmp_path / "report.png")
    assert "findings" in dom.lower() and "<table" in dom
    assert "R (ppb)" in dom and "L (ppb)" in dom  # units of the findings table
    assert "outlines of the measured regions" in dom  # the QSM mosaic's caption
    assert "on the colour bar" in dom  # the window is stated where it is drawn
    assert dom.count("<figcaption") >= 3
    if subject == "als":
        assert "Motor-neuron profile (ALS)" in dom


def test_group_level_on_the_demo_is_reproducible(demo_run):
    out = demo_run["out"]
    clinical = ("--clinical-columns", "UPDRS_III", "MMSE", "disease_duration")
    first = run_cli(demo_run["bids"], out, "group", *clinical)
    assert first.returncode == 0, first.stderr[-3000:]
    group = out / "group"
    written = {path.name: path.read_bytes() for path in sorted(group.rglob("*"))
               if path.is_file()}
    for name in ("regions_tidy.tsv", "scans_wide.tsv", "exclusions.tsv",
                 "group_descriptives.tsv", "group_comparisons.tsv", "group.html"):
        assert name in written, sorted(written)
    header = written["scans_wide.tsv"].decode().splitlines()[0].split("\t")
    assert "diagnosis" in header and "motor_cortex_L_mean_ppb" in header
    scans = sum(len(DEMO_SESSIONS.get(label, [None])) for label in DIGITAL_PATIENTS)
    assert len(written["scans_wide.tsv"].decode().splitlines()) == 1 + scans
    # one participant followed over time: the group report says so instead of a table
    assert "longitudinal_rates.tsv" not in written
    assert "too few participants with two or more dated sessions" in written[
        "group.html"].decode()
    second = run_cli(demo_run["bids"], out, "group", *clinical)
    assert second.returncode == 0
    assert {path.name: path.read_bytes() for path in sorted(group.rglob("*"))
            if path.is_file()} == written
    assert "regions_raw.svg" in written and "research aid" in written["group.html"].decode().lower()
    # the simulated motor severity follows the simulated motor-cortex iron
    lines = [line.split("\t") for line in written["clinical_correlations.tsv"].decode().splitlines()]
    rows = [dict(zip(lines[0], line)) for line in lines[1:]]
    assert {row["clinical"] for row in rows} == {"UPDRS_III", "MMSE", "disease_duration"}
    motor = next(row for row in rows if row["clinical"] == "UPDRS_III"
                 and row["feature"] == "motor_cortex_bilateral_mean_ppb")
    assert float(motor["rho"]) > 0.5, motor
    html = written["group.html"].decode()
    assert 'id="clinical-correlations-table"' in html and "clinical_scatter.svg" in written
    assert "cortical-to-subcortical ratio ROC: too few scans for this" in html
    if _chromium() is not None:  # the group report renders and screenshots too
        dom = _screenshot(group / "group.html", group.parent.parent / "group_report.png")
        assert "<table" in dom and "<img" in dom
