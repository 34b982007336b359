"""Template and atlas data shipped with qsmprep (installed as ``qsmprep.atlases``)."""
