"""The digits base shared by issues 6 and 7: data module, MLP/CNN, Classifier, configs, a run."""


import numpy as np
import pytest
import torch
from actsparse.plugins import find_sites
from conftest import compose_train

from actsparse.data.digits import DigitsDataModule, load_digits_arrays, split_digits
from actsparse.models import CNN, MLP
from actsparse.models.mlp import build_classifier
from actsparse.train import fit

DIGITS = ["~experiment", "data=digits", "model=mlp", "task=classify", "logger=none"]  # one run, not the default study


def test_split_is_deterministic_stratified_and_disjoint():
    _, y = load_digits_arrays()
    a = split_digits(y, 0.2, 0.2, None, seed=0)
    b = split_digits(y, 0.2, 0.2, None, seed=0)
    c = split_digits(y, 0.2, 0.2, None, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    train, val, test = a
    assert (len(train), len(val), len(test)) == (1077, 360, 360)
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    assert len(np.union1d(np.union1d(train, val), test)) == 1797
    overall = np.bincount(y) / len(y)
    for idx in a:  # stratified: class shares within 1 sample of the overall shares
        assert np.all(np.abs(np.bincount(y[idx], minlength=10) - overall * len(idx)) <= 1.0)


@pytest.mark.parametrize("size, n", [(0.25, 269), (200, 200), (1.0, 1077)])
def test_train_size_takes_a_stratified_subset_and_keeps_val_and_test(size, n):
    _, y = load_digits_arrays()
    full_train, val, test = split_digits(y, 0.2, 0.2, None, seed=0)
    train, val2, test2 = split_digits(y, 0.2, 0.2, size, seed=0)
    assert len(train) == n and np.all(np.isin(train, full_train))
    assert np.array_equal(val, val2) and np.array_equal(test, test2)
    assert np.all(np.abs(np.bincount(y[train], minlength=10) - np.bincount(y) / len(y) * n) <= 1.0)


def test_datamodule_standardizes_on_train_and_shapes_inputs():
    dm = DigitsDataModule(seed=0)
    dm.setup()
    x = dm.train_set.tensors[0]
    varying = x.std(0) > 0
    assert varying.sum() > 50
    assert torch.allclose(x.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(x[:, varying].std(0), torch.ones(int(varying.sum())), atol=1e-5)
    images = DigitsDataModule(flatten=False, seed=0)
    images.setup()
    assert images.train_set.tensors[0].shape[1:] == (1, 8, 8)
    assert torch.equal(images.train_set.tensors[0].flatten(1), x)
    again = DigitsDataModule(seed=0)
    again.setup()
    for a, b in zip((dm.train_set, dm.val_set, dm.test_set), (again.train_set, again.val_set, again.test_set)):
        assert all(torch.equal(p, q) for p, q in zip(a.tensors, b.tensors))


def test_training_order_is_seeded():
    def order(seed):
        dm = DigitsDataModule(seed=seed, batch_size=100)
        dm.setup()
        return torch.cat([y for _, y in dm.train_dataloader()]).tolist()
    assert order(0) == order(0) and order(0) != order(1)


@pytest.mark.parametrize("kwargs, message", [
    ({"train_size": 1.5}, "train_size"), ({"train_size": 5}, "between 10 and 1077"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "sum < 1"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_data_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dm = DigitsDataModule(**kwargs)
        dm.setup()


def test_models_expose_relu_sites_and_rebuild_from_config():
    mlp = MLP(width=16, depth=3)
    assert [s.name for s in find_sites(mlp)] == ["layers.1", "layers.3", "layers.5"]
    assert all(type(s.activation).__name__ == "ReLU" for s in find_sites(mlp))
    cnn = CNN(channels=(4, 8))
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10) and cnn(torch.randn(2, 64)).shape == (2, 10)
    for model in (mlp, cnn):
        rebuilt = build_classifier(model.config_dict())
        rebuilt.load_state_dict(model.state_dict())
        x = torch.randn(3, 64)
        assert torch.equal(rebuilt(x), model(x))
    assert MLP(widths=[8, 4]).widths == [8, 4]
    with pytest.raises(ValueError, match="halves"):
        CNN(channels=(4, 4, 4, 4))


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fast_dev_run_of_the_classifier(model, tmp_path):
    cfg = compose_train([*DIGITS, f"model={model}", "trainer.fast_dev_run=true"], tmp_path)
    summary = fit(cfg)
    assert summary["steps"] == 1 and summary["parameters"] > 0
    assert 0.0 <= summary["val/acc"] <= 1.0 and np.isfinite(summary["val loss"])


def test_datamodule_pickles_without_tensors_and_keeps_its_shuffle_state():
    import pickle

    dm = DigitsDataModule(seed=3, batch_size=50)
    dm.setup()
    _ = [y for _, y in dm.train_dataloader()]  # advance the shuffle generator by one epoch
    copy = pickle.loads(pickle.dumps(dm))  # what DDP spawn does
    assert copy.train_set is None
    copy.setup()
    assert torch.equal(copy.train_set.tensors[0], dm.train_set.tensors[0])
    assert [y.tolist() for _, y in copy.train_dataloader()] == [y.tolist() for _, y in dm.train_dataloader()]
