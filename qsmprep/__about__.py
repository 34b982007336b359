"""Version and citation metadata of qsmprep."""

__version__ = "0.1.0"
__packagename__ = "qsmprep"
__url__ = "https://github.com/qsmprep/qsmprep"
