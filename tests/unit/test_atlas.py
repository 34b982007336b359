"""The qsmprep atlas: shipped files, their recipe, the run-time cortex, templates, user atlases."""

import nibabel as nb
import numpy as np
import pytest

from qsmprep.atlases import (
    TEMPLATE_DIR,
    COMPOSITE_REGIONS,
    CORTICAL_REGIONS,
    OPEN_LABELS_NAME,
    OPEN_TABLE_NAME,
    TEMPLATE,
    TEMPLATE_MASK_NAME,
    TEMPLATE_T1W_NAME,
    infer_hemisphere,
    load_atlas,
    load_user_atlas,
    read_atlas_table,
    template_files,
)
from qsmprep.errors import UsageError

TEMPLATE_SHAPE = (193, 229, 193)
TEMPLATE_AFFINE = np.array([[1, 0, 0, -96], [0, 1, 0, -132], [0, 0, 1, -78], [0, 0, 0, 1]],
                           float)

# Plausible volumes per hemisphere (mm^3), generous around MRI and atlas values in the
# literature (the atlas labels are somewhat larger than individual manual segmentations).
VOLUME_RANGES_MM3 = {
    "putamen": (3000, 10000),
    "caudate": (2500, 9000),
    "globus_pallidus_externa": (500, 2500),
    "globus_pallidus_interna": (200, 1500),
    "subthalamic_nucleus": (50, 300),
    "red_nucleus": (150, 600),
    "substantia_nigra_compacta": (150, 800),
    "substantia_nigra_reticulata": (150, 800),
    "thalamus": (5000, 15000),
    "lateral_ventricle": (2000, 30000),
    # the cortex spans the whole cortical thickness in template space (restricted to each
    # participant's grey matter in native space); the precentral gyrus (Harvard-Oxford at
    # 50 %) holds about 10 mL a side, most of BA4 lies in the central sulcus' bank behind it
    "precentral_ba4": (600, 15000),
    "precentral_ba6": (3000, 30000),
    "precentral_other": (1500, 30000),
    "ba4_outside_precentral": (3000, 20000),
    "ba6_outside_precentral": (10000, 60000),
    # the regions of the wider differential diagnosis (run time); the midbrain leaves out the
    # nuclei it holds (substantia nigra, red nucleus, subthalamic nucleus), the tracts and the
    # cerebellar cortex are the template's white and grey matter only
    "hippocampus": (2500, 6000),
    "midbrain": (1000, 6000),
    "pons": (5000, 15000),
    "cerebellar_cortex": (40000, 90000),
    "corticospinal_tract": (3000, 25000),
    "corpus_callosum": (5000, 30000),
    "posterior_cingulate": (3000, 15000),
    "superior_temporal_gyrus": (2000, 15000),
    "superior_parietal_lobule": (5000, 20000),
    "superior_frontal_gyrus": (8000, 30000),
}
#: Regions merged at run time that are not cortical (measured on all their voxels).
RUN_TIME_REGIONS = ("hippocampus", "midbrain", "pons", "corticospinal_tract", "corpus_callosum")


@pytest.fixture(scope="module")
def full_atlas(tmp_path_factory):
    """The full atlas from load_atlas: (labels path, table path, labels array, table rows)."""
    labels_path, table_path = load_atlas(tmp_path_factory.mktemp("atlas"))
    labels = np.asarray(nb.load(labels_path).dataobj)
    return labels_path, table_path, labels, read_atlas_table(table_path)


@pytest.fixture(scope="module")
def region_geometry(full_atlas):
    """{(name, hemisphere): (voxel count, centroid in world mm)} of the full atlas."""
    _, _, labels, rows = full_atlas
    geometry = {}
    for row in rows:
        voxels = np.argwhere(labels == row["index"])
        centroid = voxels.mean(axis=0) + TEMPLATE_AFFINE[:3, 3] if len(voxels) else None
        geometry[row["name"], row["hemisphere"]] = (len(voxels), centroid)
    return geometry


def _union_centroid(geometry, names, hemisphere):
    counts = np.array([geometry[name, hemisphere][0] for name in names], float)
    centroids = np.array([geometry[name, hemisphere][1] for name in names])
    return (counts[:, None] * centroids).sum(axis=0) / counts.sum()


# --- shipped files and their recipe ---------------------------------------------------------

