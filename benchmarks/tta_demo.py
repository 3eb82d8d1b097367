"""Test-time adaptation on real data, on a CPU: Fashion-MNIST networks with BN, all-GN and XBN-P2
norms under the package's corruptions (severity 5 and 3), with source / norm / prior / batch / TENT / EATA / SAR,
over several training seeds, each comparison as a mean with a 95 % interval over the seeds.

Setup (all seeded): the Section 5 study's narrow timm ResNet-26 at 32 px (``timm_xbn.study.resnet``:
channels 8-64, no stem pool). "BN" is that network; "all-GN" replaces every BN (stem and downsample
included) with GroupNorm, 8 groups (the study's "GN"); "XBN-P2" converts the second BN of every
bottleneck to GroupNorm (8 groups), the paper's XBNBlock-P2 (the study's "XBN-GN"). For each training
seed the three start from the same initial weights and are trained the same way (SGD momentum 0.9, lr
0.05, warmup + cosine, batch 128, weight decay 1e-4) on one seeded subset of the training split, in the
seed's data order. The test subset is corrupted once per (corruption, severity) (seeded, the same
pixels for every seed and network), read in one seeded random order in batches of 64; each method runs
episodically (reset per corruption x severity) and TENT, EATA and SAR also continually (one stream: the
15 corruptions at severity 5, then at severity 3, never reset).

Comparisons (``COMPARISONS``) are paired by training seed (the same seed's networks on the same
images): mean difference of the error means over the 15 corruptions, with a Student-t 95 % interval
over the seeds (``timm_xbn.study.evidence``); "lower" / "higher" when the interval excludes 0, else
"inconclusive"; "seed-sensitive" when leaving out one of the seeds changes the verdict (``seed_stable``).

    python benchmarks/tta_demo.py                       # 5 seeds, ~20 min at 1 thread; writes docs/tta/
    python benchmarks/tta_demo.py --tiny -o /tmp/tta    # seconds (the test; numbers meaningless)
    python benchmarks/tta_demo.py --portable            # the committed docs/tta: the same bits on any x86-64 CPU
"""
import argparse
import json
import time
from pathlib import Path
from statistics import fmean
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from timm_xbn.adapt import create_adapter, run_protocol
from timm_xbn.corruptions import CORRUPTIONS, corrupt_batch
from timm_xbn.utils.portable import ensure_portable_or_exit, mode_note
from timm_xbn.utils.provenance import provenance, script_command, stamp
from timm_xbn.study.data import load_fashion_mnist, subset
from timm_xbn.study.evidence import CONTRADICTED, HOLDS, paired_effect
from timm_xbn.study.resnet import ImageSplit, ResNetConfig, build_variant, evaluate_top1, prepare_images, train_classifier
from timm_xbn.utils.files import write_text_atomic

MODELS = {"BN": "BN", "all-GN": "GN", "XBN-P2": "XBN-GN"}  # demo label -> the study's variant
METHODS = ("source", "norm", "prior:16", "batch", "tent:optimizer=adam,lr=0.001", "eata", "sar")
CONTINUAL = ("tent:optimizer=adam,lr=0.001", "eata", "sar")  # also run as one stream through all 30 pairs
SEVERITIES = (5, 3)
PASSES = {"fwd/img": "forward", "bwd/img": "backward"}  # table column -> run_protocol's count
IMAGE_SIZE = 32
# (name, (model, method), (baseline model, baseline method)): the comparisons the README states, at each severity
COMPARISONS: Tuple[Tuple[str, Tuple[str, str], Tuple[str, str]], ...] = (
    *((f"{m}: {a} - source", (m, a), (m, "source")) for m in ("BN", "XBN-P2") for a in ("norm", "prior", "batch")),
    *((f"{m}: {a} - batch", (m, a), (m, "batch")) for m in MODELS
      for a in ("tent", "eata", "sar", "tent (cont.)", "eata (cont.)", "sar (cont.)")),
    *((f"{m}: tent (cont.) - tent", (m, "tent (cont.)"), (m, "tent")) for m in MODELS),
    *((f"XBN-P2 - BN: {a}", ("XBN-P2", a), ("BN", a)) for a in ("source", "norm", "batch")),
    ("XBN-P2 norm - all-GN source", ("XBN-P2", "norm"), ("all-GN", "source")),
    ("BN norm - all-GN source", ("BN", "norm"), ("all-GN", "source")),
)


def method_name(method: str, protocol: str) -> str:
    """The table's name of a method spec: ``tent:optimizer=adam,lr=0.001`` continual -> ``tent (cont.)``."""
    return method.split(":")[0] + (" (cont.)" if protocol == "continual" else "")


