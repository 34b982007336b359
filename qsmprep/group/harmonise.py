"""ComBat harmonisation of regional values across sites (scanners).

ComBat (Johnson, Li & Rabinovic, Biostatistics 2007;8:118-127, doi:10.1093/biostatistics/
kxj037), as adapted to neuroimaging features by Fortin et al. (NeuroImage 2017;161:149-170,
doi:10.1016/j.neuroimage.2017.08.047; NeuroImage 2018;167:104-120,
doi:10.1016/j.neuroimage.2017.11.024), models each feature ``g`` of scan ``j`` at site ``i`` as::

    y_ijg = alpha_g + X_ij beta_g + gamma_ig + delta_ig * e_ijg,   e_ijg ~ N(0, sigma_g^2)

with ``X`` the covariates whose effects are kept (diagnosis, age, sex), ``gamma`` an additive
and ``delta`` a multiplicative site effect. The site effects are estimated on standardised data
and shrunk towards their mean over features by parametric empirical Bayes (normal prior on
``gamma``, inverse-gamma prior on ``delta^2``), then removed::

    y*_ijg = (y_ijg - alpha_g - X_ij beta_g - gamma*_ig) / delta*_ig + alpha_g + X_ij beta_g

This is an implementation of the published method written for this package: the maintained
Python packages (neuroCombat 0.2.12, neuroHarmonize 2.5) do not support NumPy 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import BadDataError

#: Covariates whose effects are preserved, when the table has them.
DEFAULT_COVARIATES = ("diagnosis", "age", "sex")
#: Fewest scans a site needs (a variance per site and feature).
MIN_SCANS_PER_SITE = 2


def _inverse_gamma_prior(delta_hat):
    """Method-of-moments inverse-gamma hyper-parameters ``(a, b)`` per site (Johnson 2007)."""
    mean = delta_hat.mean(axis=1)
    variance = delta_hat.var(axis=1, ddof=1)
    a = (2 * variance + mean ** 2) / variance
    b = (mean * variance + mean ** 3) / variance
    return a, b


def _empirical_bayes(standardised, gamma_hat, delta_hat, batches, *, tolerance=1e-4,
                     max_iterations=1000):
    """Posterior site effects ``(gamma*, delta*^2)`` by the iterative solution of Johnson 2007."""
    gamma_bar = gamma_hat.mean(axis=1)
    tau2 = gamma_hat.var(axis=1, ddof=1)
    a, b = _inverse_gamma_prior(delta_hat)
    gamma_star, delta_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
    for i, rows in enumerate(batches):
        data = standardised[rows]
        n = data.shape[0]
        gamma_old, delta_old = gamma_hat[i].copy(), delta_hat[i].copy()
        for _ in range(max_iterations):
            gamma_new = ((n * tau2[i] * gamma_hat[i] + delta_old * gamma_bar[i])
                         / (n * tau2[i] + delta_old))
            sum2 = ((data - gamma_new) ** 2).sum(axis=0)
            delta_new = (0.5 * sum2 + b[i]) / (n / 2.0 + a[i] - 1.0)
            change = max(np.max(np.abs(gamma_new - gamma_old) / np.maximum(
                np.abs(gamma_old), 1e-12)), np.max(np.abs(delta_new - delta_old) / delta_old))
            gamma_old, delta_old = gamma_new, delta_new
            if change < tolerance:
                break
        gamma_star[i], delta_star[i] = gamma_old, delta_old
    return gamma_star, delta_star


def combat(data, sites, covariates=None, *, empirical_bayes=True) -> tuple[np.ndarray, dict]:
    """ComBat-harmonise ``data`` (scans x features) across ``sites``, keeping ``covariates``.

    Parameters
    ----------
    data : array_like, (n_scans, n_features)
        Complete data (no NaN).
    sites : sequence of str, (n_scans,)
        Site of each scan; every site needs at least :data:`MIN_SCANS_PER_SITE` scans.
    covariates : array_like, (n_scans, n_covariates), optional
        Numeric design columns whose effects are kept (categorical covariates as indicator
        columns without the reference level; no intercept).
    empirical_bayes : bool
        Shrink the site effects (needs at least 2 features; with one feature, or when the
        site effects do not vary over features, the per-feature estimates are used as they are).

    Returns
    -------
    harmonised : numpy.ndarray, (n_scans, n_features)
    estimates : dict
        ``sites`` (sorted), ``gamma`` and ``delta`` (the site effects removed, sites x features,
        ``delta`` as a variance ratio), ``grand_mean``, ``pooled_variance`` (per feature) and
        ``empirical_bayes`` (whether shrinkage was used).

    Raises
    ------
    BadDataError
        When a site has too few scans, the data are not finite, or the covariates are
        confounded with site (the design is not of full rank).
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError("data must be 2-D: scans x features")
    n_scans, n_features = data.shape
    if not np.all(np.isfinite(data)):
        raise BadDataError("ComBat needs complete data: some regional values are missing")
    sites = np.asarray([str(site) for site in sites])
    if sites.shape != (n_scans,):
        raise ValueError("one site per scan is needed")
    levels, site_index, counts = np.unique(sites, return_inverse=True, return_counts=True)
    small = [f"{level} ({count} scan{'s' if count != 1 else ''})"
             for level, count in zip(levels, counts) if count < MIN_SCANS_PER_SITE]
    if small:
        raise BadDataError(f"ComBat needs at least {MIN_SCANS_PER_SITE} scans per site; too few "
                           f"in: {', '.join(small)}")
    covariates = (np.zeros((n_scans, 0)) if covariates is None
                  else np.asarray(covariates, dtype=np.float64).reshape(n_scans, -1))
    batch_design = np.eye(len(levels))[site_index]
    design = np.hstack([batch_design, covariates])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise BadDataError("ComBat cannot separate the site effects from the covariates' "
                           "effects (a covariate is constant within sites or confounded with "
                           f"site; sites: {', '.join(levels)})")
    if n_scans <= design.shape[1]:
        raise BadDataError(f"ComBat needs more scans ({n_scans}) than site and covariate "
                           f"parameters ({design.shape[1]})")
    beta = np.linalg.lstsq(design, data, rcond=None)[0]
    weights = counts / n_scans
    grand_mean = weights @ beta[:len(levels)]
    residual = data - design @ beta
    pooled_variance = (residual ** 2).mean(axis=0)
    pooled_variance = np.where(pooled_variance > 0, pooled_variance, 1.0)
    standard_mean = grand_mean + covariates @ beta[len(levels):]
    standardised = (data - standard_mean) / np.sqrt(pooled_variance)

    batches = [np.flatnonzero(site_index == i) for i in range(len(levels))]
    gamma_hat = np.vstack([standardised[rows].mean(axis=0) for rows in batches])
    delta_hat = np.vstack([standardised[rows].var(axis=0, ddof=1) for rows in batches])
    delta_hat = np.where(delta_hat > 0, delta_hat, 1e-12)
    use_eb = bool(empirical_bayes and n_features >= 2
                  and np.all(gamma_hat.var(axis=1, ddof=1) > 0)
                  and np.all(delta_hat.var(axis=1, ddof=1) > 0))
    if use_eb:
        gamma_star, delta_star = _empirical_bayes(standardised, gamma_hat, delta_hat, batches)
    else:
        gamma_star, delta_star = gamma_hat, delta_hat

    adjusted = np.empty_like(standardised)
    for i, rows in enumerate(batches):
        adjusted[rows] = (standardised[rows] - gamma_star[i]) / np.sqrt(delta_star[i])
    harmonised = adjusted * np.sqrt(pooled_variance) + standard_mean
    return harmonised, {"sites": list(levels), "gamma": gamma_star, "delta": delta_star,
                        "grand_mean": grand_mean, "pooled_variance": pooled_variance,
                        "empirical_bayes": use_eb}


