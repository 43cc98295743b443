"""Figures and markdown tables of the hash-code study (``actsparse.experiments.hash_codes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


from actsparse.report import figure, save_figure  # sets the headless backend

METHODS = ("kmeans", "knn", "logreg")
LABELS = {"kmeans": "k-means", "knn": "k-NN (k=9, Hamming)", "logreg": "logistic regression"}
Rows = Sequence[Mapping[str, Any]]


def _panels(rows: Rows, x: str, xlabel: str, path: Path, title: str, group: str | None = None,
            logx: bool = False) -> Path:
    """Redundancy ratio and the three accuracies against ``x``; solid = test codes, dashed = train."""
    groups = sorted({r[group] for r in rows}) if group else [None]
    shown = ("redundancy", *(m for m in METHODS if f"test_{m}" in rows[0]))
    fig, axes = figure(1, len(shown), figsize=(4 * len(shown), 3.8), dpi=110, squeeze=False)
    axes = axes[0]
    for g in groups:
        sub = sorted((r for r in rows if group is None or r[group] == g), key=lambda r: r[x])
        xs = [r[x] for r in sub]
        tag = f"{group} {g}, " if group else ""
        for ax, metric in zip(axes, shown):
            line, = ax.plot(xs, [r[f"test_{metric}"] for r in sub], marker="o", markersize=3, label=f"{tag}test")
            ax.plot(xs, [r[f"train_{metric}"] for r in sub], marker="o", markersize=3, linestyle="--",
                    color=line.get_color(), alpha=0.7, label=f"{tag}train")
    for ax, metric in zip(axes, shown):
        ax.set_title("redundancy ratio" if metric == "redundancy" else f"{LABELS[metric]} accuracy", fontsize=9)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_study(results: Mapping[str, Rows], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    if results.get("width"):
        written.append(_panels(results["width"], "width", "hidden width (units per layer)", out_dir / "vs_width.png",
                               "Neural codes of digits MLPs vs width (solid: test codes, dashed: train codes)",
                               group="depth", logx=True))
    if results.get("epochs"):
        written.append(_panels(results["epochs"], "epoch", "training epochs", out_dir / "vs_epochs.png",
                               "Neural codes during training (solid: test codes, dashed: train codes)"))
    if results.get("train_size"):
        written.append(_panels(results["train_size"], "train_size", "training samples", out_dir / "vs_train_size.png",
                               "Neural codes vs training-set size (solid: test codes, dashed: train codes)", logx=True))
    return written


def _rows(rows: Rows, keys: Sequence[str], protocols: Sequence[str]) -> list[dict[str, Any]]:
    """Table rows: the main protocol's columns, then the other protocols' test accuracies."""
    heads = {"width": "width", "depth": "depth", "epoch": "epoch", "train_size": "train samples", "units": "units",
             "train_redundancy": "redundancy train", "test_redundancy": "redundancy test",
             "train_purity": "purity train", "test_purity": "purity test",
             "train_kmeans": "k-means train", "test_kmeans": "k-means test", "train_knn": "k-NN train",
             "test_knn": "k-NN test", "train_logreg": "logreg train", "test_logreg": "logreg test",
             "net_test_acc": "network test acc"}
    extra = [f"{k}@{p}" for p in protocols[1:] for k in ("test_redundancy", *(f"test_{m}" for m in METHODS))]
    out = []
    for r in rows:
        row = {heads[k]: (r[k] if isinstance(r[k], int) else round(r[k], 4 if "redundancy" in k else 3))
               for k in keys if k in r}
        row.update({k.replace("test_", "test ").replace("@", " @"): round(r[k], 3) for k in extra if k in r})
        out.append(row)
    return out


ACC_KEYS = ("train_redundancy", "test_redundancy", "train_purity", "test_purity", "train_kmeans", "test_kmeans", "train_knn", "test_knn",
            "train_logreg", "test_logreg", "net_test_acc")


def tables(results: Mapping[str, Rows], protocols: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The study's tables (title -> rows) for :func:`actsparse.experiments.study.write_results`."""
    main = f"protocol {protocols[0]}"
    out = {}
    if results.get("width"):
        out[f"vs width and depth ({main})"] = _rows(results["width"], ("width", "depth", "units", *ACC_KEYS), protocols)
    if results.get("epochs"):
        out[f"vs training epochs ({main})"] = _rows(results["epochs"], ("epoch", "units", *ACC_KEYS), protocols)
    if results.get("train_size"):
        out[f"vs training-set size ({main})"] = _rows(results["train_size"], ("train_size", "units", *ACC_KEYS),
                                                       protocols)
    return out
