"""Figures for the visual quality control of the processing (SVG, deterministic).

Figures are drawn with matplotlib's object interface on an Agg canvas (no pyplot state, safe
in parallel nipype workers) and written as SVG with fixed element identifiers and no date, so
the same inputs give byte-identical files.
"""

from __future__ import annotations

import io
import os

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from ..bids.derivatives import write_atomically
from ..qsm.masking import otsu_threshold
from .cbs import REGION_LABELS

_SVG_SETTINGS = {"svg.hashsalt": "qsmprep", "svg.fonttype": "path", "svg.image_inline": True,
                 "path.simplify": True}
_EDGE_COLOUR = "#ff4040"  # grey/white-matter boundary of the template
_OUTLINE_COLOUR = "#40c0ff"  # brain outline of the template
_VIEWS = (("sagittal", 0, "x"), ("coronal", 1, "y"), ("axial", 2, "z"))


def _canonical(path):
    image = nib.as_closest_canonical(nib.load(os.fspath(path)))
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0]
    return np.nan_to_num(data), image.affine


def _slice(volume, axis, index):
    """2-D cut, oriented for display: rows go up (superior or anterior), columns to the right
    of the viewer (anterior for sagittal, the subject's right for coronal and axial:
    neurological convention)."""
    return np.take(volume, index, axis=axis).T


def plot_registration(template_path, warped_moving_path, out_path, *, cuts_per_view: int = 5,
                      dpi: int = 96) -> str:
    """SVG of the registered image with the template's edges drawn over it.

    Sagittal, coronal and axial cuts (``cuts_per_view`` each, evenly spread over the middle 70 %
    of the template brain) of the image registered to the template (ANTs SyN; Avants et al.,
    Med Image Anal 2008;12:26-41) in grey, overlaid with two contours of the template: its
    brain outline (blue) and its grey/white-matter boundary (red; the Otsu threshold of the
    template's brain intensities, IEEE Trans Syst Man Cybern 1979;9:62-66, on the template
    smoothed by one voxel). A good registration puts the image's own boundaries on the lines.
    Both images are shown in their closest RAS orientation; they must share the template
    grid. Returns the absolute path of the SVG.
    """
    template, affine = _canonical(template_path)
    warped, _ = _canonical(warped_moving_path)
    if warped.shape != template.shape:
        raise ValueError(f"{warped_moving_path} {warped.shape} is not on the template grid "
                         f"{template.shape} of {template_path}")
    smoothed = ndimage.gaussian_filter(template, 1.0)
    brain = template > 0.05 * float(np.percentile(template[template > 0], 99)) \
        if np.any(template > 0) else np.ones(template.shape, bool)
    brain = ndimage.binary_fill_holes(brain)
    boundary_level = otsu_threshold(smoothed[brain]) if brain.any() else 0.5
    outline = ndimage.gaussian_filter(brain.astype(np.float32), 1.0)
    inside = warped[brain]
    vmin, vmax = (np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0))
    if not vmax > vmin:
        vmax = vmin + 1.0
    voxel_size = np.linalg.norm(affine[:3, :3], axis=0)
    bounds = np.argwhere(brain)
    margin = np.ceil(4.0 / voxel_size).astype(int)  # show the brain and 4 mm around it
    low = np.maximum(bounds.min(axis=0) - margin, 0)
    box = tuple(slice(a, b) for a, b in
                zip(low, np.minimum(bounds.max(axis=0) + margin + 1, template.shape)))
    template, warped, smoothed, outline, brain = (
        array[box] for array in (template, warped, smoothed, outline, brain))
    corner = affine[:3, 3] + affine[:3, :3] @ low
    bounds = np.argwhere(brain)
    first, last = bounds.min(axis=0), bounds.max(axis=0)

    figure = Figure(figsize=(1.8 * cuts_per_view, 6.6), facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, cuts_per_view, left=0.01, right=0.99, bottom=0.01, top=0.95,
                               wspace=0.02, hspace=0.12)
    for row, (name, axis, letter) in enumerate(_VIEWS):
        span = last[axis] - first[axis]
        positions = np.linspace(first[axis] + 0.15 * span, last[axis] - 0.15 * span,
                                cuts_per_view).round().astype(int)
        shown = [a for a in range(3) if a != axis]
        extent = [corner[shown[0]] - voxel_size[shown[0]] / 2,
                  corner[shown[0]] + (template.shape[shown[0]] - 0.5) * voxel_size[shown[0]],
                  corner[shown[1]] - voxel_size[shown[1]] / 2,
                  corner[shown[1]] + (template.shape[shown[1]] - 0.5) * voxel_size[shown[1]]]
        for column, index in enumerate(positions):
            ax = figure.add_subplot(grid[row, column])
            ax.imshow(_slice(warped, axis, index), cmap="gray", vmin=vmin, vmax=vmax,
                      origin="lower", extent=extent, interpolation="nearest")
            x = corner[shown[0]] + np.arange(template.shape[shown[0]]) * voxel_size[shown[0]]
            y = corner[shown[1]] + np.arange(template.shape[shown[1]]) * voxel_size[shown[1]]
            cut = _slice(smoothed, axis, index)
            if cut.max() > boundary_level > cut.min():
                ax.contour(x, y, cut, levels=[boundary_level], colors=_EDGE_COLOUR,
                           linewidths=0.6)
            cut = _slice(outline, axis, index)
            if cut.max() > 0.5 > cut.min():
                ax.contour(x, y, cut, levels=[0.5], colors=_OUTLINE_COLOUR, linewidths=0.6)
            ax.set_axis_off()
            ax.set_aspect("equal")
            position = corner[axis] + index * voxel_size[axis]
            ax.set_title(f"{name} {letter} = {position:.0f} mm", color="white", fontsize=7,
                         pad=2)
    figure.suptitle("Registered image, template grey/white boundary (red) and brain outline "
                    "(blue)", color="white", fontsize=8, y=0.995)
    return _save_svg(figure, out_path, dpi=dpi)


