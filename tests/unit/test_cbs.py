"""CBS / PSP / PD pattern scoring: reference ranges, findings, asymmetry, quality, confidence.

The digital patients are regional tables (as written by :mod:`qsmprep.regions`) whose means
sit in the middle of each pattern's published ranges (values in ppb relative to CSF); the
control has the healthy values of the RC2 head phantom.
"""

import math

import pytest

from qsmprep.errors import UsageError
from qsmprep.regions import asymmetry_index
from qsmprep.reports import cbs

#: Healthy adult (RC2 head phantom, relative to CSF); composites equal their parts.
CONTROL = {
    "motor_cortex": 15, "premotor_cortex": 15, "globus_pallidus_externa": 124,
    "globus_pallidus_interna": 124, "globus_pallidus": 124, "subthalamic_nucleus": 97,
    "red_nucleus": 97, "substantia_nigra_compacta": 102, "substantia_nigra_reticulata": 102,
    "substantia_nigra": 102, "putamen": 36, "caudate": 39, "thalamus": 16,
    "lateral_ventricle": 0,
}
#: Values are one number (both sides) or (left, right).
CBS_PATIENT = {**CONTROL, "motor_cortex": (100, 50), "premotor_cortex": (80, 40),
               "globus_pallidus_interna": 115, "red_nucleus": 80, "subthalamic_nucleus": 90,
               "substantia_nigra": 140, "putamen": (80, 70), "thalamus": 45}
PSP_PATIENT = {**CONTROL, "motor_cortex": 25, "globus_pallidus_interna": 200,
               "red_nucleus": 160, "subthalamic_nucleus": 150, "substantia_nigra": 185,
               "putamen": 100, "thalamus": 70}
PD_PATIENT = {**CONTROL, "motor_cortex": 20, "globus_pallidus_interna": 60, "red_nucleus": 70,
              "subthalamic_nucleus": 75, "substantia_nigra": (240, 310), "putamen": 45,
              "thalamus": 30}

#: Whole-brain mean relative to CSF in these tables (ppb): whole-brain values are lower.
WHOLE_BRAIN_OFFSET_PPB = -12.0


def regional_rows(values, *, voxels=200, small=()):
    """Rows of a regional statistics table for ``values`` ({region: ppb or (L, R)}), relative
    to CSF and to the whole brain; regions in ``small`` get 3 voxels per side."""
    rows = []
    for region, value in values.items():
        left, right = value if isinstance(value, tuple) else (value, value)
        count = 3 if region in small else voxels
        for reference, offset in (("whole-brain", -WHOLE_BRAIN_OFFSET_PPB), ("csf", 0.0)):
            means = {"L": left + offset, "R": right + offset}
            means["bilateral"] = (means["L"] + means["R"]) / 2
            ai_pct, ai_abs_pct = asymmetry_index(means["R"], means["L"])
            for hemisphere, mean in means.items():
                both = hemisphere == "bilateral"
                rows.append({
                    "region": region, "hemisphere": hemisphere, "reference": reference,
                    "mean_ppb": mean, "median_ppb": mean, "sd_ppb": 12.0,
                    "p05_ppb": mean - 20, "p95_ppb": mean + 20,
                    "n_voxels": 2 * count if both else count,
                    "volume_mm3": float(2 * count if both else count),
                    "ai_pct": ai_pct if both else math.nan,
                    "ai_abs_pct": ai_abs_pct if both else math.nan})
    return rows


def swapped(values):
    """The same subject with left and right exchanged."""
    return {region: (value[1], value[0]) if isinstance(value, tuple) else value
            for region, value in values.items()}


def interpret(values, *, qc=None, ranges=None, **options):
    found = cbs.findings(regional_rows(values, **options), reference_ranges=ranges)
    return cbs.score_patterns(found, quality=cbs.assess_quality(qc, found))


def _region(found, name):
    return next(region for region in found["regions"] if region["region"] == name)


GOOD_QC = {"registration": {"dice_brain": 0.95, "nmi": 1.22}, "mask_volume_ml": 1450.0,
           "echo_fit_residual": 0.04, "poor_phase_fraction": 0.02}


