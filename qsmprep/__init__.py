"""qsmprep: quantitative susceptibility mapping as a BIDS-App.

The library is organised by concern:

- :mod:`qsmprep.qsm` -- the reconstruction algorithms, plain numpy/scipy functions;
- :mod:`qsmprep.bids` -- discovery of input runs and naming of derivatives;
- :mod:`qsmprep.phantom` -- the forward model and simulated datasets;
- :mod:`qsmprep.interfaces` -- thin nipype interfaces around the functions;
- :mod:`qsmprep.workflows` -- nipype graph factories (``init_*_wf``);
- :mod:`qsmprep.cli` -- the command line and its configuration.
"""

from .__about__ import __version__

__all__ = ["__version__"]
