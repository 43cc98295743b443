"""The hash-code studies (experiment=hash_codes, hash_codes_epochs, hash_codes_sizes) on the study
engine, at toy size: what a job logs against a scikit-learn computation of the same codes, and
YAML keys (the grid, the protocol, the training size) changing what runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from hydra.utils import instantiate
from omegaconf import open_dict

from actsparse.experiments import study
from actsparse.train import fit

TINY = ["model.width=16", "model.depth=1", "trainer.max_epochs=2"]


def _job(experiment: str, tmp_path, overrides):
    """One point of the study's grid, run in-process like a job of the multirun."""
    cfg = study.compose(experiment, ["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg, fit(cfg)


def _codes(mlp, x: torch.Tensor) -> np.ndarray:
    """1[h > 0] of every hidden ReLU, concatenated, by hand through the Linear layers."""
    bits, h = [], x.double()
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linears[:-1]:
        h = torch.relu(h @ layer.weight.double().T + layer.bias.double())
        bits.append((h > 0).numpy())
    return np.concatenate(bits, axis=1)


def test_a_job_logs_the_codes_metrics_of_both_protocols(tmp_path):
    """test/hash/* (reference protocol) and test/hash_fit_predict/* against scikit-learn on codes
    computed by hand in float64 from the saved model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsOneClassifier
    from sklearn.neighbors import KNeighborsClassifier

    from actsparse.tasks import Classifier

    cfg, summary = _job("hash_codes", tmp_path, [*TINY, "callbacks.model_checkpoint.save_last=true"])
    task = Classifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    (x_tr, y_tr), (x_te, y_te) = dm.train_set.tensors, dm.test_set.tensors
    tr, te = _codes(task.model, x_tr), _codes(task.model, x_te)
    y_tr, y_te = y_tr.numpy(), y_te.numpy()

    def redundancy(c):
        return 1 - len(np.unique(c, axis=0)) / len(c)

    assert summary["test/hash/redundancy"] == pytest.approx(redundancy(te))
    assert summary["test/hash/train_redundancy"] == pytest.approx(redundancy(tr))
    assert summary["test/hash/train_samples"] == len(y_tr) == 1077
    # reference: units constant over train ∪ test dropped; sklearn's Hamming 9-NN, OvO liblinear
    both = np.concatenate([tr, te])
    kept = both.any(0) & ~both.all(0)
    assert summary["test/hash/units"] == kept.sum()
    knn = KNeighborsClassifier(n_neighbors=9, metric="hamming").fit(tr[:, kept], y_tr)
    assert summary["test/hash/knn_acc"] == pytest.approx(np.mean(knn.predict(te[:, kept]) == y_te))
    assert summary["test/hash/train_knn_acc"] == pytest.approx(np.mean(knn.predict(tr[:, kept]) == y_tr))
    ovo = OneVsOneClassifier(LogisticRegression(solver="liblinear", random_state=0))
    ovo.fit(tr[:, kept].astype(np.float32), y_tr)
    assert summary["test/hash/logreg_acc"] == pytest.approx(np.mean(ovo.predict(te[:, kept].astype(np.float32)) == y_te))
    # fit_predict: units constant over the training codes dropped; multinomial lbfgs
    kept_tr = tr.any(0) & ~tr.all(0)
    assert summary["test/hash_fit_predict/units"] == kept_tr.sum()
    clf = LogisticRegression(max_iter=500, random_state=0).fit(tr[:, kept_tr].astype(np.float32), y_tr)
    expected = np.mean(clf.predict(te[:, kept_tr].astype(np.float32)) == y_te)
    assert summary["test/hash_fit_predict/logreg_acc"] == pytest.approx(expected)
    assert "test/hash_fit_predict/train_knn_acc" not in summary  # train_metrics is off for the second monitor


def test_the_protocol_key_decides_what_the_monitor_measures(tmp_path):
    _, summary = _job("hash_codes", tmp_path, [*TINY, "callbacks.hash_codes.protocol=fit_predict"])
    for key in ("units", "kmeans_acc", "knn_acc", "logreg_acc"):
        assert summary[f"test/hash/{key}"] == summary[f"test/hash_fit_predict/{key}"], key


def test_sizes_study_trains_on_the_configured_fraction(tmp_path):
    _, summary = _job("hash_codes_sizes", tmp_path, [*TINY, "data.train_size=0.1"])
    assert summary["test/hash/train_samples"] == 108  # stratified 10% of the 1,077 training digits
    assert summary["steps"] == 2 * 2  # 108 samples, batch 64: 2 steps per epoch


def test_epochs_grid_through_the_cli(tmp_path):
    """hash_codes_epochs as a user runs it: trainer.max_epochs is the grid (0 = at initialization)."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["experiment=hash_codes_epochs", f"hydra.sweep.dir={sweep}", "model.width=16", "model.depth=1",
                    "trainer.max_epochs=0,1", "logger=none"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((sweep / "results.json").read_text())
    (table,) = results["tables"].values()
    assert [r["run"] for r in table] == ["0", "1"]
    steps = {j["overrides"]["trainer.max_epochs"]: j["summary"]["steps"] for j in results["jobs"]}
    assert steps == {"0": 0, "1": 17}  # 1,077 samples, batch 64
    assert table[0]["units"] != "–" and "k-NN test @fit_predict" in table[0]
    assert (sweep / "codes.png").is_file()  # study.plots: final values against trainer.max_epochs