def load_splits(args: argparse.Namespace) -> Tuple[ImageSplit, ImageSplit]:
    """The seeded training and test subsets at 32 px, normalized with the training statistics."""
    data = load_fashion_mnist()
    x, y = subset(data.train_x, data.train_y, args.train_samples, args.data_seed)
    x = prepare_images(x, IMAGE_SIZE)
    train = ImageSplit(x, y, x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
    tx, ty = subset(data.test_x, data.test_y, args.test_samples, args.data_seed + 1)
    return train, ImageSplit(prepare_images(tx, IMAGE_SIZE), ty, train.mean, train.std)


def corrupted_streams(test: ImageSplit, corruptions: Sequence[str], batch_size: int, seed: int) -> Dict[str, object]:
    """``{"corruption/severity": batches()}``: every test image corrupted once, read in one seeded order."""
    order = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(seed))
    streams = {}
    for severity in SEVERITIES:
        for index, corruption in enumerate(corruptions):
            generator = torch.Generator().manual_seed(seed * 1000 + severity * 100 + index)
            shifted = test.normalize(corrupt_batch(test.x, corruption, severity, generator))[order]
            labels = test.y[order]
            batches = [(shifted[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(order), batch_size)]
            streams[f"{corruption}/{severity}"] = lambda b=batches: iter(b)
    return streams


def train_networks(cfg: ResNetConfig, train: ImageSplit, steps: int, seed: int) -> Dict[str, nn.Module]:
    """The three networks of one training seed: same initial weights, same data order."""
    models = {}
    for label, variant in MODELS.items():
        model = build_variant(variant, cfg, num_classes=10, seed=seed)
        train_classifier(model, train, seed, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps, steps)
        models[label] = model
    return models


def seed_rows(models: Dict[str, nn.Module], test: ImageSplit, streams, corruptions: Sequence[str],
              batch_size: int) -> List[dict]:
    """One seed's table: per (model, method) the clean source error, the means per severity, the
    errors per corruption at severity 5 and the forward / backward passes per image."""
    rows = []
    plan = [(m, "episodic") for m in METHODS] + [(m, "continual") for m in CONTINUAL]
    for label, model in models.items():
        clean = 100.0 - evaluate_top1(model, test.batches(batch_size))
        for method, protocol in plan:
            runs = run_protocol(create_adapter(model, method), streams, protocol)
            images = sum(r["count"] for r in runs.values())
            row = {"model": label, "method": method_name(method, protocol), "clean (source)": clean}
            row.update({f"mean sev {s}": fmean(runs[f"{c}/{s}"]["top1_error"] for c in corruptions) for s in SEVERITIES})
            row.update({c: runs[f"{c}/5"]["top1_error"] for c in corruptions})
            row.update({column: sum(r[key] for r in runs.values()) / images for column, key in PASSES.items()})
            rows.append(row)
    return rows


def _interval(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and 95 % t-interval half-width over seeds (the paired effect against zero)."""
    effect = paired_effect("mean", values, [0.0] * len(values), direction=1)
    return effect.mean, effect.ci_high - effect.mean


def summary_rows(per_seed: List[List[dict]]) -> List[dict]:
    """Every number averaged over the seeds; the two severity means also get their 95 % half-width."""
    rows = []
    for i, first in enumerate(per_seed[0]):
        row = {"model": first["model"], "method": first["method"]}
        for key in first:
            if key in row:
                continue
            values = [seed[i][key] for seed in per_seed]
            if key.startswith("mean sev"):
                row[key], row[f"{key} ±"] = _interval(values)
            else:
                row[key] = fmean(values)
        rows.append(row)
    return rows


def _verdict(values: Sequence[float], baseline: Sequence[float], name: str = ""):
    """The paired effect of ``values`` vs ``baseline`` (seeds) and its verdict: lower / higher / inconclusive."""
    effect = paired_effect(name, values, baseline, direction=-1)
    return effect, {HOLDS: "lower", CONTRADICTED: "higher"}.get(effect.verdict, "inconclusive")


def seed_stable(values: Sequence[float], baseline: Sequence[float]) -> bool:
    """True when every leave-one-seed-out subset gives the verdict of all the seeds (docs/tta.md, "Verdicts that
    survive a second machine"): a verdict that one seed can flip is one another machine's rounding can flip.
    With 2 seeds a subset has no interval: not stable."""
    if len(values) < 3:
        return False
    verdict = _verdict(values, baseline)[1]
    return all(_verdict([*values[:i], *values[i + 1:]], [*baseline[:i], *baseline[i + 1:]])[1] == verdict
               for i in range(len(values)))


def effects(per_seed: List[List[dict]]) -> List[dict]:
    """``COMPARISONS`` at each severity: mean paired difference (points of error), 95 % interval, verdict and
    whether the verdict survives leaving out any one seed."""
    out = []
    for severity in SEVERITIES:
        key = f"mean sev {severity}"
        for name, (model, method), (base_model, base_method) in COMPARISONS:
            def values(m, a):
                return [next(r[key] for r in rows if r["model"] == m and r["method"] == a) for rows in per_seed]

            first, second = values(model, method), values(base_model, base_method)
            effect, verdict = _verdict(first, second, name)
            out.append({"comparison": name, "severity": severity, "mean": effect.mean, "ci_low": effect.ci_low,
                        "ci_high": effect.ci_high, "verdict": verdict, "seed_stable": seed_stable(first, second),
                        "per_seed": effect.per_seed})
    return out


def markdown(rows: List[dict], effect_rows: List[dict], settings: dict) -> str:
    """The README's two tables: errors (mean over seeds) and the comparisons with their intervals."""
    def cell(key, value):
        return value if isinstance(value, str) else f"{value:.2f}" if key.endswith("/img") else f"{value:.1f}"

    n = len(settings["seeds"])
    columns = [k for k in rows[0] if not k.endswith("±")]
    lines = ["", mode_note(), "", f"Top-1 error (%), mean over {n} training seeds ({settings['test_samples']} test images; ± is the 95 % "
             f"interval over the seeds); per corruption at severity 5.", "",
             "| " + " | ".join(c[:5] if c in CORRUPTIONS else c for c in columns) + " |",
             "|" + "|".join("---" if c in ("model", "method") else "---:" for c in columns) + "|"]
    for row in rows:
        cells = [f"{row[c]:.1f} ± {row[c + ' ±']:.1f}" if c.startswith("mean sev") else cell(c, row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences of the mean error over the corruptions (points; negative: the first has lower "
                  f"error), mean over {n} seeds with the 95 % t-interval; a verdict that leaving out one seed changes "
                  f"is marked seed-sensitive (docs/tta.md):", "",
              "| comparison | severity | mean | 95 % interval | verdict |", "|---|---:|---:|---|---|"]
    for e in effect_rows:
        lines.append(f"| {e['comparison']} | {e['severity']} | {e['mean']:+.1f} | "
                     f"[{e['ci_low']:+.1f}, {e['ci_high']:+.1f}] | {e['verdict']}"
                     f"{'' if e['seed_stable'] else ' (seed-sensitive)'} |")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: Path) -> None:
    """Mean error over the corruptions per method, one panel per severity, bars with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(SEVERITIES), figsize=(13, 3.8), sharey=True)
    for ax, severity in zip(axes, SEVERITIES):
        key = f"mean sev {severity}"
        for i, model in enumerate(models):
            picked = [next(r for r in rows if r["model"] == model and r["method"] == m) for m in methods]
            ax.bar(np.arange(len(methods)) + (i - 1) * 0.27, [r[key] for r in picked], 0.27, label=model,
                   yerr=[r[f"{key} ±"] for r in picked], capsize=2)
        ax.set_xticks(range(len(methods)), methods, fontsize=7, rotation=30, ha="right")
        ax.set_title(f"mean over the corruptions, severity {severity} (95 % interval over seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 error (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=6000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--test-samples", type=int, default=256)
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 (at least 2 for an interval)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the data subsets, the order and the corruptions")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--portable", action="store_true", help="portable mode: the same numbers on any x86-64 CPU")
    parser.add_argument("--tiny", action="store_true", help="tiny settings for a test run in seconds (numbers meaningless)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/tta"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.train_samples, args.epochs, args.test_samples, args.batch_size, args.seeds = 128, 1, 16, 16, 2
        args.corruptions = "gaussian_noise"
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: the intervals are over training seeds")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.portable:  # before any computing: may re-execute this command
        ensure_portable_or_exit(threads=args.threads)
    torch.set_num_threads(args.threads)
    prov = provenance(script_command(__file__, argv))
    start = time.perf_counter()
    corruptions = args.corruptions.split(",")
    cfg = ResNetConfig(arch="resnet26", channels=(8, 16, 32, 64), gn_groups=8, batch_size=128, lr=0.05,
                       weight_decay=1e-4, warmup_steps=20, stem_bfn=False)  # the committed docs/tta layout: BN stem
    train, test = load_splits(args)
    steps = int(args.epochs * len(train.y)) // cfg.batch_size
    streams = corrupted_streams(test, corruptions, args.batch_size, args.data_seed)
    per_seed, train_seconds = [], 0.0
    for seed in range(args.seeds):
        tick = time.perf_counter()
        models = train_networks(cfg, train, steps, seed)
        train_seconds += time.perf_counter() - tick
        per_seed.append(seed_rows(models, test, streams, corruptions, args.batch_size))
        print(f"seed {seed} done, {time.perf_counter() - start:.0f} s", flush=True)
    rows, effect_rows = summary_rows(per_seed), effects(per_seed)
    settings = {**{k: v for k, v in vars(args).items() if k not in ("output", "seeds")}, "seeds": list(range(args.seeds)),
                "train_steps": steps, "methods": METHODS, "continual": CONTINUAL, "severities": SEVERITIES,
                "train_seconds": round(train_seconds), "total_seconds": round(time.perf_counter() - start)}
    args.output.mkdir(parents=True, exist_ok=True)
    paths = [args.output / name for name in ("tta_demo.json", "tta_demo.md", "tta_demo.png")]
    write_text_atomic(paths[0], json.dumps({"settings": settings, "rows": rows, "effects": effect_rows, "per_seed": per_seed}))
    write_text_atomic(paths[1], markdown(rows, effect_rows, settings))
    plot(rows, paths[2])
    for path in paths:
        stamp(path, prov)
    print(paths[1].read_text())
    print(f"wrote {', '.join(map(str, paths))} ({settings['total_seconds']} s, {settings['train_seconds']} s training)")


if __name__ == "__main__":
    main()
