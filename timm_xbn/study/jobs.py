"""The study's units of work, run in parallel worker processes with results that do not depend on how many.

A job is one independently seeded unit: the Section 4 MLP runs of one seed, one Section 5
network trained and evaluated, or one small-batch training run. Each job seeds everything it
uses (model init, data order, perturbation and corruption draws) from its own settings, runs with
the configured number of torch threads, and stores its result as ``<key>.json`` in the parts folder, so

* an interrupted study resumes with the jobs that have no result yet, and
* the numbers are the same whether the jobs run one after another or in several processes.

Workers are spawned processes (``--workers``); each loads the data set once.

Results live in ``<parts>/<fingerprint>/``, one folder per job kind and the settings that kind
depends on (``job_fingerprints``): changing, say, the small-batch iterations re-runs only the
small-batch jobs, and the trained main networks are reused.

Test-time adaptation jobs (``tta``, ``timm_xbn.study.tta``) evaluate the same stored networks; they
run after the network jobs (``run_study`` runs them as a second phase), so nothing is trained twice.

A network job trains, then evaluates: its training is stored apart, as ``<key>.safetensors`` (the
weights) and ``<key>.train.json`` (steps and per-epoch history) in the folder of the ``train``
fingerprint, which holds the training settings only. Changing only an evaluation setting (the
Deltas, perturbation draws, corruptions, ESM settings) re-runs the evaluations on the stored
weights and retrains nothing. While it trains, its state is saved after every epoch
(``<key>.ckpt.safetensors``), so an interrupted network resumes from its last epoch with the
numbers of an uninterrupted run.

A job reports its training steps as it goes (``set_step_reporter``; from worker processes through a
queue), for the progress display. The first SIGINT / SIGTERM stops the workers and cancels the
queued jobs (``utils.interrupts``); every finished job's result is kept.
"""
import hashlib
import json
import math
import multiprocessing
import os
import queue
import resource
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..evaluation.results import write_json_atomic
from ..training.checkpoint import save_safetensors_atomic
from ..utils.errors import UserError
from ..utils.interrupts import call_in_worker, stop_pool, worker_init
from .config import JOB_KINDS, JobKind, StudyConfig
from .data import StudyData, load_dataset, subset
from .mlp import build_mlp, input_shift, train_full_batch
from .tta import Domain, domains_of, tta_errors
from .resnet import (
    ImageSplit, adabn_under_corruption, bn_depths, build_variant, corrupted, esm_per_layer, evaluate_top1,
    prepare_images, robustness_sweep, train_classifier, training_state_epoch,
)

__all__ = ["Job", "StepReport", "job_fingerprints", "plan_jobs", "run_jobs", "default_workers", "job_seconds",
           "job_steps", "study_splits", "training_epoch", "set_step_reporter", "torchrun_rank", "wait_for_results"]

# ResNetConfig fields a job kind's results do not depend on (everything else goes into its fingerprint)
_SMALL_BATCH_ONLY = ("small_batch_variants", "small_batch_sizes", "small_batch_iterations")
_MAIN_NETWORK_ONLY = ("epochs", "min_steps", "schedule", "label_smoothing", "robustness_variants", "deltas", "perturb_seeds", "blocks", "esm_variants",
                      "esm_corruption", "adabn_variants", "corruptions", "severity", "calib_samples")
_IGNORED = {"network": ("variants", *_SMALL_BATCH_ONLY),
            "small_batch": ("variants", "small_batch_variants", "small_batch_sizes", *_MAIN_NETWORK_ONLY)}
# ResNetConfig fields the main networks' trained weights depend on (the ``train`` fingerprint)
_TRAINING = ("arch", "channels", "stem_width", "gn_groups", "stem_pool", "channels_last", "train_samples", "epochs",
             "min_steps", "batch_size", "lr", "weight_decay", "decay_norms", "stem_bfn", "warmup_steps", "schedule",
             "label_smoothing")


