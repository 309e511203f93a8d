"""xlram.baselines"""
