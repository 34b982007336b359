"""The nipype graph builds, and can be inspected, without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsmprep.bids.discovery import discover_runs
from qsmprep.cli.parser import parse_args
from qsmprep.phantom.dataset import PhantomSubject, write_phantom_dataset
from qsmprep.workflows.base import init_qsmprep_wf

GRID = {"shape": (24, 28, 24), "voxel_size": (4.0, 4.0, 4.0)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    bids_dir = tmp_path_factory.mktemp("graph") / "bids"
    write_phantom_dataset(bids_dir, [
        PhantomSubject(subject="01", **GRID),
        PhantomSubject(subject="01", session="2", **GRID),
        PhantomSubject(subject="02", suffix="T2starw", echo_times_s=(0.02,), **GRID),
    ])
    return bids_dir


def _graph(dataset, tmp_path, *options):
    config = parse_args([str(dataset), str(tmp_path / "out"), "participant",
                         "-w", str(tmp_path / "work"), *options])
    runs = discover_runs(dataset)
    return init_qsmprep_wf(config=config, runs=runs), config


def _node_names(workflow):
    return set(workflow.list_node_names())


def test_one_subworkflow_per_participant_and_run(dataset, tmp_path):
    workflow, config = _graph(dataset, tmp_path)
    names = _node_names(workflow)
    assert workflow.base_dir == config.execution.work_dir
    for run in ("sub_01_wf.run_sub_01_wf", "sub_01_wf.run_sub_01_ses_2_wf",
                "sub_02_wf.run_sub_02_wf"):
        for stage in ("load_echoes", "masking", "unwrapping", "echo_fit",
                      "background_removal", "inversion", "referencing"):
            assert f"{run}.qsm_wf.{stage}" in names
        assert f"{run}.ds_qsm_wf.ds_chimap" in names


def test_single_echo_run_has_no_relaxometry(dataset, tmp_path):
    names = _node_names(_graph(dataset, tmp_path)[0])
    assert "sub_01_wf.run_sub_01_wf.qsm_wf.r2star" in names
    assert not any(name.startswith("sub_02_wf") and ("r2star" in name or "t2star" in name)
                   for name in names)


def test_stage_options_reach_the_nodes(dataset, tmp_path):
    workflow, _ = _graph(dataset, tmp_path, "--inversion", "tkd", "--tkd-threshold", "0.2",
                         "--background-removal", "vsharp", "--vsharp-max-radius", "16",
                         "--omp-nthreads", "1")
    inversion = workflow.get_node("sub_01_wf.run_sub_01_wf.qsm_wf.inversion")
    assert inversion.inputs.method == "tkd" and inversion.inputs.tkd_threshold == 0.2
    assert inversion.n_procs == 1 and inversion.mem_gb > 0
    background = workflow.get_node("sub_01_wf.run_sub_01_wf.qsm_wf.background_removal")
    assert background.inputs.method == "vsharp"
    assert background.inputs.vsharp_max_radius_mm == 16.0
    sink = workflow.get_node("sub_01_wf.run_sub_01_wf.ds_qsm_wf.ds_chimap")
    stages = sink.inputs.metadata["QSMProcessing"]
    assert stages["DipoleInversion"] == {"Algorithm": "tkd", "Threshold": 0.2}
    # 4 mm voxels: steps of 4 mm
    assert stages["BackgroundFieldRemoval"]["RadiiMM"] == [16.0, 12.0, 8.0]


def test_user_masks_are_found_and_checked(dataset, tmp_path):
    import nibabel as nib
    import numpy as np

    from qsmprep.errors import BadDataError, MissingInputError
    from qsmprep.workflows.base import find_user_mask

    run = next(run for run in discover_runs(dataset) if run.subject == "01" and not run.session)
    masks = tmp_path / "masks" / "sub-01" / "anat"
    masks.mkdir(parents=True)
    with pytest.raises(MissingInputError, match="sub-01_desc-brain_mask.nii.gz"):
        find_user_mask(tmp_path / "masks", run)
    path = masks / "sub-01_desc-brain_mask.nii"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), path)
    with pytest.raises(BadDataError, match="shape"):
        find_user_mask(tmp_path / "masks", run)
    nib.save(nib.Nifti1Image(np.ones(run.shape, np.uint8), np.eye(4)), path)
    assert find_user_mask(tmp_path / "masks", run) == path
    assert find_user_mask("", run) is None


def test_registration_and_regions_follow_the_reconstruction(dataset, tmp_path):
    workflow, config = _graph(dataset, tmp_path, "--random-seed", "5", "--omp-nthreads", "1",
                              "--template-stats")
    names = _node_names(workflow)
    run = "sub_01_wf.run_sub_01_ses_2_wf"
    for node in ("registration_wf.prepare_magnitude", "registration_wf.register_to_template",
                 "registration_wf.registration_quality", "registration_wf.plot_registration",
                 "regions_wf.atlas_to_native", "regions_wf.chimap_to_template",
                 "regions_wf.regional_statistics", "regions_wf.template_regional_statistics",
                 "ds_regions_wf.ds_forward_transform", "ds_regions_wf.ds_inverse_transform",
                 "ds_regions_wf.ds_template_chimap", "ds_regions_wf.ds_native_dseg",
                 "ds_regions_wf.ds_regional_table", "ds_regions_wf.ds_template_regional_table",
                 "ds_regions_wf.ds_registration_figure", "report_wf.report_figures",
                 "report_wf.run_report", "report_wf.ds_qsm_figure"):
        assert f"{run}.anatomy_wf.{node}" in names
    register = workflow.get_node(f"{run}.anatomy_wf.registration_wf.register_to_template")
    assert register.inputs.seed == 5 and register.inputs.num_threads == 1
    assert register.n_procs == 1
    forward = workflow.get_node(f"{run}.anatomy_wf.ds_regions_wf.ds_forward_transform")
    assert forward.inputs.extra_entities == {"from": "MEGRE", "to": "MNI152NLin2009cAsym",
                                             "mode": "image"}
    stats = workflow.get_node(f"{run}.anatomy_wf.regions_wf.regional_statistics")
    assert stats.inputs.composites["globus_pallidus"] == ["globus_pallidus_externa",
                                                          "globus_pallidus_interna"]
    assert "sub_01_wf.subject_report_wf.write_report" in names
    # each participant's report states its own runs and echo counts
    methods = {subject: workflow.get_node(f"sub_{subject}_wf.{run_wf}.anatomy_wf.report_wf."
                                          "run_report").inputs.methods_markdown
               for subject, run_wf in (("01", "run_sub_01_wf"), ("02", "run_sub_02_wf"))}
    assert "2 gradient-echo run(s) with 4 echo(es)" in methods["01"]
    assert "1 gradient-echo run(s) with 1 echo(es)" in methods["02"]
    writer = workflow.get_node("sub_01_wf.subject_report_wf.write_report")
    assert writer.inputs.html_path.endswith("out/sub-01.html")
    assert [path.rsplit("/", 1)[1] for path in writer.inputs.json_paths] == [
        "sub-01_desc-cbs_report.json", "sub-01_ses-2_desc-cbs_report.json"]
    # the change over time across sessions goes beside the sessions, not inside one
    assert writer.inputs.longitudinal_path.endswith(
        "out/sub-01/anat/sub-01_desc-longitudinal_stats.tsv")
    # The atlas is built once, by one node feeding every run, while the graph runs: building
    # the graph writes no image into the work folder.
    assert "build_atlas" in names
    assert not list(Path(config.execution.work_dir).rglob("*.nii*"))


def test_qsm_only_builds_no_registration(dataset, tmp_path):
    names = _node_names(_graph(dataset, tmp_path, "--qsm-only")[0])
    assert not any("registration" in name or "regions" in name for name in names)


def test_register_via_t1w_uses_the_session_t1w(tmp_path):
    import shutil

    bids_dir = tmp_path / "bids"
    write_phantom_dataset(bids_dir, [PhantomSubject(subject="01", **GRID),
                                     PhantomSubject(subject="02", **GRID)])
    anat = bids_dir / "sub-01" / "anat"
    shutil.copy(anat / "sub-01_echo-1_part-mag_MEGRE.nii.gz", anat / "sub-01_T1w.nii.gz")
    workflow, config = _graph(bids_dir, tmp_path, "--register-via-t1w")
    assert config.workflow.register_via_t1w
    with_t1w = workflow.get_node("sub_01_wf.run_sub_01_wf.anatomy_wf.registration_wf.register_to_template")
    assert with_t1w.inputs.t1w == str(anat / "sub-01_T1w.nii.gz")
    without = workflow.get_node("sub_02_wf.run_sub_02_wf.anatomy_wf.registration_wf.register_to_template")
    from nipype.interfaces.base import isdefined

    assert not isdefined(without.inputs.t1w)
    plain, _ = _graph(bids_dir, tmp_path / "plain")
    direct = plain.get_node("sub_01_wf.run_sub_01_wf.anatomy_wf.registration_wf.register_to_template")
    assert not isdefined(direct.inputs.t1w)
