"""Cortical depth: where a grey-matter voxel lies between the pial surface and the white matter.

Iron in amyotrophic lateral sclerosis (ALS) gathers in the middle and deep layers of the
primary motor cortex, where activated microglia load it: on 7 T susceptibility maps the deep
half of M1 is the part that rises in patients and tracks the upper-motor-neuron score of the
matching limb, while the superficial half stays near healthy values (Costagli M, Donatelli G,
Biagi L, et al. Magnetic susceptibility in the deep layers of the primary motor cortex in
amyotrophic lateral sclerosis. NeuroImage Clin 2016;12:965-969, doi:10.1016/j.nicl.2016.04.011;
the "motor band" hypointensity of T2*-weighted images, Donatelli G, et al. AJNR 2018;39:63-68).
A report of motor-cortex iron therefore separates the grey matter of the precentral gyrus into
a superficial and a deep half.

:func:`cortical_depth` gives each grey-matter voxel its relative depth from two distance
transforms over the participant's tissue classes (:mod:`qsmprep.tissue`):
``depth = d_outer / (d_outer + d_white)``, with ``d_outer`` the distance to the nearest voxel
that is neither grey nor white matter (sulcal CSF or outside the brain) and ``d_white`` the
distance to the nearest white-matter voxel, both in mm. It is 0 at the pial side and 1 at the
white-matter side: the equidistant depth of layer analyses (Waehnert MD, Dinse J, Weiss M,
et al. Anatomically motivated modeling of cortical laminae. NeuroImage 2014;93:210-220, who
show that equivolume depth follows the layers more closely where the cortex folds; at the
1 mm of clinical QSM, with two to four voxels across the cortex, the two agree to within a
voxel). :func:`depth_half_labels` splits atlas regions at depth 0.5; a voxel exactly halfway
(the middle voxel of an odd number across the cortex, or a ribbon one voxel thick) belongs to
neither half.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .tissue import LABELS as TISSUE_LABELS

#: Relative depth that separates the superficial from the deep half.
HALF_DEPTH = 0.5
#: Names of the halves, appended to the region's name.
HALVES = ("superficial", "deep")


def cortical_depth(tissue_labels, voxel_size) -> np.ndarray:
    """Relative cortical depth of every grey-matter voxel (0 pial side, 1 white-matter side).

    Parameters
    ----------
    tissue_labels : array_like of int, 3-D
        Tissue classes (:data:`qsmprep.tissue.LABELS`: 1 CSF, 2 grey matter, 3 white matter,
        0 outside the brain).
    voxel_size : sequence of 3 float
        Voxel edges (mm); the distances are measured in mm.

    Returns
    -------
    numpy.ndarray of float32
        Depth in [0, 1] on grey-matter voxels, NaN elsewhere. A grey-matter voxel with no white
        matter anywhere (or nothing but grey and white matter) gets NaN.
    """
    tissue_labels = np.asarray(tissue_labels)
    grey = tissue_labels == TISSUE_LABELS["gm"]
    white = tissue_labels == TISSUE_LABELS["wm"]
    outer = ~(grey | white)
    depth = np.full(tissue_labels.shape, np.nan, np.float32)
    if not grey.any() or not white.any() or not outer.any():
        return depth
    sampling = [float(size) for size in voxel_size]
    # distance_transform_edt measures to the nearest zero: pass the complement of the target
    distance_to_white = ndimage.distance_transform_edt(~white, sampling=sampling)
    distance_to_outer = ndimage.distance_transform_edt(~outer, sampling=sampling)
    outer_part = distance_to_outer[grey]
    depth[grey] = (outer_part / (outer_part + distance_to_white[grey])).astype(np.float32)
    return depth


def depth_half_labels(labels, table, depth, regions) -> tuple[np.ndarray, list[dict]]:
    """Label images of the superficial and deep halves of atlas regions.

    Parameters
    ----------
    labels : array_like of int, 3-D
        Atlas labels (cortical regions already restricted to grey matter).
    table : list of dict
        Atlas rows: ``index``, ``name``, ``hemisphere``.
    depth : array_like, 3-D
        :func:`cortical_depth` on the same grid.
    regions : dict of str to sequence of str
        Reported region -> the atlas regions that make it (``{"motor_cortex":
        ("precentral_ba4", "precentral_ba6", "precentral_other")}``). Regions whose parts the
        table lacks are skipped.

    Returns
    -------
    tuple
        (labels int32 of the halves, table rows): ``<region>_superficial`` and
        ``<region>_deep`` per hemisphere of the parts, numbered from 1. Voxels without a depth
        (not grey matter) or exactly halfway belong to neither half.
    """
    labels = np.asarray(labels)
    depth = np.asarray(depth)
    if labels.shape != depth.shape:
        raise ValueError(f"labels {labels.shape} and depth {depth.shape} are not on one grid")
    by_name: dict[str, dict[str, list[int]]] = {}
    for row in table:
        by_name.setdefault(row["name"], {}).setdefault(row.get("hemisphere") or "bilateral",
                                                       []).append(int(row["index"]))
    halves = np.zeros(labels.shape, np.int32)
    rows = []
    deep = depth > HALF_DEPTH  # NaN depths, and voxels halfway, are in neither
    superficial = depth < HALF_DEPTH
    for region, parts in regions.items():
        if not all(part in by_name for part in parts):
            continue
        hemispheres = sorted({side for part in parts for side in by_name[part]})
        for hemisphere in hemispheres:
            indices = [index for part in parts for index in by_name[part].get(hemisphere, [])]
            voxels = np.isin(labels, indices)
            for half, in_half in zip(HALVES, (superficial, deep)):
                index = len(rows) + 1
                halves[voxels & in_half] = index
                rows.append({"index": index, "name": f"{region}_{half}",
                             "hemisphere": hemisphere})
    return halves, rows