# ------------------------------------------------------------------ report mosaics and strips
#: Percentiles of the brain's susceptibility that bound the mosaics' display window: wide
#: enough to keep the iron-rich nuclei, narrow enough for grey/white contrast (a fixed
#: -150 to +250 ppb window gave cortex and white matter, 45 ppb apart, a tenth of the scale).
QSM_WINDOW_PERCENTILES = (1.0, 99.0)
#: Narrowest display window (ppb), for nearly uniform maps.
QSM_MIN_WINDOW_PPB = 100.0
#: Display window of the R2* mosaics (1/s).
R2STAR_WINDOW_HZ = (0.0, 100.0)
_MASK_COLOUR = "#ff4040"


def _save_svg(figure, out_path, *, dpi: int = 96) -> str:
    """Write ``figure`` as SVG (no date, so the bytes repeat) atomically; returns the
    absolute path."""
    svg = io.BytesIO()
    with matplotlib.rc_context(_SVG_SETTINGS):
        figure.savefig(svg, format="svg", dpi=dpi, metadata={"Date": None},
                       facecolor=figure.get_facecolor())
    return os.path.abspath(write_atomically(out_path, svg.getvalue()))


def _axial_cuts(extent_mask, count: int) -> list[int]:
    """``count`` axial indices evenly spread over the middle 80 % of the slices that
    ``extent_mask`` touches (of the whole volume when it is empty), without repeats."""
    touched = np.flatnonzero(np.asarray(extent_mask).any(axis=(0, 1)))
    first, last = ((int(touched[0]), int(touched[-1])) if touched.size
                   else (0, np.asarray(extent_mask).shape[2] - 1))
    span = last - first
    positions = np.linspace(first + 0.1 * span, last - 0.1 * span, count).round().astype(int)
    return list(dict.fromkeys(int(position) for position in positions))


def _mosaic(count: int, columns: int, *, colorbar: bool, panel_inches: float = 1.9,
            bottom_inches: float = 0.0):
    """A black figure of ``count`` axial panels in rows of ``columns`` (room on the right for
    a colour bar when asked, and ``bottom_inches`` below the panels for a legend)."""
    rows = int(np.ceil(count / columns))
    width = columns * panel_inches + (0.8 if colorbar else 0.0)
    height = rows * panel_inches + 0.1 + bottom_inches
    figure = Figure(figsize=(width, height), facecolor="black")
    FigureCanvasAgg(figure)
    right = columns * panel_inches / width
    grid = figure.add_gridspec(rows, columns, left=0.005, right=right - 0.005,
                               bottom=0.005 + bottom_inches / height, top=0.995,
                               wspace=0.02, hspace=0.02)
    axes = [figure.add_subplot(grid[divmod(index, columns)]) for index in range(count)]
    for ax in axes:
        ax.set_axis_off()
    return figure, axes


def _show_axial(ax, volume, index, affine, **options):
    """Axial cut ``index`` of a RAS volume in neurological convention (the subject's left on
    the left, anterior up), with world-millimetre extent."""
    voxel_size = np.linalg.norm(affine[:3, :3], axis=0)
    shape = volume.shape
    extent = [-voxel_size[0] / 2, (shape[0] - 0.5) * voxel_size[0],
              -voxel_size[1] / 2, (shape[1] - 0.5) * voxel_size[1]]
    image = ax.imshow(_slice(volume, 2, index), origin="lower", extent=extent,
                      interpolation="nearest", **options)
    ax.set_aspect("equal")
    return image, voxel_size


def _outline(ax, mask_cut, voxel_size, colour, width):
    if mask_cut.any() and not mask_cut.all():
        x = np.arange(mask_cut.shape[1]) * voxel_size[0]
        y = np.arange(mask_cut.shape[0]) * voxel_size[1]
        ax.contour(x, y, mask_cut.astype(np.float32), levels=[0.5], colors=[colour],
                   linewidths=width)


def _side_labels(ax):
    for x, letter, align in ((0.03, "L", "left"), (0.97, "R", "right")):
        ax.text(x, 0.5, letter, color="white", fontsize=7, ha=align, va="center",
                transform=ax.transAxes)


def _colour_bar(figure, image, label, ticks):
    """A colour bar in the right margin of a :func:`_mosaic`, its label (with the unit) on
    its left side, inside the figure."""
    bar = figure.colorbar(image, cax=figure.add_axes([0.955, 0.2, 0.012, 0.6]), ticks=ticks)
    bar.set_label(label, color="white", fontsize=7, labelpad=2)
    bar.ax.yaxis.set_label_position("left")
    bar.ax.tick_params(labelsize=6, colors="white")
    bar.outline.set_edgecolor("white")


