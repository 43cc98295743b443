"""Finite networks with the optimal activations, trained under Lightning (issue 15).

``actsparse-train experiment=ntk_finite``: on the Dirichlet sphere data of ``data=ntk_sphere``, MLPs
(``model=ntk_hermite_mlp``: NTK parametrization, no biases) of every width x depth x activation in
``cfg.ntk_finite`` are trained with the ``Classifier`` task (cross-entropy, ``task.lr``,
``trainer.max_steps``) by a Trainer built from ``cfg.trainer``. Each is compared with the
infinite-width limit of the same architecture — kernel regression with ``ntk_kernel(xi, depth,
activation)`` on the same training set — and with the Bayes classifier: test accuracy of each,
and how often the network's predictions agree with the kernel's and with Bayes'.
"""

from __future__ import annotations

import time
import warnings

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from actsparse.experiments import study
from actsparse.models.ntk_hermite_mlp import HermiteMLP
from actsparse.plugins.ntk.classifiers import kernel_regression
from actsparse.plugins.ntk.kernels import LogKernel, kernel_path, sphere_gram


def kernel_limit(datamodule, activation: str, depth: int) -> torch.Tensor:
    """Test predictions of the width -> infinity NTK predictor of a depth-``depth`` network."""
    xtr, ytr = datamodule.splits["train"]
    xte, _ = datamodule.splits["test"]
    n = len(xtr)
    _, k = next(kernel_path(torch.cat([sphere_gram(xtr), sphere_gram(xte, xtr)]), depth, activation))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # singular Gram (shallow polynomial duals): minimum norm
        return kernel_regression(LogKernel(k.logabs[:n], k.sign[:n]), ytr, LogKernel(k.logabs[n:], k.sign[n:]),
                                 on_singular="lstsq")


def train_one(cfg: DictConfig, datamodule, activation: str, width: int, depth: int, seed: int) -> torch.Tensor:
    """Train one MLP; its test predictions."""
    torch.manual_seed(seed)
    model = HermiteMLP(in_features=datamodule.model.dim, width=width, depth=depth, num_classes=2,
                       activation=activation, parametrization=cfg.ntk_finite.parametrization)
    task = instantiate(cfg.task, model=model, _convert_="all")
    trainer = study.trainer(cfg, enable_progress_bar=False)
    trainer.fit(task, datamodule=datamodule)
    xte, _ = datamodule.splits["test"]
    task.eval()
    with torch.no_grad():
        return task(xte.float()).argmax(1)


@study.entry
def run(cfg: DictConfig) -> dict:
    """``actsparse-train experiment=ntk_finite``: every activation x width x depth x seed of ``cfg.ntk_finite``."""
    p = cfg.ntk_finite
    out = study.prepare(cfg, threads=p.get("threads"))
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    records = []
    for seed in p.seeds:
        data_cfg = OmegaConf.merge(cfg.data, {"seed": int(seed)})
        datamodule = instantiate(data_cfg, _convert_="all")
        datamodule.setup()
        yte = datamodule.splits["test"][1]
        bayes = datamodule.model.bayes_predict(datamodule.splits["test"][0])
        acc = lambda pred: float((pred == yte).double().mean())
        for activation in p.activations:
            for depth in p.depths:
                kernel = kernel_limit(datamodule, str(activation), int(depth))
                for width in p.widths:
                    t = time.perf_counter()
                    net = train_one(cfg, datamodule, str(activation), int(width), int(depth), int(seed))
                    rec = {"activation": str(activation), "depth": int(depth), "width": int(width), "seed": int(seed),
                           "net_acc": acc(net), "kernel_acc": acc(kernel), "bayes_acc": acc(bayes),
                           "agree_kernel": float((net == kernel).double().mean()),
                           "agree_bayes": float((net == bayes).double().mean()),
                           "seconds": time.perf_counter() - t}
                    records.append(rec)
                    print(f"{activation} depth {depth} width {width} seed {seed}: net {rec['net_acc']:.3f} "
                          f"kernel {rec['kernel_acc']:.3f} bayes {rec['bayes_acc']:.3f} "
                          f"agree kernel {rec['agree_kernel']:.3f} ({rec['seconds']:.1f} s)", flush=True)
    elapsed = time.perf_counter() - start
    rows = []
    for activation in p.activations:
        for depth in p.depths:
            for width in p.widths:
                group = [r for r in records if (r["activation"], r["depth"], r["width"]) == (str(activation), int(depth), int(width))]
                row = {"activation": str(activation), "depth": int(depth), "width": int(width)}
                for key in ("net_acc", "kernel_acc", "bayes_acc", "agree_kernel", "agree_bayes"):
                    m, s = study.mean_std([r[key] for r in group])
                    row[key] = f"{m:.3f} ± {s:.3f}" if len(group) > 1 else round(m, 4)
                rows.append(row)
    title = (f"Finite MLPs vs their NTK limit and Bayes (dim {cfg.data.dim}, {cfg.data.n_train} train points, "
             f"{cfg.trainer.max_steps} steps, {elapsed:.0f} s)")
    tables = {"Test accuracy and agreement (net = trained MLP, kernel = its infinite-width NTK predictor)": rows}
    study.write_results(out, tables, {"seconds": round(elapsed, 1), "records": records}, title=title)
    study.log_to_wandb(cfg, out, tables=tables)
    return {"seconds": elapsed, **{f"{r['activation']}/d{r['depth']}/w{r['width']}/net_acc": r["net_acc"] for r in records}}


if __name__ == "__main__":
    study.alias_main("ntk_finite")