# ------------------------------------------------------------------------ reference ranges
def test_default_ranges_are_the_published_table_relative_to_csf():
    ranges = cbs.read_reference_ranges()
    assert ranges["default"] and ranges["reference"] == "csf"
    table = {(row["region"], row["pattern"]): (row["low_ppb"], row["high_ppb"])
             for row in ranges["rows"]}
    assert len(table) == 18
    assert table["motor_cortex", "CBS"] == (45, 120)
    assert table["globus_pallidus_interna", "PSP"] == (150, 250)
    assert table["red_nucleus", "PSP"] == (120, 200)
    assert table["substantia_nigra", "PD"] == (200, 350)
    assert table["putamen", "PD"] == (30, 60)
    assert table["thalamus", "CBS"] == (30, 60)
    assert all(row["source"] for row in ranges["rows"])


def _write(tmp_path, text, name="ranges.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = "region\tpattern\tlow_ppb\thigh_ppb\n"


@pytest.mark.parametrize("body, expected", [
    ("region\tpattern\tlow\thigh_ppb\nputamen\tCBS\t1\t2\n", "missing column(s) low_ppb"),
    (HEADER + "putamen\tCBS\tfifty\t100\n", "line 2, column low_ppb: 'fifty' is not a number"),
    (HEADER + "putamen\tCBS\t50\t100\nthalamus\tPSP\t90\t50\n",
     "line 3: low_ppb 90 is above high_ppb 50"),
    (HEADER + "putamen\tALS\t50\t100\n", "line 2, column pattern: 'ALS' is not one of"),
    (HEADER + "Putamen Left\tCBS\t50\t100\n", "line 2, column region: 'Putamen Left'"),
    (HEADER + "putamen\tCBS\t50\t100\nputamen\tcbs\t60\t90\n",
     "line 3: a second CBS range for putamen (the first is on line 2)"),
    (HEADER + "putamen\tCBS\tnan\t100\n", "column low_ppb: 'nan' is not a finite number"),
    (HEADER, "no ranges"),
    ("region\tpattern\tlow_ppb\thigh_ppb\treference\nputamen\tCBS\t1\t2\tcsf\n"
     "thalamus\tCBS\t1\t2\twhole-brain\n", "mixes csf and whole-brain"),
    ("region\tpattern\tlow_ppb\thigh_ppb\treference\nputamen\tCBS\t1\t2\tventricles\n",
     "column reference: 'ventricles'"),
    (HEADER + "putamen\tCBS\t50\t100\textra\n", "line 2: more fields than columns"),
])
def test_malformed_range_tables_are_usage_errors_naming_file_line_and_column(
        tmp_path, body, expected):
    path = _write(tmp_path, body)
    with pytest.raises(UsageError) as caught:
        cbs.read_reference_ranges(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_range_table_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="file not found"):
        cbs.read_reference_ranges(tmp_path / "absent.tsv")


def test_user_range_table_is_read_with_case_insensitive_patterns(tmp_path):
    path = _write(tmp_path, "region\tpattern\tlow_ppb\thigh_ppb\tsource\tnote\n"
                            "putamen\tmsa\t120\t250\tmy scanner\tignored\n"
                            "motor_cortex\tcbs\t30\t90\t\t\n")
    ranges = cbs.read_reference_ranges(path)
    assert not ranges["default"] and ranges["reference"] == "csf"
    assert ranges["rows"][0] == {"region": "putamen", "pattern": "MSA", "low_ppb": 120.0,
                                 "high_ppb": 250.0, "source": "my scanner"}
    assert ranges["rows"][1]["pattern"] == "CBS"


# -------------------------------------------------------------------------------- findings
def test_findings_list_template_regions_first_with_values_asymmetry_and_placement():
    found = cbs.findings(regional_rows(CBS_PATIENT))
    names = [region["region"] for region in found["regions"]]
    assert names[:6] == list(cbs.CORE_REGIONS)
    assert {"subthalamic_nucleus", "globus_pallidus_externa", "caudate",
            "premotor_cortex"} <= set(names[6:])
    assert "dentate_nucleus" not in names  # not in the atlas: not listed
    motor = _region(found, "motor_cortex")
    assert (motor["left_ppb"], motor["right_ppb"], motor["bilateral_ppb"]) == (100, 50, 75)
    assert motor["ai_pct"] == pytest.approx(-66.7)
    assert motor["favoured_side"] == "L" and motor["asymmetry"] == "favouring L"
    assert motor["placement"]["L"] == {"CBS": "within", "PSP": "above", "PD": "above"}
    assert motor["placement"]["R"]["CBS"] == "within"
    assert motor["within"] == ["CBS"]
    assert motor["n_voxels"] == {"L": 200, "R": 200, "bilateral": 400}
    assert _region(found, "caudate")["ranges"] == []


def test_findings_use_the_requested_reference():
    csf = _region(cbs.findings(regional_rows(CONTROL)), "putamen")
    whole = _region(cbs.findings(regional_rows(CONTROL), reference="whole-brain"), "putamen")
    assert whole["bilateral_ppb"] == pytest.approx(csf["bilateral_ppb"] - WHOLE_BRAIN_OFFSET_PPB)
    rows = [row for row in regional_rows(CONTROL) if row["reference"] == "whole-brain"]
    with pytest.raises(ValueError, match="no rows relative to 'csf'"):
        cbs.findings(rows)


def test_a_missing_core_region_is_listed_as_not_measured():
    values = {key: value for key, value in CONTROL.items() if key != "thalamus"}
    thalamus = _region(cbs.findings(regional_rows(values)), "thalamus")
    assert thalamus["bilateral_ppb"] is None and thalamus["asymmetry"] == "not measured"
    assert thalamus["placement"] == {} and thalamus["within"] == []


@pytest.mark.parametrize("left, right, ai, side", [
    (100.0, 50.0, -66.7, "L"),
    (50.0, 100.0, 66.7, "R"),
    (100.0, 95.0, 5.1, None),   # below 10 %
    (16.0, 12.0, -28.6, None),  # 4 ppb apart: noise in a low-iron region
    (None, 12.0, None, None),
])
def test_favoured_side_needs_ten_percent_and_five_ppb(left, right, ai, side):
    assert cbs.favoured_side(left, right, ai) == side


# ------------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("values, pattern, asymmetry", [
    (CBS_PATIENT, "CBS", "favouring L"),
    (PSP_PATIENT, "PSP", "symmetric"),
    (PD_PATIENT, "PD", "favouring R"),
])
def test_each_digital_patient_gets_its_pattern_and_favoured_side(values, pattern, asymmetry):
    result = interpret(values, qc=GOOD_QC)["interpretation"]
    assert result["pattern"] == pattern
    assert result["statement"] == f"Pattern consistent with {pattern}"
    assert result["asymmetry"]["statement"] == asymmetry
    assert result["confidence"] == "high"


