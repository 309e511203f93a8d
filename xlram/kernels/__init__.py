"""xlram.kernels"""
