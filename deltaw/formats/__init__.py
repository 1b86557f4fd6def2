"""Checkpoint formats: each module turns files into named tensors lazily, nothing more."""
