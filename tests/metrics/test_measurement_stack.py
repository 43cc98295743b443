"""The one measurement stack (issue 11): each rule consolidated there, tested where it could break.

- metric classes equal their functional twins on the same data;
- callback-logged values equal the metric values on the same activations;
- the boundary ``|x| == t`` is counted the same everywhere (inactive);
- single-stream metrics return tensors, per-site metrics dicts keyed by site + ``mean``.
"""

import lightning as L
import pytest
import torch
from torch import nn

from actsparse.callbacks import DeadNeuronMonitor, SparsityMonitor
from actsparse.evaluation import truncate
from actsparse.metrics import ActivationRatio, ActivationSparsity, DeadNeuronRate
from actsparse.metrics.functional import (
    activation_ratio,
    activation_sparsity,
    cett,
    count_active,
    dead_neuron_rate,
    dead_neurons,
)
from actsparse.models import TinyLM
from actsparse.plugins import find_sites, record


def _acts(seed=0, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g))


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_metric_classes_equal_their_functions(threshold):
    parts = [_acts(s) for s in range(3)]
    whole = torch.cat(parts)
    sparsity, ratio = ActivationSparsity(threshold=threshold), ActivationRatio(threshold=threshold)
    dnr = DeadNeuronRate()
    for p in parts:
        sparsity.update(p)
        ratio.update(p)
        dnr.update(p)
    assert torch.equal(sparsity.compute(), activation_sparsity(whole, threshold))
    assert torch.equal(ratio.compute(), activation_ratio(whole, threshold))
    assert torch.equal(dnr.compute(), dead_neuron_rate(whole))
    assert int(dnr.dead_neurons()) == int(dead_neurons(whole).sum())


def test_single_stream_metrics_return_tensors_and_per_site_metrics_dicts():
    x = _acts()
    for cls in (ActivationSparsity, ActivationRatio, DeadNeuronRate):
        single = cls()
        single.update(x)
        assert isinstance(single.compute(), torch.Tensor) and single.compute().dim() == 0
        per_site = cls(["a", "b"])
        per_site.update({"a": x, "b": x[:2]})
        out = per_site.compute()
        assert isinstance(out, dict) and set(out) == {"a", "b", "mean"}


def test_the_boundary_abs_x_equal_t_is_inactive_everywhere():
    t = 0.5
    x = torch.tensor([[-0.5, 0.5, 0.25, 1.0], [0.0, -1.0, 0.5, 0.75]])
    hand_inactive = sum(abs(v) <= t for row in x.tolist() for v in row)  # 5 of 8
    assert hand_inactive == 5
    assert float(activation_sparsity(x, t)) == 5 / 8
    assert float(activation_ratio(x, t)) == 3 / 8  # an exact complement at the boundary
    assert float(count_active(x, t)) == 3
    m = ActivationSparsity(threshold=t)
    m.update(x)
    assert float(m.compute()) == 5 / 8
    # CETT: a neuron whose importance |x_i|·‖W[:, i]‖ equals ε is weak (dropped).
    w = torch.eye(4, dtype=torch.float64)
    x1 = torch.tensor([[0.5, 2.0, 0.0, 0.0]], dtype=torch.float64)
    expected = 0.5 / (0.5**2 + 2.0**2) ** 0.5  # the 0.5 neuron is weak at ε = 0.5
    assert float(cett(x1, w, 0.5)) == pytest.approx(expected, rel=1e-12)
    assert float(activation_ratio(x1, 0.5, w_down=w)) == 1 / 4
    # t = 0: exact zeros (and -0.0) are inactive in recordings, metrics and truncation alike.
    z = torch.tensor([[0.0, -0.0, 1e-30, 2.0]])
    mlp = nn.Sequential(nn.Identity(), nn.ReLU())
    with record(mlp, what="zero_fraction") as rec:
        mlp(z)
    assert rec["1"].zero_fraction == float(activation_sparsity(z)) == 0.5
    lm = TinyLM(d_model=16, n_layers=1, n_heads=2, activation="relu")
    counts = {}
    with truncate(lm, {"blocks.0.ffn": 0.0}, counts=counts), record(lm, what="zero_fraction") as rec:
        lm(torch.randint(0, 256, (1, 8)))
    dropped, entries = (float(v[0]) for v in counts["blocks.0.ffn"])
    assert dropped / entries == pytest.approx(rec["blocks.0.ffn"].zero_fraction)


class _Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        with torch.no_grad():
            self.body[2].bias -= 0.4

    def training_step(self, batch, _):
        (x,) = batch
        return self.body(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # weights fixed: activations are reproducible


def test_callback_logged_values_equal_the_metric_on_the_same_activations(tmp_path):
    x = torch.randn(48, 5, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=12)
    net = _Net()
    sparsity, dnr = SparsityMonitor(every_n_steps=4, heatmap=False), DeadNeuronMonitor(heatmap=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[sparsity, dnr],
                        default_root_dir=tmp_path)
    trainer.fit(net, loader)
    names = [s.name for s in find_sites(net)]
    reference, dead_ref = ActivationSparsity(names), DeadNeuronRate(names)
    with reference.watch(net), dead_ref.watch(net), torch.no_grad():
        net.body(x)
    want = reference.compute()
    assert sparsity.last == pytest.approx({k: float(v) for k, v in want.items()})
    assert dnr.last == pytest.approx({**{f"dnr/{k}": float(v) for k, v in dead_ref.compute().items()},
                                      **{f"dead/{k}": float(v) for k, v in dead_ref.dead_neurons().items()}})
    logged = trainer.callback_metrics
    for name in names:
        assert float(logged[f"sparsity/{name}"]) == pytest.approx(float(want[name]))
        assert float(logged[f"dnr/{name}"]) == pytest.approx(float(want[name]))


def test_sparsity_counts_is_the_one_counting_path():
    """sparsity_counts against a hand count in numpy; a recording's zero counts and per-unit counts
    equal the metric classes' on the same forwards (both count with it), for FFN and CNN shapes."""
    import numpy as np

    from actsparse.metrics.functional import sparsity_counts

    x = _acts(3, (4, 2, 5))
    arr = np.abs(x.numpy())
    got = sparsity_counts(x, 0.3, per_unit=True)
    assert float(got.inactive) == float((arr <= 0.3).sum()) and got.entries == arr.size
    assert got.unit_active.tolist() == (arr > 0.3).reshape(-1, 5).sum(0).astype(float).tolist()
    assert sparsity_counts(x).unit_active is None and float(sparsity_counts(x).inactive) == float((arr == 0).sum())

    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4), nn.ReLU())
    metric = ActivationSparsity.for_model(cnn)
    with record(cnn, what=("zero_fraction", "neuron_counts", "outputs")) as rec, metric.watch(cnn):
        for seed in range(3):
            cnn(torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(seed)))
    values = metric.compute()
    for name in ("1", "4"):
        assert rec[name].zero_fraction == float(values[name])
        outputs = rec[name].outputs.numpy()  # rows: samples (CNN) or tokens; units: the rest
        assert rec[name].neuron_counts.tolist() == (outputs != 0).sum(0).tolist()
