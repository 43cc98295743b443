"""Language-modelling windows tokenized with a pretrained model's own (Hugging Face) tokenizer.

The byte-level :class:`~actsparse.data.TextDataModule` feeds actsparse's tiny models; a pretrained
decoder such as SmolLM2 needs its own tokenizer. The text sources are the same: the standard
library's docstrings by default (offline, see :func:`~actsparse.data.corpus.stdlib_docs`) or a
user's UTF-8 text file; the split is the same too (:func:`~actsparse.data.text.split_windows`:
every k-th block of windows is held out, spread over the whole corpus). Batches are
``(inputs, targets)`` pairs shifted by one, the layout
:func:`~actsparse.evaluation.lm_loss.causal_lm_loss` reads; a Hugging Face causal LM takes
``inputs`` as its ``input_ids``. Windows are cut from one token stream, without BOS or padding.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader

from actsparse.data.corpus import DECODE_ERRORS, CorpusError, read_text_file, resolve_text_file, stdlib_docs
from actsparse.data.loader import EvalShardSampler, ResumableDataLoader
from actsparse.data.text import TokenWindows, split_windows

log = logging.getLogger(__name__)


def tokenize_stream(tokenizer, text: str) -> torch.Tensor:
    """All of ``text`` as one int64 token stream (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def spread(starts: torch.Tensor, max_tokens: int | None, seq_len: int) -> torch.Tensor:
    """At most ``ceil(max_tokens / seq_len)`` of ``starts``, evenly spaced over all of them, so a small
    evaluation set still samples the whole corpus rather than its first modules."""
    if max_tokens is None:
        return starts
    k = max(1, -(-int(max_tokens) // seq_len))
    if k >= len(starts):
        return starts
    return starts[torch.linspace(0, len(starts) - 1, k).round().long()]


class PretrainedTextDataModule(L.LightningDataModule):
    """Token windows of the default corpus (or ``text_file``) in a pretrained model's tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer, or the name of a model known to
            :func:`~actsparse.models.smollm2.load_pretrained` (its cached tokenizer is used).
        max_train_tokens / max_val_tokens: keep about this many tokens of each split (windows evenly
            spread over the split); None keeps all.
        max_chars: use only the first ``max_chars`` characters of the text (tests, quick runs).
    """

    def __init__(
        self,
        tokenizer="smollm2-135m",
        text_file: str | None = None,
        seq_len: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        max_train_tokens: int | None = None,
        max_val_tokens: int | None = None,
        max_chars: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        errors: str = "strict",
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1): held-out text is what perplexity is measured on; "
                             f"got {val_fraction}.")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len}, {batch_size}.")
        if errors not in DECODE_ERRORS:
            raise CorpusError(f"data.errors={errors!r} is not one of {', '.join(DECODE_ERRORS)}.")
        if text_file:
            resolve_text_file(text_file)  # fail before anything is loaded
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer_spec = tokenizer
        self._tokenizer = None if isinstance(tokenizer, str) else tokenizer
        self.tokens: torch.Tensor | None = None
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from actsparse.models.smollm2 import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_spec, cache_dir=self.hparams.cache_dir)
        return self._tokenizer

    @property
    def source_name(self) -> str:
        return f"file:{self.hparams.text_file}" if self.hparams.text_file else "stdlib_docs"

    def load_text(self) -> str:
        hp = self.hparams
        text = read_text_file(hp.text_file, errors=hp.errors) if hp.text_file else stdlib_docs(hp.cache_dir)
        if hp.max_chars:
            text = text[: hp.max_chars]
        if not text.strip():
            raise CorpusError(f"The corpus ({self.source_name}) is empty: there is nothing to evaluate on.")
        return text

    def setup(self, stage: str | None = None) -> None:
        if self.tokens is not None:
            return
        hp = self.hparams
        self.tokens = tokenize_stream(self.tokenizer, self.load_text())
        train, val = split_windows(len(self.tokens), hp.seq_len, hp.val_fraction)
        if len(train) == 0 or len(val) == 0:
            raise CorpusError(
                f"The corpus ({self.source_name}, {len(self.tokens)} tokens) is too small for data.seq_len="
                f"{hp.seq_len}: it gives {len(train)} train and {len(val)} held-out windows. Use more text or "
                "shorter windows."
            )
        train, val = spread(train, hp.max_train_tokens, hp.seq_len), spread(val, hp.max_val_tokens, hp.seq_len)
        self.train_set = TokenWindows(self.tokens, train, hp.seq_len)
        self.val_set = TokenWindows(self.tokens, val, hp.seq_len)
        log.info("%s: %d tokens; %d train and %d held-out windows of %d tokens", self.source_name,
                 len(self.tokens), len(train), len(val), hp.seq_len)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_set, batch_size=self.hparams.batch_size, seed=self.hparams.seed,
                                   num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, sampler=EvalShardSampler(self.val_set),
                          num_workers=self.hparams.num_workers)

    def calibration_batches(self, n_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """About ``n_tokens`` of *training* windows, evenly spread, in fixed order: the text that
        training-free thresholds (CATS, TEAL) are calibrated on, never the held-out windows."""
        self.setup()
        starts = spread(self.train_set.starts, n_tokens, self.hparams.seq_len)
        windows = TokenWindows(self.tokens, starts, self.hparams.seq_len)
        return list(DataLoader(windows, batch_size=self.hparams.batch_size, shuffle=False))
