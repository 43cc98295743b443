"""Ahmad & Hawkins (2016)'s SDR figures from the exact theory, checked by Monte Carlo, as jobs of
the study engine (issue 14): ``actsparse-train experiment=sdr_theory``.

Nothing is trained. Each job is one ``fit(cfg)`` with ``trainer.limit_train_batches: 0`` and a
test: the datamodule :class:`SDRFigure` names one of the paper's figures, its parameters and the
Monte Carlo budget (``data=sdr_false_match|sdr_union|sdr_noise``), and the task
:class:`SDRTheoryCheck` computes the exact theory (``actsparse.plugins.dendrites.sdr``),
simulates the process (``actsparse.plugins.dendrites.montecarlo``), checks every measurable
point's Wilson interval against the theory, logs the agreement as ``test/sdr/*`` (so it lands in
``summary.json`` and the study table) and draws the figure into the job's folder:

1. ``false_match``: probability of a false match against the threshold θ for a segment of ``s``
   synapses, ``a`` active cells, several population sizes ``n``.
2. ``union``: false-match probability of one segment storing the union of ``M`` patterns against
   ``M``, with the paper's rounded-mean formula and the exact average over the union's size.
3. ``noise``: (a) probability that a segment still recognizes its pattern against the noise
   fraction for several θ; (b) total error (false match + false negative) against θ at a few
   noise levels, the optimal θ marked.

A Monte Carlo point is checked (and drawn) where the expected count of events is at least
``min_events``: rarer probabilities are not measurable with the trials given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader
from typing_extensions import override

from actsparse.plugins.dendrites import montecarlo as mc
from actsparse.plugins.dendrites import sdr

log = logging.getLogger(__name__)

FIGURES = ("false_match", "union", "noise")


class SDRFigure(L.LightningDataModule):
    """One figure of the paper to check: its parameters and the Monte Carlo budget, given to the
    test loop as one batch (a dict) for :class:`SDRTheoryCheck`.

    Args:
        figure: ``false_match`` (uses ``ns``, ``a``, ``s``), ``union`` (``ns``, ``a``, ``s``,
            ``theta``, ``max_m``) or ``noise`` (``n``, ``a``, ``s``, ``thetas``, ``noise_step``,
            ``noise_levels``, ``optimal_noise``).
        trials: Monte Carlo trials per simulated histogram (per ``n``, per ``(n, M)`` or per
            noise level).
        seed: the simulators' seed (``union`` adds ``M``, the total-error curves add 1 and 2).
        fp_trials: ``noise`` only: trials of the total error's false-match histogram (default
            ``trials``; false matches near the optimal θ are rarer than the noise curve's misses).
    """

    def __init__(self, figure: str, a: int, s: int, trials: int, seed: int = 0, ns: Sequence[int] = (),
                 n: int | None = None, theta: int | None = None, thetas: Sequence[int] = (), max_m: int | None = None,
                 noise_step: float | None = None, noise_levels: int | None = None,
                 optimal_noise: Sequence[float] = (), fp_trials: int | None = None) -> None:
        super().__init__()
        if figure not in FIGURES:
            raise ValueError(f"data.figure must be one of {', '.join(FIGURES)}, got {figure!r}.")
        needs = {"false_match": {"ns": ns}, "union": {"ns": ns, "theta": theta, "max_m": max_m},
                 "noise": {"n": n, "thetas": thetas, "noise_step": noise_step, "noise_levels": noise_levels}}[figure]
        missing = [k for k, v in needs.items() if v is None or (isinstance(v, (list, tuple)) and not v)]
        if missing:
            raise ValueError(f"data.figure={figure} needs data.{', data.'.join(missing)} (see conf/data/sdr_{figure}.yaml).")
        if int(trials) < 1:
            raise ValueError(f"data.trials must be >= 1, got {trials}.")
        self.spec = {"figure": figure, "a": int(a), "s": int(s), "trials": int(trials), "seed": int(seed),
                     "ns": [int(v) for v in ns], "n": None if n is None else int(n),
                     "theta": None if theta is None else int(theta), "thetas": [int(v) for v in thetas],
                     "max_m": None if max_m is None else int(max_m), "noise_step": noise_step,
                     "noise_levels": noise_levels, "optimal_noise": [float(v) for v in optimal_noise],
                     "fp_trials": int(trials if fp_trials is None else fp_trials)}

    def test_dataloader(self) -> DataLoader:
        return DataLoader([self.spec], batch_size=None, collate_fn=_as_is)


def _as_is(item: Any) -> Any:
    return item


def _measurable(p: float, trials: int, min_events: int) -> bool:
    return min(p, 1 - p) * trials >= min_events


class SDRTheoryCheck(L.LightningModule):
    """Test-only task: the exact theory of the figure its test batch names against a Monte Carlo
    simulation of the same process. Logs ``test/sdr/points``, ``test/sdr/inside`` (theory inside
    the point's Wilson interval at ``confidence``), ``test/sdr/max_rel_diff``; for ``union`` also
    ``test/sdr/paper_inside`` and ``test/sdr/paper_max_rel_diff`` (the paper's rounded-mean
    union size); for ``noise`` ``test/sdr/optimal_theta@<noise>`` and
    ``test/sdr/optimal_error@<noise>``; and ``test/sdr/seconds``. Writes ``<figure>.png`` and
    ``<figure>.json`` (curves and every checked point) into ``out_dir``.

    ``model`` must be None: there is nothing to train (the experiment sets ``model: null``).
    """

    def __init__(self, model: Any = None, confidence: float = 0.999, min_events: int = 20,
                 out_dir: str | None = None) -> None:
        super().__init__()
        if model is not None:
            raise ValueError(f"SDRTheoryCheck trains nothing; set model: null (got {type(model).__name__}).")
        if not 0 < confidence < 1:
            raise ValueError(f"task.confidence must lie in (0, 1), got {confidence}.")
        self.confidence, self.min_events = float(confidence), int(min_events)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.points: list[dict[str, Any]] = []

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("SDRTheoryCheck trains nothing: run it with trainer.limit_train_batches=0 and a test.")

    @override
    def configure_optimizers(self) -> None:
        return None

    def _check(self, comparison: str, label: str, theory: float, est: mc.Estimate) -> tuple[float, float]:
        lo, hi = est.interval(self.confidence)
        self.points.append({"comparison": comparison, "point": label, "theory": theory, "monte carlo": est.p,
                            "ci low": lo, "ci high": hi, "inside": bool(lo <= theory <= hi)})
        return lo, hi

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        start = time.perf_counter()
        figure = batch["figure"]
        data = {"false_match": self._false_match, "union": self._union, "noise": self._noise}[figure](batch)
        values = self._agreement(figure)
        if figure == "noise":
            for level, d in data["totals"].items():
                values[f"optimal_theta@{level:g}"] = float(d["optimal_theta"])
                values[f"optimal_error@{level:g}"] = d["optimal_error"]
        values["seconds"] = time.perf_counter() - start
        self.log_dict({f"test/sdr/{k}": float(v) for k, v in values.items()}, batch_size=1)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / f"{figure}.json").write_text(json.dumps({**data, "points": self.points}, indent=1))
            _plot(figure, data, self.out_dir / f"{figure}.png")
            log.info("SDR %s: %d of %d points inside their intervals; figure %s", figure, values["inside"],
                     values["points"], self.out_dir / f"{figure}.png")

    def _agreement(self, figure: str) -> dict[str, float]:
        out = {}
        for tag, rows in (("", [p for p in self.points if not p["comparison"].startswith("union (paper")]),
                          ("paper_", [p for p in self.points if p["comparison"].startswith("union (paper")])):
            if not rows:
                continue
            out[f"{tag}points"] = len(rows)
            out[f"{tag}inside"] = sum(p["inside"] for p in rows)
            out[f"{tag}max_rel_diff"] = max(abs(p["monte carlo"] - p["theory"]) / max(p["theory"], 1e-300) for p in rows)
        return out

    # -- the three figures (theory curves and Monte Carlo points) -------------------------------------
    def _points(self, comparison: str, label: str, theory: float, est: mc.Estimate, x: float) -> tuple | None:
        if not _measurable(theory, est.trials, self.min_events):
            return None
        return (x, est.p, *self._check(comparison, label, theory, est))

    def _false_match(self, c: dict[str, Any]) -> dict[str, Any]:
        thetas = np.arange(1, c["s"] + 1)
        curves = {}
        for n in c["ns"]:
            theory = sdr.false_match_probability(n, c["a"], c["s"], thetas)
            hist = mc.simulate_false_match_overlaps(n, c["a"], c["s"], c["trials"], seed=c["seed"])
            points = [self._points("false match vs θ", f"n={n} θ={t}", float(p), _tail(hist, t), int(t))
                      for t, p in zip(thetas, theory)]
            curves[n] = {"theory": theory.tolist(), "mc": [p for p in points if p]}
        return {"thetas": thetas.tolist(), "curves": curves, "a": c["a"], "s": c["s"]}

    def _union(self, c: dict[str, Any]) -> dict[str, Any]:
        ms = np.arange(1, c["max_m"] + 1)
        curves = {}
        for n in c["ns"]:
            expected = sdr.union_false_match_probability(n, c["a"], c["s"], c["theta"], ms)
            exact = sdr.union_false_match_probability(n, c["a"], c["s"], c["theta"], ms, union_size="distribution")
            points = []
            for m, p_exp, p in zip(ms, expected, exact):
                if not _measurable(float(p), c["trials"], self.min_events):
                    continue
                hist = mc.simulate_false_match_overlaps(n, c["a"], c["s"], c["trials"], m=int(m), seed=c["seed"] + int(m))
                est = _tail(hist, c["theta"])
                points.append((int(m), est.p, *self._check("union (exact union size)", f"n={n} M={m}", float(p), est)))
                self._check("union (paper: rounded mean size)", f"n={n} M={m}", float(p_exp), est)
            curves[n] = {"expected": expected.tolist(), "exact": exact.tolist(),
                         "s_eff": sdr.union_synapse_count(n, c["s"], ms).tolist(), "mc": points}
        return {"ms": ms.tolist(), "curves": curves, "a": c["a"], "s": c["s"], "theta": c["theta"]}

    def _noise(self, c: dict[str, Any]) -> dict[str, Any]:
        n, a, s, seed, trials = c["n"], c["a"], c["s"], c["seed"], c["trials"]
        levels = np.round(np.arange(1, c["noise_levels"] + 1) * c["noise_step"], 6)
        levels = levels[levels <= 1]
        hists = {float(x): mc.simulate_noise_overlaps(n, a, s, float(x), trials, seed=seed) for x in levels}
        match = {}
        for theta in c["thetas"]:
            theory = sdr.match_probability_with_noise(a, s, theta, levels)
            points = [self._points("match vs noise", f"θ={theta} noise={x:.3g}", float(p), _tail(hists[float(x)], theta),
                                   float(x)) for x, p in zip(levels, theory)]
            match[theta] = {"theory": theory.tolist(), "mc": [p for p in points if p]}
        # (b) total error against θ, optimal θ marked; Monte Carlo = simulated FP + simulated FN
        thetas = np.arange(1, s + 1)
        fp_hist = mc.simulate_false_match_overlaps(n, a, s, c["fp_trials"], seed=seed + 1)
        fp_mc = np.array([_tail(fp_hist, t).p for t in thetas])
        totals = {}
        for noise in c["optimal_noise"]:
            theory = sdr.total_error(n, a, s, thetas, noise)
            fn_hist = mc.simulate_noise_overlaps(n, a, s, noise, trials, seed=seed + 2)
            fn_mc = 1 - np.array([_tail(fn_hist, t).p for t in thetas])
            best = sdr.optimal_threshold(n, a, s, noise)
            totals[noise] = {"theory": theory.tolist(), "mc": (fp_mc + fn_mc).tolist(), "optimal_theta": int(best),
                             "optimal_error": float(theory[best - 1])}
        return {"levels": levels.tolist(), "match": match, "thetas": thetas.tolist(), "totals": totals,
                "n": n, "a": a, "s": s}


def _tail(hist, theta: int) -> mc.Estimate:
    """Trials with at least ``theta`` active synapses, out of all."""
    return mc.Estimate(int(hist[int(theta):].sum()), int(hist.sum()))


_STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
_GREYS = ["0.0", "0.25", "0.45", "0.6", "0.75", "0.85"]


def _mc_points(ax, pts, color, label=None) -> None:
    if not pts:
        return
    x, p, lo, hi = map(np.array, zip(*pts))
    ax.errorbar(x, p, yerr=[np.maximum(p - lo, 0), np.maximum(hi - p, 0)], fmt="o", mfc="white",
                mec=color, ecolor=color, ms=5, capsize=2, label=label)


def _plot(figure: str, d: dict[str, Any], path: Path) -> Path:
    """The paper's figure with the Monte Carlo points (open circles, Wilson intervals)."""
    from actsparse.report import figure as new_figure
    from actsparse.report import save_figure

    if figure == "noise":
        fig, (ax, ax2) = new_figure(1, 2, figsize=(11, 4.5), dpi=130)
    else:
        fig, ax = new_figure(figsize=(6, 4.5), dpi=130)
    if figure == "false_match":
        for i, (n, c) in enumerate(d["curves"].items()):
            ax.semilogy(d["thetas"], np.maximum(c["theory"], 1e-300), color=_GREYS[i], ls=_STYLES[i], lw=2,
                        label=f"n = {n:,}")
            _mc_points(ax, c["mc"], _GREYS[i], "Monte Carlo" if i == 0 else None)
        ax.set_xlabel(r"NMDA threshold $\theta$ (synapses required)")
        ax.set_ylabel("Probability of false match")
        ax.set_title(f"False matches: a = {d['a']} active cells, s = {d['s']} synapses")
        ax.set_ylim(bottom=1e-40, top=2)
    elif figure == "union":
        for i, (n, c) in enumerate(d["curves"].items()):
            ax.semilogy(d["ms"], np.maximum(c["expected"], 1e-300), color=_GREYS[i], ls="-", lw=2, label=f"n = {n:,}")
            ax.semilogy(d["ms"], np.maximum(c["exact"], 1e-300), color=_GREYS[i], ls=":", lw=1.5)
            _mc_points(ax, c["mc"], _GREYS[i], "Monte Carlo" if i == 0 else None)
        ax.plot([], [], color="0.3", ls=":", label="exact union size")
        ax.set_xlabel("Number of patterns stored on the segment (M)")
        ax.set_ylabel("Probability of false match")
        ax.set_title(f"Union property: a = {d['a']}, s = {d['s']} per pattern, θ = {d['theta']}")
        ax.set_xticks(d["ms"][::2])
    else:
        for i, (theta, c) in enumerate(d["match"].items()):
            ax.plot(d["levels"], c["theory"], color=_GREYS[i], ls=_STYLES[i], lw=2, label=f"θ = {theta}")
            _mc_points(ax, c["mc"], _GREYS[i], "Monte Carlo" if i == 0 else None)
        ax.set_xlabel("Noise (fraction of the a active cells replaced)")
        ax.set_ylabel("Probability of a correct match")
        ax.set_title(f"Robustness to noise: a = {d['a']}, s = {d['s']}")
        for i, (level, c) in enumerate(d["totals"].items()):
            ax2.semilogy(d["thetas"], np.maximum(c["theory"], 1e-300), color=_GREYS[i], ls=_STYLES[i], lw=2,
                         label=f"noise {level:.0%}")
            mc_vals = np.array(c["mc"])
            keep = mc_vals > 0
            ax2.semilogy(np.array(d["thetas"])[keep], mc_vals[keep], "o", mfc="white", mec=_GREYS[i], ms=4)
            ax2.semilogy([c["optimal_theta"]], [c["optimal_error"]], "*", color="crimson", ms=14,
                         label="optimal θ" if i == 0 else None)
        ax2.set_xlabel(r"NMDA threshold $\theta$")
        ax2.set_ylabel("False match + false negative probability")
        ax2.set_title(f"Total error, n = {d['n']:,} (circles: Monte Carlo)")
        ax2.set_ylim(bottom=1e-7, top=3)
        ax2.legend(frameon=False, fontsize=8)
    ax.legend(frameon=False, fontsize=8)
    return save_figure(fig, path)
