"""The methods boilerplate: a paragraph describing exactly what ran, with its citations.

Written to ``<output_dir>/logs/CITATION.md`` for every run, ready to paste into a paper.
"""

from __future__ import annotations

import re
from pathlib import Path

from .__about__ import __version__
from .qsm.pipeline import stage_parameters
from .stages import STAGES

CITATIONS = {
    "consensus": "QSM Consensus Organization Committee. Recommended implementation of "
    "quantitative susceptibility mapping for clinical research in the brain: a consensus of the "
    "ISMRM electro-magnetic tissue properties study group. Magn Reson Med. 2024;91:1834-1862. "
    "doi:10.1002/mrm.30006",
    "nipype": "Gorgolewski K, et al. Nipype: a flexible, lightweight and extensible neuroimaging "
    "data processing framework in Python. Front Neuroinform. 2011;5:13. "
    "doi:10.3389/fninf.2011.00013",
    "pybids": "Yarkoni T, et al. PyBIDS: Python tools for BIDS datasets. J Open Source Softw. "
    "2019;4(40):1294. doi:10.21105/joss.01294",
    "otsu": "Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man "
    "Cybern. 1979;9:62-66. doi:10.1109/TSMC.1979.4310076",
    "laplacian": "Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric "
    "applications. Opt Lett. 2003;28:1194-1196. doi:10.1364/OL.28.001194",
    "vsharp": "Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects "
    "spatial variation in tissue composition. NeuroImage. 2011;55:1645-1656. "
    "doi:10.1016/j.neuroimage.2010.11.088",
    "sharp": "Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic "
    "magnetic tissue properties using MRI signal phase. NeuroImage. 2011;54:2789-2807. "
    "doi:10.1016/j.neuroimage.2010.10.070",
    "pdf": "Liu T, Khalidov I, de Rochefort L, et al. A novel background field removal method "
    "for MRI using projection onto dipole fields (PDF). NMR Biomed. 2011;24:1129-1136. "
    "doi:10.1002/nbm.1670",
    "lbv": "Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the "
    "Laplacian boundary value problem. NMR Biomed. 2014;27:312-319. doi:10.1002/nbm.3064",
    "resharp": "Sun H, Wilman AH. Background field removal using spherical mean value "
    "filtering and Tikhonov regularization. Magn Reson Med. 2014;71:1151-1157. "
    "doi:10.1002/mrm.24765",
    "romeo": "Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid "
    "opensource minimum spanning tree algorithm (ROMEO). Magn Reson Med. 2021;85:2294-2308. "
    "doi:10.1002/mrm.28563",
    "complexfit": "Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field "
    "to source relationship for robust quantitative susceptibility mapping. Magn Reson Med. "
    "2013;69:467-476. doi:10.1002/mrm.24272",
    "csf": "Straub S, Schneider TM, Emmerich J, et al. Suitable reference tissues for "
    "quantitative susceptibility mapping of the brain. Magn Reson Med. 2017;78:204-214. "
    "doi:10.1002/mrm.26369",
    "arlo": "Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential fitting "
    "based on Auto-Regression on Linear Operations (ARLO) of data. Magn Reson Med. "
    "2015;73:843-850. doi:10.1002/mrm.25137",
    "tvadmm": "Bilgic B, Fan AP, Polimeni JR, et al. Fast quantitative susceptibility mapping "
    "with L1-regularization and automatic parameter selection. Magn Reson Med. "
    "2014;72:1444-1459. doi:10.1002/mrm.25029",
    "fansi": "Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear "
    "susceptibility inversion with variational regularization. Magn Reson Med. "
    "2018;80:814-821. doi:10.1002/mrm.27073",
    "tfi": "Liu Z, Kee Y, Zhou D, Wang Y, Spincemaille P. Preconditioned total field inversion "
    "(TFI) method for quantitative susceptibility mapping. Magn Reson Med. 2017;78:303-315. "
    "doi:10.1002/mrm.26331",
    "l2closedform": "Bilgic B, Chatnuntawech I, Fan AP, et al. Fast image reconstruction with "
    "L2-regularization. J Magn Reson Imaging. 2014;40:181-191. doi:10.1002/jmri.24365",
    "lcurve": "Hansen PC. Analysis of discrete ill-posed problems by means of the L-curve. SIAM "
    "Rev. 1992;34:561-580. doi:10.1137/1034115",
    "rts": "Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for "
    "susceptibility mapping with sparsity priors. NeuroImage. 2018;167:276-283. "
    "doi:10.1016/j.neuroimage.2017.11.018",
    "medi": "Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for "
    "quantitative susceptibility mapping using structural consistency between the magnitude "
    "image and the susceptibility map. NeuroImage. 2012;59:2560-2568. "
    "doi:10.1016/j.neuroimage.2011.08.082",
    "tkd": "Shmueli K, et al. Magnetic susceptibility mapping of brain tissue in vivo using MRI "
    "phase data. Magn Reson Med. 2009;62:1510-1522. doi:10.1002/mrm.22135",
    "tikhonov": "Kressler B, et al. Nonlinear regularization for per voxel estimation of magnetic "
    "susceptibility distributions from MRI field maps. IEEE Trans Med Imaging. 2010;29:273-281. "
    "doi:10.1109/TMI.2009.2023787",
    "r2star": "Veraart J, Sijbers J, Sunaert S, Leemans A, Jeurissen B. Weighted linear least "
    "squares estimation of diffusion MRI parameters: strengths, limitations, and pitfalls. "
    "NeuroImage. 2013;81:335-346 (the weighting used for the log-linear R2* fit). "
    "doi:10.1016/j.neuroimage.2013.05.028",
    "ants": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image "
    "registration with cross-correlation: evaluating automated labeling of elderly and "
    "neurodegenerative brain. Med Image Anal. 2008;12:26-41. doi:10.1016/j.media.2007.06.004",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Trans "
    "Med Imaging. 2010;29:1310-1320. doi:10.1109/TMI.2010.2046908",
    "rc2": "Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: a "
    "realistic in silico head phantom for MRI data simulation and evaluation of susceptibility "
    "mapping procedures. Magn Reson Med. 2021;86:526-542. doi:10.1002/mrm.28716",
    "harvardoxford": "Desikan RS, Segonne F, Fischl B, et al. An automated labeling system "
    "for subdividing the human cerebral cortex on MRI scans into gyral based regions of "
    "interest. NeuroImage. 2006;31:968-980. doi:10.1016/j.neuroimage.2006.01.021",
    "atropos": "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate "
    "framework for n-tissue segmentation with evaluation on public data. Neuroinformatics. "
    "2011;9:381-400. doi:10.1007/s12021-011-9109-y",
    "mni2009": "Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases "
    "for pediatric studies. NeuroImage. 2011;54:313-327. doi:10.1016/j.neuroimage.2010.07.033",
    "cit168": "Pauli WM, Nili AN, Tyszka JM. A high-resolution probabilistic in vivo atlas of "
    "human subcortical brain nuclei. Sci Data. 2018;5:180063. doi:10.1038/sdata.2018.63",
    "hcpthalamus": "Najdenovska E, Aleman-Gomez Y, Battistella G, et al. In-vivo probabilistic "
    "atlas of human thalamic nuclei based on diffusion-weighted magnetic resonance imaging. Sci "
    "Data. 2018;5:180270. doi:10.1038/sdata.2018.270",
    "juelich": "Eickhoff SB, Stephan KE, Mohlberg H, et al. A new SPM toolbox for combining "
    "probabilistic cytoarchitectonic maps and functional imaging data. NeuroImage. "
    "2005;25:1325-1335. doi:10.1016/j.neuroimage.2004.12.034",
    "harvardoxfordsub": "Makris N, Goldstein JM, Kennedy D, et al. Decreased volume of left "
    "and total anterior insular lobule in schizophrenia. Schizophr Res. 2006;83:155-171. "
    "doi:10.1016/j.schres.2005.11.020",
    "juelichtracts": "Buergel U, Amunts K, Hoemke L, et al. White matter fiber tracts of the "
    "human brain: three-dimensional mapping at microscopic resolution, topography and "
    "intersubject variability. NeuroImage. 2006;29:1092-1105. "
    "doi:10.1016/j.neuroimage.2005.08.040",
    "costagli": "Costagli M, Donatelli G, Biagi L, et al. Magnetic susceptibility in the deep "
    "layers of the primary motor cortex in amyotrophic lateral sclerosis. NeuroImage Clin. "
    "2016;12:965-969. doi:10.1016/j.nicl.2016.04.011",
}


