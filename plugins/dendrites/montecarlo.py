"""A batched Monte Carlo simulator of random SDRs and dendritic segments (torch), to check the
exact theory of :mod:`actsparse.plugins.dendrites.sdr` by sampling.

SDRs are sparse index sets: a ``[trials, a]`` int64 tensor of sorted, distinct cell indices in
``0..n-1`` per row. A uniformly random ``a``-subset is drawn by sampling ``a`` cells with
replacement and redrawing duplicates until none are left: the procedure treats all cell
labels alike, so its result is uniform over the ``C(n, a)`` subsets. Overlaps of two index
sets are counted with ``searchsorted``. Work is chunked (``chunk`` trials at a time), so
millions of trials run in seconds in bounded memory, on CPU or GPU.

What is simulated (the processes the theory describes, DESIGN §4):

- false match: store a random pattern, grow a segment of ``s`` synapses on a random subsample
  of its active cells (a uniformly random ``s``-subset of the population, since the pattern is
  uniform), present an independent random pattern and count the segment's active synapses;
- union: the same with ``m`` stored patterns whose ``s``-synapse subsamples share one segment;
- noise: replace ``round(noise·a)`` of the stored pattern's active cells by random cells outside
  it and count the segment's synapses that still see active cells.

Each returns the histogram of synapse matches, from which :class:`Estimate` gives the
frequency of ``matches >= theta`` (for every θ at once) with a Wilson confidence interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

__all__ = [
    "Estimate",
    "random_sdrs",
    "count_overlaps",
    "simulate_false_match_overlaps",
    "simulate_noise_overlaps",
    "monte_carlo_false_match",
    "monte_carlo_union_false_match",
    "monte_carlo_match_with_noise",
]


@dataclass(frozen=True)
class Estimate:
    """``successes`` out of ``trials`` Bernoulli trials, with a Wilson score interval."""

    successes: int
    trials: int

    @property
    def p(self) -> float:
        return self.successes / self.trials

    def interval(self, confidence: float = 0.999) -> tuple[float, float]:
        """Wilson score interval at ``confidence`` (two-sided)."""
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        n, p = self.trials, self.p
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def contains(self, value: float, confidence: float = 0.999) -> bool:
        lo, hi = self.interval(confidence)
        return lo <= value <= hi


def _check(n: int, a: int, s: int, trials: int) -> None:
    for name, v in (("n", n), ("a", a), ("s", s), ("trials", trials)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}.")
    if n < 1 or trials < 1:
        raise ValueError(f"n and trials must be >= 1, got n={n}, trials={trials}.")
    if a > n or s > n:
        raise ValueError(f"a={a} and s={s} cannot exceed the population n={n}.")


def _duplicates(values: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """Mask of entries of row-sorted ``values`` that repeat their left neighbour or lie in ``exclude``."""
    bad = torch.zeros_like(values, dtype=torch.bool)
    bad[:, 1:] = values[:, 1:] == values[:, :-1]
    if exclude is not None and exclude.shape[1]:
        pos = torch.searchsorted(exclude, values).clamp(max=exclude.shape[1] - 1)
        bad |= exclude.gather(1, pos) == values
    return bad


def _distinct_fill(values: torch.Tensor, n: int, generator: torch.Generator | None,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Redraw entries that repeat within their row (or fall in ``exclude``, sorted per row)
    until every row holds distinct allowed cells; returns the rows sorted. Only rows that
    still hold a repeat are touched again (few, when the pattern is sparse)."""
    values, _ = values.sort(dim=1)
    bad = _duplicates(values, exclude)
    rows = bad.any(1).nonzero().squeeze(1)
    while rows.numel():
        sub, sub_bad = values[rows], bad[rows]
        sub[sub_bad] = torch.randint(n, (int(sub_bad.sum()),), generator=generator, device=values.device)
        sub, _ = sub.sort(dim=1)
        sub_bad = _duplicates(sub, None if exclude is None else exclude[rows])
        values[rows] = sub
        still = sub_bad.any(1)
        bad = torch.zeros_like(values, dtype=torch.bool)
        bad[rows[still]] = sub_bad[still]
        rows = rows[still]
    return values


