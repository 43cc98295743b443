"""Infinitely wide and deep networks: dual activations, NNGP/NTK kernels (DESIGN §4)."""
