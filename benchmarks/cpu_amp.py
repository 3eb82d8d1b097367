"""One CPU training step of xbn_resnet50 under torch.autocast: float16 vs bfloat16 vs float32 (no autocast).

Why the recipes tell timm's train.py users on a CPU to add ``--amp-dtype bfloat16``: the recipes set
``amp: true``, and train.py then autocasts to float16, also on a CPU.

    python benchmarks/cpu_amp.py [--threads 1] [--batch 4] [--size 160]
    python benchmarks/cpu_amp.py --tiny          # seconds (the test; numbers meaningless)
"""
import argparse
import sys
import time
from contextlib import nullcontext
from typing import List, Optional, Sequence

import timm
import torch

import timm_xbn  # noqa: F401  (registers the xbn_* models)
from timm_xbn.commands.vocabulary import RENAMED, translate_argv


def step_seconds(model, optimizer, x, y, dtype) -> float:
    """Seconds of one forward + backward + SGD step, autocast to ``dtype`` (None = float32)."""
    context = torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()
    start = time.perf_counter()
    with context:
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Print the table; return its rows with the numbers unformatted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-b", "--batch-size", dest="batch", type=int, default=4)
    parser.add_argument("--img-size", dest="size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="batch 2 at 32 px, one timing (the test)")
    args = parser.parse_args(translate_argv(sys.argv[1:] if argv is None else argv, RENAMED["benchmarks/cpu_amp.py"]))
    if args.tiny:
        args.batch, args.size, args.repeats = 2, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("xbn_resnet50")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 1000, (args.batch,))
    print(f"xbn_resnet50, batch {args.batch} at {args.size} px, {args.threads} thread(s), best of {args.repeats} after a warm-up step")
    print("| autocast | s/step | vs float32 |\n|---|---|---|")
    baseline, rows = None, []
    for name, dtype in (("off (float32, baseline)", None), ("bfloat16", torch.bfloat16), ("float16 (train.py's default)", torch.float16)):
        step_seconds(model, optimizer, x, y, dtype)
        seconds = min(step_seconds(model, optimizer, x, y, dtype) for _ in range(args.repeats))
        baseline = baseline or seconds
        rows.append({"autocast": name, "s_per_step": seconds, "vs_float32": seconds / baseline})
        print(f"| {name} | {seconds:.2f} | {seconds / baseline:.2f}x |", flush=True)
    return rows


if __name__ == "__main__":
    main()
