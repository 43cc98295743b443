"""Iterative magnitude pruning and Activating-while-Pruning (issue 6): the exact weights each step
removes, rewinding, composition with Lightning's ModelPruning, resume, and bad input."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ModelPruning
from torch import nn

from actsparse.callbacks.pruning import ActivatingWhilePruning, IterativeMagnitudePruning
from actsparse.data.digits import DigitsDataModule
from actsparse.models.mlp import MLP
from actsparse.plugins.pruning import activating_prune, mask, values
from actsparse.tasks.classify import Classifier

W_START = [0.00, -0.06, 0.0, -0.5, 2.0, -2.01, -0.2, -0.72, 0.3, -0.1]
W_T = [0.05, -0.06, 1.0, -1.0, 2.0, -2.00, -0.5, -0.70, 0.3, -0.9]
# magnitude removes |w| smallest: 0.05 (idx 0), -0.06 (idx 1).  Surviving negatives and |w_T - w_start|:
# idx 3: 0.5, idx 5: 0.01, idx 6: 0.3, idx 7: 0.02, idx 9: 0.8  ->  AP removes idx 5 and idx 7
# (idx 4 and 8 did not change at all but are positive; idx 5 is the largest weight).


class _Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 1, bias=False)
        self.act = nn.ReLU()


def _wire(amount, ap_rate):
    net, imp, ap = _Net(), IterativeMagnitudePruning(amount=amount), ActivatingWhilePruning(ap_rate=ap_rate)
    trainer = SimpleNamespace(callbacks=[imp, ap], current_epoch=0)
    imp.setup(trainer, net, "fit")
    ap.setup(trainer, net, "fit")
    ap.on_fit_start(trainer, net)
    return net, imp, ap, trainer


def test_ap_event_removes_exactly_the_intended_weights():
    net, imp, ap, trainer = _wire(amount=0.4, ap_rate=0.2)  # of 10 weights: 4 per event, 2 by AP
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([W_START]))
    ap.on_train_epoch_start(trainer, net)  # the round starts: snapshot
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([W_T]))  # "training" happened
    imp.apply_pruning(imp.amount)
    removed = [i for i, m in enumerate(net.fc.weight_mask[0].tolist()) if m == 0]
    assert removed == [0, 1, 5, 7]
    assert ap.events[-1] == (0, {"surviving_before": 10.0, "magnitude": 2.0, "activating": 2.0})
    assert ap.pending  # the next round snapshots again
    # a second event works on survivors only: 6 left; amount 0.4 -> round(2.4) = 2, ap round(1.2) = 1
    ap.on_train_epoch_start(trainer, net)
    with torch.no_grad():
        net.fc.weight_orig.add_(torch.tensor([[0, 0, 0.1, -0.3, 0, 0, -0.05, 0, 0.2, -0.2]]))
    imp.apply_pruning(imp.amount)
    # magnitude (|w| of survivors 2: 1.1, 3: 1.3, 4: 2.0, 6: 0.55, 8: 0.5, 9: 1.1) takes idx 8;
    # AP: negatives 3 (changed 0.3), 6 (0.05), 9 (0.2) -> idx 6
    assert [i for i, m in enumerate(net.fc.weight_mask[0].tolist()) if m == 0] == [0, 1, 5, 6, 7, 8]
    ap.teardown(trainer, net, "fit")
    assert "apply_pruning" not in vars(imp)  # unwrapped


def test_activating_prune_across_layers_and_when_too_few_negatives():
    a, b = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[-1.0, 1.0]]))
        b.weight.copy_(torch.tensor([[-3.0, -2.0]]))
    start = [torch.tensor([[-1.5, 1.0]]), torch.tensor([[-3.1, -1.0]])]  # changes 0.5, -, 0.1, 1.0
    assert activating_prune([(a, "weight"), (b, "weight")], start, 2) == 2
    assert a.weight_mask.tolist() == [[0.0, 1.0]] and b.weight_mask.tolist() == [[0.0, 1.0]]
    assert activating_prune([(a, "weight"), (b, "weight")], start, 5) == 1  # only b's -2.0 is left
    assert b.weight_mask.tolist() == [[0.0, 0.0]] and a.weight_mask.tolist() == [[0.0, 1.0]]


class _Probe(L.Callback):
    """Captures the trained values of some parameters at each epoch end (runs before the pruner)."""

    def __init__(self, params):
        self.params, self.seen = params, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen.append([values(m, n).detach().clone() for m, n in self.params()])


def _trainer(callbacks, epochs, tmp_path=None, **kw):
    return L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     callbacks=callbacks, default_root_dir=tmp_path, **kw)


def _task(seed=0, activation="relu"):
    L.seed_everything(seed)
    return Classifier(MLP(width=16, depth=2, activation=activation))


def test_imp_prunes_globally_by_magnitude_and_rewinds_to_init():
    task = _task()
    init = {k: v.clone() for k, v in task.state_dict().items()}
    imp = IterativeMagnitudePruning(amount=0.3, epochs_per_round=1, rounds=1)
    probe = _Probe(lambda: imp.parameters_to_prune)
    _trainer([probe, imp], epochs=1, enable_checkpointing=False).fit(task, datamodule=DigitsDataModule(seed=0))
    trained = torch.cat([w.flatten() for w in probe.seen[0]])
    k = round(0.3 * trained.numel())
    threshold = trained.abs().sort().values[k - 1]
    masks = torch.cat([mask(m, n).flatten() for m, n in imp.parameters_to_prune])
    assert torch.equal(masks == 0, trained.abs() <= threshold) and int((masks == 0).sum()) == k
    for (m, n), key in zip(imp.parameters_to_prune, imp.names):
        assert torch.equal(values(m, n), init[key])  # rewound (the mask hides the pruned ones)
    assert torch.equal(task.model.layers[0].bias, init["model.layers.0.bias"])
    assert imp.history.last["prune/remaining"] == pytest.approx(1 - k / trained.numel())


def test_ap_composes_with_lightning_model_pruning():
    task = _task()
    pruning = ModelPruning("l1_unstructured", amount=0.2, apply_pruning=lambda epoch: epoch == 0,
                           use_lottery_ticket_hypothesis=True, make_pruning_permanent=False)
    ap = ActivatingWhilePruning(ap_rate=0.05)
    start = []
    probe = _Probe(lambda: ap._params)
    snap = L.Callback()
    snap.on_train_epoch_end = lambda trainer, module: start.append({k: v.clone() for k, v in ap.start.items()})
    _trainer([probe, snap, pruning, ap], epochs=2, enable_checkpointing=False).fit(task, datamodule=DigitsDataModule(seed=0))
    trained = torch.cat([w.flatten() for w in probe.seen[0]])
    w0 = torch.cat([start[0][k].flatten() for k in ap._names])
    n = trained.numel()
    k_ap, k_mag = round(0.05 * n), round(0.2 * n) - round(0.05 * n)
    expected = torch.ones(n, dtype=torch.bool)
    expected[trained.abs().argsort()[:k_mag]] = False
    score = (trained - w0).abs().masked_fill(~(expected & (trained < 0)), float("inf"))
    expected[score.argsort()[:k_ap]] = False
    masks = torch.cat([mask(m, name).flatten() for m, name in ap._params]) != 0
    assert torch.equal(masks, expected)
    _, counts = ap.events[0]
    assert counts["magnitude"] == k_mag and counts["activating"] == k_ap
    assert any("bias" in name for name in ap._names)  # ModelPruning's own parameter list is used


def _resume_run(tmp_path, ckpt_path=None, epochs=6):
    task = _task(seed=3)
    imp = IterativeMagnitudePruning(amount=0.2, epochs_per_round=2, rounds=2)
    ap = ActivatingWhilePruning(ap_rate=0.02)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="e{epoch}", save_top_k=-1, every_n_epochs=1, auto_insert_metric_name=False)
    _trainer([imp, ap, ckpt], epochs=epochs, tmp_path=tmp_path).fit(task, datamodule=DigitsDataModule(seed=3), ckpt_path=ckpt_path)
    return task, imp, ap


def test_resume_mid_round_keeps_masks_and_the_ap_snapshot(tmp_path):
    full_task, full_imp, full_ap = _resume_run(tmp_path / "full")
    checkpoint = torch.load(tmp_path / "full" / "e2.ckpt", weights_only=False)  # end of epoch 3: mid round 2
    assert not any(k.endswith(("_mask", "_orig")) for k in checkpoint["state_dict"])  # plain weights
    ap_state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ActivatingWhilePruning"))
    assert not ap_state["pending"] and len(ap_state["events"]) == 1
    resumed_task, resumed_imp, resumed_ap = _resume_run(tmp_path / "resumed", ckpt_path=tmp_path / "full" / "e2.ckpt")
    assert resumed_imp.rounds_done == full_imp.rounds_done == 2
    assert resumed_ap.events == full_ap.events
    for (m1, n1), (m2, n2) in zip(full_imp.parameters_to_prune, resumed_imp.parameters_to_prune):
        assert torch.equal(mask(m1, n1), mask(m2, n2))
    for k, v in full_ap.start.items():
        torch.testing.assert_close(resumed_ap.start[k], v)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="ap_rate must be a fraction"):
        ActivatingWhilePruning(ap_rate=2)
    with pytest.raises(ValueError, match="must be below the pruning rate"):
        _wire(amount=0.2, ap_rate=0.2)
    with pytest.raises(ValueError, match="rewind_epoch"):
        IterativeMagnitudePruning(epochs_per_round=2, rewind_epoch=2)
    dm = DigitsDataModule(seed=0)
    with pytest.raises(ValueError, match="activates ReLU neurons.*SiLU"):
        _trainer([IterativeMagnitudePruning(), ActivatingWhilePruning()], 1, enable_checkpointing=False).fit(_task(activation="silu"), datamodule=dm)
    with pytest.raises(ValueError, match="needs ReLU activation sites.*No activation sites"):
        _trainer([IterativeMagnitudePruning(), ActivatingWhilePruning()], 1, enable_checkpointing=False).fit(
            Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), datamodule=dm)
    with pytest.raises(ValueError, match="exactly one pruning callback"):
        _trainer([ActivatingWhilePruning()], 1, enable_checkpointing=False).fit(_task(), datamodule=dm)
    with pytest.raises(ValueError, match="use_global_unstructured=True"):
        _trainer([ModelPruning("l1_unstructured", amount=0.2, use_global_unstructured=False), ActivatingWhilePruning()],
                 1, enable_checkpointing=False).fit(_task(), datamodule=dm)

