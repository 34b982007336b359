"""The reconstruction stages, each declared once.

Every stage of the QSM chain is one :class:`Stage` of :data:`STAGES`: its name, its
algorithms (the first is the default) and its parameters, with their types, defaults, units,
command-line flags, help, sidecar keys and citations. Everything else is generated from these
declarations, so a parameter is added in one place:

- the configuration fields (:class:`qsmprep.config.WorkflowConfig`): the stage's name holds
  the chosen algorithm, each parameter its :attr:`Parameter.field`;
- the command-line options (``dest`` = the configuration field) and the Boutiques inputs
  (:mod:`qsmprep.cli.parser`, :mod:`qsmprep.cli.docs`);
- the keyword arguments of the stage functions and the inputs of their nipype interfaces
  (:func:`qsmprep.qsm.pipeline.stage_arguments`, :mod:`qsmprep.interfaces.qsm`): a stage
  function takes ``method`` and one keyword per parameter, named after the field;
- the ``QSMProcessing`` block of every sidecar (:func:`qsmprep.qsm.pipeline.stage_parameters`);
- the methods text (:mod:`qsmprep.boilerplate`) and the README's algorithm table.

One name per stage everywhere: the stage's :attr:`Stage.name` is its configuration field, its
command-line option (``--`` + the name with hyphens), its node in the workflow and its key in
:func:`~qsmprep.qsm.pipeline.stage_arguments`; :attr:`Stage.sidecar` is the key of its block
in the sidecars (kept from the published sidecar format).

Methods templates are ``str.format`` strings: ``{algorithm}`` is the chosen algorithm's
phrase, ``{<field>}`` a parameter's phrase (its value, ``:g``-formatted, or the text of
:attr:`Parameter.methods`), and ``{<SidecarKey>}`` any entry of the stage's sidecar block;
``[@key]`` cites an entry of :data:`qsmprep.boilerplate.CITATIONS`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One tunable value of a stage."""

    field: str
    """Configuration field, command-line ``dest``, stage-function keyword and interface input."""
    flag: str
    """Command-line option."""
    default: float | int
    """Default value; its type (``float`` or ``int``) is the parameter's type."""
    title: str
    """Short name (Boutiques, README)."""
    help: str
    """What it does, for ``--help`` (lower case, no final full stop)."""
    sidecar: str | None
    """Key in the stage's sidecar block; None when it is reported through a derived value."""
    algorithms: tuple[str, ...] = ()
    """The algorithms that use it; empty for all of the stage's algorithms."""
    unit: str = ""
    metavar: str | None = None
    minimum: float = 0.0
    """Lower bound of a value given on the command line."""
    minimum_inclusive: bool = False
    maximum: float | None = None
    """Upper bound (exclusive) of a value given on the command line, if any."""
    automatic: str = ""
    """What the default 0 stands for (0 is then "choose automatically"); "" when 0 is not
    special."""
    methods: str = "{value:g}"
    """Phrase of the methods text for a value that is set."""
    methods_automatic: str = ""
    """Phrase of the methods text for the automatic default."""

    @property
    def type(self) -> type:
        return type(self.default)

    def is_automatic(self, value) -> bool:
        return bool(self.automatic) and not value

    @property
    def full_help(self) -> str:
        """The help with its unit and, for an automatic default, what that default is."""
        text = self.help + (f", in {self.unit}" if self.unit else "")
        return text + (f" (default: {self.automatic})" if self.automatic else "")

    @property
    def option_name(self) -> str:
        """``--tv-lambda`` -> ``TV_LAMBDA`` (argparse's metavar, Boutiques' value-key)."""
        return option_name(self.flag)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One choice of a stage."""

    name: str
    summary: str
    """One line for the README's algorithm table."""
    methods: str
    """Phrase of the methods text (see the module docstring)."""
    citations: tuple[str, ...] = ()
    """Keys of :data:`qsmprep.boilerplate.CITATIONS`."""
    sidecar_notes: tuple[tuple[str, str], ...] = ()
    """Fixed descriptive entries of the sidecar block when this algorithm runs."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the reconstruction chain."""

    name: str
    title: str
    sidecar: str
    """Key of the stage's block in the ``QSMProcessing`` sidecar entry."""
    help: str
    algorithms: tuple[Algorithm, ...]
    methods: str
    """Sentence of the methods text; ``{algorithm}`` is the chosen algorithm's phrase."""
    parameters: tuple[Parameter, ...] = ()
    function: str = ""
    """Name of the stage's array function in :mod:`qsmprep.qsm.pipeline`."""
    interface: str = ""
    """Name of the stage's nipype interface in :mod:`qsmprep.interfaces.qsm`."""
    choice_key: str | None = "Algorithm"
    """Sidecar key of the chosen algorithm; None for a stage with no choice to make (then it
    has no configuration field or option of its own either)."""
    aliases: tuple[str, ...] = ()
    """Older spellings of the stage's option, still accepted."""
    disabled_by_zero: str | None = None
    """A parameter whose value 0 turns the stage off (the methods text then omits it)."""
    sidecar_notes: tuple[tuple[str, str], ...] = ()
    """Fixed descriptive entries of the sidecar block, whatever the algorithm."""

    @property
    def flag(self) -> str | None:
        return f"--{self.name.replace('_', '-')}" if self.choice_key else None

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(algorithm.name for algorithm in self.algorithms)

    @property
    def default(self) -> str:
        return self.algorithms[0].name

    def algorithm(self, name: str) -> Algorithm:
        for algorithm in self.algorithms:
            if algorithm.name == name:
                return algorithm
        raise ValueError(f"unknown {self.title.lower()} algorithm {name!r}: "
                         f"choose one of {', '.join(self.choices)}")

    def parameters_of(self, algorithm: str) -> tuple[Parameter, ...]:
        """The parameters that ``algorithm`` uses."""
        return tuple(parameter for parameter in self.parameters
                     if not parameter.algorithms or algorithm in parameter.algorithms)