@dataclass(frozen=True)
class Job:
    """One unit of work of a ``JobKind``: ``MLP``, ``NETWORK`` (main training + evaluations), ``SMALL_BATCH``
    or ``TTA`` (test-time adaptation of a main network's stored weights)."""

    kind: JobKind
    seed: int
    variant: str = ""
    batch_size: int = 0
    fingerprint: str = ""  # the folder of its kind's settings (``job_fingerprints``)
    train_fingerprint: str = ""  # network and tta jobs: the folder of the trained weights (the ``train`` fingerprint)

    @property
    def _name(self) -> str:
        return self.variant.lower().replace("-", "_")

    @property
    def network_key(self) -> str:
        """The key of the main network this job trains or uses."""
        return f"net_{self._name}_seed{self.seed}"

    @property
    def key(self) -> str:
        """Its result's file name (without suffix), unique in a plan."""
        return _KINDS[self.kind].key(self)

    def path(self, parts: Path, suffix: str = ".json") -> Path:
        """Where this job's result (``.json``), times (``.time.json``) or weights (``.safetensors``) are stored."""
        return parts / self.fingerprint / f"{self.key}{suffix}"

    def training_path(self, parts: Path, suffix: str = ".safetensors") -> Path:
        """Where a network job's trained weights (``.safetensors``) and training record (``.train.json``) are stored."""
        return parts / self.train_fingerprint / f"{self.network_key}{suffix}"

    def describe(self) -> str:
        """A few words for the progress display."""
        return _KINDS[self.kind].describe(self)


def job_fingerprints(cfg: StudyConfig, data: StudyData) -> Dict[str, str]:
    """Job kind -> hash of everything its results depend on: its settings, the threads (they change
    floating-point rounding), the data subsets' seed, the data set and the torch version; the ResNets'
    kinds also the device (CUDA runs in bf16). ``train`` is the main networks' training alone (their
    stored weights)."""
    device = {} if cfg.device == "cpu" else {"device": cfg.device}  # CPU runs keep the fingerprints they had before devices
    resnet = {**cfg.resnet.to_dict(), **device}
    settings = {
        "mlp": cfg.mlp.to_dict(),
        **{kind: {k: v for k, v in resnet.items() if k not in ignored} for kind, ignored in _IGNORED.items()},
        "train": {**{k: resnet[k] for k in _TRAINING}, **device},
    }
    tta = {k: v for k, v in cfg.tta.to_dict().items() if k != "variants"}  # a job's variant is in its key
    settings["tta"] = {**tta, "train": settings["train"]}  # it adapts the stored networks
    common = {"dataset": cfg.dataset, "image_size": cfg.image_size, "seed": cfg.seed, "threads": cfg.threads,
              "data": [data.name, data.source, len(data.train_y), len(data.test_y)], "torch": torch.__version__}
    return {kind: hashlib.sha1(json.dumps({"kind": kind, "settings": s, **common}, sort_keys=True).encode()).hexdigest()[:12]
            for kind, s in settings.items()}


def plan_jobs(cfg: StudyConfig, data: StudyData, kinds: Sequence[str] = JOB_KINDS) -> List[Job]:
    """The study's jobs of ``kinds``, longest first (so parallel workers finish close together); the
    ``tta`` jobs last (they use the networks the ``network`` jobs train)."""
    rc, fp = cfg.resnet, job_fingerprints(cfg, data)
    networks = [Job(JobKind.NETWORK, s, v, fingerprint=fp["network"], train_fingerprint=fp["train"])
                for v in rc.variants for s in cfg.train_seeds]
    networks.sort(key=lambda j: -(j.variant in rc.robustness_variants) - (j.variant in rc.adabn_variants))
    mlp = [Job(JobKind.MLP, s, fingerprint=fp["mlp"]) for s in cfg.train_seeds]
    small = [Job(JobKind.SMALL_BATCH, s, v, b, fingerprint=fp["small_batch"])
             for b in sorted(rc.small_batch_sizes, reverse=True) for v in rc.small_batch_variants for s in cfg.train_seeds]
    tta = [Job(JobKind.TTA, s, v, fingerprint=fp["tta"], train_fingerprint=fp["train"])
           for v in cfg.tta.variants if v in rc.variants for s in cfg.train_seeds]
    return [job for job in networks + mlp + small + tta if job.kind in kinds]


