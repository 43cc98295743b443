"""Compare a trained finite network with its infinite-width limit and with the Bayes classifier
(DESIGN §4, infinite wide-and-deep NTK; ``experiment=ntk_finite``)."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from actsparse.plugins.ntk.classifiers import kernel_regression
from actsparse.plugins.ntk.kernels import LogKernel, kernel_path, sphere_gram


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
        network = getattr(pl_module, "model", pl_module)
        if not hasattr(network, "hparams_dict") or not hasattr(datamodule, "splits"):
            raise TypeError(
                f"NTKLimitComparison compares a HermiteMLP (model=ntk_hermite_mlp) on sphere data (data=ntk_sphere); "
                f"got model {type(network).__name__} and datamodule {type(datamodule).__name__}.")
        hp = network.hparams_dict()
        (x_train, y_train), (x_test, y_test) = datamodule.splits["train"], datamodule.splits["test"]
        kernel = ntk_limit_predictions(x_train, y_train, x_test, str(hp["activation"]), int(hp["depth"]))
        bayes = datamodule.model.bayes_predict(x_test)
        with torch.no_grad():
            net = pl_module(x_test.float().to(pl_module.device)).argmax(1).cpu()
        agree = lambda a, b: float((a == b).double().mean())  # noqa: E731
        pl_module.log_dict({"test/kernel_acc": agree(kernel, y_test), "test/bayes_acc": agree(bayes, y_test),
                            "test/agree_kernel": agree(net, kernel), "test/agree_bayes": agree(net, bayes)})
