"""xlram.nn"""
