"""Susceptibility referencing to a region mean."""

import numpy as np
import pytest

from qsmprep.errors import BadDataError
from qsmprep.qsm.referencing import reference_to_region_mean


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
