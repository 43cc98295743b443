"""The three regimes of infinitely wide and deep networks (Radhakrishnan, Belkin, Uhler; issue 15).

``actsparse-train experiment=ntk_regimes``: two-class Dirichlet data on the sphere (the authors'
alphas in dims 3, 5, 9, priors 0.4/0.6); for each activation's dual, the NTK kernel-regression
predictor (ridgeless; the minimum-norm solution where the Gram matrix is singular) at depths
1…5000, against 1-NN, majority vote, the singular kernel ``||x - z||^-(d-1)`` and the Bayes
classifier of the data model; its agreement with each of them says which regime it is in.

Kernels: depths ``<= exact_max_depth`` use the exact recursion on the Gram matrices; deeper ones a
:class:`~actsparse.plugins.ntk.kernels.KernelProfile` (the exact recursion on a grid of xi,
interpolated), computed once per activation for all dims and seeds. Both are in the log domain,
so entries far below 1e-308 keep their ratios. The results report how often the two agree at the
depth where both are computed.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from actsparse.data.ntk_sphere import DirichletSphere
from actsparse.experiments import study
from actsparse.plugins.ntk.classifiers import (
    kernel_regression,
    majority_vote_predict,
    nearest_neighbor_predict,
    singular_kernel_predict,
)
from actsparse.plugins.ntk.duals import dual_activation
from actsparse.plugins.ntk.kernels import LogKernel, kernel_path, kernel_profiles, sphere_gram

BASELINES = ("bayes", "1nn", "majority", "singular")


def _predict(train: LogKernel, y_train: torch.Tensor, test: LogKernel) -> tuple[torch.Tensor, bool]:
    """Kernel-regression predictions; whether the Gram matrix was singular (minimum-norm solution)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        preds = kernel_regression(train, y_train, test, on_singular="lstsq")
    return preds, any("singular" in str(w.message) for w in caught)


def _with_labels(kernel: LogKernel, n_train: int, y_train: torch.Tensor) -> tuple[LogKernel, torch.Tensor, LogKernel]:
    """Split the stacked ``[K(train, train); K(test, train)]`` kernel into the predictor's arguments."""
    return (LogKernel(kernel.logabs[:n_train], kernel.sign[:n_train]), y_train,
            LogKernel(kernel.logabs[n_train:], kernel.sign[n_train:]))


def activations_for(p: DictConfig, dim: int) -> list[str]:
    extra = (p.get("extra_activations") or {}).get(dim) or (p.get("extra_activations") or {}).get(str(dim)) or []
    return [str(a) for a in list(p.activations) + list(extra)]


def depths_for(p: DictConfig, activation: str) -> list[int]:
    extra = (p.get("extra_depths") or {}).get(activation) or []
    return sorted({int(d) for d in list(p.depths) + list(extra)})


def run_dim_seed(p: DictConfig, dim: int, seed: int, profiles: dict) -> dict:
    """Baselines and the kernel predictors of every activation at every depth on one sample."""
    model = DirichletSphere.preset(dim, tuple(p.priors))
    gen = torch.Generator().manual_seed(1000 * dim + seed)
    x, y = model.sample(int(p.n_train) + int(p.n_test), gen)
    n = int(p.n_train)
    xtr, ytr, xte, yte = x[:n], y[:n], x[n:], y[n:]
    base = {
        "bayes": model.bayes_predict(xte),
        "1nn": nearest_neighbor_predict(xtr, ytr, xte),
        "majority": majority_vote_predict(ytr, len(yte)),
        "singular": singular_kernel_predict(xtr, ytr, xte, alpha=dim - 1),
    }
    acc = lambda pred: float((pred == yte).double().mean())
    result = {"baselines": {k: acc(v) for k, v in base.items()}, "kernels": {}}
    xi = torch.cat([sphere_gram(xtr), sphere_gram(xte, xtr)])
    exact_max = int(p.exact_max_depth)
    for activation in activations_for(p, dim):
        depths = depths_for(p, activation)
        rows = {}
        exact = dict(kernel_path(xi, [d for d in depths if d <= exact_max] + [exact_max], activation, kind=p.kind))
        for depth in depths:
            if depth > exact_max and depth not in profiles[activation]:
                continue  # past a KernelDepthOverflow: not representable in float64 logs
            kernel = exact[depth] if depth <= exact_max else profiles[activation][depth](xi)
            preds, singular = _predict(*_with_labels(kernel, n, ytr))
            rows[depth] = {"acc": acc(preds), "singular_gram": singular,
                           **{f"agree_{k}": float((preds == v).double().mean()) for k, v in base.items()}}
        check_exact, _ = _predict(*_with_labels(exact[exact_max], n, ytr))
        check_profile, _ = _predict(*_with_labels(profiles[activation][exact_max](xi), n, ytr))
        result["kernels"][activation] = {"depths": rows,
                                         "profile_agreement": float((check_exact == check_profile).double().mean())}
    return result