#: Legend entries per row under the QSM mosaic.
_LEGEND_COLUMNS = 4


def qsm_window_ppb(chi_ppb) -> tuple[float, float]:
    """Display window (ppb) of a susceptibility map: the :data:`QSM_WINDOW_PERCENTILES` of its
    nonzero voxels (the brain), outwards to whole 10 ppb, widened symmetrically to at least
    :data:`QSM_MIN_WINDOW_PPB`."""
    values = np.asarray(chi_ppb, dtype=np.float64)
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return (-QSM_MIN_WINDOW_PPB / 2, QSM_MIN_WINDOW_PPB / 2)
    low, high = np.percentile(values, QSM_WINDOW_PERCENTILES)
    low, high = 10.0 * np.floor(low / 10.0), 10.0 * np.ceil(high / 10.0)
    missing = QSM_MIN_WINDOW_PPB - (high - low)
    if missing > 0:
        low, high = low - missing / 2, high + missing / 2
    return float(low), float(high)


def plot_qsm_mosaic(chimap_path, labels_path, out_path, *, names=None,
                    window_ppb=None, cuts: int = 8, columns: int = 4) -> str:
    """SVG mosaic of a susceptibility map with the outline of every labelled region.

    Axial cuts (``cuts``, spread over the labelled extent) of the Chimap (ppm, shown in ppb)
    in grey at the window ``window_ppb`` (default: :func:`qsm_window_ppb`, the 1st to 99th
    percentile of the brain, printed on the colour bar), with the boundary of each label of
    ``labels_path`` (the atlas on the same grid) in its own colour. With ``names`` ({label value: region name}), both hemispheres of a region
    share a colour and a legend under the panels names every colour. Both images are shown
    in their closest RAS orientation. Returns the absolute path of the SVG.
    """
    chi_ppb, affine = _canonical(chimap_path)
    chi_ppb = chi_ppb * 1e3
    labels = np.rint(_canonical(labels_path)[0]).astype(np.int64)
    if labels.shape != chi_ppb.shape:
        raise ValueError(f"{labels_path} {labels.shape} is not on the grid of {chimap_path} "
                         f"{chi_ppb.shape}")
    if window_ppb is None:
        window_ppb = qsm_window_ppb(chi_ppb)
    values = [int(value) for value in np.unique(labels) if value > 0]
    names = {int(key): str(name) for key, name in (names or {}).items()}
    regions = list(dict.fromkeys(names.get(value, str(value)) for value in values))
    palette = [*matplotlib.colormaps["tab20"].colors, *matplotlib.colormaps["tab20b"].colors]
    colour_of = {region: palette[order % len(palette)] for order, region in enumerate(regions)}
    indices = _axial_cuts(labels > 0, cuts)
    legend_rows = int(np.ceil(len(regions) / _LEGEND_COLUMNS)) if names else 0
    figure, axes = _mosaic(len(indices), columns, colorbar=True,
                           bottom_inches=0.05 + 0.17 * legend_rows if legend_rows else 0.0)
    image = None
    for ax, index in zip(axes, indices):
        image, voxel_size = _show_axial(ax, chi_ppb, index, affine, cmap="gray",
                                        vmin=window_ppb[0], vmax=window_ppb[1])
        cut = _slice(labels, 2, index)
        for value in values:
            _outline(ax, cut == value, voxel_size, colour_of[names.get(value, str(value))], 0.6)
    _side_labels(axes[0])
    _colour_bar(figure, image, "susceptibility (ppb)", [window_ppb[0], 0.0, window_ppb[1]])
    if legend_rows:
        handles = [Line2D([], [], color=colour_of[region], linewidth=2) for region in regions]
        texts = [REGION_LABELS.get(region, region.replace("_", " ")) for region in regions]
        figure.legend(handles, texts, loc="lower left", bbox_to_anchor=(0.0, 0.0),
                      ncol=_LEGEND_COLUMNS, fontsize=6, frameon=False, labelcolor="white",
                      handlelength=1.5, columnspacing=1.0, borderaxespad=0.2)
    return _save_svg(figure, out_path)


def plot_mask_mosaic(magnitude_path, mask_path, out_path, *, cuts: int = 8,
                     columns: int = 4) -> str:
    """SVG mosaic of the brain mask's outline (red) over the magnitude (grey, 1st to 99th
    percentile), axial cuts spread over the mask. Returns the absolute path of the SVG."""
    magnitude, affine = _canonical(magnitude_path)
    mask = _canonical(mask_path)[0] > 0.5
    if mask.shape != magnitude.shape:
        raise ValueError(f"{mask_path} {mask.shape} is not on the grid of {magnitude_path} "
                         f"{magnitude.shape}")
    inside = magnitude[mask] if mask.any() else magnitude.ravel()
    vmin, vmax = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    if not vmax > vmin:
        vmax = vmin + 1.0
    indices = _axial_cuts(mask, cuts)
    figure, axes = _mosaic(len(indices), columns, colorbar=False)
    for ax, index in zip(axes, indices):
        _, voxel_size = _show_axial(ax, magnitude, index, affine, cmap="gray", vmin=vmin,
                                    vmax=vmax)
        _outline(ax, _slice(mask, 2, index), voxel_size, _MASK_COLOUR, 0.9)
    _side_labels(axes[0])
    return _save_svg(figure, out_path)


