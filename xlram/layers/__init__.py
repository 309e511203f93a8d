"""xlram.layers"""