def test_the_asymmetry_is_read_where_each_pattern_shows_it():
    assert interpret(CBS_PATIENT)["interpretation"]["asymmetry"]["region"] == "motor_cortex"
    assert interpret(PSP_PATIENT)["interpretation"]["asymmetry"]["region"] == \
        "globus_pallidus_interna"
    assert interpret(PD_PATIENT)["interpretation"]["asymmetry"]["region"] == "substantia_nigra"


def test_the_control_is_not_called_cbs_or_psp_with_high_confidence():
    result = interpret(CONTROL, qc=GOOD_QC)
    interpretation = result["interpretation"]
    assert not (interpretation["pattern"] in ("CBS", "PSP")
                and interpretation["confidence"] == "high")
    assert interpretation["pattern"] == "none"
    assert interpretation["statement"].startswith("No disease pattern")
    assert interpretation["confidence"] in ("moderate", "high")
    assert interpretation["asymmetry"]["statement"] == "near healthy values"
    assert not any(score["hallmark_met"] for score in result["patterns"].values())


def test_a_hallmark_that_cannot_be_assessed_leaves_the_control_indeterminate():
    """Without a substantia nigra the nigral (PD) hallmark is not measured: no "no disease
    pattern" then, but indeterminate with low confidence."""
    values = {key: value for key, value in CONTROL.items() if not key.startswith("substantia")}
    interpretation = interpret(values, qc=GOOD_QC)["interpretation"]
    assert interpretation["pattern"] == "indeterminate"
    assert interpretation["confidence"] == "low"


