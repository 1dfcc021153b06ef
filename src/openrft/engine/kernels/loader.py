"""OpenRFT's fused C++ CPU kernels (kernels/*.cpp), built on first use.

Users: LeanDecoder's one-token decode step and its bf16 matmuls (decoder.py; the matmul needs
AVX512-BF16 and is absent elsewhere), the chunked head's softmax statistics (logprobs.py) and
the training attention's masked softmax (ops/attention.py). They are compiled with torch's
cpp_extension (g++ and ninja, as DeepSpeed builds its CPU ops) the first time a
process asks for them (~15 s here) and cached in torch's extension directory, keyed by the
source, the compiler flags and this CPU's features. Where there is no compiler or the build
fails, `load()` returns None, says why once, and each user keeps its PyTorch path (the same
function, slower). `OPENRFT_CPU_KERNELS=0` turns them off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

KERNELS = Path(__file__).resolve().parent  # the C++ sources sit next to this loader
SOURCES = [KERNELS / "cpu_ops.cpp", KERNELS / "bf16_gemm.cpp"]
log = logging.getLogger(__name__)
_state: dict[str, Any] = {}


def load() -> Any | None:
    """torch.ops.openrft_cpu once built and loaded, else None (and the reason in `why_not()`)."""
    if "ops" not in _state:
        _state["ops"], _state["why"] = _build()
        if _state["ops"] is None:
            log.warning("CPU decode kernels unavailable (%s); decoding with PyTorch ops", _state["why"])
    return _state["ops"]


def why_not() -> str | None:
    """Why the kernels are not loaded (None when they are, or before `load()` was called)."""
    return _state.get("why")


def _cpu_tag() -> str:
    """Names the build after this CPU's vector capability and feature flags: the library is
    compiled with -march=native, so a cache shared with another CPU must not load it."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    digest = hashlib.sha1(flags.encode()).hexdigest()[:8]
    return f"{torch.backends.cpu.get_cpu_capability().lower()}_{digest}"


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; a venv used without activation has pip's ninja off PATH."""
    if shutil.which("ninja") is None:
        try:
            import ninja  # type: ignore[import-untyped]
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build() -> tuple[Any | None, str | None]:
    if os.environ.get("OPENRFT_CPU_KERNELS") == "0":
        return None, "OPENRFT_CPU_KERNELS=0"
    if hasattr(torch.ops, "openrft_cpu") and hasattr(torch.ops.openrft_cpu, "silu_mul"):
        return torch.ops.openrft_cpu, None  # already loaded in this process
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()

        name = f"openrft_cpu_ops_{_cpu_tag()}"
        built = Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"
        if not built.exists():
            print("openrft: building the CPU kernels (once, ~15 s) ...", file=sys.stderr, flush=True)
        cpp_extension.load(
            name=name,
            sources=[str(p) for p in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, no headers, a compile error: fall back
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return torch.ops.openrft_cpu, None
