"""Sparse distributed representations and active dendrites (Ahmad & Hawkins 2016; DESIGN §4)."""
