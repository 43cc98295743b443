"""Record activation masks from a trained ReLU model, for the benchmark's ``--pattern recorded``.

    python bench/gpu/record_masks.py [--out bench/gpu/masks_tinylm_relu.pt] [--steps 300]

Random masks draw every (token, neuron) independently, the worst case for a batch's union of
active neurons; a trained model's tokens share neurons. This trains actsparse's TinyLM with ReLU
FFNs on this repository's own text (bytes) with ProSparse's L1 penalty on the FFN activations
(fixed λ, the layer-normalised form), then records which neurons each token of held-out text
activates in every layer: a bool ``[tokens, neurons]`` per layer, stacked over layers, bit-packed
(``{"packed", "shape", ...}``; :func:`actsparse.bench.load_patterns` unpacks it). CPU, ~1-2 min.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]


def corpus() -> torch.Tensor:
    files = sorted([*REPO.glob("docs/*.md"), *REPO.glob("plugins/*.py"), *REPO.glob("actsparse/*.py")])
    return torch.tensor(list(b"\n".join(p.read_bytes() for p in files)), dtype=torch.long)


def train(steps: int, l1: float, seed: int = 0):
    from actsparse.models import TinyLM
    from actsparse.plugins.sites import find_sites

    torch.manual_seed(seed)
    data = corpus()
    split = int(0.9 * len(data))
    model = TinyLM(d_model=64, n_layers=2, n_heads=2, activation="relu", max_seq_len=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    acts = []
    hooks = [s.register_hook(lambda site, t: acts.append(t)) for s in find_sites(model)]
    for _ in range(steps):
        starts = torch.randint(0, split - 65, (16,))
        batch = torch.stack([data[s : s + 65] for s in starts])
        acts.clear()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        reg = sum(a.abs().sum(-1).mean() for a in acts)
        (loss + l1 * reg).backward()
        opt.step()
        opt.zero_grad()
    for h in hooks:
        h.remove()
    return model.eval(), data[split:], loss.item()


@torch.no_grad()
def record(model, text: torch.Tensor, tokens: int) -> torch.Tensor:
    from actsparse.plugins.sites import find_sites

    masks = {}
    hooks = [s.register_hook(lambda site, t: masks.setdefault(site.name, []).append(t.reshape(-1, t.shape[-1]) != 0))
             for s in find_sites(model)]
    n = tokens // 64
    model(text[: n * 64].reshape(n, 64))
    for h in hooks:
        h.remove()
    return torch.cat([torch.cat(v) for v in masks.values()])  # layers stacked: [layers * tokens, f]


def pack(masks: torch.Tensor) -> torch.Tensor:
    n, f = masks.shape
    padded = torch.zeros(n, (f + 7) // 8 * 8, dtype=torch.uint8)
    padded[:, :f] = masks.to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.reshape(n, -1, 8) * weights).sum(-1).to(torch.uint8)  # MSB first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "bench" / "gpu" / "masks_tinylm_relu.pt"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--l1", type=float, default=1.5e-3)
    p.add_argument("--tokens", type=int, default=1024)
    args = p.parse_args(argv)
    t0 = time.time()
    model, held_out, loss = train(args.steps, args.l1)
    masks = record(model, held_out, args.tokens)
    meta = {"source": "TinyLM(d_model=64, n_layers=2, relu) trained on this repo's docs and code with L1 "
                      f"{args.l1} for {args.steps} steps; held-out tokens, both layers stacked",
            "command": " ".join([sys.executable, *sys.argv]), "final_loss": round(loss, 3),
            "token_sparsity": round(1 - masks.float().mean().item(), 4), "seconds": round(time.time() - t0, 1)}
    torch.save({"packed": pack(masks), "shape": list(masks.shape), **meta}, args.out)
    print(json.dumps({"out": args.out, "shape": list(masks.shape), **meta}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