def _cite(key):
    return f"[@{key}]"  # numbered in order of first appearance, see methods_boilerplate


def _entry_text(value):
    """A sidecar entry as the methods text says it (a list of radii as its range)."""
    if isinstance(value, (list, tuple)):
        return (f"{max(value):g} down to {min(value):g}" if len(value) > 1
                else f"{value[0]:g}")
    return value


def _stage_text(declared, workflow, block) -> str:
    """The methods sentence of one stage (:attr:`qsmprep.stages.Stage.methods`), filled in
    from the configuration and the stage's sidecar ``block``."""
    values = {key: _entry_text(value) for key, value in block.items()}
    for parameter in declared.parameters:
        value = getattr(workflow, parameter.field)
        values[parameter.field] = (
            parameter.methods_automatic or parameter.automatic
            if parameter.is_automatic(value) else parameter.methods.format(value=value))
    chosen = getattr(workflow, declared.name) if declared.choice_key else declared.default
    values["algorithm"] = declared.algorithm(chosen).methods.format(**values)
    return declared.methods.format(**values)


def _reconstruction_text(config, runs) -> str:
    """One sentence per stage, in the order they ran; a stage whose sentence differs between
    runs (radii that follow the voxel size) gets one per distinct sentence."""
    workflow = config.workflow
    blocks = [stage_parameters(workflow, run.voxel_size) for run in runs] or [
        stage_parameters(workflow, (1.0, 1.0, 1.0))]
    sentences = []
    for declared in STAGES:
        if declared.name == "masking" and config.execution.brain_mask_dir:
            sentences.append("Brain masks were supplied by the user.")
            continue
        if declared.disabled_by_zero and not getattr(workflow, declared.disabled_by_zero):
            continue
        sentences.extend(dict.fromkeys(
            _stage_text(declared, workflow, run_blocks[declared.sidecar])
            for run_blocks in blocks))
    return " ".join(sentences)


