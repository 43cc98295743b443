"""The runnable examples in docstrings are tests too."""

import doctest
import importlib

import pytest

MODULES = [
    "actsparse.plugins.activations",
    "actsparse.plugins.sites",
    "actsparse.plugins.recording",
    "actsparse.plugins.swap",
    "actsparse.models.llama",
    "actsparse.data.tokenizer",
    "actsparse.callbacks.monitors",
    "actsparse.callbacks.prosparse",
    "actsparse.callbacks.swap",
    "actsparse.callbacks.threshold",
    "actsparse.callbacks.sparsity",
    "actsparse.plugins.sparse_ffn",
    "actsparse.ext",
    "actsparse.bench",
    "actsparse.metrics.functional.cett",
    "actsparse.metrics.functional.ppl_sparsity",
    "actsparse.metrics.functional.lm_loss",
    "actsparse.metrics.functional.laws",
    "actsparse.metrics.cett",
    "actsparse.callbacks.evaluator",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