def plot_r2star_mosaic(r2star_path, out_path, *, mask_path=None, window_hz=R2STAR_WINDOW_HZ,
                       cuts: int = 8, columns: int = 4) -> str:
    """SVG mosaic of an R2* map (1/s) at the fixed ``window_hz`` (default 0-100 /s), axial cuts
    spread over the mask (or the non-zero voxels). Returns the absolute path of the SVG."""
    r2star, affine = _canonical(r2star_path)
    extent = (_canonical(mask_path)[0] > 0.5) if mask_path is not None else r2star != 0
    indices = _axial_cuts(extent, cuts)
    figure, axes = _mosaic(len(indices), columns, colorbar=True)
    image = None
    for ax, index in zip(axes, indices):
        image, _ = _show_axial(ax, r2star, index, affine, cmap="magma", vmin=window_hz[0],
                               vmax=window_hz[1])
    _side_labels(axes[0])
    _colour_bar(figure, image, "R2* (1/s)",
                [window_hz[0], (window_hz[0] + window_hz[1]) / 2, window_hz[1]])
    return _save_svg(figure, out_path)


#: Colour of what a figure points out: the higher hemisphere of a strip plot (the one the
#: scoring reads), the corner of an L-curve.
_EMPHASIS_COLOUR = "#D55E00"


def plot_range_strip(region: dict, out_path, *, colours: dict) -> str:
    """SVG strip of one findings row: each pattern's range as a coloured bar on its own lane
    (named on the left), the subject's left (L) and right (R) means as letters above (the
    higher one, which the scoring reads, in bold vermilion), and the mean of both
    hemispheres as a black line labelled "mean".

    ``region`` is a findings entry of :func:`qsmprep.reports.cbs.findings` (``ranges``,
    ``left_ppb``, ``right_ppb``, ``bilateral_ppb``); ``colours`` maps pattern names to
    colours. The figure is 4 x 1.1 inches (400 x 110 px at 100 dpi). Returns the absolute
    path of the SVG.
    """
    ranges = region["ranges"]
    left, right, both = region["left_ppb"], region["right_ppb"], region["bilateral_ppb"]
    values = [value for value in (left, right, both) if value is not None]
    edges = [item["low_ppb"] for item in ranges] + [item["high_ppb"] for item in ranges] + values
    low, high = (min(edges), max(edges)) if edges else (0.0, 1.0)
    pad = 0.08 * max(high - low, 10.0)
    close = (left is not None and right is not None
             and abs(left - right) < 0.05 * (high - low + 2 * pad))
    higher = None
    if left is not None and right is not None and left != right:
        higher = "L" if left > right else "R"
    figure = Figure(figsize=(4.0, 1.1), facecolor="white")
    FigureCanvasAgg(figure)
    ax = figure.add_axes([0.1, 0.27, 0.88, 0.71])
    lanes = max(len(ranges), 1)
    for lane, item in enumerate(ranges):
        y = lanes - lane
        colour = colours.get(item["pattern"], "#777777")
        ax.plot([item["low_ppb"], item["high_ppb"]], [y, y], linewidth=6,
                solid_capstyle="butt", color=colour)
        ax.text(-0.015, y, item["pattern"], transform=ax.get_yaxis_transform(), ha="right",
                va="center", fontsize=7, color=colour, fontweight="bold")
    if both is not None:
        ax.plot([both, both], [0.4, lanes + 0.6], color="black", linewidth=1.2)
        ax.text(both, 0.35, "mean", ha="center", va="top", fontsize=6)
    for value, letter, side in ((left, "L", "right"), (right, "R", "left")):
        if value is not None:
            emphasis = letter == higher
            ax.text(value, lanes + 0.75, letter, ha=side if close else "center", va="bottom",
                    fontsize=9 if emphasis else 8, fontweight="bold" if emphasis else "normal",
                    color=_EMPHASIS_COLOUR if emphasis else "#444444")
    _finish_lanes(ax, (low - pad, high + pad), (-0.3, lanes + 1.7), "ppb")
    return _save_svg(figure, out_path, dpi=100)


def _finish_lanes(ax, x_limits, y_limits, x_label) -> None:
    """The axes of a lane plot: only the value axis at the bottom, labelled, small text."""
    ax.set_xlim(*x_limits)
    ax.set_ylim(*y_limits)
    ax.set_yticks([])
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    ax.tick_params(axis="x", labelsize=7, length=2, pad=1)
    ax.set_xlabel(x_label, fontsize=7, labelpad=1)


