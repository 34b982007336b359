"""Group level: collection, QC exclusions, ComBat, group statistics, classification, ranges."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsmprep.errors import BadDataError, MissingInputError
from qsmprep.group import (benjamini_hochberg, classify_diagnoses, collect_participant_results,
                           compare_asymmetry, compare_groups, harmonise, learned_reference_ranges,
                           qc_exclusions, site_effects, wide_table, write_reference_ranges)
from qsmprep.regions import asymmetry_index, write_regional_table
from qsmprep.reports.cbs import read_reference_ranges

REGIONS = {"motor_cortex": 40.0, "putamen": 60.0, "globus_pallidus_interna": 150.0,
           "thalamus": 10.0}
SITES = {"A": (0.0, 1.0), "B": (30.0, 1.6), "C": (-25.0, 0.7)}  # additive, multiplicative
EFFECT = {"motor_cortex": 35.0, "putamen": 5.0}  # CBS minus PSP


def _rows(means):
    rows = []
    for region, (left, right) in means.items():
        for reference, shift in (("whole-brain", -5.0), ("csf", 0.0)):
            sides = {"L": left + shift, "R": right + shift}
            sides["bilateral"] = (sides["L"] + sides["R"]) / 2
            ai = asymmetry_index(sides["R"], sides["L"])
            for hemisphere, mean in sides.items():
                both = hemisphere == "bilateral"
                rows.append({"region": region, "hemisphere": hemisphere, "reference": reference,
                             "mean_ppb": mean, "median_ppb": mean, "sd_ppb": 10.0,
                             "p05_ppb": mean - 15, "p95_ppb": mean + 15, "n_voxels": 100,
                             "volume_mm3": 100.0, "ai_pct": ai[0] if both else float("nan"),
                             "ai_abs_pct": ai[1] if both else float("nan")})
    return rows


def _cohort(tmp_path, n_per_cell=3, effect=EFFECT, seed=0, qc=None):
    """BIDS participants.tsv and participant outputs of a 3-site CBS/PSP cohort."""
    rng = np.random.default_rng(seed)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir(parents=True)
    participants = []
    number = 0
    for site, (shift, scale) in SITES.items():
        for diagnosis in ("CBS", "PSP"):
            for _ in range(n_per_cell):
                number += 1
                subject = f"sub-{number:03d}"
                age, sex = float(rng.integers(55, 80)), rng.choice(["F", "M"])
                participants.append((subject, site, diagnosis, age, sex))
                means = {}
                for region, base in REGIONS.items():
                    value = base + (effect.get(region, 0.0) / 2) * (1 if diagnosis == "CBS"
                                                                    else -1)
                    value += 0.3 * (age - 67)
                    sides = [value + shift + scale * rng.normal(0, 6) for _ in range(2)]
                    means[region] = tuple(sides)
                anat = out / subject / "anat"
                anat.mkdir(parents=True)
                table = write_regional_table(_rows(means), anat /
                                             f"{subject}_desc-regions_stats.tsv")
                dice, poor = (qc or {}).get(subject, (0.95, 0.02))
                table.with_suffix(".json").write_text(json.dumps(
                    {"RegistrationQuality": {"nmi": 1.2, "dice_brain": dice}}))
                (anat / f"{subject}_desc-cbs_report.json").write_text(json.dumps(
                    {"qc": {"values": {"mask_volume_ml": 1400.0, "poor_phase_fraction": poor,
                                       "echo_fit_residual": 0.01}}}))
    with (bids / "participants.tsv").open("w") as stream:
        stream.write("participant_id\tsite\tgroup\tage\tsex\n")
        for subject, site, diagnosis, age, sex in participants:
            stream.write(f"{subject}\t{site}\t{diagnosis}\t{age:g}\t{sex}\n")
    return out, bids


def _wide_cohort(n_per_cell, effect, seed):
    """A wide table drawn directly (for classification on larger cohorts)."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, (shift, scale) in SITES.items():
        for diagnosis in ("CBS", "PSP"):
            for index in range(n_per_cell):
                row = {"scan": f"sub-{site}{diagnosis}{index:03d}", "site": site,
                       "diagnosis": diagnosis}
                for region, base in REGIONS.items():
                    value = base + (effect.get(region, 0.0) / 2) * (1 if diagnosis == "CBS"
                                                                    else -1)
                    row[f"{region}_bilateral_mean_ppb"] = value + rng.normal(0, 6)
                rows.append(row)
    wide = pd.DataFrame(rows)
    wide.attrs["features"] = [f"{region}_bilateral_mean_ppb" for region in REGIONS]
    return wide


def test_collect_builds_tidy_and_wide_tables(tmp_path):
    out, bids = _cohort(tmp_path)
    tidy = collect_participant_results(out, bids)
    assert tidy["scan"].nunique() == 18
    assert len(tidy) == 18 * len(REGIONS) * 3 * 2
    first = tidy.iloc[0]
    assert (first["scan"], first["site"], first["diagnosis"]) == ("sub-001", "A", "CBS")
    assert first["registration_dice"] == pytest.approx(0.95)
    assert first["poor_phase_fraction"] == pytest.approx(0.02)
    wide = wide_table(tidy)
    assert len(wide) == 18
    assert "motor_cortex_L_mean_ppb" in wide.columns
    assert len(wide.attrs["features"]) == len(REGIONS) * 3


def test_missing_site_column_gives_one_site(tmp_path):
    out, bids = _cohort(tmp_path)
    (bids / "participants.tsv").write_text("participant_id\tdiagnosis\nsub-001\tCBS\n")
    tidy = collect_participant_results(out, bids)
    assert set(tidy["site"]) == {"site-1"}
    assert tidy.loc[tidy["scan"] == "sub-001", "diagnosis"].eq("CBS").all()
    assert tidy.loc[tidy["scan"] == "sub-002", "diagnosis"].isna().all()


