"""The worker of tests/metrics/test_ppl_sparsity.py's DDP test, in a light module: spawned processes
import only this (torch and actsparse.metrics), not the test module."""

import math

import torch
import torch.nn.functional as F

from actsparse.metrics import PPLSparsity
from actsparse.metrics.functional import threshold_for_cett
from actsparse.plugins.sites import find_sites
from actsparse.models import TinyLM

OPTIONS = {"calibration_tokens": None, "calibration_dtype": torch.float64}


def bigram_batches(n_batches=6, batch=4, seq=33, vocab=48, seed=0, table_seed=0):
    """Sequences of a fixed random bigram map (``table_seed``) with 10% noise: learnable in a few
    dozen steps. ``seed`` draws the sequences: training and evaluation data share the map."""
    table = torch.randperm(vocab, generator=torch.Generator().manual_seed(table_seed))
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    for _ in range(n_batches):
        x = torch.empty(batch, seq, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(1, seq):
            noise = torch.rand(batch, generator=g) < 0.1
            x[:, t] = torch.where(noise, torch.randint(0, vocab, (batch,), generator=g), table[x[:, t - 1]])
        out.append((x[:, :-1], x[:, 1:]))
    return out


def trained_lm(steps=80, seed=0):
    torch.manual_seed(seed)
    lm = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu", max_seq_len=32)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    data = bigram_batches(n_batches=8, seed=seed + 1)
    for step in range(steps):
        x, y = data[step % len(data)]
        loss = F.cross_entropy(lm(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lm.eval()


def metric_on(lm, batches):
    m = PPLSparsity(p=1.0, **OPTIONS)
    m.update(lm, batches)
    out = {k: float(v) for k, v in m.compute().items()}
    out["thresholds"] = m.last.thresholds
    out["cett_rejected"] = m.last.cett_rejected
    return out


def worker(rank, world):
    torch.set_num_threads(1)
    lm = trained_lm()
    batches = bigram_batches()
    part = batches[:2] if rank == 0 else batches[2:]  # uneven shards
    return metric_on(lm, part)


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