def test_recipe_reproduces_shipped_files(tmp_path):
    from qsmprep.atlases.build import main

    assert main(["--output", str(tmp_path)]) == 0
    for name in (TEMPLATE_T1W_NAME, TEMPLATE_MASK_NAME, OPEN_LABELS_NAME):
        shipped = nb.load(TEMPLATE_DIR / name)
        rebuilt = nb.load(tmp_path / name)
        assert rebuilt.get_data_dtype() == shipped.get_data_dtype(), name
        np.testing.assert_array_equal(rebuilt.affine, shipped.affine, err_msg=name)
        np.testing.assert_array_equal(np.asarray(rebuilt.dataobj), np.asarray(shipped.dataobj),
                                      err_msg=name)
    assert (tmp_path / OPEN_TABLE_NAME).read_text() == (TEMPLATE_DIR / OPEN_TABLE_NAME).read_text()


def test_shipped_files_are_on_the_template_grid():
    for name in (TEMPLATE_T1W_NAME, TEMPLATE_MASK_NAME, OPEN_LABELS_NAME):
        image = nb.load(TEMPLATE_DIR / name)
        assert image.shape == TEMPLATE_SHAPE
        np.testing.assert_array_equal(image.affine, TEMPLATE_AFFINE)
    for name in (TEMPLATE_T1W_NAME, TEMPLATE_MASK_NAME, OPEN_LABELS_NAME):
        with open(TEMPLATE_DIR / name, "rb") as gzipped:
            header = gzipped.read(8)
        assert header[4:8] == b"\0\0\0\0", f"{name}: gzip modification time is not 0"


def test_open_table_lists_the_open_regions_and_licences():
    rows = read_atlas_table(TEMPLATE_DIR / OPEN_TABLE_NAME)
    assert [row["index"] for row in rows] == list(range(1, 21))
    names = {row["name"] for row in rows}
    assert names == set(VOLUME_RANGES_MM3) - set(CORTICAL_REGIONS) - set(RUN_TIME_REGIONS)
    for row in rows:
        assert row["hemisphere"] == ("L" if row["index"] % 2 else "R")
        assert row["source"] and row["licence"]
        assert "non-commercial" not in row["licence"]
    labels = np.asarray(nb.load(TEMPLATE_DIR / OPEN_LABELS_NAME).dataobj)
    assert set(np.unique(labels)) == set(range(21))


def test_composite_regions_are_made_of_atlas_regions():
    names = {row["name"] for row in read_atlas_table(TEMPLATE_DIR / OPEN_TABLE_NAME)}
    assert set(COMPOSITE_REGIONS) == {"globus_pallidus", "substantia_nigra", "motor_cortex",
                                      "primary_motor_cortex", "premotor_cortex",
                                      "frontoparietal_cortex"}
    for parts in COMPOSITE_REGIONS.values():
        assert set(parts) <= names | set(CORTICAL_REGIONS)
    # the motor cortex is the precentral gyrus; BA4 and BA6 are split by it
    assert set(COMPOSITE_REGIONS["motor_cortex"]) == {
        name for name in CORTICAL_REGIONS if name.startswith("precentral_")}
    assert TEMPLATE == "MNI152NLin2009cAsym"


# --- the full atlas ---------------------------------------------------------------------------

def test_full_atlas_adds_the_run_time_regions(full_atlas):
    labels_path, table_path, labels, rows = full_atlas
    assert labels_path.parent == table_path.parent
    assert [row["index"] for row in rows] == list(range(1, 51))
    cortical = [row for row in rows if row["name"] in CORTICAL_REGIONS]
    assert {(row["name"], row["hemisphere"]) for row in cortical} == {
        (name, side) for name in CORTICAL_REGIONS for side in "LR"}
    assert all("Juelich" in row["source"] and "Harvard-Oxford" in row["source"]
               for row in cortical if row["name"].startswith(("precentral", "ba")))
    run_time = [row for row in rows if row["index"] > 20]
    assert all("non-commercial" in row["licence"] for row in run_time)
    assert {row["name"] for row in run_time} == set(CORTICAL_REGIONS) | set(RUN_TIME_REGIONS)
    open_labels = np.asarray(nb.load(TEMPLATE_DIR / OPEN_LABELS_NAME).dataobj)
    labelled_open = open_labels > 0
    np.testing.assert_array_equal(labels[labelled_open], open_labels[labelled_open])
    mask = np.asarray(nb.load(TEMPLATE_DIR / TEMPLATE_MASK_NAME).dataobj) > 0
    assert not np.any(labels[~mask])


