"""Naive NumPy float64 references, written independently of the kernels (no shared code)."""
