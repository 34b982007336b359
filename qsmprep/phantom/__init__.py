"""The built-in phantom: an analytic head, a multi-echo GRE forward model and BIDS writers.

- :mod:`qsmprep.phantom.head` -- :func:`make_head_phantom`, a labelled head (RC2 healthy
  susceptibility values, skull, air cavities, air around the head) on any voxel grid;
- :mod:`qsmprep.phantom.signal` -- :func:`simulate_multiecho_gre`, magnitude and wrapped phase
  with their ground-truth fields (total = local + background, Hz);
- :mod:`qsmprep.phantom.dataset` -- :func:`write_phantom_dataset` and :func:`make_demo_dataset`,
  deterministic BIDS datasets with the ground truth under ``derivatives/qsmprep-phantom/``.
"""

from .dataset import PhantomSubject, make_demo_dataset, write_phantom_dataset
from .head import HEALTHY_SUSCEPTIBILITY_PPM, HeadPhantom, make_head_phantom
from .signal import SimulatedAcquisition, oblique_affine, simulate_multiecho_gre

__all__ = [
    "HEALTHY_SUSCEPTIBILITY_PPM",
    "HeadPhantom",
    "PhantomSubject",
    "SimulatedAcquisition",
    "make_demo_dataset",
    "make_head_phantom",
    "oblique_affine",
    "simulate_multiecho_gre",
    "write_phantom_dataset",
]
