"""The per-subject report: JSON content and its schema, the HTML, its figures, a real browser."""

import copy
import html.parser
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import jsonschema
import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from test_cbs import (CBS_PATIENT, CONTROL, PD_PATIENT, PSP_PATIENT, regional_rows, swapped)

from qsmprep.config import WorkflowConfig
from qsmprep.qsm.pipeline import stage_parameters
from qsmprep.regions import write_regional_table
from qsmprep.reports import figures, render

PREFIX = "sub-01_ses-1_run-1"
METHODS = ("## Methods\n\nMaps were reconstructed with qsmprep [1] following the consensus "
           "[2]; R2\\* was fitted log-linearly.\n\n### References\n\n"
           "1. First reference. doi:10.1000/one\n2. Second reference. doi:10.1000/two\n")
ACQUISITION = {"field_strength_t": 3, "echo_times_ms": [4.0, 8.0, 12.0, 16.0],
               "voxel_size_mm": [1.0, 1.0, 1.0], "matrix": [40, 44, 36],
               "manufacturer": "Siemens", "model": "Prisma"}
QC = {"registration": {"dice_brain": 0.94, "nmi": 1.21}, "mask_volume_ml": 1400.0,
      "echo_fit_residual": 0.04, "poor_phase_fraction": 0.02}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _volumes(folder):
    """Small magnitude, Chimap (ppm), atlas, mask and R2* images on one grid."""
    shape = (40, 44, 36)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, size) for size in shape], indexing="ij")
    brain = x ** 2 / 0.7 + y ** 2 / 0.9 + z ** 2 / 0.8 < 0.8
    labels = np.zeros(shape, dtype=np.int16)
    labels[(abs(x + 0.2) < 0.12) & (abs(y) < 0.15) & (abs(z) < 0.2)] = 1
    labels[(abs(x - 0.2) < 0.12) & (abs(y) < 0.15) & (abs(z) < 0.2)] = 2
    labels[(abs(x) < 0.1) & (abs(y - 0.4) < 0.1) & (abs(z - 0.4) < 0.1)] = 3
    chi = np.where(brain, 0.01 * np.sin(5 * z), 0.0) + 0.12 * (labels > 0)
    images = {"magnitude": np.where(brain, 300.0 + 40 * np.cos(4 * x), 10.0),
              "chimap": chi, "labels": labels, "mask": brain.astype(np.uint8),
              "r2star": np.where(brain, 20.0 + 30 * (labels > 0), 0.0)}
    paths = {}
    for name, data in images.items():
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=data.dtype if name in ("labels", "mask")
                                            else np.float32), affine), paths[name])
    return paths


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    return _volumes(tmp_path_factory.mktemp("volumes"))


def _make_figures(volumes, figures_dir):
    figures_dir.mkdir(parents=True, exist_ok=True)
    return {
        "qsm": figures.plot_qsm_mosaic(volumes["chimap"], volumes["labels"],
                                       figures_dir / f"{PREFIX}_desc-qsm_mosaic.svg"),
        "mask": figures.plot_mask_mosaic(volumes["magnitude"], volumes["mask"],
                                         figures_dir / f"{PREFIX}_desc-brainmask_mosaic.svg"),
        "r2star": figures.plot_r2star_mosaic(volumes["r2star"],
                                             figures_dir / f"{PREFIX}_desc-r2star_mosaic.svg",
                                             mask_path=volumes["mask"]),
    }


def _build(out, values, *, volumes=None, ranges=None, provenance=None, prefix=PREFIX):
    anat = out / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    table = write_regional_table(regional_rows(values), anat / f"{prefix}_desc-regions_stats.tsv")
    figure_paths = (_make_figures(volumes, out / "sub-01" / "figures") if volumes else {})
    entities = dict(zip(("subject", "session", "run"),
                        (part.split("-")[1] for part in prefix.split("_"))))
    return render.build_report(
        regional_table_path=table, entities=entities, qc=QC, acquisition=ACQUISITION,
        provenance=provenance or {
            "date": "2026-11-21", "command": "qsmprep bids out participant",
            "processing": stage_parameters(WorkflowConfig(), (1.0, 1.0, 1.0))},
        methods_markdown=METHODS, figures=figure_paths, reference_ranges_path=ranges)


