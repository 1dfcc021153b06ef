"""OpenRFT's C++ CPU kernels (`cpu_ops.cpp`, `bf16_gemm.cpp`), the loader that builds them on
first use and says why when it cannot (`loader.py`), and the allocator setting that keeps freed
memory in the process (`allocator.py`)."""
