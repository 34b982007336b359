"""Report figures: valid, deterministic SVG."""

import os
import xml.etree.ElementTree as ElementTree

import nibabel as nib
import numpy as np
import pytest

from qsmprep.reports.figures import plot_registration

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture()
def images(tmp_path):
    """A 2 mm 'template' (bright white matter inside grey matter) and a shifted copy."""
    shape = (60, 70, 56)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-60.0, -80.0, -50.0)
    grid = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    radius = np.sqrt((grid[0] / 24) ** 2 + (grid[1] / 30) ** 2 + (grid[2] / 22) ** 2)
    template = np.where(radius < 1, 60.0, 0.0) + np.where(radius < 0.6, 40.0, 0.0)
    warped = np.roll(template, 2, axis=0) * 0.01
    paths = {"template": tmp_path / "template.nii.gz", "warped": tmp_path / "warped.nii.gz"}
    nib.save(nib.Nifti1Image(template.astype(np.float32), affine), paths["template"])
    nib.save(nib.Nifti1Image(warped.astype(np.float32), affine), paths["warped"])
    return paths


def test_plot_registration_writes_valid_deterministic_svg(images, tmp_path):
    first = plot_registration(images["template"], images["warped"], tmp_path / "a" / "reg.svg")
    second = plot_registration(images["template"], images["warped"], tmp_path / "b.svg")
    assert os.path.isabs(first)
    root = ElementTree.parse(first).getroot()
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f".//{SVG}image")) == 15  # five cuts in each of three views
    assert len(root.findall(f".//{SVG}path")) > 30  # contours and text
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()
    assert b"<dc:date>" not in open(first, "rb").read()


def test_plot_registration_needs_the_template_grid(images, tmp_path):
    image = nib.load(images["warped"])
    nib.save(nib.Nifti1Image(image.get_fdata()[:-2], image.affine), tmp_path / "small.nii.gz")
    with pytest.raises(ValueError, match="template grid"):
        plot_registration(images["template"], tmp_path / "small.nii.gz", tmp_path / "x.svg")


def test_plot_registration_interface(images, tmp_path):
    from qsmprep.interfaces.registration import PlotRegistration

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        result = PlotRegistration(template=str(images["template"]),
                                  warped=str(images["warped"])).run()
    finally:
        os.chdir(cwd)
    assert ElementTree.parse(result.outputs.out_report).getroot().tag == f"{SVG}svg"


def _lcurve_selection(corner):
    weights = np.logspace(-4.5, -1, 29)
    return {"TikhonovWeights": list(weights), "FieldMisfitRMSppm": list(1e-3 * weights**0.3),
            "GradientNormRMSppmPerMM": list(1e-2 * weights**-0.2), "TikhonovCorner": corner,
            "weight": 8.7e-4}


def test_lcurve_figure_is_a_deterministic_svg_marking_the_corner(tmp_path):
    from qsmprep.reports.figures import plot_lcurve

    corner = float(np.logspace(-4.5, -1, 29)[13])
    first = plot_lcurve(_lcurve_selection(corner), tmp_path / "a.svg")
    second = plot_lcurve(_lcurve_selection(corner), tmp_path / "b.svg")
    assert open(first, "rb").read() == open(second, "rb").read()
    assert ElementTree.parse(first).getroot().tag.endswith("svg")
    # without a corner, no circle and another annotation: a different drawing
    unmarked = plot_lcurve(_lcurve_selection(None), tmp_path / "c.svg")
    assert open(unmarked, "rb").read() != open(first, "rb").read()


@pytest.mark.parametrize("left, right, emphasised", [(80.0, 40.0, True), (50.0, 50.0, False)])
def test_strip_plot_emphasises_the_higher_hemisphere(tmp_path, left, right, emphasised):
    from qsmprep.reports.figures import _EMPHASIS_COLOUR, plot_range_strip

    region = {"ranges": [{"pattern": "CBS", "low_ppb": 45.0, "high_ppb": 120.0},
                         {"pattern": "PSP", "low_ppb": 15.0, "high_ppb": 40.0}],
              "left_ppb": left, "right_ppb": right, "bilateral_ppb": (left + right) / 2}
    path = plot_range_strip(region, tmp_path / "strip.svg", colours={"CBS": "#E69F00"})
    text = open(path).read().lower()
    assert (_EMPHASIS_COLOUR.lower() in text) == emphasised
    assert float(ElementTree.parse(path).getroot().get("width").rstrip("pt")) == \
        pytest.approx(4.0 * 72)