def plot_motor_profile(profile: dict, out_path) -> str:
    """SVG of the motor-neuron profile (:func:`qsmprep.reports.motor.motor_neuron_profile`).

    One lane per region (precentral grey matter, its superficial and deep halves, BA4, the
    corticospinal tract), the left (L) and right (R) values as letters (elevated sides in bold
    vermilion), the reference of each lane as a grey band: the control mean +- 2 SD where the
    range table has a control row, else the healthy value up to the elevation threshold.
    5 inches wide, 0.4 inch per lane. Returns the absolute path of the SVG.
    """
    from .cbs import ELEVATION_MARGIN_PPB
    from .motor import ELEVATED_Z

    regions = profile["regions"]
    height = 0.4 * len(regions) + 0.5
    figure = Figure(figsize=(5.0, height), facecolor="white")
    FigureCanvasAgg(figure)
    ax = figure.add_axes([0.3, 0.42 / height, 0.66, 1 - 0.5 / height])
    values = []
    for lane, region in enumerate(regions):
        y = len(regions) - lane
        control, healthy = region["control"], region["healthy_ppb"]
        if control is not None:
            band = (control["mean_ppb"] - ELEVATED_Z * control["sd_ppb"],
                    control["mean_ppb"] + ELEVATED_Z * control["sd_ppb"])
        elif healthy is not None:
            band = (healthy, healthy + ELEVATION_MARGIN_PPB)
        else:
            band = None
        if band is not None:
            ax.plot(band, [y, y], linewidth=9, solid_capstyle="butt", color="#DDDDDD")
            values += list(band)
        ax.text(-0.02, y, region["label"], transform=ax.get_yaxis_transform(), ha="right",
                va="center", fontsize=7)
        for letter, key in (("L", "left_ppb"), ("R", "right_ppb")):
            value = region[key]
            if value is None:
                continue
            values.append(value)
            emphasis = bool(region["elevated"].get(letter))
            ax.text(value, y + (0.12 if letter == "L" else -0.12), letter, ha="center",
                    va="center", fontsize=9 if emphasis else 8,
                    fontweight="bold" if emphasis else "normal",
                    color=_EMPHASIS_COLOUR if emphasis else "#444444")
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.08 * max(high - low, 10.0)
    _finish_lanes(ax, (low - pad, high + pad), (0.4, len(regions) + 0.6),
                  "susceptibility (ppb); grey: reference")
    return _save_svg(figure, out_path, dpi=100)


def plot_lcurve(selection: dict, out_path) -> str:
    """SVG of the L-curve behind an automatic TV weight, its corner marked.

    ``selection`` is the ``RegularizationSelection`` block of the sidecars plus ``weight``,
    the TV weight chosen (:func:`qsmprep.reports.render.regularization_record`): the
    Tikhonov weights, the field misfit (ppm RMS in the mask) and the gradient norm (ppm/mm
    RMS) of each. Log-log axes in ppb. Returns the absolute path of the SVG.
    """
    weights = np.asarray(selection["TikhonovWeights"], dtype=float)
    misfit_ppb = 1000.0 * np.asarray(selection["FieldMisfitRMSppm"], dtype=float)
    gradient_ppb = 1000.0 * np.asarray(selection["GradientNormRMSppmPerMM"], dtype=float)
    figure = Figure(figsize=(4.2, 3.0), facecolor="white")
    FigureCanvasAgg(figure)
    ax = figure.add_axes([0.17, 0.16, 0.78, 0.74])
    ax.loglog(misfit_ppb, gradient_ppb, "-o", color="#0072B2", markersize=2.5, linewidth=1)
    corner = selection.get("TikhonovCorner")
    if corner is not None:
        index = int(np.argmin(np.abs(np.log(weights / corner))))
        ax.plot(misfit_ppb[index], gradient_ppb[index], "o", markersize=8, markerfacecolor="none",
                markeredgecolor=_EMPHASIS_COLOUR, markeredgewidth=1.5)
        ax.annotate(f"corner: Tikhonov weight {corner:.3g} mm\u00b2\nTV weight "
                    f"{selection.get('weight', float('nan')):.3g}",
                    (misfit_ppb[index], gradient_ppb[index]), xytext=(12, 12),
                    textcoords="offset points", fontsize=7, color=_EMPHASIS_COLOUR)
    else:
        ax.text(0.5, 0.9, "no corner: the reference weight was used", transform=ax.transAxes,
                ha="center", fontsize=7, color=_EMPHASIS_COLOUR)
    ax.set_xlabel("field misfit in the mask (ppb, RMS)", fontsize=7)
    ax.set_ylabel("susceptibility gradient (ppb/mm, RMS)", fontsize=7)
    ax.set_title("L-curve of the closed-form Tikhonov solution", fontsize=8)
    ax.tick_params(labelsize=6, which="both")
    return _save_svg(figure, out_path, dpi=100)


# ------------------------------------------------------------------------ group-level figures
#: Colours of sites and diagnoses in the group figures (Okabe-Ito, colour-blind safe).
_GROUP_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
                  "#000000")
_NO_LABEL = "n/a"


def _labels(table, column) -> np.ndarray:
    """``column`` as strings, ``n/a`` where missing or absent."""
    if column not in table.columns:
        return np.full(len(table), _NO_LABEL, dtype=object)
    values = table[column]
    return np.where(values.notna().to_numpy(), values.astype(str).to_numpy(), _NO_LABEL)


def _ordered(labels) -> list[str]:
    """Sorted distinct labels, ``n/a`` last."""
    found = sorted(set(labels) - {_NO_LABEL})
    return found + ([_NO_LABEL] if _NO_LABEL in set(labels) else [])


def _spread(count: int, width: float = 0.28) -> np.ndarray:
    """Fixed horizontal offsets of ``count`` points (deterministic jitter)."""
    if count <= 1:
        return np.zeros(count)
    return (np.arange(count) * 0.618034 % 1.0 - 0.5) * 2 * width


def _bilateral_region(feature: str):
    """Region of a ``<region>_bilateral_<statistic>[_suffix]`` column, else None."""
    head, separator, _ = str(feature).partition("_bilateral_")
    return head if separator and head else None


