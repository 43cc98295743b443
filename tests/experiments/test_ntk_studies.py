"""The NTK study callbacks in-process (the studies themselves run through the CLI in
tests/experiments/test_ntk_regimes.py and test_study_engine.py): KernelRegimes inside one
fit(cfg) of experiment=ntk_regimes, against the plugin functions called directly."""

import json

import pytest
from conftest import compose_train

from actsparse.data.ntk_sphere import SphereDataModule
from actsparse.plugins.ntk import baseline_predictions, regime_agreement
from actsparse.train import fit


def test_kernel_regimes_in_one_fit_logs_what_regime_agreement_computes(tmp_path):
    cfg = compose_train(["experiment=ntk_regimes", "hydra.mode=RUN", "logger=csv", "data.dim=5", "data.n_train=50",
                         "data.n_test=70", "seed=3", "model.activation=opt5", "callbacks.kernel_regimes.kind=ntk",
                         "callbacks.kernel_regimes.depths=[2,40]", "callbacks.kernel_regimes.exact_max_depth=5",
                         "callbacks.kernel_regimes.grid_size=1024"], tmp_path)
    summary = fit(cfg)
    history = summary["history"]
    data = SphereDataModule(dim=5, n_train=50, n_val=0, n_test=70, seed=3)
    data.setup()
    (xtr, ytr), (xte, yte) = data.splits["train"], data.splits["test"]
    base = baseline_predictions(xtr, ytr, xte, data.model.bayes_predict(xte))
    rows = regime_agreement(xtr, ytr, xte, yte, "opt5", [2, 40], "ntk", base, exact_max_depth=5, grid_size=1024)
    for key in ("acc", "agree_1nn", "agree_majority", "agree_singular", "agree_bayes"):
        assert history[f"kernel/{key}"] == [[int(r["depth"]), pytest.approx(r[key])] for r in rows]
    assert history["kernel/bayes_acc"][0][1] == pytest.approx(float((base["bayes"] == yte).double().mean()))
    assert json.loads((tmp_path / "summary.json").read_text())["history"]["kernel/depth"] == [[2, 2.0], [40, 40.0]]
    csv = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "kernel/agree_singular" in csv  # the loggers get the rows too, step = depth


def test_kernel_regimes_rejects_bad_settings_with_the_fix():
    from actsparse.callbacks.ntk import KernelRegimes

    with pytest.raises(ValueError, match="authors"):
        KernelRegimes(depths=[1], kind="gp")
    with pytest.raises(ValueError, match="non-negative integer depths"):
        KernelRegimes(depths=[])