def _write(out, report, prefix=PREFIX):
    return render.write_report(
        report, html_path=out / "sub-01.html",
        json_path=out / "sub-01" / "ses-1" / "anat" / f"{prefix}_desc-cbs_report.json",
        figures_dir=out / "sub-01" / "figures")


@pytest.fixture(scope="module")
def written(tmp_path_factory, volumes):
    out = tmp_path_factory.mktemp("out")
    report = _build(out, CBS_PATIENT, volumes=volumes)
    return out, report, _write(out, report)


class _Structure(html.parser.HTMLParser):
    """Checks that every element is closed in order; collects image sources and tables."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.table_classes = [], [], [], []
        self.linked_images = []  # (link target, image source) of images inside a link

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src"))
            if self.stack and self.stack[-1] == "a":
                self.linked_images.append((self.link, attributes.get("src")))
        if tag == "a":
            self.link = attributes.get("href")
        if tag == "table":
            self.table_classes.append(attributes.get("class"))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(text):
    parser = _Structure()
    parser.feed(text)
    parser.close()
    return parser


# ------------------------------------------------------------------------------- content
def test_report_content_validates_and_names_the_run(tmp_path):
    report = _build(tmp_path, CBS_PATIENT)
    assert render.validate_report(report) is True
    assert (report["subject"], report["session"], report["run"]) == ("01", "1", "1")
    assert report["prefix"] == PREFIX
    assert report["generated_by"] == {"name": "qsmprep", "version": report["generated_by"][
        "version"], "date": "2026-11-21", "command": "qsmprep bids out participant"}
    assert report["findings"]["reference"] == "csf"
    assert report["interpretation"]["pattern"] == "CBS"
    assert report["interpretation"]["asymmetry"]["statement"] == "favouring L"
    assert report["interpretation"]["disclaimer"].startswith("Research aid, not a diagnosis.")
    assert report["acquisition"]["echo_times_ms"] == [4.0, 8.0, 12.0, 16.0]
    assert report["qc"]["values"]["registration"]["dice_brain"] == 0.94
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


@pytest.mark.parametrize("values, pattern, asymmetry", [
    (CBS_PATIENT, "CBS", "favouring L"), (swapped(CBS_PATIENT), "CBS", "favouring R"),
    (PSP_PATIENT, "PSP", "symmetric"), (PD_PATIENT, "PD", "favouring R"),
])
def test_each_patients_report_states_its_pattern_and_side(tmp_path, values, pattern, asymmetry):
    report = _build(tmp_path, values)
    _write(tmp_path, report)
    page = (tmp_path / "sub-01.html").read_text()
    assert f"Pattern consistent with {pattern}" in page
    assert asymmetry in page
    saved = json.loads((tmp_path / "sub-01" / "ses-1" / "anat"
                        / f"{PREFIX}_desc-cbs_report.json").read_text())
    assert saved["interpretation"]["pattern"] == pattern
    assert saved["interpretation"]["asymmetry"]["statement"] == asymmetry


def test_the_controls_report_is_not_cbs_or_psp_with_high_confidence(tmp_path):
    interpretation = _build(tmp_path, CONTROL)["interpretation"]
    assert not (interpretation["pattern"] in ("CBS", "PSP")
                and interpretation["confidence"] == "high")


def test_the_schema_is_valid_and_rejects_broken_reports(tmp_path):
    schema = render.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    report = _build(tmp_path, PSP_PATIENT)
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)
    broken = []
    for path, value in ((("interpretation", "confidence"), "very high"),
                        (("findings", "regions", 0, "ai_pct"), "large"),
                        (("scores", "patterns", "CBS", "score"), 1.5),
                        (("interpretation", "asymmetry", "statement"), "favouring up")):
        copied = copy.deepcopy(report)
        target = copied
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        broken.append(copied)
    missing = copy.deepcopy(report)
    del missing["qc"]
    broken.append(missing)
    for item in broken:
        with pytest.raises(ValueError, match="does not match its schema"):
            render.validate_report(item)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(item, schema, cls=jsonschema.Draft202012Validator)


def test_a_user_range_table_is_recorded_and_used(tmp_path):
    ranges = tmp_path / "ranges.tsv"
    ranges.write_text("region\tpattern\tlow_ppb\thigh_ppb\tsource\n"
                      "motor_cortex\tCBS\t150\t300\tlocal cohort\n"
                      "motor_cortex\tPSP\t10\t40\tlocal cohort\n")
    report = _build(tmp_path, CBS_PATIENT, ranges=ranges)
    assert report["reference_ranges"]["path"] == str(ranges)
    assert not report["reference_ranges"]["default"]
    motor = report["findings"]["regions"][0]
    assert [item["pattern"] for item in motor["ranges"]] == ["CBS", "PSP"]
    assert report["interpretation"]["pattern"] != "CBS"
    assert "ranges.tsv" in report["methods"]["report_methods"]


def test_without_csf_rows_the_whole_brain_values_are_used_and_flagged(tmp_path):
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    table = write_regional_table(
        [row for row in regional_rows(CBS_PATIENT) if row["reference"] == "whole-brain"],
        anat / "sub-01_desc-regions_stats.tsv")
    report = render.build_report(regional_table_path=table, entities={"subject": "01"},
                                 qc=QC, acquisition={},
                                 provenance={}, methods_markdown="", figures={})
    assert report["subject"] == "01" and report["session"] is None
    assert report["findings"]["reference"] == "whole-brain"
    assert "reference" in report["qc"]["flagged_categories"]
    assert report["interpretation"]["confidence"] != report["interpretation"][
        "confidence_before_quality"]


def test_the_consensus_checklist_reports_what_ran(tmp_path):
    checklist = {item["item"].split(" ")[0]: item for item in
                 _build(tmp_path, CBS_PATIENT)["methods"]["checklist"]}
    assert len(checklist) == len(render.CONSENSUS_ITEMS)
    assert all(item["status"] == "met" for item in checklist.values())
    assert "ppb relative to the whole brain" in checklist["Reference"]["detail"]
    laplacian = WorkflowConfig(unwrapping="laplacian", inversion="tkd", quality_threshold=0.0)
    items = {item["item"].split(" ")[0]: item["status"] for item in _build(
        tmp_path, CBS_PATIENT, provenance={
            "date": None, "command": None,
            "processing": stage_parameters(laplacian, (1.0, 1.0, 1.0))})["methods"]["checklist"]}
    assert (items["Exact"], items["Dipole"], items["Brain"]) == ("not met", "not met",
                                                                 "partly met")
    unrecorded = _build(tmp_path, CBS_PATIENT, provenance={"date": None, "command": None})
    assert {item["status"] for item in unrecorded["methods"]["checklist"][1:6]} == {
        "not recorded"}


def test_acquisition_summary_of_a_discovered_run():
    run = SimpleNamespace(field_strength_t=3.0, field_strength_source="sidecar",
                          echo_times_s=(0.004, 0.008), voxel_size=(1.0, 1.0, 2.0),
                          shape=(40, 44, 36), metadata={"Manufacturer": "GE",
                                                        "ManufacturersModelName": "Premier",
                                                        "ReceiveCoilName": "48HN"})
    summary = render.acquisition_summary(run)
    assert summary == {"field_strength_t": 3.0, "field_strength_source": "sidecar",
                       "echo_times_ms": [4.0, 8.0], "voxel_size_mm": [1.0, 1.0, 2.0],
                       "matrix": [40, 44, 36], "manufacturer": "GE", "model": "Premier",
                       "receive_coil": "48HN"}


def test_qc_measurements_from_the_masks_and_residual(tmp_path, volumes):
    brain_image = nib.load(volumes["mask"])
    brain = np.asarray(brain_image.dataobj) > 0
    kept = brain.copy()
    kept[:, :, :18] = False  # the lower half: poor phase quality
    residual = np.where(brain, 0.1, 5.0).astype(np.float32)
    for name, data in (("kept", kept.astype(np.uint8)), ("residual", residual)):
        nib.save(nib.Nifti1Image(data, brain_image.affine), tmp_path / f"{name}.nii.gz")
    values = render.qc_measurements(
        brain_mask_path=volumes["mask"], phase_quality_mask_path=tmp_path / "kept.nii.gz",
        residual_path=tmp_path / "residual.nii.gz", registration={"dice_brain": 0.9, "nmi": 1.2})
    assert values["mask_volume_ml"] == pytest.approx(brain.sum() * 8 / 1000)
    assert values["poor_phase_fraction"] == pytest.approx(1 - kept.sum() / brain.sum())
    assert values["echo_fit_residual"] == pytest.approx(0.1)
    assert values["registration"] == {"dice_brain": 0.9, "nmi": 1.2}


def test_markdown_blocks_split_headings_paragraphs_and_numbered_references():
    blocks = render.markdown_blocks(METHODS)
    assert [block["kind"] for block in blocks] == ["heading", "paragraph", "heading", "ordered"]
    assert blocks[0] == {"kind": "heading", "level": 2, "text": "Methods"}
    assert "R2* was fitted" in blocks[1]["text"]
    assert blocks[3]["items"][1] == {"number": 2, "text": "Second reference. doi:10.1000/two"}


# ---------------------------------------------------------------------------------- HTML
def test_write_report_writes_html_json_and_strip_plots(written):
    out, report, result = written
    assert result["html"] == out / "sub-01.html"
    saved = json.loads(result["json"][0].read_text())
    assert saved["interpretation"] == report["interpretation"]
    assert saved["figures"]["qsm"] == f"sub-01/figures/{PREFIX}_desc-qsm_mosaic.svg"
    strips = {region["region"]: region["strip_plot"] for region in saved["findings"]["regions"]}
    assert strips["motor_cortex"] == f"sub-01/figures/{PREFIX}_desc-motorcortex_stripplot.svg"
    assert strips["caudate"] is None  # no reference range
    # six strip plots (the ranged regions) and the motor-neuron profile
    assert len(result["figures"]) == 7
    assert saved["motor_profile"]["figure"] == f"sub-01/figures/{PREFIX}_desc-motorprofile_Chimap.svg"
    for path in result["figures"]:
        assert ElementTree.parse(path).getroot().tag.endswith("svg")
    render.validate_report(saved)
    assert report["findings"]["regions"][0].get("strip_plot") is None  # caller's dict untouched


def test_html_is_well_formed_with_findings_table_interpretation_and_disclaimer(written):
    out, report, _ = written
    page = (out / "sub-01.html").read_text()
    parsed = _parse(page)
    assert not parsed.errors and parsed.stack == []
    # every QC figure opens full size: its image sits in a link to the same file
    for name in ("qsm", "mask", "r2star"):
        path = report["figures"][name]
        assert any(target == source and source.endswith(Path(path).name)
                   for target, source in parsed.linked_images), name
    assert "findings" in parsed.table_classes and "qc" in parsed.table_classes
    assert "Research aid, not a diagnosis." in page
    assert "Pattern consistent with CBS" in page and "favouring L" in page
    for label in ("Motor cortex", "Posterior globus pallidus (GPi)", "Red nucleus",
                  "Substantia nigra", "Putamen", "Thalamus", "Subthalamic nucleus (STN)"):
        assert label in page
    assert "--reference-ranges" in page and "local calibration" in page
    assert "Consensus reporting checklist" in page and "Second reference." in page
    assert '<li value="2">' in page


def test_figures_are_linked_relatively_and_survive_copying_the_folder(written, tmp_path):
    out, _, _ = written
    copied = tmp_path / "elsewhere"
    shutil.copytree(out, copied)
    page = (copied / "sub-01.html").read_text()
    images = _parse(page).images
    assert len(images) == 10  # 6 strip plots, 3 mosaics and the motor-neuron profile
    for source in images:
        assert source.startswith("sub-01/figures/"), source
        assert (copied / source).is_file(), source
    assert str(out) not in page


def test_figures_outside_the_report_folder_are_refused_and_missing_ones_left_out(tmp_path):
    report = _build(tmp_path / "out", CBS_PATIENT)
    outside = tmp_path / "work" / "figure.svg"
    outside.parent.mkdir()
    outside.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    report["figures"] = {"qsm": str(outside)}
    with pytest.raises(ValueError, match="not inside the report's folder"):
        _write(tmp_path / "out", report)
    report["figures"] = {"qsm": str(tmp_path / "out" / "sub-01" / "figures" / "absent.svg")}
    _write(tmp_path / "out", report)
    assert "Figure not available." in (tmp_path / "out" / "sub-01.html").read_text()


def test_user_text_is_escaped(tmp_path):
    report = _build(tmp_path, CBS_PATIENT, provenance={
        "date": "2026-11-21", "command": "qsmprep <script>alert(1)</script> & more"})
    _write(tmp_path, report)
    page = (tmp_path / "sub-01.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


def test_output_is_deterministic(tmp_path, volumes):
    outputs = []
    for name in ("first", "second"):
        out = tmp_path / name
        _write(out, _build(out, PD_PATIENT, volumes=volumes))
        outputs.append({path.relative_to(out): path.read_bytes()
                        for path in sorted(out.rglob("*")) if path.is_file()})
    assert outputs[0].keys() == outputs[1].keys()
    for path in outputs[0]:
        assert outputs[0][path] == outputs[1][path], path


def test_several_runs_share_one_html(tmp_path):
    first = _build(tmp_path, CBS_PATIENT)
    second = _build(tmp_path, swapped(CBS_PATIENT), prefix="sub-01_ses-1_run-2")
    anat = tmp_path / "sub-01" / "ses-1" / "anat"
    render.write_report([first, second], html_path=tmp_path / "sub-01.html",
                        json_path=[anat / f"{PREFIX}_desc-cbs_report.json",
                                   anat / "sub-01_ses-1_run-2_desc-cbs_report.json"],
                        figures_dir=tmp_path / "sub-01" / "figures")
    page = (tmp_path / "sub-01.html").read_text()
    assert 'id="run-sub-01_ses-1_run-1"' in page and 'id="run-sub-01_ses-1_run-2"' in page
    assert "favouring L" in page and "favouring R" in page
    assert _parse(page).table_classes.count("findings") == 2


# ------------------------------------------------------------------------------- figures
def test_mosaics_and_strip_plots_are_deterministic_svg(tmp_path, volumes):
    first = _make_figures(volumes, tmp_path / "first")
    second = _make_figures(volumes, tmp_path / "second")
    for key, path in first.items():
        assert ElementTree.parse(path).getroot().tag.endswith("svg")
        assert open(path, "rb").read() == open(second[key], "rb").read(), key
    region = {"ranges": [{"pattern": "CBS", "low_ppb": 45.0, "high_ppb": 120.0},
                         {"pattern": "PSP", "low_ppb": 15.0, "high_ppb": 40.0}],
              "left_ppb": 100.0, "right_ppb": 50.0, "bilateral_ppb": 75.0}
    strip = figures.plot_range_strip(region, tmp_path / "strip.svg",
                                     colours=render.PATTERN_COLOURS)
    assert ElementTree.parse(strip).getroot().tag.endswith("svg")


# ------------------------------------------------------------------------------- browser
def _chromium(arguments, profile, *, capture=False):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--window-size=1280,2000", *arguments]
    return subprocess.run(command, check=True, timeout=180, text=True,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


@pytest.mark.skipif(CHROMIUM is None,
                    reason="Chromium is not installed (Debian package 'chromium')")
def test_the_report_opens_in_headless_chromium(written, tmp_path):
    out, _, _ = written
    uri = (out / "sub-01.html").as_uri()
    screenshot = tmp_path / "report.png"
    _chromium([f"--screenshot={screenshot}", uri], tmp_path / "profile")
    assert screenshot.is_file()
    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 50 and float(pixels[..., :3].std()) > 0.02  # not blank
    dom = _chromium(["--dump-dom", uri], tmp_path / "profile", capture=True).stdout
    assert '<table class="findings"' in dom
    assert "Pattern consistent with CBS" in dom
    for error in ("ERR_", "Traceback", "UndefinedError", "jinja2", "This page isn"):
        assert error not in dom


def test_automatic_tv_weight_is_stated_in_the_quality_table():
    from qsmprep.reports import cbs, render

    metadata = {"QSMProcessing": {"DipoleInversion": {
        "Regularization": 0.00087, "RegularizationSelection": {
            "TikhonovWeights": [1e-4, 1e-3], "TikhonovCorner": 0.00075}}}}
    record = render.regularization_record(metadata)
    assert record["weight"] == 0.00087 and record["TikhonovCorner"] == 0.00075
    assert render.regularization_record({"QSMProcessing": {"DipoleInversion": {
        "Regularization": 0.001}}}) is None  # a weight given by the user: nothing to show
    quality = cbs.assess_quality({"regularization": {"weight": 0.00087, "corner": 0.00075}})
    check = next(c for c in quality["checks"] if c["name"] == "regularization")
    assert check["value"] == "0.00087 (L-curve corner 0.00075 mm\u00b2)"
    assert not check["flagged"] and "inversion" not in quality["flagged_categories"]
    assert not any(c["name"] == "regularization" for c in cbs.assess_quality({})["checks"])


def test_qsm_mosaic_legend_names_each_outline_colour(volumes, tmp_path):
    """With the atlas names, both hemispheres of a region share one colour and a legend under
    the panels names it: the figure grows by the legend and holds one legend line per region
    (2 here: labels 1 and 2 are the two putamina); without names there is no legend."""
    names = {1: "putamen", 2: "putamen", 3: "red_nucleus"}
    plain = figures.plot_qsm_mosaic(volumes["chimap"], volumes["labels"], tmp_path / "a.svg")
    named = figures.plot_qsm_mosaic(volumes["chimap"], volumes["labels"], tmp_path / "b.svg",
                                    names=names)

    def height(path):
        return float(ElementTree.parse(path).getroot().get("height").rstrip("pt"))

    assert height(named) > height(plain)
    groups = ElementTree.parse(named).getroot().iter("{http://www.w3.org/2000/svg}g")
    legend = [group for group in groups if (group.get("id") or "").startswith("legend")]
    assert len(legend) == 1
    lines = [group for group in legend[0].iter("{http://www.w3.org/2000/svg}g")
             if (group.get("id") or "").startswith("line2d")]
    assert len(lines) == 2


def test_qsm_window_follows_the_brain_and_keeps_tissue_contrast():
    """The mosaic's window spans the 1st-99th percentile of the nonzero voxels, out to whole
    10 ppb, at least 100 ppb wide: grey/white contrast (45 ppb) fills a fifth of it or more
    on a healthy map, instead of a tenth of the old fixed 400 ppb window."""
    rng = np.random.default_rng(0)
    brain = np.concatenate([rng.normal(-30, 8, 4000), rng.normal(15, 8, 4000),
                            rng.normal(124, 10, 200)])
    chi_ppb = np.zeros(10000)
    chi_ppb[:brain.size] = brain
    low, high = figures.qsm_window_ppb(chi_ppb)
    expected_low, expected_high = np.percentile(brain, [1, 99])
    assert low == 10 * np.floor(expected_low / 10) and high == 10 * np.ceil(expected_high / 10)
    assert 45 / (high - low) >= 0.2
    assert figures.qsm_window_ppb(np.full(50, 3.0)) == (-45.0, 55.0)  # 0-10, widened to 100
    assert figures.qsm_window_ppb(np.zeros(5)) == (-50.0, 50.0)
