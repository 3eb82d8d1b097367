"""Agreement of the torch corruptions with the reference package, as a table.

``python -m timm_xbn.corruptions.agreement [--images 8] [--size 96] [--top1-images 500]``

Three checks per corruption, over all five severities:

* replay: the torch program fed with the reference's own random draws (``NumpyDraws`` replays
  NumPy's stream in the reference's order), float64 compute, uint8 outputs compared pixel by
  pixel (glass blur has no replay: its reference scan is sequential, see ``torch_ops``);
* statistics: with torch's own random numbers (float32, the production path), the mean PSNR of
  the corrupted image against the clean one and the mean absolute pixel change, ours vs reference;
* top-1: a small CNN trained here on Fashion-MNIST (32 x 32, RGB), accuracy on the same test
  images corrupted by the reference and by the torch implementation.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .names import CORRUPTIONS, SEVERITIES
from .reference import corrupt_reference, image_seed, numpy_seed
from .torch_ops import Draws, corrupt_batch

__all__ = ["statistics_pass", "top1_agreement", "NumpyDraws", "REPLAY_TOLERANCE", "STAT_FLOOR_DB", "STAT_SIGMAS", "replay_agreement", "real_images",
           "statistical_agreement", "main"]

# replay: (minimum share of identical pixels, maximum |difference| in grey levels, maximum mean |difference|)
REPLAY_TOLERANCE: dict[str, tuple[float, int, float]] = {
    "gaussian_noise": (1.0, 0, 0.0), "shot_noise": (1.0, 0, 0.0), "impulse_noise": (1.0, 0, 0.0),
    "contrast": (1.0, 0, 0.0), "pixelate": (1.0, 0, 0.0), "jpeg_compression": (1.0, 0, 0.0),
    "defocus_blur": (0.999, 1, 0.01), "motion_blur": (0.999, 1, 0.01), "zoom_blur": (0.999, 1, 0.01),
    "snow": (0.999, 1, 0.01), "frost": (0.999, 1, 0.01), "fog": (0.999, 1, 0.01),
    "brightness": (0.99, 1, 0.01), "elastic_transform": (0.995, 1, 0.01),
}
# statistics: |mean paired PSNR difference| <= STAT_SIGMAS standard errors + STAT_FLOOR_DB
STAT_SIGMAS, STAT_FLOOR_DB = 3.0, 0.1


class NumpyDraws(Draws):
    """Replays the reference's random numbers: NumPy's legacy global stream (or a ``Generator``
    for the corruptions that take a seed), consumed in the reference's order and shapes."""

    def __init__(self, source, dtype: torch.dtype = torch.float64):
        super().__init__(None, torch.device("cpu"), dtype)
        self.source = source

    def _t(self, a) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype)

    def _random(self, shape):
        return self.source.random(shape) if isinstance(self.source, np.random.Generator) else self.source.random_sample(shape)

    def random(self, shape):
        return self._t(self._random(shape))

    def uniform(self, shape, low, high):
        return self._t(self.source.uniform(low, high, shape))

    def normal(self, shape, loc=0.0, scale=1.0):
        return self._t(self.source.normal(loc, scale, shape))

    def normal_window(self, shape, window, loc=0.0, scale=1.0):
        return self.normal(shape, loc, scale)[(..., *window)]

    def poisson(self, rate):
        return self._t(self.source.poisson(rate.cpu().numpy()))

    def field_uniform(self, batch, height, width, low, high):
        return self.uniform((batch, height, width), low, high).permute(1, 2, 0)

    def image_normal(self, shape, scale):
        b, c, h, w = shape
        return self.normal((b, h, w, c), scale=scale).permute(0, 3, 1, 2)

    def image_poisson_levels(self, levels, rates, lut):
        hwc = levels.permute(0, 2, 3, 1).long().cpu().numpy()
        counts = torch.from_numpy(self.source.poisson(rates.cpu().numpy()[hwc])).clamp_max_(len(lut) - 1)
        return lut[counts].permute(0, 3, 1, 2)

    def integers(self, high):
        return torch.tensor([self.source.randint(0, int(h)) for h in high.tolist()])

    def image_salt_and_pepper(self, shape, amount):
        b, c, h, w = shape
        flipped = self._random((b, h, w, c)) <= amount
        salted = self._random((b, h, w, c)) <= 0.5
        return tuple(torch.from_numpy(m).permute(0, 3, 1, 2) for m in (flipped & salted, flipped & ~salted))


