"""k-WTA and dendritic layers (plugins/dendrites): exact winners, gradients, boosting and its
resumable state, gating against a direct loop, segment masks that cover every context input
(2-20 tasks), sparse feed-forward weights, activation-site integration (record, monitors, codes)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from actsparse.plugins import find_sites, record, unpack_codes
from actsparse.plugins.dendrites import (
    DendriticLayer,
    KWinners,
    KWinners2d,
    covering_mask,
    dendritic_gate,
    kept_count,
)

from actsparse.data.dendrites_permuted_digits import PermutedDigitsDataModule
from actsparse.models.dendrites import DendriticMLP
from actsparse.tasks.dendrites_continual import ContextClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


# -- k-WTA -------------------------------------------------------------------------------------

def test_kwinners_keeps_exactly_k_and_grads_only_winners():
    torch.manual_seed(0)
    kw = KWinners(50, k=7, boost_strength=0.0)
    x = torch.randn(16, 50, requires_grad=True)
    y = kw(x)
    winners = y != 0
    assert winners.sum(1).tolist() == [7] * 16
    top = x.detach().topk(7, dim=1).indices
    expected = torch.zeros_like(winners).scatter_(1, top, True)
    assert torch.equal(winners, expected)
    assert torch.equal(y[winners], x.detach()[winners])
    (y * torch.arange(50.0)).sum().backward()  # a weighted loss: grads must be the weights at winners
    assert torch.equal(x.grad, torch.where(expected, torch.arange(50.0).expand(16, 50), torch.zeros(())))


def test_kwinners_percent_on_and_inference_factor():
    kw = KWinners(100, percent_on=0.1, k_inference_factor=1.5, boost_strength=0.0)
    assert kw.k == 10
    x = torch.randn(4, 100)
    assert (kw(x) != 0).sum(1).tolist() == [10] * 4
    kw.eval()
    assert (kw(x) != 0).sum(1).tolist() == [15] * 4


def test_kwinners_boosting_and_duty_cycles():
    kw = KWinners(4, k=1, boost_strength=2.0, duty_cycle_period=100)
    x = torch.tensor([[1.0, 0.9, 0.1, 0.0]] * 10)
    y = kw(x)
    assert (y[:, 0] != 0).all()  # no history: duty cycles equal, unit 0 wins
    assert kw.duty_cycles.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])  # running mean over 10 samples
    assert int(kw.learning_iterations) == 10
    # unit 0 has been winning (duty 1 > target 0.25): boost exp(2(0.25-1)) = 0.22 lets unit 1 win
    y = kw(x[:1])
    assert y[0, 1] != 0 and y[0, 0] == 0
    assert kw.duty_cycles.tolist() == pytest.approx([10 / 11, 1 / 11, 0.0, 0.0])
    # eval: no duty-cycle update
    kw.eval()
    before = kw.duty_cycles.clone()
    kw(x)
    assert torch.equal(before, kw.duty_cycles)
    kw.boost_strength_factor = 0.5
    assert kw.update_boost_strength() == pytest.approx(1.0)


def test_kwinners_state_resumes_from_state_dict():
    torch.manual_seed(1)
    a = KWinners(30, k=5, boost_strength=1.5, duty_cycle_period=50)
    for _ in range(5):
        a(torch.randn(8, 30))
    b = KWinners(30, k=5, boost_strength=1.5, duty_cycle_period=50)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"duty_cycles", "boost_strength", "learning_iterations"}
    x = torch.randn(8, 30)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.duty_cycles, b.duty_cycles) and int(a.learning_iterations) == int(b.learning_iterations) == 48


def test_kwinners2d_global_and_local():
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    kw = KWinners2d(4, k=10, boost_strength=0.0)
    y = kw(x)
    assert (y != 0).flatten(1).sum(1).tolist() == [10] * 3
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float())
    assert kw.duty_cycles.shape == (4,)
    assert float(kw.duty_cycles.sum()) == pytest.approx(10 / 25)  # winners per sample over H*W, summed over channels
    local = KWinners2d(4, percent_on=0.5, local=True, boost_strength=0.0)
    assert ((local(x.detach()) != 0).sum(1) == 2).all()
    with pytest.raises(ValueError, match="spatial"):
        KWinners2d(4, percent_on=0.1)
    assert KWinners2d(4, percent_on=0.1, spatial=(5, 5)).k == 10


def test_kwinners_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        KWinners(10)
    with pytest.raises(ValueError, match="1..10"):
        KWinners(10, k=11)
    with pytest.raises(ValueError, match="last dimension"):
        KWinners(10, k=2)(torch.randn(2, 9))


# -- dendrites ---------------------------------------------------------------------------------

def test_dendritic_gating_matches_a_direct_loop():
    torch.manual_seed(3)
    layer = DendriticLayer(6, 5, num_segments=4, context_dim=7, weight_sparsity=0.5, seed=0)
    x, context = torch.randn(3, 6), torch.randn(3, 7)
    got = layer(x, context)
    w, mask = layer.segment_weights.detach(), layer.segment_mask
    assert mask.sum(-1).unique().tolist() == [4]  # 3.5 kept of 7, rounded half up, in every segment
    expected = torch.empty(3, 5)
    for b in range(3):
        for u in range(5):
            responses = [sum(float(w[u, j, c]) * float(mask[u, j, c]) * float(context[b, c]) for c in range(7))
                         for j in range(4)]
            strongest = max(responses, key=abs)
            linear = float(layer.linear.bias.detach()[u]) + sum(float(layer.linear.weight.detach()[u, i]) * float(x[b, i]) for i in range(6))
            expected[b, u] = linear / (1 + math.exp(-strongest))
    assert torch.allclose(got, expected, atol=1e-5)
    assert dendritic_gate(torch.tensor([[[0.5, -2.0, 1.0]]])).item() == -2.0  # absolute max, sign kept


def test_pruned_segment_synapses_stay_zero_through_training():
    torch.manual_seed(4)
    layer = DendriticLayer(4, 3, num_segments=2, context_dim=6, weight_sparsity=0.5, seed=1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 4), torch.randn(8, 6)).pow(2).sum().backward()
        assert (layer.segment_weights.grad[~layer.segment_mask] == 0).all()
        opt.step()
    assert (layer.effective_segment_weights[~layer.segment_mask] == 0).all()
    assert layer.num_effective_parameters() == 4 * 3 + 3 + int(layer.segment_mask.sum())
    with pytest.raises(ValueError, match="context"):
        layer(torch.randn(2, 4), torch.randn(2, 5))


# -- sites, monitors, hash codes ---------------------------------------------------------------

def test_layers_are_activation_sites_for_record_and_codes():
    torch.manual_seed(5)
    net = DendriticMLP(context_dim=3, width=40, depth=2, num_segments=3, percent_on=0.1, boost_strength=0.0)
    names = [s.name for s in find_sites(net)]
    assert names == ["blocks.0.dendrites", "blocks.0.kwinners", "blocks.1.dendrites", "blocks.1.kwinners"]
    x, context = torch.randn(32, 64), torch.eye(3)[torch.randint(3, (32,))]
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o.detach()))
             for n, m in net.named_modules() if n in names]
    with record(net, what=("zero_fraction", "codes")) as rec:
        net(x, context)
    for h in hooks:
        h.remove()
    assert rec["blocks.0.kwinners"].zero_fraction == pytest.approx(1 - 4 / 40)  # k = 4 of 40, exactly
    for name in names:
        assert rec[name].zero_fraction == pytest.approx(float((outputs[name] == 0).float().mean()))
        assert torch.equal(unpack_codes(rec[name].codes, 40), outputs[name] > 0)


def test_monitors_work_unchanged_on_a_dendritic_model(tmp_path):
    from actsparse.callbacks import DeadNeuronMonitor, SparsityMonitor

    torch.manual_seed(6)
    dm = PermutedDigitsDataModule(num_tasks=2, context="onehot", batch_size=64, seed=0)
    net = DendriticMLP(context_dim=2, width=50, depth=1, num_segments=2, percent_on=0.2)
    sparsity = SparsityMonitor(every_n_steps=2, heatmap=False, log=False)
    dnr = DeadNeuronMonitor(heatmap=False, log=False)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[sparsity, dnr],
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(ContextClassifier(net), datamodule=dm)
    # sites of the LightningModule: the network is its `model` attribute
    assert sparsity.last["model.blocks.0.kwinners"] == pytest.approx(1 - 10 / 50)
    assert sparsity.last["model.blocks.0.dendrites"] == pytest.approx(0.0)
    _, values = dnr.history[-1]
    assert values["dnr/model.blocks.0.kwinners"] == pytest.approx(1 - 10 / 50)


# -- segment coverage and sparse feed-forward weights ------------------------------------------

def test_kept_count_rounds_half_up():
    assert [kept_count(5, 0.5), kept_count(7, 0.5), kept_count(10, 0.5), kept_count(4, 0.9)] == [3, 4, 5, 1]


@pytest.mark.parametrize("tasks", range(2, 21))
def test_every_unit_task_pair_reaches_a_segment(tasks):
    """One-hot task ids, a segment per task, half of each segment's weights pruned (the study's
    setting): for every unit and task some segment has a nonzero weight on that task, so the
    task's context reaches the unit's gate. Checked on the layer's responses, not on the mask."""
    layer = DendriticLayer(8, 50, num_segments=tasks, context_dim=tasks, weight_sparsity=0.5, seed=tasks)
    with torch.no_grad():  # every kept weight 1: a response is nonzero iff the segment sees the task
        layer.segment_weights.fill_(1.0)
    responses = layer.segment_responses(torch.eye(tasks))  # [task, unit, segment]
    seen = (responses != 0).any(-1)
    assert seen.all(), f"{int((~seen).sum())} (task, unit) pairs see no segment"
    assert layer.segment_mask.sum(-1).unique().tolist() == [kept_count(tasks, 0.5)]


