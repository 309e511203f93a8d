"""Triton kernels. Importing anything here imports triton; go through ``xlram.kernels`` instead."""
