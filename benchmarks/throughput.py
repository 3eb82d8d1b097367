"""Throughput of XBNBlock models against their BatchNorm baselines, measured in the same run.

For each XBN model the baseline is its timm base architecture (``xbn_resnet50`` -> ``resnet50``).
Reports inference and training-step images/s with channels_last off and on, and the XBN/BN ratio.

    python benchmarks/throughput.py                                   # CPU defaults (small)
    python benchmarks/throughput.py --device cuda --batch-size 64 --img-size 224 --amp \
        --models xbn_resnet50 xbn_resnet50_d2 xbn_resnext50_32x4d
    python benchmarks/throughput.py --tiny                            # seconds (the test; numbers meaningless)
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torch
from rich.console import Console
from rich.table import Table

import timm_xbn  # noqa: F401  (registers xbn_* models)
from timm_xbn.models import XBN_VARIANTS

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def images_per_second(step: Callable[[], None], batch_size: int, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def make_steps(name: str, args: argparse.Namespace, channels_last: bool) -> Dict[str, Callable[[], None]]:
    """Inference and training-step closures for model ``name`` on a fixed random batch."""
    device = torch.device(args.device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(name, num_classes=1000).to(device=device, memory_format=memory_format)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    if args.compile:
        model = torch.compile(model)
    amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp_dtype else torch.bfloat16 if device.type == "cpu" else torch.float16
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def infer() -> None:
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            model(x)

    def train_step() -> None:
        model.train()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"infer": infer, "train": train_step}


def measure_pair(xbn: str, bn: str, args: argparse.Namespace, channels_last: bool) -> Dict[str, Dict[str, float]]:
    """Median images/s of both models, timed in alternating rounds so load drift hits both alike."""
    device = torch.device(args.device)
    steps = {name: make_steps(name, args, channels_last) for name in (xbn, bn)}
    samples: Dict[str, Dict[str, List[float]]] = {name: {"infer": [], "train": []} for name in steps}
    for mode in ("infer", "train"):
        for name in steps:
            for _ in range(args.warmup):
                steps[name][mode]()
        for _ in range(args.rounds):
            for name in steps:
                samples[name][mode].append(images_per_second(steps[name][mode], args.batch_size, args.steps, device))
    return {name: {mode: statistics.median(v) for mode, v in modes.items()} for name, modes in samples.items()}


def baseline_of(name: str) -> str:
    if name not in XBN_VARIANTS:
        raise SystemExit(f"{name} is not a registered xbn_* variant: {sorted(XBN_VARIANTS)}")
    return XBN_VARIANTS[name]["base"]


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Print the table; return its rows with the numbers unformatted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["xbn_resnet50", "xbn_resnet50_d2", "xbn_resnet50_in"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating XBN/BN rounds; the median is reported")
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU unless --amp-dtype)")
    parser.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default=None, help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--no-channels-last", action="store_true", help="only measure the contiguous layout")
    parser.add_argument("--tiny", action="store_true", help="xbn_resnet26, batch 2 at 32 px, one step (the test)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.batch_size, args.img_size, args.warmup, args.steps, args.rounds = ["xbn_resnet26"], 2, 32, 1, 1, 1
    torch.backends.cudnn.benchmark = True

    layouts: List[bool] = [False] if args.no_channels_last else [False, True]
    table = Table(title=f"images/s on {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
                        f"batch {args.batch_size}, {args.img_size}px, amp={args.amp}")
    for column in ("model", "baseline", "channels_last", "infer XBN", "infer BN", "infer ratio", "train XBN", "train BN", "train ratio"):
        table.add_column(column, justify="right" if column not in ("model", "baseline") else "left")
    rows = []
    for name in args.models:
        base = baseline_of(name)
        for channels_last in layouts:
            result = measure_pair(name, base, args, channels_last)
            xbn, bn = result[name], result[base]
            rows.append({"model": name, "baseline": base, "channels_last": channels_last,
                         **{f"{mode}_{side}": r[mode] for side, r in (("xbn", xbn), ("bn", bn)) for mode in ("infer", "train")},
                         **{f"{mode}_ratio": xbn[mode] / bn[mode] for mode in ("infer", "train")}})
            table.add_row(name, base, str(channels_last),
                          f"{xbn['infer']:.1f}", f"{bn['infer']:.1f}", f"{xbn['infer'] / bn['infer']:.2f}",
                          f"{xbn['train']:.1f}", f"{bn['train']:.1f}", f"{xbn['train'] / bn['train']:.2f}")
    Console(width=160).print(table)
    return rows


if __name__ == "__main__":
    main()