def _box(ax, samples, positions, colours, width=0.6):
    shown = [(sample, position, colour) for sample, position, colour
             in zip(samples, positions, colours) if sample.size]
    if not shown:
        return
    parts = ax.boxplot([sample for sample, _, _ in shown],
                       positions=[position for _, position, _ in shown], widths=width,
                       showfliers=False, patch_artist=True, manage_ticks=False,
                       medianprops={"color": "black", "linewidth": 1.0},
                       whiskerprops={"color": "#555555", "linewidth": 0.8},
                       capprops={"color": "#555555", "linewidth": 0.8},
                       boxprops={"linewidth": 0.8, "edgecolor": "#555555"})
    for patch, (_, _, colour) in zip(parts["boxes"], shown):
        patch.set_facecolor(colour)
        patch.set_alpha(0.25)


def plot_group_regions(wide, features, out_path, *, group_column="diagnosis",
                       site_column="site", title="Regional susceptibility") -> str | None:
    """SVG of each region's bilateral mean by diagnosis: one panel per region, a box per
    diagnosis (median, quartiles, whiskers to 1.5 IQR) and one point per scan, coloured by
    site.

    ``wide`` is a wide table (one row per scan, raw or harmonised); of ``features`` the
    ``<region>_bilateral_...`` columns are drawn (all of them when there is none). Scans
    without a diagnosis are shown as ``n/a``. Panels are wrapped in rows of
    :data:`GROUP_FACET_COLUMNS` so that the figure fits :data:`GROUP_FIGURE_MAX_WIDTH_IN`
    with text of at least :data:`GROUP_MIN_FONT_PT`. Returns the absolute path of the SVG, or
    None when there is nothing to draw (no scans or no finite value).
    """
    features = [feature for feature in (features or []) if feature in wide.columns]
    bilateral = [feature for feature in features if _bilateral_region(feature)]
    features = bilateral or features
    if wide is None or len(wide) == 0 or not features:
        return None
    values = wide[features].to_numpy(dtype=np.float64)
    if not np.isfinite(values).any():
        return None
    groups, sites = _labels(wide, group_column), _labels(wide, site_column)
    group_order, site_order = _ordered(groups), _ordered(sites)
    site_colours = {site: _GROUP_PALETTE[index % len(_GROUP_PALETTE)]
                    for index, site in enumerate(site_order)}
    rotate = _crowded(group_order)
    figure, axes = _facet_figure(len(features), title=title, rotate_ticks=rotate)
    for index, (ax, feature) in enumerate(zip(axes, features)):
        column = values[:, index]
        samples = [column[(groups == group) & np.isfinite(column)] for group in group_order]
        _box(ax, samples, range(len(group_order)), ["#bbbbbb"] * len(group_order))
        for position, group in enumerate(group_order):
            chosen = np.flatnonzero((groups == group) & np.isfinite(column))
            offsets = _spread(chosen.size)
            ax.scatter(position + offsets, column[chosen], s=14, linewidths=0.3,
                       edgecolors="white", zorder=3,
                       c=[site_colours[site] for site in sites[chosen]])
        _group_axis(ax, group_order, _region_title(_bilateral_region(feature) or feature),
                    "ppb" if index % GROUP_FACET_COLUMNS == 0 else None, rotate)
    handles = [Line2D([], [], marker="o", linestyle="", markersize=5, color=site_colours[site],
                      label=site) for site in site_order]
    _top_legend(figure, handles, f"{site_column}:")
    return _save_svg(figure, out_path)


def plot_group_asymmetry(tidy, out_path, *, reference="csf", group_column="diagnosis"
                         ) -> str | None:
    """SVG of the absolute-value-safe hemispheric asymmetry (``ai_abs_pct``, bilateral rows of
    the ``reference`` values of a tidy group table): one panel per region (wrapped in rows of
    :data:`GROUP_FACET_COLUMNS`), one box per diagnosis with one point per scan. Returns the
    absolute path of the SVG, or None when the table has no finite asymmetry.
    """
    if tidy is None or len(tidy) == 0 or "ai_abs_pct" not in tidy.columns:
        return None
    rows = tidy[(tidy["hemisphere"] == "bilateral") & (tidy["reference"] == reference)]
    rows = rows[np.isfinite(rows["ai_abs_pct"].to_numpy(dtype=np.float64))]
    if rows.empty:
        return None
    regions = sorted(rows["region"].astype(str).unique())
    groups = _labels(rows, group_column)
    group_order = _ordered(groups)
    colours = {group: _GROUP_PALETTE[index % len(_GROUP_PALETTE)]
               for index, group in enumerate(group_order)}
    values = rows["ai_abs_pct"].to_numpy(dtype=np.float64)
    region_of = rows["region"].astype(str).to_numpy()
    rotate = _crowded(group_order)
    figure, axes = _facet_figure(
        len(regions), title=f"Hemispheric asymmetry index by {group_column} ({reference} "
        "reference; positive: right > left)", rotate_ticks=rotate)
    for index, (ax, region) in enumerate(zip(axes, regions)):
        samples = [values[(region_of == region) & (groups == group)] for group in group_order]
        positions = np.arange(len(group_order))
        ax.axhline(0.0, color="#999999", linewidth=0.6, zorder=0)
        _box(ax, samples, positions, [colours[group] for group in group_order])
        for position, group, sample in zip(positions, group_order, samples):
            ax.scatter(position + _spread(sample.size), sample, s=14, color=colours[group],
                       linewidths=0.3, edgecolors="white", zorder=3)
        _group_axis(ax, group_order, _region_title(region),
                    "AI (%)" if index % GROUP_FACET_COLUMNS == 0 else None, rotate)
    return _save_svg(figure, out_path)


