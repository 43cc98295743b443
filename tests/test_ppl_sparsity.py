"""PPL-p% sparsity: the returned point against an independent float64 re-evaluation, DDP,
Hugging Face models, the metric class, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actsparse.evaluation import ppl_p_sparsity
from actsparse.metrics import PPLSparsity
from actsparse.metrics.functional import threshold_for_cett
from actsparse.plugins.sites import NoSitesError, find_sites
from distributed import run_ranks
from ppl_sparsity_ddp import OPTIONS, bigram_batches, metric_on, trained_lm, worker


@pytest.fixture(scope="module")
def lm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    yield trained_lm().double()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches():
    return bigram_batches()


def reference_eval(model, batches, target):
    """Independent float64 path: dense x1 of all tokens -> per-site threshold for ``target``
    (threshold_for_cett) -> forward with hand-masked FFNs; returns (ppl ratio, dropped fraction)."""
    sites = find_sites(model)
    x1s = {s.name: [] for s in sites}
    hooks = [s.register_hook(lambda s, t: x1s[s.name].append(t.detach().reshape(-1, t.shape[-1]))) for s in sites]
    dense = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item() for x, y in batches)
    for h in hooks:
        h.remove()
    eps = {s.name: float(threshold_for_cett(torch.cat(x1s[s.name]), s.w_down.detach(), target)) for s in sites}
    counts = [0, 0]
    originals = {}
    for s in sites:
        ffn = s.owner
        originals[s.name] = ffn.forward

        def forward(h, ffn=ffn, e=eps[s.name]):
            x1 = ffn.act(ffn.gate(h)) * ffn.up(h)
            weak = x1.abs() * ffn.down.weight.norm(dim=0) <= e  # the one rule: at or below the threshold
            counts[0] += int(weak.sum())
            counts[1] += weak.numel()
            return ffn.down(torch.where(weak, torch.zeros_like(x1), x1))

        ffn.forward = forward
    try:
        trunc = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item() for x, y in batches)
    finally:
        for s in sites:
            s.owner.forward = originals[s.name]
    tokens = sum(y.numel() for _, y in batches)
    return math.exp((trunc - dense) / tokens), counts[0] / counts[1], eps


@pytest.mark.parametrize("p", [1.0, 5.0])
def test_returned_point_is_just_within_the_budget(lm, batches, p):
    r = ppl_p_sparsity(lm, batches, p, **OPTIONS)
    assert 0 < r.cett < 1 and 0 < r.sparsity < 1
    assert r.cett_rejected - r.cett <= 1e-3 + 1e-12
    ratio, dropped, eps = reference_eval(lm, batches, r.cett)
    assert ratio <= 1 + p / 100
    assert ratio == pytest.approx(r.ppl_ratio, rel=1e-6)  # CE in float32 inside causal_lm_loss
    assert dropped == pytest.approx(r.sparsity, rel=1e-12)
    assert eps == pytest.approx(r.thresholds, rel=1e-12)
    beyond, _, _ = reference_eval(lm, batches, r.cett_rejected)
    assert beyond > 1 + p / 100
    # performance-aware: a larger budget drops at least as many neurons
    assert r.ppl_dense == pytest.approx(math.exp(sum(
        F.cross_entropy(lm(x).flatten(0, 1), y.flatten(), reduction="sum").item() for x, y in batches)
        / sum(y.numel() for _, y in batches)), rel=1e-6)


def test_search_is_cheaper_than_naive_bisection(lm):
    batches = bigram_batches(n_batches=16)  # exploration needs >= 16 batches (every 8th)
    r = ppl_p_sparsity(lm, batches, 1.0, **OPTIONS)
    naive_passes = 1 + math.ceil(math.log2(1 / 1e-3))  # dense + one pass per bisection step
    assert r.forwards < naive_passes, r.history
    assert r.cett_rejected - r.cett <= 1e-3 + 1e-12


def test_larger_budget_gives_more_sparsity(lm, batches):
    r1 = ppl_p_sparsity(lm, batches, 1.0, **OPTIONS)
    r10 = ppl_p_sparsity(lm, batches, 10.0, **OPTIONS)
    assert r10.cett > r1.cett and r10.sparsity > r1.sparsity


def test_metric_class_equals_the_functional(lm, batches):
    r = ppl_p_sparsity(lm, batches, 1.0, **OPTIONS)
    m = PPLSparsity(p=1.0, **OPTIONS)
    m.update(lm, batches)
    out = m.compute()
    assert float(out["sparsity"]) == pytest.approx(r.sparsity, rel=1e-12)
    assert float(out["ppl_truncated"]) == pytest.approx(r.ppl_truncated, rel=1e-9)
    assert float(out["cett"]) == pytest.approx(r.cett)


def test_ddp_two_processes_equal_one(tmp_path):
    per_rank = run_ranks(worker, tmp_path)
    single = metric_on(trained_lm(), bigram_batches())
    for got in per_rank:
        assert got["thresholds"] == pytest.approx(single["thresholds"], rel=1e-6)
        for key in ("sparsity", "cett", "ppl_dense", "ppl_truncated", "cett_rejected"):
            assert got[key] == pytest.approx(single[key], rel=1e-6), key


def test_hugging_face_llama_with_dict_batches():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                      hidden_act="relu")
    model = transformers.LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = bigram_batches(n_batches=4)
    for step in range(40):
        x, _ = data[step % 4]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x, _ in data]
    r = ppl_p_sparsity(model, batches, 1.0, calibration_tokens=None)
    assert [s.name for s in find_sites(model)] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert r.ppl_ratio <= 1.01 and r.cett_rejected - r.cett <= 1e-3 + 1e-12
    # HF's own loss agrees with the dense perplexity (labels shifted inside the model)
    with torch.no_grad():
        hf = sum(model(**b, labels=b["input_ids"]).loss.item() for b in batches) / len(batches)
    assert math.log(r.ppl_dense) == pytest.approx(hf, rel=1e-5)


def test_errors_name_the_problem(lm, batches):
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="p must be > 0"):
            ppl_p_sparsity(lm, batches, bad)
        with pytest.raises(ValueError, match="p must be > 0"):
            PPLSparsity(p=bad)
    with pytest.raises(NoSitesError, match="down projection"):
        ppl_p_sparsity(nn.Sequential(nn.Embedding(48, 8), nn.ReLU(), nn.Linear(8, 48)), batches, 1.0)
    with pytest.raises(ValueError, match="tol"):
        ppl_p_sparsity(lm, batches, 1.0, tol=0)
    with pytest.raises(RuntimeError, match="before any update"):
        PPLSparsity().compute()


def test_sparsity_evaluator_logs_ppl_p_sparsity(lm, batches, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from actsparse.callbacks.evaluator import SparsityEvaluator
    from actsparse.tasks.lm import CausalLM

    task = CausalLM(model=trained_lm())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loader = DataLoader(list(zip(x, y)), batch_size=4)
    evaluator = SparsityEvaluator(p=[1, 5], **OPTIONS)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[evaluator], default_root_dir=tmp_path)
    trainer.validate(task, dataloaders=loader, verbose=False)
    direct = ppl_p_sparsity(task, loader, 1.0, **OPTIONS)
    assert float(trainer.callback_metrics["val/ppl_p1_sparsity"]) == pytest.approx(direct.sparsity, rel=1e-6)
    assert float(trainer.callback_metrics["val/ppl_p5_sparsity"]) >= direct.sparsity
    assert evaluator.history and evaluator.state_dict()["history"][0][1]["val/ppl_p1_sparsity"] > 0
    with pytest.raises(ValueError, match="p must be > 0"):
        SparsityEvaluator(p=0)
