"""Run the whole study: Section 4 (MLP) and Section 5 (ResNet-50-deep narrow ResNets) on real data, then report.

``run_study(StudyConfig.preset(), "xbn_results/study")`` writes ``study.json`` (kind ``study``),
CSV tables, PNG figures and ``summary.txt`` into the output folder and returns the results dict.
The work is split into independently seeded jobs (``jobs.py``) that run in ``workers`` processes;
each finished job is stored under ``<output>/parts/<fingerprint>/``, so an interrupted run resumes
where it stopped (a network in training from its last finished epoch). The fingerprint covers the
settings the job depends on (threads included), the data and the torch version, so stale parts are
never reused and a change to one kind of job's settings re-runs only those jobs. The same
configuration gives the same numbers with any number of workers.

The folder remembers the settings of the run that writes it (``design.json``): a run with other
settings refuses to replace its summary, claims and plots unless ``overwrite`` is given. The first
Ctrl-C (SIGINT or SIGTERM) stops the workers, keeps every finished job and raises
``utils.interrupts.Interrupted`` with the line to print; the second ends the process at once.

Progress: on a terminal, rich bars per job kind with the running jobs' training steps and an ETA;
elsewhere (a log file), a plain line every ``progress_every_s`` seconds.
"""
import csv
import io
import json
import math
import os
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..utils.errors import UserError
from ..utils.files import write_text_atomic
from ..utils.interrupts import Interrupted, interruptible
from ..evaluation.results import make_results, write_csv, write_json_atomic
from .config import JOB_KINDS, PRESETS, QUICK_NOTE, JobKind, StudyConfig
from .data import StudyData, load_dataset
from .jobs import (
    Job, StepReport, default_workers, job_seconds, job_steps, plan_jobs, run_jobs, torchrun_rank, training_epoch,
    wait_for_results,
)
from .plots import plot_study
from .report import claim_lines, config_differences, evaluate_claims, summary_lines
from .resnet import build_bn_network

__all__ = ["StudyConfig", "PRESETS", "run_study", "RESULTS_FILE", "SUMMARY_FILE", "DESIGN_FILE"]

RESULTS_FILE = "study.json"
SUMMARY_FILE = "summary.txt"
DESIGN_FILE = "design.json"  # the settings of the run that writes the folder
VERDICT_STYLES = {"[HOLDS]": "green", "[CONTRADICTED]": "red", "[INCONCLUSIVE]": "yellow"}


def _by_seed(results: Dict[str, dict], jobs: List[Job], kind: JobKind) -> Dict[str, Dict[str, dict]]:
    """variant -> seed -> result for the jobs of ``kind``."""
    out: Dict[str, Dict[str, dict]] = {}
    for job in jobs:
        if job.kind == kind and job.key in results:
            out.setdefault(job.variant, {})[str(job.seed)] = results[job.key]
    return out


def _collect(cfg: StudyConfig, data: StudyData, results: Dict[str, dict], jobs: List[Job]) -> Tuple[dict, dict]:
    """The ``mlp`` and ``resnet`` sections of study.json from the job results (of the finished jobs
    only while the study runs: a kind without results has empty entries)."""
    per_seed = [results[j.key] for j in jobs if j.kind == JobKind.MLP and j.key in results]
    first = per_seed[0] if per_seed else {}
    mlp = {"config": cfg.mlp.to_dict(), "test_samples": first.get("test_samples"), "seeds": list(cfg.train_seeds),
           "setup_one": first.get("setup_one"), "setup_two": first.get("setup_two"), "by_seed": per_seed}
    rc = cfg.resnet
    networks = _by_seed(results, jobs, JobKind.NETWORK)
    small: Dict[str, Dict[str, Dict[str, float]]] = {}
    for job in jobs:
        if job.kind == JobKind.SMALL_BATCH and job.key in results:
            small.setdefault(job.variant, {}).setdefault(str(job.batch_size), {})[str(job.seed)] = results[job.key]["top1"]
    bn = build_bn_network(rc, data.num_classes, 0)
    train_images = len(data.train_y) if rc.train_samples is None else min(rc.train_samples, len(data.train_y))
    test_images = len(data.test_y) if rc.eval_samples is None else min(rc.eval_samples, len(data.test_y))
    description = (
        f"timm {rc.arch} layout ({sum(len(getattr(bn, f'layer{i}')) for i in range(1, 5))} bottlenecks), "
        f"channels {tuple(rc.channels)}, stem {bn.conv1.out_channels} channels{'' if rc.stem_pool else ' without stem max-pool'}"
        f"{' (batch-free in the XBN variants, one channel per group)' if rc.stem_bfn else ''}, "
        f"{cfg.image_size} px RGB, {sum(p.numel() for p in bn.parameters()):,} parameters; GN {rc.gn_groups} groups; "
        f"{train_images:,} training images, {rc.train_steps(train_images)} SGD steps of {rc.batch_size} "
        f"(lr {rc.lr}, warmup + {'cosine' if rc.schedule == 'cosine' else 'linear decay'}"
        f"{f', label smoothing {rc.label_smoothing:g}' if rc.label_smoothing else ''}, weight decay {rc.weight_decay:g} on "
        f"{'every parameter' if rc.decay_norms else 'weights only'}), "
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
            "models": {v: {s: r["errors"] for s, r in seeds.items()} for v, seeds in _by_seed(results, jobs, JobKind.TTA).items()}}


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
    }