@pytest.mark.parametrize("region, left, right, statement", [
    ("motor_cortex", 11.0, 16.0, "near healthy values"),  # a control's 11 vs 16 ppb
    ("motor_cortex", 63.0, 18.0, "favouring L"),           # one-sided cortical iron (CBS)
    ("motor_cortex", 12.0, 26.0, "favouring R"),           # above 15 + 5 ppb
    ("globus_pallidus_interna", 100.0, 125.0, "near healthy values"),
    ("globus_pallidus_interna", 200.0, 140.0, "favouring L"),
    ("subthalamic_nucleus", 60.0, 90.0, "favouring R"),    # no healthy value: unguarded
])
def test_an_asymmetry_is_stated_only_above_the_healthy_value(region, left, right, statement):
    ai = cbs.asymmetry_index(right, left)[1]
    side = cbs.favoured_side(left, right, ai)
    assert side is not None
    assert cbs.stated_asymmetry(region, left, right, side)[0] == statement
    # the features keep the favoured side: the control-like motor cortex is still "R" there
    values = {**CONTROL, region: (left, right)}
    found = _region(cbs.findings(regional_rows(values)), region)
    assert found["favoured_side"] == side and found["asymmetry"] == statement


@pytest.mark.parametrize("values", [CBS_PATIENT, PD_PATIENT])
def test_swapping_hemispheres_flips_the_asymmetry_statement(values):
    before = interpret(values)["interpretation"]
    after = interpret(swapped(values))["interpretation"]
    flipped = {"favouring L": "favouring R", "favouring R": "favouring L"}
    assert after["asymmetry"]["statement"] == flipped[before["asymmetry"]["statement"]]
    assert after["asymmetry"]["ai_pct"] == pytest.approx(-before["asymmetry"]["ai_pct"])
    assert after["pattern"] == before["pattern"]


def test_scores_name_the_features_that_drove_them():
    result = interpret(CBS_PATIENT)
    cbs_score = result["patterns"]["CBS"]
    assert (cbs_score["agree"], cbs_score["applicable"]) == (5, 5)
    assert cbs_score["hallmark_met"] and cbs_score["candidate"]
    assert "Motor-cortex asymmetry" in cbs_score["agreed"]
    assert "Cortical-to-subcortical ratio" in cbs_score["agreed"]
    psp_score = result["patterns"]["PSP"]
    assert "GPi / STN / red-nucleus iron" in psp_score["disagreed"]
    features = {feature["name"]: feature for feature in result["features"]}
    assert features["cortical_subcortical_ratio"]["value"] == pytest.approx(100 / 97.5, abs=1e-3)
    assert features["gpi_stn_rn_elevation"]["votes"] == {"CBS": "agree", "PSP": "disagree",
                                                        "PD": "disagree", "MSA": "n/a"}
    assert features["nigral_pattern"]["votes"]["CBS"] == "n/a"


def test_every_feature_and_threshold_is_documented_in_the_module():
    documented = cbs.__doc__
    for feature in interpret(CBS_PATIENT)["features"]:
        assert feature["name"] in documented
    for text in ("210", "Murakami", "10 %", "0.40", "0.25", "0.85", "1.10", "local calibration"):
        assert text in documented


def test_cbs_and_psp_features_together_are_mixed():
    both = {**PSP_PATIENT, "motor_cortex": (110, 60)}
    result = interpret(both)
    assert result["interpretation"]["pattern"] == "mixed"
    assert result["interpretation"]["patterns"] == ["CBS", "PSP"]
    assert result["interpretation"]["statement"] == "Mixed features (CBS + PSP)"
    assert result["interpretation"]["confidence"] == "low"


