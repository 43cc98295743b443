"""On-disk cache of processed residue graphs, keyed by the structure file's content.

The key is the SHA-256 of the file's bytes plus the processing settings (chain, radius, format
version), so an edited file or a new radius is processed again, and a renamed or copied file is
not. Entries are written atomically (a temporary file renamed into place) and only after a
successful parse: a file that fails leaves nothing behind. Default location:
``actsparse.runtime.cache_dir(None, "protein")`` (``$ACTSPARSE_CACHE_DIR/protein``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from actsparse.runtime import cache_dir

__all__ = ["GraphCache", "file_key"]

FORMAT_VERSION = 1


def file_key(path: str | Path, **settings: Any) -> str:
    """SHA-256 of the file's bytes and the settings (JSON, sorted keys)."""
    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(json.dumps({"v": FORMAT_VERSION, **settings}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _to_state(data: Data) -> dict[str, Any]:
    return {k: v for k, v in data.to_dict().items()}


class GraphCache:
    """``cache.get_or_build(path, build, **settings)``: the cached graph for this file content and
    settings, else ``build()``'s (stored for next time). ``hits``/``misses`` count lookups.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_geometric.data import Data
        >>> root = Path(tempfile.mkdtemp()); f = root / "x.pdb"; _ = f.write_text("ATOM")
        >>> cache = GraphCache(root / "cache")
        >>> g = cache.get_or_build(f, lambda: Data(x=torch.ones(2, 1)), radius=10.0)
        >>> g = cache.get_or_build(f, lambda: Data(x=torch.zeros(2, 1)), radius=10.0)
        >>> cache.hits, cache.misses, g.x.sum().item()
        (1, 1, 2.0)
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir(None, "protein")
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> Data | None:
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: rebuild rather than fail
            return None
        return Data.from_dict(state)

    def store(self, key: str, data: Data) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(_to_state(data), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get_or_build(self, path: str | Path, build: Callable[[], Data], **settings: Any) -> Data:
        key = file_key(path, **settings)
        cached = self.load(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        data = build()  # raises on a bad file, before anything is written
        self.store(key, data)
        return data

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("*/*.pt"))
