"""Figures and reports of a qsmprep run."""
