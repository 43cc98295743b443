"""ProteinRPN vs a GMT-only baseline on synthetic motif chains, then the same model over real PDB files.

    actsparse-train experiment=protein_rpn
    actsparse-train experiment=protein_rpn protein_rpn.seeds=[0] trainer.max_epochs=5     # quicker
    actsparse-train experiment=protein_rpn protein_rpn.pdb_dir=/path/to/pdb               # your structures

For each seed in ``protein_rpn.seeds`` it trains ProteinRPN (``cfg.model``) and the GMT baseline
(``protein_rpn.baseline``) with the task in ``cfg.task`` on the data in ``cfg.data`` (default:
synthetic chains with planted motifs), with actsparse's ``SparsityMonitor`` and
``DeadNeuronMonitor`` attached, and tests them: Fmax, AUPR (micro, macro), Smin, and for
ProteinRPN the precision/recall of its proposed functional residues (anchors) against the
planted motif residues, plus the fraction of planted residues kept by the node-drop pooling.
Then it runs the seed-0 ProteinRPN over every structure file in ``protein_rpn.pdb_dir`` (skipped
with a note when the folder is absent) and times one 500-residue chain (graph building and a
forward pass). Writes ``results.md``/``results.json``, ``proposals.png`` (a test chain and a
real chain with the proposed regions highlighted) and ``training.png``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from actsparse.callbacks import DeadNeuronMonitor, SparsityMonitor
from actsparse.experiments import study

LABELS = {"protein_rpn": "ProteinRPN", "protein_rpn_no_site": "ProteinRPN, no site loss",
          "gmt_baseline": "GMT baseline"}


def _quiet() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _model_config(cfg: DictConfig, variant: str) -> DictConfig:
    return cfg.protein_rpn.baseline if variant == "gmt_baseline" else cfg.model


@torch.no_grad()
def proposal_recall(model, graphs) -> dict[str, float]:
    """Over ``graphs`` (with ``site``): anchor precision/recall and the fraction of planted
    residues that survive node drop, pooled over residues."""
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(graphs)
    proposal = model.propose(batch)
    site = batch.site > 0
    anchors, kept, region = proposal["anchor"], proposal["kept"], proposal["region"]
    hits = int((anchors & site).sum())
    return {"site_precision": hits / max(int(anchors.sum()), 1), "site_recall": hits / max(int(site.sum()), 1),
            "region_recall": int((region & site).sum()) / max(int(site.sum()), 1),
            "kept_recall": int((kept & site).sum()) / max(int(site.sum()), 1),
            "kept_fraction": float(kept.float().mean())}


def train_one(cfg: DictConfig, datamodule, variant: str, seed: int, out: Path) -> tuple[Any, dict[str, Any]]:
    L.seed_everything(seed, workers=True, verbose=False)
    model = instantiate(_model_config(cfg, variant), num_terms=datamodule.num_terms, _convert_="all")
    extra = {"site_weight": 0.0} if variant == "protein_rpn_no_site" else {}
    task = instantiate(cfg.task, model=model, _convert_="all", **extra)
    sparsity, dead = SparsityMonitor(heatmap=False), DeadNeuronMonitor(heatmap=False)
    trainer = study.trainer(cfg, [sparsity, dead], enable_progress_bar=False,
                            default_root_dir=str(out / "runs" / f"{variant}_seed{seed}"))
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - start
    (tested,) = trainer.test(task, datamodule=datamodule, verbose=False)
    row: dict[str, Any] = {"model": variant, "seed": seed, "seconds": seconds, "steps": trainer.global_step,
                           "params": sum(p.numel() for p in model.parameters())}
    row.update({k.removeprefix("test/"): float(v) for k, v in tested.items()})
    row["sparsity"] = sparsity.last.get("mean", float("nan"))
    row["dnr"] = dead.last.get("dnr/mean", float("nan"))
    row["dead_neurons"] = sum(v for k, v in dead.last.items() if k.startswith("dead/"))
    row["sites"] = len(sparsity.last) - 1 if sparsity.last else 0
    row["loss_curve"] = [(int(s), float(v)) for s, v in getattr(task, "loss_history", [])]
    if getattr(model, "region_proposal", False) and datamodule.test_set and hasattr(datamodule.test_set[0], "site"):
        row.update(proposal_recall(model, datamodule.test_set))
    return task, row


def _summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    keys = [("fmax", "Fmax"), ("aupr_micro", "AUPR micro"), ("aupr_macro", "AUPR macro"), ("smin", "Smin"),
            ("site_precision", "site precision"), ("site_recall", "site recall"), ("kept_recall", "planted kept"),
            ("sparsity", "act. sparsity"), ("dnr", "DNR"), ("dead_neurons", "dead neurons"), ("seconds", "train s")]
    for variant in LABELS:
        mine = [r for r in rows if r["model"] == variant]
        if not mine:
            continue
        entry: dict[str, Any] = {"model": LABELS[variant], "seeds": len(mine)}
        for key, label in keys:
            values = [r[key] for r in mine if key in r]
            if not values:
                entry[label] = "–"
                continue
            m, s = study.mean_std(values)
            entry[label] = f"{m:.1f} ± {s:.1f}" if key in ("dead_neurons", "seconds") else f"{m:.3f} ± {s:.3f}"
        table.append(entry)
    return table


def _resolve_dir(path: str | None) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, Path(__file__).resolve().parents[2] / p]
    return next((c for c in candidates if c.is_dir()), None)


@torch.no_grad()
def run_real(model, pdb_dir: Path, radius: float, term_names: list[str]) -> tuple[list[dict[str, Any]], dict]:
    """The trained ProteinRPN over every structure file of ``pdb_dir``: what it proposes."""
    from actsparse.data.protein_rpn.datamodule import structure_files
    from actsparse.data.protein_rpn.graph import load_graph

    rows, graphs = [], {}
    model.eval()
    for path in structure_files(pdb_dir):
        graph = load_graph(path, radius=radius)
        start = time.perf_counter()
        out = model(graph)
        ms = 1e3 * (time.perf_counter() - start)
        proposal = model.propose(graph)
        counts = torch.bincount(graph.ss, minlength=3).tolist()
        probs = torch.sigmoid(out.logits[0])
        top = int(torch.argmax(probs))
        rows.append({"structure": graph.name, "residues": graph.num_nodes, "contacts": graph.edge_index.shape[1] // 2,
                     "helix/strand/coil": "/".join(str(c) for c in (counts[1], counts[2], counts[0])),
                     "anchors": int(proposal["anchor"].sum()), "region": int(proposal["region"].sum()),
                     "kept": int(proposal["kept"].sum()), "top term (synthetic)": f"{term_names[top]} {float(probs[top]):.2f}",
                     "forward ms": round(ms, 1)})
        graphs[graph.name] = (graph, proposal)
    return rows, graphs


def time_500(model, radius: float, pdb_dir: Path | None = None, repeats: int = 5) -> dict[str, float]:
    """Median ms for a 500-residue chain: building its graph (DSSP + contacts), loading it from
    the on-disk cache, and one forward pass. The chain is the first 500 residues of the real
    structures in ``pdb_dir`` laid side by side (real contact density), else a synthetic chain."""
    import tempfile

    from actsparse.data.protein_rpn.cache import GraphCache
    from actsparse.data.protein_rpn.graph import residue_graph
    from actsparse.data.protein_rpn.synthetic import make_motifs, synthetic_chain

    from actsparse.data.protein_rpn.structure import ProteinChain, read_chain

    chain, source = None, "synthetic"
    if pdb_dir is not None:
        from actsparse.data.protein_rpn.datamodule import structure_files

        parts, offset = [], 0.0
        for path in structure_files(pdb_dir):
            c = read_chain(path)
            bb = c.backbone - np.nanmean(c.ca, 0)
            parts.append((c.sequence, bb + np.array([offset, 0.0, 0.0], dtype=np.float32)))
            offset += 100.0  # far apart: contacts stay within each real chain
            if sum(len(q) for q, _ in parts) >= 500:
                break
        seq = "".join(q for q, _ in parts)
        if len(seq) >= 500:
            chain = ProteinChain("real500", "A", seq[:500], np.concatenate([b for _, b in parts])[:500])
            source = "real chains side by side"
    if chain is None:
        chain = synthetic_chain(0, make_motifs(4, 0), np.random.default_rng(0), min_length=500, max_length=500).chain
    build, load, forward = [], [], []
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        cache = GraphCache(tmp)
        key = "speed500"
        for _ in range(repeats):
            t = time.perf_counter()
            graph = residue_graph(chain, radius=radius)
            build.append(time.perf_counter() - t)
            cache.store(key, graph)
            t = time.perf_counter()
            graph = cache.load(key)
            load.append(time.perf_counter() - t)
            with torch.no_grad():
                t = time.perf_counter()
                model(graph)
                forward.append(time.perf_counter() - t)
    med = lambda xs: 1e3 * float(np.median(xs))  # noqa: E731
    return {"chain": source, "residues": 500, "contacts": int(graph.edge_index.shape[1] // 2), "build_ms": med(build),
            "cache_load_ms": med(load), "forward_ms": med(forward),
            "cached_graph_plus_forward_ms": med(load) + med(forward), "threads": torch.get_num_threads()}


def plot_proposals(panels: list[tuple[str, Any, dict]], path: Path) -> Path:
    """Each panel: a chain's Cα trace (PCA projection), contacts in grey, residues coloured by
    the proposal (anchor, region, kept by node drop) and planted motif residues ringed."""

    from actsparse.report import figure, save_figure

    fig, axes = figure(1, len(panels), figsize=(6.2 * len(panels), 5.6), dpi=120, squeeze=False)
    for ax, (title, graph, proposal) in zip(axes[0], panels):
        pos = graph.pos.numpy()
        centred = pos - pos.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        src, dst = graph.edge_index.numpy()
        for s, d in zip(src, dst):
            if s < d:
                ax.plot(xy[[s, d], 0], xy[[s, d], 1], color="0.88", lw=0.4, zorder=0)
        ax.plot(xy[:, 0], xy[:, 1], color="0.6", lw=0.8, zorder=1)
        kept, region, anchor = (proposal["kept"].numpy(), proposal["region"].numpy(), proposal["anchor"].numpy())
        base = ~region & ~anchor
        ax.scatter(*xy[base & ~kept].T, s=10, c="0.75", label="dropped by node-drop pooling", zorder=2)
        ax.scatter(*xy[base & kept].T, s=16, c="tab:blue", label="kept (outside regions)", zorder=2)
        ax.scatter(*xy[region & ~anchor & kept].T, s=24, c="tab:orange", label="k-hop anchor region, kept", zorder=3)
        ax.scatter(*xy[region & ~anchor & ~kept].T, s=24, c="tab:orange", alpha=0.35,
                   label="k-hop anchor region, dropped", zorder=3)
        ax.scatter(*xy[anchor].T, s=40, c="tab:red", label="anchor (proposed functional)", zorder=4)
        site = getattr(graph, "site", None)
        if site is not None:
            planted = site.numpy() > 0
            ax.scatter(*xy[planted].T, s=110, facecolors="none", edgecolors="k", lw=1.2,
                       label="planted motif residue", zorder=5)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_training(rows: list[dict[str, Any]], path: Path) -> Path | None:

    from actsparse.report import figure, save_figure

    if not any(r.get("loss_curve") for r in rows):
        return None
    fig, ax = figure(figsize=(6, 4), dpi=120)
    colours = {"protein_rpn": "tab:red", "protein_rpn_no_site": "tab:orange", "gmt_baseline": "tab:blue"}
    for r in rows:
        curve = np.array(r["loss_curve"])
        if len(curve):
            ax.plot(curve[:, 0], curve[:, 1], color=colours[r["model"]], alpha=0.7,
                    label=LABELS[r["model"]] if r["seed"] == rows[0]["seed"] else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training BCE (GO terms)")
    ax.set_title("Training BCE per seed")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


@study.entry
def run(cfg: DictConfig) -> dict[str, Any]:
    p = cfg.protein_rpn
    _quiet()
    out = study.prepare(cfg, threads=p.get("threads"))
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    if not datamodule.train_set:
        raise ValueError("protein_rpn needs labelled training data (the synthetic default, or data=protein_rpn_pdb with "
                         "data.annotations=<DeepFRI TSV>).")
    rows, tasks = [], {}
    for seed in p.seeds:
        for variant in p.models:
            if variant not in LABELS:
                raise ValueError(f"Unknown protein_rpn.models entry {variant!r}; choose from {sorted(LABELS)}.")
            task, row = train_one(cfg, datamodule, variant, int(seed), out)
            tasks[(variant, int(seed))] = task
            rows.append(row)
            print(f"[protein_rpn] {LABELS[variant]} seed {seed}: Fmax {row['fmax']:.3f}  AUPR {row['aupr_micro']:.3f}  "
                  f"Smin {row['smin']:.3f}  ({row['seconds']:.0f} s)", flush=True)
    tables: dict[str, list[dict[str, Any]]] = {
        f"Synthetic motif set, test split ({len(datamodule.test_set)} chains), mean ± std over {len(p.seeds)} seeds":
            _summarize(rows)}
    payload: dict[str, Any] = {"runs": [{k: v for k, v in r.items() if k != "loss_curve"} for r in rows],
                               "terms": datamodule.term_names}
    figures: dict[str, Path] = {}
    rpn_key = ("protein_rpn", int(p.seeds[0]))
    panels = []
    if rpn_key in tasks:
        model = tasks[rpn_key].model
        test_graph = max(datamodule.test_set[:16], key=lambda g: int(g.site.sum()) if hasattr(g, "site") else 0)
        panels.append((f"{test_graph.name} (synthetic test chain)", test_graph, model.propose(test_graph)))
        pdb_dir = _resolve_dir(p.get("pdb_dir"))
        if pdb_dir is not None:
            real_rows, real_graphs = run_real(model, pdb_dir, float(cfg.data.radius), datamodule.term_names)
            tables[f"The seed-{p.seeds[0]} ProteinRPN over the real structures in {p.pdb_dir}"] = real_rows
            payload["real"] = real_rows
            name = p.get("figure_structure") if p.get("figure_structure") in real_graphs else next(iter(real_graphs))
            graph, proposal = real_graphs[name]
            panels.append((f"{name} (real structure, {graph.num_nodes} residues)", graph, proposal))
        else:
            payload["real"] = f"skipped: no folder {p.get('pdb_dir')!r}"
            print(f"[protein_rpn] real structures skipped: folder {p.get('pdb_dir')!r} not found", flush=True)
        speed = time_500(model, float(cfg.data.radius), _resolve_dir(p.get("pdb_dir")))
        payload["speed_500"] = speed
        tables["One 500-residue chain (median of 5, ms)"] = [{k: (round(v, 2) if isinstance(v, float) else v)
                                                              for k, v in speed.items()}]
        figures["proposals"] = plot_proposals(panels, out / "proposals.png")
    curve = plot_training(rows, out / "training.png")
    if curve is not None:
        figures["training"] = curve
    study.write_results(out, tables, payload, title="ProteinRPN vs GMT baseline (experiment=protein_rpn)")
    study.log_to_wandb(cfg, out, figures=figures, tables=tables)
    rpn = [r for r in rows if r["model"] == "protein_rpn"]
    return {"fmax": float(np.mean([r["fmax"] for r in rpn])) if rpn else float("nan"),
            "results": str(out / "results.md"), "config": OmegaConf.to_container(p, resolve=True)}


if __name__ == "__main__":
    study.alias_main("protein_rpn")
