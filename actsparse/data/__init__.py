"""Data: a byte tokenizer, offline text corpora and the LM DataModule, digits; and the data of
each method family (function fitting, permuted digits, sphere data, sentences, protein graphs),
loaded on first use."""

import importlib

from actsparse.data.corpus import CorpusError, build_stdlib_docs, stdlib_docs
from actsparse.data.digits import DigitsDataModule
from actsparse.data.loader import ResumableDataLoader
from actsparse.data.text import TextDataModule, TokenWindows, split_windows
from actsparse.data.tokenizer import ByteTokenizer

_LAZY = {
    "FunctionDataModule": "functions",
    "PermutedDigitsDataModule": "permuted_digits",
    "DirichletSphere": "sphere", "SphereDataModule": "sphere", "PRESETS": "sphere",
    "SentenceDataModule": "sentences",
    "ProteinDataModule": "protein",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"actsparse.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'actsparse.data' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "ByteTokenizer",
    "CorpusError",
    "DigitsDataModule",
    "ResumableDataLoader",
    "TextDataModule",
    "TokenWindows",
    "build_stdlib_docs",
    "split_windows",
    "stdlib_docs",
]