def summarize(p: DictConfig, runs: dict) -> dict:
    """Mean/std over seeds per dim: baselines, and per activation and depth every metric."""
    out = {}
    for dim, seeds in runs.items():
        base = {k: study.mean_std([r["baselines"][k] for r in seeds]) for k in BASELINES}
        kernels = {}
        for activation in activations_for(p, dim):
            per_depth = {}
            for depth in depths_for(p, activation):
                if depth not in seeds[0]["kernels"][activation]["depths"]:
                    continue
                vals = [r["kernels"][activation]["depths"][depth] for r in seeds]
                per_depth[depth] = {k: study.mean_std([v[k] for v in vals]) for k in vals[0] if k != "singular_gram"}
                per_depth[depth]["singular_gram"] = sum(v["singular_gram"] for v in vals)
            agreement = study.mean_std([r["kernels"][activation]["profile_agreement"] for r in seeds])
            kernels[activation] = {"depths": per_depth, "profile_agreement": agreement}
        out[dim] = {"baselines": base, "kernels": kernels}
    return out


def _pm(mean_std: tuple[float, float]) -> str:
    return f"{mean_std[0]:.3f} ± {mean_std[1]:.3f}"


def tables(p: DictConfig, summary: dict) -> dict[str, list[dict]]:
    baselines = [{"dim": dim, **{k: _pm(s["baselines"][k]) for k in BASELINES}} for dim, s in summary.items()]
    limit_rows, depth_rows, check_rows = [], [], []
    all_depths = sorted({d for s in summary.values() for k in s["kernels"].values() for d in k["depths"]})
    for dim, s in summary.items():
        for activation, k in s["kernels"].items():
            deepest = max(k["depths"])
            d = k["depths"][deepest]
            dual = dual_activation(activation)
            limit_rows.append({
                "dim": dim, "activation": activation, "theory": dual.regime(), "depth": deepest,
                "acc": _pm(d["acc"]), "bayes acc": f"{s['baselines']['bayes'][0]:.3f}",
                "agree 1-NN": round(d["agree_1nn"][0], 3), "agree majority": round(d["agree_majority"][0], 3),
                "agree singular": round(d["agree_singular"][0], 3), "agree Bayes": round(d["agree_bayes"][0], 3),
            })
            row = {"dim": dim, "activation": activation}
            for depth in all_depths:  # one column per depth of any activation ("–" where not run)
                if depth not in k["depths"]:
                    row[f"L={depth}"] = "–"
                    continue
                mark = "*" if k["depths"][depth]["singular_gram"] else ""
                row[f"L={depth}"] = f"{k['depths'][depth]['acc'][0]:.3f}{mark}"
            depth_rows.append(row)
            check_rows.append({"dim": dim, "activation": activation, "depth": int(p.exact_max_depth),
                               "exact vs profile agreement": round(k["profile_agreement"][0], 4)})
    return {
        "Baselines: test accuracy (mean ± std over seeds)": baselines,
        "Deep limit: accuracy and agreement rates at the deepest depth (mean over seeds)": limit_rows,
        "Test accuracy vs depth (mean over seeds; * = singular Gram matrix in some seed, minimum-norm solution)": depth_rows,
        "Check: predictions of the exact recursion vs the interpolated profile": check_rows,
    }