def job_steps(cfg: StudyConfig, data: StudyData, job: Job) -> int:
    """The training steps ``job`` reports while it runs (0 for the kinds that do not train a ResNet)."""
    rc = cfg.resnet
    if job.kind == JobKind.NETWORK:
        return rc.train_steps(len(data.train_y) if rc.train_samples is None else min(rc.train_samples, len(data.train_y)))
    return rc.small_batch_iterations if job.kind == JobKind.SMALL_BATCH else 0


def training_epoch(job: Job, parts: Path) -> Optional[Tuple[int, int]]:
    """(epochs done, epochs in all) of a network job's saved training state, or None when it has none."""
    path = job.training_path(parts, ".ckpt.safetensors")
    if job.kind != JobKind.NETWORK or not path.is_file() or job.training_path(parts, ".train.json").is_file():
        return None
    try:
        return training_state_epoch(path)
    except (OSError, ValueError, KeyError, SafetensorError):  # a damaged state file is reported when the job loads it
        return None


def torchrun_rank() -> Tuple[int, int]:
    """(rank, world size) of this process under torchrun (its RANK / WORLD_SIZE variables); (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def wait_for_results(jobs: Iterable[Job], parts: Path, poll_s: float = 1.0) -> None:
    """Block until every job has its stored result (written by other ranks; torchrun stops all
    ranks when one fails, so a failed job ends the wait too)."""
    missing = [job for job in jobs if not job.path(parts).is_file()]
    while missing:
        time.sleep(poll_s)
        missing = [job for job in missing if not job.path(parts).is_file()]


def default_workers(device: str = "cpu") -> int:
    """One worker per available CPU core; one process driving the GPU on CUDA."""
    if device == "cuda":
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


# ---- per-process context -----------------------------------------------------------------------


class _Context:
    """The data of one study configuration, prepared once per process."""

    def __init__(self, cfg: StudyConfig, data: Optional[StudyData] = None):
        self.cfg = cfg
        self.data: StudyData = data if data is not None else load_dataset(cfg.dataset, cfg.image_size, cfg.seed)
        self._splits: Optional[tuple] = None
        self._corrupted: Dict[tuple, torch.Tensor] = {}
        self._tta: Optional[Tuple[torch.Tensor, torch.Tensor, List[Domain]]] = None

    def splits(self):
        """(train, test, calib) image splits for the ResNets, normalized with the training statistics, on the study's device."""
        if self._splits is None:
            rc, size = self.cfg.resnet, self.cfg.image_size
            train_x, train_y = subset(self.data.train_x, self.data.train_y, rc.train_samples, self.cfg.seed)
            train_x = prepare_images(train_x, size)
            mean, std = train_x.mean(dim=(0, 2, 3)), train_x.std(dim=(0, 2, 3))
            test_x, test_y = subset(self.data.test_x, self.data.test_y, rc.eval_samples, self.cfg.seed)
            calib_idx = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.cfg.seed + 1))
            calib_idx = calib_idx[: min(rc.calib_samples, len(train_y))]
            self._splits = tuple(split.to(self.cfg.device) for split in (
                ImageSplit(train_x, train_y, mean, std),
                ImageSplit(prepare_images(test_x, size), test_y, mean, std),
                ImageSplit(train_x[calib_idx], train_y[calib_idx], mean, std),
            ))
        return self._splits

    def corrupted(self, split: str, corruption: str) -> torch.Tensor:
        """The ``test`` or ``calib`` images under ``corruption`` (same draws for every network)."""
        key = (split, corruption)
        if key not in self._corrupted:
            _, test, calib = self.splits()
            images = (test.x if split == "test" else calib.x).cpu()  # drawn on the CPU: the same draws on every device
            index = sorted({*self.cfg.resnet.corruptions, self.cfg.resnet.esm_corruption}).index(corruption)
            seed = self.cfg.seed + 1000 * (split == "calib") + index
            self._corrupted[key] = corrupted(images, corruption, self.cfg.resnet.severity, seed).to(self.cfg.device)
        return self._corrupted[key]

    def tta_images(self) -> Tuple[torch.Tensor, torch.Tensor, List[Domain]]:
        """The test-time adaptation stream's images (normalized model inputs, on the study's device), labels
        and blocks: ``tta.test_samples`` test images (a seeded subset; all by default), a block per
        ``tta.corruptions`` entry, each under its corruption; the same for every network."""
        if self._tta is None:
            tc = self.cfg.tta
            train, _, _ = self.splits()
            count = min(tc.test_samples or len(self.data.test_y), len(self.data.test_y))
            pick = torch.randperm(len(self.data.test_y), generator=torch.Generator().manual_seed(self.cfg.seed + 2))[:count]
            x, y = prepare_images(self.data.test_x[pick], self.cfg.image_size), self.data.test_y[pick]
            domains = domains_of(len(y), tc.corruptions)
            x = torch.cat([corrupted(x[d.start:d.end], d.corruption, tc.severity, self.cfg.seed + 2000 + k)
                           for k, d in enumerate(domains)])
            self._tta = (train.normalize(x.to(self.cfg.device)), y.to(self.cfg.device), domains)
        return self._tta


