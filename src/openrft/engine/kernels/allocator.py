"""Memory policies of a run: keep freed memory in the process instead of handing it back to the
kernel (glibc only), and huge pages for large long-lived buffers (`huge_page_buffer`).

Why by hand: glibc's malloc returns every large freed block to the kernel (mmap'd blocks at
once, the heap top past a trim threshold), so the next step's tensors of the same size are
fresh pages and every 4 KiB page faults on first touch. A GRPO update here allocates and frees
the same few-MB activations thousands of times: ~180,000 page faults per B1 update, ~0.8 s of
a 6.2 s update on this VM (measured with `ru_minflt`; `bench/grpo_vs_trl.py`). Raising the
mmap threshold to glibc's maximum and the trim threshold out of reach makes those blocks come
back from the heap (0-11k faults per update). The cost is that the resident size stays at its
peak, which a training process reaches on its first step anyway.

A process that already tunes malloc (MALLOC_*_ or GLIBC_TUNABLES in its environment) is left
alone, as are non-glibc platforms; `OPENRFT_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

import torch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 << 20  # glibc's upper bound on 64-bit (HEAP_MAX_SIZE / 2); larger is refused
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; True when the process runs with the tuned allocator."""
    if "tuned" not in _state:
        _state["tuned"] = _tune()
    return _state["tuned"]


def _tune() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("OPENRFT_KEEP_FREED_MEMORY") == "0":
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return False  # the user tunes malloc themselves
    libc = _libc()
    try:
        gnu = libc.gnu_get_libc_version  # only glibc has it; musl's mallopt is a no-op
        mallopt = libc.mallopt
    except AttributeError:  # also no C library at all (None)
        return False
    del gnu
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


MADV_HUGEPAGE = 14
HUGE_PAGE = 2 << 20


def huge_page_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 CPU tensor of `nbytes`, 2 MiB-aligned and advised for transparent huge pages
    (Linux `madvise(MADV_HUGEPAGE)`; elsewhere, or when refused, plain memory).

    Why: LeanDecoder streams ~270 MB of packed weights per decode step; on 4 KiB pages that is
    65,000 TLB misses a step and the hardware prefetchers stop at every page boundary. On 2 MiB
    pages the same matmuls (a decode step's shapes at 16 rows, timed in one process against the
    same weights on small pages) take 12.0 instead of 14.0 ms here, and the B1 rollout's ~5% less.
    The pages are only advised, so the kernel falls back to small pages when it has no huge ones.
    """
    raw = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)  # untouched until written
    start = (-raw.data_ptr()) % HUGE_PAGE
    buf = raw[start : start + nbytes]  # the view keeps the whole allocation alive
    advised = nbytes - nbytes % HUGE_PAGE
    if advised and sys.platform.startswith("linux") and os.environ.get("OPENRFT_HUGE_PAGES") != "0":
        madvise = getattr(_libc(), "madvise", None)
        if madvise is not None:
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            madvise(ctypes.c_void_p(buf.data_ptr()), ctypes.c_size_t(advised), MADV_HUGEPAGE)
    return buf


def _libc() -> Any:
    """This process's C library through ctypes, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
