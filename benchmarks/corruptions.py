"""Images/s of the reference corruptions (``imagecorruptions``, one image at a time) against the
batched torch implementation, on the same real photos in the same run, per corruption and total.

Every corruption runs at severities 1..5 on each image. One-time setup is timed apart, in its
own column: an untimed pass over the five severities on each side first (the reference's
glass_blur compiles its numba scan, ~2.6 s; the torch side builds its cached tables: zoom_blur's
sparse operator, the defocus kernels' spectra, the frost textures, the Poisson tables).
``--repeats N`` keeps the best of N alternated timings of each side: the speed-up times each
side right after the other side's run (what on-the-fly corruption between other work meets:
caches and TLB emptied by the other side; on the development VM this costs the torch side
30-60 %, the reference a few %); the "steady" column times each side again right after its own
run (a long corruption job). The one-time setup column includes the CPU kernels' compilation or
cache load (numba). Both sides start from the
same decoded uint8 arrays and return uint8 images. On the CPU the torch side uses ``--threads``
threads (default 1, like the single reference process), so the ratio is per core.

Floors, in the table beside the corruptions bound by one (measured in the same run, over the same
images and severities, each timing right after a run of the reference, like the torch side's): the
random numbers the corruption draws (``FLOORS``: the same draws, nothing else) or, for jpeg, the
libjpeg encode + decode of the interleaved pixels alone. "at the floor" is the reference's time
over the floor's: the most any implementation built on those draws or that codec can reach per
core. Below the table: the corruptions under the per-corruption goal (2x) and whether a floor bounds
them (jpeg: libjpeg, ~2x at the floor), what one random number per value and one elementwise pass
cost torch on this CPU, per image, and what the per-core goal (20x, all corruptions together) allows.

    python benchmarks/corruptions.py                          # CPU, 16 photos of 224 px
    python benchmarks/corruptions.py --repeats 3              # best of 3 (busy machine)
    python benchmarks/corruptions.py --device cuda --images 64 --batch-size 64
    python benchmarks/corruptions.py --tiny                   # seconds (the test; numbers meaningless)
"""
import argparse
import sys
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from timm_xbn.commands.vocabulary import RENAMED, translate_argv
from timm_xbn.corruptions import CORRUPTIONS, corrupt_batch, corrupt_reference
from timm_xbn.corruptions.agreement import real_images
from timm_xbn.corruptions.torch_ops import Draws, _zoom_window

GOAL = 20.0  # all corruptions together, per core
CORRUPTION_GOAL = 2.0  # each corruption, per core, unless bound by its floor
_SNOW_ZOOMS = (3, 2, 4, 4.5, 2.5)


# name -> (what, work at one severity on a uint8 chunk (B, 3, H, W), with the corruption's Draws): the
# floor of each corruption bound by one; jpeg's (the codec) is timed in ``floor_seconds``
FLOORS = {
    "gaussian_noise": ("a normal per value", lambda x, s, d: d.normal(tuple(x.shape))),
    "shot_noise": ("a 31-bit number per value", lambda x, s, d: d.bits31(tuple(x.shape))),
    "impulse_noise": ("a 15-bit number per value", lambda x, s, d: d.bits15(tuple(x.shape))),
    "glass_blur": ("a 15-bit number per pixel", lambda x, s, d: d.pixel_bits15(x.shape[2], x.shape[3], x.shape[0])),
    "elastic_transform": ("2 uniforms per pixel", lambda x, s, d: d.field_uniform(2 * x.shape[0], x.shape[2], x.shape[3], -1, 1)),
    "fog": ("the plasma's uniforms", lambda x, s, d: d.uniform(
        (x.shape[0], sum(3 * 4 ** k for k in range((max(x.shape[1:]) - 1).bit_length()))), -1, 1)),
    "snow": ("normals of the zoomed centre", lambda x, s, d: d.normal_window(
        (x.shape[0], *x.shape[2:]), tuple(_zoom_window(n, _SNOW_ZOOMS[s - 1]) for n in x.shape[2:]))),
    "jpeg_compression": ("libjpeg encode + decode", None),
}


def wall_and_cpu() -> np.ndarray:
    """A clock of two readings, (wall seconds, this process's CPU seconds): the timings below taken
    with it give both."""
    return np.array([time.perf_counter(), time.process_time()])


def reference_seconds(images, name: str, clock: Callable = time.perf_counter):
    start = clock()
    for severity in range(1, 6):
        for i, image in enumerate(images):
            corrupt_reference(image, name, severity, seed=i)
    return clock() - start


def synchronizer(t: torch.Tensor):
    """A call that waits for ``t``'s device to finish its queued work (a no-op on the CPU)."""
    return torch.cuda.synchronize if t.is_cuda else (lambda: None)


