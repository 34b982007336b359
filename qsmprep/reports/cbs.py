"""Corticobasal-syndrome differentiation: regional findings, pattern scores and quality checks.

A research aid, never a diagnosis. Every rule below is a plain, deterministic comparison of
regional susceptibility means (ppb) with fixed thresholds, so a reader can redo the scoring by
hand from the findings table. The thresholds come from approximate published ranges and need
local calibration (scanner, protocol, reconstruction and reference region all shift them);
supply your own ranges with ``--reference-ranges file.tsv`` (:func:`read_reference_ranges`).

Sources
-------
[cbs-review]
    "Quantitative Susceptibility Mapping for Corticobasal Syndrome", SciDEX wiki page
    ``diagnostics-quantitative-susceptibility-mapping-cbs``: the CBS / PSP / PD ranges of its
    table "Quantitative Thresholds" (motor cortex, posterior globus pallidus, red nucleus,
    substantia nigra, putamen, thalamus), the reporting template (R / L values, asymmetry index
    "favouring R/L", pattern, confidence) and the patterns: CBS has asymmetric cortical
    (motor/premotor) iron, higher contralateral to the clinically more affected side, with
    moderate GPi, STN and red nucleus; PSP has symmetric, very high GPi, STN, red nucleus and
    midbrain iron; PD has a nigral pattern with low cortex and pallidum; MSA has putaminal and
    cerebellar iron.
[murakami]
    Murakami Y, Kakeda S, Watanabe K, et al. Usefulness of quantitative susceptibility mapping
    for the diagnosis of Parkinson disease. AJNR Am J Neuroradiol. 2015;36:1102-1108.
    doi:10.3174/ajnr.A4260. Substantia nigra > 210 ppb separated PD from controls (sensitivity
    90 %, specificity 86 %).
[azuma]
    Azuma M, Hirai T, Yamada K, et al. Lateral asymmetry and spatial difference of iron
    deposition in the substantia nigra of patients with Parkinson disease measured with
    quantitative susceptibility mapping. AJNR Am J Neuroradiol. 2016;37:782-788.
    doi:10.3174/ajnr.A4645. Nigral susceptibility is higher in the more affected hemibrain.
[rc2]
    Marques JP, et al. QSM reconstruction challenge 2.0. Magn Reson Med. 2021;86:526-542
    (healthy values of its head phantom, relative to CSF: globus pallidus 124, substantia nigra
    102, red nucleus 97, caudate 39, putamen 36, thalamus 16, cortical grey matter 15 ppb).
[lancione]
    Lancione M, Cencini M, Costagli M, et al. Diagnostic accuracy of quantitative
    susceptibility mapping in multiple system atrophy: the impact of echo time and the
    potential of histogram analysis. NeuroImage Clin. 2022;34:102989.
    doi:10.1016/j.nicl.2022.102989. Susceptibility altered in putamen, substantia nigra,
    globus pallidus and caudate in MSA-P, substantia nigra and dentate in MSA-C.
[msa-c]
    QSM of 28 patients with the cerebellar subtype of MSA, 9 with spinocerebellar ataxia type 6
    and 23 controls. J Neurol Sci. 2019, article 116525. doi:10.1016/j.jns.2019.116525.
    Higher susceptibility of the substantia nigra and the dentate nucleus in MSA-C.
[ayton]
    Ayton S, Fazlollahi A, Bourgeat P, et al. Cerebral quantitative susceptibility mapping
    predicts amyloid-beta-related cognitive decline. Brain. 2017;140:2112-2119.
    doi:10.1093/brain/awx137 (hippocampal and cortical susceptibility in Alzheimer disease).
[studholme]
    Studholme C, Hill DLG, Hawkes DJ. An overlap invariant entropy measure of 3D medical image
    alignment. Pattern Recognit. 1999;32:71-86 (normalised mutual information).

Reference region
----------------
The ranges of [cbs-review] are taken as relative to CSF (the default table says ``csf`` in its
``reference`` column): they put every iron-rich nucleus well above zero and healthy-looking
cortex at 10-40 ppb, as values relative to CSF are ([rc2]: white matter -30, cortex 15 ppb),
while relative to the whole-brain mean - which depends on the mask's extent, on atrophy and on
the white-matter fraction - every value moves by a subject-dependent offset. :func:`findings`
therefore reads the ``csf`` rows of the regional table by default. A user table may declare
``whole-brain`` instead; when the regional table lacks the ranges' reference, the report falls
back to the other one and a quality flag lowers the confidence (see :func:`assess_quality`).

Values
------
Each region's value is the **core mean** (``core_mean_ppb``: the mean over the label eroded by
one voxel, :func:`qsmprep.regions.label_core`) of each hemisphere and of both, or the plain
mean (``mean_ppb``) where a table has no core mean. [cbs-review]'s ranges are regional means of
regions of interest drawn inside each structure, which the core matches better than the whole
label: the edge voxels of a small nucleus mix it with the white matter around it, and a label
off by a voxel takes in more. On the independent digital patients of
``bench/bench_independent.py`` (1 mm) the core means of 97 % of the region-sides were within
max(15 ppb, 15 %) of the truth against 58 % for the plain means. Each value is placed among
each pattern's range as ``below`` / ``within`` / ``above`` (bounds inclusive).

Asymmetry
---------
The asymmetry index is the absolute-value-safe ``AI = 200 (R - L) / (|R| + |L|)`` (column
``ai_abs_pct``; positive: right > left), which keeps the sign of R - L even for values near
zero. A side is *favoured* when ``|AI| >= ASYMMETRY_THRESHOLD_PCT`` (10 %) **and**
``|R - L| >= ASYMMETRY_MIN_DIFFERENCE_PPB`` (5 ppb); otherwise the region is *symmetric*.
[cbs-review] reports the index without a cut-off: 10 % is our choice (a tenth of the mean), and
the 5 ppb guard keeps a few ppb of noise in low-iron regions (cortex, thalamus, about 15 ppb)
from being called asymmetric. The report *states* an asymmetry (``asymmetry`` of a region and
of the interpretation) only where the favoured side is measurably above the healthy value of
the region: higher than ``HEALTHY_PPB`` (the healthy adult values of [rc2]: cortex 15, globus
pallidus 124, substantia nigra 102, red nucleus 97, putamen 36, caudate 39, thalamus 16,
dentate 142 ppb) plus ``ASYMMETRY_MIN_DIFFERENCE_PPB``; elsewhere it says "near healthy
values" (a control's motor cortex at 11 and 16 ppb is not "favouring R"). The other side may
be healthy: CBS's cortical iron is often one-sided (63 against 18 ppb in the demo's CBS
patient), and that is the asymmetry to report. The features below use the favoured side as
defined above, unguarded.

Features and pattern scores
---------------------------
Each feature *agrees* or *disagrees* with each pattern it speaks to, or is not applicable
(``n/a``: the pattern's rule does not use it, or a region or range it needs is missing).
Thresholds named ``<PATTERN> <region> low/high`` are the bounds of that pattern's range in the
reference-range table in use (defaults from [cbs-review] in brackets), so a user table changes
them.
``MCmax`` is the motor-cortex mean of the higher hemisphere (the affected side in CBS).

===========================  =====================================================================
feature                      rule
===========================  =====================================================================
motor_cortex_elevation       CBS agrees if MCmax >= CBS motor cortex low [45]. PSP agrees if
                             MCmax <= PSP motor cortex high [40]; PD agrees if MCmax <= PD motor
                             cortex high [30].
motor_cortex_asymmetry       asymmetric = a favoured side (see Asymmetry) while MCmax >= CBS
  (hallmark of CBS)          motor cortex low [45] and the sides differ by at least
                             CBS_ASYMMETRY_MIN_PPB (15 ppb, the regional accuracy: a bilateral
                             rise read 59 and 51 ppb on the 1 mm ALS digital patient whose
                             truth is 85 and 83). CBS agrees if asymmetric, PSP if not
                             ([cbs-review]: CBS asymmetric cortex, higher in the clinically
                             affected hemisphere; PSP symmetric). Elevated cortex on both sides
                             alike is not the CBS hallmark: it is also the motor-neuron (ALS)
                             pattern (:mod:`qsmprep.reports.motor`).
cortical_subcortical_ratio   r = MCmax / mean(GPi, red nucleus). CBS agrees if r >=
                             RATIO_CBS_MIN (0.40); PSP agrees if r <= RATIO_PSP_MAX (0.25).
                             [cbs-review] quotes the ratio as its best discriminator (85 %
                             accuracy) without a cut-off; the midpoints of its ranges give r
                             about 0.85 for CBS, 0.15 for PSP and 0.3 for PD, and the cut-offs
                             sit between.
gpi_stn_rn_elevation         high = at least two of GPi, red nucleus and (when the table has a
  (hallmark of PSP)          range for it; the default has none) STN at or above their PSP low
                             [150, 120]. low = GPi <= PD GPi high [80]. moderate = neither.
                             PSP agrees if high, CBS if moderate, PD if low.
gpi_stn_rn_symmetry          symmetric = no favoured side in any of GPi, STN, red nucleus
                             measured. PSP agrees if symmetric ([cbs-review]: symmetric in PSP).
nigral_pattern               present = SNmax (the substantia nigra of the higher hemisphere:
  (hallmark of PD)           nigral degeneration is asymmetric, most marked contralateral to
                             the more affected side) > NIGRAL_SN_MIN_PPB (210, [murakami]) with
                             MCmax < CBS motor cortex low [45] and GPi < PSP GPi low [150]
                             (SN high with low cortex and pallidum, [cbs-review]). PD agrees if
                             present.
regional_ranges              fraction of the ranged regions whose both-hemisphere mean lies
                             within the pattern's range; agrees if >= RANGE_FIT_MIN_FRACTION
                             (0.5), with at least 2 ranged regions measured.
putamen_elevation            MSA agrees if the putamen of the higher hemisphere >=
  (hallmark of MSA)          MSA_PUTAMEN_MIN_PPB (100; the MSA putamen low of the range table
                             when it has one) **and** >= the GPi mean: putaminal iron at or
                             above the pallidum's, the reverse of the healthy order ([rc2]:
                             putamen 36, pallidum 124 ppb). [cbs-review]: MSA has more putaminal
                             (and cerebellar) iron than CBS; [lancione], [msa-c].
cerebellar_elevation         MSA agrees if the cerebellar cortex of the higher hemisphere >=
                             its healthy value + ELEVATION_MARGIN_PPB (15 + 15 ppb).
hippocampal_elevation        AD agrees if the hippocampus of the higher hemisphere >= its
  (hallmark of AD)           healthy value + ELEVATION_MARGIN_PPB (15 + 15 ppb).
                             [cbs-review]: AD shows hippocampal and cortical iron, less basal
                             ganglia involvement; [ayton].
temporoparietal_elevation    AD agrees if at least 2 of the superior temporal, posterior
                             cingulate and superior parietal cortex (higher hemisphere) are at
                             or above their healthy value + 15 ppb.
basal_ganglia_sparing        AD agrees if putamen <= 36 + 15 and GPi <= 124 + 15 ppb (both
                             hemispheres).
===========================  =====================================================================

A pattern's score is the fraction of its applicable features that agree. MSA is assessed when
the putamen and GPi are measured, AD when the hippocampus is (the qsmprep atlas has them; a
user's atlas may not, and the report says so). Published QSM studies of MSA and AD give group
differences, not ranges per region, so their thresholds are ours: a healthy value ([rc2]; grey
matter 15 ppb for the cerebellar cortex, the hippocampus and the association cortex, which RC2
does not list separately) plus ``ELEVATION_MARGIN_PPB`` (15 ppb, the regional accuracy qsmprep
holds on independent digital patients), so that no measurement error of that size alone makes
a hallmark. Without the cerebellar cortex, MSA rests on the putamen alone and its confidence
never exceeds *low*.

Interpretation
--------------
- A pattern is a *candidate* when its hallmark feature agrees and its score is at least
  ``CANDIDATE_MIN_SCORE`` (0.5).
- No candidate: ``none`` ("no disease pattern") when every assessed pattern's hallmark
  feature was measured and is absent and the motor cortex of the higher hemisphere is below
  its healthy value + ``ELEVATION_MARGIN_PPB`` (30 ppb); ``indeterminate`` when a hallmark
  could not be assessed (a region or range it needs is missing), is present without enough
  supporting features, or when the motor cortex is above that value without any hallmark,
  e.g. raised on both sides alike (the statement then points to the motor-neuron profile).
  One candidate: that pattern. Several: the best-scoring one, unless the next is within
  ``MIXED_MARGIN`` (0.25) of it: ``mixed`` (naming those within the margin).
- Confidence of a single pattern from its score ``s`` and its margin ``m`` over the best other
  assessed pattern: *high* if ``s >= 0.8`` and ``m >= 0.4``; *moderate* if ``s >= 0.6`` and
  ``m >= 0.2``; *low* otherwise. ``mixed`` and ``indeterminate`` are *low*. ``none`` is *high*
  when no pattern scores ``CANDIDATE_MIN_SCORE`` or more, *moderate* otherwise (the regional
  values fit some pattern's ranges without its hallmark).
- Each flagged quality category (:func:`assess_quality`) lowers the confidence by one level.
- The asymmetry statement ("favouring L" / "favouring R" / "symmetric" / "near healthy
  values") is that of the pattern's key region: motor cortex for CBS (and for mixed,
  indeterminate or no-pattern results), GPi for PSP, substantia nigra for PD ([azuma]),
  putamen for MSA, hippocampus for AD.

Quality checks (:func:`assess_quality`)
--------------------------------------
=================================  ==========================================================
check (category)                   flagged when
=================================  ==========================================================
registration Dice (registration)   brain Dice < 0.85 (template mask vs the warped brain)
registration NMI (registration)    NMI < 1.10 ([studholme]; aligned images of two contrasts
                                   of the MNI template score about 1.2, a 4 mm shift drops
                                   them below 1.05)
nuclei refinement (registration)   the susceptibility-driven refinement of the deep grey
                                   matter was rejected (diverged, or lowered the match)
mask volume (mask)                 outside 800-2500 mL (adult brain, with some CSF)
echo-fit residual (phase)          median residual in the mask > 0.3 rad (a phase noise that
                                   high means a magnitude SNR of about 3)
poor phase fraction (phase)        > 10 % of the brain mask dropped for poor phase quality
region voxel counts (regions)      any side of a reported region with < 5 voxels
reference (reference)              the values are not relative to the ranges' reference
TV weight (inversion)              never: the automatic weight is stated with its L-curve
                                   corner
=================================  ==========================================================

These limits are ours, chosen to catch gross failures; calibrate them locally as well.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..regions import HEALTHY_ADULT_PPB, REFERENCES, asymmetry_index, read_regional_table

#: Patterns scored by :func:`score_patterns` (MSA and AD when their hallmark regions are in the
#: regional table).
PATTERNS = ("CBS", "PSP", "PD", "MSA", "AD")
#: Pattern names allowed in a reference-range table (``control`` ranges are shown, not scored).
RANGE_PATTERNS = (*PATTERNS, "control")

#: Regions of the reporting template [cbs-review], in its order: always listed.
CORE_REGIONS = ("motor_cortex", "globus_pallidus_interna", "red_nucleus", "substantia_nigra",
                "putamen", "thalamus")
#: Further regions listed when the regional table has them.
EXTRA_REGIONS = ("subthalamic_nucleus", "globus_pallidus_externa", "caudate", "dentate_nucleus",
                 "primary_motor_cortex", "premotor_cortex", "midbrain", "pons",
                 "cerebellar_cortex", "hippocampus", "posterior_cingulate",
                 "superior_temporal_gyrus", "superior_parietal_lobule", "frontoparietal_cortex",
                 "corticospinal_tract", "corpus_callosum")

REGION_LABELS = {
    "motor_cortex": "Motor cortex (precentral grey matter)",
    "primary_motor_cortex": "Primary motor cortex (BA4 grey matter)",
    "premotor_cortex": "Premotor cortex (BA6 grey matter)",
    "globus_pallidus_interna": "Posterior globus pallidus (GPi)",
    "globus_pallidus_externa": "Globus pallidus externa (GPe)",
    "globus_pallidus": "Globus pallidus",
    "subthalamic_nucleus": "Subthalamic nucleus (STN)",
    "red_nucleus": "Red nucleus",
    "substantia_nigra": "Substantia nigra",
    "substantia_nigra_compacta": "Substantia nigra pars compacta",
    "substantia_nigra_reticulata": "Substantia nigra pars reticulata",
    "putamen": "Putamen",
    "caudate": "Caudate nucleus",
    "thalamus": "Thalamus",
    "dentate_nucleus": "Dentate nucleus",
    "lateral_ventricle": "Lateral ventricle",
    "precentral_ba4": "Precentral gyrus, BA4",
    "precentral_ba6": "Precentral gyrus, BA6",
    "precentral_other": "Precentral gyrus, rest",
    "ba4_outside_precentral": "BA4 outside the precentral gyrus",
    "ba6_outside_precentral": "BA6 outside the precentral gyrus",
    "motor_cortex_superficial": "Motor cortex, superficial half",
    "motor_cortex_deep": "Motor cortex, deep half",
    "midbrain": "Midbrain (without SN, RN, STN)",
    "pons": "Pons",
    "cerebellar_cortex": "Cerebellar cortex",
    "hippocampus": "Hippocampus",
    "posterior_cingulate": "Posterior cingulate cortex",
    "superior_temporal_gyrus": "Superior temporal cortex",
    "superior_parietal_lobule": "Superior parietal cortex",
    "superior_frontal_gyrus": "Superior frontal cortex",
    "frontoparietal_cortex": "Frontoparietal cortex (superior frontal + parietal)",
    "corticospinal_tract": "Corticospinal tract",
    "corpus_callosum": "Corpus callosum",
}

ASYMMETRY_THRESHOLD_PCT = 10.0
ASYMMETRY_MIN_DIFFERENCE_PPB = 5.0
#: Healthy adult susceptibility (ppb, relative to CSF) of the RC2 head phantom [rc2], per
#: region: an asymmetry is stated only where the higher side exceeds it by
#: ASYMMETRY_MIN_DIFFERENCE_PPB (see "Asymmetry").
HEALTHY_PPB = {
    **{name: HEALTHY_ADULT_PPB["grey_matter"]
       for name in ("motor_cortex", "primary_motor_cortex", "premotor_cortex",
                    "motor_cortex_superficial", "motor_cortex_deep", "cerebellar_cortex",
                    "hippocampus", "posterior_cingulate", "superior_temporal_gyrus",
                    "superior_parietal_lobule", "superior_frontal_gyrus",
                    "frontoparietal_cortex")},
    **{name: HEALTHY_ADULT_PPB["white_matter"]
       for name in ("corticospinal_tract", "corpus_callosum")},
    **{name: value for name, value in HEALTHY_ADULT_PPB.items()
       if name not in ("grey_matter", "white_matter", "lateral_ventricle")},
}
#: An iron rise is "elevated" above the healthy value of a region lacking a published range
#: only when it exceeds that value by this much: the regional accuracy qsmprep holds on
#: independent digital patients (max(15 ppb, 15 %), bench/bench_independent.py).
ELEVATION_MARGIN_PPB = 15.0
#: MSA: putaminal iron at least this high (about three times the healthy 36 ppb of [rc2],
#: above the CBS and PD ranges' upper ends of [cbs-review]) and at least the pallidum's.
MSA_PUTAMEN_MIN_PPB = 100.0
#: CBS's cortical asymmetry: the hemispheres' motor cortices must differ by at least the
#: regional accuracy, so that a bilateral rise measured a few ppb apart is not called
#: asymmetric (the 1 mm ALS digital patient: true 85 and 83 ppb, measured 59 and 51).
CBS_ASYMMETRY_MIN_PPB = ELEVATION_MARGIN_PPB
RATIO_CBS_MIN = 0.40
RATIO_PSP_MAX = 0.25
NIGRAL_SN_MIN_PPB = 210.0
RANGE_FIT_MIN_FRACTION = 0.5
RANGE_FIT_MIN_REGIONS = 2
CANDIDATE_MIN_SCORE = 0.5
MIXED_MARGIN = 0.25
HIGH_MIN_SCORE, HIGH_MIN_MARGIN = 0.8, 0.4
MODERATE_MIN_SCORE, MODERATE_MIN_MARGIN = 0.6, 0.2

REGISTRATION_MIN_DICE = 0.85
REGISTRATION_MIN_NMI = 1.10
MASK_VOLUME_RANGE_ML = (800.0, 2500.0)
ECHO_FIT_MAX_RESIDUAL = 0.3
POOR_PHASE_MAX_FRACTION = 0.10
REGION_MIN_VOXELS = 5

CONFIDENCE_LEVELS = ("low", "moderate", "high")

#: The region whose asymmetry each result states.
KEY_REGIONS = {"CBS": "motor_cortex", "PSP": "globus_pallidus_interna",
               "PD": "substantia_nigra", "MSA": "putamen", "AD": "hippocampus",
               "mixed": "motor_cortex",
               "indeterminate": "motor_cortex", "none": "motor_cortex"}
HALLMARKS = {"CBS": "motor_cortex_asymmetry", "PSP": "gpi_stn_rn_elevation",
             "PD": "nigral_pattern", "MSA": "putamen_elevation", "AD": "hippocampal_elevation"}

DISCLAIMER = (
    "Research aid, not a diagnosis. The pattern scores compare regional susceptibility with "
    "approximate published ranges; the thresholds need local calibration (scanner, protocol, "
    "reconstruction, reference region) and a clinician's judgement of the whole picture.")

_PACKAGE_RANGES = Path(__file__).parent / "data" / "reference_ranges.tsv"
_REQUIRED_RANGE_COLUMNS = ("region", "pattern", "low_ppb", "high_ppb")
_REGION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# ----------------------------------------------------------------------------- reference ranges
def _number(text, *, where):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{where}: {text!r} is not a finite number")
    return value


def read_reference_ranges(path=None) -> dict:
    """Read a reference-range table: the package default, or a user's TSV.

    The TSV has a header and one row per region and pattern. Columns: ``region`` (a region
    name of the regional tables, e.g. ``motor_cortex``), ``pattern`` (``CBS``, ``PSP``, ``PD``,
    ``MSA`` or ``control``, any case), ``low_ppb`` and ``high_ppb`` (numbers, low <= high);
    optional ``reference`` (``csf`` or ``whole-brain``, the same on every row; default ``csf``)
    and ``source`` (free text). Other columns are ignored.

    Returns
    -------
    dict
        ``{"path": str, "default": bool, "reference": str, "rows": [{"region", "pattern",
        "low_ppb", "high_ppb", "source"}, ...]}`` in file order.

    Raises
    ------
    UsageError
        Naming the file, and the line and column at fault, when the table cannot be used.
    """
    is_default = path is None
    path = Path(_PACKAGE_RANGES if is_default else path)
    if not path.is_file():
        raise UsageError(f"reference-range table {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"reference-range table {path}: cannot be read ({error})") from None
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    columns = reader.fieldnames or []
    missing = [column for column in _REQUIRED_RANGE_COLUMNS if column not in columns]
    if missing:
        raise UsageError(f"reference-range table {path}: missing column(s) "
                         f"{', '.join(missing)} (tab-separated header needs "
                         f"{', '.join(_REQUIRED_RANGE_COLUMNS)}; found "
                         f"{', '.join(columns) or 'nothing'})")
    rows, seen, references = [], {}, set()
    patterns = {name.lower(): name for name in RANGE_PATTERNS}
    for line, record in enumerate(reader, start=2):
        if not any((value or "").strip() for value in record.values() if isinstance(value, str)):
            continue
        where = f"reference-range table {path}, line {line}"
        if None in record:
            raise UsageError(f"{where}: more fields than columns in the header")
        region = (record["region"] or "").strip()
        if not _REGION_NAME.match(region):
            raise UsageError(f"{where}, column region: {region!r} is not a region name "
                             "(lower-case snake_case, e.g. motor_cortex)")
        pattern_text = (record["pattern"] or "").strip()
        pattern = patterns.get(pattern_text.lower())
        if pattern is None:
            raise UsageError(f"{where}, column pattern: {pattern_text!r} is not one of "
                             f"{', '.join(RANGE_PATTERNS)}")
        low = _number(record["low_ppb"], where=f"{where}, column low_ppb")
        high = _number(record["high_ppb"], where=f"{where}, column high_ppb")
        if low > high:
            raise UsageError(f"{where}: low_ppb {low:g} is above high_ppb {high:g}")
        reference = (record.get("reference") or "csf").strip() or "csf"
        if reference not in REFERENCES:
            raise UsageError(f"{where}, column reference: {reference!r} is not one of "
                             f"{', '.join(sorted(REFERENCES))}")
        references.add(reference)
        if (region, pattern) in seen:
            raise UsageError(f"{where}: a second {pattern} range for {region} (the first is on "
                             f"line {seen[region, pattern]})")
        seen[region, pattern] = line
        rows.append({"region": region, "pattern": pattern, "low_ppb": low, "high_ppb": high,
                     "source": (record.get("source") or "").strip()})
    if not rows:
        raise UsageError(f"reference-range table {path}: no ranges (only a header)")
    if len(references) > 1:
        raise UsageError(f"reference-range table {path}, column reference: mixes "
                         f"{' and '.join(sorted(references))}; one table holds one reference")
    return {"path": str(path), "default": is_default, "reference": references.pop(),
            "rows": rows}


# ----------------------------------------------------------------------------------- findings
def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def rounded(value, digits=2):
    """``value`` rounded to ``digits`` decimals, None kept (the JSON report's numbers)."""
    return None if value is None else round(value, digits)


def cortical_subcortical_ratio(motor_left, motor_right, gpi, red_nucleus, *,
                               motor_bilateral=math.nan):
    """The cortical-to-subcortical iron ratio ``r = MCmax / mean(GPi, red nucleus)``.

    ``MCmax`` is the motor-cortex mean of the higher hemisphere (the bilateral mean when
    neither side is known); GPi and red nucleus are bilateral means, all in ppb relative to the
    same reference. [cbs-review] quotes the ratio as its best single discriminator of CBS
    from PSP (85 % accuracy). Scalars or arrays (element by element); NaN where a value is
    missing or ``mean(GPi, red nucleus) <= 0``.

    >>> float(cortical_subcortical_ratio(60.0, 20.0, 140.0, 100.0))
    0.5
    """
    left, right, both, gpi, red_nucleus = (
        np.asarray(value, dtype=np.float64) for value in
        (motor_left, motor_right, motor_bilateral, gpi, red_nucleus))
    higher = np.fmax(left, right)  # one side known: that side
    higher = np.where(np.isnan(higher), both, higher)
    subcortical = (gpi + red_nucleus) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(subcortical > 0, higher / subcortical, np.nan)
    return ratio[()] if ratio.ndim == 0 else ratio


def favoured_side(left_ppb, right_ppb, ai_pct):
    """``"L"``, ``"R"`` or ``None`` (symmetric or unmeasured): the side whose value is higher,
    when ``|ai_pct| >= ASYMMETRY_THRESHOLD_PCT`` and ``|R - L| >= ASYMMETRY_MIN_DIFFERENCE_PPB``.

    Examples
    --------
    >>> favoured_side(100.0, 50.0, -66.7)
    'L'
    >>> favoured_side(16.0, 12.0, -28.6) is None   # 4 ppb apart: below the 5 ppb guard
    True
    """
    if left_ppb is None or right_ppb is None or ai_pct is None:
        return None
    if abs(ai_pct) < ASYMMETRY_THRESHOLD_PCT:
        return None
    if abs(right_ppb - left_ppb) < ASYMMETRY_MIN_DIFFERENCE_PPB:
        return None
    return "R" if right_ppb > left_ppb else "L"


def asymmetry_statement(side) -> str:
    """``"favouring L"``, ``"favouring R"`` or ``"symmetric"``."""
    return f"favouring {side}" if side else "symmetric"


#: The statement of a region whose higher side is not above its healthy value.
NEAR_HEALTHY = "near healthy values"


def stated_asymmetry(region, left_ppb, right_ppb, side) -> tuple[str, str | None]:
    """The asymmetry the report states for ``region`` and its side: that of
    :func:`favoured_side` (``side``) where the higher side exceeds ``HEALTHY_PPB[region]`` by
    ``ASYMMETRY_MIN_DIFFERENCE_PPB`` (or the region has no healthy value), else
    :data:`NEAR_HEALTHY` and no side.

    Examples
    --------
    >>> stated_asymmetry("motor_cortex", 11.0, 16.0, "R")
    ('near healthy values', None)
    >>> stated_asymmetry("motor_cortex", 63.0, 18.0, "L")
    ('favouring L', 'L')
    """
    healthy = HEALTHY_PPB.get(region)
    if healthy is not None and max(left_ppb, right_ppb) <= healthy + ASYMMETRY_MIN_DIFFERENCE_PPB:
        return NEAR_HEALTHY, None
    return asymmetry_statement(side), side


def _placement(value, low, high):
    if value is None:
        return None
    if value < low:
        return "below"
    if value > high:
        return "above"
    return "within"


def regional_rows_of(regional_rows):
    """The rows of a regional table given as rows or as the path of its TSV file."""
    if isinstance(regional_rows, (str, Path)):
        return read_regional_table(regional_rows)
    return list(regional_rows)


def available_references(regional_rows) -> list[str]:
    """The references present in a regional table, in the table's order."""
    return list(dict.fromkeys(row["reference"] for row in regional_rows_of(regional_rows)))


#: The column of the regional table the report reads (see "Values" above).
REPORT_STATISTIC = "core_mean_ppb"


def region_value(row, statistic):
    """``row[statistic]``, or the plain mean when that is missing or not finite."""
    value = _finite(row.get(statistic))
    return value if value is not None else _finite(row["mean_ppb"])


def findings(regional_rows, *, reference="csf", reference_ranges=None,
             statistic=REPORT_STATISTIC) -> dict:
    """Per-region values, asymmetry and placement among the reference ranges.

    Parameters
    ----------
    regional_rows : list of dict or path
        Rows of a regional statistics table (:func:`qsmprep.regions.read_regional_table`), or
        the path of one.
    reference : {"csf", "whole-brain"}
        Which reference's rows to use. ``csf`` by default: the default ranges are relative to
        CSF (see the module docstring). Pass the ``reference`` of the range table in use.
    reference_ranges : dict, optional
        From :func:`read_reference_ranges`; the package table when omitted.
    statistic : str
        The table's column read as each region's value: :data:`REPORT_STATISTIC` (the core
        mean) by default, falling back to ``mean_ppb`` where it is missing; ``"mean_ppb"``
        for the plain means.

    Returns
    -------
    dict
        ``{"reference", "ranges_reference", "regions": [...]}``; each region: ``region``,
        ``label``, ``core`` (a row of the reporting template), ``left_ppb``, ``right_ppb``,
        ``bilateral_ppb`` (means; None when not measured), ``n_voxels`` (per side),
        ``ai_pct`` (absolute-value-safe index, positive: R > L), ``favoured_side`` (for the
        features), ``stated_side`` and ``asymmetry`` (the statement, guarded by the healthy
        value: :func:`stated_asymmetry`), ``ranges`` (this region's rows of the range table),
        ``placement`` ({side: {pattern: "below"/"within"/"above"}}) and ``within`` (patterns
        whose range holds the both-hemisphere mean). Core regions are always listed (as not
        measured when absent); other regions when measured.

    Raises
    ------
    ValueError
        When the table has no row for ``reference``.
    """
    rows = regional_rows_of(regional_rows)
    ranges = reference_ranges if reference_ranges is not None else read_reference_ranges()
    selected = [row for row in rows if row["reference"] == reference]
    if not selected:
        raise ValueError(f"the regional table has no rows relative to {reference!r} (it has "
                         f"{', '.join(available_references(rows)) or 'none'})")
    by_region: dict[str, dict[str, dict]] = {}
    for row in selected:
        by_region.setdefault(row["region"], {})[row["hemisphere"]] = row
    ranged = list(dict.fromkeys(row["region"] for row in ranges["rows"]))
    order = [*CORE_REGIONS,
             *[name for name in (*EXTRA_REGIONS, *ranged)
               if name in by_region and name not in CORE_REGIONS]]
    regions = []
    for name in dict.fromkeys(order):
        sides = by_region.get(name, {})
        means = {side: region_value(sides[side], statistic) if side in sides else None
                 for side in ("L", "R", "bilateral")}
        counts = {side: int(sides[side]["n_voxels"]) if side in sides else None
                  for side in ("L", "R", "bilateral")}
        ai = (_finite(sides["bilateral"].get("ai_abs_pct"))
              if "bilateral" in sides and statistic == "mean_ppb" else None)
        if ai is None and means["L"] is not None and means["R"] is not None:
            ai = _finite(asymmetry_index(means["R"], means["L"])[1])
        side = favoured_side(means["L"], means["R"], ai)
        statement, stated_side = (stated_asymmetry(name, means["L"], means["R"], side)
                                  if ai is not None else ("not measured", None))
        region_ranges = [{key: row[key] for key in ("pattern", "low_ppb", "high_ppb", "source")}
                         for row in ranges["rows"] if row["region"] == name]
        placement = {
            hemisphere: {item["pattern"]: _placement(means[hemisphere], item["low_ppb"],
                                                     item["high_ppb"]) for item in region_ranges}
            for hemisphere in ("L", "R", "bilateral") if means[hemisphere] is not None}
        regions.append({
            "region": name,
            "label": REGION_LABELS.get(name, name.replace("_", " ").capitalize()),
            "core": name in CORE_REGIONS,
            "left_ppb": rounded(means["L"]),
            "right_ppb": rounded(means["R"]),
            "bilateral_ppb": rounded(means["bilateral"]),
            "n_voxels": counts,
            "ai_pct": rounded(ai, 1),
            "favoured_side": side,
            "stated_side": stated_side,
            "asymmetry": statement,
            "ranges": region_ranges,
            "placement": placement,
            "within": [pattern for pattern, where in placement.get("bilateral", {}).items()
                       if where == "within"],
        })
    return {"reference": reference, "ranges_reference": ranges["reference"], "regions": regions}


# ------------------------------------------------------------------------------------ quality
def _check(name, label, category, value, *, unit, rule, flagged):
    return {"name": name, "label": label, "category": category, "value": value, "unit": unit,
            "rule": rule, "flagged": bool(flagged) if value is not None else False,
            "measured": value is not None}


def _input_checks(input_checks) -> list[dict]:
    """How the input was interpreted (masked export, wrapped radian phase, inferred units,
    ...), shown beside the checks; never flagged, since the data were usable as taken."""
    if not isinstance(input_checks, dict) or not input_checks:
        return []
    text = "; ".join(f"{name} {value}" for name, value in input_checks.items())
    return [_check("input", "Input as interpreted", "input", text, unit="",
                   rule="stated, not flagged (see the log)", flagged=False)]


def _regularization_checks(regularization) -> list[dict]:
    """The automatic TV weight, stated with its L-curve corner and never flagged (a curve
    with no corner falls back to the reference weight of earlier versions); absent when the
    weight was given."""
    if not isinstance(regularization, dict):
        return []
    weight, corner = regularization.get("weight"), regularization.get("corner")
    value = (f"{weight:.3g}" if isinstance(weight, (int, float)) else None)
    if value is not None and corner is not None:
        value += f" (L-curve corner {corner:.3g} mm\u00b2)"
    return [_check("regularization", "Dipole inversion: automatic TV weight", "inversion",
                   value, unit="", rule="stated, not flagged (L-curve figure; without a "
                   "corner the reference weight is used)", flagged=False)]


def _refinement_checks(refinement) -> list[dict]:
    """The deep grey-matter refinement's check: flagged when it was rejected (the nuclei then
    keep the placement of the magnitude-driven registration); absent when it was not run."""
    if not isinstance(refinement, dict):
        return []
    accepted = bool(refinement.get("Accepted"))
    reason = str(refinement.get("Reason") or "")
    if not refinement.get("Ran", True):  # e.g. an atlas without deep grey-matter regions
        return [_check("registration_refinement", "Registration: deep grey-matter refinement",
                       "registration", None, unit="", rule=f"not run ({reason})",
                       flagged=False)]
    value = "refined" if accepted else "first registration kept"
    return [_check("registration_refinement", "Registration: deep grey-matter refinement",
                   "registration", value, unit="",
                   rule="flag if the susceptibility-driven refinement of the nuclei was "
                        "rejected" + (f" ({reason})" if reason else ""),
                   flagged=not accepted)]


def assess_quality(qc: dict | None, findings_: dict | None = None) -> dict:
    """Quality checks with documented limits (module docstring, "Quality checks").

    Parameters
    ----------
    qc : dict
        Any of ``registration`` (``{"dice_brain": float, "nmi": float}``, as in the
        regional table's sidecar), ``deep_grey_refinement`` (the refinement's record:
        ``Accepted``, ``Reason``, ...), ``mask_volume_ml``, ``echo_fit_residual`` (median in the
        mask, rad), ``poor_phase_fraction`` (0-1: brain-mask voxels dropped for poor phase
        quality). Missing values are reported as not measured, never flagged.
    findings_ : dict, optional
        From :func:`findings`: adds the region voxel counts and the reference check.

    Returns
    -------
    dict
        ``{"checks": [...], "flagged_categories": [...], "region_voxel_counts": [...]}``;
        each check: ``name``, ``label``, ``category``, ``value``, ``unit``, ``rule``,
        ``flagged``, ``measured``.
    """
    qc = qc or {}
    registration = qc.get("registration") or {}
    dice = _finite(registration.get("dice_brain"))
    nmi = _finite(registration.get("nmi"))
    volume = _finite(qc.get("mask_volume_ml"))
    residual = _finite(qc.get("echo_fit_residual"))
    poor = _finite(qc.get("poor_phase_fraction"))
    low_ml, high_ml = MASK_VOLUME_RANGE_ML
    checks = [
        _check("registration_dice", "Registration: brain Dice", "registration",
               rounded(dice, 3), unit="", rule=f"flag if < {REGISTRATION_MIN_DICE:g}",
               flagged=dice is not None and dice < REGISTRATION_MIN_DICE),
        _check("registration_nmi", "Registration: normalised mutual information",
               "registration", rounded(nmi, 3), unit="",
               rule=f"flag if < {REGISTRATION_MIN_NMI:g}",
               flagged=nmi is not None and nmi < REGISTRATION_MIN_NMI),
        *_refinement_checks(qc.get("deep_grey_refinement")),
        _check("mask_volume", "Brain mask volume", "mask", rounded(volume, 1), unit="mL",
               rule=f"flag outside {low_ml:g}-{high_ml:g} mL",
               flagged=volume is not None and not low_ml <= volume <= high_ml),
        _check("echo_fit_residual", "Echo-fit residual (median in mask)", "phase",
               rounded(residual, 3), unit="rad", rule=f"flag if > {ECHO_FIT_MAX_RESIDUAL:g} rad",
               flagged=residual is not None and residual > ECHO_FIT_MAX_RESIDUAL),
        _check("poor_phase_fraction", "Voxels of poor phase quality", "phase",
               rounded(None if poor is None else 100 * poor, 2), unit="%",
               rule=f"flag if > {100 * POOR_PHASE_MAX_FRACTION:g} % of the brain mask",
               flagged=poor is not None and poor > POOR_PHASE_MAX_FRACTION),
        *_regularization_checks(qc.get("regularization")),
        *_input_checks(qc.get("input_checks")),
    ]
    counts = []
    if findings_ is not None:
        small = []
        for region in findings_["regions"]:
            for side in ("L", "R", "bilateral"):
                count = region["n_voxels"][side]
                if count is None:
                    continue
                flagged = count < REGION_MIN_VOXELS
                counts.append({"region": region["region"], "hemisphere": side,
                               "n_voxels": count, "flagged": flagged})
                if flagged:
                    small.append(f"{region['region']} {side}")
        checks.append(_check(
            "region_voxels", "Smallest region voxel count", "regions",
            min((item["n_voxels"] for item in counts), default=None), unit="voxels",
            rule=f"flag if any side of a region has < {REGION_MIN_VOXELS} voxels"
                 + (f" ({', '.join(small)})" if small else ""),
            flagged=bool(small)))
        same = findings_["reference"] == findings_["ranges_reference"]
        checks.append({"name": "reference", "label": "Reference region of the values",
                       "category": "reference", "value": findings_["reference"], "unit": "",
                       "rule": f"flag if not the ranges' reference "
                               f"({findings_['ranges_reference']})",
                       "flagged": not same, "measured": True})
    flagged = list(dict.fromkeys(check["category"] for check in checks if check["flagged"]))
    return {"checks": checks, "flagged_categories": flagged, "region_voxel_counts": counts}


# ------------------------------------------------------------------------------------ scoring
class _Regions:
    """Look-ups into a findings dict."""

    def __init__(self, findings_):
        self.by_name = {region["region"]: region for region in findings_["regions"]}

    def mean(self, name, side="bilateral"):
        region = self.by_name.get(name)
        if region is None:
            return None
        return region[{"L": "left_ppb", "R": "right_ppb", "bilateral": "bilateral_ppb"}[side]]

    def higher_side(self, name):
        values = [value for value in (self.mean(name, "L"), self.mean(name, "R"))
                  if value is not None]
        return max(values) if values else self.mean(name)

    def bound(self, name, pattern, which):
        region = self.by_name.get(name)
        for item in (region or {}).get("ranges", []):
            if item["pattern"] == pattern:
                return item["low_ppb"] if which == "low" else item["high_ppb"]
        return None

    def region(self, name):
        return self.by_name.get(name)


def _vote(condition):
    if condition is None:
        return "n/a"
    return "agree" if condition else "disagree"


def _feature(name, label, rule, value_text, votes, patterns, value=None):
    return {"name": name, "label": label, "rule": rule, "value": value,
            "value_text": value_text,
            "evaluated": any(vote is not None for vote in votes.values()),
            "votes": {pattern: _vote(votes.get(pattern)) for pattern in patterns}}


def _fmt(value, unit=" ppb"):
    return "not measured" if value is None else f"{value:.1f}{unit}"


def _at_least(value, threshold):
    return None if value is None or threshold is None else value >= threshold


def _at_most(value, threshold):
    return None if value is None or threshold is None else value <= threshold


def _features(regions: _Regions, patterns) -> list[dict]:
    features = []
    mc_max = regions.higher_side("motor_cortex")
    cbs_mc_low = regions.bound("motor_cortex", "CBS", "low")
    gpi = regions.mean("globus_pallidus_interna")
    rn = regions.mean("red_nucleus")

    # Motor cortex elevation (hallmark of CBS).
    features.append(_feature(
        "motor_cortex_elevation", "Motor-cortex iron (higher hemisphere)",
        "CBS if >= CBS motor cortex low; PSP if <= PSP motor cortex high; PD if <= PD motor "
        "cortex high",
        _fmt(mc_max), {"CBS": _at_least(mc_max, cbs_mc_low),
                       "PSP": _at_most(mc_max, regions.bound("motor_cortex", "PSP", "high")),
                       "PD": _at_most(mc_max, regions.bound("motor_cortex", "PD", "high"))},
        patterns, value=rounded(mc_max)))

    # Motor cortex asymmetry.
    motor = regions.region("motor_cortex")
    asymmetric = None
    if motor is not None and motor["ai_pct"] is not None and mc_max is not None \
            and cbs_mc_low is not None:
        difference = abs(motor["left_ppb"] - motor["right_ppb"])
        asymmetric = (motor["favoured_side"] is not None and mc_max >= cbs_mc_low
                      and difference >= CBS_ASYMMETRY_MIN_PPB)
    value_text = ("not measured" if motor is None or motor["ai_pct"] is None
                  else f"AI {motor['ai_pct']:+.1f} % ({motor['asymmetry']}), |R - L| "
                       f"{abs(motor['left_ppb'] - motor['right_ppb']):.1f} ppb")
    features.append(_feature(
        "motor_cortex_asymmetry", "Motor-cortex asymmetry",
        f"asymmetric: |AI| >= {ASYMMETRY_THRESHOLD_PCT:g} % and |R - L| >= "
        f"{CBS_ASYMMETRY_MIN_PPB:g} ppb, with elevated cortex; CBS if asymmetric, PSP if not",
        value_text, {"CBS": asymmetric, "PSP": None if asymmetric is None else not asymmetric},
        patterns, value=None if motor is None else motor["ai_pct"]))

    # Cortical-to-subcortical ratio.
    left, right, both, gpi_ppb, rn_ppb = (
        math.nan if value is None else value for value in (
            regions.mean("motor_cortex", "L"), regions.mean("motor_cortex", "R"),
            regions.mean("motor_cortex"), gpi, rn))
    ratio = _finite(cortical_subcortical_ratio(left, right, gpi_ppb, rn_ppb,
                                               motor_bilateral=both))
    features.append(_feature(
        "cortical_subcortical_ratio", "Cortical-to-subcortical ratio",
        f"motor cortex (higher hemisphere) / mean(GPi, red nucleus); CBS if >= "
        f"{RATIO_CBS_MIN:g}; PSP if <= {RATIO_PSP_MAX:g}",
        "not measured" if ratio is None else f"{ratio:.2f}",
        {"CBS": _at_least(ratio, RATIO_CBS_MIN), "PSP": _at_most(ratio, RATIO_PSP_MAX)},
        patterns, value=rounded(ratio, 3)))

    # GPi / STN / RN elevation (hallmark of PSP).
    nuclei = [(name, regions.mean(name), regions.bound(name, "PSP", "low"))
              for name in ("globus_pallidus_interna", "red_nucleus", "subthalamic_nucleus")]
    judged = [(name, value, low) for name, value, low in nuclei
              if value is not None and low is not None]
    pd_gpi_high = regions.bound("globus_pallidus_interna", "PD", "high")
    level = None
    if len(judged) >= 2:
        high_count = sum(value >= low for _, value, low in judged)
        if high_count >= 2:
            level = "high"
        elif gpi is not None and pd_gpi_high is not None and gpi <= pd_gpi_high:
            level = "low"
        elif gpi is not None and pd_gpi_high is not None:
            level = "moderate"
    parts = [f"{REGION_LABELS.get(name, name).split(' (')[-1].rstrip(')')} {value:.0f}"
             for name, value, _ in nuclei if value is not None]
    features.append(_feature(
        "gpi_stn_rn_elevation", "GPi / STN / red-nucleus iron",
        "high: >= 2 of GPi, red nucleus (and STN when ranged) at or above their PSP low; low: "
        "GPi <= PD GPi high; PSP if high, CBS if moderate, PD if low",
        ("not measured" if level is None else f"{level} ({', '.join(parts)} ppb)"),
        {"PSP": None if level is None else level == "high",
         "CBS": None if level is None else level == "moderate",
         "PD": None if level is None else level == "low"},
        patterns, value=level))

    # GPi / STN / RN symmetry.
    measured = [regions.region(name) for name in
                ("globus_pallidus_interna", "subthalamic_nucleus", "red_nucleus")]
    measured = [region for region in measured if region is not None
                and region["ai_pct"] is not None]
    symmetric = None if not measured else all(region["favoured_side"] is None
                                               for region in measured)
    features.append(_feature(
        "gpi_stn_rn_symmetry", "GPi / STN / red-nucleus symmetry",
        "symmetric: no favoured side in any of GPi, STN, red nucleus; PSP if symmetric",
        ("not measured" if not measured else ", ".join(
            f"{region['region'].replace('_', ' ')} AI {region['ai_pct']:+.1f} %"
            for region in measured)),
        {"PSP": symmetric}, patterns))

    # Nigral pattern (hallmark of PD).
    sn = regions.higher_side("substantia_nigra")
    psp_gpi_low = regions.bound("globus_pallidus_interna", "PSP", "low")
    nigral = None
    if None not in (sn, mc_max, cbs_mc_low, gpi, psp_gpi_low):
        nigral = sn > NIGRAL_SN_MIN_PPB and mc_max < cbs_mc_low and gpi < psp_gpi_low
    features.append(_feature(
        "nigral_pattern", "Nigral pattern",
        f"substantia nigra of the higher hemisphere > {NIGRAL_SN_MIN_PPB:g} ppb (Murakami 2015) "
        "with motor cortex < CBS motor cortex low and GPi < PSP GPi low; PD if present",
        ("not measured" if sn is None else f"substantia nigra (higher side) {sn:.1f} ppb"
         + ("" if nigral is None else (", present" if nigral else ", absent"))),
        {"PD": nigral}, patterns, value=rounded(sn)))

    # Regional ranges.
    votes, texts = {}, []
    for pattern in patterns:
        ranged = [region for region in regions.by_name.values()
                  if region["bilateral_ppb"] is not None
                  and pattern in region["placement"].get("bilateral", {})]
        if len(ranged) < RANGE_FIT_MIN_REGIONS:
            votes[pattern] = None
            continue
        inside = sum(pattern in region["within"] for region in ranged)
        votes[pattern] = inside / len(ranged) >= RANGE_FIT_MIN_FRACTION
        texts.append(f"{pattern} {inside}/{len(ranged)}")
    features.append(_feature(
        "regional_ranges", "Values within the pattern's ranges",
        f"agrees if >= {RANGE_FIT_MIN_FRACTION:.0%} of the ranged regions (both hemispheres) lie "
        "within the pattern's range",
        ", ".join(texts) or "no ranged region measured", votes, patterns))

    if "MSA" in patterns:
        features += _msa_features(regions, patterns)
    if "AD" in patterns:
        features += _ad_features(regions, patterns)
    return features


def _elevated_threshold(region):
    """Healthy value of ``region`` plus :data:`ELEVATION_MARGIN_PPB`."""
    return HEALTHY_PPB[region] + ELEVATION_MARGIN_PPB


def _msa_features(regions: _Regions, patterns) -> list[dict]:
    """Putaminal iron at or above the pallidum's (hallmark) and cerebellar cortical iron."""
    putamen = regions.higher_side("putamen")
    gpi = regions.mean("globus_pallidus_interna")
    range_low = regions.bound("putamen", "MSA", "low")
    putamen_min = MSA_PUTAMEN_MIN_PPB if range_low is None else range_low
    elevated = None
    if putamen is not None and gpi is not None:
        elevated = putamen >= putamen_min and putamen >= gpi
    cerebellum = regions.higher_side("cerebellar_cortex")
    cerebellum_min = _elevated_threshold("cerebellar_cortex")
    return [
        _feature("putamen_elevation", "Putaminal iron (higher hemisphere)",
                 f"MSA if putamen >= {putamen_min:g} ppb (MSA putamen low when the ranges have "
                 "one) and >= GPi (putaminal iron at or above the pallidum's)",
                 (_fmt(putamen) if gpi is None or putamen is None
                  else f"putamen {putamen:.1f} ppb, GPi {gpi:.1f} ppb"),
                 {"MSA": elevated}, patterns, value=rounded(putamen)),
        _feature("cerebellar_elevation", "Cerebellar cortical iron (higher hemisphere)",
                 f"MSA if cerebellar cortex >= {cerebellum_min:g} ppb (healthy grey matter "
                 f"{HEALTHY_PPB['cerebellar_cortex']:g} + {ELEVATION_MARGIN_PPB:g})",
                 _fmt(cerebellum), {"MSA": _at_least(cerebellum, cerebellum_min)}, patterns,
                 value=rounded(cerebellum)),
    ]


#: Temporoparietal cortex of the AD pattern, at least two of which must be elevated.
AD_CORTICAL_REGIONS = ("superior_temporal_gyrus", "posterior_cingulate",
                       "superior_parietal_lobule")


def _ad_features(regions: _Regions, patterns) -> list[dict]:
    """Hippocampal iron (hallmark), temporoparietal cortical iron and basal-ganglia sparing."""
    hippocampus = regions.higher_side("hippocampus")
    hippocampus_min = _elevated_threshold("hippocampus")
    cortical = [(name, regions.higher_side(name)) for name in AD_CORTICAL_REGIONS]
    cortical = [(name, value) for name, value in cortical if value is not None]
    cortex_elevated = None
    if len(cortical) >= 2:
        cortex_elevated = sum(value >= _elevated_threshold(name)
                              for name, value in cortical) >= 2
    putamen, gpi = regions.mean("putamen"), regions.mean("globus_pallidus_interna")
    spared = None
    if putamen is not None and gpi is not None:
        spared = (putamen <= HEALTHY_PPB["putamen"] + ELEVATION_MARGIN_PPB
                  and gpi <= HEALTHY_PPB["globus_pallidus_interna"] + ELEVATION_MARGIN_PPB)
    return [
        _feature("hippocampal_elevation", "Hippocampal iron (higher hemisphere)",
                 f"AD if hippocampus >= {hippocampus_min:g} ppb (healthy grey matter "
                 f"{HEALTHY_PPB['hippocampus']:g} + {ELEVATION_MARGIN_PPB:g})",
                 _fmt(hippocampus), {"AD": _at_least(hippocampus, hippocampus_min)}, patterns,
                 value=rounded(hippocampus)),
        _feature("temporoparietal_elevation", "Temporoparietal cortical iron",
                 "AD if at least 2 of superior temporal, posterior cingulate and superior "
                 f"parietal cortex (higher hemisphere) >= healthy + {ELEVATION_MARGIN_PPB:g} ppb",
                 ("not measured" if not cortical else ", ".join(
                     f"{REGION_LABELS.get(name, name)} {value:.0f}" for name, value in cortical)
                  + " ppb"),
                 {"AD": cortex_elevated}, patterns),
        _feature("basal_ganglia_sparing", "Basal ganglia near healthy values",
                 f"AD if putamen <= {HEALTHY_PPB['putamen'] + ELEVATION_MARGIN_PPB:g} and GPi <= "
                 f"{HEALTHY_PPB['globus_pallidus_interna'] + ELEVATION_MARGIN_PPB:g} ppb (both "
                 "hemispheres; AD spares the basal ganglia more than the parkinsonian patterns)",
                 ("not measured" if spared is None
                  else f"putamen {putamen:.0f}, GPi {gpi:.0f} ppb"),
                 {"AD": spared}, patterns),
    ]


def _confidence(score, margin) -> str:
    if score >= HIGH_MIN_SCORE and margin >= HIGH_MIN_MARGIN:
        return "high"
    if score >= MODERATE_MIN_SCORE and margin >= MODERATE_MIN_MARGIN:
        return "moderate"
    return "low"


def _lowered(level, steps) -> str:
    return CONFIDENCE_LEVELS[max(0, CONFIDENCE_LEVELS.index(level) - steps)]


#: Regions a pattern beyond CBS, PSP and PD needs measured to be assessed.
PATTERN_REGIONS = {"MSA": ("putamen", "globus_pallidus_interna"), "AD": ("hippocampus",)}


def assessed_patterns(findings_) -> list[str]:
    """CBS, PSP and PD always; MSA and AD when the regions of :data:`PATTERN_REGIONS` are
    measured."""
    measured = {region["region"] for region in findings_["regions"]
                if region["bilateral_ppb"] is not None}
    return ["CBS", "PSP", "PD", *[pattern for pattern, needed in PATTERN_REGIONS.items()
                                  if set(needed) <= measured]]


def score_patterns(findings_: dict, *, quality: dict | None = None) -> dict:
    """Score the CBS, PSP, PD (and MSA) patterns and interpret them (module docstring).

    Parameters
    ----------
    findings_ : dict
        From :func:`findings`.
    quality : dict, optional
        From :func:`assess_quality`; each flagged category lowers the confidence one level.

    Returns
    -------
    dict
        ``features`` (name, label, rule, value_text, votes per pattern), ``patterns``
        ({pattern: agree, applicable, score, hallmark, hallmark_met, candidate, agreed,
        disagreed}), ``not_assessed`` ({pattern: reason}), and ``interpretation``: ``pattern``
        (CBS / PSP / PD / MSA / mixed / indeterminate / none), ``patterns`` (those named),
        ``statement``, ``confidence``, ``confidence_before_quality``, ``confidence_notes``,
        ``asymmetry`` (``statement``, ``side``, ``region``, ``ai_pct``).
    """
    patterns = assessed_patterns(findings_)
    regions = _Regions(findings_)
    features = _features(regions, patterns)
    by_name = {feature["name"]: feature for feature in features}
    scores = {}
    for pattern in patterns:
        agreed = [feature["label"] for feature in features if feature["votes"][pattern] == "agree"]
        disagreed = [feature["label"] for feature in features
                     if feature["votes"][pattern] == "disagree"]
        applicable = len(agreed) + len(disagreed)
        hallmark = HALLMARKS[pattern]
        hallmark_met = by_name[hallmark]["votes"][pattern] == "agree"
        score = len(agreed) / applicable if applicable else 0.0
        scores[pattern] = {
            "agree": len(agreed), "applicable": applicable, "score": round(score, 3),
            "hallmark": hallmark, "hallmark_label": by_name[hallmark]["label"],
            "hallmark_met": hallmark_met,
            "candidate": hallmark_met and score >= CANDIDATE_MIN_SCORE,
            "agreed": agreed, "disagreed": disagreed,
        }
    not_assessed = {
        pattern: (f"{' and '.join(REGION_LABELS.get(name, name) for name in needed)} not "
                  "measured (the atlas lacks them or they are outside the field of view)")
        for pattern, needed in PATTERN_REGIONS.items() if pattern not in patterns}

    order = {pattern: index for index, pattern in enumerate(PATTERNS)}
    ranked = sorted(patterns, key=lambda name: (-scores[name]["score"], order[name]))
    candidates = [name for name in ranked if scores[name]["candidate"]]
    notes = []
    motor_iron = _at_least(regions.higher_side("motor_cortex"),
                           _elevated_threshold("motor_cortex"))
    if not candidates and motor_iron and all(
            by_name[HALLMARKS[name]]["votes"][name] == "disagree" for name in patterns):
        result, named = "indeterminate", []
        statement = ("Indeterminate: motor-cortex iron is above healthy values but no pattern's "
                     "hallmark is present (CBS's is an asymmetric cortex); see the "
                     "motor-neuron profile")
        confidence = "low"
    elif not candidates and all(by_name[HALLMARKS[name]]["votes"][name] == "disagree"
                                for name in patterns):
        result, named = "none", []
        statement = ("No disease pattern: every hallmark region was measured and none of the "
                     "hallmark features (" + ", ".join(
                         scores[name]["hallmark_label"] for name in patterns) + ") is present")
        confidence = ("high" if all(scores[name]["score"] < CANDIDATE_MIN_SCORE
                                    for name in patterns) else "moderate")
    elif not candidates:
        result, named = "indeterminate", []
        statement = ("Indeterminate: no pattern's hallmark feature is present with enough "
                     "supporting features, or a hallmark could not be assessed")
        confidence = "low"
    else:
        best = candidates[0]
        close = [name for name in candidates
                 if scores[best]["score"] - scores[name]["score"] < MIXED_MARGIN]
        if len(close) > 1:
            result, named = "mixed", close
            statement = f"Mixed features ({' + '.join(close)})"
            confidence = "low"
        else:
            result, named = best, [best]
            statement = f"Pattern consistent with {best}"
            others = [scores[name]["score"] for name in patterns if name != best]
            margin = scores[best]["score"] - max(others, default=0.0)
            confidence = _confidence(scores[best]["score"], margin)
            if (best == "MSA" and confidence != "low"
                    and by_name["cerebellar_elevation"]["votes"]["MSA"] == "n/a"):
                notes.append("MSA rests on the putamen alone (cerebellar cortex not measured): "
                             "confidence capped at low")
                confidence = "low"
    before = confidence
    flagged = (quality or {}).get("flagged_categories", [])
    if flagged:
        confidence = _lowered(confidence, len(flagged))
        reasons = []
        for check in (quality or {}).get("checks", []):
            if check["flagged"]:
                value = check["value"]
                unit = f" {check['unit']}" if check["unit"] and value is not None else ""
                reasons.append(f"{check['label']} {value}{unit} ({check['rule']})")
        notes.append(f"quality flags in {len(flagged)} categor{'y' if len(flagged) == 1 else 'ies'}"
                     f" ({', '.join(flagged)}) lower the confidence one level each: "
                     + "; ".join(reasons))

    key = KEY_REGIONS[result if result in KEY_REGIONS else "indeterminate"]
    if result == "mixed":
        key = KEY_REGIONS[named[0]]
    key_region = regions.region(key)
    if key_region is None or key_region["ai_pct"] is None:
        asymmetry = {"statement": "not measured", "side": None, "region": key, "ai_pct": None}
    else:
        asymmetry = {"statement": key_region["asymmetry"], "side": key_region["stated_side"],
                     "region": key, "ai_pct": key_region["ai_pct"]}
    return {
        "features": features,
        "patterns": scores,
        "not_assessed": not_assessed,
        "interpretation": {
            "pattern": result,
            "patterns": named,
            "statement": statement,
            "confidence": confidence,
            "confidence_before_quality": before,
            "confidence_notes": notes,
            "asymmetry": asymmetry,
            "disclaimer": DISCLAIMER,
        },
    }


def thresholds() -> dict:
    """The fixed thresholds of the scoring and quality checks (for the report)."""
    return {
        "asymmetry_threshold_pct": ASYMMETRY_THRESHOLD_PCT,
        "asymmetry_min_difference_ppb": ASYMMETRY_MIN_DIFFERENCE_PPB,
        "cbs_asymmetry_min_ppb": CBS_ASYMMETRY_MIN_PPB,
        "elevation_margin_ppb": ELEVATION_MARGIN_PPB,
        "msa_putamen_min_ppb": MSA_PUTAMEN_MIN_PPB,
        "ratio_cbs_min": RATIO_CBS_MIN,
        "ratio_psp_max": RATIO_PSP_MAX,
        "nigral_sn_min_ppb": NIGRAL_SN_MIN_PPB,
        "range_fit_min_fraction": RANGE_FIT_MIN_FRACTION,
        "candidate_min_score": CANDIDATE_MIN_SCORE,
        "mixed_margin": MIXED_MARGIN,
        "high_min_score": HIGH_MIN_SCORE,
        "high_min_margin": HIGH_MIN_MARGIN,
        "moderate_min_score": MODERATE_MIN_SCORE,
        "moderate_min_margin": MODERATE_MIN_MARGIN,
        "registration_min_dice": REGISTRATION_MIN_DICE,
        "registration_min_nmi": REGISTRATION_MIN_NMI,
        "mask_volume_min_ml": MASK_VOLUME_RANGE_ML[0],
        "mask_volume_max_ml": MASK_VOLUME_RANGE_ML[1],
        "echo_fit_max_residual_rad": ECHO_FIT_MAX_RESIDUAL,
        "poor_phase_max_fraction": POOR_PHASE_MAX_FRACTION,
        "region_min_voxels": REGION_MIN_VOXELS,
    }
