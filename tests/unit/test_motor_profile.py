"""The motor-neuron (ALS) profile: elevation against healthy values and control z-scores, the
deep-minus-superficial measure, its figure and its place in the report."""

import math
import re
import xml.etree.ElementTree as ET

import pytest

from qsmprep.regions import asymmetry_index
from qsmprep.reports import cbs
from qsmprep.reports.figures import plot_motor_profile
from qsmprep.reports.motor import RANGE_HALF_WIDTH_SD, motor_neuron_profile


def rows_of(values):
    """CSF-referenced regional rows for ``values`` ({region: ppb or (L, R)})."""
    rows = []
    for region, value in values.items():
        left, right = value if isinstance(value, tuple) else (value, value)
        means = {"L": left, "R": right, "bilateral": (left + right) / 2}
        ai_pct, ai_abs_pct = asymmetry_index(right, left)
        for hemisphere, mean in means.items():
            rows.append({"region": region, "hemisphere": hemisphere, "reference": "csf",
                         "mean_ppb": mean, "median_ppb": mean, "sd_ppb": 10.0,
                         "n_voxels": 100, "core_mean_ppb": math.nan,
                         "ai_pct": ai_pct if hemisphere == "bilateral" else math.nan,
                         "ai_abs_pct": ai_abs_pct if hemisphere == "bilateral" else math.nan})
    return rows


HEALTHY = {"motor_cortex": (14, 16), "motor_cortex_superficial": (12, 13),
           "motor_cortex_deep": (17, 18), "primary_motor_cortex": 15,
           "corticospinal_tract": -28, "putamen": 36}
ALS = {**HEALTHY, "motor_cortex": (42, 36), "motor_cortex_superficial": (22, 20),
       "motor_cortex_deep": (62, 52), "primary_motor_cortex": (50, 45),
       "corticospinal_tract": (-5, -18)}


def test_a_healthy_motor_cortex_is_not_flagged():
    profile = motor_neuron_profile(rows_of(HEALTHY))
    assert profile["measured"] and not profile["flagged"]
    assert profile["statement"].startswith("Precentral grey matter within the healthy")
    assert [region["region"] for region in profile["regions"]] == [
        "motor_cortex", "motor_cortex_superficial", "motor_cortex_deep",
        "primary_motor_cortex", "corticospinal_tract"]
    assert profile["deep_minus_superficial_ppb"] == {"L": 5.0, "R": 5.0}


def test_bilateral_deep_precentral_iron_is_flagged_on_both_sides():
    profile = motor_neuron_profile(rows_of(ALS))
    assert profile["flagged"] and profile["elevated_sides"] == ["L", "R"]
    assert "left and right" in profile["statement"]
    assert "higher in the deep half" in profile["statement"]
    assert profile["deep_minus_superficial_ppb"] == {"L": 40.0, "R": 32.0}
    by_name = {region["region"]: region for region in profile["regions"]}
    # healthy value + 15 ppb: 30 ppb for grey matter, -15 ppb for the tract
    assert by_name["motor_cortex"]["elevated"] == {"L": True, "R": True}
    assert by_name["motor_cortex_superficial"]["elevated"] == {"L": False, "R": False}
    assert by_name["corticospinal_tract"]["elevated"] == {"L": True, "R": False}
    assert all(value is None for region in profile["regions"] for value in region["z"].values())


def test_control_ranges_give_z_scores(tmp_path):
    """A control range of 5-25 ppb is a mean of 15 and an SD of 20 / (2 x 1.2816)."""
    table = tmp_path / "ranges.tsv"
    table.write_text("region\tpattern\tlow_ppb\thigh_ppb\n"
                     "motor_cortex\tcontrol\t5\t25\nmotor_cortex_deep\tcontrol\t8\t30\n")
    ranges = cbs.read_reference_ranges(table)
    profile = motor_neuron_profile(rows_of(ALS), reference_ranges=ranges)
    motor = profile["regions"][0]
    sd = 20 / (2 * RANGE_HALF_WIDTH_SD)
    assert motor["control"]["mean_ppb"] == pytest.approx(15.0)
    assert motor["control"]["sd_ppb"] == pytest.approx(sd)
    assert motor["z"]["L"] == pytest.approx(round((42 - 15) / sd, 2))
    assert motor["elevated"] == {"L": True, "R": True}
    assert profile["basis"].startswith("the control range")
    # a value inside the control range is not elevated
    near = motor_neuron_profile(rows_of({**ALS, "motor_cortex": 20, "motor_cortex_deep": 22}),
                                reference_ranges=ranges)
    assert near["regions"][0]["z"]["L"] < 2 and not near["flagged"]


def test_without_the_precentral_cortex_the_profile_says_so():
    profile = motor_neuron_profile(rows_of({"putamen": 36}))
    assert not profile["measured"] and profile["regions"] == []
    assert profile["statement"] == "Precentral grey matter not measured"


def test_profile_figure_has_a_lane_per_region_and_marks_elevated_sides(tmp_path):
    profile = motor_neuron_profile(rows_of(ALS))
    path = plot_motor_profile(profile, tmp_path / "profile.svg")
    content = open(path, encoding="utf-8").read()
    ET.fromstring(content)  # well-formed
    text = " ".join(re.findall(r"<!-- (.*?) -->", content))  # each text's string
    for region in profile["regions"]:
        assert region["label"] in text
    assert "susceptibility (ppb)" in text
    assert "#d55e00" in content.lower()  # elevated sides in the emphasis colour
    healthy_path = plot_motor_profile(motor_neuron_profile(rows_of(HEALTHY)),
                                      tmp_path / "healthy.svg")
    assert "#d55e00" not in open(healthy_path, encoding="utf-8").read().lower()
