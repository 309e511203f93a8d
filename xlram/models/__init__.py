"""xlram.models"""
