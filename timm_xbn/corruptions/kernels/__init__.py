"""CPU kernels of the corruptions for uint8 batches on the host, compiled with numba.

Where a corruption is a chain of elementwise passes or a loop of taps, the tensor program reads
and writes the whole batch once per pass; one compiled loop over the pixels does the chain in a
single pass that stays in the cache. Each kernel computes what its tensor program computes, in the
same float32 order (so the results are the same bits; ``tests/test_corruptions_kernels.py`` checks
every kernel against its tensor program, which stays the path of CUDA batches and of float input).

``jit`` compiles with an on-disk cache (the first call in a fresh environment compiles, ~1 s per
kernel; later processes load it). Inner loops index with unsigned integers: with signed indices
numba checks each for negative wraparound, which stops LLVM from vectorising the loop (motion blur
at 224 px: 5.4 ms per image with signed indices, 0.65 ms unsigned).
"""
from functools import partial

import numba

__all__ = ["jit"]

# nogil: a kernel called from a data-loader thread does not hold up the others; error_model
# "numpy": float division by zero gives inf / nan like torch (Python's model raises, and its
# checks also stop vectorisation)
jit = partial(numba.njit, cache=True, nogil=True, error_model="numpy")