def _write_claims_csv(path: Path, results: dict) -> None:
    """Every effect of every claim with its interval, after ``#`` lines: a quick run's warning and the
    run's design (``study-compare`` reads it to refuse comparing runs of different designs silently)."""
    text = io.StringIO()
    if results["config"].get("preset") == "quick":
        text.write(f"# {QUICK_NOTE}\n")
    text.write(f"# design: {json.dumps(results['config'], sort_keys=True)}\n")
    writer = csv.DictWriter(text, fieldnames=["claim", "verdict", "effect", "counts", "mean", "ci_low", "ci_high", "sd",
                                              "n", "effect_verdict", "unit", "direction", "pairs", "per_seed"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {"claim": c["id"], "verdict": c["verdict"], "effect": e["name"], "counts": e["counts"], "mean": e["mean"],
         "ci_low": e["ci_low"], "ci_high": e["ci_high"], "sd": e["sd"], "n": e["n"], "effect_verdict": e["verdict"],
         "unit": e["unit"], "direction": e["direction"], "pairs": e.get("pairs", 0),
         "per_seed": ";".join(repr(float(v)) for v in e["per_seed"])}
        for c in results["claims"] for e in c["effects"])
    write_text_atomic(path, text.getvalue())


def _print_lines(console: Console, lines: List[str]) -> None:
    """Plain lines, a claim's verdict line in its verdict's colour."""
    for line in lines:
        style = next((v for k, v in VERDICT_STYLES.items() if line.startswith(k)), None)
        console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class _Progress:
    """The study's progress: finished jobs per kind, the running jobs' training steps and an ETA, shown
    as rich bars on a terminal or as a plain line every ``every_s`` seconds elsewhere; each claim is
    printed once, as soon as the job kinds its numbers come from have finished.

    The ETA is the work left times the seconds a job of each kind took: the mean of its finished jobs,
    or, before one has finished, the seconds per step its running jobs have measured times their steps
    (the training alone: a lower bound for the network jobs, which evaluate after training)."""

    def __init__(self, console: Console, cfg: StudyConfig, data: StudyData, jobs: List[Job], parts: Path,
                 workers: int, every_s: float):
        self.console, self.cfg, self.data, self.jobs, self.parts, self.workers = console, cfg, data, jobs, parts, workers
        self.every_s, self.plain = every_s, not console.is_terminal
        self.by_key = {j.key: j for j in jobs}
        self.total = Counter(j.kind for j in jobs)
        self.finished: Counter = Counter()
        self.kinds = [kind for kind in JOB_KINDS if kind in self.total]
        self.steps = {j.key: job_steps(cfg, data, j) for j in jobs}
        self.job_s: Dict[JobKind, List[float]] = {kind: [] for kind in self.kinds}
        self.reports: Dict[str, StepReport] = {}  # the last report of every job that reported
        self.results: Dict[str, dict] = {}
        self.reported: set = set()  # ids of the claims printed
        self.started = time.perf_counter()
        self.last_line = -math.inf
        self.bar: Optional[Progress] = None
        self.tasks: Dict[JobKind, Any] = {}

    def __enter__(self) -> "_Progress":
        if not self.plain:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[running]}"),
                                console=self.console)
            self.tasks = {kind: self.bar.add_task(kind.label, total=self.total[kind], eta="", running="")
                          for kind in self.kinds}
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    # ---- events
    def done(self, job: Job, result: dict) -> None:
        """A job finished (or was found stored)."""
        self.results[job.key] = result
        self.finished[job.kind] += 1
        timing = job.path(self.parts, ".time.json")
        if timing.is_file():
            self.job_s[job.kind].append(json.loads(timing.read_text())["wall_s"])
        self._show(force=self.finished[job.kind] == self.total[job.kind])
        if self.finished[job.kind] == self.total[job.kind]:
            if self.plain:
                self.console.print(f"{job.kind.label}: {self.total[job.kind]}/{self.total[job.kind]} done "
                                   f"({_clock(time.perf_counter() - self.started)} elapsed)", highlight=False)
            self._report_claims()

    def step(self, report: StepReport) -> None:
        """A running job's training step."""
        if report.key in self.results:  # a late report of a finished job
            return
        self.reports[report.key] = report
        self._show()

    def tick(self) -> None:
        """Time passed (the plain line is due every ``every_s`` seconds)."""
        self._show()

    # ---- numbers
    def _running(self, kind: JobKind) -> List[Tuple[Job, StepReport]]:
        return [(self.by_key[k], r) for k, r in self.reports.items()
                if k not in self.results and self.by_key[k].kind == kind]

    def _per_job_s(self, kind: JobKind) -> Optional[float]:
        if self.job_s[kind]:
            return sum(self.job_s[kind]) / len(self.job_s[kind])
        measured = [r for _, r in self._running(kind) if r.step]
        if not measured:
            return None
        of_kind = [self.steps[j.key] for j in self.jobs if j.kind == kind]
        return sum(r.wall_s for r in measured) / sum(r.step for r in measured) * sum(of_kind) / len(of_kind)

    def _left(self, kind: JobKind) -> float:
        running = sum(r.step / r.steps for _, r in self._running(kind) if r.steps)
        return max(0.0, self.total[kind] - self.finished[kind] - running)

    def _eta_s(self, kind: JobKind) -> Optional[float]:
        per_job = self._per_job_s(kind)
        return None if per_job is None else per_job * self._left(kind) / self.workers

    def _cpu_per_step(self, kind: JobKind) -> Optional[float]:
        reports = [r for k, r in self.reports.items() if self.by_key[k].kind == kind and r.step]
        return sum(r.cpu_s for r in reports) / sum(r.step for r in reports) if reports else None

    # ---- display
    def _show(self, force: bool = False) -> None:
        if self.bar is not None:
            for kind in self.kinds:
                left = self.total[kind] - self.finished[kind]
                eta = self._eta_s(kind)
                running = "; ".join(f"{j.describe()} step {r.step}/{r.steps}" for j, r in self._running(kind))
                self.bar.update(self.tasks[kind], completed=self.total[kind] - self._left(kind), running=running,
                                eta="done" if not left else "" if eta is None else f"ETA {_minutes(eta)}")
            return
        now = time.perf_counter()
        if force or now - self.last_line >= self.every_s:
            self.last_line = now
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def line(self) -> str:
        """The plain progress line: elapsed time, per kind the jobs done and the running jobs' steps, the
        CPU-seconds per step measured so far, and the ETA."""
        parts = []
        for kind in self.kinds:
            text = f"{kind.value} {self.finished[kind]}/{self.total[kind]}"
            running = [f"{j.describe()} step {r.step}/{r.steps}" for j, r in self._running(kind)]
            cpu = self._cpu_per_step(kind)
            if running:
                text += f" [{'; '.join(running)}]"
            if cpu is not None and self.finished[kind] < self.total[kind]:
                text += f" {cpu:.3f} CPU-s/step"
            parts.append(text)
        done, total = sum(self.finished.values()), sum(self.total.values())
        line = f"progress {_clock(time.perf_counter() - self.started)}: " + ", ".join(parts) + f"; {done} of {total} jobs"
        left = [kind for kind in self.kinds if self.finished[kind] < self.total[kind]]
        etas = {kind: self._eta_s(kind) for kind in left}
        if left:
            known = sum(e for e in etas.values() if e is not None)
            unknown = [kind.value for kind, e in etas.items() if e is None]
            if len(unknown) < len(left):
                line += f"; ETA {_minutes(known)}" + (f" + {', '.join(unknown)} (not measured yet)" if unknown else "")
            else:
                line += "; ETA after the first steps"
        return line

    def _report_claims(self) -> None:
        done = [kind for kind in self.kinds if self.finished[kind] == self.total[kind]]
        mlp, resnet = _collect(self.cfg, self.data, self.results, self.jobs)
        tta = _collect_tta(self.cfg, self.results, self.jobs)
        for claim in evaluate_claims({"mlp": mlp, "resnet": resnet, "tta": tta}, done):
            if claim.id not in self.reported:
                self.reported.add(claim.id)
                _print_lines(self.console, claim_lines(claim.to_dict()))