_CONTEXTS: Dict[str, _Context] = {}


def _context(cfg: StudyConfig, data: Optional[StudyData] = None) -> _Context:
    """This process's context for ``cfg`` (one at a time: a new configuration replaces the old one);
    ``data``, when the caller has loaded it already, is used instead of loading it again."""
    key = repr(cfg.to_dict())
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[key] = _Context(cfg, data)
    return _CONTEXTS[key]


def study_splits(cfg: StudyConfig, data: Optional[StudyData] = None) -> Tuple[ImageSplit, ImageSplit, ImageSplit]:
    """The (train, test, calib) image splits of the Section 5 networks under ``cfg`` (this process's copy)."""
    return _context(cfg, data).splits()


# ---- the jobs -----------------------------------------------------------------------------------


def _mlp_inputs(data: StudyData, x: torch.Tensor) -> torch.Tensor:
    """Flattened images standardized with the training split's per-channel mean/std."""
    mean = data.train_x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = data.train_x.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    return ((x - mean) / std).flatten(1)


def _mlp_job(ctx: _Context, seed: int) -> dict:
    """Section 4 for one seed: setup one (train on S' itself) and setup two (S sampled from S')."""
    cfg, mc, data = ctx.cfg, ctx.cfg.mlp, ctx.data
    test_x, test_y = subset(data.test_x, data.test_y, mc.test_samples, cfg.seed)  # S' is fixed across seeds
    test_x = _mlp_inputs(data, test_x)

    def run(layout: str, x: torch.Tensor, y: torch.Tensor, eval_every: int, esm_every: int) -> dict:
        model = build_mlp(layout, test_x.shape[1], data.num_classes, mc, seed)
        return asdict(train_full_batch(model, x, y, test_x, test_y, mc.epochs, mc.lr, eval_every, esm_every))

    setup_one = {label: run(layout, test_x, test_y, mc.eval_every, mc.esm_every)
                 for label, layout in (("BN", "bn"), ("GNBN", "gnbn"))}
    sizes = [s for s in mc.train_sizes if s < len(test_y)]  # S must be a proper subset of S'
    if not sizes:
        raise UserError(f"every training-set size {list(mc.train_sizes)} is >= the {len(test_y)} test samples S' it is drawn from")
    runs: Dict[str, Dict[str, dict]] = {"BN": {}, "GNBN": {}}
    shift = {}
    for size in sizes:
        x, y = subset(test_x, test_y, size, seed * 100_003 + size)
        shift[str(size)] = input_shift(x, test_x)
        for label, layout in (("BN", "bn"), ("GNBN", "gnbn")):
            # setup two: test error every 4 epochs, ESM at the end only (the paper's Fig. 3(c)/5(a))
            runs[label][str(size)] = run(layout, x, y, max(mc.eval_every, 4), mc.epochs)
    return {"seed": seed, "test_samples": len(test_y), "setup_one": setup_one,
            "setup_two": {"train_sizes": sizes, "input_esm_sigma": shift, "runs": runs}}


