"""Kernel of elastic_transform: displacement grid, reflected bilinear sampling and the uint8 cast in one pass.

``displace`` computes, for uint8 images and their blurred displacement fields, what
``elastic_transform``'s tensor program computes: the grid ``base + alpha d * 2 / n`` and
``F.grid_sample(x, grid, "bilinear", "reflection", align_corners=False)`` clamped to [0, 255], then
truncated to uint8 (``corrupt_batch``'s cast). Every float32 step is torch's: its CPU kernels
(AVX2 / AVX512 builds) fuse ``base + d * alpha`` (``torch.add``), the unnormalisation
``(g + 1) * n / 2 - 0.5`` and each further term of the bilinear sum ``nw v + ne v + sw v + se v``
into fused multiply-adds, which ``_fma`` issues explicitly (the kernel is compiled without
contraction, so every other step rounds on its own, as in torch).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import jit, to_uint8

__all__ = ["displace"]


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (LLVM's fma intrinsic), for float32 arguments."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        real = args[0].type
        fma = builder.module.declare_intrinsic("llvm.fma", [real], ir.FunctionType(real, [real] * 3))
        return builder.call(fma, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@jit
def _source(grid, n):
    """grid_sample's source coordinate of the normalised ``grid`` (float32) on an axis of ``n``
    pixels: unnormalised (align_corners=False), reflected about -0.5 and n - 0.5, clipped to [0, n - 1]."""
    low, span2 = np.float32(-0.5), np.float32(n) * np.float32(2)
    pixel = _fma(grid + np.float32(1), np.float32(n) / np.float32(2), np.float32(-0.5))
    distance = abs(pixel - low)
    extra = distance - np.trunc(distance / span2) * span2  # exact: an integer times 2 n
    reflected = min(extra, span2 - extra) + low
    return min(np.float32(n - 1), max(np.float32(0), reflected))


@jit
def displace(x, fields, alpha, base_y, base_x, out):
    """Sample ``x`` (B, C, H, W) uint8 at its pixels displaced by ``fields`` (H, W, 2 B) float32 (the
    B x-fields, then the B y-fields) times ``alpha`` (float32), into ``out`` (B, C, H, W) uint8.
    ``base_y`` (H,) and ``base_x`` (W,) are the pixel centres in grid_sample's [-1, 1] coordinates."""
    batch, channels, height, width = x.shape
    scale_y, scale_x = np.float32(2 / height), np.float32(2 / width)
    dst, field = out.reshape(-1), fields.reshape(-1)
    src = np.empty(x.size, np.float32)  # grey levels as float32 once: the gathers below then load floats
    levels = x.reshape(-1)
    for k in range(np.uint64(x.size)):
        src[k] = np.float32(levels[k])
    plane, fields_per_pixel, w = np.uint64(height * width), np.uint64(2 * batch), np.uint64(width)
    # one output row: the weights of the four corners, the north-west source pixel, and the steps to
    # its east and south neighbours (0 past the edge, where their weight is 0)
    weights = np.empty((4, width), np.float32)
    nw, ne, sw, se = weights[0], weights[1], weights[2], weights[3]
    steps = np.empty((3, width), np.int32)
    corner, east, south = steps[0], steps[1], steps[2]
    for i in range(np.uint64(height)):  # the images' fields of a row are adjacent: images inside
        row = i * w
        sy_base = base_y[i]
        for b in range(np.uint64(batch)):
            for j in range(w):
                f = (row + j) * fields_per_pixel + b
                sx = _source(_fma(field[f] * alpha, scale_x, base_x[j]), width)
                sy = _source(_fma(field[f + np.uint64(batch)] * alpha, scale_y, sy_base), height)
                west, north = np.floor(sx), np.floor(sy)
                to_w, to_n = sx - west, sy - north
                to_e, to_s = np.float32(1) - to_w, np.float32(1) - to_n
                nw[j], ne[j], sw[j], se[j] = to_s * to_e, to_s * to_w, to_n * to_e, to_n * to_w
                col, line = np.int32(west), np.int32(north)  # int32: converted in vectors
                corner[j] = line * np.int32(width) + col
                east[j] = np.int32(1) if col + np.int32(1) < np.int32(width) else np.int32(0)
                south[j] = np.int32(width) if line + np.int32(1) < np.int32(height) else np.int32(0)
            for c in range(np.uint64(channels)):
                source = (b * np.uint64(channels) + c) * plane
                target = source + row
                for j in range(w):
                    top = source + np.uint64(corner[j])
                    bottom, step = top + np.uint64(south[j]), np.uint64(east[j])
                    total = src[top] * nw[j]
                    total = _fma(src[top + step], ne[j], total)
                    total = _fma(src[bottom], sw[j], total)
                    total = _fma(src[bottom + step], se[j], total)
                    dst[target + j] = to_uint8(total)
