"""The study's training step against a bare PyTorch loop on the same network and batch, in one run.

The study's step is ``timm_xbn.study.resnet.train_classifier`` itself (its data path: a seeded
reshuffle, the gather of the batch, the normalization; timm's SGD and cosine schedule; its
bookkeeping: loss and train top-1 per step) on the study's network (``build_variant``: the
narrow ResNet-50 layout, ``ResNetConfig``'s channels and GroupNorm groups), batch 128 at 32 px.
The bare loop is forward, cross-entropy, backward and ``torch.optim.SGD`` (momentum 0.9, Nesterov,
weight decay, like timm's) on a batch prepared beforehand. Both start from the same initial
weights, run ``--steps`` updates per round, and alternate over ``--rounds`` (best round kept, so
both sides see the same machine load); wall and CPU milliseconds per step are both reported.

The summary (ratios, overhead) reads CPU time on the CPU (per core: a shared machine stretches
wall time unevenly) and wall time on a GPU. Rows: BN and XBN-GN (the paper's XBNBlock-P2 with GroupNorm), in the study's channels_last layout
and in the contiguous (NCHW) one. Below the table: the study's overhead over the bare loop, the
XBN-GN / BN step ratio, and a profile of one bare step per variant (share of the normalization
and convolution kernels), which says where GroupNorm's cost is.

On CUDA the study autocasts to bfloat16 (``study.resnet.autocast``) and the bare loop does the
same. ``benchmarks/device_check.py`` runs ``measure`` as its ``train_step`` section.

    python -m benchmarks.train_step                      # CPU, one thread, batch 128 at 32 px
    python -m benchmarks.train_step --tiny               # seconds (the test; numbers meaningless)
"""
import argparse
import copy
import statistics
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from timm_xbn.study.resnet import ImageSplit, ResNetConfig, autocast, build_variant, train_classifier

VARIANTS = ("BN", "XBN-GN")
NUM_CLASSES = 10
# profiler kernel groups: a kernel counts for the first group whose words its name contains
KERNEL_GROUPS = {"group norm": ("group_norm",), "batch norm": ("batch_norm",),
                 "convolution": ("convolution", "conv2d", "mkldnn_conv")}
# on CUDA the kernels are not named after their ops: these ops' device time (their kernels, each
# counted once: no op here calls another) instead
CUDA_OPS = {"group norm": ("aten::native_group_norm", "aten::native_group_norm_backward"),
            "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::cudnn_batch_norm",
                           "aten::cudnn_batch_norm_backward"),
            "convolution": ("aten::cudnn_convolution", "aten::convolution_backward")}


def synthetic_split(images: int, size: int, device: torch.device, seed: int = 0) -> ImageSplit:
    """``images`` random images in [0, 1] with 10 labels, normalized like the study's splits (no download)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(images, 3, size, size, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (images,), generator=generator)
    return ImageSplit(x, y, x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))).to(str(device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ResNetConfig) -> Callable[[int], None]:
    """``run(steps)``: forward, loss, backward, SGD step on the one prepared batch, ``steps`` times."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    model.train()

    def run(steps: int) -> None:
        for _ in range(steps):
            with autocast(model):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return run


def study_loop(model: nn.Module, split: ImageSplit, cfg: ResNetConfig) -> Callable[[int], None]:
    """``run(steps)``: the study's ``train_classifier`` for ``steps`` updates (one epoch of the split)."""
    def run(steps: int) -> None:
        train_classifier(model, split, 0, steps=steps, **cfg.recipe())
    return run