def covariate_design(table, covariates=DEFAULT_COVARIATES) -> tuple[np.ndarray, list[str]]:
    """Numeric design columns of ``covariates`` in ``table`` (absent or constant ones left out).

    Numeric columns (e.g. ``age``) are centred; others are categorical, coded as indicator
    columns of every level but the first (sorted). Returns ``(design, column names)``.

    Raises
    ------
    BadDataError
        When a covariate used has missing values (naming the scans).
    """
    columns, names = [], []
    for covariate in covariates:
        if covariate not in table.columns:
            continue
        values = table[covariate]
        if values.isna().all():
            continue
        if values.isna().any():
            scans = table.loc[values.isna(), "scan"] if "scan" in table else values.index
            raise BadDataError(f"covariate {covariate} is missing for: "
                               f"{', '.join(map(str, scans))} (fill it in or leave these scans "
                               "out)")
        if pd.api.types.is_numeric_dtype(values):
            numbers = values.to_numpy(dtype=np.float64)
            if np.ptp(numbers) > 0:
                columns.append(numbers - numbers.mean())
                names.append(covariate)
            continue
        levels = sorted(values.astype(str).unique())
        for level in levels[1:]:
            columns.append((values.astype(str) == level).to_numpy(dtype=np.float64))
            names.append(f"{covariate}[{level}]")
    design = np.column_stack(columns) if columns else np.zeros((len(table), 0))
    return design, names


