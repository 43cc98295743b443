"""Language-modelling data: a byte-token stream cut into fixed windows."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from actsparse.data.corpus import (
    DECODE_ERRORS,
    CorpusError,
    load_hf_dataset,
    read_text_file,
    resolve_text_file,
    stdlib_docs,
)
from actsparse.data.loader import EvalShardSampler, ResumableDataLoader
from actsparse.data.tokenizer import ByteTokenizer

# Windows are grouped in blocks of this many; every k-th block goes to validation, so the
# split is deterministic yet spread over the whole corpus (not just its last modules).
_SPLIT_BLOCK = 16


class TokenWindows(Dataset):
    """Non-overlapping windows of ``seq_len + 1`` tokens -> (input, target) shifted by one."""

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> None:
        self.tokens, self.starts, self.seq_len = tokens, starts, seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        chunk = self.tokens[s : s + self.seq_len + 1].long()
        return chunk[:-1], chunk[1:]


def split_windows(n_tokens: int, seq_len: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Start offsets of the train and validation windows (deterministic)."""
    n_windows = (n_tokens - 1) // seq_len
    starts = torch.arange(n_windows) * seq_len
    if val_fraction <= 0:
        return starts, starts[:0]
    period = max(2, round(1 / val_fraction))
    is_val = (torch.arange(n_windows) // _SPLIT_BLOCK) % period == period - 1
    return starts[~is_val], starts[is_val]


class TextDataModule(L.LightningDataModule):
    """Byte-level LM data from one of three sources.

    - default: the standard-library docstring corpus (offline, built and cached on first use);
    - ``text_file``: any UTF-8 text file (anything else is refused, naming the first bad byte,
      unless ``errors="replace"`` or ``"ignore"`` says how to decode it);
    - ``hf_dataset``: a Hugging Face dataset's text column (needs the network the first time).
    """

    def __init__(
        self,
        text_file: str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        hf_split: str = "train",
        hf_text_field: str = "text",
        seq_len: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        max_chars: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        errors: str = "strict",
    ) -> None:
        super().__init__()
        if text_file and hf_dataset:
            raise CorpusError("Set data.text_file or data.hf_dataset, not both.")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len}, {batch_size}.")
        if errors not in DECODE_ERRORS:
            raise CorpusError(f"data.errors={errors!r} is not one of {', '.join(DECODE_ERRORS)}.")
        if text_file:
            resolve_text_file(text_file)  # fail before any run directory fills up
        self.save_hyperparameters()
        self.tokenizer = ByteTokenizer()
        self.tokens: torch.Tensor | None = None
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    @property
    def source_name(self) -> str:
        hp = self.hparams
        if hp.text_file:
            return f"file:{hp.text_file}"
        if hp.hf_dataset:
            return f"hf:{hp.hf_dataset}"
        return "stdlib_docs"

    def load_text(self) -> str:
        hp = self.hparams
        if hp.text_file:
            text = read_text_file(hp.text_file, errors=hp.get("errors", "strict"))
        elif hp.hf_dataset:
            text = load_hf_dataset(hp.hf_dataset, hp.hf_config, hp.hf_split, hp.hf_text_field)
        else:
            text = stdlib_docs(hp.cache_dir)
        if hp.max_chars:
            text = text[: hp.max_chars]
        if not text.strip():
            raise CorpusError(f"The corpus ({self.source_name}) is empty: there is nothing to train on.")
        return text

    def prepare_data(self) -> None:
        # Rank 0 builds caches (stdlib corpus, HF download) before the other ranks read them.
        if not self.hparams.text_file:
            self.load_text()

    def setup(self, stage: str | None = None) -> None:
        if self.tokens is not None:
            return
        hp = self.hparams
        self.tokens = self.tokenizer.encode(self.load_text())
        train_starts, val_starts = split_windows(len(self.tokens), hp.seq_len, hp.val_fraction)
        need_val = hp.val_fraction > 0
        if len(train_starts) < hp.batch_size or (need_val and len(val_starts) == 0):
            raise CorpusError(
                f"The corpus ({self.source_name}, {len(self.tokens)} tokens) is too small for "
                f"data.seq_len={hp.seq_len} and data.batch_size={hp.batch_size}: it gives "
                f"{len(train_starts)} train and {len(val_starts)} validation windows. Use more text "
                "or smaller windows."
            )
        self.train_set = TokenWindows(self.tokens, train_starts, hp.seq_len)
        self.val_set = TokenWindows(self.tokens, val_starts, hp.seq_len)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            seed=self.hparams.seed,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.hparams.batch_size,
            sampler=EvalShardSampler(self.val_set),
            num_workers=self.hparams.num_workers,
        )
