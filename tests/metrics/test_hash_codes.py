"""Neural hash codes (issue 7): extraction, redundancy ratio, purity, categorization, the
metrics' streaming and DDP behaviour, and the HashCodeMonitor callback."""

from collections import Counter, defaultdict

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from actsparse.callbacks.hash_codes import HashCodeMonitor
from actsparse.data.digits import DigitsDataModule
from actsparse.metrics.functional.code_categorization import (
    cluster_label_map,
    code_categorization,
    knn_predict,
)
from actsparse.evaluation import neural_codes
from actsparse.metrics.functional.hash_codes import hash_code_purity, pack_codes, redundancy_ratio, unpack_codes
from actsparse.metrics.hash_codes import CodeCategorization, HashCodePurity, RedundancyRatio
from actsparse.models import CNN, MLP
from distributed import run_ranks
from hash_codes_ddp import ddp_data, metrics_on, worker
from actsparse.tasks.classify import Classifier


def _reference(codes: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Redundancy and purity counted with Python tuples and dicts (independent of the code)."""
    buckets = defaultdict(Counter)
    for row, y in zip(codes.tolist(), labels.tolist()):
        buckets[tuple(row)][y] += 1
    n = len(codes)
    return (n - len(buckets)) / n, sum(max(c.values()) for c in buckets.values()) / n


# -- hand-computed values ----------------------------------------------------------------------

def test_planted_duplicates_give_the_hand_computed_redundancy():
    rng = np.random.default_rng(0)
    base = rng.random((50, 40)) < 0.5
    assert len({tuple(r) for r in base.tolist()}) == 50  # 50 distinct rows
    codes = np.concatenate([base, base[:7], base[:3], base[[10] * 5]])  # 7 + 3 + 5 duplicates
    order = rng.permutation(len(codes))
    assert float(redundancy_ratio(torch.from_numpy(codes[order]))) == 15 / 65


def test_known_buckets_give_the_hand_computed_purity():
    codes = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 1, 1], [0, 1, 1],   # bucket A: labels 2, 2, 2, 9 -> 3
                          [1, 0, 0], [1, 0, 0],                          # bucket B: labels 4, 5 -> 1 (tie)
                          [1, 1, 1]])                                    # bucket C: label 0 -> 1
    labels = torch.tensor([2, 9, 2, 2, 4, 5, 0])
    assert float(hash_code_purity(codes, labels)) == 5 / 7
    assert float(redundancy_ratio(codes)) == 4 / 7


def test_unique_codes_are_pure_and_not_redundant():
    codes = torch.eye(6, dtype=torch.bool)
    assert float(redundancy_ratio(codes)) == 0.0
    assert float(hash_code_purity(codes, torch.tensor([0, 1, 0, 1, 0, 1]))) == 1.0
    same = torch.ones(4, 3)
    assert float(redundancy_ratio(same)) == 3 / 4
    assert float(hash_code_purity(same, torch.tensor([1, 1, 1, 7]))) == 3 / 4


@pytest.mark.parametrize("units", [5, 8, 13, 70])
def test_matches_python_reference_on_colliding_codes_in_every_format(units):
    rng = np.random.default_rng(units)
    # few distinct patterns, so many collisions; labels correlated with the pattern
    patterns = rng.random((12, units)) < 0.5
    which = rng.integers(0, 12, 400)
    codes = patterns[which]
    labels = np.where(rng.random(400) < 0.7, which % 4, rng.integers(0, 4, 400)) + 100
    want_r, want_p = _reference(codes, labels)
    packed = pack_codes(torch.from_numpy(codes))
    assert torch.equal(packed, torch.from_numpy(np.packbits(codes, axis=1)))  # MSB first, numpy's layout
    for form, kwargs in [(torch.from_numpy(codes), {}), (torch.from_numpy(codes).to(torch.uint8), {}),
                         (torch.from_numpy(codes).float(), {}), (packed, {"packed": True})]:
        assert float(redundancy_ratio(form, **kwargs)) == pytest.approx(want_r, abs=1e-15)
        assert float(hash_code_purity(form, torch.from_numpy(labels), **kwargs)) == pytest.approx(want_p, abs=1e-15)


def test_pack_unpack_roundtrip():
    bits = np.random.default_rng(1).random((9, 21)) < 0.5
    assert np.array_equal(unpack_codes(pack_codes(torch.from_numpy(bits)), 21).numpy(), bits)
    from actsparse.metrics.functional.hash_codes import _pack_codes_on_device

    assert torch.equal(_pack_codes_on_device(torch.from_numpy(bits)), pack_codes(torch.from_numpy(bits)))  # GPU path


# -- categorization --------------------------------------------------------------------------

def test_cluster_label_maps_majority_and_hungarian():
    # cluster 0: labels 0,0,1  cluster 1: labels 0,0,0,0  cluster 2: labels 1,2
    clusters = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    labels = np.array([0, 0, 1, 0, 0, 0, 0, 1, 2])
    assert cluster_label_map(clusters, labels, 3, 3, "majority").tolist() == [0, 0, 1]
    # one-to-one: 1->0 (4) + 0->1 (1) + 2->2 (1) = 6 beats 0->0 (2) + 1->? ...
    assert cluster_label_map(clusters, labels, 3, 3, "hungarian").tolist() == [1, 0, 2]


def _knn_reference(train, y, query, k):
    out = []
    for q in query:
        dist = [(int((q != t).sum()), i) for i, t in enumerate(train)]  # ties: training order
        votes = Counter(y[i] for _, i in sorted(dist)[:k])
        best = max(votes.values())
        out.append(min(c for c, v in votes.items() if v == best))  # tied vote: smallest label
    return np.array(out)


def test_knn_under_hamming_matches_a_brute_force_reference():
    rng = np.random.default_rng(3)
    train = rng.random((60, 9)) < 0.5  # 9 units: many equal distances, exercising the tie rules
    y = rng.integers(0, 4, 60)
    query = rng.random((25, 9)) < 0.5
    for k in (1, 4, 9):
        assert np.array_equal(knn_predict(train, y, query, k), _knn_reference(train, y, query, k))


def test_categorization_on_separable_codes_is_perfect():
    rng = np.random.default_rng(5)
    proto = np.repeat(np.eye(4, dtype=bool), 16, axis=1)  # class c: units 16c..16c+15 on
    def sample(n):
        y = rng.integers(0, 4, n)
        flips = rng.random((n, 64)) < 0.05
        return torch.from_numpy(proto[y] ^ flips), torch.from_numpy(y)
    (xtr, ytr), (xte, yte) = sample(200), sample(80)
    acc = code_categorization(xtr, ytr, xte, yte, n_clusters=4, score_train=True)
    assert set(acc) == {"kmeans", "knn", "logreg", "train_kmeans", "train_knn", "train_logreg"}
    assert all(float(v) == 1.0 for v in acc.values()), acc
    hung = code_categorization(xtr, ytr, xte, yte, n_clusters=4, mapping="hungarian", methods=("kmeans",))
    assert float(hung["kmeans"]) == 1.0


def test_categorization_metric_streams_like_the_functional():
    rng = np.random.default_rng(6)
    xtr, xte = torch.from_numpy(rng.random((120, 30)) < 0.4), torch.from_numpy(rng.random((50, 30)) < 0.4)
    ytr, yte = torch.from_numpy(rng.integers(0, 3, 120)), torch.from_numpy(rng.integers(0, 3, 50))
    metric = CodeCategorization(n_clusters=3, train_accuracy=True)
    for i in range(0, 120, 37):
        metric.update(xtr[i : i + 37], ytr[i : i + 37], split="train")
    for i in range(0, 50, 20):
        metric.update(xte[i : i + 20], yte[i : i + 20], split="test")
    got = metric.compute()
    want = code_categorization(xtr, ytr, xte, yte, n_clusters=3, score_train=True)
    assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}


# -- streaming, errors -------------------------------------------------------------------------

def test_streaming_equals_one_shot_packed_and_unpacked():
    rng = np.random.default_rng(7)
    codes = torch.from_numpy(rng.random((300, 6)) < 0.5)  # 64 patterns: collisions
    labels = torch.from_numpy(rng.integers(0, 5, 300))
    for packed in (False, True):
        r, p = RedundancyRatio(packed=packed), HashCodePurity(packed=packed)
        data = pack_codes(codes) if packed else codes
        for lo, hi in [(0, 1), (1, 77), (77, 200), (200, 300)]:
            r.update(data[lo:hi])
            p.update(data[lo:hi], labels[lo:hi])
        assert torch.equal(r.compute(), redundancy_ratio(codes))
        assert torch.equal(p.compute(), hash_code_purity(codes, labels))
        r.reset()
        r.update(data[:10])
        assert torch.equal(r.compute(), redundancy_ratio(codes[:10]))


def test_mismatched_code_and_label_lengths_are_named():
    codes, labels = torch.ones(5, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="5 codes but 4 labels"):
        hash_code_purity(codes, labels)
    with pytest.raises(ValueError, match="5 codes but 4 labels"):
        HashCodePurity().update(codes, labels)
    with pytest.raises(ValueError, match="5 codes but 4 labels"):
        CodeCategorization().update(codes, labels, split="train")
    with pytest.raises(ValueError, match="4 units but test codes 3"):
        code_categorization(torch.ones(5, 4), torch.zeros(5, dtype=torch.long), codes, torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("metric, needs", [
    (RedundancyRatio(), "no codes"), (HashCodePurity(), "no codes"), (CodeCategorization(), "training codes"),
])
def test_compute_before_update_is_a_clear_error(metric, needs):
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(RuntimeError, match=needs):
        metric.compute()


def test_categorization_needs_both_splits_and_a_known_split():
    metric = CodeCategorization()
    metric.update(torch.ones(4, 3), torch.arange(4), split="train")
    with pytest.raises(RuntimeError, match="test codes"):
        metric.compute()
    with pytest.raises(ValueError, match="split must be 'train'"):
        metric.update(torch.ones(4, 3), torch.arange(4), split="val")
    with pytest.raises(ValueError, match="same units"):
        metric.update(torch.ones(4, 20), torch.arange(4), split="test")


def test_bad_codes_are_named():
    with pytest.raises(ValueError, match="packed=True"):
        redundancy_ratio(torch.tensor([[3, 0]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="only 0 and 1"):
        redundancy_ratio(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(TypeError, match="uint8"):
        redundancy_ratio(torch.ones(2, 2, dtype=torch.bool), packed=True)
    with pytest.raises(ValueError, match="2-D"):
        redundancy_ratio(torch.ones(3))
    metric = RedundancyRatio()
    metric.update(torch.ones(2, 9))
    with pytest.raises(ValueError, match="same units"):
        metric.update(torch.ones(2, 17))


# -- DDP: two gloo processes gather their codes --------------------------------------------------

def test_ddp_gather_equals_single_process(tmp_path):
    per_rank = run_ranks(worker, tmp_path)
    single = metrics_on([ddp_data()])
    codes, labels, _, _ = ddp_data()
    assert single["redundancy"] == pytest.approx(_reference(codes.numpy(), labels.numpy())[0])
    for values in per_rank:
        assert values == single


# -- extraction through the activation sites -----------------------------------------------------

def test_mlp_codes_equal_a_manual_relu_computation():
    torch.manual_seed(0)
    mlp = MLP(in_features=10, width=12, depth=3, num_classes=4)
    x, y = torch.randn(100, 10), torch.randint(0, 4, (100,))
    h, manual = x, []
    for layer in mlp.layers:  # the reference walks the layers by hand
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            manual.append(h > 0)
    manual = torch.cat(manual, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=17)
    codes = neural_codes(mlp, loader, drop_constant=False)
    assert codes.units == 36 and codes.sites == ["layers.1", "layers.3", "layers.5"]
    assert torch.equal(codes.bits(), manual) and torch.equal(codes.labels, y)
    dropped = neural_codes(mlp, loader)
    constant = manual.all(0) | ~manual.any(0)
    assert constant.any()  # the check below means something
    assert torch.equal(dropped.bits(), manual[:, ~constant]) and torch.equal(dropped.kept, ~constant)
    assert float(redundancy_ratio(dropped, packed=True)) == _reference(manual.numpy(), y.numpy())[0]
    again = neural_codes(mlp, (x[:30], y[:30]), drop_constant=dropped.kept)
    assert torch.equal(again.bits(), manual[:30, ~constant])
    assert mlp.training  # the mode is restored


def test_cnn_codes_flatten_channels_and_pixels_per_sample():
    torch.manual_seed(1)
    cnn = CNN(channels=(3, 4))
    x = torch.randn(20, 1, 8, 8)
    a = cnn.features[1](cnn.features[0](x))
    b = cnn.features[4](cnn.features[3](cnn.features[2](a)))
    manual = torch.cat([(a > 0).flatten(1), (b > 0).flatten(1)], 1)
    codes = neural_codes(cnn, x, drop_constant=False, batch_size=6)
    assert codes.units == 3 * 64 + 4 * 16 and codes.labels is None
    assert torch.equal(codes.bits(), manual)


def test_max_samples_and_token_sites_are_handled():
    mlp = MLP(in_features=4, width=8, depth=1, num_classes=2)
    codes = neural_codes(mlp, (torch.randn(50, 4), torch.arange(50)), max_samples=13, batch_size=5, drop_constant=False)
    assert len(codes) == 13 and torch.equal(codes.labels, torch.arange(13))
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="one row per sample"):
        neural_codes(seq, [(torch.randn(2, 3, 4), torch.tensor([0, 1]))])


# -- the callback --------------------------------------------------------------------------------

def _fit_with_monitor(tmp_path, monitor, logger=False, epochs=2):
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=0)
    task = Classifier(MLP(width=32, depth=2), lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[monitor], default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    return trainer, task, dm


def test_hash_code_monitor_logs_the_metrics_of_the_validation_codes(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    tables = []
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns, data, step=None: tables.append((key, columns, data)))
    monkeypatch.setattr(WandbLogger, "log_metrics", lambda self, metrics, step=None: None)
    monitor = HashCodeMonitor(k=9)
    trainer, task, dm = _fit_with_monitor(tmp_path, monitor, logger=WandbLogger(mode="disabled", save_dir=str(tmp_path)))
    metrics = trainer.callback_metrics
    val = neural_codes(task, dm.val_dataloader(), drop_constant=False)
    train = neural_codes(task, dm.train_eval_dataloader(), drop_constant=False)
    assert float(metrics["hash/redundancy"]) == pytest.approx(float(redundancy_ratio(val, packed=True)))
    assert float(metrics["hash/purity"]) == pytest.approx(float(hash_code_purity(val, val.labels, packed=True)))
    acc = code_categorization(train, train.labels, val, val.labels, packed=True)
    for method in ("kmeans", "knn", "logreg"):
        assert float(metrics[f"hash/{method}_acc"]) == pytest.approx(float(acc[method])), method
    assert float(metrics["hash/units"]) == 64
    assert len(monitor.history) == 2 and [t[0] for t in tables] == ["hash/history"] * 2
    assert len(tables[-1][2]) == 2 and "redundancy" in tables[-1][1]

    restored = HashCodeMonitor(k=9)
    restored.load_state_dict(monitor.state_dict())
    assert restored.history == monitor.history
    assert restored.state_key == monitor.state_key


def test_hash_code_monitor_every_n_epochs_and_no_categorization(tmp_path):
    monitor = HashCodeMonitor(every_n_epochs=2, methods=())
    trainer, _, _ = _fit_with_monitor(tmp_path, monitor, epochs=3)
    assert len(monitor.history) == 1 and monitor.history.last["epoch"] == 1  # the 2nd epoch (index 1) only
    assert "hash/knn_acc" not in trainer.callback_metrics and "hash/redundancy" in trainer.callback_metrics
    with pytest.raises(ValueError, match="Unknown categorization methods"):
        HashCodeMonitor(methods=("svm",))



def test_reference_protocol_equals_a_direct_sklearn_computation():
    """The authors' protocol (LeavesLei/activation-code) written out with scikit-learn directly."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics.cluster import contingency_matrix
    from sklearn.multiclass import OneVsOneClassifier
    from sklearn.neighbors import KNeighborsClassifier

    from actsparse.metrics.functional.hash_codes import drop_constant_units

    rng = np.random.default_rng(3)
    protos = rng.random((4, 40)) < 0.5
    y_tr, y_te = rng.integers(0, 4, 150), rng.integers(0, 4, 70)
    x_tr = protos[y_tr] ^ (rng.random((150, 40)) < 0.3)
    x_te = protos[y_te] ^ (rng.random((70, 40)) < 0.3)
    x_tr[:, 0] = x_te[:, 0] = True  # constant over train ∪ test: dropped
    x_tr[:, 1], x_te[:, 1] = False, rng.random(70) < 0.5  # constant over train only: kept
    tr, te = drop_constant_units(torch.from_numpy(x_tr), torch.from_numpy(x_te))
    assert tr.shape[1] == 39 and torch.equal(te[:, 0], torch.from_numpy(x_te[:, 1]))
    got = code_categorization(tr, torch.from_numpy(y_tr), te, torch.from_numpy(y_te), protocol="reference",
                              n_clusters=4, seed=9)
    xt, xe = tr.numpy(), te.numpy()
    found = KMeans(n_clusters=4, random_state=9).fit_predict(xe.astype(np.float32))
    _, mapping = linear_sum_assignment(-contingency_matrix(y_te, found))
    relabeled = np.empty_like(found)
    for label, cluster in enumerate(mapping):
        relabeled[found == cluster] = label
    want = {
        "kmeans": np.mean(relabeled == y_te),
        "knn": np.mean(KNeighborsClassifier(n_neighbors=9, metric="hamming").fit(xt, y_tr).predict(xe) == y_te),
        "logreg": np.mean(OneVsOneClassifier(LogisticRegression(solver="liblinear", random_state=9))
                          .fit(xt.astype(np.float32), y_tr).predict(xe.astype(np.float32)) == y_te),
    }
    assert {k: float(v) for k, v in got.items()} == pytest.approx(want)
    assert 0.3 < want["knn"] < 1.0  # noisy enough that a wrong protocol would show
    with pytest.raises(ValueError, match="protocol"):
        code_categorization(tr, torch.from_numpy(y_tr), te, torch.from_numpy(y_te), protocol="paper")


def test_hash_code_monitor_rejects_an_unknown_stage_or_protocol():
    with pytest.raises(ValueError, match="stage must be one of validation, test"):
        HashCodeMonitor(stage="train")
    with pytest.raises(ValueError, match="Unknown categorization protocol 'authors'"):
        HashCodeMonitor(protocol="authors")