def _regions_text(config):
    workflow = config.workflow
    if workflow.atlas:
        atlas = f"a user-supplied atlas ({Path(workflow.atlas).name})"
    else:
        atlas = (f"the qsmprep atlas (CIT168 subcortical nuclei {_cite('cit168')}, the "
                 f"thalamus of the HCP thalamic nuclei atlas {_cite('hcpthalamus')}, lateral "
                 "ventricles from the template, the precentral gyrus of the Harvard-Oxford "
                 f"cortical atlas {_cite('harvardoxford')} and the primary motor and premotor "
                 f"areas of the Juelich cytoarchitectonic maps {_cite('juelich')}; the "
                 "hippocampus, midbrain and pons of the Harvard-Oxford subcortical atlas "
                 f"{_cite('harvardoxfordsub')}, the brain stem split at its pontomesencephalic "
                 "and pontomedullary junctions; its posterior cingulate, superior temporal, "
                 "superior parietal and superior frontal cortex; the cerebellar cortex outside "
                 "the Harvard-Oxford maps; the corticospinal tract and corpus callosum of the "
                 f"Juelich white-matter maps {_cite('juelichtracts')}; the cortical regions "
                 "measured on each participant's grey matter: Atropos "
                 f"{_cite('atropos')} tissue classes from the N4-corrected first-echo "
                 "magnitude with the MNI ICBM 2009 tissue priors; the precentral grey matter "
                 "also as a superficial and a deep half of its relative depth, where the iron "
                 f"of amyotrophic lateral sclerosis gathers {_cite('costagli')})")
    return (
        "The root-sum-of-squares magnitude of the echoes, bias-corrected (N4 " + _cite("n4")
        + ") and brain-extracted, was registered "
        + ("rigidly to the session's T1w image (where there was one), and the T1w "
           if workflow.register_via_t1w else "")
        + f"to the {workflow.template} template {_cite('mni2009')} with ANTs {_cite('ants')} "
        "(rigid, affine and symmetric normalisation, mutual information, random seed "
        f"{workflow.random_seed})."
        + (" The registration was then refined at the deep grey matter (pallidum, putamen, "
           "caudate, subthalamic nucleus, red nucleus, substantia nigra) by a symmetric "
           "normalisation of the Chimap to a template-space susceptibility prior (the atlas "
           "regions painted with healthy adult values " + _cite("rc2") + ", grey and white "
           "matter from the MNI ICBM 2009 probability maps), under neighbourhood "
           "cross-correlation on a box around the nuclei, the displacement tapered to zero "
           "at the box edges; a refinement that moved the nuclei by more than 5 mm or lowered "
           "the correlation with the prior was rejected."
           if workflow.nuclei_refinement else "")
        + f" The regions of {atlas} were brought to each run's native grid "
        "with the inverse transform and generic-label interpolation, keeping small nuclei. "
        "Regional susceptibility statistics (mean, median, SD, 5th and 95th percentiles, in "
        "ppb) were computed in native space inside the reconstruction mask, relative to the "
        "whole brain and to the lateral ventricles (CSF), for each hemisphere and both, with the "
        "asymmetry index 200 (R - L) / (R + L) and its absolute-value form "
        "200 (R - L) / (|R| + |L|), and the mean over each label's core (the label eroded by "
        "one voxel), which partial volume at its edges does not reach.")


