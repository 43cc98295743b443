"""Build and load the compiled kernels (``csrc/``) on first use, or say why not.

The C++ (and, where CUDA is available, CUDA) sources are compiled with
``torch.utils.cpp_extension.load`` (ninja) into a cache directory keyed by the torch version,
the CUDA version, a hash of the sources and build flags, and the CPU's instruction sets (the CPU
code is built with ``-march=native``, so a cache shared between machines must not mix them).
Later processes load the cached library in well under a second.

The builds live under :func:`build_root`: ``ACTSPARSE_EXT_DIR`` when set, else ``ext/`` in the
actsparse cache (``ACTSPARSE_CACHE_DIR``, default ``~/.cache/actsparse``, see
:func:`actsparse.runtime.cache_dir`). One directory per :func:`build_key`, so a changed source,
flag or torch rebuilds while an unchanged tree loads the cached library (the test suite points
``ACTSPARSE_EXT_DIR`` at a directory that outlives its per-session cache); ``ACTSPARSE_NO_EXT=1`` skips the extension entirely. Without a
C++ compiler (or when the build fails) a single warning is emitted and callers fall back to the
pure PyTorch reference path; without a CUDA toolkit the extension is built for CPU only and CUDA
tensors take the reference path, with one warning of their own (:func:`warn_no_cuda_kernels`).
However the ops got registered (fresh build, cached build, a library loaded by someone else),
:func:`load` registers their fake (shape) implementations, so they trace under ``torch.compile``.

Example:
    >>> from actsparse import ext
    >>> status = ext.load()          # builds on the first call, then cached
    >>> isinstance(status.available, bool) and isinstance(status.reason, str)
    True
"""

from __future__ import annotations

import hashlib
import os
import importlib.resources
import platform
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actsparse.runtime import cache_dir

# The sources ship as package data (csrc/ in the repository, actsparse/csrc/ when installed).
# Resolved through symlinks (bench/gpu_check.py's shim), so ninja sees the same source paths
# whichever way the package was imported and does not rebuild a cached tree.
CSRC = Path(os.path.realpath(str(importlib.resources.files("actsparse.csrc"))))
CPU_SOURCES = ("ops.cpp", "sparse_ffn_cpu.cpp", "teal_ffn_cpu.cpp")
CUDA_SOURCES = ("sparse_ffn_cuda.cu", "sparse_ffn_persistent.cu", "sparse_ffn_tensor_core.cu")
HEADERS = ("sparse_ffn.h", "sparse_ffn_cpu_common.h", "sparse_ffn_cuda_common.h")
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
# Built for the visible GPU's architecture (TORCH_CUDA_ARCH_LIST overrides, as usual).
# bench/sparse_ffn_nvcc_check.py compiles with the same flags for sm_90 on machines without a GPU.
CUDA_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]


@dataclass
class ExtStatus:
    """What :func:`load` managed: ``available`` (ops registered), ``cuda`` (CUDA kernels built),
    ``reason`` (why not, or where the library lives), ``library`` (path of the .so)."""

    available: bool
    cuda: bool = False
    reason: str = ""
    library: str | None = None
    devices: set[str] = field(default_factory=set)


_lock = threading.Lock()
_status: ExtStatus | None = None


def _cpu_fingerprint() -> str:
    # -march=native code must not be loaded on a CPU with fewer instruction sets.
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + hashlib.sha1(flags.encode()).hexdigest()[:8]


def build_key(sources: list[Path], with_cuda: bool, flags: tuple | None = None) -> str:
    """The name of the build directory for these sources: torch, CUDA and Python versions, the
    CPU's instruction sets (``-march=native``) and a hash of every source and header's name and
    bytes plus the compiler flags and ``TORCH_CUDA_ARCH_LIST``. Equal keys share one build.

    Example:
        >>> srcs = [CSRC / s for s in CPU_SOURCES]
        >>> build_key(srcs, False) == build_key(srcs, False) != build_key(srcs, False, flags=("-O0",))
        True
    """
    digest = hashlib.sha1()
    for path in [*sources, *(CSRC / h for h in HEADERS if CSRC / h not in sources)]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    if flags is None:
        flags = (CFLAGS, LDFLAGS, CUDA_FLAGS)
    digest.update(repr((flags, os.environ.get("TORCH_CUDA_ARCH_LIST"))).encode())
    cuda_tag = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    name = (f"torch{torch.__version__}-{cuda_tag}-py{sys.version_info[0]}{sys.version_info[1]}-"
            f"{_cpu_fingerprint()}-{digest.hexdigest()[:12]}")
    return name.replace("+", "_")