def torch_seconds(batch: torch.Tensor, name: str, batch_size: int, generator: torch.Generator,
                  clock: Callable = time.perf_counter):
    sync = synchronizer(batch)
    sync()
    start = clock()
    for severity in range(1, 6):
        for i in range(0, len(batch), batch_size):
            corrupt_batch(batch[i:i + batch_size], name, severity, generator)
    sync()
    return clock() - start


def floor_seconds(batch: torch.Tensor, name: str, batch_size: int, generator: torch.Generator,
                  clock: Callable = time.perf_counter):
    """``torch_seconds`` of the floor of ``name`` (``FLOORS``). For jpeg, the codec alone: the
    interleaved copies it needs are made before the clock starts."""
    work = FLOORS[name][1]
    draws = Draws(generator, batch.device, torch.float32)
    chunks = [batch[i:i + batch_size] for i in range(0, len(batch), batch_size)]
    if name == "jpeg_compression":
        from torchvision.io import decode_jpeg, encode_jpeg

        pixels = [[image.permute(1, 2, 0).contiguous().permute(2, 0, 1) for image in chunk.cpu()] for chunk in chunks]
        start = clock()
        for quality in (25, 18, 15, 10, 7):
            for chunk in pixels:
                decode_jpeg(encode_jpeg(chunk, quality=quality))
        return clock() - start
    sync = synchronizer(batch)
    sync()
    start = clock()
    for severity in range(1, 6):
        for chunk in chunks:
            work(chunk, severity, draws)
    sync()
    return clock() - start


