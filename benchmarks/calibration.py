"""Does calibration keep a trained BN network's accuracy through the surgery? (the README's table)

Small BN networks of three timm families are trained on Fashion-MNIST (32 px, grey repeated to RGB)
and converted with P1/P2/P3 x GN/IN (every block) and P2-GN-D2 (every 2nd block). Top-1 on held-out
test images of: the BN original; the naive conversion; naive + BN re-estimation (AdaBN on the
calibration images); the calibrated conversion (``timm_xbn.calibrate`` on unlabeled training images
the networks were not trained on); calibrated + a short fine-tune, and for reference the same fine-tune
of the naive conversion and of the BN original. Each calibration is timed.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py                 # one training seed (~7 min)
    OMP_NUM_THREADS=1 python benchmarks/calibration.py --seeds 0 1     # the README's table

Trained originals and finished rows are kept in ``--out`` (default ``xbn_results/calibration``), so a
rerun or an interrupted run only computes what is missing.
"""
import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from timm.models.regnet import RegNet, RegNetCfg

import timm_xbn
from timm_xbn.stats import recalibrate
from timm_xbn.study.data import load_fashion_mnist, subset
from timm_xbn.study.resnet import ImageSplit, ResNetConfig, evaluate_top1, prepare_images, train_classifier

IMAGE_SIZE = 32
TRAIN = ResNetConfig(train_samples=12000, epochs=1, batch_size=128, lr=0.2, warmup_steps=20)
FINETUNE = dataclasses.replace(TRAIN, train_samples=2048, batch_size=64, lr=0.02, warmup_steps=0)
CALIB_IMAGES, EVAL_IMAGES, GN_GROUPS = 512, 1000, 8
VARIANTS = {  # label -> convert() settings
    **{f"P{p}-{n.upper()}": dict(position=p, bfn=n) for p in (1, 2, 3) for n in ("gn", "in")},
    "P2-GN-D2": dict(position=2, bfn="gn", every=2),
}
ROWS = ("BN original", "BN original + fine-tune", "naive", "naive + BN re-estimation", "naive + fine-tune", "calibrated",
        "calibrated + fine-tune")


def _resnet() -> nn.Module:
    model = timm.create_model("resnet26", num_classes=10, channels=(8, 16, 32, 64), stem_width=8)
    model.maxpool = nn.Identity()  # as in the study: 32 px inputs keep 2x2 maps in the last stage
    return model


def _efficientnet() -> nn.Module:
    arch = [["ir_r1_k3_s1_e1_c8"], ["ir_r2_k3_s2_e4_c16"], ["ir_r2_k3_s2_e4_c24"], ["ir_r2_k3_s2_e4_c32"]]
    return EfficientNet(block_args=decode_arch_def(arch), stem_size=8, num_features=256, num_classes=10)


def _regnet() -> nn.Module:
    return RegNet(RegNetCfg(depth=6, w0=16, wa=12.0, wm=1.6, group_size=8), num_classes=10, output_stride=16)


FAMILIES: Dict[str, Callable[[], nn.Module]] = {
    "resnet": _resnet,  # timm resnet26, one bottleneck per stage x2, widths 8-64: 8 blocks
    "efficientnet": _efficientnet,  # timm EfficientNet, 7 InvertedResiduals (3 BNs each), widths 8-32
    "regnet": _regnet,  # timm RegNet, 6 bottlenecks, widths 16-64, fused BN+ReLU
}


def load_splits(seed: int):
    """Training images, calibration images (from the training split, not trained on), test images."""
    data = load_fashion_mnist()
    x, y = subset(data.train_x, data.train_y, TRAIN.train_samples + CALIB_IMAGES, seed=0)
    x = prepare_images(x, IMAGE_SIZE)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    train = ImageSplit(x[:TRAIN.train_samples], y[:TRAIN.train_samples], mean, std)
    calib = ImageSplit(x[TRAIN.train_samples:], y[TRAIN.train_samples:], mean, std)
    test = ImageSplit(prepare_images(data.test_x[:EVAL_IMAGES], IMAGE_SIZE), data.test_y[:EVAL_IMAGES], mean, std)
    return train, calib, test