def random_sdrs(trials: int, n: int, a: int, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """``trials`` uniformly random patterns of ``a`` active cells out of ``n``: sorted int64
    index sets ``[trials, a]``.

    Example:
        >>> x = random_sdrs(4, 100, 10, torch.Generator().manual_seed(0))
        >>> x.shape, bool((x[:, 1:] > x[:, :-1]).all())
        (torch.Size([4, 10]), True)
    """
    _check(n, a, 0, trials)
    if 4 * a > n:  # dense: a random permutation's first a cells (redraws would repeat often)
        keys = torch.rand(trials, n, generator=generator, device=device)
        return keys.topk(a, dim=1, sorted=False).indices.sort(dim=1).values
    values = torch.randint(n, (trials, a), generator=generator, device=device)
    return _distinct_fill(values, n, generator)


def count_overlaps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, how many cells of index set ``x`` are also in the sorted index set ``y``.

    Entries of ``x`` outside ``y``'s range (e.g. a padding value ``n``) never match."""
    if y.shape[1] == 0 or x.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    pos = torch.searchsorted(y, x).clamp(max=y.shape[1] - 1)
    return (y.gather(1, pos) == x).sum(1)


def _union_segment(trials: int, n: int, s: int, m: int, generator, device) -> torch.Tensor:
    """Union of ``m`` independent random ``s``-subsets per row; repeats padded with ``n``."""
    parts = torch.cat([random_sdrs(trials, n, s, generator, device) for _ in range(m)], dim=1)
    parts, _ = parts.sort(dim=1)
    repeat = torch.zeros_like(parts, dtype=torch.bool)
    repeat[:, 1:] = parts[:, 1:] == parts[:, :-1]
    return parts.masked_fill(repeat, n)


def simulate_false_match_overlaps(n: int, a: int, s: int, trials: int, m: int = 1, seed: int = 0,
                                  chunk: int = 1 << 15, fixed_pattern: bool = True,
                                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Histogram ``[min(m·s, a) + 1]`` (int64) of how many synapses of a segment storing ``m``
    random patterns (``s`` synapses each) see active cells of an independent random pattern.

    ``fixed_pattern=True`` (fast) presents the pattern of cells ``0..a-1`` every trial: the
    segment is uniformly random and independent of it, so by symmetry of the cell labels the
    overlap has the same distribution as against a random pattern, and the overlap is the count
    of synapses on cells ``< a``. ``False`` draws a random pattern per trial as well."""
    _check(n, a, s, trials)
    if m < 1:
        raise ValueError(f"m (patterns on the segment) must be >= 1, got {m}.")
    generator = torch.Generator(device=device).manual_seed(seed)
    hist = torch.zeros(min(m * s, a) + 1, dtype=torch.int64, device=device)
    done = 0
    while done < trials:
        t = min(chunk, trials - done)
        segment = _union_segment(t, n, s, m, generator, device)
        if fixed_pattern:
            counts = (segment < a).sum(1)  # padding n never counts
        else:
            counts = count_overlaps(segment, random_sdrs(t, n, a, generator, device))
        hist += torch.bincount(counts, minlength=hist.numel())[: hist.numel()]
        done += t
    return hist.cpu()


def simulate_noise_overlaps(n: int, a: int, s: int, noise: float, trials: int, seed: int = 0,
                            chunk: int = 1 << 15, fixed_pattern: bool = True,
                            device: str | torch.device = "cpu") -> torch.Tensor:
    """Histogram ``[s + 1]`` of how many of a segment's ``s`` synapses (on a stored random
    pattern of ``a`` cells) still see active cells after ``round(noise·a)`` (half up) of the
    pattern's active cells are replaced by random cells outside it.

    ``fixed_pattern=True`` (fast) stores the pattern ``0..a-1`` with synapses on ``0..s-1``
    (symmetry of labels, as in :func:`simulate_false_match_overlaps`): the switched-off cells are
    a uniformly random subset of the pattern and replacement cells lie outside it, so the count
    is the number of cells ``< s`` not switched off.
    ``False`` draws the stored pattern and the replacement cells and intersects index sets."""
    _check(n, a, s, trials)
    if s > a:
        raise ValueError(f"s={s} synapses cannot all sit on a stored pattern of a={a} cells; use s <= a.")
    if not 0 <= noise <= 1:
        raise ValueError(f"noise must be a fraction in [0, 1], got {noise!r}.")
    v = math.floor(noise * a + 0.5)
    if v > n - a:
        raise ValueError(f"noise={noise} needs {v} replacement cells but only n - a = {n - a} exist.")
    generator = torch.Generator(device=device).manual_seed(seed)
    hist = torch.zeros(s + 1, dtype=torch.int64, device=device)
    done = 0
    while done < trials:
        t = min(chunk, trials - done)
        if fixed_pattern:
            # stored pattern = cells 0..a-1 and, as the switched-off cells are a uniformly random
            # subset of it independent of the synapses, synapses = cells 0..s-1; draw the smaller
            # of the switched-off and the kept sets
            if 2 * v <= a:
                counts = s - (random_sdrs(t, a, v, generator, device) < s).sum(1)
            else:
                counts = (random_sdrs(t, a, a - v, generator, device) < s).sum(1)
        else:
            stored = random_sdrs(t, n, a, generator, device)
            order = torch.rand(t, a, generator=generator, device=device).argsort(dim=1)
            segment, _ = stored.gather(1, order[:, :s]).sort(dim=1)
            dropped = torch.rand(t, a, generator=generator, device=device).argsort(dim=1)
            kept = stored.gather(1, dropped[:, v:])
            fresh = torch.randint(n, (t, v), generator=generator, device=device)
            fresh = _distinct_fill(fresh, n, generator, exclude=stored)
            noisy, _ = torch.cat([kept, fresh], dim=1).sort(dim=1)
            counts = count_overlaps(segment, noisy)
        hist += torch.bincount(counts, minlength=s + 1)[: s + 1]
        done += t
    return hist.cpu()


def _tail(hist: torch.Tensor, theta: int) -> Estimate:
    if theta < 0:
        raise ValueError(f"theta must be >= 0, got {theta}.")
    return Estimate(int(hist[theta:].sum()), int(hist.sum()))


def monte_carlo_false_match(n: int, a: int, s: int, theta: int, trials: int = 1_000_000, seed: int = 0,
                            **options) -> Estimate:
    """Frequency of false matches (``>= theta`` active synapses on a random pattern)."""
    if theta > s:
        raise ValueError(f"theta={theta} exceeds the segment's s={s} synapses; use theta <= s.")
    return _tail(simulate_false_match_overlaps(n, a, s, trials, 1, seed, **options), theta)


def monte_carlo_union_false_match(n: int, a: int, s: int, theta: int, m: int, trials: int = 1_000_000,
                                  seed: int = 0, **options) -> Estimate:
    """Frequency of false matches of a segment storing the union of ``m`` patterns."""
    if theta > s:
        raise ValueError(f"theta={theta} exceeds the segment's s={s} synapses per pattern; use theta <= s.")
    return _tail(simulate_false_match_overlaps(n, a, s, trials, m, seed, **options), theta)


def monte_carlo_match_with_noise(n: int, a: int, s: int, theta: int, noise: float, trials: int = 1_000_000,
                                 seed: int = 0, **options) -> Estimate:
    """Frequency with which the segment still fires on its stored pattern under noise."""
    if theta > s:
        raise ValueError(f"theta={theta} exceeds the segment's s={s} synapses; use theta <= s.")
    return _tail(simulate_noise_overlaps(n, a, s, noise, trials, seed, **options), theta)