def harmonise(wide, features=None, *, site_column="site", covariates=DEFAULT_COVARIATES,
              empirical_bayes=True, suffix="_harmonised") -> pd.DataFrame:
    """ComBat-harmonise the regional features of a wide table across sites.

    Parameters
    ----------
    wide : pandas.DataFrame
        One row per scan (:func:`qsmprep.group.collect.wide_table`), without the excluded scans.
    features : sequence of str, optional
        Columns to harmonise (default: ``wide.attrs["features"]``).
    site_column : str
        Column naming each scan's site.
    covariates : sequence of str
        Columns whose effects are preserved, when present (see :func:`covariate_design`).
    empirical_bayes : bool
        See :func:`combat`.
    suffix : str
        Appended to a feature's name for its harmonised column.

    Returns
    -------
    pandas.DataFrame
        ``wide`` with, after each feature (the raw value), ``<feature><suffix>``. With a single
        site the harmonised values equal the raw ones. ``attrs``: ``features`` (raw),
        ``harmonised_features``, ``covariates`` (design columns used), ``combat`` (the
        estimates of :func:`combat`, arrays as lists).

    Raises
    ------
    BadDataError
        When a site has fewer than 2 scans (naming it), a feature or covariate has missing
        values, or covariates are confounded with site.
    """
    features = list(features if features is not None else wide.attrs.get("features", []))
    if not features:
        raise BadDataError("no regional features to harmonise")
    data = wide[features].to_numpy(dtype=np.float64)
    incomplete = ~np.all(np.isfinite(data), axis=1)
    if incomplete.any():
        scans = wide.loc[incomplete, "scan"] if "scan" in wide else wide.index[incomplete]
        raise BadDataError("ComBat needs every regional value of every scan; missing in: "
                           f"{', '.join(map(str, scans))} (see qc_exclusions)")
    if site_column not in wide.columns:
        raise BadDataError(f"no site column {site_column!r} in the table")
    sites = wide[site_column].astype(str).to_numpy()
    design, names = covariate_design(wide, covariates)
    if len(np.unique(sites)) < 2:
        harmonised, estimates = data.copy(), {"sites": sorted(set(sites)), "empirical_bayes":
                                              False}
    else:
        harmonised, estimates = combat(data, sites, design, empirical_bayes=empirical_bayes)
    out = wide.copy()
    harmonised_names = [f"{feature}{suffix}" for feature in features]
    for index, (feature, name) in enumerate(zip(features, harmonised_names)):
        out.insert(out.columns.get_loc(feature) + 1, name, harmonised[:, index])
    estimates = {key: value.tolist() if isinstance(value, np.ndarray) else value
                 for key, value in estimates.items()}
    out.attrs = {"features": features, "harmonised_features": harmonised_names,
                 "covariates": names, "combat": estimates}
    return out
