"""The motor-neuron profile: precentral grey matter by depth and the corticospinal tract.

Quantitative susceptibility rises in the motor cortex of people with amyotrophic lateral
sclerosis (ALS), most in its middle and deep layers, and tracks upper-motor-neuron dysfunction
and faster progression ([costagli]; review: [als-review]); the corticospinal tract carries the
degenerating axons. The profile lists, per hemisphere, the susceptibility of

* the precentral grey matter (``motor_cortex``) and its superficial and deep halves
  (``motor_cortex_superficial`` / ``motor_cortex_deep``, :mod:`qsmprep.depth`),
* the primary motor cortex (BA4, ``primary_motor_cortex``),
* the corticospinal tract (``corticospinal_tract``, white matter of the Juelich tract),

each against a reference, and the difference deep minus superficial half (the "motor band"
measure: positive when the deep layers hold more iron). It is a profile with numbers and a
figure, not a diagnosis.

Reference and z-scores
----------------------
When the reference-range table in use has a ``control`` row for a region (e.g. the group
level's ``reference_ranges_learned.tsv``, whose ranges are the 10th-90th percentiles of the
cohort's controls, passed back with ``--reference-ranges``), the region's control mean and SD
are taken from that range under a normal approximation: mean = (low + high) / 2, SD = (high -
low) / (2 x 1.2816), 1.2816 being the 90th percentile of the standard normal; each side gets
``z = (value - mean) / SD`` and counts as *elevated* at ``z >= ELEVATED_Z`` (2). Without a
control row the side is compared with the healthy adult value of the region
(:data:`qsmprep.reports.cbs.HEALTHY_PPB`: grey matter 15, white matter -30 ppb, [rc2]) and
counts as elevated at or above that value plus ``ELEVATION_MARGIN_PPB`` (15 ppb, the regional
accuracy qsmprep holds on independent digital patients); no z-score is given then.

Sources
-------
[costagli]
    Costagli M, Donatelli G, Biagi L, et al. Magnetic susceptibility in the deep layers of the
    primary motor cortex in amyotrophic lateral sclerosis. NeuroImage Clin. 2016;12:965-969.
    doi:10.1016/j.nicl.2016.04.011.
[als-review]
    Mohammadi S, Ghaderi S, Fatehi F. Quantitative susceptibility mapping as an early
    neuroimaging biomarker for amyotrophic lateral sclerosis: a review. Increased
    susceptibility in the motor cortex and subcortical motor regions since 2015, linked to
    upper-motor-neuron dysfunction and faster progression; proposed for monitoring.
[rc2]
    Marques JP, et al. QSM reconstruction challenge 2.0. Magn Reson Med. 2021;86:526-542.
"""

from __future__ import annotations

from . import cbs

#: Regions of the profile, in display order.
PROFILE_REGIONS = ("motor_cortex", "motor_cortex_superficial", "motor_cortex_deep",
                   "primary_motor_cortex", "corticospinal_tract")
#: Short names of the profile's regions (table and figure).
PROFILE_LABELS = {"motor_cortex": "Precentral grey matter",
                  "motor_cortex_superficial": "superficial half",
                  "motor_cortex_deep": "deep half",
                  "primary_motor_cortex": "BA4 grey matter",
                  "corticospinal_tract": "Corticospinal tract"}
#: z-score from which a side counts as elevated against a control range.
ELEVATED_Z = 2.0
#: 90th percentile of the standard normal: a 10th-90th percentile range spans 2 x 1.2816 SD.
RANGE_HALF_WIDTH_SD = 1.2816


def control_reference(reference_ranges: dict, region: str) -> dict | None:
    """``{"mean_ppb", "sd_ppb", "source"}`` of ``region`` from the ``control`` row of a range
    table (normal approximation of a 10th-90th percentile range), or None without one."""
    for row in reference_ranges.get("rows", []):
        if row["region"] == region and row["pattern"] == "control":
            spread = (row["high_ppb"] - row["low_ppb"]) / (2.0 * RANGE_HALF_WIDTH_SD)
            if spread <= 0:
                return None
            return {"mean_ppb": (row["low_ppb"] + row["high_ppb"]) / 2.0, "sd_ppb": spread,
                    "source": row.get("source", "")}
    return None