def option_name(flag: str) -> str:
    """``--tv-lambda`` -> ``TV_LAMBDA``."""
    return flag.lstrip("-").upper().replace("-", "_")


_GRADIENT_WEIGHTS = (("GradientWeights", "magnitude edges in any echo"),)

#: The stages, in the order :func:`qsmprep.qsm.pipeline.reconstruct` runs them.
STAGES: tuple[Stage, ...] = (
    Stage(
        name="masking", title="Brain mask", sidecar="Masking",
        help="brain mask from the magnitude",
        function="compute_brain_mask", interface="BrainMask",
        methods="A brain mask was computed from the first-echo magnitude with {algorithm}.",
        algorithms=(Algorithm(
            "magnitude-threshold",
            summary="first-echo magnitude, Otsu threshold, opening, deepest connected "
            "component, closing, hole filling; non-finite inputs removed",
            methods="{mask_threshold}, morphological opening, selection of the connected "
            "component holding the deepest voxel, closing and hole filling; voxels with "
            "non-finite input were excluded",
            citations=("otsu",)),),
        parameters=(Parameter(
            "mask_threshold", "--mask-threshold", 0.0, title="Mask threshold",
            help="magnitude threshold as a fraction of the 99th percentile",
            sidecar="Threshold",
            automatic="automatic (Otsu; 0.1 in a field of view with almost no background)",
            methods="a threshold of {value:g} of the 99th percentile",
            methods_automatic="Otsu's automatic threshold [@otsu] (a tenth of the 99th "
            "percentile where the field of view held almost no background)"),),
    ),
    Stage(
        name="unwrapping", title="Unwrapping", sidecar="Unwrapping",
        help="phase unwrapping algorithm",
        function="unwrap_phase", interface="UnwrapPhase",
        methods="The phase of the first echo, and the phase difference between the first two "
        "echoes, were unwrapped spatially with {algorithm}; later echoes were unwrapped "
        "temporally against the line through the earlier ones.",
        algorithms=(
            Algorithm("romeo",
                      summary="ROMEO-style quality-guided region growing (edge weights from "
                      "phase coherence, gradient coherence with the second echo, magnitude); "
                      "exact: unwrapped - wrapped is a multiple of 2 pi",
                      methods="a ROMEO-style quality-guided region-growing algorithm [@romeo]",
                      citations=("romeo",)),
            Algorithm("laplacian",
                      summary="Laplacian (FFT), snapped to the nearest 2-pi-congruent phase",
                      methods="a Laplacian-based algorithm [@laplacian] snapped to the nearest "
                      "2-pi-congruent phase",
                      citations=("laplacian",)),
        ),
    ),
    Stage(
        name="echo_fit", title="Echo combination", sidecar="EchoCombination",
        help="echo combination into the total field (Hz)",
        function="fit_echoes", interface="FitEchoes",
        sidecar_notes=(("Weights", "magnitude squared"),),
        methods="Echoes were combined by a magnitude-weighted least-squares fit of the "
        "unwrapped phase over echo time, with an intercept absorbing the phase offset"
        "{algorithm}, giving the total field in Hz and a map of the fit residual.",
        algorithms=(
            Algorithm("weighted-linear",
                      summary="magnitude^2-weighted linear fit of phase over TE with intercept "
                      "-> total field (Hz), phase offset, residual",
                      methods="", citations=("consensus",)),
            Algorithm("nonlinear",
                      summary="the weighted linear fit refined by a nonlinear fit of the "
                      "complex signal (Gauss-Newton)",
                      methods=", refined by a nonlinear fit of the complex signal "
                      "[@complexfit] started from it",
                      citations=("complexfit",)),
        ),
    ),
    Stage(
        name="quality_mask", title="Phase-quality mask", sidecar="PhaseQualityMasking",
        help="drop voxels of poor phase quality from the mask",
        function="refine_mask", interface="QualityMask", choice_key=None,
        disabled_by_zero="quality_threshold",
        sidecar_notes=(("Quality", "1 - echo-fit residual / (ResidualTolerance x median "
                        "residual)"),),
        methods="Voxels whose phase quality, 1 - echo-fit residual / ({quality_tolerance} x "
        "median residual), was below {quality_threshold} were removed from the mask "
        "({algorithm}).",
        algorithms=(Algorithm(
            "echo-fit-residual",
            summary="drop voxels whose echo-fit residual is large against the median "
            "(quality below the threshold), keep the deepest component, fill holes",
            methods="phase-quality masking", citations=("consensus",)),),
        parameters=(Parameter(
            "quality_threshold", "--quality-threshold", 0.5, title="Phase quality threshold",
            help="drop mask voxels whose phase quality (from the echo-fit residual, in "
            "[0, 1]) is below Q; 0 disables it",
            sidecar="Threshold", metavar="Q", minimum_inclusive=True, maximum=1.0),
            Parameter("quality_tolerance", "--quality-tolerance", 10.0,
                      title="Phase quality tolerance",
                      help="echo-fit residual, in medians over the mask, at which the phase "
                      "quality reaches 0", sidecar="ResidualTolerance"),
        ),
    ),
    Stage(
        name="background_removal", title="Background removal",
        sidecar="BackgroundFieldRemoval", help="background field removal",
        function="remove_background", interface="RemoveBackground", aliases=("--bg-removal",),
        methods="Background fields were removed with {algorithm}.",
        algorithms=(
            Algorithm("pdf",
                      summary="projection onto dipole fields: a fit of dipole sources outside "
                      "the mask (CG, on the mask's bounding box plus 12 mm), leaving out the "
                      "voxels of the mask edge whose field does not continue the field inside",
                      methods="projection onto dipole fields (PDF) [@pdf], leaving out the "
                      "voxels of the mask's outer layer whose field departed from the mean of "
                      "their deeper neighbours by more than {RimOutlierLimitSD:g} robust "
                      "standard deviations of that departure one layer deeper",
                      citations=("pdf",)),
            Algorithm("vsharp",
                      summary="V-SHARP: spherical mean value filtering with shrinking spheres, "
                      "truncated deconvolution",
                      methods="V-SHARP [@vsharp][@sharp] (spherical kernels of {RadiiMM} mm, "
                      "truncation threshold {vsharp_threshold})",
                      citations=("vsharp", "sharp")),
            Algorithm("resharp",
                      summary="RESHARP: spherical mean value filtering with Tikhonov "
                      "regularisation",
                      methods="RESHARP [@resharp] (spherical kernel of {RadiusMM:g} mm, "
                      "Tikhonov weight {resharp_regularization})",
                      citations=("resharp",)),
            Algorithm("lbv",
                      summary="Laplacian boundary value method, after peeling about 2 mm of "
                      "mask edge",
                      methods="the Laplacian boundary value method (LBV) [@lbv], after peeling "
                      "{PeeledVoxels} voxel layer(s) from the mask edge",
                      citations=("lbv",)),
        ),
        parameters=(
            Parameter("vsharp_max_radius_mm", "--vsharp-max-radius", 0.0,
                      title="V-SHARP largest radius", unit="mm", metavar="MM",
                      help="largest V-SHARP sphere radius", sidecar=None,
                      algorithms=("vsharp",), automatic="24 mm, or 12 voxel edges if larger"),
            Parameter("vsharp_min_radius_mm", "--vsharp-min-radius", 0.0,
                      title="V-SHARP smallest radius", unit="mm", metavar="MM",
                      help="smallest V-SHARP sphere radius; radii step by whole voxel edges, "
                      "about 12 of them",
                      sidecar=None, algorithms=("vsharp",), automatic="2 voxel edges"),
            Parameter("vsharp_threshold", "--vsharp-threshold", 0.05,
                      title="V-SHARP threshold",
                      help="truncation threshold of the V-SHARP deconvolution",
                      sidecar="Threshold", algorithms=("vsharp",)),
            Parameter("resharp_radius_mm", "--resharp-radius", 0.0, title="RESHARP radius",
                      unit="mm", metavar="MM", help="RESHARP sphere radius", sidecar=None,
                      algorithms=("resharp",), automatic="2 voxel edges"),
            Parameter("resharp_regularization", "--resharp-lambda", 1e-3,
                      title="RESHARP regularisation",
                      help="RESHARP Tikhonov regularisation weight",
                      sidecar="Regularization", algorithms=("resharp",)),
        ),
    ),
    Stage(
        name="inversion", title="Dipole inversion", sidecar="DipoleInversion",
        help="dipole inversion algorithm",
        function="invert_dipole", interface="InvertDipole",
        methods="Susceptibility was obtained by {algorithm}, with the dipole kernel oriented "
        "along the main field in the image's voxel coordinates.",
        algorithms=(
            Algorithm("tv-admm",
                      summary="total variation solved by ADMM, FANSI-style, with the mask as "
                      "data weight, the TV penalty relaxed at the 30 % strongest magnitude "
                      "edges of any echo and a lower TV weight on gradients leaving the mask "
                      "(sources just outside absorb residual background at the rim, the idea "
                      "of total field inversion)",
                      methods="total-variation regularised inversion solved with ADMM, "
                      "FANSI-style [@tvadmm][@fansi] (lambda = {tv_regularization}, gradient "
                      "penalty relaxed at the magnitude edges of every echo and weighted "
                      "{tv_outside_weight} on gradients leaving the mask, so that sources just "
                      "outside it absorb residual background at the rim [@tfi])",
                      citations=("tvadmm", "fansi", "tfi"), sidecar_notes=_GRADIENT_WEIGHTS),
            Algorithm("tikhonov",
                      summary="iterative Tikhonov with a gradient penalty (CG)",
                      methods="an iterative Tikhonov-regularised least-squares inversion with "
                      "a gradient penalty (lambda = {tikhonov_regularization}, conjugate "
                      "gradient, at most {inversion_max_iter} iterations) [@tikhonov]",
                      citations=("tikhonov",)),
            Algorithm("tkd", summary="thresholded k-space division",
                      methods="thresholded k-space division (TKD, threshold {tkd_threshold}) "
                      "[@tkd]",
                      citations=("tkd",)),
            Algorithm("rts", summary="rapid two-step: TKD in the well-conditioned cone, TV "
                      "elsewhere",
                      methods="the rapid two-step method (RTS, delta = {rts_delta}) [@rts]",
                      citations=("rts",)),
            Algorithm("medi-l1", summary="MEDI-style weighted L1 with a nonlinear data term",
                      methods="morphology-enabled dipole inversion (MEDI, lambda = "
                      "{medi_regularization}) [@medi]",
                      citations=("medi",), sidecar_notes=_GRADIENT_WEIGHTS),
        ),
        parameters=(
            Parameter("tkd_threshold", "--tkd-threshold", 0.19, title="TKD threshold",
                      help="TKD k-space truncation threshold", sidecar="Threshold",
                      algorithms=("tkd",)),
            Parameter("tv_regularization", "--tv-lambda", 0.0,
                      title="TV-ADMM regularisation",
                      help="TV-ADMM regularisation weight; a value fixes it",
                      sidecar="Regularization", algorithms=("tv-admm",),
                      automatic="chosen per run from the corner of the L-curve of the "
                      "closed-form Tikhonov solution (recorded in the sidecars)",
                      methods_automatic="sqrt(1e-3 x the corner of the L-curve of the "
                      "closed-form gradient-regularised solution), chosen per run "
                      "[@l2closedform][@lcurve] and recorded in each map's sidecar"),
            Parameter("tv_outside_weight", "--tv-outside-weight", 0.1,
                      title="TV-ADMM weight outside the mask",
                      help="TV-ADMM weight of the gradients leaving the mask, relative to "
                      "those inside",
                      sidecar="OutsideMaskWeight", algorithms=("tv-admm",)),
            Parameter("rts_delta", "--rts-delta", 0.15, title="RTS delta",
                      help="RTS threshold of the well-conditioned k-space region",
                      sidecar="Delta", algorithms=("rts",)),
            Parameter("medi_regularization", "--medi-lambda", 1e-3,
                      title="MEDI regularisation", help="MEDI regularisation weight",
                      sidecar="Regularization", algorithms=("medi-l1",)),
            Parameter("tikhonov_regularization", "--tikhonov-lambda", 0.01,
                      title="Tikhonov regularisation",
                      help="iterative Tikhonov gradient regularisation weight",
                      sidecar="Regularization", algorithms=("tikhonov",)),
            Parameter("inversion_max_iter", "--inversion-max-iter", 100,
                      title="Tikhonov iterations",
                      help="maximum conjugate-gradient iterations of the iterative Tikhonov "
                      "inversion", sidecar="MaxIterations", algorithms=("tikhonov",)),
            Parameter("inversion_tolerance", "--inversion-tolerance", 1e-2,
                      title="Tikhonov tolerance",
                      help="relative residual at which the iterative Tikhonov inversion stops",
                      sidecar="Tolerance", algorithms=("tikhonov",)),
        ),
    ),
    Stage(
        name="r2star", title="R2*/T2*", sidecar="R2star",
        help="R2* estimation from the magnitudes",
        function="fit_r2star", interface="FitR2star",
        methods="R2* and T2* were estimated {algorithm}.",
        algorithms=(
            Algorithm("loglinear", summary="magnitude^2-weighted log-linear fit",
                      methods="by a magnitude-weighted log-linear fit of the magnitude decay "
                      "[@r2star]",
                      citations=("r2star",)),
            Algorithm("arlo", summary="ARLO (log-linear where the echoes are not equally "
                      "spaced)",
                      methods="with ARLO [@arlo] (log-linear fit where the echoes are not "
                      "equally spaced)",
                      citations=("arlo",)),
        ),
    ),
    Stage(
        name="referencing", title="Referencing", sidecar="Referencing",
        help="susceptibility reference region", choice_key="Region", aliases=("--reference",),
        function="reference_susceptibility", interface="ReferenceSusceptibility",
        methods="The maps were referenced to {algorithm}.",
        algorithms=(
            Algorithm("whole-brain",
                      summary="mean over the whole brain (the mask of the background "
                      "removal); the lateral ventricles' mean recorded beside it",
                      methods="the mean over the whole brain (the mask of the background "
                      "removal); the mean of the lateral ventricles (CSF) relative to it is "
                      "recorded in each Chimap sidecar when found",
                      citations=("consensus",)),
            Algorithm("csf",
                      summary="mean over the lateral ventricles (deep, low-R2* voxels); the "
                      "whole-brain mean recorded beside it",
                      methods="the mean over the lateral ventricles (deep voxels of low R2*) "
                      "[@csf]; the whole-brain mean is recorded beside it in each Chimap "
                      "sidecar",
                      citations=("csf",)),
        ),
    ),
)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no stage {name!r}: the stages are {', '.join(s.name for s in STAGES)}")


def choice_stages() -> tuple[Stage, ...]:
    """The stages with an algorithm to choose (a configuration field and an option each)."""
    return tuple(candidate for candidate in STAGES if candidate.choice_key)


def all_parameters() -> tuple[Parameter, ...]:
    """Every stage parameter, in stage order."""
    return tuple(parameter for candidate in STAGES for parameter in candidate.parameters)


def configuration_fields() -> list[tuple[str, type, object]]:
    """``(name, type, default)`` of the stage fields of the configuration: each stage with a
    choice holds its algorithm, each parameter its value."""
    fields = []
    for candidate in STAGES:
        if candidate.choice_key:
            fields.append((candidate.name, str, candidate.default))
        fields.extend((parameter.field, parameter.type, parameter.default)
                      for parameter in candidate.parameters)
    return fields
