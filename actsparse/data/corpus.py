"""Text sources for language modelling, all returning one string.

The default corpus is the docstrings of the installed Python standard library: real English
technical prose that every machine with Python has, so nothing is downloaded and nothing is
copied into the repository. It is built deterministically (sorted files, source order) and
cached under ``$ACTSPARSE_CACHE_DIR`` (default ``~/.cache/actsparse``).
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import warnings
from pathlib import Path

from actsparse.runtime import cache_dir  # noqa: F401  (re-exported: studies import it from here)

# Test suites and vendored third-party code are not the standard library's own prose.
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class CorpusError(ValueError):
    """A text source that cannot be used (missing, empty, unreachable)."""


def _stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        files.append((rel.as_posix(), path))
    files.sort()
    return files


def _docstrings(source: bytes) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        tree = ast.parse(source)
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        for child in ast.iter_child_nodes(node):  # source order
            visit(child)

    visit(tree)
    return found


def build_stdlib_docs() -> str:
    """All docstrings of the installed standard library, modules in sorted order."""
    parts = []
    for _, path in _stdlib_files():
        try:
            parts.extend(_docstrings(path.read_bytes()))
        except (SyntaxError, ValueError, OSError):
            continue  # a few files are deliberately invalid or unreadable
    return "\n\n".join(parts) + "\n"


def stdlib_docs(cache: str | os.PathLike | None = None) -> str:
    """The default corpus, built once per Python installation and read from the cache after."""
    files = _stdlib_files()
    fingerprint = hashlib.sha256()
    fingerprint.update(sys.version.encode())
    for rel, path in files:
        fingerprint.update(f"{rel}:{path.stat().st_size}\n".encode())
    target = cache_dir(cache) / f"stdlib_docs-{fingerprint.hexdigest()[:16]}.txt"
    if target.exists():
        return target.read_text(encoding="utf-8")
    text = build_stdlib_docs()
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)  # atomic: concurrent runs never read a half-written cache
    return text


DECODE_ERRORS = ("strict", "replace", "ignore")


def resolve_text_file(path: str | os.PathLike) -> Path:
    file = Path(path).expanduser()
    if file.is_dir():
        raise CorpusError(
            f"data.text_file={str(file)!r} is a directory. Pass one UTF-8 text file (concatenate several "
            "into one), or drop data.text_file to use the default corpus."
        )
    if not file.is_file():
        raise CorpusError(
            f"Text file not found: {str(file)!r} (from data.text_file). "
            "Pass an existing UTF-8 text file, or drop data.text_file to use the default corpus."
        )
    return file


def read_text_file(path: str | os.PathLike, errors: str = "strict") -> str:
    """The file's text. ``errors="strict"`` (the default) refuses anything that is not UTF-8 text,
    naming the first bad byte; ``"replace"`` (U+FFFD for each bad byte) or ``"ignore"`` accept it."""
    if errors not in DECODE_ERRORS:
        raise CorpusError(f"data.errors={errors!r} is not one of {', '.join(DECODE_ERRORS)}.")
    file = resolve_text_file(path)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise CorpusError(f"Cannot read data.text_file={str(file)!r}: {err.strerror or err}.") from None
    if errors != "strict":
        return data.decode("utf-8", errors=errors)
    accept = "or accept it as is with data.errors=replace (bad bytes become U+FFFD) or data.errors=ignore."
    nul = data.find(b"\0")  # valid UTF-8, but no text holds NUL bytes
    try:
        text = data.decode("utf-8")
        bad_utf8 = None
    except UnicodeDecodeError as err:
        text, bad_utf8, reason = "", err.start, err.reason
    if bad_utf8 is None and nul < 0:
        return text
    kind = _looks_like(data)
    fix = "Pass a UTF-8 text file, " if kind or (nul >= 0 and (bad_utf8 is None or nul < bad_utf8)) else \
        "Convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8), "
    if nul >= 0 and (bad_utf8 is None or nul < bad_utf8):
        where = f"the first bad byte is 0x00 (NUL) at byte offset {nul}"
    else:
        where = f"the first bad byte is 0x{data[bad_utf8]:02x} at byte offset {bad_utf8} ({reason})"
    raise CorpusError(f"data.text_file={str(file)!r} is not UTF-8 text: {where}{kind}. {fix}{accept}")


def _looks_like(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "; it starts with a UTF-16 byte-order mark (iconv -f utf-16 -t utf-8 converts it)"
    if data.startswith((b"\x7fELF", b"MZ", b"PK\x03\x04", b"\x1f\x8b", b"\x89PNG", b"%PDF")):
        return "; it looks like a binary file (an executable, archive, image or PDF)"
    return ""


def load_hf_dataset(name: str, config: str | None = None, split: str = "train", text_field: str = "text") -> str:
    """Concatenate the ``text_field`` column of a Hugging Face dataset split."""
    try:
        import datasets
    except ImportError as err:
        raise CorpusError(
            f"data.hf_dataset={name!r} needs the `datasets` package: pip install 'actsparse[hf]'."
        ) from err
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the Hub raises many types: offline, missing, gated...
        raise CorpusError(
            f"Could not load Hugging Face dataset {name!r} (config={config!r}, split={split!r}): {err}. "
            "The first use needs the network (later runs read the local cache); offline, use "
            "data.text_file=PATH or the default corpus."
        ) from err
    if text_field not in ds.column_names:
        raise CorpusError(
            f"Dataset {name!r} has no column {text_field!r}; its columns are {ds.column_names}. "
            "Set data.hf_text_field."
        )
    return "\n\n".join(str(t) for t in ds[text_field])