def plot(summary: dict, out: Path) -> Path:

    from actsparse.report import figure, save_figure

    dims = list(summary)
    fig, axes = figure(1, len(dims), figsize=(5.2 * len(dims), 4.2), squeeze=False)
    styles = {"bayes": ("k", "-"), "1nn": ("tab:gray", "--"), "majority": ("tab:gray", ":"), "singular": ("tab:brown", "-.")}
    for ax, dim in zip(axes[0], dims):
        s = summary[dim]
        for activation, k in s["kernels"].items():
            depths = sorted(k["depths"])
            ax.plot(depths, [k["depths"][d]["acc"][0] for d in depths], marker="o", ms=3, label=activation)
        for name, (color, ls) in styles.items():
            ax.axhline(s["baselines"][name][0], color=color, ls=ls, lw=1.2,
                       label={"1nn": "1-NN", "majority": "majority vote", "singular": f"|x-z|^-{dim - 1}"}.get(name, "Bayes"))
        ax.set_xscale("log")
        ax.set_xlabel("depth L (hidden layers)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"dim {dim}: NTK predictor vs depth")
    axes[0][-1].legend(fontsize=7, loc="lower left", ncol=2)
    return save_figure(fig, out / "ntk_regimes.png")


def run(cfg: DictConfig) -> dict:
    """``actsparse-train experiment=ntk_regimes``: every dim x seed x activation x depth of ``cfg.ntk_regimes``."""
    p = cfg.ntk_regimes
    if p.kind not in ("ntk", "nngp"):
        raise ValueError(f"ntk_regimes.kind must be 'ntk' or 'nngp', got {p.kind!r}.")
    out = study.prepare(cfg, threads=p.get("threads"))
    start = time.perf_counter()
    all_acts = sorted({a for dim in p.dims for a in activations_for(p, int(dim))})
    profiles = {}
    for activation in all_acts:  # data-independent: one pass per activation
        t = time.perf_counter()
        deep = [d for d in depths_for(p, activation) if d > int(p.exact_max_depth)] + [int(p.exact_max_depth)]
        profiles[activation] = kernel_profiles(deep, activation, kind=p.kind, grid_size=int(p.grid_size),
                                               allow_overflow=True)
        reached = max(profiles[activation], default=0)
        note = "" if reached == max(deep) else ", log|K| overflows float64 beyond it: deeper depths skipped"
        print(f"profile {activation}: depths up to {reached}{note} ({time.perf_counter() - t:.1f} s)", flush=True)
    runs = defaultdict(list)
    for dim in p.dims:
        for seed in p.seeds:
            t = time.perf_counter()
            runs[int(dim)].append(run_dim_seed(p, int(dim), int(seed), profiles))
            b = runs[int(dim)][-1]["baselines"]
            print(f"dim {dim} seed {seed}: bayes {b['bayes']:.3f} 1nn {b['1nn']:.3f} majority {b['majority']:.3f} "
                  f"singular {b['singular']:.3f} ({time.perf_counter() - t:.1f} s)", flush=True)
    elapsed = time.perf_counter() - start
    summary = summarize(p, runs)
    tabs = tables(p, summary)
    figure = plot(summary, out)
    study.write_results(out, tabs, {"seconds": round(elapsed, 1), "config": OmegaConf.to_container(p, resolve=True),
                                    "summary": {str(k): v for k, v in summary.items()}},
                        title=f"Deep NTK regimes on Dirichlet sphere data ({elapsed:.0f} s)")
    study.log_to_wandb(cfg, out, figures={"ntk_regimes": figure}, tables=tabs)
    result = {"seconds": elapsed}
    for dim, s in summary.items():
        for activation, k in s["kernels"].items():
            result[f"dim{dim}/{activation}/deep_acc"] = k["depths"][max(k["depths"])]["acc"][0]
        result[f"dim{dim}/bayes_acc"] = s["baselines"]["bayes"][0]
    return result


if __name__ == "__main__":
    study.alias_main("ntk_regimes")
