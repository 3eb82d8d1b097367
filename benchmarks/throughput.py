"""Throughput of XBNBlock models against their BatchNorm baselines, measured in the same run.

For each XBN model the baseline is its timm base architecture (``xbn_resnet50`` -> ``resnet50``).
Reports inference and training-step images/s with channels_last off and on, and the XBN/BN ratio.

    python benchmarks/throughput.py                                   # CPU defaults (small)
    python benchmarks/throughput.py --device cuda --batch-size 64 --img-size 224 --amp \
        --models xbn_resnet50 xbn_resnet50_d2 xbn_resnext50_32x4d
"""
import argparse
import time
from typing import Callable, Dict, List

import timm
import torch
from rich.console import Console
from rich.table import Table

import timm_xbn  # noqa: F401  (registers xbn_* models)
from timm_xbn.models import XBN_VARIANTS


def images_per_second(step: Callable[[], None], batch_size: int, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace, channels_last: bool) -> Dict[str, float]:
    device = torch.device(args.device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(name, num_classes=1000).to(device=device, memory_format=memory_format)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16, enabled=args.amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def infer() -> None:
        with torch.no_grad(), autocast:
            model(x)

    def train_step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.eval()
    infer_ips = images_per_second(infer, args.batch_size, args.warmup, args.steps, device)
    model.train()
    train_ips = images_per_second(train_step, args.batch_size, args.warmup, args.steps, device)
    return {"infer": infer_ips, "train": train_ips}


def baseline_of(name: str) -> str:
    if name not in XBN_VARIANTS:
        raise SystemExit(f"{name} is not a registered xbn_* variant: {sorted(XBN_VARIANTS)}")
    return XBN_VARIANTS[name]["base"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["xbn_resnet50", "xbn_resnet50_d2", "xbn_resnet50_in"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--no-channels-last", action="store_true", help="only measure the contiguous layout")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True

    layouts: List[bool] = [False] if args.no_channels_last else [False, True]
    table = Table(title=f"images/s on {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
                        f"batch {args.batch_size}, {args.img_size}px, amp={args.amp}")
    for column in ("model", "baseline", "channels_last", "infer XBN", "infer BN", "infer ratio", "train XBN", "train BN", "train ratio"):
        table.add_column(column, justify="right" if column not in ("model", "baseline") else "left")
    cache: Dict[tuple, Dict[str, float]] = {}
    for name in args.models:
        base = baseline_of(name)
        for channels_last in layouts:
            for model_name in (name, base):
                if (model_name, channels_last) not in cache:
                    cache[(model_name, channels_last)] = measure(model_name, args, channels_last)
            xbn, bn = cache[(name, channels_last)], cache[(base, channels_last)]
            table.add_row(name, base, str(channels_last),
                          f"{xbn['infer']:.1f}", f"{bn['infer']:.1f}", f"{xbn['infer'] / bn['infer']:.2f}",
                          f"{xbn['train']:.1f}", f"{bn['train']:.1f}", f"{xbn['train'] / bn['train']:.2f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
