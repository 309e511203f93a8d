"""xlram.train"""
