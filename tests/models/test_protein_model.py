"""ProteinRPN and the GMT baseline: activation sites, batches of different sizes, losses, a few
training steps whose loss falls, actsparse's monitors attached in a Trainer, the ablation switches
and the control (the study itself: tests/experiments/test_protein_rpn.py)."""

import lightning as L
import pytest
import torch
from actsparse.callbacks import DeadNeuronMonitor, SparsityMonitor
from actsparse.plugins import find_sites
from torch import nn
from torch_geometric.data import Batch

from actsparse.data.protein_rpn.datamodule import ProteinDataModule
from actsparse.data.protein_rpn.synthetic import synthetic_dataset
from actsparse.models.protein_rpn import GMTBaseline, ProteinRPN, anchor_regions
from actsparse.tasks.protein_rpn import (
    ProteinFunction,
    info_nce_loss,
    supervised_contrastive_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def graphs():
    data, terms = synthetic_dataset(num_proteins=10, num_motifs=4, seed=2, min_length=40, max_length=120)
    return data, terms


def test_sites_are_the_relu_modules():
    model = ProteinRPN(num_terms=6, hidden=16, gmt_heads=2)
    relus = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    sites = [s.name for s in find_sites(model)]
    assert sites == relus and len(sites) == 10  # encoder, proposal GNN, scorer, attention, heads
    assert len(find_sites(GMTBaseline(num_terms=6, hidden=16, gmt_heads=2))) == 5


@pytest.mark.parametrize("cls", [ProteinRPN, GMTBaseline])
def test_batch_of_different_sizes_equals_one_graph_at_a_time(graphs, cls):
    data, terms = graphs
    sizes = {g.num_nodes for g in data}
    assert len(sizes) > 3
    torch.manual_seed(0)
    model = cls(num_terms=len(terms), hidden=16, gmt_heads=2).eval()
    with torch.no_grad():
        batched = model(Batch.from_data_list(data))
        single = [model(Batch.from_data_list([g])) for g in data]
    assert batched.logits.shape == (len(data), len(terms))
    torch.testing.assert_close(batched.logits, torch.cat([s.logits for s in single]), atol=1e-4, rtol=1e-4)
    if cls is ProteinRPN:
        # each chain keeps ceil(pool_ratio * n) residues, whatever the others' sizes
        kept = [int(s.kept.sum()) for s in single]
        assert kept == [int(torch.ceil(torch.tensor(0.3 * g.num_nodes))) for g in data]
        assert int(batched.kept.sum()) == sum(kept)


def test_anchor_regions_grow_k_hops():
    # a path 0-1-2-3-4-5; anchor at 0; 2 hops reach node 2
    src = torch.tensor([0, 1, 2, 3, 4])
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], 1)
    scores = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    anchors, region = anchor_regions(scores, edge_index, k_hops=2)
    assert anchors.tolist() == [True] + [False] * 5
    assert region.tolist() == [True, True, True, False, False, False]


def test_contrastive_losses_against_loops():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    # InfoNCE by hand: for each of the 2N views, -log softmax of its pair among the other 2N - 1
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(8):
        pair = (i + 4) % 8
        logits = [float(z[i] @ z[j]) / 0.1 for j in range(8) if j != i]
        others = [j for j in range(8) if j != i]
        total += -(logits[others.index(pair)] - torch.logsumexp(torch.tensor(logits), 0).item())
    assert float(info_nce_loss(z1, z2, 0.1)) == pytest.approx(total / 8, rel=1e-5)
    # SupCon: Jaccard-weighted positives
    y = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]]).float()
    zn = torch.nn.functional.normalize(z1, dim=1)
    per = []
    for i in range(4):
        w = [(float((y[i] * y[j]).sum()) / float(((y[i] + y[j]) > 0).sum())) if j != i and ((y[i] + y[j]) > 0).any() else 0.0
             for j in range(4)]
        if sum(w) == 0:
            continue
        logits = torch.tensor([float(zn[i] @ zn[j]) / 0.1 for j in range(4) if j != i])
        logp = {j: float(zn[i] @ zn[j]) / 0.1 - torch.logsumexp(logits, 0).item() for j in range(4) if j != i}
        per.append(-sum(w[j] * logp[j] for j in logp) / sum(w))
    assert float(supervised_contrastive_loss(z1, y, 0.1)) == pytest.approx(sum(per) / len(per), rel=1e-5)
    assert float(supervised_contrastive_loss(z1, torch.eye(4), 0.1)) == 0.0  # no shared term


