"""Decode speed of SmolLM2-135M made sparse: tokens/s at batch 1 with a KV cache, dense vs sparse FFN.

    python bench/decode_smollm2.py [--checkpoint outputs/.../checkpoints/last.ckpt] [--cats 0.5 0.7]
        [--teal 0.5 0.7] [--steps 64]

Rows (each decoded greedily from the same prompt, one token per step through ``DynamicCache``;
dense and converted runs alternate, medians of ``--repeats``):

- ``relu swap``: the pretrained model with every FFN activation swapped to ReLU, untrained (the
  sparsity ProSparse starts from; its text is poor, its speed is what this sparsity buys);
- ``prosparse``: the same swap with the weights of a trained run (``--checkpoint``: the
  ``last.ckpt`` that ``experiment=smollm2_prosparse`` saves for ``callbacks=prosparse``; FATReLU
  with ``--threshold`` when the run shifted it);
- ``cats``: the pretrained SiLU model with CATS calibrated at each ``--cats`` sparsity (on training
  windows), converted to :class:`~actsparse.plugins.sparse_ffn.SparseFFN` layers (CATS mode);
- ``teal``: the pretrained SiLU model with TEAL (uniform, FFN projections) calibrated at each
  ``--teal`` sparsity, converted to :class:`~actsparse.plugins.sparse_ffn_teal.TealFFN` layers
  (gate/up read only the active inputs' weight rows, down only the active neurons').

Each row's dense run is the same model unconverted (same function: the generated tokens must be
equal), and ``SiLU dense`` is the original model, whose FFN costs the same as the dense runs.
``ffn sparsity`` is the zero fraction of ``x1`` over the decoded tokens' forwards (for TEAL, of the
sparsified ``x1`` entering down; its gate/up input is sparsified at the same target).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import cache_keyword, hf_decode, time_interleaved

PROMPT = ("Return a new list containing all items from the iterable in ascending order. A custom key "
          "function can be supplied to customize the sort order, and the reverse flag can be set to")


def relu_model(base, checkpoint: str | None, threshold: float):
    from actsparse.plugins import swap_activation

    model = copy.deepcopy(base)
    swap_activation(model, "fatrelu" if threshold > 0 else "relu", threshold=threshold if threshold > 0 else None)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise ValueError(f"{checkpoint} does not hold this model's weights (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}).")
    return model.eval()


@torch.no_grad()
def decode_sparsity(model, prompt: torch.Tensor, steps: int) -> float:
    from actsparse.plugins import record

    with record(model, what="zero_fraction") as rec:
        hf_decode(model, prompt, steps)
    return rec.zero_fraction()


def bench_pair(label: str, dense, prompt: torch.Tensor, steps: int, repeats: int, calib) -> dict:
    from actsparse.plugins.sparse_ffn import convert_to_sparse

    sparsity = decode_sparsity(dense, prompt, steps)
    try:
        sparse = convert_to_sparse(dense, inplace=False, calibration=calib)
    except TypeError as err:
        return {"model": label, "ffn_sparsity": sparsity, "skipped": f"not convertible: {err}"}
    runs, agreeing = time_interleaved(hf_decode, dense, sparse, prompt, steps, repeats)
    d, s = statistics.median(runs["dense"]), statistics.median(runs["sparse"])
    row = {"model": label, "ffn_sparsity": sparsity, "dense_tok_s": d, "sparse_tok_s": s, "speedup": s / d,
           "same_tokens": agreeing == steps, "agreeing_tokens": agreeing, "runs": runs}
    if agreeing < steps:
        row.update(divergence(dense, sparse, prompt, steps))
    return row


@torch.no_grad()
def divergence(dense, sparse, prompt: torch.Tensor, steps: int) -> dict:
    """Why greedy decoding parted: both models read the dense model's tokens one at a time through
    their own KV caches (the decode path, batch 1); at the first step where their argmax differs,
    the dense model's top-2 logit margin and the largest logit difference between the two. A margin
    of the order of the difference is a near-tie that summation order decides (the kernels add in
    another order than MKL), not a wrong layer."""
    from transformers import DynamicCache

    tokens, _ = hf_decode(dense, prompt, steps)
    caches = {"dense": DynamicCache(), "sparse": DynamicCache()}
    key = cache_keyword(dense)
    worst = 0.0
    for i in range(steps):
        ids = prompt if i == 0 else tokens[:, i - 1 : i]
        a = dense(input_ids=ids, use_cache=True, **{key: caches["dense"]}).logits[0, -1]
        b = sparse(input_ids=ids, use_cache=True, **{key: caches["sparse"]}).logits[0, -1]
        diff = float((a - b).abs().max())
        if a.argmax() != b.argmax():
            top2 = a.topk(2).values
            return {"first_differing_token": i, "dense_top2_margin": float(top2[0] - top2[1]),
                    "max_logit_difference": diff, "max_logit_difference_before": worst}
        worst = max(worst, diff)
    return {"divergence": "none when both read the dense model's tokens"}


def run(checkpoint=None, threshold=0.0, cats=(), steps=64, repeats=5, relu_swap=True,
        calibration_tokens=8192, teal=(), device="cpu", dtype="float32") -> list[dict]:
    """The table's rows. ``device``/``dtype``: where and in what the models run (the GPU check runs
    ``device="cuda", dtype="bfloat16"``; the CPU kernels serve float32 and bfloat16)."""
    from actsparse.models.smollm2 import load_pretrained

    base, tokenizer = load_pretrained("smollm2-135m", dtype=getattr(torch, dtype))
    base = base.to(device).eval()
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(device)
    calib = [prompt]
    rows = []
    silu = [hf_decode(base, prompt, steps) for _ in range(repeats)]
    rows.append({"model": "SiLU dense (pretrained)", "ffn_sparsity": decode_sparsity(base, prompt, steps),
                 "dense_tok_s": statistics.median((steps - 1) / s for _, s in silu)})
    if relu_swap:
        rows.append(bench_pair("relu swap (untrained)", relu_model(base, None, 0.0), prompt, steps, repeats, calib))
    if checkpoint:
        rows.append(bench_pair(f"prosparse ({Path(checkpoint).parent.parent.name})",
                               relu_model(base, checkpoint, threshold), prompt, steps, repeats, calib))
    if cats or teal:
        from actsparse.data.smollm2_text import PretrainedTextDataModule
        from actsparse.plugins.training_free import calibrate_cats, calibrate_teal

        windows = PretrainedTextDataModule(tokenizer, seq_len=256, batch_size=8).calibration_batches(calibration_tokens)
        for name, calibrate, targets in (("CATS", calibrate_cats, cats), ("TEAL", calibrate_teal, teal)):
            for target in targets:
                model = copy.deepcopy(base)
                calibrate(model, windows, float(target))
                rows.append(bench_pair(f"{name} {float(target):.0%}", model, prompt, steps, repeats, calib))
    for r in rows:
        r.update(steps=steps, repeats=repeats, threads=torch.get_num_threads(), prompt_tokens=prompt.shape[1],
                 device=str(device), dtype=dtype)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | FFN sparsity (decode) | dense tok/s | sparse tok/s | speedup | same tokens |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        sp = f"{100 * r['ffn_sparsity']:.1f}%"
        if "skipped" in r:
            lines.append(f"| {r['model']} | {sp} | | | {r['skipped']} | |")
        elif "sparse_tok_s" not in r:
            lines.append(f"| {r['model']} | {sp} | {r['dense_tok_s']:.1f} | | | |")
        else:
            same = "yes" if r["same_tokens"] else f"first {r['agreeing_tokens']} of {r['steps']}"
            if "dense_top2_margin" in r:
                same += (f" (at token {r['first_differing_token']}: top-2 margin {r['dense_top2_margin']:.3g}, "
                         f"logits differ by {r['max_logit_difference']:.3g})")
            lines.append(f"| {r['model']} | {sp} | {r['dense_tok_s']:.1f} | {r['sparse_tok_s']:.1f} | "
                         f"{r['speedup']:.2f}x | {same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="last.ckpt of a ProSparse run (ReLU weights)")
    p.add_argument("--threshold", type=float, default=0.0, help="FATReLU threshold the run ended with (0: ReLU)")
    p.add_argument("--cats", type=float, nargs="*", default=[], help="also CATS at these target sparsities, e.g. 0.5 0.7")
    p.add_argument("--teal", type=float, nargs="*", default=[], help="also TEAL at these target sparsities")
    p.add_argument("--calibration-tokens", type=int, default=8192, help="CATS/TEAL: training tokens to calibrate on")
    p.add_argument("--no-relu-swap", action="store_true")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(args.checkpoint, args.threshold, args.cats, args.steps, args.repeats, not args.no_relu_swap,
               args.calibration_tokens, args.teal, args.device, args.dtype)
    print(format_table(rows), flush=True)
    print(f"({args.steps} greedy tokens after a {rows[0]['prompt_tokens']}-token prompt, batch 1, KV cache, "
          f"{args.threads} thread(s), median of {args.repeats}; {time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
