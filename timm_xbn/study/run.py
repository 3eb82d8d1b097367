"""Run the whole study: Section 4 (MLP) and Section 5 (ResNet-50-deep narrow ResNets) on real data, then report.

``run_study(StudyConfig.preset(), "xbn_results/study")`` writes ``study.json`` (kind ``study``),
CSV tables, PNG figures and ``summary.txt`` into the output folder and returns the results dict.
The work is split into independently seeded jobs (``jobs.py``) that run in ``workers`` processes;
each finished job is stored under ``<output>/parts/<fingerprint>/``, so an interrupted run resumes
where it stopped. The fingerprint covers the settings the job depends on (threads included), the
data and the torch version, so stale parts are never reused and a change to one kind of job's
settings re-runs only those jobs. The same configuration gives the same numbers with any number
of workers.
"""
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..utils.files import write_text_atomic
from ..evaluation.results import make_results, write_csv, write_json_atomic
from .config import JOB_KINDS, PRESETS, StudyConfig
from .data import StudyData, load_dataset
from .jobs import Job, default_workers, eta_seconds, job_seconds, plan_jobs, run_jobs, torchrun_rank, wait_for_results
from .plots import plot_study
from .report import claim_lines, evaluate_claims, summary_lines
from .resnet import build_bn_network

__all__ = ["StudyConfig", "PRESETS", "run_study", "RESULTS_FILE", "SUMMARY_FILE"]

RESULTS_FILE = "study.json"
SUMMARY_FILE = "summary.txt"
KIND_LABELS = {"network": "Section 5 networks", "mlp": "Section 4 MLPs", "small_batch": "Small-batch training",
               "tta": "Test-time adaptation"}
VERDICT_STYLES = {"[HOLDS]": "green", "[CONTRADICTED]": "red", "[INCONCLUSIVE]": "yellow"}


def _by_seed(results: Dict[str, dict], jobs: List[Job], kind: str) -> Dict[str, Dict[str, dict]]:
    """variant -> seed -> result for the jobs of ``kind``."""
    out: Dict[str, Dict[str, dict]] = {}
    for job in jobs:
        if job.kind == kind and job.key in results:
            out.setdefault(job.variant, {})[str(job.seed)] = results[job.key]
    return out


def _collect(cfg: StudyConfig, data: StudyData, results: Dict[str, dict], jobs: List[Job]) -> Tuple[dict, dict]:
    """The ``mlp`` and ``resnet`` sections of study.json from the job results (of the finished jobs
    only while the study runs: a kind without results has empty entries)."""
    per_seed = [results[j.key] for j in jobs if j.kind == "mlp" and j.key in results]
    first = per_seed[0] if per_seed else {}
    mlp = {"config": cfg.mlp.to_dict(), "test_samples": first.get("test_samples"), "seeds": list(cfg.train_seeds),
           "setup_one": first.get("setup_one"), "setup_two": first.get("setup_two"), "by_seed": per_seed}
    rc = cfg.resnet
    networks = _by_seed(results, jobs, "network")
    small: Dict[str, Dict[str, Dict[str, float]]] = {}
    for job in jobs:
        if job.kind == "small_batch" and job.key in results:
            small.setdefault(job.variant, {}).setdefault(str(job.batch_size), {})[str(job.seed)] = results[job.key]["top1"]
    bn = build_bn_network(rc, data.num_classes, 0)
    train_images = len(data.train_y) if rc.train_samples is None else min(rc.train_samples, len(data.train_y))
    test_images = len(data.test_y) if rc.eval_samples is None else min(rc.eval_samples, len(data.test_y))
    description = (
        f"timm {rc.arch} layout ({sum(len(getattr(bn, f'layer{i}')) for i in range(1, 5))} bottlenecks), "
        f"channels {tuple(rc.channels)}, stem {rc.stem_width}{'' if rc.stem_pool else ' without stem max-pool'}, "
        f"{cfg.image_size} px RGB, {sum(p.numel() for p in bn.parameters()):,} parameters; GN {rc.gn_groups} groups; "
        f"{train_images:,} training images, {rc.train_steps(train_images)} SGD steps of {rc.batch_size} "
        f"(lr {rc.lr}, warmup + cosine), "
        f"{len(cfg.train_seeds)} training seeds per variant; evaluated on {test_images:,} test images"
    )
    resnet = {
        "config": rc.to_dict(),
        "description": description,
        "seeds": list(cfg.train_seeds),
        "networks": {v: {s: {"top1": r["top1"], "history": r["history"]} for s, r in seeds.items()}
                     for v, seeds in networks.items()},
        "robustness": {"blocks": rc.blocks, "deltas": list(rc.deltas), "perturb_seeds": list(rc.perturb_seeds),
                       "models": {v: {s: r["robustness"] for s, r in seeds.items()}
                                  for v, seeds in networks.items() if v in rc.robustness_variants}},
        "esm": {"corruption": rc.esm_corruption, "severity": rc.severity,
                "models": {v: {s: r["esm"] for s, r in seeds.items()} for v, seeds in networks.items() if v in rc.esm_variants}},
        "adabn": {"mode": "full", "severity": rc.severity, "corruptions": list(rc.corruptions),
                  "calibration_samples": rc.calib_samples,
                  "models": {v: {s: {"clean_top1": r["top1"], **r["adabn"]} for s, r in seeds.items()}
                             for v, seeds in networks.items() if v in rc.adabn_variants}},
        "small_batch": {"iterations": rc.small_batch_iterations, "batch_sizes": list(rc.small_batch_sizes),
                        "lr": {str(b): rc.small_batch_lr(b) for b in rc.small_batch_sizes}, "models": small},
    }
    return mlp, resnet


