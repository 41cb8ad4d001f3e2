"""Rotation matrices (Hadamard, random orthogonal) and fast transforms."""