def test_scoring_is_deterministic():
    assert interpret(PD_PATIENT, qc=GOOD_QC) == interpret(PD_PATIENT, qc=GOOD_QC)


# -------------------------------------------------------------------------------- quality
def test_quality_checks_flag_values_beyond_their_limits():
    quality = cbs.assess_quality({"registration": {"dice_brain": 0.80, "nmi": 1.05},
                                  "mask_volume_ml": 400.0, "echo_fit_residual": 0.5,
                                  "poor_phase_fraction": 0.2})
    checks = {check["name"]: check for check in quality["checks"]}
    assert all(check["flagged"] for check in checks.values())
    assert checks["poor_phase_fraction"]["value"] == 20.0
    assert quality["flagged_categories"] == ["registration", "mask", "phase"]
    unmeasured = cbs.assess_quality({})
    assert not any(check["flagged"] or check["measured"] for check in unmeasured["checks"])
    assert cbs.assess_quality(GOOD_QC)["flagged_categories"] == []


@pytest.mark.parametrize("qc, options, expected", [
    ({**GOOD_QC, "registration": {"dice_brain": 0.70, "nmi": 1.2}}, {}, "moderate"),
    ({**GOOD_QC, "poor_phase_fraction": 0.25}, {}, "moderate"),
    (GOOD_QC, {"small": ("red_nucleus",)}, "moderate"),
    ({**GOOD_QC, "registration": {"dice_brain": 0.70, "nmi": 1.02},
      "poor_phase_fraction": 0.25}, {}, "low"),
])
def test_poor_quality_lowers_the_confidence(qc, options, expected):
    result = interpret(CBS_PATIENT, qc=qc, **options)["interpretation"]
    assert result["pattern"] == "CBS"
    assert result["confidence_before_quality"] == "high"
    assert result["confidence"] == expected
    assert result["confidence_notes"]


def test_values_not_relative_to_the_ranges_reference_are_flagged():
    found = cbs.findings(regional_rows(CBS_PATIENT), reference="whole-brain")
    quality = cbs.assess_quality(GOOD_QC, found)
    assert quality["flagged_categories"] == ["reference"]


# ------------------------------------------------------------------------- user ranges
def _default_table_text(changed=None):
    """The default ranges as TSV text, with ``changed`` {(region, pattern): (low, high)}."""
    changed = changed or {}
    lines = []
    for row in cbs.read_reference_ranges()["rows"]:
        low, high = changed.get((row["region"], row["pattern"]),
                                (row["low_ppb"], row["high_ppb"]))
        lines.append(f"{row['region']}\t{row['pattern']}\t{low}\t{high}\n")
    return HEADER + "".join(lines)


def test_a_user_range_table_changes_placement_and_scoring(tmp_path):
    text = _default_table_text({("motor_cortex", "CBS"): (150, 200)})
    ranges = cbs.read_reference_ranges(_write(tmp_path, text))
    found = cbs.findings(regional_rows(CBS_PATIENT), reference_ranges=ranges)
    assert _region(found, "motor_cortex")["placement"]["L"]["CBS"] == "below"
    result = cbs.score_patterns(found)
    assert not result["patterns"]["CBS"]["hallmark_met"]
    assert result["interpretation"]["pattern"] != "CBS"


#: The regions of the wider differential diagnosis at healthy values (grey matter 15, white
#: matter -30 ppb; RC2).
WIDER_HEALTHY = {"cerebellar_cortex": 12, "hippocampus": 14, "superior_temporal_gyrus": 15,
                 "posterior_cingulate": 16, "superior_parietal_lobule": 14,
                 "corticospinal_tract": -28}
MSA_PATIENT = {**CONTROL, **WIDER_HEALTHY, "putamen": (190, 150), "globus_pallidus_interna": 140,
               "cerebellar_cortex": 45, "motor_cortex": 20}
AD_PATIENT = {**CONTROL, **WIDER_HEALTHY, "hippocampus": (60, 50),
              "superior_temporal_gyrus": 40, "posterior_cingulate": 38, "putamen": 40}


