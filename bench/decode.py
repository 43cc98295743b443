"""End-to-end decode speed of a converted model: tokens/s, dense vs sparse FFN, side by side.

    python bench/decode.py [--device cpu|cuda] [--models tinylm llama] [--sparsity 90] [--steps 32]

Two models, each decoded greedily with a KV cache (batch 1, one token per step, so every FFN
sees one row, the decoding case the kernels are for):

- ``tinylm``: actsparse's TinyLM (d 1024, 4 layers, gated ReLU FFN; the KV-cached step is written
  here from its modules: the model's own ``generate`` recomputes the context);
- ``llama``: a Hugging Face ``LlamaForCausalLM`` (same size, ``hidden_act="relu"``, ``DynamicCache``).

Both are randomly initialized; a ReLU on random weights zeroes about half of the neurons, not the
~90% of a ProSparse-trained model. So each site's activation is swapped for FATReLU at the
threshold that leaves ``--sparsity`` percent of its pre-activations on a calibration prompt
below it (the dense model gets the same activation: both compute the same function, and the
generated tokens are checked equal). ``--sparsity 0`` keeps plain ReLU. Dense and sparse runs
alternate, medians are reported. On CUDA the steps run eagerly (no CUDA graphs: the KV cache
grows every step), so host overhead is part of the number.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SIZES = {"full": dict(d=1024, layers=4, heads=8, f=2816, vocab=4096), "quick": dict(d=64, layers=2, heads=2, f=176,
                                                                                   vocab=256)}


# -- TinyLM with a KV cache ---------------------------------------------------------------------------

def tinylm(size: dict):
    from actsparse.models import TinyLM

    return TinyLM(d_model=size["d"], n_layers=size["layers"], n_heads=size["heads"], activation="relu",
                  ffn_ratio=size["f"] / size["d"], max_seq_len=512)


@torch.no_grad()
def tinylm_step(model, token: torch.Tensor, cache: list, pos: int) -> torch.Tensor:
    """Logits for one new token [batch, 1] at position ``pos``; ``cache`` holds (k, v) per block."""
    from actsparse.models.llama import apply_rotary

    x = model.embed(token)
    b, t, d = x.shape
    cos, sin = model.rope_cos[pos : pos + t], model.rope_sin[pos : pos + t]
    for i, block in enumerate(model.blocks):
        attn = block.attn
        q, k, v = attn.qkv(block.attn_norm(x)).view(b, t, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if len(cache) > i:
            k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + attn.out(y.transpose(1, 2).reshape(b, t, d))
        x = x + block.ffn(block.ffn_norm(x))
    return model.lm_head(model.norm(x))


def tinylm_decode(model, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    cache: list = []
    logits = tinylm_step(model, prompt, cache, 0)
    tokens = [logits[:, -1].argmax(-1, keepdim=True)]
    _sync(prompt.device)
    t0 = time.perf_counter()
    for i in range(steps - 1):
        logits = tinylm_step(model, tokens[-1], cache, prompt.shape[1] + i)
        tokens.append(logits[:, -1].argmax(-1, keepdim=True))
    _sync(prompt.device)
    return torch.cat(tokens, 1), time.perf_counter() - t0


# -- Hugging Face LLaMA ---------------------------------------------------------------------------------

def hf_llama(size: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=size["d"], intermediate_size=size["f"], num_hidden_layers=size["layers"],
                      num_attention_heads=size["heads"], num_key_value_heads=size["heads"], vocab_size=size["vocab"],
                      hidden_act="relu", max_position_embeddings=1024, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def cache_keyword(model) -> str:
    """The forward's keyword for the KV cache: renamed (past_key_values -> cache) in recent transformers."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def hf_decode(model, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    from transformers import DynamicCache

    cache = DynamicCache()
    key = cache_keyword(model)
    out = model(input_ids=prompt, use_cache=True, **{key: cache})
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    _sync(prompt.device)
    t0 = time.perf_counter()
    for _ in range(steps - 1):  # the DynamicCache grows in place
        out = model(input_ids=tokens[-1], use_cache=True, **{key: cache})
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    _sync(prompt.device)
    return torch.cat(tokens, 1), time.perf_counter() - t0


