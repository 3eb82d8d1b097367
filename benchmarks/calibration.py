"""Does surgery keep a trained BN network's accuracy? Naive vs calibrated conversion, each BN re-estimation choice.

Small BN networks of three timm families (ResNet, RegNet, EfficientNet/MobileNetV2-style) are trained on
Fashion-MNIST (32 px, grey repeated to RGB), one network per training seed, and converted with P1/P2/P3-GN,
P2/P3-IN (every block) and P2-GN-D2 (every 2nd block). Top-1 on held-out test images of: the BN original;
the naive conversion (``timm_xbn.convert``: the BFNs keep the BNs' weight and bias); the calibrated one
(``timm_xbn.calibrate`` on unlabeled training images the networks were not trained on); each followed by
each BN re-estimation choice (``none``, ``full``, ``mix`` with N = the training images); and the
calibrated one after a short fine-tune. Cells: mean and 95 % t interval over the training seeds.

The default re-estimation is chosen by a rule fixed before the measurement (``choose_default``): a choice
replaces ``none`` only if, paired by seed against the same conversion without re-estimation, its 95 %
interval lies above zero in at least one calibrated cell and below zero in none; among such choices the
one with more cells above zero wins, ties going to ``mix`` (it moves the statistics least).

    OMP_NUM_THREADS=1 python benchmarks/calibration.py          # docs/calibration.md (about 8 min of one core)
    OMP_NUM_THREADS=1 python benchmarks/calibration.py --tiny   # seconds: a smoke run (xbn_results/calibration_tiny)
    python benchmarks/calibration.py --portable                 # the committed table: the same bits on any x86-64 CPU
"""
import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from timm.models.regnet import RegNet, RegNetCfg

import timm_xbn
from timm_xbn.calibration import REESTIMATE_CHOICES, reestimate_bns
from timm_xbn.commands.vocabulary import RENAMED, translate_argv
from timm_xbn.study.data import load_fashion_mnist, subset
from timm_xbn.study.evidence import INCONCLUSIVE, paired_effect
from timm_xbn.study.resnet import ImageSplit, evaluate_top1, prepare_images, train_classifier
from timm_xbn.utils.files import write_text_atomic
from timm_xbn.utils.portable import ensure_portable_or_exit, mode_note
from timm_xbn.utils.provenance import provenance, script_command, stamp

OUTPUT_NAME = "calibration.md"


