"""The neural hash-code study on scikit-learn digits (issue 7, DESIGN §4).

    actsparse-train experiment=hash_codes [overrides ...]
    actsparse-train experiment=hash_codes hash_codes.widths=[16,256] hash_codes.depths=[2]

Trains MLPs on digits with the configured data, model and task for ``hash_codes.epochs`` epochs:

1. every width in ``hash_codes.widths`` x depth in ``hash_codes.depths``;
2. one MLP measured at the epochs in ``hash_codes.epoch_curve.at`` (0 = at initialization);
3. one MLP per training-set size in ``hash_codes.train_sizes.sizes`` (same validation/test sets).

For each trained model it extracts the neural codes of the training and test sets and reports
redundancy ratio, hash-code purity and k-means / k-NN / logistic-regression accuracy under two
protocols (``hash_codes.protocols``; the first is the one in the main columns):

- ``reference`` — the authors' code (LeavesLei/activation-code): constant units dropped over
  train ∪ test, k-means fit on the evaluated codes and mapped by their labels (Hungarian),
  scikit-learn's Hamming k-NN, one-vs-one liblinear logistic regression. Comparable to the paper.
- ``fit_predict`` — constant units dropped over the training codes only, every classifier fit on
  the training codes and scored on held-out test codes (no test label used).

It writes ``results.json``, ``results.md`` (tables) and PNG figures into the run folder.
``python -m actsparse.experiments.hash_codes [overrides]`` is the same run.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from actsparse.evaluation import neural_codes
from actsparse.experiments import study
from actsparse.metrics.functional.code_categorization import PROTOCOLS, code_categorization
from actsparse.metrics.functional.hash_codes import (
    drop_constant_units,
    hash_code_purity,
    redundancy_ratio,
    varying_units,
)


def build(cfg: DictConfig, width: int, depth: int, train_size: float | int | None = None):
    datamodule = instantiate(cfg.data, train_size=train_size, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(cfg.model, width=width, depth=depth, widths=None, _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    return datamodule, task


def fit(cfg: DictConfig, task: L.LightningModule, datamodule, epochs: int, callbacks=()) -> None:
    """Train with a Trainer built from ``cfg.trainer`` (the study's epochs, no validation)."""
    study.trainer(cfg, callbacks, max_steps=-1, max_epochs=epochs, enable_progress_bar=False,
                  num_sanity_val_steps=0, limit_val_batches=0).fit(task, datamodule=datamodule)


def measure(task: L.LightningModule, datamodule, categorization: dict[str, Any], seed: int,
            protocols=PROTOCOLS) -> dict[str, float]:
    """Code metrics of the training and test sets under each protocol, and the network's own test
    accuracy. The first protocol fills the plain keys (``test_knn``); the others get a suffix
    (``test_knn@fit_predict``)."""
    train = neural_codes(task, datamodule.train_eval_dataloader(), drop_constant=False)
    test = neural_codes(task, datamodule.test_dataloader(), drop_constant=False)
    train_bits, test_bits = train.bits(), test.bits()
    row: dict[str, float] = {}
    for i, protocol in enumerate(protocols):
        if protocol == "reference":  # constant over train ∪ test, as the reference code
            tr, te = drop_constant_units(train_bits, test_bits)
        else:  # constant over the training codes only: the test codes are held out
            kept = varying_units(train_bits)
            tr, te = train_bits[:, kept], test_bits[:, kept]
        suffix = "" if i == 0 else f"@{protocol}"
        row[f"units{suffix}"] = tr.shape[1]
        for split, codes, labels in (("train", tr, train.labels), ("test", te, test.labels)):
            row[f"{split}_redundancy{suffix}"] = float(redundancy_ratio(codes))
            row[f"{split}_purity{suffix}"] = float(hash_code_purity(codes, labels))
        acc = code_categorization(tr, train.labels, te, test.labels, score_train=True, seed=seed,
                                  protocol=protocol, **categorization)
        for method in categorization["methods"]:
            row[f"train_{method}{suffix}"] = float(acc[f"train_{method}"])
            row[f"test_{method}{suffix}"] = float(acc[method])
    x, y = datamodule.test_set.tensors
    was_training = task.training
    with torch.no_grad():
        task.eval()
        row["net_test_acc"] = float((task(x).argmax(1) == y).float().mean())
    task.train(was_training)
    return row


def _brief(row: dict[str, float], categorization: dict[str, Any]) -> str:
    accs = "/".join(f"{row[f'test_{m}']:.3f}" for m in categorization["methods"])
    return f"test redundancy {row['test_redundancy']:.4f}  test {'/'.join(categorization['methods'])} {accs}"


class _MeasureAt(L.Callback):
    """Measure at the end of the listed epochs (1-based counts of completed epochs)."""

    def __init__(self, at: list[int], datamodule, categorization: dict[str, Any], seed: int, protocols) -> None:
        self.at, self.datamodule, self.categorization, self.seed = set(at), datamodule, categorization, seed
        self.protocols = protocols
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.at:
            self.rows.append({"epoch": epoch, **measure(pl_module, self.datamodule, self.categorization, self.seed,
                                                        self.protocols)})


def run_study(cfg: DictConfig, log=print) -> dict[str, list[dict[str, float]]]:
    p = cfg.hash_codes
    cat = OmegaConf.to_container(p.categorization, resolve=True)
    protocols = list(p.protocols)
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown or not protocols:
        raise ValueError(f"hash_codes.protocols must be a non-empty list from {', '.join(PROTOCOLS)}, got {protocols}.")
    seed = int(cfg.seed)
    results: dict[str, list[dict[str, float]]] = {"width": [], "epochs": [], "train_size": []}

    for depth in p.depths:
        for width in p.widths:
            L.seed_everything(seed, verbose=False)
            dm, task = build(cfg, width, depth)
            start = time.perf_counter()
            fit(cfg, task, dm, p.epochs)
            row = {"width": width, "depth": depth, **measure(task, dm, cat, seed, protocols),
                   "seconds": time.perf_counter() - start}
            results["width"].append(row)
            log(f"width {width:5d} depth {depth}: {_brief(row, cat)}  net {row['net_test_acc']:.3f}  "
                f"({row['seconds']:.1f} s)")

    curve = p.epoch_curve
    L.seed_everything(seed, verbose=False)
    dm, task = build(cfg, curve.width, curve.depth)
    at = sorted(int(e) for e in curve.at)
    if 0 in at:
        results["epochs"].append({"epoch": 0, **measure(task, dm, cat, seed, protocols)})
    monitor = _MeasureAt([e for e in at if e > 0], dm, cat, seed, protocols)
    fit(cfg, task, dm, max(at), callbacks=[monitor])
    results["epochs"] += monitor.rows
    for row in results["epochs"]:
        log(f"epoch {row['epoch']:3d} (width {curve.width}, depth {curve.depth}): {_brief(row, cat)}")

    sizes = p.train_sizes
    for size in sizes.sizes:
        L.seed_everything(seed, verbose=False)
        dm, task = build(cfg, sizes.width, sizes.depth, train_size=size)
        fit(cfg, task, dm, p.epochs)
        row = {"train_size": len(dm.train_set), "fraction": size, **measure(task, dm, cat, seed, protocols)}
        results["train_size"].append(row)
        log(f"train size {row['train_size']:5d}: train redundancy {row['train_redundancy']:.4f}  {_brief(row, cat)}")
    return results


@study.entry
def run(cfg: DictConfig) -> dict[str, Any]:
    """``actsparse-train experiment=hash_codes``: the whole study into the run folder."""
    out = study.prepare(cfg, threads=cfg.hash_codes.get("threads"))
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    start = time.perf_counter()
    results = run_study(cfg)
    elapsed = time.perf_counter() - start
    from actsparse.experiments.hash_codes_report import plot_study, tables

    figures = plot_study(results, out)
    text = tables(results, list(cfg.hash_codes.protocols))
    study.write_results(out, text, {"seconds": round(elapsed, 1), **results},
                        title=f"Neural hash codes on digits ({elapsed:.0f} s)")
    study.log_to_wandb(cfg, out, figures={f.stem: f for f in figures}, tables=text)
    last = (results["width"] or results["train_size"] or results["epochs"])[-1]
    return {"seconds": elapsed, "test_knn": last["test_knn"], "test_redundancy": last["test_redundancy"]}


if __name__ == "__main__":
    study.alias_main("hash_codes")