def _check_design(output_dir: Path, cfg: StudyConfig, overwrite: bool) -> None:
    """Refuse (``ValueError``) to write a run with other settings into a folder that holds one, unless
    ``overwrite``; then record this run's settings there (``DESIGN_FILE``)."""
    path, current = output_dir / DESIGN_FILE, cfg.to_dict()
    earlier = None
    for source in (path, output_dir / RESULTS_FILE):  # folders written before the design file have study.json
        if source.is_file():
            try:
                loaded = json.loads(source.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError(f"{source} is damaged; remove it, or give --overwrite to start this folder over") from None
            earlier = loaded if source == path else loaded.get("config") if isinstance(loaded, dict) else None
            break
    if earlier is not None and not overwrite:
        changed = config_differences(earlier, current)
        if changed:
            shown = "; ".join(changed[:3]) + (f"; +{len(changed) - 3} more" if len(changed) > 3 else "")
            raise UserError(f"{output_dir} holds a study run with other settings ({shown}); give --overwrite to replace "
                            "its summary, claims and plots (finished jobs stay and are reused), or another --output")
    write_json_atomic(path, current)


def _resume_line(jobs: List[Job], store: Path) -> Optional[str]:
    """``resuming: 20 of 28 jobs done, 1 network at epoch 2/3``, or None when nothing is there to resume."""
    done = sum(j.path(store).is_file() for j in jobs)
    epochs = [e for e in (training_epoch(j, store) for j in jobs if not j.path(store).is_file()) if e is not None]
    if not done and not epochs:
        return None
    line = f"resuming: {done} of {len(jobs)} jobs done"
    if epochs:
        at = ", ".join(f"{e}/{of}" for e, of in sorted(epochs))
        line += f", {len(epochs)} network{'s' if len(epochs) > 1 else ''} at epoch{'s' if len(epochs) > 1 else ''} {at}"
    return line


def run_study(
    config: Optional[StudyConfig] = None,
    output_dir: Union[str, Path] = "xbn_results/study",
    resume: bool = True,
    progress: bool = True,
    console: Optional[Console] = None,
    workers: Optional[int] = None,
    parts: Sequence[str] = JOB_KINDS,
    overwrite: bool = False,
    progress_every_s: float = 30.0,
) -> Optional[Dict[str, Any]]:
    """Run the study, write its artefacts into ``output_dir`` and return the ``study`` results dict.

    Under torchrun the jobs are shared out by rank (job ``i`` runs on rank ``i % world size``), each
    rank writing its results into the same ``output_dir`` (a shared folder across machines); rank 0
    waits for every result, then writes the artefacts and returns the results (the others return None).
    Every rank runs its jobs with the same settings, so the numbers are those of one process.

    Args:
        config: ``StudyConfig.preset()`` by default (``StudyConfig.preset("quick")`` for CI).
        output_dir: where ``study.json``, the CSV tables, the PNG figures and ``summary.txt`` go.
        resume: reuse finished jobs (and networks' saved epochs) stored in ``output_dir/parts`` by an earlier run.
        progress: show the progress (on ``console``): rich bars on a terminal, plain lines elsewhere.
        workers: processes running jobs in parallel (default: one per CPU core, one per rank under
            torchrun); does not change the numbers.
        parts: the job kinds to run (``JOB_KINDS``: ``mlp``, ``network``, ``small_batch``, ``tta``); the
            summary and claims cover these. ``tta`` alone trains only the networks it adapts that
            have no stored weights yet.
        overwrite: replace the summary, claims and plots of a run with other settings in ``output_dir``
            (without it, such a folder is refused with a ``ValueError``).
        progress_every_s: seconds between two plain progress lines.

    Raises:
        utils.interrupts.Interrupted: on the first SIGINT / SIGTERM (the main thread's handler during
            the call), after the workers have stopped; its message says how many jobs are kept.
    """
    unknown = [p for p in parts if p not in JOB_KINDS]
    if unknown or not parts:
        raise UserError(f"unknown study part(s) {unknown}; choose from {', '.join(JOB_KINDS)}")
    with interruptible():
        return _run_study(config or StudyConfig.preset(), Path(output_dir), resume, progress,
                          console or Console(stderr=True), workers, parts, overwrite, progress_every_s)


def _run_study(cfg: StudyConfig, output_dir: Path, resume: bool, progress: bool, console: Console,
               workers: Optional[int], parts: Sequence[str], overwrite: bool, every_s: float) -> Optional[Dict[str, Any]]:
    rank, world = torchrun_rank()
    if world > 1 and cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is each rank's own GPU
    workers = (1 if world > 1 else default_workers(cfg.device)) if workers is None else max(1, int(workers))
    started = time.perf_counter()
    if rank == 0:
        _check_design(output_dir, cfg, overwrite)
    if cfg.quick:
        console.print(f"[bold yellow]{QUICK_NOTE}[/bold yellow] (--quick checks that the study runs; use the default for verdicts)",
                      soft_wrap=True)
    try:
        data = load_dataset(cfg.dataset, cfg.image_size, cfg.seed)
        console.print(f"[bold]Study data[/bold]: {data.describe()}")
        if cfg.dataset == "auto" and data.name != "fashion-mnist":
            console.print("[yellow]note: Fashion-MNIST is not installed, so the study uses its fallback data; on "
                          "Debian/Ubuntu `apt-get install dataset-fashion-mnist` gives it the full Fashion-MNIST[/yellow]")
        kinds = [kind for kind in JOB_KINDS if kind in parts]
        jobs = plan_jobs(cfg, data, kinds)
    except Interrupted:
        raise Interrupted("interrupted before the first job; rerun the same command to start") from None
    store = output_dir / "parts"
    # the tta jobs adapt the networks that the network jobs train: a second phase, so nothing trains twice
    phases = [[j for j in jobs if j.kind != JobKind.TTA], [j for j in jobs if j.kind == JobKind.TTA]]
    if not resume:
        for job in jobs[rank::world]:
            job.path(store).unlink(missing_ok=True)
            if job.kind == JobKind.NETWORK:
                job.training_path(store, ".train.json").unlink(missing_ok=True)
                job.training_path(store, ".ckpt.safetensors").unlink(missing_ok=True)
    reused = sum(j.path(store).is_file() for j in jobs)
    resuming = _resume_line(jobs, store)
    try:
        if world > 1:
            for phase in phases:
                run_jobs(cfg, phase[rank::world], store, workers, data=data)
                wait_for_results(phase, store)
            if rank:
                return None
        if progress:
            console.print(f"Study jobs: {len(jobs)} with {workers} worker{'s' if workers > 1 else ''}, {cfg.threads} "
                          f"thread(s) each, on {cfg.device}" + (f"; {resuming}" if resuming else ""))
        display = _Progress(console, cfg, data, jobs, store, workers, every_s)
        with display if progress else nullcontext():
            outputs = {}
            for phase in phases:
                outputs.update(run_jobs(cfg, phase, store, workers, data=data, on_done=display.done if progress else None,
                                        on_step=display.step if progress else None,
                                        on_tick=display.tick if progress else None, report_every_s=min(every_s, 1.0)))
    except Interrupted:
        kept = sum(j.path(store).is_file() for j in jobs)
        raise Interrupted(f"interrupted after {kept} of {len(jobs)} jobs; rerun the same command to resume") from None
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
    _write_claims_csv(output_dir / "claims.csv", results)
    plots = plot_study(results, output_dir, kinds)
    wall = time.perf_counter() - started
    spent = job_seconds(jobs, store)
    tail = [f"Wall time: {wall:.0f} s with {workers} worker(s) x {cfg.threads} thread(s) on {cfg.device} "
            f"({reused} of {len(jobs)} jobs reused from an earlier run); the jobs took {spent['cpu_s']:.0f} "
            f"CPU-seconds ({spent['wall_s']:.0f} s of job wall time); results in {output_dir}/",
            "Figures: " + ", ".join(str(p) for p in plots)]
    write_text_atomic(output_dir / SUMMARY_FILE, "\n".join(summary_lines(results) + tail) + "\n")
    _print_lines(console, summary_lines(results, skip=display.reported if progress else ()) + tail)
    return results