def test_msa_and_ad_are_assessed_when_their_regions_are_measured():
    """Without the hippocampus AD is not assessed, and says why; with the wider regions at
    healthy values the control has no disease pattern."""
    result = interpret(CONTROL)
    assert "MSA" in result["patterns"] and "AD" not in result["patterns"]
    assert "Hippocampus not measured" in result["not_assessed"]["AD"]
    healthy = interpret({**CONTROL, **WIDER_HEALTHY})
    assert set(healthy["patterns"]) == {"CBS", "PSP", "PD", "MSA", "AD"}
    assert not healthy["not_assessed"]
    assert healthy["interpretation"]["pattern"] == "none"
    assert all(not score["hallmark_met"] for score in healthy["patterns"].values())


def test_putaminal_and_cerebellar_iron_is_msa():
    result = interpret(MSA_PATIENT)
    assert result["interpretation"]["pattern"] == "MSA"
    assert result["patterns"]["MSA"]["agree"] == result["patterns"]["MSA"]["applicable"] == 2
    # the cerebellum was measured: no cap on the confidence
    assert result["interpretation"]["confidence"] != "low"
    assert result["interpretation"]["asymmetry"]["region"] == "putamen"
    assert result["interpretation"]["asymmetry"]["side"] == "L"
    # without the cerebellum, MSA rests on the putamen and its confidence is capped
    putamen_only = {key: value for key, value in MSA_PATIENT.items()
                    if key != "cerebellar_cortex"}
    capped = interpret(putamen_only)["interpretation"]
    assert capped["pattern"] == "MSA" and capped["confidence"] == "low"
    assert any("putamen alone" in note for note in capped["confidence_notes"])


def test_high_putamen_below_the_pallidum_is_not_msa():
    """PSP raises the putamen too, but its pallidum stays higher: no MSA hallmark."""
    result = interpret({**PSP_PATIENT, **WIDER_HEALTHY, "putamen": 120})
    assert not result["patterns"]["MSA"]["hallmark_met"]
    assert result["interpretation"]["pattern"] == "PSP"


def test_a_user_msa_putamen_range_sets_the_threshold(tmp_path):
    text = _default_table_text() + "putamen\tMSA\t200\t300\n"
    ranges = cbs.read_reference_ranges(_write(tmp_path, text))
    result = interpret(MSA_PATIENT, ranges=ranges)  # putamen 190: below the user's 200
    assert not result["patterns"]["MSA"]["hallmark_met"]
    features = {feature["name"]: feature for feature in result["features"]}
    assert "200" in features["putamen_elevation"]["rule"]


def test_hippocampal_and_temporoparietal_iron_with_spared_basal_ganglia_is_ad():
    result = interpret(AD_PATIENT)
    assert result["interpretation"]["pattern"] == "AD"
    assert result["patterns"]["AD"]["agree"] == 3
    assert result["interpretation"]["asymmetry"]["region"] == "hippocampus"
    # the same hippocampus with parkinsonian basal ganglia loses the sparing feature
    with_basal_ganglia = interpret({**AD_PATIENT, "putamen": 90, "globus_pallidus_interna": 200})
    features = {feature["name"]: feature for feature in with_basal_ganglia["features"]}
    assert features["basal_ganglia_sparing"]["votes"]["AD"] == "disagree"
    # CBS stays CBS when the wider regions are healthy
    assert interpret({**CBS_PATIENT, **WIDER_HEALTHY})["interpretation"]["pattern"] == "CBS"


def test_a_rejected_nuclei_refinement_is_flagged_and_one_not_run_is_not():
    rejected = {"Ran": True, "Accepted": False, "Reason": "it moved the deep grey matter by "
                "up to 7.1 mm (more than 5 mm): diverged"}
    quality = cbs.assess_quality({**GOOD_QC, "deep_grey_refinement": rejected})
    check = {c["name"]: c for c in quality["checks"]}["registration_refinement"]
    assert check["flagged"] and check["value"] == "first registration kept"
    assert "diverged" in check["rule"]
    assert quality["flagged_categories"] == ["registration"]
    refined = cbs.assess_quality({**GOOD_QC, "deep_grey_refinement": {
        "Ran": True, "Accepted": True, "Reason": ""}})
    assert refined["flagged_categories"] == []
    not_run = cbs.assess_quality({**GOOD_QC, "deep_grey_refinement": {
        "Ran": False, "Accepted": False, "Reason": "not run: the atlas has none of the deep "
        "grey-matter regions"}})
    check = {c["name"]: c for c in not_run["checks"]}["registration_refinement"]
    assert not check["flagged"] and not check["measured"] and "not run" in check["rule"]


