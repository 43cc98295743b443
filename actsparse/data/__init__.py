"""Data: a byte tokenizer, offline text corpora and the LM DataModule, digits; and the data of
each method family, each file named after its method: function fitting (``skan_functions``),
permuted digits (``dendrites_permuted_digits``), sphere data (``ntk_sphere``), sentences
(``minilm_sentences``), protein graphs (``protein_rpn``)."""

from actsparse.data.corpus import CorpusError, build_stdlib_docs, stdlib_docs
from actsparse.data.dendrites_permuted_digits import PermutedDigitsDataModule
from actsparse.data.digits import DigitsDataModule
from actsparse.data.loader import ResumableDataLoader
from actsparse.data.minilm_sentences import SentenceDataModule
from actsparse.data.ntk_sphere import PRESETS, DirichletSphere, SphereDataModule
from actsparse.data.protein_rpn import ProteinDataModule
from actsparse.data.skan_functions import FunctionDataModule
from actsparse.data.smollm2_text import PretrainedTextDataModule
from actsparse.data.text import TextDataModule, TokenWindows, split_windows
from actsparse.data.tokenizer import ByteTokenizer

__all__ = [
    "PretrainedTextDataModule",
    "PRESETS",
    "ByteTokenizer",
    "CorpusError",
    "DigitsDataModule",
    "DirichletSphere",
    "FunctionDataModule",
    "PermutedDigitsDataModule",
    "ProteinDataModule",
    "ResumableDataLoader",
    "SentenceDataModule",
    "SphereDataModule",
    "TextDataModule",
    "TokenWindows",
    "build_stdlib_docs",
    "split_windows",
    "stdlib_docs",
]
