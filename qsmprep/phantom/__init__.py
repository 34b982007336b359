"""qsmprep.phantom"""
