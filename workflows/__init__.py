"""Nipype workflow factories of qsmprep (installed as ``qsmprep.workflows``)."""
