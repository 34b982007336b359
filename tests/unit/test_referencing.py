"""Susceptibility referencing to a region mean, and the CSF (ventricle) reference."""

import numpy as np
import pytest

from qsmprep.errors import BadDataError
from qsmprep.phantom.head import make_head_phantom
from qsmprep.qsm.referencing import (
    csf_reference_mask,
    reference_summary,
    reference_to_region_mean,
)
from qsmprep.qsm.relaxometry import r2star_loglinear


def _map_and_masks():
    rng = np.random.default_rng(0)
    susceptibility = (0.2 + 0.05 * rng.standard_normal((16, 16, 16))).astype(np.float32)
    brain = np.zeros(susceptibility.shape, bool)
    brain[2:14, 2:14, 2:14] = True
    csf = np.zeros_like(brain)
    csf[6:9, 6:9, 6:9] = True
    return susceptibility, brain, csf


def test_whole_brain_mean_becomes_zero():
    susceptibility, brain, _ = _map_and_masks()
    referenced, value = reference_to_region_mean(susceptibility, brain)
    assert value == pytest.approx(float(susceptibility[brain].mean()), rel=1e-6)
    assert abs(referenced[brain].mean()) < 1e-6
    assert referenced[brain] == pytest.approx(susceptibility[brain] - value, abs=1e-6)
    assert np.all(referenced[~brain] == 0)


def test_region_reference_with_brain_output_mask():
    susceptibility, brain, csf = _map_and_masks()
    susceptibility[csf] = -0.1
    referenced, value = reference_to_region_mean(susceptibility, csf, output_mask=brain)
    assert value == pytest.approx(-0.1)
    assert referenced[csf] == pytest.approx(np.zeros(csf.sum()), abs=1e-6)
    assert referenced[brain & ~csf] == pytest.approx(susceptibility[brain & ~csf] + 0.1,
                                                      abs=1e-6)
    assert np.all(referenced[~brain] == 0)


def test_empty_region_is_bad_data():
    susceptibility, brain, _ = _map_and_masks()
    with pytest.raises(BadDataError, match="empty"):
        reference_to_region_mean(susceptibility, np.zeros_like(brain))


# --- CSF (lateral ventricle) reference and the report summary -----------------------------

VOXEL_SIZE = (2.5, 2.5, 2.5)


@pytest.fixture(scope="module")
def phantom_r2star():
    """Head phantom and an R2* map fitted to its noisy (SNR 30) multi-echo magnitude."""
    phantom = make_head_phantom(shape=(64, 76, 64), voxel_size=VOXEL_SIZE)
    echo_times = np.array([4.0, 9.0, 14.0, 19.0]) * 1e-3
    rng = np.random.default_rng(0)
    sigma = phantom.m0[phantom.brain_mask].mean() / 30.0
    signal = phantom.m0[..., None] * np.exp(-phantom.r2star_hz[..., None] * echo_times)
    magnitude = np.abs(signal + sigma * (rng.standard_normal(signal.shape)
                                         + 1j * rng.standard_normal(signal.shape)))
    # a brain mask as an automatic one would give: with the subarachnoid CSF around it
    brain_mask = phantom.brain_mask | (phantom.labels == phantom.label_index("subarachnoid_csf"))
    r2star, _ = r2star_loglinear(magnitude, echo_times, brain_mask)
    return phantom, r2star, brain_mask


def _ventricles(phantom, sides=("left", "right")):
    return np.isin(phantom.labels, [phantom.label_index(f"lateral_ventricle_{side}")
                                    for side in sides])


def test_csf_mask_finds_the_lateral_ventricles(phantom_r2star):
    phantom, r2star, brain_mask = phantom_r2star
    csf = csf_reference_mask(r2star, brain_mask, VOXEL_SIZE)
    truth = _ventricles(phantom)
    dice = 2 * (csf & truth).sum() / (csf.sum() + truth.sum())
    assert dice > 0.6
    assert not (csf & ~phantom.brain_mask).any()  # no subarachnoid CSF, nothing outside


def test_csf_mask_restricted_to_a_prior(phantom_r2star):
    phantom, r2star, brain_mask = phantom_r2star
    prior = np.where(_ventricles(phantom, ("left",)), 12, 0)
    csf = csf_reference_mask(r2star, brain_mask, VOXEL_SIZE, labels=prior)
    assert csf.any() and not (csf & ~_ventricles(phantom, ("left",))).any()


def test_no_ventricle_is_bad_data(phantom_r2star):
    phantom, r2star, brain_mask = phantom_r2star
    with pytest.raises(BadDataError, match="no plausible lateral ventricle"):
        csf_reference_mask(np.where(brain_mask, 20.0, 0.0), brain_mask, VOXEL_SIZE)
    with pytest.raises(BadDataError, match="no plausible lateral ventricle"):
        csf_reference_mask(r2star, brain_mask, VOXEL_SIZE, min_depth_mm=60.0)


def test_reference_summary_reports_csf_relative_to_whole_brain():
    susceptibility, brain, csf = _map_and_masks()
    susceptibility[csf] = -0.1 + 0.01 * np.random.default_rng(1).standard_normal(csf.sum())
    summary = reference_summary(susceptibility, brain, csf)
    assert summary["whole_brain_mean_ppm"] == pytest.approx(float(susceptibility[brain].mean()),
                                                            rel=1e-6)
    assert summary["csf_mean_ppm"] == pytest.approx(float(susceptibility[csf].mean()), rel=1e-6)
    assert summary["csf_sd_ppm"] == pytest.approx(float(susceptibility[csf].std()), rel=1e-5)
    assert summary["csf_mean_relative_to_whole_brain_ppm"] == pytest.approx(
        summary["csf_mean_ppm"] - summary["whole_brain_mean_ppm"])
    assert summary["csf_voxels"] == csf.sum() and summary["brain_voxels"] == brain.sum()
    shifted = reference_summary(susceptibility + 0.5, brain, csf)  # any referencing
    assert shifted["csf_mean_relative_to_whole_brain_ppm"] == pytest.approx(
        summary["csf_mean_relative_to_whole_brain_ppm"], abs=1e-6)
    with pytest.raises(BadDataError, match="empty"):
        reference_summary(susceptibility, brain, np.zeros_like(csf))
