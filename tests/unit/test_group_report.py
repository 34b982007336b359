"""Group report: figures (deterministic SVG) and the HTML page."""

import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

from qsmprep.group import (classify_diagnoses, collect_participant_results, harmonise,
                           qc_exclusions, wide_table)
from qsmprep.group.level import run_group_level
from qsmprep.group.report import write_group_report
from qsmprep.reports.figures import plot_group_asymmetry, plot_group_regions, plot_roc_curves
from test_group import _cohort


class _Page(HTMLParser):
    """Collects the ids, image sources and table cells of a page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.links, self.cells = set(), [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _group(tmp_path):
    """Group level of a 3-site CBS/PSP cohort with one scan failing QC, and what the report
    needs."""
    out, bids = _cohort(tmp_path, n_per_cell=2, qc={"sub-002": (0.70, 0.02)})
    written = run_group_level(out, bids)
    tidy = collect_participant_results(out, bids)
    exclusions = qc_exclusions(tidy)
    wide = wide_table(tidy[~tidy["scan"].isin(set(exclusions["scan"]))])
    harmonised = harmonise(wide)
    classification = classify_diagnoses(harmonised, harmonised.attrs["harmonised_features"])
    return out, {"written": written, "tidy": tidy, "wide": wide, "harmonised": harmonised,
                 "classification": classification, "exclusions": exclusions,
                 "notes": list(written["notes"])}


def _report(out, parts):
    return write_group_report(out, parts["written"], tidy=parts["tidy"], wide=parts["wide"],
                              harmonised=parts["harmonised"],
                              classification=parts["classification"],
                              exclusions=parts["exclusions"], notes=parts["notes"])


def _parse_svg(path):
    root = ElementTree.parse(path).getroot()
    assert root.tag.endswith("svg")
    return root


def test_group_figures_draw_and_handle_empty_inputs(tmp_path):
    out, parts = _group(tmp_path)
    wide, harmonised = parts["wide"], parts["harmonised"]
    raw = plot_group_regions(wide, wide.attrs["features"], tmp_path / "raw.svg", title="raw")
    adjusted = plot_group_regions(harmonised, harmonised.attrs["harmonised_features"],
                                  tmp_path / "harmonised.svg", title="harmonised")
    asymmetry = plot_group_asymmetry(parts["tidy"], tmp_path / "asymmetry.svg")
    roc = plot_roc_curves(parts["classification"]["predictions"], tmp_path / "roc.svg")
    for path in (raw, adjusted, asymmetry, roc):
        assert Path(path).is_file()
        _parse_svg(path)
    assert plot_group_regions(wide.iloc[:0], wide.attrs["features"], tmp_path / "e1.svg",
                              title="empty") is None
    assert plot_group_regions(wide, [], tmp_path / "e2.svg", title="empty") is None
    assert plot_group_asymmetry(parts["tidy"].iloc[:0], tmp_path / "e3.svg") is None
    assert plot_roc_curves(parts["classification"]["predictions"].iloc[:0],
                           tmp_path / "e4.svg") is None
    assert plot_roc_curves(None, tmp_path / "e5.svg") is None
    assert not any((tmp_path / f"e{index}.svg").exists() for index in range(1, 6))


def test_group_report_html(tmp_path):
    out, parts = _group(tmp_path)
    result = _report(out, parts)
    html_path = out / "group" / "group.html"
    assert result["html"] == html_path
    assert set(result["figures"]) == {"regions_raw", "regions_harmonised", "asymmetry", "roc"}
    page = _Page()
    page.feed(html_path.read_text(encoding="utf-8"))
    page.close()
    assert {"cohort-table", "exclusions-table", "site-effects-table", "comparisons-table",
            "classification-table", "disclaimer"} <= page.ids
    assert len(page.images) == 4
    for source in page.images:
        assert not Path(source).is_absolute() and source.startswith("figures/")
        assert (html_path.parent / source).is_file()
        _parse_svg(html_path.parent / source)
    for link in page.links:
        if not link.startswith("#"):
            assert (html_path.parent / link).is_file()
    text = html_path.read_text(encoding="utf-8")
    assert "Research aid, not a diagnosis" in text
    assert "registration brain Dice 0.700" in text  # the exclusion and its reason
    assert "leave-one-site-out" in text
    assert "all sites" in page.cells and "12" in page.cells  # cohort total row
    assert str(tmp_path) not in text  # relative paths only


def test_group_report_without_harmonisation_or_classification(tmp_path):
    out, parts = _group(tmp_path)
    _report(out, parts)  # a first run with every figure
    parts.update(harmonised=None, classification=None,
                 notes=["no harmonisation: site D has 1 scan", "classification: too few"])
    result = _report(out, parts)
    assert set(result["figures"]) == {"regions_raw", "asymmetry"}
    assert sorted(path.name for path in (out / "group" / "figures").iterdir()) == [
        "asymmetry.svg", "regions_raw.svg"]
    text = result["html"].read_text(encoding="utf-8")
    assert "Not harmonised: site D has 1 scan." in text
    assert "too few" in text
    page = _Page()
    page.feed(text)
    assert len(page.images) == 2


def test_group_report_is_deterministic(tmp_path):
    out, parts = _group(tmp_path)

    def snapshot():
        result = _report(out, parts)
        files = [result["html"], *sorted(result["figures"].values())]
        return {Path(path).name: Path(path).read_bytes() for path in files}

    first = snapshot()
    second = snapshot()
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
