"""The bracketing search of PPL-p% sparsity (steps 3-4 of :mod:`actsparse.evaluation.ppl_sparsity`)
and of the joint CETT search: the largest CETT target whose loss increase ``Δloss`` stays within
``log(1 + p/100)``, found with few data passes.

``Δloss`` grows with the target roughly as a power law, but is rough at fine scales (a staircase
with jumps), so the search predicts the crossing from the evaluated points (a piecewise power law,
:func:`power_law`, or an explored *shape* scaled through them), damps one-sided progress with the
Illinois rule, and stops on a certified bracket ``[accepted, rejected]``. Each evaluation is one
data pass with as many replicas as targets (``evaluate(targets) -> [Δloss]``).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

__all__ = ["BracketSearch", "accepted", "power_law", "solve_increasing"]


def accepted(delta: float, p: float) -> bool:
    """Whether a loss increase ``delta`` (nats per token) keeps perplexity within ``1 + p/100``."""
    return delta <= math.log1p(p / 100)


def power_law(points: Sequence[tuple[float, float]], t: float) -> float:
    """Δloss at ``t`` from evaluated ``(target, Δloss)`` points: a piecewise power law (log-log
    linear) between the two points around ``t``; below the first point, a power law through the
    origin; beyond the last, the end segment's (or the overall) exponent; linear in ``t`` where a
    segment is not positive and increasing (Δloss is rough at fine scales)."""
    pts = sorted((a, g) for a, g in points if a > 0)
    if not pts:
        return 0.0

    def exponent(a: tuple[float, float], b: tuple[float, float]) -> float | None:
        (ta, ga), (tb, gb) = a, b
        if ga > 0 and gb > ga and tb > ta:
            return min(max(math.log(gb / ga) / math.log(tb / ta), 0.5), 8.0)
        return None

    first, last = pts[0], pts[-1]
    overall = exponent(first, last) if len(pts) > 1 else None
    if t <= first[0]:
        gamma = (exponent(pts[0], pts[1]) if len(pts) > 1 else None) or overall or 2.0
        return max(first[1], 0.0) * (t / first[0]) ** gamma if t > 0 else 0.0
    if t >= last[0]:
        gamma = (exponent(pts[-2], pts[-1]) if len(pts) > 1 else None) or overall or 2.0
        return last[1] * (t / last[0]) ** gamma if last[1] > 0 else last[1] + (t - last[0]) * 1e-9
    j = next(i for i, (a, _) in enumerate(pts) if a >= t)
    a, b = pts[j - 1], pts[j]
    gamma = exponent(a, b)
    if gamma is not None:
        return a[1] * (t / a[0]) ** gamma
    return a[1] + (b[1] - a[1]) * (t - a[0]) / (b[0] - a[0])


def solve_increasing(model: Callable[[float], float], limit: float, lo: float, hi: float) -> float:
    """The t in [lo, hi] where the increasing model first reaches ``limit`` (bisection on the model)."""
    if model(hi) <= limit:
        return hi
    if model(lo) >= limit:
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model(mid) < limit else (lo, mid)
    return 0.5 * (lo + hi)


class BracketSearch:
    """Bracketing search for the largest target with Δloss <= limit on one data set (see the
    module docstring of :mod:`actsparse.evaluation.ppl_sparsity`, steps 3-4).

    ``evaluate(targets) -> [Δloss]`` is one data pass with ``len(targets)`` replicas. Each round
    predicts the crossing: a piecewise power law through the evaluated points, or, given
    ``shape`` (the ``(target, Δloss)`` points of an exploration on a data subset), that curve
    scaled to pass through the evaluated points next to the crossing (the subset's Δloss is
    nearly proportional to the whole data's). While one bracket end stays and the other keeps
    moving, the staying end counts closer to the limit (Illinois rule), so predictions land past
    the crossing instead of creeping up on it. Then it places:

    - with a shape and nothing evaluated yet, two targets at the subset's crossing ± 4%;
    - without a bracket, one target past the prediction (further each round it falls short);
    - one target just past a bracket end that already lies within the final width of the
      prediction (one pass closes the bracket);
    - two targets at the prediction ± half the final width, once the prediction has settled
      (moved by less than a third of that width in the last round);
    - otherwise one target at the prediction.

    The final width is ``tol`` in target, and, when ``sparsity`` (target -> dropped fraction,
    for evaluated targets) is given, the target width over which the dropped fraction grows by
    ``sparsity_width`` (slope from the evaluated points next to the crossing); the search stops
    when the bracket ``[accepted, rejected]`` is within both.

    Example (Δloss = 0.3·t², crossing ``sqrt(log(1.01) / 0.3)`` = 0.18212; a bisection takes 10 passes):
        >>> search = BracketSearch(lambda ts: [0.3 * t**2 for t in ts], p=1.0, tol=1e-3, max_k=1)
        >>> search.run(max_rounds=40)
        >>> search.closed(), search.rounds, search.lo <= 0.18212 <= search.hi, search.hi - search.lo <= 1e-3
        (True, 4, True, True)
    """

    def __init__(self, evaluate: Callable[[list[float]], list[float]], p: float, tol: float, max_k: int = 2,
                 shape: dict[float, float] | None = None, sparsity: Callable[[float], float] | None = None,
                 sparsity_width: float | None = None, start: float = 0.1) -> None:
        self.evaluate, self.p, self.tol, self.max_k = evaluate, p, tol, max(1, max_k)
        self.limit = math.log1p(p / 100)
        self.shape = sorted(shape.items()) if shape else None
        self.sparsity, self.sparsity_width = sparsity, sparsity_width
        self.start = start
        self.first_spread = 0.04  # relative half-width of the first pass around an explored crossing
        self.points: dict[float, float] = {0.0: 0.0}
        self.rounds = 0
        self.last_prediction: float | None = None
        self.same_end = 0  # rounds in a row that moved the same bracket end
        self.moved_lo = False

    @property
    def lo(self) -> float:
        return max(t for t, g in self.points.items() if accepted(g, self.p))

    @property
    def hi(self) -> float | None:
        rejected = [t for t, g in self.points.items() if not accepted(g, self.p) and t > self.lo]
        return min(rejected) if rejected else None

    def _sparsity_slope(self, near: float) -> float | None:
        """d(dropped fraction)/d(target) between the two evaluated targets nearest ``near``."""
        evaluated = [t for t in self.points if t > 0]  # (from t = 0 it would be the mean slope)
        if self.sparsity is None or len(evaluated) < 2:
            return None
        a, b = sorted(sorted(evaluated, key=lambda t: abs(t - near))[:2])
        slope = (self.sparsity(b) - self.sparsity(a)) / (b - a)
        return slope if slope > 0 else None

    def width(self, near: float) -> float:
        """The final bracket width (in target) around ``near``."""
        slope = self._sparsity_slope(near)
        if slope is None or self.sparsity_width is None:
            return self.tol
        return min(self.tol, self.sparsity_width / slope)

    def closed(self) -> bool:
        lo, hi = self.lo, self.hi
        if lo >= 1.0:
            return True
        if hi is None or hi - lo > self.tol:
            return False
        return (self.sparsity is None or self.sparsity_width is None
                or self.sparsity(hi) - self.sparsity(lo) <= self.sparsity_width)

    def predict(self) -> float:
        """The crossing of Δloss with the limit, predicted from the points (and the shape)."""
        lo, hi = self.lo, self.hi
        top = 1.0 if hi is None else hi
        points = dict(self.points)
        if hi is not None and lo > 0 and self.same_end >= 2:
            # Illinois: the end that stays while the other keeps moving counts closer to the
            # limit, so the next prediction lands past the crossing (no one-sided creeping)
            stale = hi if self.moved_lo else lo
            points[stale] = self.limit + (points[stale] - self.limit) * 0.5 ** (self.same_end - 1)
        evaluated = [(t, g) for t, g in points.items() if t > 0]
        if not evaluated and self.shape is None:
            return min(self.start, top)
        if self.shape is None:
            return solve_increasing(lambda t: power_law(evaluated, t), self.limit, lo, top)
        shape = self.shape

        def subset(t: float) -> float:
            return power_law(shape, t)

        # anchors: the bracket ends (those evaluated), else the points nearest the last prediction
        reach = 2 * max(t for t, _ in shape)  # anchors far outside the explored range mislead
        anchors = [t for t in (lo, hi) if t is not None and 0 < t and (t == lo or t <= reach)]
        if len(anchors) < 2:
            near = self.last_prediction if self.last_prediction is not None else lo
            others = sorted((t for t, _ in evaluated if t <= reach and t not in anchors), key=lambda t: abs(t - near))
            anchors = sorted({*anchors, *others[:2 - len(anchors)]})
        ratios = [(t, points[t] / subset(t)) for t in anchors if subset(t) > 0]
        if not ratios:
            return solve_increasing(subset, self.limit, lo, top)
        if len(ratios) == 1:
            return solve_increasing(lambda t: ratios[0][1] * subset(t), self.limit, lo, top)
        (ta, ra), (tb, rb) = ratios[0], ratios[-1]

        def scaled(t: float) -> float:
            w = min(max((t - ta) / (tb - ta), 0.0), 1.0)
            return (ra + (rb - ra) * w) * subset(t)

        return solve_increasing(scaled, self.limit, lo, top)

    def candidates(self) -> list[float]:
        lo, hi = self.lo, self.hi
        pred = self.predict()
        w = self.width(pred)
        moved = abs(pred - self.last_prediction) if self.last_prediction is not None else float("inf")
        self.last_prediction = pred
        def lean(distance: float) -> float:  # further each round the predictions keep falling short
            return min(max(distance, w), 0.05 * pred) * 2 ** self.same_end

        if lo == 0 and hi is None:  # nothing evaluated near the crossing yet
            if self.shape is not None and self.max_k >= 2 and len(self.points) == 1:
                # the subset's crossing misses the data's by a few percent either way: bracket it
                cands = [pred * (1 - self.first_spread), pred * (1 + self.first_spread)]
            else:
                cands = [pred]
        elif hi is None:  # accepted points only: step past the prediction to get a bracket
            close = pred - lo < 0.6 * w and self.same_end < 2
            cands = [lo + 0.9 * w] if close else [pred + lean(pred - lo)]
        elif lo == 0:  # rejected points only
            close = hi - pred < 0.6 * w and self.same_end < 2
            cands = [hi - 0.9 * w] if close else [pred - lean(hi - pred)]
        else:
            span = hi - lo
            if span <= 2 * w:  # one point closes it: both halves within the width
                cands = [min(max(pred, hi - 0.95 * w), lo + 0.95 * w)]
            elif pred - lo < 0.6 * w:
                cands = [lo + 0.9 * w]
            elif hi - pred < 0.6 * w:
                cands = [hi - 0.9 * w]
            elif moved < w / 3 and self.max_k >= 2:  # the prediction has settled: close it in one pass
                cands = [pred - 0.45 * w, pred + 0.45 * w]
            else:
                cands = [min(max(pred, lo + 0.02 * span), hi - 0.02 * span)]
        top = 1.0 if hi is None else hi
        margin = min(w / 8, (top - lo) / 4)
        cands = sorted({round(min(max(c, lo + margin), top - margin if hi is not None else top), 12) for c in cands})
        cands = [c for c in cands if c not in self.points and lo < c <= top]
        return cands or [round(0.5 * (lo + top), 12)]

    def warn_if_open(self, caller: str, max_rounds: int) -> None:
        """A warning when the bracket is still open after the search (its passes ran out), pointing at
        the caller of ``caller`` (both callers are wrapped in ``torch.no_grad``)."""
        if not self.closed():
            warnings.warn(f"{caller}: the bracket was not closed in max_passes={max_rounds} passes; the result is "
                          f"the largest accepted target found ({self.lo:.6g}), and cett_rejected is 1.0 if no "
                          "target was rejected. Raise max_passes or loosen the tolerances.", stacklevel=4)

    def run(self, max_rounds: int) -> None:
        """Search until the bracket is closed, at most ``max_rounds`` passes."""
        while self.rounds < max_rounds and not self.closed():
            lo = self.lo
            cands = self.candidates()
            if all(c in self.points for c in cands):
                return  # the bracket is below the targets' resolution (1e-12): nothing new to evaluate
            for t, g in zip(cands, self.evaluate(cands)):
                self.points[t] = g
            self.rounds += 1
            moved_lo = self.lo != lo
            self.same_end = self.same_end + 1 if moved_lo == self.moved_lo else 1
            self.moved_lo = moved_lo


