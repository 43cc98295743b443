"""Studies on the engine, end to end through the CLI at tiny sizes: `actsparse-train
experiment=<name>` runs the grid of its YAML as a Hydra multirun, each job one `fit(cfg)`, and
StudyReport writes the table. A key changed on the command line changes what runs."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

AP_TINY = ["model=mlp", "seed=0", "model.width=16",
           "callbacks.pruning.rounds=1", "callbacks.pruning.epochs_per_round=1", "trainer.max_epochs=2",
           "trainer.check_val_every_n_epoch=1", "data.batch_size=256"]


def _study(tmp_path, name, overrides):
    sweep = tmp_path / "sweep"
    proc = run_cli([f"experiment={name}", f"hydra.sweep.dir={sweep}", *overrides], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


def _curve(results, name):
    (rows,) = [rows for title, rows in results["tables"].items() if title.startswith(f"{name}:")]
    return rows


# One amount shows the key takes effect (the remaining fraction is checked exactly); the second is slow.
@pytest.mark.parametrize("amount", [pytest.param(0.2, marks=pytest.mark.slow), 0.5])
def test_ap_digits_grid_runs_and_the_pruning_amount_key_takes_effect(tmp_path, amount):
    sweep, results = _study(tmp_path, "ap_digits", [*AP_TINY, f"callbacks.pruning.amount={amount}"])
    jobs = results["jobs"]
    assert sorted(j["overrides"]["callbacks"] for j in jobs) == ["imp", "imp_ap"]  # the method axis of the grid
    (table,) = [rows for title, rows in results["tables"].items() if title.startswith("Dead neurons")]
    assert [r["run"] for r in table] == ["MLP · IMP", "MLP · IMP + AP"]
    for job in jobs:
        remaining = [v for _, v in job["summary"]["history"]["prune/remaining"]]
        # one round at 100%, pruning at its end, the last round at (1 - amount) of the weights
        assert remaining == pytest.approx([1.0, 1.0 - amount], abs=1e-3)
        assert 0 < job["summary"]["test/acc"] <= 1
    curve = _curve(results, "accuracy")
    assert [float(r["prune/remaining (MLP · IMP)"]) for r in curve] == pytest.approx([100, 100 * (1 - amount)], abs=0.1)
    assert (sweep / "accuracy.png").is_file() and (sweep / "dnr.png").is_file()


def test_ap_digits_ap_rate_key_reaches_the_callback(tmp_path):
    _, results = _study(tmp_path, "ap_digits", [*AP_TINY, "callbacks=imp_ap",
                                                "++callbacks.ap.ap_rate=0.1"])  # ++: the base config (callbacks=imp) has no ap
    (job,) = results["jobs"]
    config = (tmp_path / "sweep" / "0" / ".hydra" / "config.yaml").read_text()
    assert "ap_rate: 0.1" in config and "ActivatingWhilePruning" in config


def test_ntk_finite_grid_compares_each_network_with_its_kernel_limit(tmp_path):
    _, results = _study(tmp_path, "ntk_finite", [
        "model.width=8", "model.depth=2", "trainer.max_steps=10",
        "trainer.val_check_interval=5", "data.n_train=60", "data.n_val=20", "data.n_test=50"])
    (table,) = results["tables"].values()
    assert [r["run"] for r in table] == ["relu · 2 · 8", "opt3 · 2 · 8"]
    for job in results["jobs"]:
        s = job["summary"]
        assert {"test/acc", "test/kernel_acc", "test/bayes_acc", "test/agree_kernel", "test/agree_bayes"} <= set(s)
    # the two activations give two different kernel limits on the same data
    kernel = {j["overrides"]["model.activation"]: j["summary"]["test/kernel_acc"] for j in results["jobs"]}
    bayes = {j["summary"]["test/bayes_acc"] for j in results["jobs"]}
    assert len(bayes) == 1 and bayes.pop() > 0.8 and set(kernel) == {"relu", "opt3"}  # same data for every net
