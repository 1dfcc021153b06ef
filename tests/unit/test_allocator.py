"""The malloc tuning keeps freed blocks for reuse: re-allocating the same sizes no longer faults."""

from __future__ import annotations

import ctypes
import resource
import sys

import pytest
import torch

from openrft.engine.kernels.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    if not keep_freed_memory():
        pytest.skip("not glibc, or malloc tuned by the environment")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 24 << 20  # two live 24 MiB blocks: untuned glibc maps both afresh every round (12k faults)

    def round_faults() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a, b = libc.malloc(size), libc.malloc(size)
        libc.memset(a, 1, size)
        libc.memset(b, 1, size)
        libc.free(a)
        libc.free(b)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    round_faults()  # the first round touches new pages either way
    pages = 2 * size // 4096
    assert max(round_faults() for _ in range(3)) < pages // 10


def test_huge_page_buffer_is_aligned_sized_and_usable() -> None:
    from openrft.engine.kernels.allocator import HUGE_PAGE, huge_page_buffer

    buf = huge_page_buffer(3 * HUGE_PAGE + 100)
    assert buf.dtype == torch.uint8 and buf.numel() == 3 * HUGE_PAGE + 100
    assert buf.data_ptr() % HUGE_PAGE == 0  # huge pages can back it from the first byte
    buf.fill_(7)
    assert int(buf[-1]) == 7 and int(buf.sum()) == 7 * buf.numel()
    assert huge_page_buffer(0).numel() == 0