def _collect_tta(cfg: StudyConfig, results: Dict[str, dict], jobs: List[Job]) -> dict:
    """The ``tta`` section of study.json: variant -> seed -> stream -> method -> top-1 error (%)."""
    return {"config": cfg.tta.to_dict(), "seeds": list(cfg.train_seeds),
            "models": {v: {s: r["errors"] for s, r in seeds.items()} for v, seeds in _by_seed(results, jobs, "tta").items()}}


def _csv_tables(results: dict) -> Dict[str, List[dict]]:
    mlp, rn = results["mlp"], results["resnet"]
    history, esm_rows = [], []
    for seed_runs in mlp["by_seed"]:
        seed = seed_runs["seed"]
        setups = [("one", None, model, run) for model, run in seed_runs["setup_one"].items()]
        setups += [("two", int(size), model, run) for model, runs in seed_runs["setup_two"]["runs"].items()
                   for size, run in runs.items()]
        for setup, size, model, run in setups:
            for r in run["history"]:
                history.append({"seed": seed, "setup": setup, "train_size": size, "model": model, "epoch": r["epoch"],
                                "loss": r["loss"], "train_error": r["train_error"], "test_error": r.get("test_error")})
                for e in r.get("esm", []):
                    esm_rows.append({"seed": seed, "setup": setup, "train_size": size, "model": model, "epoch": r["epoch"], **e})
    robustness = []
    for model, seeds in rn["robustness"]["models"].items():
        for seed, entry in seeds.items():
            robustness.append({"model": model, "train_seed": seed, "delta": 0.0, "perturb_seed": None, "top1": entry["clean_top1"]})
            for delta, d in entry["deltas"].items():
                for pseed, top1 in zip(d["seeds"], d["per_seed"]):
                    robustness.append({"model": model, "train_seed": seed, "delta": float(delta), "perturb_seed": pseed, "top1": top1})
    adabn = rn["adabn"]
    return {
        "mlp_history.csv": history,
        "mlp_esm.csv": esm_rows,
        "resnet_top1.csv": [{"model": m, "train_seed": s, "top1": r["top1"]} for m, seeds in rn["networks"].items()
                            for s, r in seeds.items()],
        "resnet_robustness.csv": robustness,
        "resnet_esm.csv": [{"model": m, "train_seed": s, "test_data": which, **r}
                           for m, seeds in rn["esm"]["models"].items() for s, e in seeds.items()
                           for which, rows in e.items() for r in rows],
        "resnet_adabn.csv": [
            {"model": m, "train_seed": s, "corruption": c, "severity": adabn["severity"], "clean_top1": r["clean_top1"], **r[c]}
            for m, seeds in adabn["models"].items() for s, r in seeds.items() for c in adabn["corruptions"]
        ],
        "resnet_small_batch.csv": [
            {"model": m, "batch_size": int(b), "train_seed": s, "top1": top1}
            for m, sizes in rn["small_batch"]["models"].items() for b, seeds in sizes.items() for s, top1 in seeds.items()
        ],
        "tta.csv": [{"model": m, "train_seed": s, "stream": stream, "method": method, "top1_error": error}
                    for m, seeds in results["tta"]["models"].items() for s, streams in seeds.items()
                    for stream, methods in streams.items() for method, error in methods.items()],
        "claims.csv": [
            {"claim": c["id"], "verdict": c["verdict"], "effect": e["name"], "counts": e["counts"], "mean": e["mean"],
             "ci_low": e["ci_low"], "ci_high": e["ci_high"], "sd": e["sd"], "n": e["n"], "effect_verdict": e["verdict"]}
            for c in results["claims"] for e in c["effects"]
        ],
    }


