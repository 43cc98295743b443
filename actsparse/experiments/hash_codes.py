"""The neural hash-code study on scikit-learn digits (issue 7, DESIGN §4).

    python -m actsparse.experiments.hash_codes [--out DIR] [hydra overrides ...]
    python -m actsparse.experiments.hash_codes --out docs/hash_codes study.widths=[16,256] study.depths=[2]

Composes ``experiment=hash_codes`` (plus the overrides) and, in this process, trains MLPs on
digits with the configured data, model and task for ``study.epochs`` epochs:

1. every width in ``study.widths`` x depth in ``study.depths``;
2. one MLP measured at the epochs in ``study.epoch_curve.at`` (0 = at initialization);
3. one MLP per training-set size in ``study.train_sizes.sizes`` (same validation/test sets).

For each trained model it extracts the neural codes of the training and test sets (test codes
use the training codes' unit layout) and reports redundancy ratio and hash-code purity of
both, and the k-means / k-NN / logistic-regression accuracy of classifiers fit on the training
codes, scored on the training codes ("train") and the test codes ("test"). It writes
``results.json``, ``results.md`` (tables) and PNG figures into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from actsparse.metrics.functional.code_categorization import code_categorization
from actsparse.evaluation import neural_codes
from actsparse.metrics.functional.hash_codes import hash_code_purity, redundancy_ratio


def compose_study(overrides: list[str]) -> DictConfig:
    """``actsparse-train experiment=hash_codes <overrides>``'s config, composed in-process."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="actsparse.conf", version_base="1.3"):
        return compose("train", overrides=["experiment=hash_codes", *overrides])


def build(cfg: DictConfig, width: int, depth: int, train_size: float | int | None = None):
    datamodule = instantiate(cfg.data, train_size=train_size, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(cfg.model, width=width, depth=depth, widths=None, _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    return datamodule, task


def trainer_for(epochs: int, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=callbacks or [],
    )


def measure(task: L.LightningModule, datamodule, categorization: dict[str, Any], seed: int) -> dict[str, float]:
    """Code metrics of the training and test sets, and the network's own test accuracy."""
    train = neural_codes(task, datamodule.train_eval_dataloader())
    test = neural_codes(task, datamodule.test_dataloader(), drop_constant=train.kept)
    row: dict[str, float] = {"units": train.units}
    for split, codes in (("train", train), ("test", test)):
        row[f"{split}_redundancy"] = float(redundancy_ratio(codes))
        row[f"{split}_purity"] = float(hash_code_purity(codes, codes.labels))
    acc = code_categorization(train, train.labels, test, test.labels, score_train=True, seed=seed, **categorization)
    for method in categorization["methods"]:
        row[f"train_{method}"] = float(acc[f"train_{method}"])
        row[f"test_{method}"] = float(acc[method])
    x, y = datamodule.test_set.tensors
    was_training = task.training
    with torch.no_grad():
        task.eval()
        row["net_test_acc"] = float((task(x).argmax(1) == y).float().mean())
    task.train(was_training)
    return row


class _MeasureAt(L.Callback):
    """Measure at the end of the listed epochs (1-based counts of completed epochs)."""

    def __init__(self, at: list[int], datamodule, categorization: dict[str, Any], seed: int) -> None:
        self.at, self.datamodule, self.categorization, self.seed = set(at), datamodule, categorization, seed
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.at:
            self.rows.append({"epoch": epoch, **measure(pl_module, self.datamodule, self.categorization, self.seed)})


def run_study(cfg: DictConfig, log=print) -> dict[str, list[dict[str, float]]]:
    study = cfg.study
    cat = OmegaConf.to_container(study.categorization, resolve=True)
    seed = int(cfg.seed)
    results: dict[str, list[dict[str, float]]] = {"width": [], "epochs": [], "train_size": []}

    for depth in study.depths:
        for width in study.widths:
            L.seed_everything(seed, verbose=False)
            dm, task = build(cfg, width, depth)
            start = time.perf_counter()
            trainer_for(study.epochs).fit(task, datamodule=dm)
            row = {"width": width, "depth": depth, **measure(task, dm, cat, seed),
                   "seconds": time.perf_counter() - start}
            results["width"].append(row)
            log(f"width {width:5d} depth {depth}: test redundancy {row['test_redundancy']:.4f}  "
                f"test kmeans/knn/logreg {row['test_kmeans']:.3f}/{row['test_knn']:.3f}/{row['test_logreg']:.3f}  "
                f"net {row['net_test_acc']:.3f}  ({row['seconds']:.1f} s)")

    curve = study.epoch_curve
    L.seed_everything(seed, verbose=False)
    dm, task = build(cfg, curve.width, curve.depth)
    at = sorted(int(e) for e in curve.at)
    if 0 in at:
        results["epochs"].append({"epoch": 0, **measure(task, dm, cat, seed)})
    monitor = _MeasureAt([e for e in at if e > 0], dm, cat, seed)
    trainer_for(max(at), callbacks=[monitor]).fit(task, datamodule=dm)
    results["epochs"] += monitor.rows
    for row in results["epochs"]:
        log(f"epoch {row['epoch']:3d} (width {curve.width}, depth {curve.depth}): test redundancy "
            f"{row['test_redundancy']:.4f}  test kmeans/knn/logreg {row['test_kmeans']:.3f}/{row['test_knn']:.3f}/"
            f"{row['test_logreg']:.3f}")

    sizes = study.train_sizes
    for size in sizes.sizes:
        L.seed_everything(seed, verbose=False)
        dm, task = build(cfg, sizes.width, sizes.depth, train_size=size)
        trainer_for(study.epochs).fit(task, datamodule=dm)
        row = {"train_size": len(dm.train_set), "fraction": size, **measure(task, dm, cat, seed)}
        results["train_size"].append(row)
        log(f"train size {row['train_size']:5d}: train/test redundancy {row['train_redundancy']:.4f}/"
            f"{row['test_redundancy']:.4f}  test kmeans/knn/logreg {row['test_kmeans']:.3f}/{row['test_knn']:.3f}/"
            f"{row['test_logreg']:.3f}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/hash_codes/study", help="where to write results and figures")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study.widths=[16,256] model.activation=relu")
    args = parser.parse_args(argv)
    cfg = compose_study(args.overrides)
    threads = cfg.study.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_study(cfg)
    elapsed = time.perf_counter() - start
    meta = {
        "command": "python -m actsparse.experiments.hash_codes " + " ".join(["--out", args.out, *args.overrides]),
        "seconds": round(elapsed, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "config": OmegaConf.to_container(cfg.study, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "task": OmegaConf.to_container(cfg.task, resolve=True),
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    from actsparse.experiments.hash_codes_report import plot_study, tables_markdown

    figures = plot_study(results, out)
    (out / "results.md").write_text(tables_markdown(results, meta))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {', '.join(p.name for p in figures)} "
          f"in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
