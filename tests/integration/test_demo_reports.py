"""End to end: the demo's digital patients (control, CBS, PSP, PD) through the CLI; each report
names the right pattern and favoured side, and the control is not called CBS or PSP with high
confidence."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cli_helpers import run_cli

from qsmprep.reports.render import validate_report

EXPECTED = {  # subject: (pattern, favoured side or None when not checked)
    "control": ("none", None),  # no disease pattern: every hallmark measured and absent
    "cbs": ("CBS", "L"),
    "psp": ("PSP", None),
    "pd": ("PD", "R"),
}


@pytest.fixture(scope="module")
def demo_run(demo_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("demo_run")
    result = run_cli(demo_bids, base / "out", "participant", "-w", base / "work",
                     "--nprocs", "2", "--omp-nthreads", "1")
    return {"result": result, "out": base / "out", "bids": demo_bids}


def _report(out, subject):
    paths = sorted(out.glob(f"sub-{subject}/**/anat/*_desc-cbs_report.json"))
    assert len(paths) == 1, paths
    report = json.loads(paths[0].read_text())
    assert validate_report(report)
    return report


def test_demo_runs(demo_run):
    assert demo_run["result"].returncode == 0, demo_run["result"].stderr[-4000:]
    for subject in ("control", "cbs", "psp", "pd"):
        assert (demo_run["out"] / f"sub-{subject}.html").is_file()


@pytest.mark.parametrize("subject", sorted(EXPECTED))
def test_patients_get_their_pattern_and_side(demo_run, subject):
    interpretation = _report(demo_run["out"], subject)["interpretation"]
    pattern, side = EXPECTED[subject]
    assert interpretation["pattern"] == pattern, interpretation
    if side is not None:
        assert interpretation["asymmetry"]["side"] == side, interpretation["asymmetry"]


def test_control_is_not_called_cbs_or_psp_with_high_confidence(demo_run):
    interpretation = _report(demo_run["out"], "control")["interpretation"]
    assert not (interpretation["pattern"] in ("CBS", "PSP")
                and interpretation["confidence"] == "high"), interpretation
    # its motor cortex sits at healthy values: no side is favoured in the statement
    assert interpretation["asymmetry"]["statement"] == "near healthy values"


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="Chromium is not installed (Debian package 'chromium')")
def test_demo_report_opens_in_chromium(demo_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    html = demo_run["out"] / "sub-cbs.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "findings" in dom.stdout.lower() and "<table" in dom.stdout
    assert "consistent with CBS" in dom.stdout or "CBS" in dom.stdout


def test_group_level_on_the_demo_is_reproducible(demo_run):
    out = demo_run["out"]
    first = run_cli(demo_run["bids"], out, "group")
    assert first.returncode == 0, first.stderr[-3000:]
    group = out / "group"
    written = {path.name: path.read_bytes() for path in sorted(group.rglob("*"))
               if path.is_file()}
    for name in ("regions_tidy.tsv", "scans_wide.tsv", "exclusions.tsv",
                 "group_descriptives.tsv", "group_comparisons.tsv", "group.html"):
        assert name in written, sorted(written)
    header = written["scans_wide.tsv"].decode().splitlines()[0].split("\t")
    assert "diagnosis" in header and "motor_cortex_L_mean_ppb" in header
    assert len(written["scans_wide.tsv"].decode().splitlines()) == 1 + 4
    second = run_cli(demo_run["bids"], out, "group")
    assert second.returncode == 0
    assert {path.name: path.read_bytes() for path in sorted(group.rglob("*"))
            if path.is_file()} == written
    assert "regions_raw.svg" in written and "research aid" in written["group.html"].decode().lower()
