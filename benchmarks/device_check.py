"""One unattended device check: XBN vs BN speed, fast corruptions, torchrun smokes, in one JSON.

Sections, each under its own time budget (what does not fit is listed as skipped) and each
guarded: an exception is recorded in the JSON (status "error", with its traceback) and the next
section runs; within throughput and corruptions one failing setting or corruption is listed as
failed (status "partial") and the others are measured. The JSON is rewritten after every
section, so a killed run keeps what it measured.

- machine: GPU name, capability and memory, torch / CUDA / cuDNN / timm versions.
- throughput: XBN vs its BN base (``throughput.measure_pair``: alternating rounds, medians),
  inference and a full training step (forward, backward, SGD step), for every AMP dtype and
  channels_last on/off; the batch is halved on out-of-memory. Order: the setting that matters
  (AMP + channels_last) first, then the others, then ``torch.compile`` (``--compile``).
- profile: the top kernels (self time) of one XBN training step in the first AMP setting.
- corruptions: the 15 torch corruptions x 5 severities on a batch on the device against the
  reference (``imagecorruptions``, one core, ``--ref-images`` images), both timed in this run
  (``corruptions.torch_seconds`` / ``reference_seconds``, after an untimed warm-up pass).
- train_step: the study's training step (``train_step.measure``: its network, batch 128 at 32 px,
  its data path and bookkeeping) against a bare loop on the same network and batch, BN and
  XBN-GN, channels_last, bf16 autocast on CUDA (the study's own ``autocast``).
- nccl: torchrun workers join a process group (NCCL on CUDA, gloo on the CPU) and check an
  all-reduce. With one process the package's own entry points create no process group, so
  this is what checks NCCL on a one-GPU machine.
- train_smoke: ``torchrun --nproc_per_node=N -m timm_xbn.training`` for one short epoch on a
  generated ImageFolder, with AMP (fp16, loss scaling) and channels_last; reports its
  results.json and checkpoint.
- robustness_smoke: ``torchrun --nproc_per_node=N -m timm_xbn.evaluation robustness`` on the
  same images; reports its robustness.json. N (``--nproc``) is the number of GPUs (1 on the
  CPU): on one GPU this runs the torchrun launch, not a split across ranks.
- study: ``xbn-eval study --quick --device D`` (wall seconds, its summary's last lines) and one
  network job of the default study (BN, seed 0: train on full Fashion-MNIST, then every
  evaluation), in a subprocess, with its wall/CPU seconds, its steps and top-1. ``--tiny``
  runs the job at tiny sizes and leaves the quick study out (``quick.not_run``: a minute on a CPU).

The smokes' generated data and outputs stay in ``<out>_files/`` beside the JSON.

    python benchmarks/device_check.py -o device_check.json                    # one GPU, <= 10 min
    python benchmarks/device_check.py --device cpu --tiny -o /tmp/dc.json     # CPU mode (the test)
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

import timm_xbn
from timm_xbn.commands.vocabulary import RENAMED, translate_argv
from timm_xbn.corruptions import CORRUPTIONS
from timm_xbn.corruptions.agreement import real_images
from timm_xbn.models import XBN_VARIANTS
from timm_xbn.utils.errors import command_errors

sys.path.insert(0, str(Path(__file__).parent))
from corruptions import reference_seconds, synchronizer, torch_seconds  # noqa: E402  (benchmarks/)
from throughput import baseline_of, make_steps, measure_pair  # noqa: E402
from train_step import measure as measure_train_step  # noqa: E402

PAIRS = ["xbn_resnet50", "xbn_resnet50_d2", "xbn_resnet50_in", "xbn_resnext50_32x4d"]
AMP = {"off": None, "bf16": "bfloat16", "fp16": "float16"}
# the smokes' model: a narrow one-block-per-stage ResNet-26 converted to XBNBlock-P2
# GN with 32 groups: 64 would normalize one value per group on layer4's 1x1 maps at the tiny 32 px (refused)
SMOKE_MODEL = ["--convert-from", "resnet26", "--model-kwargs", "layers=[1,1,1,1]", "channels=[8,16,32,64]",
               "stem_width=8", "--num-classes", "3", "--groups", "32"]


class Budget:
    """Seconds left to a section, never past the whole run's deadline."""

    def __init__(self, seconds: float, deadline: float) -> None:
        self.end = min(time.monotonic() + seconds, deadline)

    def left(self) -> float:
        return self.end - time.monotonic()