def build_root() -> Path:
    """Where builds are cached: ``$ACTSPARSE_EXT_DIR``, else ``<actsparse cache>/ext`` (created)."""
    override = os.environ.get("ACTSPARSE_EXT_DIR")
    if override:
        root = Path(override)
        root.mkdir(parents=True, exist_ok=True)
        return root
    return cache_dir(None, "ext")


def _build_dir(sources: list[Path], with_cuda: bool) -> Path:
    return build_root() / build_key(sources, with_cuda)


def _want_cuda() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return False, "CUDA device present but no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return True, ""


def _compile(with_cuda: bool, verbose: bool) -> str:
    from torch.utils.cpp_extension import is_ninja_available, load as cpp_load

    sources = [CSRC / s for s in CPU_SOURCES] + ([CSRC / s for s in CUDA_SOURCES] if with_cuda else [])
    if with_cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        # Only the visible GPU's architecture: a fat build for every arch takes minutes. Set
        # before the key, so a cache shared by two GPU models keeps one build per architecture.
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    build = _build_dir(sources, with_cuda)
    build.mkdir(parents=True, exist_ok=True)
    if not is_ninja_available() or os.environ.get("ACTSPARSE_BUILD_WITHOUT_NINJA", "") not in ("", "0"):
        return _compile_direct(sources, build, with_cuda, verbose)
    return cpp_load(
        name="actsparse_C",
        sources=[str(s) for s in sources],
        extra_cflags=CFLAGS + (["-DACTSPARSE_WITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=CUDA_FLAGS,
        extra_ldflags=LDFLAGS,
        extra_include_paths=[str(CSRC)],
        build_directory=str(build),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )


def _cudart_link_args(cuda_home: Path) -> list[str]:
    """How to link the CUDA runtime: the toolkit's libcudart.so, wherever this install keeps it
    (lib64, lib, targets/<arch>/lib), else the versioned one shipped with torch's wheels."""
    nvcc = Path(os.path.realpath(cuda_home / "bin" / "nvcc"))
    roots = [cuda_home, nvcc.parents[1], Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"))]
    for root in roots:
        for sub in ("lib64", "lib", f"targets/{platform.machine()}-linux/lib"):
            if (root / sub / "libcudart.so").exists():
                return [f"-L{root / sub}", "-lcudart"]
    for lib in sorted((Path(torch.__file__).parents[1] / "nvidia").glob("**/libcudart.so*")):
        return [str(lib)]
    return ["-lcudart"]  # the linker's default paths, or its error naming the library


def _compile_direct(sources: list[Path], build: Path, with_cuda: bool, verbose: bool) -> str:
    """Build without ninja (``cpp_extension.load`` requires it): one compiler call per source,
    in parallel, then one link, then ``torch.ops.load_library``. For machines where ninja is
    neither installed nor installable (no network)."""
    import inspect
    import subprocess

    from torch.utils import cpp_extension as ce

    library = build / "actsparse_C.so"
    if not library.exists():
        device_type = "cuda" if with_cuda else "cpu"
        try:
            includes = ce.include_paths(device_type=device_type)
            lib_dirs = ce.library_paths(device_type=device_type)
        except TypeError:  # torch < 2.6 spelled it cuda=True
            includes, lib_dirs = ce.include_paths(cuda=with_cuda), ce.library_paths(cuda=with_cuda)
        std = "-std=c++20" if "c++20" in inspect.getsource(ce) else "-std=c++17"
        abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
        defines = [abi, "-DTORCH_EXTENSION_NAME=actsparse_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
        inc = [f"-I{p}" for p in [str(CSRC), *includes]]
        cxx = os.environ.get("CXX", "c++")
        jobs, objects = [], []
        for src in sources:
            obj = build / (src.name + ".o")
            objects.append(obj)
            if src.suffix == ".cu":
                nvcc = str(Path(ce.CUDA_HOME) / "bin" / "nvcc")
                archs = [a.strip() for a in os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split() if a.strip()]
                gencode = [f"-gencode=arch=compute_{a.replace('.', '').replace('+PTX', '')},"
                           f"code=sm_{a.replace('.', '').replace('+PTX', '')}" for a in archs]
                cmd = [nvcc, "-c", str(src), "-o", str(obj), *inc, *defines, std, "--expt-relaxed-constexpr",
                       "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                       "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                       "-Xcompiler", "-fPIC", *gencode, *CUDA_FLAGS]
            else:
                cmd = [cxx, "-c", str(src), "-o", str(obj), *inc, *defines, std, "-fPIC", *CFLAGS,
                       *(["-DACTSPARSE_WITH_CUDA"] if with_cuda else [])]
            if verbose:
                print(" ".join(cmd), flush=True)
            jobs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        for cmd, job in jobs:
            output = job.communicate()[0]
            if job.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{output[-4000:]}")
        libs = ["-lc10", "-ltorch", "-ltorch_cpu"]
        if with_cuda:
            libs += ["-lc10_cuda", "-ltorch_cuda", *_cudart_link_args(Path(ce.CUDA_HOME))]
        tmp = build / f"actsparse_C.{os.getpid()}.so"  # atomic: other processes may be loading
        link = [cxx, "-shared", *map(str, objects), "-o", str(tmp), *[f"-L{d}" for d in lib_dirs], *libs,
                *[f"-Wl,-rpath,{d}" for d in lib_dirs], *LDFLAGS]
        proc = subprocess.run(link, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"linking failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        os.replace(tmp, library)
    torch.ops.load_library(str(library))
    return str(library)


def load(verbose: bool = False) -> ExtStatus:
    """Build (first call) and load the kernels; never raises for a missing toolchain.

    Returns an :class:`ExtStatus`; when the extension is unavailable, ``reason`` says why and a
    one-time warning has been emitted (except for ``ACTSPARSE_NO_EXT=1``, which is deliberate).
    """
    global _status
    with _lock:
        if _status is not None:
            return _status
        _status = _load(verbose)
        return _status


def _load(verbose: bool) -> ExtStatus:
    if os.environ.get("ACTSPARSE_NO_EXT", "") not in ("", "0"):
        return ExtStatus(False, reason="ACTSPARSE_NO_EXT is set: using the PyTorch reference path")
    if _has_kernel("CPU"):  # registered by an earlier load (or an installed build)
        cuda = _has_kernel("CUDA")
        _register_fakes()
        return ExtStatus(True, cuda=cuda, reason="already loaded", devices={"cpu", "cuda"} if cuda else {"cpu"})
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return _unavailable("no C++ compiler found (install g++ or set CXX)")
    with_cuda, why_no_cuda = _want_cuda()
    try:
        library = _compile(with_cuda, verbose)
    except Exception as exc:  # a failed build must not take the model down with it
        if not with_cuda:
            return _unavailable(f"building the C++ extension failed: {exc}")
        warnings.warn(f"actsparse: building the CUDA kernels failed ({exc}); building CPU kernels only.", stacklevel=3)
        why_no_cuda = f"CUDA build failed: {exc}"
        with_cuda = False
        try:
            library = _compile(False, verbose)
        except Exception as exc2:
            return _unavailable(f"building the C++ extension failed: {exc2}")
    _register_fakes()
    devices = {"cpu", "cuda"} if with_cuda else {"cpu"}
    reason = f"loaded {library}" + ("" if with_cuda else f" (CPU only: {why_no_cuda})")
    return ExtStatus(True, cuda=with_cuda, reason=reason, library=str(library), devices=devices)


def _has_kernel(dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("actsparse::sparse_ffn", dispatch_key)
    except RuntimeError:  # the op is not defined at all
        return False


def _unavailable(reason: str) -> ExtStatus:
    warnings.warn(
        f"actsparse: compiled sparse-FFN kernels unavailable ({reason}); using the pure PyTorch "
        "reference path, which is correct but not fast. Set ACTSPARSE_NO_EXT=1 to silence this.",
        stacklevel=4,
    )
    return ExtStatus(False, reason=reason)


_fakes_registered = False


def _register_fakes() -> None:
    """Shape functions so the ops trace under torch.compile / FakeTensor (no kernel runs).

    Called on every path that finds the ops registered; registering twice is an error in
    torch.library, so the first registration in this process wins.
    """
    global _fakes_registered
    if _fakes_registered or _has_fake("actsparse::sparse_ffn"):
        _fakes_registered = True
        return
    _fakes_registered = True

    def out_like(x, w_out_t):
        return x.new_empty((x.shape[0], w_out_t.shape[1]))

    @torch.library.register_fake("actsparse::sparse_gated_ffn")
    def _(x, w_gate, w_up, w_down_t, threshold=0.0, b_gate=None, b_up=None, b_down=None, dense_above=1.0, kernel=0,
          activation=0):
        torch._check(x.dim() == 2 and w_gate.shape[1] == x.shape[1] and w_up.shape == w_gate.shape)
        torch._check(w_down_t.shape[0] == w_gate.shape[0])
        return out_like(x, w_down_t)

    @torch.library.register_fake("actsparse::sparse_ffn")
    def _(x, w_fc, w_proj_t, threshold=0.0, b_fc=None, b_proj=None, dense_above=1.0, kernel=0, activation=0):
        torch._check(x.dim() == 2 and w_fc.shape[1] == x.shape[1] and w_proj_t.shape[0] == w_fc.shape[0])
        return out_like(x, w_proj_t)

    @torch.library.register_fake("actsparse::teal_ffn")
    def _(x, w_in_t, w_up_t, w_out_t, input_threshold, down_threshold, b_in=None, b_up=None, b_out=None,
          activation=0, dense_above=1.0):
        torch._check(x.dim() == 2 and w_in_t.shape[0] == x.shape[1] and w_out_t.shape[0] == w_in_t.shape[1])
        torch._check(w_up_t is None or w_up_t.shape == w_in_t.shape)
        return out_like(x, w_out_t)


def _has_fake(qualname: str) -> bool:
    try:
        from torch._library.simple_registry import singleton

        return singleton.find(qualname).fake_impl.kernel is not None
    except Exception:  # private API moved: registering again raises, which the caller sees
        return False


def has_fake_kernels() -> bool:
    """Whether every op has a fake (shape) implementation registered in this process."""
    return all(_has_fake(f"actsparse::{op}") for op in ("sparse_ffn", "sparse_gated_ffn", "teal_ffn"))


_warned_no_cuda = False


def warn_no_cuda_kernels() -> None:
    """One warning per process: a CUDA tensor met the sparse FFN but no CUDA kernel serves it.

    The pure PyTorch reference path then runs: correct, but slower than the dense FFN on a GPU
    (it gathers rows and reads the union size back to the host).
    """
    global _warned_no_cuda
    if _warned_no_cuda or os.environ.get("ACTSPARSE_NO_EXT", "") not in ("", "0"):
        return
    _warned_no_cuda = True
    warnings.warn(
        f"actsparse: no compiled CUDA kernels ({load().reason}); CUDA tensors take the pure PyTorch "
        "reference path, which is slower than dense on a GPU. Install a CUDA toolkit matching torch "
        f"(torch {torch.__version__} is built for CUDA {torch.version.cuda}; set CUDA_HOME) and ninja, then "
        "restart; set ACTSPARSE_NO_EXT=1 to silence this.",
        stacklevel=4,
    )


# What the kernels are compiled for (csrc/sparse_ffn_cpu.cpp, csrc/sparse_ffn_cuda.cu check the same).
KERNEL_DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.float16, torch.bfloat16)}


def supports(device: torch.device | str, dtype: torch.dtype | None = None) -> bool:
    """Whether compiled kernels serve tensors on ``device`` (of ``dtype``, when given); builds on
    first call."""
    status = load()
    kind = torch.device(device).type
    if dtype is not None and dtype not in KERNEL_DTYPES.get(kind, ()):
        return False
    return status.available and kind in status.devices


def reset_for_tests() -> None:
    """Forget the cached status (tests toggle ``ACTSPARSE_NO_EXT``); a loaded library stays loaded."""
    global _status, _warned_no_cuda
    _warned_no_cuda = False
    with _lock:
        if _status is not None and _status.available:
            return
        _status = None