def plot_roc_curves(predictions, out_path, *,
                    title="Cross-validated ROC (out-of-fold predictions)") -> str | None:
    """SVG of the ROC curve of each classified pair of diagnoses, from the out-of-fold
    probabilities of :func:`qsmprep.group.classify.classify_diagnoses` (``predictions``:
    ``group_a``, ``group_b``, ``diagnosis``, ``probability_b``; ``group_b`` is the positive
    class; any score that is higher for ``group_b`` will do, e.g. a ratio). The legend, right
    of the square axes, names each pair with its AUC. Returns the absolute path of the SVG, or
    None when no pair has both classes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    if predictions is None or len(predictions) == 0:
        return None
    curves = []
    for (group_a, group_b), rows in predictions.groupby(["group_a", "group_b"], sort=True):
        score = rows["probability_b"].to_numpy(dtype=np.float64)
        truth = (rows["diagnosis"].astype(str) == str(group_b)).to_numpy(dtype=int)
        keep = np.isfinite(score)
        score, truth = score[keep], truth[keep]
        if truth.size == 0 or truth.min() == truth.max():
            continue
        false_positive, true_positive, _ = roc_curve(truth, score)
        curves.append((f"{group_b} vs {group_a}", false_positive, true_positive,
                       float(roc_auc_score(truth, score)), int(truth.size)))
    if not curves:
        return None
    side_in, legend_in = 3.6, 3.4
    height = max(side_in + 1.0, 0.9 + 0.2 * len(curves))
    width = 0.75 + side_in + 0.3 + legend_in
    figure = Figure(figsize=(width, height), facecolor="white")
    FigureCanvasAgg(figure)
    ax = figure.add_axes([0.75 / width, (height - 0.5 - side_in) / height, side_in / width,
                          side_in / height])
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=0.8)
    for index, (label, x, y, auc, count) in enumerate(curves):
        ax.plot(x, y, drawstyle="steps-post", linewidth=1.6,
                color=_GROUP_PALETTE[index % len(_GROUP_PALETTE)],
                linestyle=("-", "--", ":", "-.")[index // len(_GROUP_PALETTE) % 4],
                label=f"{label}: AUC {auc:.2f} (n = {count})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity", fontsize=GROUP_LABEL_FONT_PT)
    ax.set_ylabel("sensitivity", fontsize=GROUP_LABEL_FONT_PT)
    ax.tick_params(labelsize=GROUP_MIN_FONT_PT)
    ax.legend(loc="upper left", bbox_to_anchor=(1.04, 1.0), fontsize=GROUP_MIN_FONT_PT,
              frameon=False, borderaxespad=0.0)
    figure.text(0.75 / width, 1 - 0.12 / height, title, fontsize=GROUP_TITLE_FONT_PT,
                ha="left", va="top")
    return _save_svg(figure, out_path)


# --------------------------------------------------------------- layout of the group figures
#: Widest group figure (inches). group.html shows each group figure in one column of its
#: main area (1240 px less padding: about 1166 px, 12.1 inches at 96 px per inch) at no more
#: than its natural size, so text keeps its size in points.
GROUP_FIGURE_MAX_WIDTH_IN = 11.5
#: Smallest text of the group figures (points): 8.5 pt is 11 px at the natural size, and at
#: least 8 px down to a display of 70 % of it.
GROUP_MIN_FONT_PT = 8.5
GROUP_LABEL_FONT_PT = 9.0
GROUP_TITLE_FONT_PT = 11.0
#: Panels per row of the faceted group figures.
GROUP_FACET_COLUMNS = 4
#: Size of one panel and the gaps between panels (inches): room for a two-line title above
#: and rotated diagnosis labels below.
_PANEL_IN = (2.2, 1.8)
_GAP_IN = (0.6, 1.05)
_MARGIN_IN = {"left": 0.65, "right": 0.2, "top": 1.25, "bottom": 0.75}


def _crowded(labels) -> bool:
    """Whether the diagnosis labels would collide written horizontally under a panel."""
    characters = sum(len(str(label)) + 2 for label in labels)
    return characters * 0.6 * GROUP_MIN_FONT_PT / 72.0 > _PANEL_IN[0]


def _region_title(name: str) -> str:
    """A region name for a panel title: words, wrapped to two lines of a panel's width."""
    import textwrap

    return "\n".join(textwrap.wrap(str(name).replace("_", " "), width=24)[:2])


