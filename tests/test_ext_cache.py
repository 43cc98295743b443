"""actsparse.ext's build cache (issue 23 item 6): one directory per key of sources, flags and torch,
reused by later processes (no rebuild), a new one when anything in the key changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actsparse import ext  # noqa: E402


def _copy_sources(tmp_path):
    for name in (*ext.CPU_SOURCES, *ext.CUDA_SOURCES, *ext.HEADERS):
        shutil.copy(ext.CSRC / name, tmp_path / name)
    return [tmp_path / name for name in (*ext.CPU_SOURCES, *ext.HEADERS)]


def test_key_changes_with_sources_flags_and_torch(tmp_path, monkeypatch):
    sources = _copy_sources(tmp_path)
    key = ext.build_key(sources, with_cuda=False)
    assert key == ext.build_key(sources, with_cuda=False), "the key must be a pure function of its inputs"
    assert key.startswith(f"torch{torch.__version__}".replace("+", "_")) and key.split("-")[1] == "cpu"

    cpu = sources[1]
    cpu.write_bytes(cpu.read_bytes() + b"\n// one more line\n")
    changed_source = ext.build_key(sources, with_cuda=False)
    header = sources[-1]
    header.write_bytes(header.read_bytes() + b"\n")
    changed_header = ext.build_key(sources, with_cuda=False)
    changed_flags = ext.build_key(sources, with_cuda=False, flags=(["-O2"], ext.LDFLAGS, ext.CUDA_FLAGS))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    changed_arch = ext.build_key(sources, with_cuda=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch, "__version__", "0.0.0-test")
    changed_torch = ext.build_key(sources, with_cuda=False)
    keys = [key, changed_source, changed_header, changed_flags, changed_arch, changed_torch]
    assert len(set(keys)) == len(keys), keys


def test_build_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSPARSE_EXT_DIR", str(tmp_path / "builds"))
    assert ext.build_root() == tmp_path / "builds" and (tmp_path / "builds").is_dir()
    monkeypatch.delenv("ACTSPARSE_EXT_DIR")
    monkeypatch.setenv("ACTSPARSE_CACHE_DIR", str(tmp_path / "cache"))
    assert ext.build_root() == tmp_path / "cache" / "ext"


def test_a_second_process_loads_the_cached_build_without_compiling():
    status = ext.load()
    if not status.available or status.library is None:
        pytest.skip(f"no library built by this process: {status.reason}")
    library = status.library
    before = os.stat(library).st_mtime_ns
    objects = {p: os.stat(p).st_mtime_ns for p in map(str, Path(library).parent.glob("*.o"))}
    code = ("from actsparse import ext; s = ext.load(); assert s.available, s; print(s.library)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ACTSPARSE_EXT_DIR": str(ext.build_root())})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].endswith(library.split("/")[-1])
    assert os.path.dirname(r.stdout.strip().splitlines()[-1]) == os.path.dirname(library), "another build directory"
    assert os.stat(library).st_mtime_ns == before, "the library was rebuilt"
    assert {p: os.stat(p).st_mtime_ns for p in objects} == objects, "objects were recompiled"