def _print_lines(console: Console, lines: List[str]) -> None:
    """Plain lines, a claim's verdict line in its verdict's colour."""
    for line in lines:
        style = next((v for k, v in VERDICT_STYLES.items() if line.startswith(k)), None)
        console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


class _Progress:
    """One progress line per job kind with an ETA from its finished jobs' times, and each claim
    printed as soon as the job kinds its numbers come from have finished."""

    def __init__(self, bar: Progress, cfg: StudyConfig, data: StudyData, jobs: List[Job], parts: Path, workers: int):
        self.bar, self.cfg, self.data, self.jobs, self.parts, self.workers = bar, cfg, data, jobs, parts, workers
        self.left = Counter(j.kind for j in jobs)
        self.kinds = [kind for kind in JOB_KINDS if kind in self.left]
        self.times: Dict[str, List[float]] = {kind: [] for kind in self.left}
        self.tasks = {kind: bar.add_task(KIND_LABELS[kind], total=self.left[kind], eta="")
                      for kind in JOB_KINDS if kind in self.left}
        self.results: Dict[str, dict] = {}
        self.reported: set = set()

    def __call__(self, job: Job, result: dict) -> None:
        self.results[job.key] = result
        self.left[job.kind] -= 1
        timing = job.path(self.parts, ".time.json")
        if timing.is_file():
            self.times[job.kind].append(json.loads(timing.read_text())["wall_s"])
        eta = eta_seconds(self.times[job.kind], self.left[job.kind], self.workers)
        self.bar.update(self.tasks[job.kind], advance=1,
                        eta="done" if not self.left[job.kind] else "" if eta is None else f"ETA {eta / 60:.1f} min")
        if not self.left[job.kind]:
            self._report_claims()

    def _report_claims(self) -> None:
        done = [kind for kind in self.kinds if not self.left[kind]]
        mlp, resnet = _collect(self.cfg, self.data, self.results, self.jobs)
        tta = _collect_tta(self.cfg, self.results, self.jobs)
        for claim in evaluate_claims({"mlp": mlp, "resnet": resnet, "tta": tta}, done):
            if claim.id not in self.reported:
                self.reported.add(claim.id)
                _print_lines(self.bar.console, claim_lines(claim.to_dict()))