def _probability_stack(tmp_path, maps, names):
    """A 4D probability atlas (percent) in Fortran order, as FSL writes them, and its names."""
    maps_path = tmp_path / "maps.nii.gz"
    nb.save(nb.Nifti1Image(np.stack(maps, axis=3).astype(np.uint8), np.eye(4)), maps_path)
    names_path = tmp_path / "names.csv"
    names_path.write_text("index,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    return maps_path, names_path


def test_maximum_probability_matches_a_voxelwise_argmax(tmp_path):
    """Codes where a listed structure is the most probable one (first on ties, excluded maps
    left out) and reaches the threshold; checked against a plain per-voxel reference."""
    from qsmprep.atlases.build import maximum_probability

    rng = np.random.default_rng(3)
    maps = [rng.integers(0, 60, (9, 8, 7)) for _ in range(5)]
    maps[1][0, 0, 0] = maps[3][0, 0, 0] = 55  # a tie between two listed structures
    maps[0][0, 0, 0] = 10
    maps[2][0, 0, 0] = maps[4][0, 0, 0] = 0
    names = ["Precentral", "Postcentral", "Thalamus", "Frontal", "Occipital"]
    maps_path, names_path = _probability_stack(tmp_path, maps, names)
    structures = {"Postcentral": 7, "Frontal": 9}
    for threshold in (25, 50):
        codes, _ = maximum_probability(maps_path, names_path, structures,
                                       threshold_percent=threshold, exclude=("Thalamus",))
        competing = [0, 1, 3, 4]
        stack = np.stack([maps[i] for i in competing], axis=3)
        winner = np.argmax(stack, axis=3)
        highest = np.max(stack, axis=3)
        code_of = np.array([structures.get(names[i], 0) for i in competing])
        expected = np.where(highest >= threshold, code_of[winner], 0)
        np.testing.assert_array_equal(codes, expected)
        assert codes[0, 0, 0] == 7  # the first of the tied maps
        assert 0 < np.count_nonzero(codes) < codes.size


def test_load_atlas_again_leaves_the_files_alone(full_atlas):
    labels_path, table_path, _, _ = full_atlas
    modified_before = (labels_path.stat().st_mtime_ns, table_path.stat().st_mtime_ns)
    assert load_atlas(labels_path.parent) == (labels_path, table_path)
    assert (labels_path.stat().st_mtime_ns, table_path.stat().st_mtime_ns) == modified_before


@pytest.mark.parametrize("name", sorted(VOLUME_RANGES_MM3))
def test_region_in_both_hemispheres_with_plausible_volume(region_geometry, name):
    low, high = VOLUME_RANGES_MM3[name]
    for hemisphere in "LR":
        count, centroid = region_geometry[name, hemisphere]
        assert low <= count <= high, f"{name} {hemisphere}: {count} mm^3"
        assert (centroid[0] < 0) == (hemisphere == "L"), f"{name} {hemisphere} at x={centroid[0]}"
    left, right = region_geometry[name, "L"][0], region_geometry[name, "R"][0]
    assert max(left, right) / min(left, right) < 1.6


@pytest.mark.parametrize("hemisphere", ["L", "R"])
def test_regions_are_in_their_anatomical_order(region_geometry, hemisphere):
    def centroid(name):
        return region_geometry[name, hemisphere][1]

    pallidum = _union_centroid(region_geometry, COMPOSITE_REGIONS["globus_pallidus"], hemisphere)
    nigra = _union_centroid(region_geometry, COMPOSITE_REGIONS["substantia_nigra"], hemisphere)
    assert abs(centroid("putamen")[0]) > abs(pallidum[0])  # putamen lateral to the pallidum
    assert abs(centroid("globus_pallidus_externa")[0]) > abs(centroid("globus_pallidus_interna")[0])
    assert nigra[2] < centroid("red_nucleus")[2]  # substantia nigra below the red nucleus
    assert centroid("subthalamic_nucleus")[2] > nigra[2]
    motor = _union_centroid(region_geometry, COMPOSITE_REGIONS["motor_cortex"], hemisphere)
    primary = _union_centroid(region_geometry, COMPOSITE_REGIONS["primary_motor_cortex"],
                              hemisphere)
    premotor = _union_centroid(region_geometry, COMPOSITE_REGIONS["premotor_cortex"], hemisphere)
    assert motor[2] > centroid("putamen")[2] + 30
    assert primary[1] < premotor[1]  # area 4 behind area 6
    assert primary[1] < motor[1] < premotor[1]  # the gyrus holds the back of 6 and most of 4
    assert centroid("lateral_ventricle")[2] > centroid("thalamus")[2]
    assert abs(centroid("caudate")[0]) < abs(centroid("putamen")[0])
    # the wider differential diagnosis
    assert centroid("midbrain")[2] > centroid("pons")[2]
    assert centroid("pons")[2] < nigra[2] < centroid("midbrain")[2] + 5
    assert centroid("hippocampus")[2] < centroid("thalamus")[2]
    assert abs(centroid("hippocampus")[0]) > abs(centroid("thalamus")[0])
    assert centroid("cerebellar_cortex")[1] < centroid("pons")[1] - 20  # behind the stem
    assert centroid("cerebellar_cortex")[2] < centroid("thalamus")[2] - 20
    assert centroid("corpus_callosum")[2] > centroid("thalamus")[2]
    assert abs(centroid("corpus_callosum")[0]) < abs(centroid("caudate")[0]) + 5
    assert centroid("corticospinal_tract")[2] > centroid("pons")[2]
    assert centroid("superior_frontal_gyrus")[1] > centroid("superior_parietal_lobule")[1] + 50
    assert abs(centroid("superior_temporal_gyrus")[0]) > 45
    assert centroid("posterior_cingulate")[1] < centroid("thalamus")[1]


# --- templates --------------------------------------------------------------------------------

def _fake_templateflow(home, files=("T1w", "mask")):
    """A TemplateFlow home as TemplateFlow lays it out, holding some of the template's files."""
    template_dir = home / f"tpl-{TEMPLATE}"
    template_dir.mkdir(parents=True)
    (home / "dataset_description.json").write_text('{"Name": "TemplateFlow", '
                                                   '"BIDSVersion": "1.1.1"}')
    names = {"T1w": TEMPLATE_T1W_NAME, "mask": TEMPLATE_MASK_NAME}
    for role in files:
        (template_dir / names[role]).write_bytes(b"not a real image")
    return {role: template_dir / names[role] for role in files}


def test_templateflow_files_are_used_when_present(tmp_path, monkeypatch):
    fake = _fake_templateflow(tmp_path)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    assert template_files() == fake


def test_shipped_template_without_complete_templateflow_folder(tmp_path, monkeypatch):
    shipped = {"T1w": TEMPLATE_DIR / TEMPLATE_T1W_NAME, "mask": TEMPLATE_DIR / TEMPLATE_MASK_NAME}
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    assert template_files() == shipped
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    assert template_files() == shipped
    _fake_templateflow(tmp_path, files=("T1w",))
    assert template_files() == shipped
    assert all(path.is_file() for path in shipped.values())


def test_unknown_template_names_the_choices():
    with pytest.raises(UsageError, match="MNI152NLin2009cAsym") as raised:
        template_files("MNI152NLin6Asym")
    assert "MNI152NLin6Asym" in str(raised.value)


# --- tables and user atlases ------------------------------------------------------------------

@pytest.mark.parametrize("name, hemisphere", [
    ("putamen_L", "L"), ("Putamen_R", "R"), ("Left-Putamen", "L"), ("right_caudate", "R"),
    ("ctx-lh-precentral", "L"), ("pu_rh", "R"), ("thalamus left", "L"),
    ("brainstem", "bilateral"), ("vermis_VI", "bilateral"), ("L_and_R", "bilateral"),
])
def test_hemisphere_inferred_from_name(name, hemisphere):
    assert infer_hemisphere(name) == hemisphere


def test_table_without_hemisphere_column(tmp_path):
    table = tmp_path / "atlas.tsv"
    table.write_text("index\tname\n0\tbackground\n1\tputamen_L\n2\tputamen_R\n3\tpons\n")
    assert read_atlas_table(table) == [
        {"index": 1, "name": "putamen_L", "hemisphere": "L"},
        {"index": 2, "name": "putamen_R", "hemisphere": "R"},
        {"index": 3, "name": "pons", "hemisphere": "bilateral"},
    ]


def _write_labels(path, data, affine=TEMPLATE_AFFINE):
    nb.Nifti1Image(data, affine).to_filename(path)
    return path


def _template_grid_labels(*values):
    data = np.zeros(TEMPLATE_SHAPE, np.int16)
    for offset, value in enumerate(values):
        data[90 + offset, 120, 80] = value
    return data


def test_user_atlas_on_the_template_grid_is_accepted():
    labels = TEMPLATE_DIR / OPEN_LABELS_NAME
    table = TEMPLATE_DIR / OPEN_TABLE_NAME
    assert load_user_atlas(labels, table) == (labels, table)


def test_user_atlas_table_missing_a_column(tmp_path):
    labels = _write_labels(tmp_path / "labels.nii", _template_grid_labels(1))
    table = tmp_path / "regions.tsv"
    table.write_text("index\tregion\n1\tputamen_L\n")
    with pytest.raises(UsageError, match="regions.tsv.*name"):
        load_user_atlas(labels, table)


def test_user_atlas_label_missing_from_table(tmp_path):
    labels = _write_labels(tmp_path / "labels.nii", _template_grid_labels(1, 2, 7))
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\n1\tputamen_L\n2\tputamen_R\n")
    with pytest.raises(UsageError, match=r"labels\.nii.*\b7\b.*no row"):
        load_user_atlas(labels, table)


def test_user_atlas_4d_image(tmp_path):
    labels = _write_labels(tmp_path / "labels4d.nii", np.zeros((8, 8, 8, 2), np.int16))
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\n1\tputamen_L\n")
    with pytest.raises(UsageError, match="labels4d.nii.*3D"):
        load_user_atlas(labels, table)


def test_user_atlas_with_fractional_values(tmp_path):
    data = _template_grid_labels(1).astype(np.float32)
    data[0, 0, 0] = 0.5
    labels = _write_labels(tmp_path / "probabilities.nii", data)
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\n1\tputamen_L\n")
    with pytest.raises(UsageError, match="probabilities.nii.*integer"):
        load_user_atlas(labels, table)


def test_user_atlas_off_the_template_grid(tmp_path):
    shifted = TEMPLATE_AFFINE.copy()
    shifted[0, 3] += 2
    labels = _write_labels(tmp_path / "shifted.nii", _template_grid_labels(1), shifted)
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\n1\tputamen_L\n")
    with pytest.raises(UsageError, match="shifted.nii.*grid"):
        load_user_atlas(labels, table)


def test_user_atlas_bad_index(tmp_path):
    labels = _write_labels(tmp_path / "labels.nii", _template_grid_labels(1))
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\none\tputamen_L\n")
    with pytest.raises(UsageError, match="regions.tsv.*line 2"):
        load_user_atlas(labels, table)


def test_user_atlas_missing_file(tmp_path):
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\n1\tputamen_L\n")
    with pytest.raises(UsageError, match="absent.nii"):
        load_user_atlas(tmp_path / "absent.nii", table)
    with pytest.raises(UsageError, match="absent.tsv"):
        load_user_atlas(tmp_path / "labels.nii", tmp_path / "absent.tsv")



def test_brain_stem_junctions_on_a_stem_with_a_pontine_bulge():
    """A column whose front edge steps 6 mm forward over 20 slices (the pons) and comes back
    4 mm lower down (the medulla): the two junctions are the first bulging slice and the last
    one within 5 mm of the bulge's front."""
    from qsmprep.atlases.build import TEMPLATE_AFFINE, TEMPLATE_SHAPE, brain_stem_junctions

    stem = np.zeros(TEMPLATE_SHAPE, bool)
    x = slice(90, 102)
    stem[x, 100:110, 60:90] = True      # midbrain: front edge at y index 109
    stem[x, 100:116, 35:60] = True      # pons: 6 mm further forward
    stem[x, 100:113, 34] = True         # its lower edge, 3 mm back: still pons
    stem[x, 100:108, 20:34] = True      # medulla: 8 mm behind the pons' front
    upper, lower = brain_stem_junctions(stem)
    z0 = TEMPLATE_AFFINE[2, 3]
    assert upper == z0 + 59 and lower == z0 + 34
    with pytest.raises(Exception, match="pontine bulge"):
        brain_stem_junctions(np.broadcast_to(stem[:, :, 70:71], TEMPLATE_SHAPE).copy())
