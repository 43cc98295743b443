"""Data: a byte tokenizer, offline text corpora and the LM DataModule, digits; and the data of
each method family (function fitting, permuted digits, sphere data, sentences, protein graphs),
loaded on first use."""

from actsparse.runtime import lazy_exports
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


__getattr__ = lazy_exports(__name__, _LAZY)


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
