"""One-pass kernels of snow on uint8 batches: the flakes layer's threshold, line blur and rounding
in one kernel, and the blend of the image with its lifted grey and the flakes in another (the
tensor program: ~12 passes over the batch or the layer, and up to 25 taps each reading and writing
the layer). The float32 operations are the tensor program's, in its order, unfused (only the
line's sums fuse, like torch's, see ``lines``); the final clamp and truncation to uint8 are
``corrupt_batch``'s cast.
"""
import numpy as np

from . import jit
from .lines import pad_rows, sum_taps

__all__ = ["flakes_layer", "blend_flakes"]

_ZERO, _ONE, _MAX = np.float32(0.0), np.float32(1.0), np.float32(255.0)


@jit
def flakes_layer(flakes: np.ndarray, threshold: np.float32, weights: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                 counts: np.ndarray, out: np.ndarray) -> None:
    """The flakes in grey levels, float32 ``out`` (B, h, w): the zoomed normals ``flakes``
    (B, H, W), H >= h, W >= w, set to 0 below ``threshold`` and clipped to [0, 1], blurred along
    image b's line (taps 0..counts[b]-1), the first h rows and w columns times 255, rounded half
    to even."""
    batch, h, w = flakes.shape
    taps = weights.size
    padded = np.empty((h, w + 2 * taps), np.float32)
    acc = np.empty(out.shape[2], np.float32)
    for b in range(batch):
        plane = flakes[b]
        pad_rows(plane, padded)
        for y in range(h):
            row = padded[y]
            for i in range(np.uint64(row.size)):
                v = row[i]
                row[i] = min(max(_ZERO if v < threshold else v, _ZERO), _ONE)
        for y in range(out.shape[1]):
            sum_taps(acc, padded, taps, y, dy[b], dx[b], weights, counts[b])
            row = out[b, y]
            for i in range(np.uint64(acc.size)):
                row[i] = np.rint(acc[i] * _MAX)


@jit
def blend_flakes(x: np.ndarray, flakes: np.ndarray, blend: np.float32, keep: np.float32, out: np.ndarray) -> None:
    """snow's blend on uint8 ``x`` (B, 3, h, w) into uint8 ``out``: ``x * blend + max(x, grey * 1.5
    + 127.5) * keep + (flakes + flakes turned by half a turn)``, clamped to [0, 255] and truncated;
    ``flakes`` (B, h, w) from ``flakes_layer``."""
    batch, channels, h, w = x.shape
    red, green, blue = np.float32(0.299), np.float32(0.587), np.float32(0.114)
    scale, lift = np.float32(1.5), np.float32(127.5)
    for b in range(batch):
        for y in range(h):
            reds, greens, blues = x[b, 0, y], x[b, 1, y], x[b, 2, y]
            layer, turned = flakes[b, y], flakes[b, h - 1 - y]
            for i in range(np.uint64(w)):
                r, g, u = np.float32(reds[i]), np.float32(greens[i]), np.float32(blues[i])
                grey = (red * r + green * g + blue * u) * scale + lift
                snowfall = layer[i] + turned[np.uint64(w - 1) - i]
                for c, value in ((0, r), (1, g), (2, u)):
                    v = value * blend + max(value, grey) * keep + snowfall
                    out[b, c, y, i] = np.uint8(min(max(v, _ZERO), _MAX))