def test_training_steps_lower_the_loss(graphs):
    data, terms = graphs
    batch = Batch.from_data_list(data)
    torch.manual_seed(0)
    task = ProteinFunction(ProteinRPN(num_terms=len(terms), hidden=32), lr=5e-3)
    optimizer = task.configure_optimizers()
    losses = []
    for _ in range(25):
        parts = task.losses(batch, task.model(batch))
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(float(parts["loss"]))
    assert set(parts) == {"bce", "supcon", "infonce", "site", "loss"}
    assert losses[-1] < 0.7 * losses[0], losses


def test_monitors_run_attached_in_a_trainer(tmp_path):
    dm = ProteinDataModule(num_proteins=16, batch_size=4, seed=1, min_length=40, max_length=80,
                           cache_root=str(tmp_path / "cache"))
    dm.setup("fit")
    L.seed_everything(0, verbose=False)
    task = ProteinFunction(ProteinRPN(num_terms=dm.num_terms, hidden=16, gmt_heads=2))
    sparsity, dead = SparsityMonitor(every_n_steps=1, heatmap=False), DeadNeuronMonitor(heatmap=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[sparsity, dead],
                        default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=dm)
    (tested,) = trainer.test(task, datamodule=dm, verbose=False)
    assert set(tested) >= {"test/fmax", "test/fmax_coverage", "test/smin", "test/aupr_micro", "test/aupr_macro",
                           "test/site_recall", "test/kept_recall"}
    assert len(sparsity.history) == trainer.global_step
    assert "model.score_act" in sparsity.last and 0.0 <= sparsity.last["mean"] <= 1.0
    assert "dnr/model.conv_acts.0" in dead.last and len(dead.history) == 2


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ablation_switches_remove_exactly_their_part(graphs):
    data, terms = graphs
    batch = Batch.from_data_list(data)
    kw = {"num_terms": len(terms), "hidden": 16, "gmt_heads": 2}
    full = ProteinRPN(**kw)
    parts = {"region_proposal": {"score_embed", "score_convs", "score_hidden", "score_out"},
             "node_drop": {"keep", "ss_weight", "proximity_weight"}, "attention": {"attention"}}
    names = lambda m: {n.split(".")[0] for n, _ in m.named_parameters()}
    for switch, removed in parts.items():
        model = ProteinRPN(**kw, **{switch: False})
        assert names(full) - names(model) == removed, switch
    torch.manual_seed(0)
    out = ProteinRPN(**kw, node_drop=False).eval()(batch)
    assert out.kept is None and out.node_scores.shape == (batch.num_nodes,)
    # no k-hop: the region is the functional score itself
    model = ProteinRPN(**kw, k_hops=0).eval()
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out.region, out.node_scores)
    # the GMT baseline is ProteinRPN with every part off: same parameters, same outputs
    torch.manual_seed(0)
    baseline = GMTBaseline(**kw).eval()
    torch.manual_seed(0)
    all_off = ProteinRPN(**kw, region_proposal=False, node_drop=False, attention=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(baseline(batch).logits, all_off(batch).logits)
    with pytest.raises(ValueError, match="k_hops"):
        ProteinRPN(**kw, k_hops=-1)


def test_control_weights_the_mean_by_its_scores():
    # the control (score GNN, no k-hop, no node drop, no attention): readout = GMT(h) + Σ s·h / Σ s
    g = synthetic_dataset(num_proteins=1, num_motifs=2, seed=0)[0][0]
    torch.manual_seed(0)
    model = ProteinRPN(num_terms=3, hidden=16, gmt_heads=2, k_hops=0, node_drop=False, attention=False).eval()
    with torch.no_grad():
        out = model(g)
        h = model.encode(g)
        s = out.node_scores.double()
        expected = model.readout(h, index=torch.zeros(g.num_nodes, dtype=torch.long), dim_size=1).double()
        expected = expected + (s[:, None] * h.double()).sum(0) / s.sum()
    torch.testing.assert_close(out.graph_repr.double(), expected, atol=1e-5, rtol=1e-5)


def test_head_hidden_sets_the_head_width():
    narrow, wide = ProteinRPN(num_terms=6, hidden=16, gmt_heads=2), ProteinRPN(num_terms=6, hidden=16, gmt_heads=2,
                                                                                  head_hidden=26)
    # head: hidden -> head_hidden -> terms; 10 more units add 10 * (16 + 1 + 6) parameters
    assert _params(wide) - _params(narrow) == 10 * (16 + 1 + 6)
