"""Regional susceptibility of the digital subject through the CLI, against its ground truth.

The digital subject of ``tests/integration/test_digital_subject.py`` (made in template space from the
atlas, moved into a native space by a known rotation, translation and smooth deformation, then
simulated) is run through ``qsmprep bids out participant``; for every region and hemisphere
the table gives

* ``truth``: the mean of the true map over the true native labels (ppb relative to CSF);
* ``measured``: the recovered mean (``desc-regions_stats.tsv``, CSF reference) and its error;
* ``dice``: overlap of the propagated native labels with the true native labels;
* ``true|ours``: the mean of the TRUE map over OUR labels (inside the reconstruction mask) and
  its error: what the label placement alone costs, whatever the reconstruction;
* ``ok``: within 15 ppb or 15 % of the truth;
* ``median`` error: the same for the recovered median, which a label misplaced by a voxel
  at the edge of a nucleus moves far less than the mean.

    python bench/bench_regions.py --voxel-size 2 --keep /tmp/regions2
    python bench/bench_regions.py --voxel-size 2 --reuse /tmp/regions2   # tables only
    python bench/bench_regions.py --voxel-size 2 --reuse /tmp/regions2 --rerun-registration

``--reuse`` skips the simulation when the dataset exists and the run when its outputs exist;
``--rerun-registration`` keeps the dataset and the reconstruction but recomputes the
registration and the labels with the current :mod:`qsmprep.registration` (fast, for comparing
registration settings; the measured column then keeps the old run's values unless the run is
repeated). With ``--oracle-template`` that registration targets, instead of the T1w template,
the digital subject's own echo-combined magnitude drawn in template space (the subject's
contrast without noise or field effects), to show what a template with the magnitude's
contrast would change. The machine's load average is printed beside the timings (the cores
are shared).
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.phantom.dataset import asymmetric_digital_subject, write_phantom_dataset
from qsmprep.regions import read_regional_table

PREFIX = "sub-01/anat/sub-01"
SIDES = {"left": "L", "right": "R"}


def load_average() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def ideal_labels(base: Path, voxel_mm: float) -> np.ndarray:
    """The atlas placed on the native grid by the TRUE transform (nearest neighbour in the 1 mm
    atlas): what a perfect registration would give. Cached as ``ideal_dseg.nii.gz``."""
    cached = base / "ideal_dseg.nii.gz"
    if cached.exists():
        return np.asarray(nib.load(cached).dataobj).astype(int)
    from qsmprep.phantom.dataset import simulate_template_subject

    subject = asymmetric_digital_subject(voxel_mm)
    _, affine, _, transform = simulate_template_subject(subject, workers=2)
    atlas_image = nib.load(_node_input(_find(base / "work", "atlas_to_native"), "labels"))
    atlas = np.asarray(atlas_image.dataobj).astype(np.int16)
    shape = transform.displacement_mm.shape[1:]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = transform.native_to_template(nib.affines.apply_affine(affine, ijk))
    index = np.rint(nib.affines.apply_affine(np.linalg.inv(atlas_image.affine), world)).astype(int)
    inside = np.all((index >= 0) & (index < atlas.shape), axis=1)
    labels = np.zeros(len(ijk), np.int16)
    labels[inside] = atlas[tuple(index[inside].T)]
    labels = labels.reshape(shape)
    nib.save(nib.Nifti1Image(labels, affine), cached)
    return labels.astype(int)


def simulate(bids: Path, voxel_mm: float, workers: int) -> float:
    subject = asymmetric_digital_subject(voxel_mm)
    start = time.perf_counter()
    write_phantom_dataset(bids, [subject], workers=workers)
    return time.perf_counter() - start


def run_participant(base: Path, nprocs: int) -> float:
    command = [str(Path(sys.executable).with_name("qsmprep")), str(base / "bids"),
               str(base / "out"), "participant", "-w", str(base / "work"), "--nprocs",
               str(nprocs), "--omp-nthreads", str(nprocs)]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        sys.exit(f"qsmprep failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return elapsed


def _label_names(tsv: Path) -> dict[int, str]:
    with tsv.open() as stream:
        return {int(row["index"]): row["name"] for row in csv.DictReader(stream, delimiter="\t")}


def _split(name: str):
    for suffix, side in SIDES.items():
        if name.endswith("_" + suffix):
            return name[: -len(suffix) - 1], side
    return None


def _find(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    if not found:
        sys.exit(f"no {pattern} under {folder}")
    return found[-1]


def oracle_template(folder: Path) -> tuple[str, str]:
    """The digital subject's echo-combined magnitude (root sum of squares of M0 exp(-R2* TE)
    over its echo times) and brain mask in template space, brain-extracted and scaled as
    :func:`qsmprep.registration.prepare_moving_image` scales the moving image."""
    from qsmprep.phantom.template_head import make_template_phantom

    subject = asymmetric_digital_subject()  # its regional values and echoes; grid unused
    phantom, affine = make_template_phantom(
        voxel_size_mm=1.0, region_susceptibility_ppb=subject.region_susceptibility_ppb,
        seed=subject.seed)
    magnitude = np.sqrt(sum(np.square(phantom.m0 * np.exp(-phantom.r2star_hz * echo_time))
                            for echo_time in subject.echo_times_s))
    brain = phantom.brain_mask
    magnitude = np.clip(magnitude / np.percentile(magnitude[brain], 99.5), 0, 1) * brain
    image, mask = str(folder / "oracle_template.nii.gz"), str(folder / "oracle_mask.nii.gz")
    nib.save(nib.Nifti1Image(magnitude.astype(np.float32), affine), image)
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), mask)
    return image, mask


def rerun_registration(base: Path, threads: int, overrides: dict, echo: str | None,
                       oracle: bool = False) -> float:
    """Registration and label transfer again, on the inputs of the last run's registration
    node, with the current :mod:`qsmprep.registration` and ``overrides`` of its settings; the
    new labels replace ``desc-qsmprep_dseg.nii.gz`` in the output folder. ``echo``: build a
    3-D magnitude first (``first``, ``rss``: root sum of squares of the echoes, ``last``, or an
    echo number) instead of passing the 4-D magnitude. ``oracle``: register to
    :func:`oracle_template` instead of the T1w template."""
    from qsmprep import registration

    work = base / "work"
    prepared_node = _find(work, "prepare_magnitude")
    register_node = _find(work, "register_to_template")
    labels_node = _find(work, "atlas_to_native")
    magnitude = _node_input(prepared_node, "magnitude")
    mask = _node_input(prepared_node, "mask")
    template = _node_input(register_node, "template")
    template_mask = _node_input(register_node, "template_mask")
    seed = _node_input(register_node, "seed")
    atlas = _node_input(labels_node, "labels")
    reference = _node_input(labels_node, "reference")
    folder = Path(tempfile.mkdtemp(prefix="rereg_", dir=base))
    settings = registration.RegistrationSettings(
        **{**registration.dataclasses.asdict(registration.DEFAULT_SETTINGS), **overrides})
    if oracle:
        template, template_mask = oracle_template(folder)
    start = time.perf_counter()
    if echo is not None:
        image = nib.load(magnitude)
        data = np.abs(np.asarray(image.dataobj, dtype=np.float32))
        if echo == "rss":
            combined = np.sqrt(np.sum(data**2, axis=-1))
        elif echo == "first":
            combined = data[..., 0]
        elif echo == "last":
            combined = data[..., -1]
        else:
            combined = data[..., int(echo)]
        magnitude = str(folder / "magnitude.nii.gz")
        nib.save(nib.Nifti1Image(combined, image.affine), magnitude)
    prepared = registration.prepare_moving_image(magnitude, mask, folder / "prepared.nii.gz")
    result = registration.register_to_template(
        prepared, template, out_prefix=str(folder / "native2template_"),
        template_mask_path=template_mask, moving_mask_path=mask, threads=threads, seed=seed,
        settings=settings)
    elapsed = time.perf_counter() - start
    out = base / "out" / f"{PREFIX}_desc-qsmprep_dseg.nii.gz"
    registration.labels_to_native(atlas, reference, result.inverse_transform, out)
    target = "oracle template" if oracle else "T1w template"
    print(f"settings {overrides} echo {echo}, {target}: preparation + registration "
          f"{elapsed:.1f} s ({load_average()})")
    shutil.copy(result.log, base / "last_registration_log.txt")
    shutil.rmtree(folder)
    return elapsed


def _node_input(node: Path, name: str) -> str:
    import gzip
    import pickle  # nipype's own record of the node's inputs

    with gzip.open(next(node.glob("_inputs.pklz")), "rb") as stream:
        inputs = pickle.load(stream)
    return inputs[name]


def table(base: Path, voxel_mm: float) -> list[dict]:
    out, truth_dir = base / "out", base / "bids" / "derivatives" / "qsmprep-phantom" / "sub-01" / "anat"
    with (truth_dir / "sub-01_desc-truth_regions.tsv").open() as stream:
        truth = {(row["region"], row["hemisphere"]): float(row["mean_native_ppb"])
                 for row in csv.DictReader(stream, delimiter="\t")}
    rows = read_regional_table(out / f"{PREFIX}_desc-regions_stats.tsv")
    measured = {(r["region"], r["hemisphere"]): r["mean_ppb"] for r in rows
                if r["reference"] == "csf"}
    medians = {(r["region"], r["hemisphere"]): r["median_ppb"] for r in rows
               if r["reference"] == "csf"}
    true_chi = 1e3 * nib.load(truth_dir / "sub-01_Chimap.nii.gz").get_fdata()
    true_labels = np.asarray(nib.load(truth_dir / "sub-01_dseg.nii.gz").dataobj).astype(int)
    our_labels = np.asarray(nib.load(out / f"{PREFIX}_desc-qsmprep_dseg.nii.gz").dataobj
                            ).astype(int)
    mask = nib.load(out / f"{PREFIX}_desc-localfield_mask.nii.gz").get_fdata() > 0.5
    ideal = ideal_labels(base, voxel_mm)
    true_index = {_split(n): i for i, n in _label_names(truth_dir / "sub-01_dseg.tsv").items()
                  if _split(n)}
    with (out / f"{PREFIX}_desc-qsmprep_dseg.tsv").open() as stream:
        our_index = {(row["name"], row["hemisphere"]): int(row["index"])
                     for row in csv.DictReader(stream, delimiter="\t")}
    result = []
    for (region, side), value in sorted(truth.items()):
        if region == "lateral_ventricle" or (region, side) not in our_index:
            continue
        ours = our_labels == our_index[(region, side)]
        theirs = true_labels == true_index[(region, side)]
        dice = 2 * np.sum(ours & theirs) / max(1, ours.sum() + theirs.sum())
        inside = ours & mask
        true_over_ours = float(true_chi[inside].mean()) if inside.any() else float("nan")
        perfect = (ideal == our_index[(region, side)]) & mask
        true_over_ideal = float(true_chi[perfect].mean()) if perfect.any() else float("nan")
        got = measured.get((region, side), float("nan"))
        median = medians.get((region, side), float("nan"))
        tolerance = max(15.0, 0.15 * abs(value))
        result.append({"region": region, "side": side, "truth": value, "measured": got,
                       "error": got - value, "dice": dice, "true_over_ours": true_over_ours,
                       "registration_error": true_over_ours - value,
                       "ideal_error": true_over_ideal - value,
                       "dice_ideal": 2 * np.sum(ours & (ideal == our_index[(region, side)]))
                       / max(1, ours.sum() + np.sum(ideal == our_index[(region, side)])),
                       "ok": abs(got - value) <= tolerance,
                       "median_error": median - value,
                       "ok_median": abs(median - value) <= tolerance,
                       "ok_registration": abs(true_over_ours - value) <= tolerance,
                       "n_ours": int(ours.sum()), "n_truth": int(theirs.sum())})
    return result


def print_table(rows: list[dict]) -> None:
    print("| region | side | truth | measured | error | ok | median error | median ok | dice "
          "| true\\|ours | reg. error | reg. ok | voxels ours/truth | dice vs ideal "
          "| ideal error |")
    print("|---|---|---:|---:|---:|:-:|---:|:-:|---:|---:|---:|:-:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['region']} | {r['side']} | {r['truth']:.0f} | {r['measured']:.0f} | "
              f"{r['error']:+.0f} | {'y' if r['ok'] else 'NO'} | {r['median_error']:+.0f} | "
              f"{'y' if r['ok_median'] else 'NO'} | {r['dice']:.2f} | "
              f"{r['true_over_ours']:.0f} | {r['registration_error']:+.0f} | "
              f"{'y' if r['ok_registration'] else 'NO'} | {r['n_ours']}/{r['n_truth']} | "
              f"{r['dice_ideal']:.2f} | {r['ideal_error']:+.0f} |")
    dice = np.array([r["dice"] for r in rows])
    reg = np.array([abs(r["registration_error"]) for r in rows])
    dice_ideal = np.array([r["dice_ideal"] for r in rows])
    print(f"\nmean Dice {dice.mean():.3f}, min {dice.min():.2f}; mean |registration error| "
          f"{reg.mean():.1f} ppb; mean Dice vs ideal labels {dice_ideal.mean():.3f}; failing: measured {sum(not r['ok'] for r in rows)}, "
          f"median {sum(not r['ok_median'] for r in rows)}, "
          f"registration only {sum(not r['ok_registration'] for r in rows)} of {len(rows)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=2.0, choices=(1.0, 2.0))
    parser.add_argument("--nprocs", type=int, default=2)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", type=Path, help="work in this folder and keep it")
    group.add_argument("--reuse", type=Path, help="reuse the dataset and outputs found here")
    parser.add_argument("--rerun-registration", action="store_true",
                        help="recompute the registration and labels only (with --reuse)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="registration setting for --rerun-registration (Python literal)")
    parser.add_argument("--echo", help="3-D magnitude for --rerun-registration: first, rss, "
                        "last or an echo index (default: as the pipeline does)")
    parser.add_argument("--oracle-template", action="store_true",
                        help="--rerun-registration to the subject's own template-space magnitude")
    arguments = parser.parse_args(argv)

    base = arguments.reuse or arguments.keep or Path(tempfile.mkdtemp(prefix="bench_regions_"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"{arguments.voxel_size:g} mm digital subject in {base} ({load_average()})")
    if not (arguments.reuse and (base / "bids" / "dataset_description.json").exists()):
        shutil.rmtree(base / "bids", ignore_errors=True)
        print(f"simulation: {simulate(base / 'bids', arguments.voxel_size, 2):.1f} s")
    stats = base / "out" / f"{PREFIX}_desc-regions_stats.tsv"
    if not (arguments.reuse and stats.exists()):
        for folder in ("out", "work"):
            shutil.rmtree(base / folder, ignore_errors=True)
        elapsed = run_participant(base, arguments.nprocs)
        print(f"participant run: {elapsed:.1f} s ({load_average()})")
        log = sorted((base / "work").rglob("native2template_log.txt"))
        if log:
            print(f"registration log: {log[-1]}")
    elif arguments.rerun_registration:
        overrides = {}
        for item in arguments.set:
            name, value = item.split("=", 1)
            overrides[name] = ast.literal_eval(value)
        rerun_registration(base, arguments.nprocs, overrides, arguments.echo,
                           arguments.oracle_template)
    print()
    print_table(table(base, arguments.voxel_size))
    if not (arguments.keep or arguments.reuse):
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