def machine_info(device: torch.device) -> Dict[str, Any]:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
            "timm_xbn": timm_xbn.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version(), nccl=str(torch.cuda.nccl.version()))
    return info


def throughput_configs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """(model, amp, channels_last, compile) in priority order: AMP + channels_last first."""
    amps = [a for a in args.amp if a != "off"] + [a for a in args.amp if a == "off"]
    configs = [dict(model=m, amp=a, channels_last=cl, compile=False)
               for a in amps for cl in (True, False) for m in args.models]
    if args.compile:
        configs += [dict(model=m, amp=amps[0], channels_last=True, compile=True) for m in args.models[:1]]
    return configs


def step_args(args: argparse.Namespace, amp: str, compile_: bool, batch_size: int) -> argparse.Namespace:
    """The namespace ``throughput.make_steps`` reads."""
    return argparse.Namespace(device=args.device, batch_size=batch_size, img_size=args.img_size, warmup=args.warmup,
                              steps=args.steps, rounds=args.rounds, amp=AMP[amp] is not None, amp_dtype=AMP[amp],
                              compile=compile_)


def section_throughput(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    rows, skipped, failed = (record.setdefault(key, []) for key in ("rows", "skipped", "failed"))
    batch_size, last = args.batch_size, 0.0
    for config in throughput_configs(args):
        if budget.left() < last:  # the previous configuration would not fit again
            skipped.append(config)
            continue
        start = time.monotonic()
        base = baseline_of(config["model"])
        try:
            result, batch_size = measure_fitting(config, base, args, batch_size)
        except Exception as error:  # e.g. torch.compile failing: the other settings still run
            failed.append({**config, "error": f"{type(error).__name__}: {error}"[:500]})
            continue
        xbn, bn = result[config["model"]], result[base]
        rows.append({**config, "baseline": base, "batch_size": batch_size,
                     **{f"{mode}_{side}": r[mode] for side, r in (("xbn", xbn), ("bn", bn)) for mode in ("infer", "train")},
                     "infer_ratio": xbn["infer"] / bn["infer"], "train_ratio": xbn["train"] / bn["train"]})
        last = time.monotonic() - start
    record["summary"] = f"{len(rows)} settings measured"


def measure_fitting(config: Dict[str, Any], base: str, args: argparse.Namespace,
                    batch_size: int) -> Tuple[Dict[str, Dict[str, float]], int]:
    """``measure_pair`` at the largest batch <= ``batch_size`` that fits (halved on out-of-memory)."""
    while True:
        try:
            step = step_args(args, config["amp"], config["compile"], batch_size)
            return measure_pair(config["model"], base, step, config["channels_last"]), batch_size
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size == 1:
                raise
            batch_size //= 2


def section_profile(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    """Top kernels by self time of one XBN training step (after two warm-up steps)."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    amp = ([a for a in args.amp if a != "off"] or ["off"])[0]
    train = make_steps(args.models[0], step_args(args, amp, False, args.batch_size), channels_last=True)["train"]
    train(), train()
    synchronizer(torch.empty(0, device=device))()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train()
        synchronizer(torch.empty(0, device=device))()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:args.profile_top]
    record.update(model=args.models[0], amp=amp, channels_last=True, time=key,
                  rows=[{"kernel": e.key, "self_ms": getattr(e, key) / 1e3, "calls": e.count} for e in events],
                  summary=f"top {len(events)} by {key}")


def section_corruptions(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    device = torch.device(args.device)
    images = real_images(args.corruption_images, args.corruption_size)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
    reference = images[:args.ref_images]
    rows, skipped, failed = (record.setdefault(key, []) for key in ("rows", "skipped", "failed"))
    for name in CORRUPTIONS:
        if budget.left() <= 0:
            skipped.append(name)
            continue
        generator = torch.Generator(device=device).manual_seed(0)
        try:
            reference_seconds(reference[:1], name), torch_seconds(batch, name, len(batch), generator)  # warm-up (setup)
            ref = reference_seconds(reference, name)
            ours = torch_seconds(batch, name, len(batch), generator)
        except Exception as error:  # one corruption failing on the device: the others still run
            failed.append({"corruption": name, "error": f"{type(error).__name__}: {error}"[:500]})
            continue
        rows.append({"corruption": name, "reference_img_s": 5 * len(reference) / ref, "device_img_s": 5 * len(batch) / ours,
                     "reference_s": ref, "device_s": ours})
        rows[-1]["speedup"] = rows[-1]["device_img_s"] / rows[-1]["reference_img_s"]
    if rows and not skipped and not failed:  # one image through all 15 corruptions: the per-image times add up
        ref_s = sum(r["reference_s"] / (5 * len(reference)) for r in rows)
        dev_s = sum(r["device_s"] / (5 * len(batch)) for r in rows)
        record["all"] = {"reference_img_s": 1 / ref_s, "device_img_s": 1 / dev_s, "speedup": ref_s / dev_s}
    record.update(batch=len(batch), size=args.corruption_size, reference_images=len(reference), reference_threads=1,
                  summary=f"{len(rows)} corruptions measured")


def section_train_step(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    """The study's step vs the bare loop (``train_step.measure``), in the study's layout (channels_last)."""
    tiny = dict(batch_size=4, steps=1, rounds=1) if args.tiny else {}
    result = measure_train_step(torch.device(args.device), layouts=(True,), **tiny)
    record.update(result)
    s = result["summary"]
    record["summary"] = (f"study overhead <= {100 * s['max_overhead']:+.1f} %, XBN-GN / BN "
                         f"{s['xbn_gn_vs_bn_bare']:.2f} (bare), {s['xbn_gn_vs_bn_study']:.2f} (study)")


def write_image_folder(root: Path, size: int, classes: int = 3, per_class: int = 8, seed: int = 0) -> Path:
    """Class-coloured noise JPEGs ``root/class_i/img_j.jpg``: learnable, generated, no download."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        colour = rng.integers(40, 216, size=3)
        for j in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{j}.jpg")
    return root


def descendants(pid: int) -> List[int]:
    """Every live process below ``pid`` (children, their children, ...), from the parent ids in /proc:
    a process that started its own session (torchrun's workers do) is still found."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants, whatever their session or process group: each is
    stopped first (SIGSTOP) so that none forks or is reparented between the listing and the kill."""
    stopped: List[int] = []
    while True:
        new = [p for p in [pid, *descendants(pid)] if p not in stopped]
        if not new:
            break
        for p in new:
            _signal(p, signal.SIGSTOP)
        stopped += new
    for p in stopped:
        _signal(p, signal.SIGKILL)


def _one_thread() -> Dict[str, str]:
    """This environment with OMP_NUM_THREADS=1 unless it sets another count."""
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def run_budgeted(cmd: List[str], budget: Budget, record: Dict[str, Any], env: Optional[Dict[str, str]] = None) -> None:
    """Run ``cmd`` until it exits or the budget runs out (then its whole process tree is killed);
    its wall seconds, exit code and output tail go into ``record``."""
    record["command"] = " ".join(cmd[1:])
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=max(budget.left(), 1))
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        output, _ = proc.communicate()
        record["output_tail"] = output[-1500:]
        raise RuntimeError("killed: over the section's time budget") from None
    record.update(wall_s=time.monotonic() - start, returncode=proc.returncode, output_tail=output[-1500:])
    if proc.returncode:
        raise RuntimeError(f"exit code {proc.returncode}: {output[-500:]}")


def torchrun(nproc: int, module_args: List[str], budget: Budget, record: Dict[str, Any]) -> None:
    """``torchrun --standalone --nproc_per_node=N`` a module or script under the section's budget."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module_args]
    run_budgeted(cmd, budget, record, env=_one_thread())


def section_nccl(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    torchrun(args.nproc, [__file__, "--collective-worker", "--device", args.device], budget, record)
    record["backend"] = "nccl" if args.device.startswith("cuda") else "gloo"
    record["summary"] = f"all_reduce over {record['backend']}: ok"


def section_train_smoke(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    out = args.work / "train"
    torchrun(args.nproc, ["-m", "timm_xbn.training", "--data-dir", str(args.data), *SMOKE_MODEL, "--img-size", str(args.smoke_size),
              "--batch-size", "4", "--workers", "0", "--device", args.device, "--amp", "--amp-dtype", "float16",
              "--channels-last", "--epochs", "1", "--warmup-epochs", "0", "--lr", "0.02",
              "--output", str(out), "--experiment", "smoke"], budget, record)
    results = json.loads((out / "smoke" / "results.json").read_text())
    record.update(results={k: results[k] for k in ("epochs", "val_top1") if k in results},
                  checkpoint=str(out / "smoke" / "last.pth.tar"), checkpoint_exists=(out / "smoke" / "last.pth.tar").is_file())
    record["summary"] = f"1 epoch, val top-1 {results.get('val_top1', float('nan')):.1f}, checkpoint written"


def section_robustness_smoke(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    out = args.work / "robustness"
    torchrun(args.nproc, ["-m", "timm_xbn.evaluation", "robustness", "--model", "resnet18", "--model", "xbn_resnet50",
              "--model-kwargs", '{"num_classes": 3}', "--data-dir", str(args.data / "validation"), "--delta", "0.5",
              "--seeds", "1", "--blocks", "2", "--img-size", str(args.smoke_size), "--batch-size", "4", "--workers", "0",
              "--device", args.device, "--output", str(out)], budget, record)
    results = json.loads((out / "robustness.json").read_text())
    record.update(results_file=str(out / "robustness.json"), runs=len(results["cells"]),
                  num_images=next(iter(results["results"].values()))["count"],
                  clean_top1={name: m["clean_top1"] for name, m in results["results"].items()})
    record["summary"] = f"{record['runs']} runs over {record['num_images']} images"


def collective_worker(device: str) -> None:
    """torchrun worker: one all-reduce over the process group must sum the ranks' ones."""
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    x = torch.ones(1024, device="cuda" if cuda else "cpu")
    dist.all_reduce(x)
    if not torch.equal(x.cpu(), torch.full((1024,), float(dist.get_world_size()))):
        raise SystemExit(f"all_reduce returned {x[:4].tolist()}")
    print(f"all_reduce ok: backend {dist.get_backend()}, world {dist.get_world_size()}")
    dist.destroy_process_group()


def section_study(args: argparse.Namespace, budget: Budget, record: Dict[str, Any]) -> None:
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    job: Dict[str, Any] = {}
    record["network_job"] = job
    run_budgeted([sys.executable, __file__, "--study-job", "--device", device, "--output", str(args.work / "study_job.json")]
              + (["--tiny"] if args.tiny else []), budget, job, env=_one_thread())
    job.update(json.loads((args.work / "study_job.json").read_text()))
    quick: Dict[str, Any] = {}
    record["quick"] = quick
    if args.tiny:
        quick["not_run"] = "--tiny (about a minute on a CPU)"
    else:
        run_budgeted([sys.executable, "-m", "timm_xbn.evaluation", "study", "--quick", "--device", device, "--fresh",
                   "-o", str(args.work / "study_quick")], budget, quick, env=_one_thread())
    record["summary"] = (f"network job {job['wall_s']:.0f} s ({job['steps']} steps, top-1 {job['top1']:.2f})"
                         + ("" if args.tiny else f"; --quick {quick['wall_s']:.0f} s"))


def study_job(device: str, out: Path, tiny: bool) -> None:
    """Subprocess of the study section: one network job of the default study (BN, seed 0) on ``device``."""
    import dataclasses

    from timm_xbn.study import StudyConfig
    from timm_xbn.study.data import load_dataset
    from timm_xbn.study.jobs import _run_job, plan_jobs

    cfg = StudyConfig.preset("default", device=device)
    if tiny:
        cfg.resnet = dataclasses.replace(cfg.resnet, train_samples=64, min_steps=2, batch_size=16, warmup_steps=1,
                                         eval_samples=40, calib_samples=16, deltas=(0.9,), perturb_seeds=(0,),
                                         corruptions=("contrast",))
    job = next(j for j in plan_jobs(cfg, load_dataset(cfg.dataset, cfg.image_size, cfg.seed)) if j.kind == "network")
    parts = out.parent / "study_job_parts"
    shutil.rmtree(parts, ignore_errors=True)
    result = _run_job(cfg, job, parts)
    times = json.loads(job.path(parts, ".time.json").read_text())
    out.write_text(json.dumps({"job": job.describe(), "device": device, "steps": result["steps"], "top1": result["top1"],
                               "job_wall_s": times["wall_s"], "job_cpu_s": times["cpu_s"]}))


SECTIONS: Dict[str, Callable[[argparse.Namespace, Budget, Dict[str, Any]], None]] = {
    "throughput": section_throughput, "profile": section_profile, "corruptions": section_corruptions,
    "train_step": section_train_step, "nccl": section_nccl, "train_smoke": section_train_smoke, "robustness_smoke": section_robustness_smoke,
    "study": section_study,
}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Every section in turn under its budget; the JSON on disk is updated after each."""
    deadline = time.monotonic() + args.budget_s
    report: Dict[str, Any] = {"machine": machine_info(torch.device(args.device)),
                              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "sections": {}}
    args.work = args.out.parent / f"{args.out.stem}_files"  # the smokes' data and outputs, kept for inspection
    shutil.rmtree(args.work, ignore_errors=True)
    args.data = args.work / "data"
    write_image_folder(args.data / "train", args.smoke_size, seed=0)
    write_image_folder(args.data / "validation", args.smoke_size, per_class=4, seed=1)
    for name, budget_s in zip(SECTIONS, args.section_budgets):
        record: Dict[str, Any] = {"status": "ok", "budget_s": budget_s}
        report["sections"][name] = record
        start = time.monotonic()
        try:
            SECTIONS[name](args, Budget(budget_s, deadline), record)
            if record.get("skipped") or record.get("failed"):
                record["status"] = "partial"
        except Exception as error:  # recorded, not fatal: the next section still runs
            record.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-2000:])
        record["seconds"] = time.monotonic() - start
        args.out.write_text(json.dumps(report, indent=1))
    return report


def print_report(report: Dict[str, Any]) -> None:
    console = Console(width=150)
    m, sections = report["machine"], report["sections"]
    console.print(f"[bold]{m.get('gpu', m['device'])}[/bold], torch {m['torch']}, CUDA {m['cuda']}, timm {m['timm']}")
    table = Table(title="XBN vs BN, images/s (median of alternating rounds)")
    for column in ("model", "amp", "channels_last", "compile", "batch", "infer XBN", "infer BN", "infer ratio",
                   "train XBN", "train BN", "train ratio"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in sections["throughput"].get("rows", []):
        table.add_row(r["model"], r["amp"], str(r["channels_last"]), str(r["compile"]), str(r["batch_size"]),
                      f"{r['infer_xbn']:.1f}", f"{r['infer_bn']:.1f}", f"{r['infer_ratio']:.2f}",
                      f"{r['train_xbn']:.1f}", f"{r['train_bn']:.1f}", f"{r['train_ratio']:.2f}")
    console.print(table)
    c = sections["corruptions"]
    table = Table(title=f"Corruptions x 5 severities: device batch {c.get('batch')} vs reference (1 core, "
                        f"{c.get('reference_images')} images), {c.get('size')} px")
    for column in ("corruption", "reference img/s", "device img/s", "speed-up"):
        table.add_column(column, justify="left" if column == "corruption" else "right")
    for r in c.get("rows", []) + ([{"corruption": "all 15 (per image)", **c["all"]}] if "all" in c else []):
        table.add_row(r["corruption"], f"{r['reference_img_s']:.1f}", f"{r['device_img_s']:.1f}", f"{r['speedup']:.1f}x")
    console.print(table)
    t = sections.get("train_step", {})
    if t.get("rows"):
        table = Table(title=f"Study training step vs bare loop, batch {t['batch_size']} at {t['size']} px (ms per step)")
        for column in ("variant", "layout", "study ms", "bare ms", "overhead"):
            table.add_column(column, justify="left" if column in ("variant", "layout") else "right")
        for r in t["rows"]:
            table.add_row(r["variant"], r["layout"], f"{r['study_ms']:.2f}", f"{r['bare_ms']:.2f}", f"{100 * r['overhead']:+.1f} %")
        console.print(table)
    table = Table(title="Sections")
    for column in ("section", "status", "seconds", "detail"):
        table.add_column(column)
    for name, r in sections.items():
        detail = r.get("error") or r.get("summary", "") + "".join(
            f" ({key}: {len(r[key])})" for key in ("skipped", "failed") if r.get(key))
        table.add_row(name, r["status"], f"{r['seconds']:.1f}", detail[:100])
    console.print(table)
    p = sections["profile"]
    table = Table(title=f"Top kernels of one {p.get('model')} training step (amp {p.get('amp')}, channels_last), by self time")
    for column in ("kernel", "self ms", "calls"):
        table.add_column(column, justify="left" if column == "kernel" else "right")
    for r in p.get("rows", [])[:10]:
        table.add_row(r["kernel"][:90], f"{r['self_ms']:.2f}", str(r["calls"]))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", "--output", dest="out", type=Path, default=Path("device_check.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU run in seconds (the test)")
    parser.add_argument("--models", nargs="+", default=PAIRS, help="XBN variants, each against its base")
    parser.add_argument("--amp", nargs="+", choices=sorted(AMP), default=None, help="AMP settings (default: off bf16 fp16)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (AMP + channels_last)")
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument("--corruption-images", type=int, default=64, help="device batch for the corruptions")
    parser.add_argument("--corruption-size", type=int, default=224)
    parser.add_argument("--ref-images", type=int, default=4, help="reference images (one core)")
    parser.add_argument("--smoke-size", type=int, default=64)
    parser.add_argument("--nproc", type=int, default=None, help="torchrun processes for the smokes (default: the GPUs, 1 on CPU)")
    parser.add_argument("--budget-s", type=float, default=560, help="the whole run's deadline")
    parser.add_argument("--section-budgets", type=float, nargs=len(SECTIONS), default=[200, 30, 100, 20, 40, 60, 60, 220], metavar="S",
                        help=f"seconds per section: {' '.join(SECTIONS)}")
    parser.add_argument("--collective-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--study-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(translate_argv(sys.argv[1:], RENAMED["benchmarks/device_check.py"]))
    if args.collective_worker:
        return collective_worker(args.device)
    if args.study_job:
        return study_job(args.device, args.out, args.tiny)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu")
    for name in args.models:
        if name not in XBN_VARIANTS:
            parser.error(f"{name} is not a registered xbn_* variant: {', '.join(sorted(XBN_VARIANTS))}")
    if args.tiny:
        args.models, args.batch_size, args.img_size, args.warmup, args.steps, args.rounds = args.models[:1], 2, 32, 1, 1, 2
        args.corruption_images, args.corruption_size, args.ref_images, args.smoke_size = 2, 64, 1, 32
    args.amp = args.amp or (["off", "bf16"] if args.tiny else ["off", "bf16", "fp16"])
    args.nproc = args.nproc or (torch.cuda.device_count() if args.device.startswith("cuda") else 1)
    torch.backends.cudnn.benchmark = True
    with command_errors():  # one Ctrl-C: one line, exit 130; the JSON keeps every section finished before it
        print_report(run(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
