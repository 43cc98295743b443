"""The runnable examples in docstrings are tests too: every module of the installed ``actsparse``
package is collected here once (the folders map to subpackages, so pytest's own
``--doctest-modules`` would import them a second time under top-level names)."""

import doctest
import importlib
import pkgutil

import pytest

import actsparse
import actsparse.callbacks
import actsparse.metrics
import actsparse.plugins

# The mapped folders (callbacks/, metrics/, plugins/) are not under actsparse/: walk each.
ROOTS = (actsparse, actsparse.callbacks, actsparse.metrics, actsparse.plugins)


def _modules() -> list[str]:
    names = set()
    for root in ROOTS:
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            if not info.name.startswith("actsparse.conf"):
                names.add(info.name)
    return sorted(names)


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    found = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency (e.g. pykan) missing: its own tests skip it
            continue
        if any(t.examples for t in finder.find(module)):
            found.append(name)
    return found


MODULES = _with_examples()


def test_the_package_has_examples():
    for expected in ("actsparse.metrics.sparsity", "actsparse.metrics.functional.sparsity", "actsparse.plugins.recording"):
        assert expected in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