def test_masks_drawn_independently_per_segment_miss_pairs():
    """The check above can fail: independent top-k masks (the old construction) leave some
    (unit, task) pairs of 5 tasks without a segment (each segment keeps 2 of 5 under round-half-even)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(1000, 5, 5, generator=g)
    independent = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(2, dim=-1).indices, True)
    missing = float((~independent.any(1)).float().mean())
    assert missing == pytest.approx((3 / 5) ** 5, abs=0.02)  # P(no segment of 5 keeps a given task): 7.8%
    assert covering_mask(1000, 5, 5, 2, g).any(1).all()


def test_covering_mask_when_segments_cannot_cover():
    mask = covering_mask(30, 2, 10, 3, torch.Generator().manual_seed(1))  # 2 x 3 < 10 inputs
    assert mask.sum(-1).unique().tolist() == [3]
    assert (mask.any(1).sum(-1) == 6).all()  # as many distinct inputs as the segments hold
    with pytest.raises(ValueError, match="keep"):
        covering_mask(2, 2, 4, 5)


def test_sparse_feedforward_weights_forward_grads_and_count():
    torch.manual_seed(8)
    layer = DendriticLayer(10, 6, num_segments=3, context_dim=4, weight_sparsity=0.0, ff_weight_sparsity=0.5, seed=2)
    assert layer.ff_mask.sum(-1).tolist() == [5] * 6  # each unit keeps half its inputs
    x, context = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    layer = layer.double()
    w = layer.linear.weight.detach() * layer.ff_mask
    gate = torch.sigmoid(dendritic_gate(torch.einsum("bc,usc->bus", context, layer.segment_weights.detach())))
    expected = (x @ w.T + layer.linear.bias.detach()) * gate
    assert torch.allclose(layer(x, context), expected, atol=1e-12)
    layer(x, context).sum().backward()
    assert (layer.linear.weight.grad[~layer.ff_mask] == 0).all()
    assert (layer.linear.weight.grad[layer.ff_mask] != 0).any()
    assert layer.num_effective_parameters() == 30 + 6 + 3 * 4 * 6
    with pytest.raises(ValueError, match="ff_weight_sparsity"):
        DendriticLayer(4, 2, 1, 1, ff_weight_sparsity=1.0)