def floors_ms(batch: torch.Tensor, generator: torch.Generator, repeats: int = 5) -> dict[str, float]:
    """Per-image cost (ms) of torch primitives no corruption can avoid, best of ``repeats``."""
    draws = Draws(generator, batch.device, torch.float32)
    x = batch.float()
    sync = synchronizer(batch)
    work = {
        "one 32-bit random number per value (Draws.bits31)": lambda: draws.bits31(tuple(batch.shape)),
        "one normal per value (torch.randn)": lambda: draws.normal(tuple(batch.shape)),
        "one elementwise float32 pass (x * 2)": lambda: x * 2,
    }
    out = {}
    for label, fn in work.items():
        fn()
        best = float("inf")
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - start)
        out[label] = best / len(batch) * 1e3
    return out


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Print the table; return its rows (the total last, named ``all``) with the numbers unformatted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--img-size", dest="size", type=int, default=224)
    parser.add_argument("-b", "--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the reference uses one process)")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings, both sides (for a busy machine)")
    parser.add_argument("--tiny", action="store_true", help="2 photos of 64 px, 3 corruptions (the test)")
    args = parser.parse_args(translate_argv(sys.argv[1:] if argv is None else argv, RENAMED["benchmarks/corruptions.py"]))
    if args.tiny:
        args.images, args.size, args.batch_size, args.corruptions = 2, 64, 2, "gaussian_noise,contrast,jpeg_compression"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = real_images(args.images, args.size)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
    count = 5 * len(images)
    names = args.corruptions.split(",")

    # on the CPU the ratios are per core: CPU seconds (a shared machine stretches wall time on both
    # sides unevenly); on a GPU, wall seconds. The other clock's speed-up is shown beside.
    primary, clock_name = (1, "CPU") if device.type == "cpu" else (0, "wall")
    table = Table(title=f"Corruptions: {len(images)} photos of {args.size}px x 5 severities, best of {args.repeats}, "
                        f"{clock_name} time; reference: 1 process, "
                        f"torch: {device}{f', {args.threads} thread(s)' if device.type == 'cpu' else ''}, batch {args.batch_size}")
    other = "wall" if primary else "CPU"
    for column in ("corruption", "reference img/s", "torch img/s", "speed-up", f"({other})", "steady", "floor img/s",
                   "at the floor", "floor", "one-time setup s (ref / torch)"):
        table.add_column(column, justify="left" if column in ("corruption", "floor") else "right")
    ref_total = torch_total = np.zeros(2)
    steady_ref_total = steady_torch_total = 0.0
    rows = []
    for name in names:
        generator = torch.Generator(device=device).manual_seed(0)
        # first pass over the severities: setup + 5 images
        ref_setup = reference_seconds(images[:1], name, wall_and_cpu)[primary]
        torch_setup = torch_seconds(batch[:args.batch_size], name, args.batch_size, generator, wall_and_cpu)[primary]
        both_ref = both_ours = both_floor = np.full(2, np.inf)
        steady_ref = steady_ours = np.inf
        if name in FLOORS:
            floor_seconds(batch[:args.batch_size], name, args.batch_size, generator)  # warm-up
        for _ in range(args.repeats):  # alternated, so both sides see the same machine load; best per clock
            # each side right after the other's run (the speed-up), then again right after its own (steady)
            both_ref = np.minimum(both_ref, reference_seconds(images, name, wall_and_cpu))
            steady_ref = min(steady_ref, reference_seconds(images, name, wall_and_cpu)[primary])
            both_ours = np.minimum(both_ours, torch_seconds(batch, name, args.batch_size, generator, wall_and_cpu))
            steady_ours = min(steady_ours, torch_seconds(batch, name, args.batch_size, generator, wall_and_cpu)[primary])
            if name in FLOORS:  # the floor, too, right after the reference (the state it leaves, like ours);
                reference_seconds(images, name)  # this run only sets that state: each side keeps N timings
                both_floor = np.minimum(both_floor, floor_seconds(batch, name, args.batch_size, generator, wall_and_cpu))
        ref_total, torch_total = ref_total + both_ref, torch_total + both_ours
        steady_ref_total, steady_torch_total = steady_ref_total + steady_ref, steady_torch_total + steady_ours
        ref, ours, floor = float(both_ref[primary]), float(both_ours[primary]), float(both_floor[primary])
        other_speedup = float(both_ref[1 - primary] / both_ours[1 - primary])
        # one-time setup: the first pass minus what the same work costs once warm
        ref_setup -= 5 * ref / count
        torch_setup -= 5 * min(args.batch_size, len(images)) * ours / count
        rows.append({"corruption": name, "reference_img_s": count / ref, "torch_img_s": count / ours,
                     "speedup": ref / ours, f"speedup_{other.lower()}": other_speedup,
                     "speedup_steady": steady_ref / steady_ours,
                     "reference_setup_s": max(ref_setup, 0), "torch_setup_s": max(torch_setup, 0)})
        floor_cells = ["", "", ""]
        if name in FLOORS:
            rows[-1].update(floor=FLOORS[name][0], floor_img_s=count / floor, floor_speedup=ref / floor)
            floor_cells = [f"{count / floor:.1f}", f"{ref / floor:.1f}x", FLOORS[name][0]]
        table.add_row(name, f"{count / ref:.1f}", f"{count / ours:.1f}", f"{ref / ours:.1f}x", f"{other_speedup:.1f}x",
                      f"{steady_ref / steady_ours:.1f}x", *floor_cells,
                      f"{max(ref_setup, 0):.2f} / {max(torch_setup, 0):.2f}")
    other_speedup = float(ref_total[1 - primary] / torch_total[1 - primary])
    ref_total, torch_total = float(ref_total[primary]), float(torch_total[primary])
    rows.append({"corruption": "all", "reference_img_s": count / ref_total, "torch_img_s": count / torch_total,
                 "speedup": ref_total / torch_total, f"speedup_{other.lower()}": other_speedup,
                 "speedup_steady": steady_ref_total / steady_torch_total,
                 "reference_setup_s": 0.0, "torch_setup_s": 0.0})
    table.add_row("[bold]all (per image, every corruption)[/bold]", f"{count / ref_total:.2f}", f"{count / torch_total:.2f}",
                  f"[bold]{ref_total / torch_total:.1f}x[/bold]", f"{other_speedup:.1f}x",
                  f"{steady_ref_total / steady_torch_total:.1f}x", "", "", "", "")
    table.caption = (f"the total row counts one image as corrupted by all {len(names)} corruptions in turn; "
                     "speed-up: each side timed right after the other's run; steady: right after its own; "
                     "setup: what the first pass over the 5 severities (1 image / 1 batch) took beyond the warm time")
    console = Console(width=180)
    console.print(table)

    for row in rows[:-1]:
        if row["speedup"] < CORRUPTION_GOAL:
            why = (f"bound by {row['floor']}: {row['floor_speedup']:.1f}x at the floor" if "floor" in row
                   else "no floor (not bound by random numbers or a codec)")
            console.print(f"below {CORRUPTION_GOAL:.0f}x: {row['corruption']} {row['speedup']:.1f}x, {why}")
    ref_ms, torch_ms = ref_total / count * 1e3, torch_total / count * 1e3
    console.print(f"per image, all {len(names)} corruptions ({clock_name} time): reference {ref_ms:.1f} ms, torch {torch_ms:.1f} ms; "
                  f"{GOAL:.0f}x would need torch <= {ref_ms / GOAL:.1f} ms; steady: reference "
                  f"{steady_ref_total / count * 1e3:.1f} ms, torch {steady_torch_total / count * 1e3:.1f} ms")
    for label, ms in floors_ms(batch[:args.batch_size], torch.Generator(device=device).manual_seed(1)).items():
        console.print(f"  floor on this {device.type}: {label}: {ms:.3f} ms per image")
    return rows


if __name__ == "__main__":
    main()