def methods_boilerplate(*, config, runs) -> str:
    """Markdown text describing the processing of ``runs`` under ``config``, with references
    numbered in order of first appearance."""
    workflow = config.workflow
    echo_counts = sorted({len(run.echoes) for run in runs})
    strengths = sorted({run.field_strength_t for run in runs})
    paragraphs = [
        "## Methods",
        f"Quantitative susceptibility maps were reconstructed with qsmprep {__version__}, which "
        f"follows the 2024 ISMRM consensus recommendations {_cite('consensus')} and is built on "
        f"Nipype {_cite('nipype')}; input data were found with PyBIDS {_cite('pybids')}. "
        f"{len(runs)} gradient-echo run(s) with {', '.join(map(str, echo_counts))} echo(es) at "
        f"{', '.join(f'{value:g}' for value in strengths)} T were processed.",
        _reconstruction_text(config, runs),
        *([] if workflow.qsm_only else [_regions_text(config)]),
        "### References",
    ]
    body = "\n\n".join(paragraphs)
    cited = list(dict.fromkeys(re.findall(r"\[@(\w+)\]", body)))
    body = re.sub(r"\[@(\w+)\]", lambda match: f"[{cited.index(match.group(1)) + 1}]", body)
    references = [f"{index}. {CITATIONS[key]}" for index, key in enumerate(cited, start=1)]
    return body + "\n\n" + "\n".join(references) + "\n"


def write_boilerplate(logs_dir, *, config, runs) -> Path:
    """Write :func:`methods_boilerplate` to ``logs_dir/CITATION.md``; returns its path."""
    path = Path(logs_dir) / "CITATION.md"
    path.write_text(methods_boilerplate(config=config, runs=runs))
    return path
