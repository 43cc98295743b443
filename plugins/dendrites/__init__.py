"""Sparse distributed representations and active dendrites (Ahmad & Hawkins 2016; DESIGN §4).

- :mod:`.sdr`: exact theory (false matches, unions, noise, optimal threshold), vectorized and
  exact in log space for large populations;
- :mod:`.montecarlo`: a batched torch simulator of random SDRs and segments estimating the same;
- :mod:`.kwinners`: ``KWinners`` / ``KWinners2d`` (k-WTA with duty-cycle boosting);
- :mod:`.segments`: ``DendriticLayer`` (context-gated units, absolute-max segment gating, segment
  masks covering every context input).

The layers register themselves as activation sites on import.
"""

from actsparse.plugins.dendrites.kwinners import KWinners, KWinners2d, kwinners_mask
from actsparse.plugins.dendrites.montecarlo import (
    Estimate,
    count_overlaps,
    monte_carlo_false_match,
    monte_carlo_match_with_noise,
    monte_carlo_union_false_match,
    random_sdrs,
    simulate_false_match_overlaps,
    simulate_noise_overlaps,
)
from actsparse.plugins.dendrites.sdr import (
    false_match_probability,
    false_negative_probability,
    log_false_match_probability,
    log_overlap_set_size,
    log_union_false_match_probability,
    match_probability_with_noise,
    noise_bits,
    optimal_threshold,
    overlap_set_size,
    total_error,
    union_false_match_probability,
    union_size_distribution,
    union_synapse_count,
)
from actsparse.plugins.dendrites.segments import (
    DendriticLayer,
    covering_mask,
    dendritic_gate,
    kept_count,
)

__all__ = [
    "DendriticLayer",
    "Estimate",
    "KWinners",
    "KWinners2d",
    "count_overlaps",
    "covering_mask",
    "dendritic_gate",
    "false_match_probability",
    "false_negative_probability",
    "kept_count",
    "kwinners_mask",
    "log_false_match_probability",
    "log_overlap_set_size",
    "log_union_false_match_probability",
    "match_probability_with_noise",
    "monte_carlo_false_match",
    "monte_carlo_match_with_noise",
    "monte_carlo_union_false_match",
    "noise_bits",
    "optimal_threshold",
    "overlap_set_size",
    "random_sdrs",
    "simulate_false_match_overlaps",
    "simulate_noise_overlaps",
    "total_error",
    "union_false_match_probability",
    "union_size_distribution",
    "union_synapse_count",
]
