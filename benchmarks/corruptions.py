"""Images/s of the reference corruptions (``imagecorruptions``, one image at a time) against the
batched torch implementation, on the same real photos in the same run, per corruption and total.

Every corruption runs at severities 1..5 on each image, after one untimed warm-up call on each
side (the reference's glass_blur otherwise counts ~2.6 s of numba compilation); ``--repeats N``
keeps the best of N alternated timings of each side. Both sides start from the same decoded uint8
arrays and return uint8 images. On the CPU the torch side uses ``--threads`` threads (default 1,
like the single reference process), so the ratio is per core.

Why 20x per core is out of reach for some corruptions: jpeg_compression and pixelate are libjpeg /
Pillow C code in the reference as well (the torch side runs the same libjpeg through torchvision);
the noise corruptions draw one random number per value, which costs torch's CPU generator about
3-5 ns, as much as the rest of the corruption; the others are a few memory-bound passes per value.

    python benchmarks/corruptions.py                          # CPU, 16 photos of 224 px
    python benchmarks/corruptions.py --repeats 3              # best of 3 (busy machine)
    python benchmarks/corruptions.py --device cuda --images 64 --batch-size 64
"""
import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from timm_xbn.corruptions import CORRUPTIONS, corrupt_batch, corrupt_reference
from timm_xbn.corruptions.agreement import real_images


def reference_seconds(images, name: str) -> float:
    start = time.perf_counter()
    for severity in range(1, 6):
        for i, image in enumerate(images):
            corrupt_reference(image, name, severity, seed=i)
    return time.perf_counter() - start


def torch_seconds(batch: torch.Tensor, name: str, batch_size: int, device: torch.device,
                  generator: torch.Generator) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for severity in range(1, 6):
        for i in range(0, len(batch), batch_size):
            corrupt_batch(batch[i:i + batch_size], name, severity, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the reference uses one process)")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings, both sides (for a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = real_images(args.images, args.size)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
    count = 5 * len(images)

    table = Table(title=f"Corruptions: {len(images)} photos of {args.size}px x 5 severities, best of {args.repeats}; reference: 1 process, "
                        f"torch: {device}{f', {args.threads} thread(s)' if device.type == 'cpu' else ''}, batch {args.batch_size}")
    for column in ("corruption", "reference img/s", "torch img/s", "speed-up"):
        table.add_column(column, justify="left" if column == "corruption" else "right")
    ref_total = torch_total = 0.0
    for name in args.corruptions.split(","):
        # one untimed warm-up call each (the reference's glass_blur compiles its numba scan: ~2.6 s)
        corrupt_reference(images[0], name, 3, seed=0)
        generator = torch.Generator(device=device).manual_seed(0)
        corrupt_batch(batch[:args.batch_size], name, 3, generator)
        ref = ours = float("inf")
        for _ in range(args.repeats):  # alternated, so both sides see the same machine load
            ref = min(ref, reference_seconds(images, name))
            ours = min(ours, torch_seconds(batch, name, args.batch_size, device, generator))
        ref_total, torch_total = ref_total + ref, torch_total + ours
        table.add_row(name, f"{count / ref:.1f}", f"{count / ours:.1f}", f"{ref / ours:.1f}x")
    n = len(args.corruptions.split(","))
    table.add_row("[bold]all (per image, every corruption)[/bold]", f"{count / ref_total:.2f}", f"{count / torch_total:.2f}",
                  f"[bold]{ref_total / torch_total:.1f}x[/bold]")
    table.caption = f"the total row counts one image as corrupted by all {n} corruptions in turn"
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
