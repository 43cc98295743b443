"""k-WTA and dendritic layers: exact winners, gradients, boosting and its resumable state,
gating against a direct loop, activation-site integration (record, monitors, hash codes),
the matched-size MLP, permuted-digits tasks and both studies end to end."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from actsparse.data.dendrites_permuted_digits import PermutedDigitsDataModule, task_permutations
from actsparse.models.dendrites import DendriticMLP, effective_parameters, matched_mlp
from actsparse.plugins import find_sites, record, unpack_codes
from actsparse.plugins.dendrites import DendriticLayer, KWinners, KWinners2d, dendritic_gate
from actsparse.tasks.dendrites_continual import ContextClassifier, evaluate_accuracy


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
    assert mask.sum(-1).unique().tolist() == [round(0.5 * 7)]  # fixed weight sparsity per segment
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
    dm = PermutedDigitsDataModule(num_tasks=2, batch_size=64, seed=0)
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
    epoch, values = dnr.history[-1]
    assert values["dnr/model.blocks.0.kwinners"] == pytest.approx(1 - 10 / 50)


# -- models and data ---------------------------------------------------------------------------

def test_matched_mlp_has_the_same_effective_parameter_count():
    ref = DendriticMLP(context_dim=5, width=128, depth=2, num_segments=5, weight_sparsity=0.5)
    pruned = sum(int((~b["dendrites"].segment_mask).sum()) for b in ref.blocks)
    assert effective_parameters(ref) == sum(p.numel() for p in ref.parameters()) - pruned
    mlp = matched_mlp(ref)
    assert abs(mlp.num_parameters() - ref.num_parameters()) / ref.num_parameters() < 0.01
    assert mlp(torch.randn(2, 64), None).shape == (2, 10)


def test_model_configs_instantiate():
    from conftest import compose_config
    from hydra.utils import instantiate

    from actsparse.experiments import study
    from actsparse.models.dendrites import ContextFree

    mlp = instantiate(compose_config(["model=dendrites_matched_mlp"]).model, _convert_="all")
    assert isinstance(mlp, ContextFree) and mlp.model.widths == [136, 136]
    assert mlp.config_dict()["kind"] == "dendritic_matched_mlp"
    dendritic = instantiate(study.compose("dendrites", ["data.num_tasks=4"]).model, _convert_="all")
    assert isinstance(dendritic, DendriticMLP) and dendritic.context_dim == 4
    dendritic = instantiate(compose_config(["model=dendrites"]).model, _convert_="all")
    assert abs(mlp.num_parameters() - dendritic.num_parameters()) / dendritic.num_parameters() < 0.01


def test_permuted_digits_tasks():
    dm = PermutedDigitsDataModule(num_tasks=3, seed=0)
    dm.setup()
    perms = task_permutations(3, 64, 0)
    assert torch.equal(perms[0], torch.arange(64)) and not torch.equal(perms[1], perms[2])
    x0, c0, y0 = dm.task_dataset(0, "train").tensors
    x2, c2, y2 = dm.task_dataset(2, "train").tensors
    assert torch.equal(x2, x0[:, perms[2]]) and torch.equal(y0, y2)
    assert c2.sum(1).eq(1).all() and c2[:, 2].eq(1).all()
    dm.set_task(1)
    x, c, y = next(iter(dm.train_dataloader()))
    assert c[:, 1].eq(1).all() and x.shape == (32, 64)
    with pytest.raises(ValueError, match="task"):
        dm.set_task(3)


def test_context_classifier_learns_a_task():
    torch.manual_seed(7)
    dm = PermutedDigitsDataModule(num_tasks=1, seed=0)
    net = DendriticMLP(context_dim=1, width=64, depth=1, num_segments=1, percent_on=0.25)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(ContextClassifier(net, lr=3e-3), datamodule=dm)
    assert evaluate_accuracy(net, dm.task_dataset(0, "test")) > 0.8


# -- studies end to end --------------------------------------------------------------------------

def _compose(name, overrides, tmp_path):
    from actsparse.experiments import study

    cfg = study.compose(name, ["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def runs_sparsity(result, model, site):
    return result["runs"][model][0]["sparsity"][site]


def test_dendrites_study_end_to_end(tmp_path):
    from actsparse.experiments.dendrites import run

    cfg = _compose("dendrites", ["data.num_tasks=2", "dendrites.seeds=[0]", "dendrites.epochs_per_task=1",
                                 "model.width=32"], tmp_path)
    result = run(cfg)
    assert [r["model"] for r in result["accuracy"]] == ["dendritic", "mlp", "kwta_mlp"]
    ablation = matched_mlp(DendriticMLP(context_dim=2, width=32, num_segments=2), percent_on=0.1).model
    k_wta = ablation.layers[1]
    assert runs_sparsity(result, "kwta_mlp", "model.layers.1") == pytest.approx(1 - k_wta.k / k_wta.units)
    runs = result["runs"]
    assert len(runs["dendritic"][0]["accuracy"]) == 2 and len(runs["dendritic"][0]["accuracy"][0]) == 2
    assert runs["dendritic"][0]["sparsity"]["blocks.0.kwinners"] == pytest.approx(1 - 3 / 32)
    assert abs(runs["mlp"][0]["parameters"] - runs["dendritic"][0]["parameters"]) / runs["dendritic"][0]["parameters"] < 0.02
    for f in ("results.md", "results.json", "accuracy_after_last.png", "accuracy_matrix.png", "meta.json"):
        assert (tmp_path / f).exists(), f
    assert "forgetting" in (tmp_path / "results.md").read_text()


def test_sdr_theory_study_end_to_end(tmp_path):
    from actsparse.experiments.sdr_theory import run

    cfg = _compose("sdr_theory", [
        "sdr_theory.trials=20000", "sdr_theory.union_trials=5000", "sdr_theory.noise_trials=5000",
        "sdr_theory.false_match.ns=[1000,4000]", "sdr_theory.union.ns=[1000]", "sdr_theory.union.max_m=4",
        "sdr_theory.noise.levels=8", "sdr_theory.noise.step=0.1", "sdr_theory.noise.optimal_noise=[0.3]",
        "sdr_theory.timing.grid=10", "sdr_theory.timing.repeats=1", "sdr_theory.timing.trials=2000"], tmp_path)
    result = run(cfg)
    for row in result["agreement"]:
        if not row["comparison"].startswith("union (paper"):
            assert row["share"] >= 0.9, row  # 99.9% intervals; a few thousand trials
    assert result["optimal"][0]["optimal θ"] == 11
    for f in ("false_match_vs_theta.png", "union_capacity.png", "noise.png", "results.md", "results.json"):
        assert (tmp_path / f).exists(), f
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["false_match"]["curves"]["1000"]["theory"]) == 24
