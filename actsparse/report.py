"""Run reports: PNG curves and the summary table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

if TYPE_CHECKING:
    from actsparse.metrics.functional.laws import ActivationLaw

Curve = Sequence[tuple[int, float]]


def figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6.5, 4.0), dpi: int = 120, **kwargs):
    """A new figure and its axes (``plt.subplots``' arguments) in the one backend this module sets
    (Agg, files only): every plot of actsparse starts here and ends in :func:`save_figure`."""
    return plt.subplots(nrows, ncols, figsize=figsize, dpi=dpi, **kwargs)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write (creating folders) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(
    curves: Mapping[str, Curve], path: str | Path, title: str, ylabel: str, logy: bool = False
) -> Path | None:
    """One figure with a line per curve (x = optimizer step). Returns None when nothing to plot."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_heatmap(
    grid: Sequence[Sequence[float]], rows: Sequence[str], columns: Sequence[int], path: str | Path,
    title: str, xlabel: str,
) -> Path:
    """A rows x columns heatmap (e.g. site x step sparsity) with a colour bar in [0, 1]."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.6), dpi=120)
    image = ax.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(rows)), rows)
    ticks = sorted({0, len(columns) - 1, *range(0, len(columns), max(1, len(columns) // 8))})
    ax.set_xticks(ticks, [str(columns[i]) for i in ticks])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def plot_run_curves(history: Mapping[str, Curve], out_dir: str | Path) -> list[Path]:
    """``loss.png`` (train and val loss), ``perplexity.png`` (val perplexity) and one
    ``<name>.png`` for every other validation curve (``val/acc`` -> ``acc.png``)."""
    out_dir = Path(out_dir)
    written = [
        plot_curves(
            {"train": history.get("train/loss", []), "val": history.get("val/loss", [])},
            out_dir / "loss.png", "Loss", "loss",
        ),
        plot_curves({"val": history.get("val/ppl", [])}, out_dir / "perplexity.png",
                    "Validation perplexity", "perplexity", logy=True),
    ]
    for key, points in history.items():
        if key.startswith("val/") and key not in ("val/loss", "val/ppl"):
            name = key.removeprefix("val/").replace("/", "_")
            written.append(plot_curves({"val": points}, out_dir / f"{name}.png", f"Validation {name}", name))
    return [p for p in written if p is not None]


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_summary(rows: Mapping[str, object], title: str = "actsparse run summary") -> str:
    """Print a two-column table; returns the text so callers can store it."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, format_value(value))
    return _print(table, width=100)


def print_table(rows: Sequence[Mapping[str, object]], title: str = "") -> str:
    """Print rows (dicts with the same keys) as a table; returns the text."""
    table = Table(title=title or None, show_header=True, header_style="bold")
    columns = list(rows[0]) if rows else []
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(format_value(row[c]) for c in columns))
    return _print(table, width=160)


def _print(table: Table, width: int) -> str:
    """Render to text once: printed now, returned for files and summaries."""
    console = Console(width=width)
    with console.capture() as capture:
        console.print(table)
    text = capture.get()
    print(text, flush=True)
    return text


def plot_activation_laws(curves: Mapping[str, tuple[Sequence[float], Sequence[float], "ActivationLaw | None"]],
                         path: str | Path, title: str = "Activation ratio vs training tokens") -> Path:
    """One panel: each label's points and its fitted law (a dashed line to 2× the last token count)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for i, (label, (tokens, ratio, law)) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(tokens, ratio, "o", ms=3, color=color, alpha=0.6, label=label)
        if law is not None:
            grid = np.linspace(min(tokens), 2 * max(tokens), 200)
            ax.plot(grid, law(grid), "--", color=color, label=f"fit: A0={law.A0:.3f}, R²={law.r2:.2f}")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("activation ratio A = 1 − sparsity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
