"""Data: a byte tokenizer, offline text corpora and the LM DataModule."""

from actsparse.data.corpus import CorpusError, build_stdlib_docs, stdlib_docs
from actsparse.data.digits import DigitsDataModule
from actsparse.data.loader import ResumableDataLoader
from actsparse.data.text import TextDataModule, TokenWindows, split_windows
from actsparse.data.tokenizer import ByteTokenizer

__all__ = [
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
