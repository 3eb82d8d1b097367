"""Benchmark: a Delta x seed robustness sweep, naive (one data pass per setting) vs shared pass.

Both run the same settings on the same images in one process and must give identical counts.
Also measured: the pure forward time of all settings (every setting's forwards on batches decoded
beforehand, nothing else) and one decode-only pass. Goal: shared <= 1.2 x pure forward.
All three are timed ``--repeats`` times, interleaved, and the minimum is reported, both as wall
time and as this process's CPU time: the machine may be shared with other jobs, which inflates
wall time but not CPU time. With the default ``--workers 0`` all decoding happens in this
process, so the CPU times are complete and comparable.

    python benchmarks/sweep.py                       # resnet26 + xbn_resnet26, 6 deltas x 5 seeds
    python benchmarks/sweep.py --models resnet50 --img-size 224 --images 64 --seeds 2
    python benchmarks/sweep.py --tiny                # seconds (the test; numbers meaningless)
"""
import argparse
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

import timm_xbn  # noqa: F401  (registers the xbn_* models)
from timm_xbn.evaluation import (
    SharedPass, build_model_specs, create_eval_data, create_models, eval_mode, naive_sweep,
    resolve_eval_data_config, robustness_settings, run_pass,
)
from timm_xbn.stats import select_perturbation_targets


def write_jpegs(root: Path, images: int, classes: int, size=(500, 375), seed: int = 0) -> Path:
    """ImageNet-sized JPEGs (500x375, quality 90) of smooth class-coloured noise, in an ImageFolder tree."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        c = i % classes
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize(size, Image.BILINEAR)
        img.save(folder / f"img_{i}.jpg", quality=90)
    return root


def timed(fn):
    """``((wall seconds, CPU seconds of this process), fn())``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Print the table; return its rows (wall and CPU clock) with the numbers unformatted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet26", "xbn_resnet26"])
    parser.add_argument("--deltas", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("-b", "--batch-size", type=int, default=16)
    parser.add_argument("-j", "--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="1 delta x 1 seed, 4 images of 32 px (the test)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.deltas, args.seeds, args.blocks = [0.3], 1, 2
        args.images, args.img_size, args.batch_size, args.classes, args.repeats = 4, 32, 2, 2, 1

    torch.manual_seed(0)
    specs = build_model_specs(args.models, model_kwargs={"num_classes": args.classes})
    models = create_models(specs)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp) / "data", args.images, args.classes)
        data = create_eval_data(root, resolve_eval_data_config(models, {"img_size": args.img_size}),
                                batch_size=args.batch_size, workers=args.workers)
        targets = {label: select_perturbation_targets(m, args.blocks) for label, m in models.items()}
        settings = robustness_settings(list(models), args.deltas, list(range(args.seeds)))

        with eval_mode(models.values()), torch.no_grad():
            decode_t, cached = timed(lambda: [(b.images, b.targets) for b in data.loader()])
            for label, model in models.items():  # warm-up, not timed
                model(cached[0][0])

            def pure_forward():
                for s in settings:
                    model = models[s.model]
                    for images, _ in cached:
                        model(images)

            times = {"pure forward": [], "naive": [], "shared": []}
            for _ in range(args.repeats):
                times["pure forward"].append(timed(pure_forward)[0])
                elapsed, shared = timed(lambda: run_pass(SharedPass.of_settings(models, settings, targets), data))
                times["shared"].append(elapsed)
                elapsed, naive = timed(lambda: naive_sweep(models, settings, targets, data.loader))
                times["naive"].append(elapsed)

    best = {k: (min(t[0] for t in v), min(t[1] for t in v)) for k, v in times.items()}
    same = all(torch.equal(shared.counts[s.key], naive[s.key]) for s in settings)
    table = Table(title=f"Robustness sweep: {' + '.join(args.models)}, {len(args.deltas)} deltas x {args.seeds} seeds "
                        f"+ clean = {len(settings)} settings, {args.images} JPEGs 500x375 -> {args.img_size}px, "
                        f"batch {args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads, "
                        f"min of {args.repeats}; same counts naive vs shared: {same}")
    for column in ("clock", "decode once (s)", "pure forward (s)", "naive (s)", "shared (s)",
                   "naive / shared", "shared / pure forward", "goal <= 1.2"):
        table.add_column(column, justify="right")
    rows = []
    for i, clock in enumerate(("wall", "CPU")):
        ratio = best["shared"][i] / best["pure forward"][i]
        rows.append({"clock": clock, "decode_s": decode_t[i], "pure_forward_s": best["pure forward"][i],
                     "naive_s": best["naive"][i], "shared_s": best["shared"][i],
                     "naive_over_shared": best["naive"][i] / best["shared"][i], "shared_over_pure": ratio,
                     "same_counts": same})
        table.add_row(clock, f"{decode_t[i]:.2f}", f"{best['pure forward'][i]:.2f}", f"{best['naive'][i]:.2f}",
                      f"{best['shared'][i]:.2f}", f"{best['naive'][i] / best['shared'][i]:.2f}x", f"{ratio:.3f}",
                      "PASS" if ratio <= 1.2 else "FAIL")
    Console(width=200).print(table)
    return rows


if __name__ == "__main__":
    main()
