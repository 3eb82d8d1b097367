"""Test-time adaptation on real data, on a CPU: Fashion-MNIST networks with BN, all-GN and XBN-P2
norms under the package's corruptions (severity 5 and 3), with source / norm / prior / batch / TENT / SAR.

Setup (all seeded, see ``--seed``): the Section 5 study's narrow timm ResNet-26 at 32 px
(``timm_xbn.study.resnet``: channels 8-64, no stem pool). "BN" is that network; "all-GN" replaces
every BN (stem and downsample included) with GroupNorm, 8 groups; "XBN-P2" converts the second BN
of every bottleneck to GroupNorm (8 groups), the paper's XBNBlock-P2. All three start from the same
initial weights and are trained the same way (SGD momentum 0.9, lr 0.05, warmup + cosine, batch
128, weight decay 1e-4) on a seeded subset of the training split. The test subset is corrupted
once per (corruption, severity) with ``corrupt_batch`` (seeded), read in a seeded random order in
batches of 64; each method runs episodically (reset per corruption x severity) and TENT, EATA and
SAR also continually (one stream: the 15 corruptions at severity 5, then at severity 3, never reset).

    python benchmarks/tta_demo.py                       # ~4 CPU-minutes at 1 thread; writes docs/tta/
    python benchmarks/tta_demo.py --quick -o /tmp/tta   # a smoke run (numbers meaningless)
"""
import argparse
import json
import time
from pathlib import Path
from statistics import fmean

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from timm_xbn.adapt import create_adapter, run_protocol
from timm_xbn.corruptions import CORRUPTIONS, corrupt_batch
from timm_xbn.study.data import load_fashion_mnist, subset
from timm_xbn.study.resnet import ImageSplit, ResNetConfig, build_variants, evaluate_top1, prepare_images, train_classifier
from timm_xbn.stats.moments import bn_modules
from timm_xbn.surgery import XBNConfig, build_bfn_for, replace_module

METHODS = ("source", "norm", "prior:16", "batch", "tent:optimizer=adam,lr=0.001", "eata", "sar")
CONTINUAL = ("tent:optimizer=adam,lr=0.001", "eata", "sar")  # also run as one stream through all 30 pairs
SEVERITIES = (5, 3)


def all_gn(model: nn.Module, groups: int) -> nn.Module:
    """``model`` with every BatchNorm replaced by a GroupNorm of ``groups`` groups (affine weights kept)."""
    for name, bn in bn_modules(model):
        replace_module(model, name, build_bfn_for(bn, XBNConfig(bfn="gn", groups=groups)))
    return model


def networks(cfg: ResNetConfig, seed: int) -> dict:
    variants = build_variants(cfg, num_classes=10, seed=seed)
    return {"BN": variants["BN"], "all-GN": all_gn(build_variants(cfg, 10, seed)["BN"], cfg.gn_groups),
            "XBN-P2": variants["XBN-GN"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test-samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/tta"))
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.epochs, args.test_samples = 256, 1, 128
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_fashion_mnist()
    cfg = ResNetConfig(train_samples=args.train_samples, epochs=args.epochs)
    x, y = subset(data.train_x, data.train_y, args.train_samples, args.seed)
    x = prepare_images(x, cfg.image_size)
    train = ImageSplit(x, y, x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
    tx, ty = subset(data.test_x, data.test_y, args.test_samples, args.seed + 1)
    test = ImageSplit(prepare_images(tx, cfg.image_size), ty, train.mean, train.std)

    models, clean = networks(cfg, args.seed), {}
    for label, model in models.items():
        train_classifier(model, train, cfg, seed=args.seed)
        clean[label] = 100.0 - evaluate_top1(model, test.batches(args.batch_size))
    trained = time.perf_counter() - start

    order = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(args.seed))
    streams = {}
    for severity in SEVERITIES:
        for corruption in CORRUPTIONS:
            generator = torch.Generator().manual_seed(args.seed * 1000 + severity)
            shifted = corrupt_batch(test.x[order], corruption, severity, generator)
            batches = list(zip(*[(test.normalize(shifted[i:i + args.batch_size]), test.y[order][i:i + args.batch_size])
                                 for i in range(0, len(order), args.batch_size)]))
            streams[f"{corruption}/{severity}"] = (lambda b=batches: zip(*b))
    errors, passes = {}, {}
    plan = [(m, "episodic") for m in METHODS] + [(m, "continual") for m in CONTINUAL]
    with Progress(transient=True) as bar:
        task = bar.add_task("adapting", total=len(models) * len(plan))
        for label, model in models.items():
            for method, protocol in plan:
                runs = run_protocol(create_adapter(model, method), streams, protocol)
                errors[(label, method, protocol)] = {key: r["top1_error"] for key, r in runs.items()}
                passes[(label, method, protocol)] = {k: sum(r[k] for r in runs.values()) / sum(r["count"] for r in runs.values())
                                                     for k in ("forward", "backward")}
                bar.advance(task)
    elapsed = time.perf_counter() - start

    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for (label, method, protocol), errs in errors.items():
        name = method.split(":")[0] + (" (cont.)" if protocol == "continual" else "")
        row = {"model": label, "method": name, "clean (source)": clean[label]}
        for severity in SEVERITIES:
            row[f"mean sev {severity}"] = fmean(errs[f"{c}/{severity}"] for c in CORRUPTIONS)
        row.update({c: errs[f"{c}/5"] for c in CORRUPTIONS})
        row.update({"fwd/img": passes[(label, method, protocol)]["forward"], "bwd/img": passes[(label, method, protocol)]["backward"]})
        rows.append(row)
    settings = {**{k: v for k, v in vars(args).items() if k != "output"}, "methods": METHODS, "continual": CONTINUAL,
                "severities": SEVERITIES,
                "train_seconds": round(trained), "total_seconds": round(elapsed), "torch": torch.__version__}
    (args.output / "tta_demo.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    table = Table(title=f"Fashion-MNIST test top-1 error (%), {args.test_samples} images; "
                        f"per corruption at severity 5 ({elapsed / 60:.1f} min at {args.threads} thread(s))")
    for column in rows[0]:
        table.add_column(column[:9], justify="left" if column in ("model", "method") else "right")
    for row in rows:
        table.add_row(*[v if isinstance(v, str) else f"{v:.2f}" if k.endswith("/img") else f"{v:.1f}" for k, v in row.items()])
    Console(width=260).print(table)
    plot(rows, args.output / "tta_demo.png")
    print(f"wrote {args.output / 'tta_demo.json'} and {args.output / 'tta_demo.png'}")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(SEVERITIES), figsize=(13, 3.8), sharey=True)
    for ax, severity in zip(axes, SEVERITIES):
        for i, model in enumerate(models):
            values = [next(r[f"mean sev {severity}"] for r in rows if r["model"] == model and r["method"] == m) for m in methods]
            ax.bar(np.arange(len(methods)) + (i - 1) * 0.27, values, 0.27, label=model)
        ax.set_xticks(range(len(methods)), methods, fontsize=7, rotation=30, ha="right")
        ax.set_title(f"mean over the 15 corruptions, severity {severity}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 error (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
