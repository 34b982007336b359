"""The reconstruction chain on arrays (qsmprep.qsm.pipeline) and its one source of parameters."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.config import WorkflowConfig
from qsmprep.errors import BadDataError
from qsmprep.interfaces import qsm as interfaces
from qsmprep.phantom.head import make_head_phantom
from qsmprep.phantom.signal import simulate_multiecho_gre
from qsmprep.qsm import background, inversion, pipeline
from qsmprep.qsm.dipole import hz_to_ppm
from qsmprep.stages import stage

ECHO_TIMES_S = (0.004, 0.009, 0.014, 0.019)
INTERFACES = {"masking": interfaces.BrainMask, "unwrapping": interfaces.UnwrapPhase,
              "echo_fit": interfaces.FitEchoes, "quality_mask": interfaces.QualityMask,
              "background_removal": interfaces.RemoveBackground,
              "inversion": interfaces.InvertDipole, "r2star": interfaces.FitR2star,
              "referencing": interfaces.ReferenceSusceptibility}


@pytest.fixture(scope="module")
def acquisition():
    phantom = make_head_phantom(shape=(40, 48, 40), voxel_size=(4.0, 4.0, 4.0), seed=1)
    return simulate_multiecho_gre(phantom, echo_times_s=ECHO_TIMES_S, field_strength_t=3.0,
                                  snr=100, seed=1, workers=1)


def _reconstruct(acquisition, **options):
    return pipeline.reconstruct(acquisition.magnitude, acquisition.phase, ECHO_TIMES_S,
                                acquisition.voxel_size, acquisition.b0_direction, 3.0, **options)


def test_stage_arguments_follow_the_configuration_and_name_the_node_inputs():
    defaults = pipeline.stage_arguments(WorkflowConfig())
    assert tuple(defaults) == pipeline.STAGES
    for stage_name, arguments in defaults.items():
        inputs = INTERFACES[stage_name].input_spec().trait_names()
        assert set(arguments) <= set(inputs), stage_name
    assert defaults["background_removal"]["method"] == stage("background_removal").default
    assert defaults["inversion"]["tv_outside_weight"] == WorkflowConfig().tv_outside_weight
    assert WorkflowConfig().tv_outside_weight == inversion.DEFAULT_OUTSIDE_WEIGHT
    changed = WorkflowConfig(background_removal="vsharp", vsharp_max_radius_mm=8,
                             inversion="medi-l1", medi_regularization=5e-4, quality_threshold=0)
    arguments = pipeline.stage_arguments(changed)
    assert arguments["background_removal"]["vsharp_max_radius_mm"] == 8.0
    assert pipeline.vsharp_radii_for((2.0, 2.0, 2.0), largest_mm=8.0) == [8.0, 6.0, 4.0]
    assert arguments["inversion"]["medi_regularization"] == 5e-4
    assert arguments["quality_mask"] == {"quality_threshold": 0.0, "quality_tolerance": 10.0}


def test_default_chain_recovers_the_phantom(acquisition):
    result = _reconstruct(acquisition, workers=2)
    brain = acquisition.brain_mask
    assert set(result.stage_seconds) == set(pipeline.STAGES)
    assert not result.stage_peak_gb  # tracemalloc was not tracing
    assert result.chimap_ppm.dtype == np.float32
    assert not np.any(result.chimap_ppm[~result.local_field_mask])
    assert not np.any(result.local_field_mask & ~result.quality_mask)
    assert not np.any(result.quality_mask & ~result.brain_mask)
    covered = result.local_field_mask & brain
    assert covered.sum() > 0.9 * brain.sum()  # one 4 mm layer peeled by PDF
    truth = acquisition.susceptibility_ppm
    inner = ndimage.binary_erosion(result.local_field_mask, iterations=2)
    assert np.corrcoef(result.chimap_ppm[inner], truth[inner])[0, 1] > 0.95  # 0.988
    # whole-brain reference: mean 0 over the local-field mask, value recorded
    assert abs(result.chimap_ppm[result.local_field_mask].mean()) < 1e-6
    assert result.reference.metadata["ReferenceRegion"] == "whole-brain"
    assert result.r2star_hz is not None and result.t2star_s is not None


def test_reconstruct_runs_the_stage_functions_with_the_configured_parameters(acquisition):
    """reconstruct() is the stage functions chained: the same local field and susceptibility
    as calling them one after the other with stage_arguments()."""
    settings = WorkflowConfig(inversion="tkd", tkd_threshold=0.15)
    result = _reconstruct(acquisition, settings=settings)
    arguments = pipeline.stage_arguments(settings)
    local = pipeline.remove_background(
        result.echo_fit.total_field_hz, result.quality_mask, acquisition.voxel_size,
        acquisition.b0_direction, **arguments["background_removal"])
    np.testing.assert_array_equal(local.local_field_hz, result.local_field_hz)
    expected = inversion.tkd(hz_to_ppm(local.local_field_hz, 3.0), local.mask,
                             acquisition.voxel_size, acquisition.b0_direction, threshold=0.15)
    np.testing.assert_allclose(result.susceptibility_ppm, expected, atol=1e-7)


def test_user_mask_invalid_voxels_and_one_echo(acquisition):
    magnitude = acquisition.magnitude.copy()
    phase = acquisition.phase.copy()
    brain = acquisition.brain_mask
    centre = tuple(int(np.mean(i)) for i in np.nonzero(brain))
    phase[centre + (2,)] = np.nan
    result = pipeline.reconstruct(magnitude, phase, ECHO_TIMES_S, acquisition.voxel_size,
                                  acquisition.b0_direction, 3.0, brain_mask=brain)
    assert not result.brain_mask[centre] and result.brain_mask.sum() == brain.sum() - 1
    assert np.isfinite(result.chimap_ppm).all()
    single = pipeline.reconstruct(magnitude[..., 1], acquisition.phase[..., 1],
                                  ECHO_TIMES_S[1:2], acquisition.voxel_size,
                                  acquisition.b0_direction, 3.0,
                                  settings=WorkflowConfig(unwrapping="laplacian"))
    assert single.r2star_hz is None and np.isfinite(single.chimap_ppm).all()
    with pytest.raises(ValueError, match="echo times"):
        pipeline.reconstruct(magnitude, phase, ECHO_TIMES_S[:2], acquisition.voxel_size,
                             acquisition.b0_direction, 3.0)


def test_stage_functions_reject_unknown_methods_and_missing_inputs(acquisition):
    field = np.zeros(acquisition.brain_mask.shape, np.float32)
    arguments = pipeline.stage_arguments(WorkflowConfig())
    with pytest.raises(ValueError, match="unknown background"):
        pipeline.remove_background(field, acquisition.brain_mask, acquisition.voxel_size,
                                   acquisition.b0_direction,
                                   **{**arguments["background_removal"], "method": "sharp"})
    with pytest.raises(ValueError, match="unknown dipole"):
        pipeline.invert_dipole(field, acquisition.brain_mask, acquisition.voxel_size,
                               acquisition.b0_direction, 3.0,
                               **{**arguments["inversion"], "method": "ndi"})
    with pytest.raises(ValueError, match="wrapped phase"):
        pipeline.fit_echoes(acquisition.phase, acquisition.magnitude, ECHO_TIMES_S,
                            acquisition.brain_mask, method="nonlinear")
    with pytest.raises(BadDataError):
        pipeline.reference_susceptibility(field, acquisition.brain_mask, acquisition.voxel_size,
                                          method="csf")


@pytest.mark.parametrize("stage_name, name",
                         [("background_removal", name)
                          for name in stage("background_removal").choices[1:]]
                         + [("inversion", name) for name in stage("inversion").choices[1:]])
def test_every_choice_runs(acquisition, stage_name, name):
    settings = dataclasses.replace(WorkflowConfig(), **{stage_name: name})
    result = _reconstruct(acquisition, settings=settings, workers=2)
    inner = ndimage.binary_erosion(result.local_field_mask, iterations=2)
    truth = acquisition.susceptibility_ppm
    assert np.corrcoef(result.chimap_ppm[inner], truth[inner])[0, 1] > 0.6


def test_pdf_default_peel_is_recorded_in_the_sidecar_parameters():
    parameters = pipeline.stage_parameters(WorkflowConfig(), (1.0, 1.0, 1.0))
    assert parameters["BackgroundFieldRemoval"] == {"Algorithm": "pdf",
                                                    "PeeledVoxels": background.PDF_PEEL_VOXELS,
                                                    "RimOutlierLimitSD":
                                                        background.RIM_OUTLIER_LIMIT}
    assert parameters["DipoleInversion"]["OutsideMaskWeight"] == WorkflowConfig().tv_outside_weight
