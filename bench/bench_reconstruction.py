"""Speed, memory and accuracy of each reconstruction stage on the simulated head phantom.

Runs the default chain with :func:`qsmprep.qsm.pipeline.reconstruct` (the stage functions the
workflow's nodes call, without nipype's overhead) on the phantom at the chosen resolution, then
the main alternatives of the background removal and inversion on the same inputs, and prints
Markdown tables for the README:

    python bench/bench_reconstruction.py --voxel-size 1.0 --workers 2

Accuracy is measured against the phantom's ground truth where the final reconstruction mask
overlaps the true brain:
demeaned NRMSE (%), Pearson correlation, and the slope of the deep grey-matter regional means
(measured over true). Memory is the peak of Python/numpy allocations during the stage
(tracemalloc), time is wall-clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import tracemalloc

import numpy as np

from qsmprep.config import WorkflowConfig
from qsmprep.phantom.head import make_head_phantom
from qsmprep.phantom.signal import oblique_affine, simulate_multiecho_gre
from qsmprep.qsm import pipeline

#: Stage names of the table, in the order the chain runs them.
STAGE_NAMES = {"masking": "brain mask", "unwrapping": "unwrapping (ROMEO + temporal)",
               "echo_fit": "echo fit", "quality_mask": "phase-quality mask",
               "background_removal": "background removal (PDF)",
               "inversion": "dipole inversion (TV-ADMM)", "r2star": "R2* (log-linear)",
               "referencing": "referencing (whole brain, CSF found)"}

FIELD_OF_VIEW_MM = (160.0, 192.0, 160.0)
DEEP_GREY_MATTER = ("caudate", "putamen", "globus_pallidus", "thalamus", "substantia_nigra",
                    "red_nucleus", "dentate_nucleus")


def _measure(rows, name, function, *args, **kwargs):
    tracemalloc.start()
    started = time.perf_counter()
    result = function(*args, **kwargs)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append((name, elapsed, peak / 1024**3))
    return result


def accuracy(estimate, truth, mask, phantom):
    """Demeaned NRMSE (%), correlation and deep grey-matter slope inside ``mask``."""
    estimate_in = estimate[mask] - estimate[mask].mean()
    truth_in = truth[mask] - truth[mask].mean()
    nrmse = 100 * np.linalg.norm(estimate_in - truth_in) / np.linalg.norm(truth_in)
    correlation = np.corrcoef(estimate_in, truth_in)[0, 1]
    true_means, measured_means = [], []
    for index, name in phantom.label_names.items():
        region = (phantom.labels == index) & mask
        if name.rsplit("_", 1)[0] in DEEP_GREY_MATTER and region.sum() > 3:
            true_means.append(truth[region].mean())
            measured_means.append(estimate[region].mean())
    slope = np.polyfit(true_means, measured_means, 1)[0]
    return nrmse, correlation, slope


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=2.0, help="isotropic voxel (mm)")
    parser.add_argument("--workers", type=int, default=2, help="FFT threads")
    parser.add_argument("--rotation", type=float, default=0.0,
                        help="obliquity about the left-right axis (degrees)")
    parser.add_argument("--snr", type=float, default=100.0)
    opts = parser.parse_args(argv)

    voxel_size = (opts.voxel_size,) * 3
    shape = tuple(int(round(fov / opts.voxel_size)) for fov in FIELD_OF_VIEW_MM)
    echo_times = (0.004, 0.009, 0.014, 0.019)
    started = time.perf_counter()
    phantom = make_head_phantom(shape=shape, voxel_size=voxel_size, seed=1)
    affine = oblique_affine(shape=shape, voxel_size=voxel_size,
                            rotation_deg=(opts.rotation, 0.0, 0.0))
    acquisition = simulate_multiecho_gre(phantom, echo_times_s=echo_times, affine=affine,
                                         snr=opts.snr, seed=1, workers=opts.workers)
    simulation_s = time.perf_counter() - started
    b0, workers = acquisition.b0_direction, opts.workers

    settings = WorkflowConfig()
    tracemalloc.start()
    started = time.perf_counter()
    result = pipeline.reconstruct(acquisition.magnitude, acquisition.phase, echo_times,
                                  voxel_size, b0, acquisition.field_strength_t,
                                  settings=settings, workers=workers)
    chain_s = time.perf_counter() - started
    tracemalloc.stop()
    chain_peak_gb = max(result.stage_peak_gb.values())
    rows = [(STAGE_NAMES[stage], seconds, result.stage_peak_gb[stage])
            for stage, seconds in result.stage_seconds.items()]

    def arguments(stage, **choices):
        changed = dataclasses.replace(settings, **choices)
        return pipeline.stage_arguments(changed)[stage]

    alternatives = []
    vsharp_removal = _measure(
        alternatives, "V-SHARP", pipeline.remove_background, result.echo_fit.total_field_hz,
        result.quality_mask, voxel_size, b0, workers=workers,
        **arguments("background_removal", background_removal="vsharp"))
    inversion_inputs = (result.local_field_hz, result.local_field_mask, voxel_size, b0,
                        acquisition.field_strength_t)
    tikhonov = _measure(alternatives, "iterative Tikhonov", pipeline.invert_dipole,
                        *inversion_inputs, workers=workers,
                        **arguments("inversion", inversion="tikhonov"))
    tkd = _measure(alternatives, "TKD", pipeline.invert_dipole, *inversion_inputs,
                   workers=workers, **arguments("inversion", inversion="tkd"))
    truth = acquisition.susceptibility_ppm
    print(f"Phantom {shape[0]}x{shape[1]}x{shape[2]} at {opts.voxel_size:g} mm, "
          f"{len(echo_times)} echoes, SNR {opts.snr:g}, obliquity {opts.rotation:g} deg, "
          f"{workers} FFT threads; simulation {simulation_s:.1f} s\n")
    print("| Stage (default chain) | Time (s) | Peak memory (GB) |\n|---|---|---|")
    for name, seconds, gigabytes in rows:
        print(f"| {name} | {seconds:.2f} | {gigabytes:.2f} |")
    print(f"| **default chain** | **{chain_s:.2f}** | **{chain_peak_gb:.2f}** |\n")
    print("| Alternative | Time (s) | Peak memory (GB) |\n|---|---|---|")
    for name, seconds, gigabytes in alternatives:
        print(f"| {name} | {seconds:.2f} | {gigabytes:.2f} |")
    print()

    local_truth = acquisition.local_field_hz
    region = result.local_field_mask & acquisition.brain_mask  # the truth is in the brain only
    vsharp_region = vsharp_removal.mask & acquisition.brain_mask
    print("| Output | NRMSE (%) | Correlation | Deep GM slope |\n|---|---|---|---|")
    for name, estimate, reference, scored in (
            ("local field (PDF)", result.local_field_hz, local_truth, region),
            ("local field (V-SHARP, its own mask)", vsharp_removal.local_field_hz, local_truth,
             vsharp_region),
            ("susceptibility, TV-ADMM (default chain)", result.chimap_ppm, truth, region),
            ("susceptibility, iterative Tikhonov", tikhonov.susceptibility_ppm, truth, region),
            ("susceptibility, TKD", tkd.susceptibility_ppm, truth, region)):
        nrmse, correlation, slope = accuracy(estimate, reference, scored, phantom)
        slope_text = f"{slope:.2f}" if "susceptibility" in name else "-"
        print(f"| {name} | {nrmse:.1f} | {correlation:.3f} | {slope_text} |")
    coverage = region.sum() / acquisition.brain_mask.sum()
    outside = (result.local_field_mask & ~acquisition.brain_mask).sum() / (
        result.local_field_mask.sum())
    print(f"\nThe reconstruction mask covers {100 * coverage:.1f} % of the true brain; "
          f"{100 * outside:.1f} % of it lies outside (subarachnoid CSF, inner skull surface).")


if __name__ == "__main__":
    main()
