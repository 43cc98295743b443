"""Ahmad & Hawkins (2016)'s SDR figures from the exact theory, with Monte Carlo points
(issue 14): ``actsparse-train experiment=sdr_theory``.

1. ``false_match_vs_theta.png``: probability of a false match against the threshold θ for a
   segment of ``s`` synapses, ``a`` active cells, several population sizes ``n``.
2. ``union_capacity.png``: false-match probability of one segment storing the union of ``M``
   patterns against ``M`` (the paper's n = 1000 / 10,000 / 20,000, a = 200, s = 25, θ = 15),
   with the paper's rounded-mean formula and the exact average over the union's size.
3. ``noise.png``: (a) probability that a segment still recognizes its pattern against the noise
   fraction for several θ (the paper's a = 128, s = 30, θ = 8/12/16); (b) total error (false
   match + false negative) against θ at a few noise levels, the optimal θ marked.

Monte Carlo points are plotted where the expected count of events is at least
``min_events`` (rarer probabilities are not measurable with the trials given). Every point's
Wilson interval is checked against the theory and the agreement is tabulated, with the time of
a 100 x 100 theory grid at n = 20,000 and the simulator's throughput.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from actsparse.experiments import study
from actsparse.plugins.dendrites import montecarlo as mc
from actsparse.plugins.dendrites import sdr


def _estimates(hist: torch.Tensor, thetas) -> list[mc.Estimate]:
    return [mc.Estimate(int(hist[t:].sum()), int(hist.sum())) for t in thetas]


def _measurable(p: float, trials: int, min_events: int) -> bool:
    return min(p, 1 - p) * trials >= min_events


def _agreement(rows: list[dict], figure: str, label: str, theory: float, est: mc.Estimate, confidence: float) -> None:
    lo, hi = est.interval(confidence)
    rows.append({"figure": figure, "point": label, "theory": theory, "monte carlo": est.p,
                 "ci low": lo, "ci high": hi, "inside": bool(lo <= theory <= hi)})


def false_match_figure(cfg: DictConfig, rows: list[dict]) -> dict[str, Any]:
    c, settings = cfg.sdr_theory.false_match, cfg.sdr_theory
    thetas = np.arange(1, c.s + 1)
    data = {}
    for n in c.ns:
        theory = sdr.false_match_probability(int(n), c.a, c.s, thetas)
        hist = mc.simulate_false_match_overlaps(int(n), c.a, c.s, int(settings.trials), seed=int(settings.seed))
        points = []
        for t, p, est in zip(thetas, theory, _estimates(hist, thetas)):
            if _measurable(p, est.trials, settings.min_events):
                points.append((int(t), est))
                _agreement(rows, "false match vs θ", f"n={n} θ={t}", float(p), est, settings.confidence)
        data[int(n)] = {"theory": theory.tolist(), "mc": [(t, e.p, *e.interval(settings.confidence)) for t, e in points]}
    return {"thetas": thetas.tolist(), "curves": data, "a": c.a, "s": c.s}


def union_figure(cfg: DictConfig, rows: list[dict]) -> dict[str, Any]:
    c, settings = cfg.sdr_theory.union, cfg.sdr_theory
    ms = np.arange(1, c.max_m + 1)
    data = {}
    for n in c.ns:
        expected = sdr.union_false_match_probability(int(n), c.a, c.s, c.theta, ms)
        exact = sdr.union_false_match_probability(int(n), c.a, c.s, c.theta, ms, union_size="distribution")
        points = []
        for m, p_exp, p in zip(ms, expected, exact):
            if not _measurable(float(p), int(settings.union_trials), settings.min_events):
                continue
            hist = mc.simulate_false_match_overlaps(int(n), c.a, c.s, int(settings.union_trials), m=int(m),
                                                    seed=int(settings.seed) + int(m))
            est = _estimates(hist, [c.theta])[0]
            points.append((int(m), est))
            _agreement(rows, "union (exact union size)", f"n={n} M={m}", float(p), est, settings.confidence)
            _agreement(rows, "union (paper: rounded mean size)", f"n={n} M={m}", float(p_exp), est, settings.confidence)
        data[int(n)] = {"expected": expected.tolist(), "exact": exact.tolist(),
                        "s_eff": sdr.union_synapse_count(int(n), c.s, ms).tolist(),
                        "mc": [(m, e.p, *e.interval(settings.confidence)) for m, e in points]}
    return {"ms": ms.tolist(), "curves": data, "a": c.a, "s": c.s, "theta": c.theta}


def noise_figure(cfg: DictConfig, rows: list[dict]) -> dict[str, Any]:
    c, settings = cfg.sdr_theory.noise, cfg.sdr_theory
    levels = np.round(np.arange(1, c.levels + 1) * c.step, 6)
    levels = levels[levels <= 1]
    match = {}
    hists = {}
    for noise in levels:
        hists[float(noise)] = mc.simulate_noise_overlaps(c.n, c.a, c.s, float(noise), int(settings.noise_trials),
                                                         seed=int(settings.seed))
    for theta in c.thetas:
        theory = sdr.match_probability_with_noise(c.a, c.s, int(theta), levels)
        points = []
        for noise, p in zip(levels, theory):
            est = _estimates(hists[float(noise)], [int(theta)])[0]
            if _measurable(float(p), est.trials, settings.min_events):
                points.append((float(noise), est))
                _agreement(rows, "match vs noise", f"θ={theta} noise={noise:.3g}", float(p), est, settings.confidence)
        match[int(theta)] = {"theory": theory.tolist(), "mc": [(x, e.p, *e.interval(settings.confidence)) for x, e in points]}
    # (b) total error against θ, optimal θ marked; Monte Carlo = simulated FP + simulated FN
    thetas = np.arange(1, c.s + 1)
    fp_hist = mc.simulate_false_match_overlaps(c.n, c.a, c.s, int(settings.trials), seed=int(settings.seed) + 1)
    fp_mc = np.array([e.p for e in _estimates(fp_hist, thetas)])
    totals = {}
    for noise in c.optimal_noise:
        theory = sdr.total_error(c.n, c.a, c.s, thetas, float(noise))
        fn_hist = mc.simulate_noise_overlaps(c.n, c.a, c.s, float(noise), int(settings.noise_trials),
                                             seed=int(settings.seed) + 2)
        fn_mc = 1 - np.array([e.p for e in _estimates(fn_hist, thetas)])
        best = sdr.optimal_threshold(c.n, c.a, c.s, float(noise))
        totals[float(noise)] = {"theory": theory.tolist(), "mc": (fp_mc + fn_mc).tolist(), "optimal_theta": best,
                                "optimal_error": float(theory[best - 1])}
    return {"levels": levels.tolist(), "match": match, "thetas": thetas.tolist(), "totals": totals,
            "n": c.n, "a": c.a, "s": c.s}


def timings(cfg: DictConfig) -> list[dict[str, Any]]:
    """Wall time of the theory on a grid and of the simulator (best of ``repeats``)."""
    t = cfg.sdr_theory.timing
    a = np.round(np.linspace(t.a_min, t.a_max, t.grid))
    thetas = np.arange(1, t.grid + 1)
    sdr.false_match_probability(t.n, a[:5, None], t.s, thetas[None, :5])  # warm the log-factorial table
    rows = []

    def best_of(fn, repeats):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    sec = best_of(lambda: sdr.false_match_probability(t.n, a[:, None], t.s, thetas[None, :]), t.repeats)
    rows.append({"what": f"theory: {t.grid} x {t.grid} grid (a x θ), n={t.n:,}, s={t.s}", "seconds": sec,
                 "per value (µs)": 1e6 * sec / t.grid ** 2})
    for n, a_, s in ((t.n, 200, 25), (1000, 40, 20)):
        sec = best_of(lambda: mc.simulate_false_match_overlaps(n, a_, s, int(t.trials)), 1)
        rows.append({"what": f"Monte Carlo: {int(t.trials):,} false-match trials, n={n:,}, a={a_}, s={s}",
                     "seconds": sec, "per value (µs)": 1e6 * sec / int(t.trials)})
    return rows


def plot(fm: dict, union: dict, noise: dict, out) -> dict[str, Any]:

    from actsparse.report import figure, save_figure

    figures = {}
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    greys = ["0.0", "0.25", "0.45", "0.6", "0.75", "0.85"]

    def mc_points(ax, pts, color, label=None):
        if not pts:
            return
        x, p, lo, hi = map(np.array, zip(*pts))
        ax.errorbar(x, p, yerr=[np.maximum(p - lo, 0), np.maximum(hi - p, 0)], fmt="o", mfc="white",
                    mec=color, ecolor=color, ms=5, capsize=2, label=label)

    fig, ax = figure(figsize=(6, 4.5), dpi=130)
    for i, (n, d) in enumerate(fm["curves"].items()):
        ax.semilogy(fm["thetas"], np.maximum(d["theory"], 1e-300), color=greys[i], ls=styles[i], lw=2, label=f"n = {n:,}")
        mc_points(ax, d["mc"], greys[i], "Monte Carlo" if i == 0 else None)
    ax.set_xlabel(r"NMDA threshold $\theta$ (synapses required)")
    ax.set_ylabel("Probability of false match")
    ax.set_title(f"False matches: a = {fm['a']} active cells, s = {fm['s']} synapses")
    ax.set_ylim(bottom=1e-40, top=2)
    ax.legend(frameon=False, fontsize=8)
    figures["sdr_theory/false_match_vs_theta"] = save_figure(fig, out / "false_match_vs_theta.png")

    fig, ax = figure(figsize=(6, 4.5), dpi=130)
    for i, (n, d) in enumerate(union["curves"].items()):
        ax.semilogy(union["ms"], np.maximum(d["expected"], 1e-300), color=greys[i], ls="-", lw=2, label=f"n = {n:,}")
        ax.semilogy(union["ms"], np.maximum(d["exact"], 1e-300), color=greys[i], ls=":", lw=1.5)
        mc_points(ax, d["mc"], greys[i], "Monte Carlo" if i == 0 else None)
    ax.plot([], [], color="0.3", ls=":", label="exact union size")
    ax.set_xlabel("Number of patterns stored on the segment (M)")
    ax.set_ylabel("Probability of false match")
    ax.set_title(f"Union property: a = {union['a']}, s = {union['s']} per pattern, θ = {union['theta']}")
    ax.set_xticks(union["ms"][::2])
    ax.legend(frameon=False, fontsize=8)
    figures["sdr_theory/union_capacity"] = save_figure(fig, out / "union_capacity.png")

    fig, axes = figure(1, 2, figsize=(11, 4.5), dpi=130)
    ax = axes[0]
    for i, (theta, d) in enumerate(noise["match"].items()):
        ax.plot(noise["levels"], d["theory"], color=greys[i], ls=styles[i], lw=2, label=f"θ = {theta}")
        mc_points(ax, d["mc"], greys[i], "Monte Carlo" if i == 0 else None)
    ax.set_xlabel("Noise (fraction of the a active cells replaced)")
    ax.set_ylabel("Probability of a correct match")
    ax.set_title(f"Robustness to noise: a = {noise['a']}, s = {noise['s']}")
    ax.legend(frameon=False, fontsize=8)
    ax = axes[1]
    for i, (level, d) in enumerate(noise["totals"].items()):
        ax.semilogy(noise["thetas"], np.maximum(d["theory"], 1e-300), color=greys[i], ls=styles[i], lw=2,
                    label=f"noise {level:.0%}")
        mc_vals = np.array(d["mc"])
        keep = mc_vals > 0
        ax.semilogy(np.array(noise["thetas"])[keep], mc_vals[keep], "o", mfc="white", mec=greys[i], ms=4)
        ax.semilogy([d["optimal_theta"]], [d["optimal_error"]], "*", color="crimson", ms=14,
                    label="optimal θ" if i == 0 else None)
    ax.set_xlabel(r"NMDA threshold $\theta$")
    ax.set_ylabel("False match + false negative probability")
    ax.set_title(f"Total error, n = {noise['n']:,} (circles: Monte Carlo)")
    ax.set_ylim(bottom=1e-7, top=3)
    ax.legend(frameon=False, fontsize=8)
    figures["sdr_theory/noise"] = save_figure(fig, out / "noise.png")
    return figures


def run(cfg: DictConfig) -> dict[str, Any]:
    settings = cfg.sdr_theory
    out = study.prepare(cfg, threads=settings.get("threads"))
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    fm = false_match_figure(cfg, rows)
    union = union_figure(cfg, rows)
    noise = noise_figure(cfg, rows)
    timing_rows = timings(cfg)
    figures = plot(fm, union, noise, out)
    summary = []
    for figure in dict.fromkeys(r["figure"] for r in rows):
        mine = [r for r in rows if r["figure"] == figure]
        inside = sum(r["inside"] for r in mine)
        worst = max(abs(r["monte carlo"] - r["theory"]) / max(r["theory"], 1e-300) for r in mine)
        summary.append({"comparison": figure, "points": len(mine), "theory inside the MC interval": inside,
                        "share": inside / len(mine), "largest relative difference": worst})
    optimal_rows = [{"noise": level, "optimal θ": d["optimal_theta"], "total error": d["optimal_error"]}
                    for level, d in noise["totals"].items()]
    elapsed = time.perf_counter() - start
    confidence = float(settings.confidence)
    tables = {
        f"Theory vs Monte Carlo ({confidence:.1%} Wilson intervals)": summary,
        f"Optimal threshold (n={noise['n']:,}, a={noise['a']}, s={noise['s']})": optimal_rows,
        "Timing": timing_rows,
        "Every Monte Carlo point": rows,
    }
    study.write_results(out, tables, {"false_match": fm, "union": union, "noise": noise, "seconds": round(elapsed, 1)},
                        title=f"SDR theory (Ahmad & Hawkins 2016) with Monte Carlo checks ({elapsed:.0f} s)")
    study.log_to_wandb(cfg, out, figures=figures, tables={"sdr_theory/agreement": summary,
                                                          "sdr_theory/timing": timing_rows})
    return {"agreement": summary, "points": rows, "timing": timing_rows, "optimal": optimal_rows,
            "figures": {k: str(v) for k, v in figures.items()}, "seconds": elapsed, "out": str(out)}


if __name__ == "__main__":
    study.alias_main("sdr_theory")
