"""Accuracy regression of the default reconstruction chain on the simulated 2 mm head phantom.

The fast counterpart of ``bench/bench_accuracy.py --quick`` (which also scores with the QSM-CI
package, simulates with qsm-forward and compares with qmrpy): qsmprep's own simulator only,
metrics written out here with the QSM-CI definitions (Langkammer et al., MRM 2018;79:1661;
``qsm_ci.qsm_eval``): demeaned NRMSE, Pearson correlation and XSIM (5-voxel windows, L = 1,
K1 = 0.01, K2 = 0.001, on ppm) over the TRUE brain mask, voxels the reconstruction does not
cover counting as 0; the slope of the deep-grey-matter regional means (caudate, pallidum,
putamen, red nucleus, dentate, substantia nigra: QSM-CI's ``dgm_linearity`` regions), measured
over true; and the coverage of the true brain by the final mask.

The chain is :func:`qsmprep.qsm.pipeline.reconstruct` with the defaults of
:class:`qsmprep.config.WorkflowConfig`, the chain ``workflows/qsm.py`` runs node by node.
Thresholds sit a few points beyond the values measured when the test was written, so that a
regression fails while a better default passes.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from qsmprep import config
from qsmprep.phantom.head import make_head_phantom
from qsmprep.phantom.signal import simulate_multiecho_gre
from qsmprep.qsm import pipeline, referencing

ECHO_TIMES_S = (0.004, 0.009, 0.014, 0.019)
FIELD_STRENGTH_T = 3.0
PEAK_SNR = 100.0  # noise SD per channel = peak M0 / 100, as in the bench
DEEP_GREY_MATTER = ("caudate", "globus_pallidus", "putamen", "red_nucleus", "dentate_nucleus",
                    "substantia_nigra")


@pytest.fixture(scope="module")
def acquisition():
    phantom = make_head_phantom(shape=(80, 96, 80), voxel_size=(2.0, 2.0, 2.0), seed=1)
    snr = PEAK_SNR * float(phantom.m0[phantom.brain_mask].mean()) / float(phantom.m0.max())
    return simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES_S,
                                  field_strength_t=FIELD_STRENGTH_T, snr=snr, seed=1, workers=2)


def xsim(estimate, truth, mask):
    """XSIM of QSM-CI (``qsm_ci.qsm_eval.xsim``): SSIM with 5x5x5 windows truncated at the
    array edge, constants c1 = 1e-4, c2 = 1e-6 (L = 1 ppm), averaged over ``mask``; both
    maps are zeroed outside the mask first, as the scorer does."""
    c1, c2, size = 1e-4, 1e-6, 5
    a = np.where(mask, estimate, 0.0).astype(np.float64)
    b = np.where(mask, truth, 0.0).astype(np.float64)

    def window_sum(volume):
        return uniform_filter(volume, size=size, mode="constant") * size**3

    count = window_sum(np.ones_like(a))
    mean_a, mean_b = window_sum(a) / count, window_sum(b) / count
    var_a = window_sum(a * a) / count - mean_a**2
    var_b = window_sum(b * b) / count - mean_b**2
    covariance = window_sum(a * b) / count - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + c1) * (2 * covariance + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    valid = mask & (denominator > 0)
    return float(np.mean(numerator[valid] / denominator[valid]))


def scores(chi, final_mask, acquisition):
    """NRMSE (%), correlation, XSIM, deep-GM slope and coverage (%) over the true brain
    (QSM-CI); the estimate is referenced over its own mask, the truth over the brain."""
    brain = acquisition.brain_mask
    truth = acquisition.susceptibility_ppm - acquisition.susceptibility_ppm[brain].mean()
    estimate = np.where(final_mask, chi - chi[final_mask].mean(), 0.0)
    recon = estimate[brain] - estimate[brain].mean()
    true = truth[brain] - truth[brain].mean()
    nrmse = 100 * np.linalg.norm(recon - true) / np.linalg.norm(true)
    correlation = np.corrcoef(recon, true)[0, 1]
    phantom = acquisition.phantom
    true_means, recon_means = [], []
    for index, name in phantom.label_names.items():
        if name.rsplit("_", 1)[0] in DEEP_GREY_MATTER:
            region = phantom.labels == index
            true_means.append(np.where(brain, truth, 0.0)[region].mean())
            recon_means.append(np.where(brain, estimate, 0.0)[region].mean())
    slope = np.polyfit(true_means, recon_means, 1)[0]
    coverage = 100 * (final_mask & brain).sum() / brain.sum()
    return {"nrmse": nrmse, "correlation": correlation, "xsim": xsim(estimate, truth, brain),
            "slope": slope, "coverage": coverage}


def test_default_chain_accuracy(acquisition):
    result = pipeline.reconstruct(acquisition.magnitude, acquisition.phase, ECHO_TIMES_S,
                                  acquisition.voxel_size, acquisition.b0_direction,
                                  FIELD_STRENGTH_T, workers=2)
    measured = scores(result.chimap_ppm, result.local_field_mask, acquisition)
    # Measured with the defaults romeo -> weighted-linear -> phase-quality mask -> pdf ->
    # tv-admm (edges of every echo, TV weight 0.1 outside the mask) -> whole brain: NRMSE
    # 13.3 %, correlation 0.992, XSIM 0.885, deep-GM slope 0.99, coverage 100 %
    # (bench/bench_accuracy.py --quick gives the same with the QSM-CI scorer). With the edges
    # of the first echo only: 13.8 %, 0.991, 0.849, 0.92; with full TV weight outside the
    # mask as well: 37.4 %, 0.929, 0.50, 0.84.
    assert measured["nrmse"] <= 18.0
    assert measured["correlation"] >= 0.98
    assert measured["xsim"] >= 0.82
    assert 0.93 <= measured["slope"] <= 1.07
    assert measured["coverage"] >= 98.0
    assert np.isfinite(result.chimap_ppm).all()


def test_default_inversion_from_true_local_field(acquisition):
    """The dipole stage alone, from the true local field in the true brain mask."""
    brain = acquisition.brain_mask
    arguments = pipeline.stage_arguments(config.WorkflowConfig())
    chi = pipeline.invert_dipole(
        np.where(brain, acquisition.local_field_hz, 0), brain, acquisition.voxel_size,
        acquisition.b0_direction, FIELD_STRENGTH_T,
        magnitude=acquisition.magnitude, echo_times_s=ECHO_TIMES_S,
        workers=2, **arguments["inversion"]).susceptibility_ppm
    chi, _ = referencing.reference_to_region_mean(chi, brain)
    measured = scores(chi, brain, acquisition)
    # Measured with tv-admm (edges of every echo, TV weight 0.1 outside the mask): NRMSE
    # 5.1 %, XSIM 0.994, correlation 0.999, deep-GM slope 0.99 (first-echo edges: 5.5 %,
    # 0.994, 0.999, 0.94; full weight and a 16 mm margin as well: 9.2 %, 0.964, 0.997, 0.94).
    assert measured["nrmse"] <= 8.0
    assert measured["correlation"] >= 0.995
    assert measured["xsim"] >= 0.97
    assert 0.93 <= measured["slope"] <= 1.07
    assert measured["coverage"] == pytest.approx(100.0)


def test_default_inversion_beats_the_tkd_floor_on_texture():
    """On the textured head (real-brain-like texture, veins, bundles, bleeds and
    calcifications: ``qsmprep.phantom.textured``), the default dipole inversion from the true
    local field must not lose to TKD from the same field by more than 2 NRMSE points or
    0.02 XSIM (the dipole-only floor of the accuracy bench)."""
    from qsmprep.phantom.textured import add_texture

    phantom = add_texture(make_head_phantom(shape=(80, 96, 80), voxel_size=(2.0, 2.0, 2.0),
                                            seed=1), seed=1)
    snr = PEAK_SNR * float(phantom.m0[phantom.brain_mask].mean()) / float(phantom.m0.max())
    textured = simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES_S,
                                      field_strength_t=FIELD_STRENGTH_T, snr=snr, seed=1,
                                      workers=2)
    brain = textured.brain_mask
    field = np.where(brain, textured.local_field_hz, 0)
    arguments = pipeline.stage_arguments(config.WorkflowConfig())["inversion"]
    measured = {}
    for method in ("tv-admm", "tkd"):
        chi = pipeline.invert_dipole(
            field, brain, textured.voxel_size, textured.b0_direction, FIELD_STRENGTH_T,
            magnitude=textured.magnitude, echo_times_s=ECHO_TIMES_S, workers=2,
            **{**arguments, "method": method}).susceptibility_ppm
        chi, _ = referencing.reference_to_region_mean(chi, brain)
        measured[method] = scores(chi, brain, textured)
    # measured: tv-admm NRMSE 25.1 %, XSIM 0.71; tkd 38.6 %, 0.69 (bench, QSM-CI scorer)
    assert measured["tv-admm"]["nrmse"] <= measured["tkd"]["nrmse"] + 2.0
    assert measured["tv-admm"]["xsim"] >= measured["tkd"]["xsim"] - 0.02


#: Fixed TV weights against which the automatic choice is measured.
FIXED_TV_WEIGHTS = (3e-4, 4.5e-4, 6e-4, 8e-4, 1e-3, 1.3e-3, 1.7e-3, 2.2e-3, 3e-3)


@pytest.mark.parametrize("textured, peak_snr", [(False, 100.0), (True, 100.0), (True, 50.0)],
                         ids=["analytic", "textured", "textured-snr50"])
def test_automatic_tv_weight_is_near_the_best_fixed_weight(textured, peak_snr):
    """The default chain's TV weight, chosen from the L-curve of its own local field, lies
    within a factor 2 of the fixed weight that scores best from that field, and costs at most
    2 NRMSE points against it; it is recorded for the sidecar."""
    from qsmprep.phantom.textured import add_texture

    phantom = make_head_phantom(shape=(80, 96, 80), voxel_size=(2.0, 2.0, 2.0), seed=1)
    if textured:
        phantom = add_texture(phantom, seed=1)
    snr = peak_snr * float(phantom.m0[phantom.brain_mask].mean()) / float(phantom.m0.max())
    data = simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES_S,
                                  field_strength_t=FIELD_STRENGTH_T, snr=snr, seed=1, workers=2)
    result = pipeline.reconstruct(data.magnitude, data.phase, ECHO_TIMES_S, data.voxel_size,
                                  data.b0_direction, FIELD_STRENGTH_T, workers=2)
    chosen = result.inversion_sidecar["Regularization"]
    assert result.inversion_sidecar["RegularizationSelection"]["TikhonovCorner"] is not None
    arguments = pipeline.stage_arguments(config.WorkflowConfig())["inversion"]
    mask = result.local_field_mask
    nrmse = {}
    for weight in FIXED_TV_WEIGHTS:
        chi = pipeline.invert_dipole(
            result.local_field_hz, mask, data.voxel_size, data.b0_direction, FIELD_STRENGTH_T,
            magnitude=data.magnitude, echo_times_s=ECHO_TIMES_S, workers=2,
            **{**arguments, "tv_regularization": weight}).susceptibility_ppm
        nrmse[weight] = scores(chi, mask, data)["nrmse"]
    best = min(nrmse, key=nrmse.get)
    automatic = scores(result.susceptibility_ppm, mask, data)["nrmse"]
    # measured: analytic 1.54e-3 (best 1.3e-3), textured 8.7e-4 (8e-4), textured at SNR 50
    # 1.33e-3 (1.3e-3)
    assert best / 2 <= chosen <= best * 2, (chosen, best, nrmse)
    assert automatic <= nrmse[best] + 2.0


def test_lcurve_scan_follows_the_voxel_size():
    """The L-curve scans weights scaled by the voxel edge squared: on a noise-free 1 mm
    textured head (half-size, so the grid stays small) the curve has its corner inside the
    scan, and the TV weight from it beats the reference weight the scan in fixed units fell
    back to (measured: corner 4.4e-5, TV weight 2.1e-4, XSIM 0.745 against 0.655 at 1e-3)."""
    from qsmprep.phantom.textured import add_texture
    from qsmprep.qsm import inversion
    from qsmprep.qsm.dipole import hz_to_ppm

    voxel = (1.0, 1.0, 1.0)
    phantom = add_texture(make_head_phantom(shape=(80, 96, 80), voxel_size=voxel, seed=1),
                          seed=1)
    data = simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES_S,
                                  field_strength_t=FIELD_STRENGTH_T, snr=None, seed=1,
                                  workers=2)
    brain = data.brain_mask
    field_ppm = hz_to_ppm(np.where(brain, data.local_field_hz, 0), FIELD_STRENGTH_T)
    assert inversion.lcurve_weights(voxel) == pytest.approx(
        [w / 4 for w in inversion.lcurve_weights((2.0, 2.0, 2.0))])
    assert inversion.lcurve_weights((1.0, 1.0, 8.0)) == pytest.approx(
        inversion.lcurve_weights((2.0, 2.0, 2.0)))
    curve = inversion.tikhonov_lcurve(field_ppm, brain, voxel, data.b0_direction, workers=2)
    assert curve.corner is not None
    assert curve.weights[2] < curve.corner < curve.weights[-3]
    measured = {}
    for weight in (inversion.tv_weight_for(curve), inversion.TV_REFERENCE_WEIGHT):
        chi = inversion.tv_admm(field_ppm, brain, voxel, data.b0_direction,
                                regularization=weight, magnitude=data.magnitude, workers=2)
        chi, _ = referencing.reference_to_region_mean(chi, brain)
        measured[weight] = scores(chi, brain, data)["xsim"]
    automatic, reference = measured.values()
    assert automatic >= reference + 0.03, measured
