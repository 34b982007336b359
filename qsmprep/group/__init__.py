"""Group-level analysis of the participant-level regional susceptibility tables.

The steps, each a plain function on pandas tables:

1. :mod:`.collect` gathers every run's ``*_desc-regions_stats.tsv`` (with its QC values) and
   the participants' covariates into one tidy table, reshapes it to one row per scan and lists
   the scans that fail quality control;
2. :mod:`.harmonise` removes scanner/site effects with ComBat, keeping the covariates' effects;
3. :mod:`.statistics` compares the diagnoses region by region (Hedges' g, Welch's t-test,
   Benjamini-Hochberg FDR), including the hemispheric asymmetry;
4. :mod:`.classify` estimates how well the regions separate each pair of diagnoses
   (cross-validated logistic regression) and derives reference ranges from the cohort.
"""

from .classify import classify_diagnoses, learned_reference_ranges, write_reference_ranges
from .collect import (collect_participant_results, feature_name, parse_feature, qc_exclusions,
                      scan_table, wide_table)
from .harmonise import combat, harmonise
from .statistics import (benjamini_hochberg, compare_groups, compare_asymmetry, describe_groups,
                         hedges_g, site_effects)

__all__ = [
    "benjamini_hochberg", "classify_diagnoses", "collect_participant_results", "combat",
    "compare_asymmetry", "compare_groups", "describe_groups", "feature_name", "harmonise",
    "hedges_g", "learned_reference_ranges", "parse_feature", "qc_exclusions", "scan_table",
    "site_effects", "wide_table", "write_reference_ranges",
]