@dataclass(frozen=True)
class Setting:
    """Sizes of one run: training, fine-tune, calibration and test images; seeds; conversions."""

    train_samples: int = 12000
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.2
    warmup_steps: int = 20
    finetune_samples: int = 2048
    finetune_batch_size: int = 64
    finetune_lr: float = 0.02
    calib_images: int = 512
    eval_images: int = 1000
    image_size: int = 32
    gn_groups: int = 8
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = ("P1-GN", "P2-GN", "P3-GN", "P2-IN", "P3-IN", "P2-GN-D2")

    def steps(self, samples: int, batch_size: int) -> int:
        return max(1, self.epochs * samples // batch_size)


FULL = Setting()
TINY = replace(FULL, train_samples=128, batch_size=32, warmup_steps=1, finetune_samples=32, finetune_batch_size=32,
               calib_images=32, eval_images=64, seeds=(0, 1), variants=("P3-IN",))

VARIANTS = {  # label -> convert() settings
    **{f"P{p}-{n.upper()}": dict(position=p, bfn=n) for p in (1, 2, 3) for n in ("gn", "in")},
    "P2-GN-D2": dict(position=2, bfn="gn", every=2),
}
ROWS = (*(f"naive + {c}" for c in REESTIMATE_CHOICES), *(f"calibrated + {c}" for c in REESTIMATE_CHOICES),
        "calibrated + fine-tune")


def _resnet() -> nn.Module:
    model = timm.create_model("resnet26", num_classes=10, channels=(8, 16, 32, 64), stem_width=8)
    model.maxpool = nn.Identity()  # as in the study: 32 px inputs keep 2x2 maps in the last stage
    return model


def _regnet() -> nn.Module:
    return RegNet(RegNetCfg(depth=6, w0=16, wa=12.0, wm=1.6, group_size=8), num_classes=10, output_stride=16)


def _efficientnet() -> nn.Module:
    arch = [["ir_r1_k3_s1_e1_c8"], ["ir_r2_k3_s2_e4_c16"], ["ir_r2_k3_s2_e4_c24"], ["ir_r2_k3_s2_e4_c32"]]
    return EfficientNet(block_args=decode_arch_def(arch), stem_size=8, num_features=256, num_classes=10)


FAMILIES: Dict[str, Callable[[], nn.Module]] = {
    "ResNet": _resnet,  # timm resnet26, one bottleneck per stage x2, widths 8-64: 8 blocks
    "RegNet": _regnet,  # timm RegNet, 6 bottlenecks, widths 16-64, fused BN+ReLU
    "EfficientNet": _efficientnet,  # timm EfficientNet (MobileNetV2-style), 7 InvertedResiduals, widths 8-32
}


def load_splits(setting: Setting):
    """Training images, calibration images (from the training split, not trained on), test images."""
    data = load_fashion_mnist()
    x, y = subset(data.train_x, data.train_y, setting.train_samples + setting.calib_images, seed=0)
    x = prepare_images(x, setting.image_size)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    n = setting.train_samples
    test_x = prepare_images(data.test_x[:setting.eval_images], setting.image_size)
    return (ImageSplit(x[:n], y[:n], mean, std), ImageSplit(x[n:], y[n:], mean, std),
            ImageSplit(test_x, data.test_y[:setting.eval_images], mean, std))


def train(model: nn.Module, split: ImageSplit, seed: int, samples: int, batch_size: int, lr: float,
          warmup_steps: int, setting: Setting) -> nn.Module:
    train_classifier(model, split, seed=seed, batch_size=batch_size, lr=lr, weight_decay=1e-4,
                     warmup_steps=warmup_steps, steps=setting.steps(samples, batch_size))
    return model.eval()


def trained_original(family: str, seed: int, split: ImageSplit, setting: Setting) -> nn.Module:
    torch.manual_seed(seed)
    return train(FAMILIES[family](), split, seed, setting.train_samples, setting.batch_size, setting.lr,
                 setting.warmup_steps, setting)


def finetuned(model: nn.Module, split: ImageSplit, seed: int, setting: Setting) -> nn.Module:
    """A copy of ``model`` trained on the same ``finetune_samples`` training images for every model of a seed."""
    x, y = subset(split.x, split.y, setting.finetune_samples, seed=seed + 1)
    return train(copy.deepcopy(model), ImageSplit(x, y, split.mean, split.std), seed, setting.finetune_samples,
                 setting.finetune_batch_size, setting.finetune_lr, 0, setting)


def measure(original: nn.Module, variant: str, seed: int, splits, setting: Setting) -> Dict[str, float]:
    """Top-1 of every row of one conversion of one trained network, plus the calibration's time and mean R^2."""
    train_split, calib, test = splits
    batches = [x for x, _ in calib.batches(128)]
    top1 = lambda model: evaluate_top1(model, test.batches(250))  # noqa: E731
    settings = dict(groups=setting.gn_groups, **VARIANTS[variant])
    naive = timm_xbn.convert(original, **settings).model
    result = timm_xbn.calibrate(naive, original, batches, reestimate="none")
    row = {"calibration s": result.seconds, "R2 mean": sum(f.r2_mean for f in result.fits) / len(result.fits)}
    for label, model in (("naive", naive), ("calibrated", result.model)):
        for choice in REESTIMATE_CHOICES:
            adapted = reestimate_bns(copy.deepcopy(model), batches, choice, source_images=setting.train_samples)
            row[f"{label} + {choice}"] = top1(adapted)
    row["calibrated + fine-tune"] = top1(finetuned(result.model, train_split, seed, setting))
    return row


def run(setting: Setting, log=print) -> Dict[str, dict]:
    """``{family: {"BN": [per seed], variant: {row: [per seed]}}}``."""
    torch.set_num_threads(1)
    splits = load_splits(setting)
    results: Dict[str, dict] = {}
    start = time.perf_counter()
    for family in FAMILIES:
        out = results[family] = {"BN": []}
        for seed in setting.seeds:
            original = trained_original(family, seed, splits[0], setting)
            out["BN"].append(evaluate_top1(original, splits[2].batches(250)))
            for variant in setting.variants:
                row = measure(original, variant, seed, splits, setting)
                cells = out.setdefault(variant, {})
                for key, value in row.items():
                    cells.setdefault(key, []).append(value)
            log(f"{family} seed {seed} done after {time.perf_counter() - start:.0f} s")
    return results


def interval(values: Sequence[float], digits: int = 1) -> str:
    """``mean [low, high]``: the 95 % t interval over the seeds (``timm_xbn.study.evidence``)."""
    effect = paired_effect("value", values, [0.0] * len(values), direction=1)
    return f"{effect.mean:.{digits}f} [{effect.ci_low:.{digits}f}, {effect.ci_high:.{digits}f}]"


def reestimation_effects(results: Dict[str, dict], base: str = "calibrated"):
    """Paired effects (points) of ``{base} + full`` and ``{base} + mix`` vs ``{base} + none``, per family and variant."""
    return {
        (family, variant, choice): paired_effect(f"{base} + {choice} - {base} + none", cells[f"{base} + {choice}"],
                                                 cells[f"{base} + none"], direction=1)
        for family, per in results.items() for variant, cells in per.items() if variant != "BN"
        for choice in REESTIMATE_CHOICES if choice != "none"
    }


def choose_default(results: Dict[str, dict]) -> str:
    """The rule fixed before the measurement (module docstring) on the calibrated cells."""
    effects = reestimation_effects(results)
    candidates = {}
    for choice in ("full", "mix"):
        mine = [e for (_, _, c), e in effects.items() if c == choice]
        if any(e.ci_high < 0 for e in mine):
            continue
        above = sum(e.ci_low > 0 for e in mine)
        if above:
            candidates[choice] = above
    if not candidates:
        return "none"
    return max(candidates, key=lambda c: (candidates[c], c == "mix"))


def render(results: Dict[str, dict], setting: Setting, seconds: float, cpu_seconds: float) -> str:
    """The markdown page (``stamp`` adds the line naming the command, commit and machine): the settings, one
    table per family and the re-estimation effects with the chosen default."""
    lines = [f"{seconds:.0f} s wall, {cpu_seconds:.0f} CPU-seconds, 1 torch thread. {mode_note()}", "",
             f"Setting: {setting.train_samples} Fashion-MNIST training images at {setting.image_size} px, "
             f"{setting.epochs} epoch(s), batch {setting.batch_size}, SGD lr {setting.lr} cosine; one network per "
             f"training seed ({len(setting.seeds)} seeds). Calibration and re-estimation: {setting.calib_images} "
             f"unlabeled training images the networks were not trained on; `mix` uses N = {setting.train_samples} "
             f"(the training images), n = {setting.calib_images}. Fine-tune: {setting.finetune_samples} training "
             f"images, batch {setting.finetune_batch_size}, lr {setting.finetune_lr}. GN {setting.gn_groups} groups "
             f"(clamped). Top-1 % on {setting.eval_images} test images: mean [95 % t interval] over the seeds.", ""]
    for family, per in results.items():
        variants = [v for v in per if v != "BN"]
        lines += [f"**{family}**: BN original {interval(per['BN'])}", "",
                  "| top-1 % | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for row in ROWS:
            lines.append(f"| {row} | " + " | ".join(interval(per[v][row]) for v in variants) + " |")
        lines.append("| calibration s | " + " | ".join(interval(per[v]["calibration s"]) for v in variants) + " |")
        lines.append("| mean R² of the fits | " + " | ".join(interval(per[v]["R2 mean"], 3) for v in variants) + " |")
        lines.append("")
    lines += ["Re-estimation vs none, paired by seed (points, mean [95 % interval], verdict: HOLDS = better, "
              "CONTRADICTED = worse, INCONCLUSIVE = the interval contains 0):", "",
              "| family | conversion | start | full − none | mix − none |", "|---|---|---|---|---|"]
    for base in ("naive", "calibrated"):
        effects = reestimation_effects(results, base)
        for family, per in results.items():
            for variant in (v for v in per if v != "BN"):
                cells = [effects[(family, variant, c)] for c in ("full", "mix")]
                lines.append(f"| {family} | {variant} | {base} | " + " | ".join(
                    f"{e.mean:+.1f} [{e.ci_low:+.1f}, {e.ci_high:+.1f}] {_verdict_word(e.verdict)}" for e in cells) + " |")
    lines += ["", f"Default chosen by the rule fixed before the measurement (benchmarks/calibration.py, "
              f"`choose_default`): **{choose_default(results)}**.", ""]
    return "\n".join(lines)


def _verdict_word(verdict: str) -> str:
    return {"HOLDS": "better", "CONTRADICTED": "worse", INCONCLUSIVE: "inconclusive"}[verdict]


def main(argv: Optional[List[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a smoke run of seconds (2 seeds, 2 conversions, tiny training)")
    parser.add_argument("-o", "--output", dest="out", type=Path, default=None,
                        help=f"folder for {OUTPUT_NAME} and calibration.json (default: docs/, with --tiny xbn_results/calibration_tiny)")
    parser.add_argument("--portable", action="store_true", help="portable mode: the same numbers on any x86-64 CPU")
    args = parser.parse_args(translate_argv(sys.argv[1:] if argv is None else argv, RENAMED["benchmarks/calibration.py"]))
    if args.portable:  # before any computing: may re-execute this command
        ensure_portable_or_exit()
    torch.set_num_threads(1)  # run() computes at one thread; the provenance record says so
    setting = TINY if args.tiny else FULL
    if args.out is None:  # a smoke run never overwrites the documented table
        args.out = Path("xbn_results/calibration_tiny") if args.tiny else Path(__file__).resolve().parent.parent / "docs"
    prov = provenance(script_command(__file__, argv))  # of the code that runs, before anything changes during the run
    start, cpu_start = time.perf_counter(), time.process_time()
    results = run(setting, log=lambda message: print(message, file=sys.stderr, flush=True))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    args.out.mkdir(parents=True, exist_ok=True)
    page = args.out / OUTPUT_NAME
    write_text_atomic(page, render(results, setting, seconds, cpu_seconds))
    data = args.out / "calibration.json"
    write_text_atomic(data, json.dumps({"setting": asdict(setting), "results": results, "default": choose_default(results),
                                        "wall_s": round(seconds), "cpu_s": round(cpu_seconds)}, indent=1))
    for path in (page, data):
        stamp(path, prov)
    print(page.read_text())
    return page


if __name__ == "__main__":
    main()
