"""qsmprep.bids"""
