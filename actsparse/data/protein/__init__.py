"""Protein structures as residue graphs: parsing (gemmi), secondary structure (pydssp), annotations, synthetic motif chains."""