def test_no_results_raises_missing_input(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(MissingInputError, match="no regional tables") as caught:
        collect_participant_results(tmp_path / "out", tmp_path)
    assert caught.value.exit_code == 66


def test_qc_exclusions_give_reasons(tmp_path):
    out, bids = _cohort(tmp_path, qc={"sub-002": (0.70, 0.02), "sub-005": (0.95, 0.25)})
    table = out / "sub-007" / "anat" / "sub-007_desc-regions_stats.tsv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(line for line in lines if not line.startswith("thalamus\tL"))
                     + "\n")
    tidy = collect_participant_results(out, bids)
    excluded = qc_exclusions(tidy)
    assert excluded["scan"].tolist() == ["sub-002", "sub-005", "sub-007"]
    reasons = dict(zip(excluded["scan"], excluded["reasons"]))
    assert "Dice 0.700" in reasons["sub-002"]
    assert "poor phase" in reasons["sub-005"]
    assert "missing regions: thalamus L (csf), thalamus L (whole-brain)" in reasons["sub-007"]


def test_combat_removes_site_effect_and_keeps_diagnosis(tmp_path):
    out, bids = _cohort(tmp_path)
    wide = wide_table(collect_participant_results(out, bids))
    feature = "putamen_bilateral_mean_ppb"
    before = site_effects(wide, [feature]).loc[0, "p"]
    assert before < 0.001
    harmonised = harmonise(wide)
    assert harmonised.attrs["covariates"] == ["diagnosis[PSP]", "age", "sex[M]"]
    after = site_effects(harmonised, [f"{feature}_harmonised"]).loc[0, "p"]
    assert after > 0.05
    np.testing.assert_array_equal(harmonised[feature], wide[feature])  # raw kept beside
    motor = harmonised["motor_cortex_bilateral_mean_ppb_harmonised"]
    cbs = motor[harmonised["diagnosis"] == "CBS"]
    psp = motor[harmonised["diagnosis"] == "PSP"]
    assert stats.ttest_ind(cbs, psp, equal_var=False).pvalue < 0.01
    assert cbs.mean() - psp.mean() == pytest.approx(35.0, abs=10.0)


def test_combat_refuses_small_site(tmp_path):
    out, bids = _cohort(tmp_path)
    wide = wide_table(collect_participant_results(out, bids))
    wide.loc[wide["scan"] == "sub-001", "site"] = "D"
    with pytest.raises(BadDataError, match="D \\(1 scan\\)"):
        harmonise(wide)


def test_group_comparisons_and_fdr(tmp_path):
    out, bids = _cohort(tmp_path)
    tidy = collect_participant_results(out, bids)
    harmonised = harmonise(wide_table(tidy))
    table = compare_groups(harmonised, harmonised.attrs["harmonised_features"])
    row = table[table["feature"] == "motor_cortex_bilateral_mean_ppb_harmonised"].iloc[0]
    assert (row["region"], row["hemisphere"], row["group_a"], row["group_b"]) == (
        "motor_cortex", "bilateral", "CBS", "PSP")
    assert row["hedges_g"] > 2 and row["p_fdr"] < 0.01
    assert (table["p_fdr"] >= table["p"] - 1e-12).all()
    asymmetry = compare_asymmetry(tidy)
    assert set(asymmetry["hemisphere"]) == {"bilateral"}
    assert set(asymmetry["statistic"]) == {"ai_abs_pct"}
    np.testing.assert_allclose(benjamini_hochberg([0.01, np.nan, 0.04, 0.03]),
                               [0.03, np.nan, 0.04, 0.04])


def test_classification_separable_and_null():
    separable = classify_diagnoses(_wide_cohort(6, EFFECT, seed=1))
    summary = separable["summary"].iloc[0]
    assert summary["validation"] == "leave-one-site-out"
    assert summary["auc"] >= 0.9
    assert summary[["tn", "fp", "fn", "tp"]].sum() == 36
    single = separable["single_region"].set_index("feature")
    assert single.loc["motor_cortex_bilateral_mean_ppb", "auc_cv"] >= 0.9
    null = classify_diagnoses(_wide_cohort(40, {}, seed=2))
    assert 0.3 <= null["summary"].iloc[0]["auc"] <= 0.7
    few = classify_diagnoses(_wide_cohort(1, EFFECT, seed=3))
    assert few["summary"].empty and "at least 2 diagnoses" in few["note"]


def test_learned_reference_ranges_read_back(tmp_path):
    out, bids = _cohort(tmp_path)
    ranges = learned_reference_ranges(collect_participant_results(out, bids))
    assert set(ranges["pattern"]) == {"CBS", "PSP"}
    assert (ranges["low_ppb"] <= ranges["high_ppb"]).all()
    path = write_reference_ranges(ranges, tmp_path / "ranges.tsv")
    read = read_reference_ranges(path)
    assert read["reference"] == "csf"
    assert [(row["region"], row["pattern"]) for row in read["rows"]] == list(
        zip(ranges["region"], ranges["pattern"]))


def test_computations_are_deterministic(tmp_path):
    out, bids = _cohort(tmp_path)

    def run():
        tidy = collect_participant_results(out, bids)
        harmonised = harmonise(wide_table(tidy))
        features = harmonised.attrs["harmonised_features"]
        return (tidy, harmonised, compare_groups(harmonised, features),
                classify_diagnoses(harmonised, features)["summary"],
                learned_reference_ranges(tidy))

    for first, second in zip(run(), run()):
        pd.testing.assert_frame_equal(first, second)
