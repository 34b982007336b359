"""Group level, clinical analyses: correlations with clinical scores, asymmetry by the
affected side, ROC of the cortical-to-subcortical ratio, small cohorts and the option."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsmprep.cli.parser import parse_args
from qsmprep.cli.run import run
from qsmprep.config import Config
from qsmprep.errors import UsageError
from qsmprep.group import collect_participant_results, wide_table
from qsmprep.group.clinical import (MIN_PAIRS, clinical_values, correlate_clinical,
                                    partial_spearman, ratio_roc, roc_auc, run_clinical_analyses,
                                    spearman)
from qsmprep.group.level import run_group_level
from qsmprep.regions import write_regional_table
from qsmprep.reports.cbs import cortical_subcortical_ratio
from test_group import _rows

#: Healthy regional means (ppb) of the synthetic cohort.
HEALTHY = {"motor_cortex": 20.0, "globus_pallidus_interna": 150.0, "red_nucleus": 110.0,
           "thalamus": 15.0, "putamen": 50.0}


def _write_scan(out, subject, means, session=None):
    folder = out / subject / (session or "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{subject}_{session}" if session else subject
    table = write_regional_table(_rows(means), folder / f"{prefix}_desc-regions_stats.tsv")
    table.with_suffix(".json").write_text(json.dumps(
        {"RegistrationQuality": {"nmi": 1.2, "dice_brain": 0.95}}))


def _cohort(tmp_path, n=24, seed=1, *, age_effect=0.0, updrs_effect=1.0):
    """Participant outputs and participants.tsv of ``n`` CBS and PSP scans.

    Motor-cortex iron varies between participants; UPDRS_III rises with it (times
    ``updrs_effect``, plus noise); ``null_score`` is independent of everything; iron of the
    thalamus rises with age by ``age_effect`` ppb/year. The clinically more affected side
    alternates, and the motor cortex contralateral to it holds 30 % more iron.
    """
    rng = np.random.default_rng(seed)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir(parents=True)
    lines = ["participant_id\tgroup\tage\tsex\taffected_side\tUPDRS_III\tnull_score\n"]
    for index in range(n):
        subject = f"sub-{index + 1:03d}"
        diagnosis = "CBS" if index % 2 == 0 else "PSP"
        side = "left" if index % 4 < 2 else "right"
        age = float(rng.integers(50, 85))
        cortex = rng.uniform(20.0, 100.0)
        contralateral = {"left": "R", "right": "L"}[side]
        means = {}
        for region, base in HEALTHY.items():
            value = base + rng.normal(0, 3)
            if region == "thalamus":
                value += age_effect * (age - 67)
            if region == "motor_cortex":
                value = cortex
            sides = {"L": value + rng.normal(0, 1), "R": value + rng.normal(0, 1)}
            if region == "motor_cortex":
                sides[contralateral] *= 1.3
            if region == "globus_pallidus_interna" and diagnosis == "PSP":
                sides = {key: item + 80.0 for key, item in sides.items()}
            means[region] = (sides["L"], sides["R"])
        _write_scan(out, subject, means)
        updrs = 10 + updrs_effect * 0.4 * cortex + rng.normal(0, 3)
        lines.append(f"{subject}\t{diagnosis}\t{age:g}\t{rng.choice(['F', 'M'])}\t{side}\t"
                     f"{updrs:.1f}\t{rng.normal(20, 5):.1f}\n")
    (bids / "participants.tsv").write_text("".join(lines))
    return out, bids


def _tsv(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def test_monotone_relation_is_found_and_a_null_one_is_not(tmp_path):
    out, bids = _cohort(tmp_path)
    written = run_group_level(out, bids, clinical_columns=["UPDRS_III", "null_score"])
    table = _tsv(written["clinical_correlations"])
    updrs = table[table["clinical"] == "UPDRS_III"].set_index("feature")
    row = updrs.loc["motor_cortex_bilateral_mean_ppb"]
    assert row["rho"] > 0.7 and row["q"] < 0.05 and row["partial_q"] < 0.05
    assert row["n"] == 24 and row["covariates"] == "age, sex"  # one site: not adjusted for
    assert updrs["q"].idxmin().startswith("motor_cortex")
    null = table[table["clinical"] == "null_score"]
    assert len(null) == len(updrs) and (null["q"] >= 0.05).all()
    # the q-values are Benjamini-Hochberg over the whole table
    expected = stats.false_discovery_control(table["p"].to_numpy())
    np.testing.assert_allclose(table["q"].to_numpy(), expected, rtol=1e-5)  # 6 digits
    html = (out / "group" / "group.html").read_text(encoding="utf-8")
    assert 'id="clinical-correlations-table"' in html
    assert "figures/clinical_scatter.svg" in html and "figures/ratio_roc.svg" in html
    assert "clinical_correlations.tsv" in html


def test_partial_correlation_removes_a_relation_driven_by_age():
    rng = np.random.default_rng(3)
    age = rng.uniform(50, 85, 80)
    iron = 2.0 * age + rng.normal(0, 6, age.size)
    score = 0.5 * age + rng.normal(0, 2, age.size)
    covariates = pd.DataFrame({"age": age, "sex": rng.choice(["F", "M"], age.size)})
    rho, p, n = spearman(iron, score)
    assert n == 80 and rho > 0.6 and p < 1e-6
    partial_rho, partial_p, partial_n = partial_spearman(iron, score, covariates)
    assert partial_n == 80 and abs(partial_rho) < 0.2 and partial_p > 0.05
    # without covariates the partial correlation is Spearman's
    assert partial_spearman(iron, score) == pytest.approx((rho, p, n))
    # and a relation that is not age's survives the adjustment
    direct = iron + rng.normal(0, 1, age.size)
    assert partial_spearman(direct, iron, covariates)[1] < 1e-6


def test_group_level_adjusts_the_age_driven_thalamus(tmp_path):
    out, bids = _cohort(tmp_path, n=30, seed=4, age_effect=3.0)
    tidy = collect_participant_results(out, bids)
    wide = wide_table(tidy)
    noise = np.random.default_rng(5).normal(0, 3, len(wide))
    age_score = pd.DataFrame({"age_score": wide["age"] + noise})  # follows age only
    table, _ = correlate_clinical(wide, age_score)
    row = table.set_index("feature").loc["thalamus_bilateral_mean_ppb"]
    assert row["q"] < 0.05 and row["covariates"] == "age, sex"
    assert row["partial_p"] > 0.05


def test_roc_auc_equals_the_hand_computed_value():
    result = roc_auc([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    # positives over negatives: 2 beats 1 and ties 2 (1.5), 4 and 5 beat all three (3 + 3)
    assert result["auc"] == pytest.approx(7.5 / 9)
    area = 7.5 / 9
    q1, q2 = area / (2 - area), 2 * area ** 2 / (1 + area)
    se = math.sqrt((area * (1 - area) + 2 * (q1 - area ** 2) + 2 * (q2 - area ** 2)) / 9)
    assert result["auc_se"] == pytest.approx(se)
    assert result["auc_ci_low"] == pytest.approx(area - 1.959963984540054 * se)
    assert result["auc_ci_high"] == 1.0  # clipped
    assert roc_auc([5.0, 6.0], [1.0, 2.0])["auc"] == 0.0
    assert math.isnan(roc_auc([], [1.0])["auc"])


def test_ratio_roc_per_pair_of_diagnoses():
    rows = []
    for index in range(4):
        rows.append({"scan": f"sub-c{index}", "diagnosis": "CBS",
                     "motor_cortex_L_mean_ppb": 90.0 + index, "motor_cortex_R_mean_ppb": 40.0,
                     "globus_pallidus_interna_bilateral_mean_ppb": 110.0,
                     "red_nucleus_bilateral_mean_ppb": 80.0})
        rows.append({"scan": f"sub-p{index}", "diagnosis": "PSP",
                     "motor_cortex_L_mean_ppb": 25.0, "motor_cortex_R_mean_ppb": 20.0 + index,
                     "globus_pallidus_interna_bilateral_mean_ppb": 240.0,
                     "red_nucleus_bilateral_mean_ppb": 190.0})
    rows.append({"scan": "sub-x", "diagnosis": "PD", "motor_cortex_L_mean_ppb": 20.0,
                 "motor_cortex_R_mean_ppb": 20.0,
                 "globus_pallidus_interna_bilateral_mean_ppb": 60.0,
                 "red_nucleus_bilateral_mean_ppb": 70.0})
    wide = pd.DataFrame(rows)
    table, scores, notes = ratio_roc(wide)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["group_a"], row["group_b"], row["positive"]) == ("CBS", "PSP", "CBS")
    assert row["auc"] == 1.0 and (row["n_a"], row["n_b"]) == (4, 4)
    expected = float(cortical_subcortical_ratio(90.0, 40.0, 110.0, 80.0))
    assert row["median_ratio_a"] == pytest.approx(np.median(
        [float(cortical_subcortical_ratio(90.0 + index, 40.0, 110.0, 80.0))
         for index in range(4)]))
    assert expected == pytest.approx(90.0 / 95.0)
    assert set(scores["group_b"]) == {"CBS"} and len(scores) == 8
    assert notes == ["cortical-to-subcortical ratio ROC: too few scans for this (n=PD 1; "
                     "needs 3 scans with a ratio per diagnosis)"]


def test_asymmetry_follows_the_affected_side(tmp_path):
    out, bids = _cohort(tmp_path, n=24)
    written = run_group_level(out, bids)
    table = _tsv(written["clinical_asymmetry"]).set_index("region")
    motor = table.loc["motor_cortex"]
    # more iron contralateral: left-affected scans have AI > 0, right-affected AI < 0
    assert motor["mean_ai_left"] > 10 and motor["mean_ai_right"] < -10
    assert motor["rho"] < -0.7 and motor["q"] < 0.05
    assert (motor["n_left"], motor["n_right"]) == (12, 12)
    assert table.loc["putamen", "q"] >= 0.05


def test_small_cohort_gives_notes_and_no_rows(tmp_path):
    out, bids = _cohort(tmp_path, n=4)
    written = run_group_level(out, bids, clinical_columns=["UPDRS_III"])
    group = out / "group"
    for name in ("clinical_correlations", "clinical_asymmetry", "ratio_roc"):
        assert name not in written and not (group / f"{name}.tsv").exists()
    html = (group / "group.html").read_text(encoding="utf-8")
    assert "UPDRS_III against regional iron: too few scans for this (n=4; needs 5 scans " \
           "with a value)" in html
    assert "asymmetry index against the affected side: too few scans for this (n=4;" in html
    assert "cortical-to-subcortical ratio ROC: too few scans for this (n=CBS 2, PSP 2;" in html
    assert 'id="clinical-correlations-table"' not in html and "n/a" not in html.split(
        'id="clinical"')[1].split("</section>")[0]
    # a table of an earlier run is not left behind
    (group / "clinical_correlations.tsv").write_text("stale\n")
    run_group_level(out, bids, clinical_columns=["UPDRS_III"])
    assert not (group / "clinical_correlations.tsv").exists()


def test_features_with_too_few_values_are_noted_not_written():
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({"scan": [f"s{index}" for index in range(8)], "site": "A",
                         "putamen_bilateral_mean_ppb": rng.normal(50, 5, 8),
                         "thalamus_bilateral_mean_ppb": [1.0, 2.0, 3.0] + [np.nan] * 5})
    clinical = pd.DataFrame({"MMSE": rng.normal(25, 2, 8)})
    table, notes = correlate_clinical(wide, clinical, ["putamen_bilateral_mean_ppb",
                                                       "thalamus_bilateral_mean_ppb"])
    assert list(table["feature"]) == ["putamen_bilateral_mean_ppb"]
    assert table.notna().all().all()
    assert notes == [f"MMSE against 1 region feature: too few scans for this (n=3; "
                     f"needs {MIN_PAIRS})"]


def test_text_cells_are_missing_with_a_note_and_sessions_take_precedence(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-02").mkdir(parents=True)
    (bids / "participants.tsv").write_text(
        "participant_id\tMMSE\tUPDRS_III\nsub-01\tsevere\t30\nsub-02\t27\tn/a\n")
    (bids / "sub-02" / "sub-02_sessions.tsv").write_text(
        "session_id\tUPDRS_III\nses-1\t12\nses-2\tn/a\n")
    scans = pd.DataFrame({"subject": ["sub-01", "sub-02", "sub-02"],
                          "session": [None, "ses-1", "ses-2"]})
    values, notes = clinical_values(scans, bids, ["MMSE", "UPDRS_III"])
    np.testing.assert_array_equal(values["MMSE"].to_numpy(), [np.nan, 27.0, 27.0])
    np.testing.assert_array_equal(values["UPDRS_III"].to_numpy(), [30.0, 12.0, np.nan])
    assert notes == ["MMSE: 1 value that is not a number treated as missing "
                     "('severe' for sub-01)"]


def test_run_clinical_analyses_without_clinical_columns_runs_the_rest(tmp_path):
    out, bids = _cohort(tmp_path, n=12)
    tidy = collect_participant_results(out, bids)
    result = run_clinical_analyses(tidy, wide_table(tidy), bids)
    assert len(result["correlations"]) == 0 and result["columns"] == []
    assert len(result["asymmetry"]) > 0 and len(result["ratio_roc"]) == 1


def _bids(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (bids / "participants.tsv").write_text("participant_id\tgroup\tUPDRS_III\nsub-01\tCBS\t30\n")
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tMoCA\nses-1\t22\n")
    return bids


def test_clinical_columns_option_is_checked_and_saved(tmp_path):
    bids = _bids(tmp_path)
    config = parse_args([str(bids), str(tmp_path / "out"), "group", "--clinical-columns",
                         "UPDRS_III", "MoCA", "UPDRS_III"])
    assert config.workflow.clinical_columns == ["UPDRS_III", "MoCA"]
    saved = Config.load(config.save(tmp_path / "logs"))
    assert saved.workflow.clinical_columns == ["UPDRS_III", "MoCA"]
    assert parse_args([str(bids), str(tmp_path / "out"), "group"]).workflow.clinical_columns \
        == []


def test_missing_clinical_column_is_a_usage_error(tmp_path, capsys):
    bids = _bids(tmp_path)
    with pytest.raises(UsageError) as error:
        parse_args([str(bids), str(tmp_path / "out"), "group", "--clinical-columns",
                    "UPDRS_III", "MMSE"])
    message = str(error.value)
    assert "--clinical-columns: no column 'MMSE'" in message
    assert "participants.tsv (participant_id, group, UPDRS_III)" in message
    assert "sub-01/sub-01_sessions.tsv (session_id, MoCA)" in message
    assert run([str(bids), str(tmp_path / "out"), "group", "--clinical-columns", "MMSE"]) \
        == UsageError.exit_code
    assert "Traceback" not in capsys.readouterr().err


#: Width (px) of a figure's column in group.html at its full page width: the 1240 px main
#: area less its padding (2 x 28 px) and the figure's padding and border (2 x 9 px).
PAGE_FIGURE_WIDTH_PX = 1240 - 56 - 18


def _svg_size_and_smallest_font(path):
    """``(width_pt, height_pt, smallest font in pt)`` of a matplotlib SVG whose text is drawn
    as paths (each glyph run scaled by font size / 100)."""
    import re

    text = path.read_text(encoding="utf-8")
    size = re.search(r'<svg[^>]*\swidth="([0-9.]+)pt"\s+height="([0-9.]+)pt"', text)
    scales = [float(scale) * 100 for scale, other in
              re.findall(r"scale\(([0-9.]+) -([0-9.]+)\)", text) if scale == other]
    return float(size[1]), float(size[2]), min(scales)


def test_group_figures_are_legible_at_the_page_width(tmp_path):
    out, bids = _cohort(tmp_path, n=24)
    written = run_group_level(out, bids, clinical_columns=["UPDRS_III"])
    assert written["report"].is_file()
    svgs = sorted((out / "group" / "figures").glob("*.svg"))
    assert {path.stem for path in svgs} >= {"regions_raw", "asymmetry", "roc",
                                            "clinical_scatter", "ratio_roc"}
    for path in svgs:
        width_pt, height_pt, font_pt = _svg_size_and_smallest_font(path)
        natural_px = width_pt * 96 / 72
        shown = min(1.0, PAGE_FIGURE_WIDTH_PX / natural_px)
        assert natural_px <= PAGE_FIGURE_WIDTH_PX, (path.name, width_pt)
        assert font_pt * 96 / 72 * shown >= 8.0, (path.name, font_pt, shown)
        assert height_pt < 20 * 72, path.name


def test_many_regions_and_diagnoses_wrap_into_rows(tmp_path):
    from qsmprep.reports.figures import plot_group_asymmetry, plot_group_regions

    rng = np.random.default_rng(2)
    regions = [f"region_number_{index}_with_a_long_name" for index in range(17)]
    diagnoses = ["control", "CBS", "PSP", "PD", "ALS", "MSA", "AD"]
    wide = pd.DataFrame({"scan": [f"s{index}" for index in range(28)],
                         "diagnosis": np.repeat(diagnoses, 4), "site": "A"})
    for region in regions:
        wide[f"{region}_bilateral_mean_ppb"] = rng.normal(50, 10, len(wide))
    path = plot_group_regions(wide, list(wide.columns[3:]), tmp_path / "regions.svg",
                              title="Regional susceptibility")
    width_pt, height_pt, font_pt = _svg_size_and_smallest_font(tmp_path / "regions.svg")
    assert path is not None and width_pt * 96 / 72 <= PAGE_FIGURE_WIDTH_PX
    assert height_pt > 4 * 1.8 * 72  # 17 panels in rows of 4: 5 rows
    assert font_pt >= 8.0
    tidy = pd.DataFrame([{"scan": f"s{index}", "region": region, "hemisphere": "bilateral",
                          "reference": "csf", "ai_abs_pct": rng.normal(0, 10),
                          "diagnosis": diagnoses[index % 7]}
                         for index in range(28) for region in regions])
    plot_group_asymmetry(tidy, tmp_path / "asymmetry.svg")
    width_pt, _, font_pt = _svg_size_and_smallest_font(tmp_path / "asymmetry.svg")
    assert width_pt * 96 / 72 <= PAGE_FIGURE_WIDTH_PX and font_pt >= 8.0