def _trained_network(ctx: _Context, job: Job, parts: Path) -> Tuple[nn.Module, dict]:
    """The Section 5 network of ``job`` trained on the training split, and its training record
    (steps, history): loaded from an earlier run's stored weights when there are any, else trained
    (from its last saved epoch, if an earlier run was interrupted) and stored (the record is written
    last, so a record means complete weights)."""
    rc = ctx.cfg.resnet
    weights, record = job.training_path(parts), job.training_path(parts, ".train.json")
    model = build_variant(job.variant, rc, ctx.data.num_classes, job.seed).to(ctx.cfg.device)
    if record.is_file() and weights.is_file():
        model.load_state_dict(load_file(str(weights)))
        return model.eval(), json.loads(record.read_text())
    train, _, _ = ctx.splits()
    steps = rc.train_steps(len(train.y))
    state = job.training_path(parts, ".ckpt.safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    history = train_classifier(model, train, job.seed, steps=steps, on_step=_step_callback(job, steps), checkpoint=state,
                               **rc.recipe())
    save_safetensors_atomic(model.state_dict(), weights)
    training = {"steps": steps, "history": history}
    write_json_atomic(record, training)
    state.unlink(missing_ok=True)
    return model, training


def _network_job(ctx: _Context, job: Job, parts: Path) -> dict:
    """One Section 5 network (trained, or loaded from its stored training), then the evaluations its variant takes part in."""
    rc = ctx.cfg.resnet
    _, test, calib = ctx.splits()
    model, training = _trained_network(ctx, job, parts)
    bs = rc.eval_batch_size
    out = {"variant": job.variant, "seed": job.seed, **training, "top1": evaluate_top1(model, test.batches(bs))}
    if job.variant in rc.robustness_variants:
        summary, targets = robustness_sweep({job.variant: model}, test, rc.deltas, rc.perturb_seeds, rc.blocks, bs)
        out["robustness"] = {**summary[job.variant], "targets": targets[job.variant]}
    if job.variant in rc.esm_variants:
        depth_of = bn_depths(rc)
        out["esm"] = {
            "clean": esm_per_layer(model, test.batches(bs), depth_of),
            "shifted": esm_per_layer(model, test.batches(bs, ctx.corrupted("test", rc.esm_corruption)), depth_of),
        }
    if job.variant in rc.adabn_variants:
        out["adabn"] = {c: adabn_under_corruption(model, test, ctx.corrupted("test", c), calib,
                                                  ctx.corrupted("calib", c), bs) for c in rc.corruptions}
    return out


def _tta_job(ctx: _Context, job: Job, parts: Path) -> dict:
    """Test-time adaptation of one stored main network on the i.i.d., label-shift and batch-1 streams."""
    model, _ = _trained_network(ctx, job, parts)
    images, labels, domains = ctx.tta_images()
    # the streams are drawn with the training seed: the interval over training seeds covers the draw
    return {"variant": job.variant, "seed": job.seed,
            "errors": tta_errors(model, images, labels, domains, ctx.cfg.tta, job.seed)}