def _facet_figure(count: int, *, title: str, rotate_ticks: bool = False,
                  columns: int = GROUP_FACET_COLUMNS, panel_in=_PANEL_IN):
    """A white figure of ``count`` panels in rows of ``columns``, laid out in inches (so the
    titles, tick labels and the legend under the title never overlap); returns
    ``(figure, axes)``. The figure title sits in the top margin, above a line kept for a
    legend (:func:`_top_legend`)."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    gap_x, gap_y = _GAP_IN
    bottom = _MARGIN_IN["bottom"] + (0.25 if rotate_ticks else 0.0)
    gap_y += 0.25 if rotate_ticks else 0.0
    width = (_MARGIN_IN["left"] + columns * panel_in[0] + (columns - 1) * gap_x
             + _MARGIN_IN["right"])
    height = _MARGIN_IN["top"] + rows * panel_in[1] + (rows - 1) * gap_y + bottom
    figure = Figure(figsize=(width, height), facecolor="white")
    FigureCanvasAgg(figure)
    axes = []
    for index in range(count):
        row, column = divmod(index, columns)
        x0 = _MARGIN_IN["left"] + column * (panel_in[0] + gap_x)
        y0 = height - _MARGIN_IN["top"] - (row + 1) * panel_in[1] - row * gap_y
        ax = figure.add_axes([x0 / width, y0 / height, panel_in[0] / width,
                              panel_in[1] / height])
        ax.tick_params(labelsize=GROUP_MIN_FONT_PT)
        for spine in ("right", "top"):
            ax.spines[spine].set_visible(False)
        axes.append(ax)
    figure.text(_MARGIN_IN["left"] / width, 1 - 0.1 / height, title,
                fontsize=GROUP_TITLE_FONT_PT, ha="left", va="top")
    return figure, axes


def _group_axis(ax, group_order, title, ylabel, rotate=False):
    """Diagnosis ticks (rotated by 45 degrees when ``rotate``), the panel title and the y
    label."""
    ax.set_xticks(range(len(group_order)))
    ax.set_xticklabels(group_order, fontsize=GROUP_MIN_FONT_PT, rotation=45 if rotate else 0,
                       ha="right" if rotate else "center",
                       rotation_mode="anchor" if rotate else "default")
    ax.set_xlim(-0.6, len(group_order) - 0.4)
    ax.set_title(title, fontsize=GROUP_LABEL_FONT_PT, pad=4)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=GROUP_LABEL_FONT_PT)


def _top_legend(figure, handles, title):
    """One row of legend entries under the figure title (in the top margin of
    :func:`_facet_figure`)."""
    if not handles:
        return
    height = figure.get_figheight()
    left = _MARGIN_IN["left"] / figure.get_figwidth()
    figure.legend(handles=handles, title=title, loc="upper left", ncol=min(len(handles), 8),
                  fontsize=GROUP_MIN_FONT_PT, title_fontsize=GROUP_MIN_FONT_PT, frameon=False,
                  bbox_to_anchor=(left - 0.01, 1 - 0.38 / height), borderaxespad=0.0,
                  alignment="left", handletextpad=0.3, columnspacing=1.0)


def plot_clinical_scatter(values, correlations, out_path, *, group_column="diagnosis",
                          panels: int = 3) -> str | None:
    """SVG of the strongest clinical correlations: one panel per pair, the regional mean (x)
    against the clinical measure (y), one point per scan coloured by diagnosis.

    ``correlations`` is the table of :func:`qsmprep.group.clinical.correlate_clinical`; the
    strongest pair of each clinical column (lowest q, then largest |rho|) is drawn, at most
    ``panels`` of them, most significant first, each titled with its Spearman rho, q and n.
    ``values`` holds the feature and clinical columns (one row per scan). Returns the
    absolute path of the SVG, or None when there is no correlation to draw.
    """
    if correlations is None or len(correlations) == 0 or values is None or len(values) == 0:
        return None
    order = correlations.assign(_q=correlations["q"].astype(float).fillna(np.inf),
                                _r=-correlations["rho"].astype(float).abs().fillna(0.0))
    order = order.sort_values(["_q", "_r"], kind="mergesort")
    chosen = order.drop_duplicates("clinical").head(panels)
    chosen = chosen[[row["feature"] in values.columns and row["clinical"] in values.columns
                     for row in chosen.to_dict("records")]]
    if chosen.empty:
        return None
    groups = _labels(values, group_column)
    group_order = _ordered(groups)
    colours = {group: _GROUP_PALETTE[index % len(_GROUP_PALETTE)]
               for index, group in enumerate(group_order)}
    figure, axes = _facet_figure(len(chosen), title="Strongest clinical correlations "
                                 "(Spearman; q: Benjamini-Hochberg)", columns=3,
                                 panel_in=(2.9, 2.3))
    for ax, row in zip(axes, chosen.to_dict("records")):
        x = values[row["feature"]].to_numpy(dtype=np.float64)
        y = values[row["clinical"]].to_numpy(dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        for group in group_order:
            mine = keep & (groups == group)
            ax.scatter(x[mine], y[mine], s=22, color=colours[group], linewidths=0.4,
                       edgecolors="white", zorder=3)
        region = str(row["region"]).replace("_", " ")
        ax.set_xlabel(f"{region} {row['hemisphere']} (ppb)", fontsize=GROUP_LABEL_FONT_PT)
        ax.set_ylabel(str(row["clinical"]), fontsize=GROUP_LABEL_FONT_PT)
        ax.set_title(f"rho {row['rho']:.2f}, q {row['q']:.2g}, n = {int(row['n'])}",
                     fontsize=GROUP_LABEL_FONT_PT, pad=4)
    handles = [Line2D([], [], marker="o", linestyle="", markersize=5, color=colours[group],
                      label=group) for group in group_order]
    _top_legend(figure, handles, f"{group_column}:")
    return _save_svg(figure, out_path)
