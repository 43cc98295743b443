"""The infinite-width limits of a network, measured inside a run (DESIGN §4): a trained finite
network against its NTK limit and Bayes (``NTKLimitComparison``, ``experiment=ntk_finite``), and
the deep kernel predictors vs depth against 1-NN, majority vote, the singular kernel and Bayes
(``KernelRegimes``, ``experiment=ntk_regimes``)."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from actsparse.callbacks.history import MetricHistory
from actsparse.plugins.ntk.classifiers import kernel_regression
from actsparse.plugins.ntk.kernels import LogKernel, kernel_path, sphere_gram
from actsparse.plugins.ntk.regimes import baseline_predictions, regime_agreement, resolve_kind


def ntk_limit_predictions(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, activation: str,
                          depth: int) -> torch.Tensor:
    """Test predictions of the width -> infinity NTK predictor of a depth-``depth`` network: kernel
    regression with ``ntk_kernel(ξ, depth, activation)`` on the training points (unit sphere)."""
    n = len(x_train)
    _, k = next(kernel_path(torch.cat([sphere_gram(x_train), sphere_gram(x_test, x_train)]), depth, activation))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # singular Gram (shallow polynomial duals): minimum norm
        return kernel_regression(LogKernel(k.logabs[:n], k.sign[:n]), y_train, LogKernel(k.logabs[n:], k.sign[n:]),
                                 on_singular="lstsq")


class NTKLimitComparison(Callback):
    """At test time, logs how a trained network compares with the NTK predictor of its own
    architecture and with the data model's Bayes classifier, on the test split:
    ``test/kernel_acc``, ``test/bayes_acc``, ``test/agree_kernel``, ``test/agree_bayes`` (the
    network's own ``test/acc`` comes from its task).

    Needs a model with ``hparams_dict()`` giving ``activation`` and ``depth`` (``HermiteMLP``) and
    a datamodule with ``splits`` and a data ``model`` that has ``bayes_predict`` (``SphereDataModule``).
    """

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        network = _network(trainer, pl_module, "NTKLimitComparison")
        hp = network.hparams_dict()
        (x_train, y_train), (x_test, y_test) = _sphere_splits(trainer, pl_module, "NTKLimitComparison")
        kernel = ntk_limit_predictions(x_train, y_train, x_test, str(hp["activation"]), int(hp["depth"]))
        bayes = datamodule.model.bayes_predict(x_test)
        with torch.no_grad():
            net = pl_module(x_test.float().to(pl_module.device)).argmax(1).cpu()
        agree = lambda a, b: float((a == b).double().mean())  # noqa: E731
        pl_module.log_dict({"test/kernel_acc": agree(kernel, y_test), "test/bayes_acc": agree(bayes, y_test),
                            "test/agree_kernel": agree(net, kernel), "test/agree_bayes": agree(net, bayes)})


def _network(trainer: L.Trainer, pl_module: L.LightningModule, who: str):
    network = getattr(pl_module, "model", pl_module)
    if not hasattr(network, "hparams_dict") or not hasattr(trainer.datamodule, "splits"):
        raise TypeError(
            f"{who} measures a HermiteMLP (model=ntk_hermite_mlp) on sphere data (data=ntk_sphere); "
            f"got model {type(network).__name__} and datamodule {type(trainer.datamodule).__name__}.")
    return network


def _sphere_splits(trainer: L.Trainer, pl_module: L.LightningModule, who: str):
    _network(trainer, pl_module, who)
    return trainer.datamodule.splits["train"], trainer.datamodule.splits["test"]


class KernelRegimes(Callback):
    """The infinitely wide limit of the run's network, at every depth in ``depths``: the NNGP or
    NTK kernel-regression predictor of its activation (``model.activation``; its width and depth
    do not matter), fitted on the train split and compared on the test split with 1-NN, majority
    vote, the singular kernel ``||x - z||^-(d-1)`` and the data model's Bayes classifier
    (:func:`~actsparse.plugins.ntk.regimes.regime_agreement`).

    ``kind``: ``"authors"`` (default: the NNGP for every dual but ReLU, the NTK for ReLU, as the
    authors' reference runs them), ``"nngp"`` or ``"ntk"``.

    Nothing is trained (the experiment sets ``trainer.max_steps: 0``): the measurement runs at
    ``on_fit_start`` and is kept in the run's :class:`MetricHistory` with x = depth, one row per
    depth, under ``kernel/``: ``depth``, ``acc``, ``agree_<b>`` for b in bayes, 1nn, majority,
    singular, ``singular_gram`` (1 where the minimum-norm solution was used) and ``profile_check``;
    the baselines' own accuracies as ``kernel/<b>_acc``. ``summary.json`` has them under
    ``history``; a study's column reads a series' last point, the deepest depth. The same rows go
    to the run's loggers with step = depth (the CSV log's ``metrics.csv``).
    """

    def __init__(self, depths: list[int], kind: str = "authors", exact_max_depth: int = 10,
                 grid_size: int = 8192) -> None:
        if not depths or any(int(d) != d or d < 0 for d in depths):
            raise ValueError(f"KernelRegimes needs a non-empty list of non-negative integer depths, got {depths!r}.")
        self.depths = [int(d) for d in depths]
        self.kind = kind
        resolve_kind(kind, "relu")  # an unknown kind fails here, before the run
        self.exact_max_depth = int(exact_max_depth)
        self.grid_size = int(grid_size)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = next((cb for cb in trainer.callbacks if isinstance(cb, MetricHistory)), None)
        if history is None:
            raise TypeError("KernelRegimes keeps its rows in the run's MetricHistory (callbacks.metric_history); "
                            "the run has none. Keep callbacks: default in the config.")
        (x_train, y_train), (x_test, y_test) = _sphere_splits(trainer, pl_module, "KernelRegimes")
        activation = _network(trainer, pl_module, "KernelRegimes").hparams_dict()["activation"]
        baselines = baseline_predictions(x_train, y_train, x_test, trainer.datamodule.model.bayes_predict(x_test))
        accuracy = {f"kernel/{b}_acc": float((p == y_test).double().mean()) for b, p in baselines.items()}
        rows = regime_agreement(x_train, y_train, x_test, y_test, activation, self.depths, self.kind, baselines,
                                self.exact_max_depth, self.grid_size)
        kind = resolve_kind(self.kind, activation)
        for row in rows:
            values = {**{f"kernel/{k}": v for k, v in row.items()}, **accuracy,
                      "kernel/is_ntk": float(kind == "ntk")}
            history.history.record(int(row["depth"]), values)
            for logger in trainer.loggers:
                logger.log_metrics(values, step=int(row["depth"]))