def real_images(count: int = 8, size: int = 96) -> list[np.ndarray]:
    """``count`` RGB uint8 crops (size x size) of the photos bundled with scikit-image."""
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.immunohistochemistry(), skimage.data.hubble_deep_field()]
    out = []
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)])
        scale = 1 + (i // len(photos))  # further images: tighter crops of the same photos
        w, h = photo.size
        side = min(w, h) // scale
        left, top = (w - side) // 2 + (i // len(photos)) * 7, (h - side) // 2
        out.append(np.asarray(photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)))
    return out


def _to_tensor(images: Sequence[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def replay_agreement(images: Sequence[np.ndarray], name: str, severities: Sequence[int] = SEVERITIES,
                     seed: int = 0) -> dict[str, float]:
    """Share of identical pixels, max and mean |difference| between the reference and the torch
    program replaying the reference's draws (float64), over ``images`` x ``severities``."""
    same = total = 0
    worst, abs_sum = 0, 0.0
    for severity in severities:
        for index, image in enumerate(images):
            s = image_seed(seed, name, severity, index)
            ref = corrupt_reference(image, name, severity, seed=s).astype(np.int64)
            with numpy_seed(s):
                source = np.random.default_rng(s) if name == "impulse_noise" else np.random
                ours = corrupt_batch(_to_tensor([image]), name, severity, compute_dtype=torch.float64,
                                     draws=NumpyDraws(source))[0].permute(1, 2, 0).numpy().astype(np.int64)
            diff = np.abs(ours - ref)
            same += int((diff == 0).sum())
            total += diff.size
            worst = max(worst, int(diff.max()))
            abs_sum += float(diff.sum())
    return {"identical": same / total, "max_abs": worst, "mean_abs": abs_sum / total}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def statistical_agreement(images: Sequence[np.ndarray], name: str, severities: Sequence[int] = SEVERITIES,
                          seed: int = 0) -> dict[str, float]:
    """Mean PSNR to the clean image and mean |pixel change|, reference vs torch (own random numbers),
    and the mean and standard error of the per-image PSNR difference (ours - reference)."""
    generator = torch.Generator().manual_seed(seed)
    psnr_ref, psnr_ours, change_ref, change_ours = [], [], [], []
    batch = _to_tensor(images)
    for severity in severities:
        ours = corrupt_batch(batch, name, severity, generator).permute(0, 2, 3, 1).numpy()
        for index, image in enumerate(images):
            ref = corrupt_reference(image, name, severity, seed=image_seed(seed + 1, name, severity, index))
            psnr_ref.append(_psnr(ref, image))
            psnr_ours.append(_psnr(ours[index], image))
            change_ref.append(np.abs(ref.astype(np.int64) - image).mean())
            change_ours.append(np.abs(ours[index].astype(np.int64) - image).mean())
    diff = np.array(psnr_ours) - np.array(psnr_ref)
    return {"psnr_ref": float(np.mean(psnr_ref)), "psnr_ours": float(np.mean(psnr_ours)),
            "change_ref": float(np.mean(change_ref)), "change_ours": float(np.mean(change_ours)),
            "psnr_diff": float(diff.mean()), "psnr_diff_se": float(diff.std(ddof=1) / math.sqrt(len(diff)))}


def statistics_pass(stats: dict[str, float]) -> bool:
    """Whether the mean PSNR difference is within the statistical tolerance."""
    return abs(stats["psnr_diff"]) <= STAT_SIGMAS * stats["psnr_diff_se"] + STAT_FLOOR_DB


@dataclass
class _FashionMNIST:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def _fashion_mnist(root: str = "/usr/share/datasets/fashion-mnist") -> _FashionMNIST:
    """Fashion-MNIST from the Debian package, padded to 32 x 32 and repeated to RGB (uint8 NCHW)."""
    import gzip
    from pathlib import Path

    def read(name: str, offset: int) -> np.ndarray:
        path = Path(root) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (Debian package dataset-fashion-mnist)")
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    def images(name: str) -> Tensor:
        x = torch.from_numpy(read(name, 16).reshape(-1, 1, 28, 28).copy())
        return torch.nn.functional.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)

    labels = lambda name: torch.from_numpy(read(name, 8).astype(np.int64))  # noqa: E731
    return _FashionMNIST(images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
                         images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def _small_cnn() -> torch.nn.Module:
    nn = torch.nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def _train(data: _FashionMNIST, samples: int = 20000, epochs: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = _small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = data.train_x[:samples].float() / 255, data.train_y[:samples]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            loss = torch.nn.functional.cross_entropy(model((x[idx] - 0.5) / 0.5), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _top1(model: torch.nn.Module, x: Tensor, y: Tensor) -> float:
    logits = torch.cat([model((x[i:i + 256].float() / 255 - 0.5) / 0.5) for i in range(0, len(x), 256)])
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def top1_agreement(count: int = 500, seed: int = 0, corruptions: Sequence[str] = CORRUPTIONS) -> tuple[float, dict[str, tuple[float, float]]]:
    """Clean top-1 and, per corruption, (reference, torch) top-1 averaged over the 5 severities."""
    data = _fashion_mnist()
    model = _train(data, seed=seed)
    x, y = data.test_x[:count], data.test_y[:count]
    clean = _top1(model, x, y)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in corruptions:
        ref_acc, ours_acc = [], []
        for severity in SEVERITIES:
            ref = torch.stack([torch.from_numpy(np.array(corrupt_reference(
                np.ascontiguousarray(img.permute(1, 2, 0).numpy()), name, severity,
                seed=image_seed(seed, name, severity, i)))).permute(2, 0, 1) for i, img in enumerate(x)])
            ref_acc.append(_top1(model, ref, y))
            ours_acc.append(_top1(model, corrupt_batch(x, name, severity, generator), y))
        out[name] = (float(np.mean(ref_acc)), float(np.mean(ours_acc)))
    return clean, out


def main(argv: Optional[Sequence[str]] = None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="real photos per severity (replay / statistics)")
    parser.add_argument("--size", type=int, default=96, help="their size in pixels")
    parser.add_argument("--top1-images", type=int, default=500, help="Fashion-MNIST test images (0: skip top-1)")
    parser.add_argument("--top1-tolerance", type=float, default=2.0, help="allowed |top-1 difference|, points")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images = real_images(args.images, args.size)
    top1 = top1_agreement(args.top1_images) if args.top1_images else None

    table = Table(title=f"torch vs reference corruptions: {args.images} photos of {args.size}px x 5 severities"
                        + (f"; top-1 on {args.top1_images} Fashion-MNIST test images (clean {top1[0]:.1f} %)" if top1 else ""))
    for column in ("corruption", "replay: identical px", "max |d|", "mean |d|", "PSNR ref", "PSNR ours",
                   "ΔPSNR ± se", "|Δpx| ref", "|Δpx| ours", "top-1 ref", "top-1 ours", "pass"):
        table.add_column(column, justify="left" if column == "corruption" else "right")
    for name in CORRUPTIONS:
        stats = statistical_agreement(images, name)
        ok = statistics_pass(stats)
        replay_cells = ["statistical only", "-", "-"]
        if name in REPLAY_TOLERANCE:
            rep = replay_agreement(images, name)
            tol = REPLAY_TOLERANCE[name]
            ok &= rep["identical"] >= tol[0] and rep["max_abs"] <= tol[1] and rep["mean_abs"] <= tol[2]
            replay_cells = [f"{100 * rep['identical']:.3f} %", str(rep["max_abs"]), f"{rep['mean_abs']:.4f}"]
        top1_cells = ["-", "-"]
        if top1:
            ref_acc, ours_acc = top1[1][name]
            ok &= abs(ref_acc - ours_acc) <= args.top1_tolerance
            top1_cells = [f"{ref_acc:.2f}", f"{ours_acc:.2f}"]
        table.add_row(name, *replay_cells, f"{stats['psnr_ref']:.2f}", f"{stats['psnr_ours']:.2f}",
                      f"{stats['psnr_diff']:+.2f} ± {stats['psnr_diff_se']:.2f}",
                      f"{stats['change_ref']:.2f}", f"{stats['change_ours']:.2f}", *top1_cells,
                      "[green]yes[/green]" if ok else "[red]NO[/red]")
    table.caption = (f"tolerances: replay per corruption (REPLAY_TOLERANCE); |ΔPSNR| <= {STAT_SIGMAS:g} se + "
                     f"{STAT_FLOOR_DB} dB; |top-1 difference| <= {args.top1_tolerance} points")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
