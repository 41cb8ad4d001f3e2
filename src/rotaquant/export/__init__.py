"""Exports: rotated models as standard Hugging Face folders (and, later, quantized checkpoints)."""
