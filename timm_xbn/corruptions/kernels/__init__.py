"""CPU kernels of the corruptions for uint8 batches on the host, compiled with numba.

Where a corruption is a chain of elementwise passes or a loop of taps, the tensor program reads
and writes the whole batch once per pass; one compiled loop over the pixels does the chain in a
single pass that stays in the cache. Each kernel computes what its tensor program computes, in the
same float32 order (so the results are the same bits; ``tests/test_corruptions_kernels_*.py`` check
every kernel against its tensor program, which stays the path of CUDA batches and of float input).

Where torch's float32 steps are fused multiply-adds (``add_(..., alpha=)``, grid_sample's
sums, the bilinear zoom: its AVX2 / AVX-512 kernels use fmadd), the kernels fuse the same products
(``fastmath={"contract"}`` or an explicit fma); ``TORCH_FUSES`` says whether torch does here (its
default, non-vectorised build multiplies, then adds): without it those kernels stay off.

``jit`` compiles with an on-disk cache (the first call in a fresh environment compiles, ~1 s per
kernel; later processes load it). numba keys each kernel's cache on its own file only: after an
edit of this module (``jit``'s options, ``to_uint8``, inlined into the others) delete
``kernels/__pycache__``, or the other modules' kernels load their stale builds. Inner loops index with unsigned integers: with signed indices
numba checks each for negative wraparound, which stops LLVM from vectorising the loop (motion blur
at 224 px: 5.4 ms per image with signed indices, 0.65 ms unsigned).
"""
from functools import partial

import numba
import numpy as np
import torch

__all__ = ["jit", "TORCH_FUSES", "to_uint8"]

TORCH_FUSES = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")

# nogil: a kernel called from a data-loader thread does not hold up the others; error_model
# "numpy": float division by zero gives inf / nan like torch (Python's model raises, and its
# checks also stop vectorisation)
jit = partial(numba.njit, cache=True, nogil=True, error_model="numpy")


@jit(inline="always")
def to_uint8(value: float) -> np.uint8:
    """A kernel's result value: clamped to [0, 255] (torch's clamp: max, then min) and truncated
    (``corrupt_batch``'s cast, like the reference's ``np.uint8``)."""
    return np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))