# -- shared ---------------------------------------------------------------------------------------------

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def impose_sparsity(model, calib_forward, sparsity: float) -> float:
    """FATReLU at each FFN site, thresholded at the ``sparsity`` quantile of its gate
    pre-activations on a calibration forward; returns the measured zero fraction."""
    from actsparse.plugins.activations import FATReLU
    from actsparse.plugins.sites import find_sites

    sites = [s for s in find_sites(model) if s.kind in ("gated_ffn", "plain_ffn")]
    if sparsity > 0:
        pre = {}
        hooks = [s.inputs[0].register_forward_hook(lambda m, a, out, s=s: pre.__setitem__(s.name, out)) for s in sites]
        calib_forward()
        for h in hooks:
            h.remove()
        for s in sites:
            z = pre[s.name].float().flatten()
            z = z[torch.randperm(z.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 20].to(z.device)]
            s.set_activation(FATReLU(float(torch.quantile(z.cpu(), sparsity / 100.0))))
    zeros = []
    hooks = [s.register_hook(lambda site, t: zeros.append(float((t == 0).float().mean()))) for s in sites]
    calib_forward()
    for h in hooks:
        h.remove()
    return statistics.mean(zeros)


def time_interleaved(decode, dense, sparse, prompt: torch.Tensor, steps: int, repeats: int) -> tuple[dict, int]:
    """Tokens/s of each model per repeat, runs interleaved so machine load hits both alike, and
    how many leading tokens the last runs agree on (``steps``: the same tokens)."""
    runs, outputs = {"dense": [], "sparse": []}, {}
    for _ in range(repeats):
        for label, model in (("dense", dense), ("sparse", sparse)):
            tokens, seconds = decode(model, prompt, steps)
            runs[label].append((steps - 1) / seconds)
            outputs[label] = tokens
    differ = (outputs["dense"] != outputs["sparse"]).any(0).nonzero()
    return runs, int(differ[0]) if len(differ) else outputs["dense"].shape[1]


def bench_model(name: str, device: str, quick: bool, sparsity: float, steps: int, repeats: int) -> dict:
    from actsparse.plugins.sparse_ffn import convert_to_sparse

    torch.manual_seed(0)
    size = SIZES["quick" if quick else "full"]
    build, decode = (tinylm, tinylm_decode) if name == "tinylm" else (hf_llama, hf_decode)
    vocab = 256 if name == "tinylm" else size["vocab"]
    dense = build(size).eval().to(device)
    prompt = torch.randint(0, vocab, (1, 16), device=device)
    calib = torch.randint(0, vocab, (1, 128), device=device)
    measured = impose_sparsity(dense, lambda: dense(calib), sparsity)
    sparse = convert_to_sparse(dense, inplace=False)
    runs, agreeing = time_interleaved(decode, dense, sparse, prompt, steps, repeats)
    same_tokens = agreeing == steps
    dense_tps, sparse_tps = statistics.median(runs["dense"]), statistics.median(runs["sparse"])
    return {"model": name, "device": device, "d": size["d"], "f": size["f"], "layers": size["layers"],
            "params_m": round(sum(p.numel() for p in dense.parameters()) / 1e6, 1),
            "ffn_sparsity": round(measured, 3), "dense_tok_s": dense_tps, "sparse_tok_s": sparse_tps,
            "speedup": sparse_tps / dense_tps, "same_tokens": same_tokens,
            "steps": steps, "repeats": repeats, "threads": torch.get_num_threads()}


def run(device: str = "cpu", quick: bool = False, models=("tinylm", "llama"), sparsities=(90.0,), steps=None,
        repeats=None) -> list[dict]:
    steps = steps or (8 if quick else 32)
    repeats = repeats or (1 if quick else 5)
    rows = []
    for name in models:
        if name == "llama":
            try:
                import transformers  # noqa: F401
            except ImportError:
                rows.append({"model": name, "skipped": "transformers is not installed"})
                continue
        for sp in sparsities:
            rows.append(bench_model(name, device, quick, sp, steps, repeats))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | device | d × f × layers | params (M) | FFN sparsity | dense tok/s | sparse tok/s | speedup | "
             "same tokens |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['device']} | {r['d']} × {r['f']} × {r['layers']} | {r['params_m']} | "
                     f"{100 * r['ffn_sparsity']:.1f}% | {r['dense_tok_s']:.1f} | {r['sparse_tok_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {'yes' if r['same_tokens'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["tinylm", "llama"], choices=["tinylm", "llama"])
    p.add_argument("--sparsity", nargs="+", type=float, default=[90.0], help="imposed FFN sparsity, percent")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.quick, args.models, args.sparsity, args.steps, args.repeats)
    print(format_table(rows), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