def run_study(
    config: Optional[StudyConfig] = None,
    output_dir: Union[str, Path] = "xbn_results/study",
    resume: bool = True,
    progress: bool = True,
    console: Optional[Console] = None,
    workers: Optional[int] = None,
    parts: Sequence[str] = JOB_KINDS,
) -> Optional[Dict[str, Any]]:
    """Run the study, write its artefacts into ``output_dir`` and return the ``study`` results dict.

    Under torchrun the jobs are shared out by rank (job ``i`` runs on rank ``i % world size``), each
    rank writing its results into the same ``output_dir`` (a shared folder across machines); rank 0
    waits for every result, then writes the artefacts and returns the results (the others return None).
    Every rank runs its jobs with the same settings, so the numbers are those of one process.

    Args:
        config: ``StudyConfig.preset()`` by default (``StudyConfig.preset("quick")`` for CI).
        output_dir: where ``study.json``, the CSV tables, the PNG figures and ``summary.txt`` go.
        resume: reuse finished jobs stored in ``output_dir/parts`` by an earlier run of the same config.
        progress: show a rich progress bar (on ``console``).
        workers: processes running jobs in parallel (default: one per CPU core, one per rank under
            torchrun); does not change the numbers.
        parts: the job kinds to run (``JOB_KINDS``: ``mlp``, ``network``, ``small_batch``, ``tta``); the
            summary and claims cover these. ``tta`` alone trains only the networks it adapts that
            have no stored weights yet.
    """
    unknown = [p for p in parts if p not in JOB_KINDS]
    if unknown or not parts:
        raise ValueError(f"unknown study part(s) {unknown}; choose from {', '.join(JOB_KINDS)}")
    cfg = config or StudyConfig.preset()
    output_dir = Path(output_dir)
    console = console or Console(stderr=True)
    rank, world = torchrun_rank()
    if world > 1 and cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is each rank's own GPU
    workers = (1 if world > 1 else default_workers(cfg.device)) if workers is None else max(1, int(workers))
    started = time.perf_counter()
    data = load_dataset(cfg.dataset, cfg.image_size, cfg.seed)
    console.print(f"[bold]Study data[/bold]: {data.describe()}")
    if cfg.dataset == "auto" and data.name != "fashion-mnist":
        console.print("[yellow]note: Fashion-MNIST is not installed, so the study uses its fallback data; on Debian/Ubuntu "
                      "`apt-get install dataset-fashion-mnist` gives it the full Fashion-MNIST[/yellow]")
    kinds = [kind for kind in JOB_KINDS if kind in parts]
    store = output_dir / "parts"
    jobs = plan_jobs(cfg, data, kinds)
    # the tta jobs adapt the networks that the network jobs train: a second phase, so nothing trains twice
    phases = [[j for j in jobs if j.kind != "tta"], [j for j in jobs if j.kind == "tta"]]
    if not resume:
        for job in jobs[rank::world]:
            job.path(store).unlink(missing_ok=True)
            if job.kind == "network":
                job.training_path(store, ".train.json").unlink(missing_ok=True)
    reused = sum(j.path(store).is_file() for j in jobs)
    if world > 1:
        for phase in phases:
            run_jobs(cfg, phase[rank::world], store, workers, data=data)
            wait_for_results(phase, store)
        if rank:
            return None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[eta]}"))
    if progress:
        console.print(f"Study jobs: {workers} worker{'s' if workers > 1 else ''}, {cfg.threads} thread(s) each, on {cfg.device}")
    with Progress(*columns, console=console, disable=not progress) as bar:
        on_done = _Progress(bar, cfg, data, jobs, store, workers) if progress else None
        outputs = {}
        for phase in phases:
            outputs.update(run_jobs(cfg, phase, store, workers, on_done=on_done, data=data))
    mlp, resnet = _collect(cfg, data, outputs, jobs)
    results = make_results("study", {
        "dataset": {"name": data.name, "source": data.source, "description": data.describe(),
                    "train": len(data.train_y), "test": len(data.test_y), "image_shape": list(data.image_shape),
                    "classes": data.classes},
        "config": cfg.to_dict(),
        "seeds": {"training": list(cfg.train_seeds), "data_and_corruptions": cfg.seed,
                  "perturbation": list(cfg.resnet.perturb_seeds)},
        "threads": cfg.threads,
        "device": cfg.device,
        "torch_version": torch.__version__,
        "parts": kinds,
        "mlp": mlp,
        "resnet": resnet,
        "tta": _collect_tta(cfg, outputs, jobs),
    })
    results["claims"] = [c.to_dict() for c in evaluate_claims(results, kinds)]
    write_json_atomic(output_dir / RESULTS_FILE, results)
    for name, rows in _csv_tables(results).items():
        write_csv(output_dir / name, rows)
    plots = plot_study(results, output_dir, kinds)
    wall = time.perf_counter() - started
    lines = summary_lines(results)
    spent = job_seconds(jobs, store)
    lines.append(f"Wall time: {wall:.0f} s with {workers} worker(s) x {cfg.threads} thread(s) on {cfg.device} "
                 f"({reused} of {len(jobs)} jobs reused from an earlier run); the jobs took {spent['cpu_s']:.0f} "
                 f"CPU-seconds ({spent['wall_s']:.0f} s of job wall time); results in {output_dir}/")
    lines.append("Figures: " + ", ".join(str(p) for p in plots))
    write_text_atomic(output_dir / SUMMARY_FILE, "\n".join(lines) + "\n")
    _print_lines(console, lines)
    return results
