"""qsmprep.qsm"""