def _small_batch_job(ctx: _Context, job: Job) -> dict:
    """Train with ``job.batch_size`` images per step for the fixed number of iterations; test top-1."""
    rc = ctx.cfg.resnet
    train, test, _ = ctx.splits()
    model = build_variant(job.variant, rc, ctx.data.num_classes, job.seed).to(ctx.cfg.device)
    lr = rc.small_batch_lr(job.batch_size)
    history = train_classifier(model, train, job.seed, job.batch_size, lr, rc.weight_decay,
                               rc.warmup_steps, rc.small_batch_iterations,
                               on_step=_step_callback(job, rc.small_batch_iterations), decay_norms=rc.decay_norms)
    return {"variant": job.variant, "seed": job.seed, "batch_size": job.batch_size, "lr": lr,
            "iterations": rc.small_batch_iterations, "train_loss": history[-1]["loss"],
            "top1": evaluate_top1(model, test.batches(rc.eval_batch_size))}


@dataclass(frozen=True)
class _KindSpec:
    """What a job kind is called, how its jobs are named and run: the one place that dispatches on ``JobKind``."""

    key: Callable[[Job], str]
    describe: Callable[[Job], str]
    run: Callable[[_Context, Job, Path], dict]


_KINDS: Dict[JobKind, _KindSpec] = {
    JobKind.MLP: _KindSpec(lambda j: f"mlp_seed{j.seed}", lambda j: f"MLP runs, seed {j.seed}",
                           lambda ctx, j, parts: _mlp_job(ctx, j.seed)),
    JobKind.NETWORK: _KindSpec(lambda j: j.network_key, lambda j: f"{j.variant} seed {j.seed}", _network_job),
    JobKind.SMALL_BATCH: _KindSpec(lambda j: f"smallbatch_{j._name}_b{j.batch_size}_seed{j.seed}",
                                   lambda j: f"{j.variant} batch {j.batch_size} seed {j.seed}",
                                   lambda ctx, j, parts: _small_batch_job(ctx, j)),
    JobKind.TTA: _KindSpec(lambda j: f"tta_{j._name}_seed{j.seed}",
                           lambda j: f"{j.variant} seed {j.seed}, test-time adaptation", _tta_job),
}


# ---- step reports (progress of the running jobs) -------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    """A running job's progress: ``step`` of ``steps`` training updates after ``cpu_s`` / ``wall_s`` seconds."""

    key: str
    step: int
    steps: int
    cpu_s: float
    wall_s: float


_reporter: Optional[Callable[[StepReport], None]] = None
_report_every_s = 0.0


def set_step_reporter(reporter: Optional[Callable[[StepReport], None]], every_s: float = 0.0) -> None:
    """Send this process's jobs' ``StepReport``s to ``reporter``, at most one per ``every_s`` seconds
    per job (the last step always); None: report nothing."""
    global _reporter, _report_every_s
    _reporter, _report_every_s = reporter, every_s


def _step_callback(job: Job, steps: int) -> Optional[Callable[[int], None]]:
    """``train_classifier``'s ``on_step`` for ``job``: a ``StepReport`` now and then, timed from its first call."""
    if _reporter is None:
        return None
    started_wall, started_cpu, last = time.perf_counter(), _cpu_seconds(), [-math.inf]

    def on_step(step: int) -> None:
        now = time.perf_counter()
        if _reporter is not None and (now - last[0] >= _report_every_s or step == steps):
            last[0] = now
            _reporter(StepReport(job.key, step, steps, _cpu_seconds() - started_cpu, now - started_wall))

    return on_step


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker once the study process that started it is gone (killed
    without the chance to stop its pool), instead of going on with jobs nobody collects."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _worker_start(parent: int, reports: Optional["multiprocessing.Queue"], every_s: float) -> None:
    """Worker initializer: interrupts as ``utils.interrupts`` says, step reports into ``reports``, and
    ``_exit_with_parent``."""
    worker_init()
    set_step_reporter(None if reports is None else reports.put, every_s)
    _exit_with_parent(parent)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_job(cfg: StudyConfig, job: Job, parts: Path) -> dict:
    """Run ``job`` with the study's thread count and the global RNG state left as it was; store its
    result, and its wall and CPU seconds beside it (``<key>.time.json``, not part of the results)."""
    started_wall, started_cpu = time.perf_counter(), _cpu_seconds()
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            result = _KINDS[job.kind].run(_context(cfg), job, parts)
    finally:
        torch.set_num_threads(previous)
    write_json_atomic(job.path(parts, ".time.json"),
                      {"wall_s": time.perf_counter() - started_wall, "cpu_s": _cpu_seconds() - started_cpu})
    write_json_atomic(job.path(parts), result)
    return result


