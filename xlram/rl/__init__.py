"""xlram.rl"""