def timed(run: Callable[[int], None], steps: int, device: torch.device) -> Tuple[float, float]:
    """(wall ms, CPU ms) per step of ``run(steps)``."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run(steps)
    synchronize(device)
    return (time.perf_counter() - wall) / steps * 1e3, (time.process_time() - cpu) / steps * 1e3


def kernel_shares(run: Callable[[int], None], device: torch.device) -> Dict[str, float]:
    """Milliseconds per group of ``KERNEL_GROUPS`` (self time) in one step of ``run``, and ``total``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(1)
        synchronize(device)
    cuda = device.type == "cuda"
    out = dict.fromkeys([*KERNEL_GROUPS, "total"], 0.0)
    for event in prof.key_averages():
        out["total"] += (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e3
        if cuda:
            group = next((g for g, ops in CUDA_OPS.items() if event.key in ops), None)
            ms = event.device_time_total / 1e3
        else:
            group = next((g for g, words in KERNEL_GROUPS.items() if any(w in event.key for w in words)), None)
            ms = event.self_cpu_time_total / 1e3
        if group is not None:
            out[group] += ms
    return out


def measure(device: torch.device, batch_size: int = 128, size: int = 32, steps: int = 5, rounds: int = 3,
            layouts: Sequence[bool] = (True, False)) -> Dict[str, object]:
    """Study step vs bare step for each variant and layout (channels_last True / False); ``rows``,
    the profiles of one bare step per variant (study layout) and the summary ratios."""
    rows, profiles = [], {}
    for channels_last in layouts:
        cfg = ResNetConfig(batch_size=batch_size, warmup_steps=1, channels_last=channels_last)
        # one epoch of the split is ``steps`` updates: the study's loop reshuffles and gathers as in a run
        split = synthetic_split(batch_size * steps, size, device)
        x, y = split.normalize(split.x[:batch_size]), split.y[:batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for variant in VARIANTS:
            model = build_variant(variant, cfg, NUM_CLASSES, seed=0).to(device)
            study, bare = study_loop(model, split, cfg), bare_loop(copy.deepcopy(model), x, y, cfg)
            study(2), bare(2)  # warm-up (allocator, oneDNN primitives, cuDNN autotuning)
            study_times, bare_times = [], []
            for _ in range(rounds):  # alternated: both sides see the same load
                study_times.append(timed(study, steps, device))
                bare_times.append(timed(bare, steps, device))
            # best round per clock
            study_ms, study_cpu = (min(t[i] for t in study_times) for i in (0, 1))
            bare_ms, bare_cpu = (min(t[i] for t in bare_times) for i in (0, 1))
            rows.append({"variant": variant, "layout": "channels_last" if channels_last else "contiguous",
                         "study_ms": study_ms, "bare_ms": bare_ms, "study_cpu_ms": study_cpu, "bare_cpu_ms": bare_cpu,
                         "overhead": study_ms / bare_ms - 1, "overhead_cpu": study_cpu / bare_cpu - 1,
                         "study_ms_median": statistics.median(t[0] for t in study_times),
                         "bare_ms_median": statistics.median(t[0] for t in bare_times)})
            if channels_last == layouts[0]:
                profiles[variant] = kernel_shares(bare, device)
    # the summary's clock: CPU time on the CPU (per core; a shared machine stretches wall time
    # unevenly), wall time on a GPU
    clock = "cpu_ms" if device.type == "cpu" else "ms"
    first = rows[0]["layout"]
    by = {(r["variant"], r["layout"]): r for r in rows}
    summary = {"clock": "CPU" if clock == "cpu_ms" else "wall",
               "xbn_gn_vs_bn_bare": by[("XBN-GN", first)][f"bare_{clock}"] / by[("BN", first)][f"bare_{clock}"],
               "xbn_gn_vs_bn_study": by[("XBN-GN", first)][f"study_{clock}"] / by[("BN", first)][f"study_{clock}"],
               "max_overhead": max(r["overhead_cpu" if clock == "cpu_ms" else "overhead"] for r in rows
                                   if r["layout"] == first)}
    if len(layouts) > 1:
        other = rows[-1]["layout"]
        summary["xbn_gn_layout_ratio"] = by[("XBN-GN", other)][f"bare_{clock}"] / by[("XBN-GN", first)][f"bare_{clock}"]
    return {"device": str(device), "batch_size": batch_size, "size": size, "steps": steps, "rounds": rounds,
            "rows": rows, "profiles": profiles, "summary": summary}


def print_result(result: Dict[str, object], threads: Optional[int]) -> None:
    console = Console(width=150)
    table = Table(title=f"Training step of the study's network, batch {result['batch_size']} at {result['size']} px, "
                        f"{result['device']}{f', {threads} thread(s)' if threads else ''}: best of {result['rounds']} "
                        f"alternated rounds of {result['steps']} steps")
    for column in ("variant", "layout", "study ms", "bare ms", "study CPU ms", "bare CPU ms", "overhead (wall)",
                   "overhead (CPU)"):
        table.add_column(column, justify="left" if column in ("variant", "layout") else "right")
    for r in result["rows"]:
        table.add_row(r["variant"], r["layout"], f"{r['study_ms']:.1f}", f"{r['bare_ms']:.1f}", f"{r['study_cpu_ms']:.1f}",
                      f"{r['bare_cpu_ms']:.1f}", f"{100 * r['overhead']:+.1f} %", f"{100 * r['overhead_cpu']:+.1f} %")
    console.print(table)
    s = result["summary"]
    console.print(f"{s['clock']} time: XBN-GN / BN step: {s['xbn_gn_vs_bn_bare']:.2f} (bare loop), {s['xbn_gn_vs_bn_study']:.2f} (study); "
                  f"study overhead at most {100 * s['max_overhead']:+.1f} % (goal <= 5 %)")
    if "xbn_gn_layout_ratio" in s:
        console.print(f"XBN-GN bare step, {result['rows'][-1]['layout']} / {result['rows'][0]['layout']}: "
                      f"{s['xbn_gn_layout_ratio']:.2f}")
    for variant, shares in result["profiles"].items():
        total = shares["total"]
        parts = ", ".join(f"{group} {ms:.1f} ms ({100 * ms / total:.0f} %)" for group, ms in shares.items() if group != "total")
        console.print(f"profile of one bare {variant} step ({total:.1f} ms self time): {parts}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Print the table; return ``measure``'s result (rows, profiles, summary) unformatted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the study runs one per job)")
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="batch 4, 2 steps, 1 round (the test)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_size, args.steps, args.rounds = 4, 2, 1
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    result = measure(device, args.batch_size, args.img_size, args.steps, args.rounds)
    print_result(result, args.threads if device.type == "cpu" else None)
    return result


if __name__ == "__main__":
    main()
