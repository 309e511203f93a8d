"""xlram.data"""
