"""Procedures that drive a model to measure it (PPL-p% sparsity, neural codes, truncation)."""
