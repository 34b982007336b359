"""The textured phantom: real-brain-like structure on top of the analytic head."""

import numpy as np

from qsmprep.phantom.head import VEIN_SUSCEPTIBILITY_PPM, make_head_phantom
from qsmprep.phantom.textured import add_texture, multiscale_texture


def test_multiscale_texture_is_normalised_and_seeded():
    rng = np.random.default_rng(3)
    texture = multiscale_texture((20, 24, 20), (2.0, 2.0, 2.0), rng=rng)
    assert abs(float(texture.mean())) < 1e-5 and abs(float(texture.std()) - 1.0) < 1e-4
    again = multiscale_texture((20, 24, 20), (2.0, 2.0, 2.0), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(texture, again)


def test_texture_changes_the_brain_only_and_keeps_region_means():
    phantom = make_head_phantom(shape=(40, 48, 40), voxel_size=(4.0, 4.0, 4.0), seed=1)
    textured = add_texture(phantom, seed=1)
    change = textured.susceptibility_ppm - phantom.susceptibility_ppm
    brain = phantom.brain_mask
    assert not np.any(change[~brain])
    assert np.mean(np.abs(change[brain]) > 1e-6) > 0.9  # texture nearly everywhere
    white = phantom.labels == phantom.label_index("white_matter")
    assert textured.susceptibility_ppm[white].std() > 0.01  # no longer one value
    assert abs(float(change[white].mean())) < 0.01  # about the same mean
    assert np.any(np.isclose(textured.susceptibility_ppm[brain], VEIN_SUSCEPTIBILITY_PPM))
    assert textured.susceptibility_ppm[brain].max() > 0.5  # a microbleed
    assert textured.susceptibility_ppm[brain].min() < -0.25  # a calcification
    np.testing.assert_array_equal(textured.m0, phantom.m0)
    np.testing.assert_array_equal(add_texture(phantom, seed=1).susceptibility_ppm,
                                  textured.susceptibility_ppm)