def _side_values(rows, region, reference) -> dict:
    """{side: value} of ``region`` (the report's statistic: core mean, else mean)."""
    values = {}
    for row in rows:
        if row["region"] == region and row["reference"] == reference:
            values[row["hemisphere"]] = cbs.region_value(row, cbs.REPORT_STATISTIC)
    return values


def motor_neuron_profile(regional_rows, *, reference="csf", reference_ranges=None) -> dict:
    """The motor-neuron profile of one run (module docstring).

    Parameters
    ----------
    regional_rows : list of dict or path
        The run's regional table.
    reference : str
        Which reference's rows to read (that of the range table in use).
    reference_ranges : dict, optional
        From :func:`qsmprep.reports.cbs.read_reference_ranges`; its ``control`` rows give the
        z-scores.

    Returns
    -------
    dict
        ``measured`` (bool: the precentral grey matter was), ``regions`` (per profile region:
        ``region``, ``label``, ``left_ppb``, ``right_ppb``, ``bilateral_ppb``, ``healthy_ppb``,
        ``control`` (mean, SD, source or None), ``z`` ({L, R}) and ``elevated`` ({L, R}: bool or
        None)), ``deep_minus_superficial_ppb`` ({L, R}), ``basis`` (how elevation was judged),
        ``elevated_sides`` (sides whose precentral grey matter or its deep half is elevated),
        ``flagged`` and ``statement``.
    """
    rows = cbs.regional_rows_of(regional_rows)
    ranges = reference_ranges if reference_ranges is not None else cbs.read_reference_ranges()
    regions = []
    uses_controls = False
    for name in PROFILE_REGIONS:
        values = _side_values(rows, name, reference)
        if not values:
            continue
        control = control_reference(ranges, name)
        uses_controls |= control is not None
        healthy = cbs.HEALTHY_PPB.get(name)
        z, elevated = {}, {}
        for side in ("L", "R"):
            value = values.get(side)
            if value is None:
                z[side] = elevated[side] = None
            elif control is not None:
                z[side] = round((value - control["mean_ppb"]) / control["sd_ppb"], 2)
                elevated[side] = z[side] >= ELEVATED_Z
            else:
                z[side] = None
                elevated[side] = (None if healthy is None
                                  else value >= healthy + cbs.ELEVATION_MARGIN_PPB)
        regions.append({
            "region": name, "label": PROFILE_LABELS[name],
            "left_ppb": cbs.rounded(values.get("L")), "right_ppb": cbs.rounded(values.get("R")),
            "bilateral_ppb": cbs.rounded(values.get("bilateral")), "healthy_ppb": healthy,
            "control": control, "z": z, "elevated": elevated})
    by_name = {region["region"]: region for region in regions}
    band = {}
    for side, key in (("L", "left_ppb"), ("R", "right_ppb")):
        deep = by_name.get("motor_cortex_deep", {}).get(key)
        superficial = by_name.get("motor_cortex_superficial", {}).get(key)
        band[side] = (None if deep is None or superficial is None
                      else cbs.rounded(deep - superficial))
    basis = (f"the control range (z >= {ELEVATED_Z:g})" if uses_controls else
             f"the healthy adult value + {cbs.ELEVATION_MARGIN_PPB:g} ppb (no control range: "
             "run the group level with controls and pass its reference_ranges_learned.tsv with "
             "--reference-ranges for z-scores)")
    measured = "motor_cortex" in by_name
    elevated_sides = sorted({side for name in ("motor_cortex", "motor_cortex_deep")
                             if name in by_name
                             for side, flag in by_name[name]["elevated"].items() if flag})
    if not measured:
        statement = "Precentral grey matter not measured"
    elif elevated_sides:
        sides = " and ".join({"L": "left", "R": "right"}[side] for side in elevated_sides)
        deeper = [side for side in elevated_sides if (band.get(side) or 0) > 0]
        statement = (f"Precentral grey matter iron above {basis.split(' (')[0]} on the {sides}"
                     + (", higher in the deep half" if deeper else ""))
    else:
        statement = f"Precentral grey matter within {basis.split(' (')[0]}"
    return {"measured": measured, "regions": regions, "deep_minus_superficial_ppb": band,
            "basis": basis, "elevated_sides": elevated_sides,
            "flagged": bool(elevated_sides), "statement": statement,
            "reference": reference}
