"""What portable mode costs: CPU-seconds of the study's training step, native kernels vs portable mode.

The network is the Section 5 study's BN ResNet (``timm_xbn.study.resnet``: resnet50 layout, channels 8-64,
channels_last), trained with its ``train_classifier`` (SGD, warmup + cosine) at batch 128 on 32 px images, one
torch thread. The kernel settings are read when torch starts, so each setting runs in its own interpreter
(native: this environment without the pins; portable: ``timm_xbn.utils.portable.PORTABLE_ENV``), the settings
alternating for ``--rounds`` rounds; the first step of each run (oneDNN builds its kernels) is not timed. The
table gives the median CPU-seconds and wall seconds per step, and the hash of the trained weights (equal hashes
on two machines: bit-identical training).

    python -m benchmarks.portable            # 20 steps x 2 rounds per setting, about 2 CPU-min
    python -m benchmarks.portable --tiny     # 2 steps of batch 16 (the test; timings meaningless)
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Sequence

from timm_xbn.utils.portable import PINS, PORTABLE_ENV

ROOT = Path(__file__).resolve().parent.parent
_CHILD = "from benchmarks.portable import measure; measure({steps}, {batch})"


def measure(steps: int, batch_size: int) -> None:
    """In a child: train the study's BN network for ``1 + steps`` steps; print its kernels, the CPU and wall
    seconds of each timed step and the weights' hash as one JSON line."""
    import torch

    from timm_xbn.study.resnet import ImageSplit, ResNetConfig, build_variant, train_classifier
    from timm_xbn.utils.portable import kernel_record

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    images = (steps + 1) * batch_size
    split = ImageSplit(torch.rand(images, 3, 32, 32, generator=generator),
                       torch.randint(0, 10, (images,), generator=generator), torch.full((3,), 0.5), torch.full((3,), 0.25))
    cfg = ResNetConfig(batch_size=batch_size)
    model = build_variant("BN", cfg, num_classes=10, seed=0)
    ticks = [(time.process_time(), time.perf_counter())]
    train_classifier(model, split, seed=0, batch_size=batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     warmup_steps=cfg.warmup_steps, steps=steps + 1,
                     on_step=lambda update: ticks.append((time.process_time(), time.perf_counter())))
    cpu = [b[0] - a[0] for a, b in zip(ticks[1:], ticks[2:])]  # from the end of step 1: step 1 builds kernels
    wall = [b[1] - a[1] for a, b in zip(ticks[1:], ticks[2:])]
    weights = hashlib.sha1(b"".join(p.detach().contiguous().numpy().tobytes() for p in model.parameters()))
    print(json.dumps({**kernel_record(), "cpu_s": cpu, "wall_s": wall, "hash": weights.hexdigest()[:12]}))


def settings() -> Dict[str, Dict[str, str]]:
    """Setting -> the child's environment: native (the pins removed, one thread) and portable."""
    native = {k: v for k, v in os.environ.items() if k not in PINS}
    return {"native": {**native, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, "portable": {**native, **PORTABLE_ENV}}


def run_child(env: Dict[str, str], steps: int, batch_size: int) -> dict:
    code = _CHILD.format(steps=steps, batch=batch_size)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: Dict[str, List[dict]]) -> str:
    """One row per setting: kernels, steps timed, median CPU-s and wall-s per step, the ratio to native."""
    base = median(s for r in results["native"] for s in r["cpu_s"])
    lines = ["| setting | kernels (ATen / oneDNN / MKL) | threads | steps timed | CPU-s / step | wall-s / step | "
             "CPU vs native | weights hash |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, runs in results.items():
        cpu = median(s for r in runs for s in r["cpu_s"])
        wall = median(s for r in runs for s in r["wall_s"])
        first = runs[0]
        hashes = ", ".join(sorted({r["hash"] for r in runs}))
        lines.append(f"| {name} | {first['capability']} / {first['isa_cap']} / {first['mkl_branch']} | "
                     f"{first['threads']} | {sum(len(r['cpu_s']) for r in runs)} | {cpu:.3f} | {wall:.3f} | "
                     f"{cpu / base:.2f}x | {hashes} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per run (after one untimed)")
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, the settings alternating")
    parser.add_argument("--tiny", action="store_true", help="2 steps of batch 16, one round (the test)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.batch_size, args.rounds = 2, 16, 1
    if min(args.steps, args.batch_size, args.rounds) < 1:
        parser.error("--steps, --batch-size and --rounds must be at least 1")
    start, cpu_start = time.perf_counter(), time.process_time()
    results: Dict[str, List[dict]] = {name: [] for name in settings()}
    for _ in range(args.rounds):
        for name, env in settings().items():
            results[name].append(run_child(env, args.steps, args.batch_size))
    print(f"The study's training step (BN ResNet, batch {args.batch_size}, 32 px), {args.steps} timed steps x "
          f"{args.rounds} round(s) per setting on {results['native'][0]['cpu']}:\n")
    print(table(results))
    print(f"\n{time.perf_counter() - start:.0f} s wall for the whole benchmark (children's CPU-s in the table; "
          f"this process {time.process_time() - cpu_start:.1f} CPU-s)")
    return results


if __name__ == "__main__":
    main()