def test_findings_read_the_core_mean_and_fall_back_to_the_plain_mean():
    rows = []
    for side, mean, core in (("L", 30.0, 70.0), ("R", 20.0, 25.0), ("bilateral", 25.0, 47.5)):
        rows.append({"region": "motor_cortex", "hemisphere": side, "reference": "csf",
                     "mean_ppb": mean, "core_mean_ppb": core, "n_voxels": 100,
                     "ai_abs_pct": -40.0 if side == "bilateral" else math.nan})
    rows.append({"region": "putamen", "hemisphere": "L", "reference": "csf", "mean_ppb": 60.0,
                 "core_mean_ppb": math.nan, "n_voxels": 100, "ai_abs_pct": math.nan})
    core = {region["region"]: region for region in cbs.findings(rows)["regions"]}
    assert core["motor_cortex"]["left_ppb"] == 70.0 and core["motor_cortex"]["right_ppb"] == 25.0
    # the asymmetry follows the values read, not the table's plain-mean index
    assert core["motor_cortex"]["ai_pct"] == pytest.approx(200 * (25 - 70) / 95, abs=0.1)
    assert core["putamen"]["left_ppb"] == 60.0  # no core mean: the plain mean
    plain = {region["region"]: region
             for region in cbs.findings(rows, statistic="mean_ppb")["regions"]}
    assert plain["motor_cortex"]["left_ppb"] == 30.0 and plain["motor_cortex"]["ai_pct"] == -40.0


def test_input_interpretation_is_stated_in_the_qc_not_flagged():
    quality = cbs.assess_quality({"input_checks": {"MaskedExportVoxels": 1200,
                                                   "PhaseUnitsInferred": "rad"}})
    (check,) = [check for check in quality["checks"] if check["name"] == "input"]
    assert check["value"] == "MaskedExportVoxels 1200; PhaseUnitsInferred rad"
    assert not check["flagged"] and "input" not in quality["flagged_categories"]
    assert not any(check["name"] == "input" for check in cbs.assess_quality({})["checks"])


def test_symmetric_motor_cortex_iron_is_not_called_cbs():
    """Bilateral, symmetric precentral iron (the motor-neuron pattern) lacks the CBS hallmark,
    the asymmetry: the result is indeterminate and points to the motor-neuron profile, never
    'no disease pattern', even below the CBS range (35 ppb >= healthy 15 + 15)."""
    als_like = {**CONTROL, **WIDER_HEALTHY, "motor_cortex": (60, 58)}
    result = interpret(als_like)
    assert result["patterns"]["CBS"]["hallmark"] == "motor_cortex_asymmetry"
    assert not result["patterns"]["CBS"]["hallmark_met"]
    assert result["interpretation"]["pattern"] == "indeterminate"
    assert "motor-neuron profile" in result["interpretation"]["statement"]
    # a bilateral rise measured a few ppb apart is not the CBS asymmetry either
    uneven = interpret({**als_like, "motor_cortex": (59, 51)})
    assert uneven["interpretation"]["pattern"] == "indeterminate"
    assert {f["name"]: f for f in uneven["features"]}["motor_cortex_asymmetry"]["votes"][
        "CBS"] == "disagree"
    mild = interpret({**als_like, "motor_cortex": (35, 34)})["interpretation"]
    assert mild["pattern"] == "indeterminate" and "motor-neuron" in mild["statement"]
    # the same cortex, one-sided, is CBS
    assert interpret({**als_like, "motor_cortex": (90, 30), "globus_pallidus_interna": 110}
                     )["interpretation"]["pattern"] == "CBS"
