"""Dynamic dead neuron rate (issue 6): functional, metric (streaming, per site, DDP) and callback."""

import lightning as L
import pytest
import torch
from torch import nn

from actsparse.callbacks import DeadNeuronMonitor
from actsparse.data.digits import DigitsDataModule
from actsparse.metrics import DeadNeuronRate
from actsparse.metrics.functional import dead_neuron_rate, dead_neurons
from actsparse.models.mlp import MLP
from actsparse.plugins.sites import NoSitesError
from actsparse.tasks.classify import Classifier
from distributed import run_ranks
from dnr_ddp import ddp_data, metric_on, worker


def _hand(rows):
    """Zeros, entries and never-nonzero columns of a list-of-lists, counted in Python."""
    zeros = sum(v == 0 for row in rows for v in row)
    entries = sum(len(row) for row in rows)
    dead = sum(all(row[j] == 0 for row in rows) for j in range(len(rows[0])))
    return zeros, entries, dead


def test_functional_matches_a_hand_count():
    x = torch.tensor([[0.0, 0.5, 0.0, 2.0], [0.0, 0.0, 0.0, 1e-30], [3.0, 0.0, 0.0, 0.0]])
    zeros, entries, dead = _hand(x.tolist())
    assert (zeros, entries, dead) == (8, 12, 1)
    assert dead_neuron_rate(x).item() == pytest.approx(8 / 12)
    assert dead_neurons(x).tolist() == [False, False, True, False]
    cnn = torch.zeros(2, 2, 1, 2)
    cnn[0, 1, 0, 0] = 1.0  # one (channel, position) neuron alive on one sample
    assert dead_neuron_rate(cnn).item() == pytest.approx(7 / 8) and int(dead_neurons(cnn).sum()) == 3
    with pytest.raises(ValueError, match="non-empty"):
        dead_neuron_rate(torch.zeros(0))


def test_metric_streams_per_site_like_the_hand_count():
    g = torch.Generator().manual_seed(0)
    batches = [torch.relu(torch.randn(n, 5, generator=g)) for n in (3, 7, 4)]
    for b in batches:
        b[:, 1] = 0
    other = [torch.relu(torch.randn(n, 2, generator=g)) for n in (3, 7, 4)]
    metric, single = DeadNeuronRate(["h1", "h2"]), DeadNeuronRate()
    for a, b in zip(batches, other):
        metric.update({"h1": a, "h2": b})
        single.update(a)
    za, na, da = _hand(torch.cat(batches).tolist())
    zb, nb, db = _hand(torch.cat(other).tolist())
    out, dead = metric.compute(), metric.dead_neurons()
    assert out["h1"].item() == pytest.approx(za / na) and out["h2"].item() == pytest.approx(zb / nb)
    assert out["mean"].item() == pytest.approx((za + zb) / (na + nb))
    assert dead["h1"].item() == da == 1 and dead["h2"].item() == db
    assert single.compute().item() == pytest.approx(za / na) and single.dead_neurons().item() == 1


def test_metric_bad_input_is_named():
    with pytest.raises(RuntimeError, match="before update"):
        DeadNeuronRate().compute()
    with pytest.raises(KeyError, match="Unknown stream"):
        DeadNeuronRate(["a", "b"]).update({"c": torch.ones(2, 2)})
    metric = DeadNeuronRate()
    metric.update(torch.ones(2, 3))
    with pytest.raises(ValueError, match="same units"):
        metric.update(torch.ones(2, 4))


def test_ddp_reduction_equals_single_process(tmp_path):
    per_rank = run_ranks(worker, tmp_path)
    single = metric_on([ddp_data()])
    a, _ = ddp_data()
    assert single["dead/a"] == _hand(a.tolist())[2] == 1  # column 4 is alive on rank 1's rows
    for values in per_rank:
        assert values == pytest.approx(single)


def test_callback_logs_the_hand_counted_epoch_dnr(tmp_path):
    """With lr=0 the weights never change, so the epoch's DNR is the DNR of the training set."""
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=100, seed=0)
    dm.setup()
    mlp = MLP(width=12, depth=2)
    with torch.no_grad():
        mlp.layers[2].bias -= 0.6  # some neurons die
    task = Classifier(mlp, optimizer="sgd", lr=0.0, momentum=0.0)
    callback = DeadNeuronMonitor(every_n_steps=3)

    class StepWindows(L.Callback):
        """Hand counts of each batch's zeros; at every logged step, the window since the last log."""

        def __init__(self):
            self.window, self.checked = [0, 0], []

        def on_train_epoch_start(self, trainer, pl_module):
            self.window = [0, 0]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with torch.no_grad():
                h1 = torch.relu(mlp.layers[0](batch[0].flatten(1)))
                h2 = torch.relu(mlp.layers[2](h1))
            self.window[0] += int((h1 == 0).sum() + (h2 == 0).sum())
            self.window[1] += h1.numel() + h2.numel()
            if trainer.global_step % 3 == 0:
                self.checked.append((trainer.callback_metrics["dnr_step/mean"].item(), self.window[0] / self.window[1]))
                self.window = [0, 0]

    windows = StepWindows()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[callback, windows], default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    assert len(windows.checked) == trainer.global_step // 3 >= 6  # a log every 3 steps
    for logged, hand in windows.checked:
        assert logged == pytest.approx(hand, rel=1e-6)  # logged as float32
    x, _ = dm.train_set.tensors
    with torch.no_grad():
        h1 = torch.relu(mlp.layers[0](x))
        h2 = torch.relu(mlp.layers[2](h1))
    metrics = trainer.callback_metrics
    for name, h in (("model.layers.1", h1), ("model.layers.3", h2)):
        zeros, entries, dead = _hand(h.tolist())
        assert metrics[f"dnr/{name}"].item() == pytest.approx(zeros / entries)
        assert metrics[f"dead/{name}"].item() == dead
    z = sum(_hand(h.tolist())[0] for h in (h1, h2))
    assert metrics["dnr/mean"].item() == pytest.approx(z / (h1.numel() + h2.numel()))
    assert _hand(h2.tolist())[2] > 0 and "dnr_step/mean" in metrics
    assert len(callback.history) == 2 and (tmp_path / "dnr_heatmap.png").is_file()
    restored = DeadNeuronMonitor()
    restored.load_state_dict(callback.state_dict())
    assert restored.history == callback.history and restored.last == callback.history[-1][1]


def test_callback_on_a_model_without_sites_is_a_clear_error(tmp_path):
    task = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[DeadNeuronMonitor()])
    with pytest.raises(NoSitesError, match="No activation sites"):
        trainer.fit(task, datamodule=DigitsDataModule(seed=0))
    with pytest.raises(ValueError, match="every_n_steps"):
        DeadNeuronMonitor(every_n_steps=0)