def job_seconds(jobs: Iterable[Job], parts: Path) -> Dict[str, float]:
    """Total wall and CPU seconds the jobs took when they ran (also in earlier, resumed runs)."""
    total = {"wall_s": 0.0, "cpu_s": 0.0}
    for job in jobs:
        path = job.path(parts, ".time.json")
        if path.is_file():
            for key, value in json.loads(path.read_text()).items():
                total[key] += value
    return total


def run_jobs(
    cfg: StudyConfig,
    jobs: Iterable[Job],
    parts: Path,
    workers: int = 1,
    on_done: Optional[Callable[[Job, dict], None]] = None,
    data: Optional[StudyData] = None,
    on_step: Optional[Callable[[StepReport], None]] = None,
    on_tick: Optional[Callable[[], None]] = None,
    report_every_s: float = 1.0,
) -> Dict[str, dict]:
    """Run the jobs that have no stored result in ``parts`` (in ``workers`` processes; 1 runs them
    here, on ``data`` if the caller has loaded it) and return every job's result by key; ``on_done``
    gets each job and its result as it finishes (stored ones first), ``on_step`` the running jobs'
    ``StepReport``s (at most one per ``report_every_s`` per job) and, with workers, ``on_tick`` a call
    every ``report_every_s`` while it waits for them.

    An exception here (``utils.interrupts.Interrupted`` on Ctrl-C) cancels the queued jobs and stops
    the workers before it propagates; the results stored so far stay."""
    jobs = list(jobs)
    for folder in {job.path(parts).parent for job in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    results: Dict[str, dict] = {}
    pending = []
    for job in jobs:
        stored = job.path(parts)
        if stored.is_file():
            try:
                results[job.key] = json.loads(stored.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise UserError(f"cannot resume: {stored} is damaged ({err}); delete it to run that job again") from None
            if on_done is not None:
                on_done(job, results[job.key])
        else:
            pending.append(job)
    if workers <= 1 or len(pending) <= 1:
        set_step_reporter(on_step, report_every_s)
        try:
            if pending:
                _context(cfg, data)
            for job in pending:
                results[job.key] = _run_job(cfg, job, parts)
                if on_done is not None:
                    on_done(job, results[job.key])
        finally:
            set_step_reporter(None)
            _CONTEXTS.clear()  # free the data this process loaded
        return results
    context = multiprocessing.get_context("spawn")
    reports = context.Queue() if on_step is not None else None
    pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context, initializer=_worker_start,
                               initargs=(os.getpid(), reports, report_every_s))
    poll = max(report_every_s, 0.2) if on_step is not None or on_tick is not None else None
    try:
        futures = {pool.submit(call_in_worker, _run_job, cfg, job, parts): job for job in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, timeout=poll, return_when=FIRST_COMPLETED)
            _drain(reports, on_step)
            if on_tick is not None:
                on_tick()
            for future in done:
                job = futures[future]
                results[job.key] = future.result()
                if on_done is not None:
                    on_done(job, results[job.key])
    except BaseException:
        stop_pool(pool)
        raise
    finally:
        if reports is not None:
            reports.close()
            reports.join_thread()
    pool.shutdown()
    return results


def _drain(reports: Optional["multiprocessing.Queue"], on_step: Optional[Callable[[StepReport], None]]) -> None:
    """Pass the step reports the workers have sent so far to ``on_step``."""
    while reports is not None and on_step is not None:
        try:
            report = reports.get_nowait()
        except queue.Empty:
            return
        on_step(report)