def trained_original(family: str, seed: int, train: ImageSplit, out: Path) -> nn.Module:
    path = out / f"{family}_seed{seed}.safetensors"
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
    else:
        train_classifier(model, train, TRAIN, seed=seed)
        save_file(model.state_dict(), str(path))
    return model.eval()


def finetuned(model: nn.Module, train: ImageSplit, seed: int) -> nn.Module:
    """A copy of ``model`` trained on the same ``FINETUNE.train_samples`` images for every model of a seed."""
    x, y = subset(train.x, train.y, FINETUNE.train_samples, seed=seed + 1)
    model = copy.deepcopy(model)
    train_classifier(model, ImageSplit(x, y, train.mean, train.std), FINETUNE, seed=seed)
    return model


def measure(family: str, seed: int, variant: str, original: nn.Module, splits) -> Dict[str, float]:
    train, calib, test = splits
    settings = dict(groups=GN_GROUPS, **VARIANTS[variant])
    batches = [x for x, _ in calib.batches(128)]
    top1 = lambda model: evaluate_top1(model, test.batches(250))  # noqa: E731
    naive = timm_xbn.convert(original, **settings).model
    row = {"naive": top1(naive), "naive + BN re-estimation": top1(recalibrate(naive, batches))}
    row["naive + fine-tune"] = top1(finetuned(naive, train, seed))
    converted = timm_xbn.convert(original, affine=True, **settings).model
    result = timm_xbn.calibrate(converted, original, batches)
    row.update({"calibrated": top1(result.model), "calibration s": result.seconds,
                "R2 mean": sum(f.r2_mean for f in result.fits) / len(result.fits)})
    row["calibrated + fine-tune"] = top1(finetuned(result.model, train, seed))
    return row


def _cell(values: List[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def print_tables(results: Dict[str, dict], families: List[str], seeds: List[int]) -> None:
    for family in families:
        runs = [results[f"{family}/{s}"] for s in seeds if f"{family}/{s}" in results]
        print(f"\n{family}: top-1 % on {EVAL_IMAGES} Fashion-MNIST test images, {len(runs)} training seed(s)"
              + (" (mean, min-max)" if len(runs) > 1 else ""))
        print("| | " + " | ".join(VARIANTS) + " |")
        print("|---|" + "---|" * len(VARIANTS))
        for row in ROWS:
            if row.startswith("BN original"):
                cells = [_cell([r[row] for r in runs])] * len(VARIANTS)
            else:
                cells = [_cell([r[v][row] for r in runs]) for v in VARIANTS]
            print(f"| {row} | " + " | ".join(cells) + " |")
        print("| calibration time (s) | " + " | ".join(_cell([r[v]["calibration s"] for r in runs]) for v in VARIANTS) + " |")
        print("| mean R^2 of the fits | " + " | ".join(_cell([r[v]["R2 mean"] for r in runs], 3) for v in VARIANTS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("xbn_results/calibration"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    splits = load_splits(seed=0)
    start = time.perf_counter()
    for family in args.families:
        for seed in args.seeds:
            key = f"{family}/{seed}"
            original = trained_original(family, seed, splits[0], args.out)
            run = results.setdefault(key, {
                "BN original": evaluate_top1(original, splits[2].batches(250)),
                "BN original + fine-tune": evaluate_top1(finetuned(original, splits[0], seed), splits[2].batches(250)),
            })
            for variant in VARIANTS:
                if variant not in run:
                    run[variant] = measure(family, seed, variant, original, splits)
                    results_path.write_text(json.dumps(results, indent=1))
            print(f"{key} done after {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\ntrain: {TRAIN.train_samples} images, {TRAIN.epochs} epoch, batch {TRAIN.batch_size}, SGD lr {TRAIN.lr} "
          f"cosine; calibration: {CALIB_IMAGES} unlabeled training images (not trained on); fine-tune: 1 epoch over "
          f"{FINETUNE.train_samples} training images, batch {FINETUNE.batch_size}, lr {FINETUNE.lr} cosine; "
          f"GN {GN_GROUPS} groups (clamped); 1 thread; total {time.perf_counter() - start:.0f} s")
    print_tables(results, args.families, args.seeds)


if __name__ == "__main__":
    main()
