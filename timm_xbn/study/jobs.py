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
weights and retrains nothing.
"""
import hashlib
import json
import math
import multiprocessing
import os
import resource
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..evaluation.results import write_json_atomic
from ..training.checkpoint import save_safetensors_atomic
from .config import JOB_KINDS, StudyConfig
from .data import StudyData, load_dataset, subset
from .mlp import build_mlp, input_shift, train_full_batch
from .tta import tta_errors
from .resnet import (
    ImageSplit, adabn_under_corruption, bn_depths, build_variant, corrupted, esm_per_layer, evaluate_top1,
    prepare_images, robustness_sweep, train_classifier,
)

__all__ = ["Job", "job_fingerprints", "plan_jobs", "run_jobs", "default_workers", "job_seconds", "eta_seconds",
           "torchrun_rank", "wait_for_results"]

# ResNetConfig fields a job kind's results do not depend on (everything else goes into its fingerprint)
_SMALL_BATCH_ONLY = ("small_batch_variants", "small_batch_sizes", "small_batch_iterations")
_MAIN_NETWORK_ONLY = ("epochs", "min_steps", "robustness_variants", "deltas", "perturb_seeds", "blocks", "esm_variants",
                      "esm_corruption", "adabn_variants", "corruptions", "severity", "calib_samples")
_IGNORED = {"network": ("variants", *_SMALL_BATCH_ONLY),
            "small_batch": ("variants", "small_batch_variants", "small_batch_sizes", *_MAIN_NETWORK_ONLY)}
# ResNetConfig fields the main networks' trained weights depend on (the ``train`` fingerprint)
_TRAINING = ("arch", "channels", "stem_width", "gn_groups", "stem_pool", "channels_last", "train_samples", "epochs",
             "min_steps", "batch_size", "lr", "weight_decay", "warmup_steps")


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` is ``mlp``, ``network`` (main training + evaluations), ``small_batch`` or
    ``tta`` (test-time adaptation of a main network's stored weights)."""

    kind: str
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
        if self.kind == "mlp":
            return f"mlp_seed{self.seed}"
        if self.kind == "network":
            return self.network_key
        if self.kind == "tta":
            return f"tta_{self._name}_seed{self.seed}"
        return f"smallbatch_{self._name}_b{self.batch_size}_seed{self.seed}"

    def path(self, parts: Path, suffix: str = ".json") -> Path:
        """Where this job's result (``.json``), times (``.time.json``) or weights (``.safetensors``) are stored."""
        return parts / self.fingerprint / f"{self.key}{suffix}"

    def training_path(self, parts: Path, suffix: str = ".safetensors") -> Path:
        """Where a network job's trained weights (``.safetensors``) and training record (``.train.json``) are stored."""
        return parts / self.train_fingerprint / f"{self.network_key}{suffix}"

    def describe(self) -> str:
        if self.kind == "mlp":
            return f"MLP runs, seed {self.seed}"
        if self.kind == "network":
            return f"{self.variant} seed {self.seed}"
        if self.kind == "tta":
            return f"{self.variant} seed {self.seed}, test-time adaptation"
        return f"{self.variant} batch {self.batch_size} seed {self.seed}"


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
    networks = [Job("network", s, v, fingerprint=fp["network"], train_fingerprint=fp["train"])
                for v in rc.variants for s in cfg.train_seeds]
    networks.sort(key=lambda j: -(j.variant in rc.robustness_variants) - (j.variant in rc.adabn_variants))
    mlp = [Job("mlp", s, fingerprint=fp["mlp"]) for s in cfg.train_seeds]
    small = [Job("small_batch", s, v, b, fingerprint=fp["small_batch"]) for b in sorted(rc.small_batch_sizes, reverse=True)
             for v in rc.small_batch_variants for s in cfg.train_seeds]
    tta = [Job("tta", s, v, fingerprint=fp["tta"], train_fingerprint=fp["train"]) for v in cfg.tta.variants if v in rc.variants for s in cfg.train_seeds]
    return [job for job in networks + mlp + small + tta if job.kind in kinds]


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
        self._tta: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

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

    def tta_images(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The test-time adaptation images (normalized model inputs, on the study's device) and labels:
        ``tta.test_samples`` test images (a seeded subset) under ``tta.corruption``, the same for every network."""
        if self._tta is None:
            tc = self.cfg.tta
            train, _, _ = self.splits()
            x, y = subset(self.data.test_x, self.data.test_y, tc.test_samples, self.cfg.seed + 2)
            x = corrupted(prepare_images(x, self.cfg.image_size), tc.corruption, tc.severity, self.cfg.seed + 2000)
            self._tta = (train.normalize(x.to(self.cfg.device)), y.to(self.cfg.device))
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
        raise ValueError(f"every training-set size {list(mc.train_sizes)} is >= the {len(test_y)} test samples S' it is drawn from")
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
    and stored (the record is written last, so a record means complete weights)."""
    rc = ctx.cfg.resnet
    weights, record = job.training_path(parts), job.training_path(parts, ".train.json")
    model = build_variant(job.variant, rc, ctx.data.num_classes, job.seed).to(ctx.cfg.device)
    if record.is_file() and weights.is_file():
        model.load_state_dict(load_file(str(weights)))
        return model.eval(), json.loads(record.read_text())
    train, _, _ = ctx.splits()
    steps = rc.train_steps(len(train.y))
    history = train_classifier(model, train, job.seed, rc.batch_size, rc.lr, rc.weight_decay, rc.warmup_steps, steps)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(model.state_dict(), weights)
    training = {"steps": steps, "history": history}
    write_json_atomic(record, training)
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
    images, labels = ctx.tta_images()
    return {"variant": job.variant, "seed": job.seed, "errors": tta_errors(model, images, labels, ctx.cfg.tta, ctx.cfg.seed)}


def _small_batch_job(ctx: _Context, job: Job) -> dict:
    """Train with ``job.batch_size`` images per step for the fixed number of iterations; test top-1."""
    rc = ctx.cfg.resnet
    train, test, _ = ctx.splits()
    model = build_variant(job.variant, rc, ctx.data.num_classes, job.seed).to(ctx.cfg.device)
    lr = rc.small_batch_lr(job.batch_size)
    history = train_classifier(model, train, job.seed, job.batch_size, lr, rc.weight_decay,
                               rc.warmup_steps, rc.small_batch_iterations)
    return {"variant": job.variant, "seed": job.seed, "batch_size": job.batch_size, "lr": lr,
            "iterations": rc.small_batch_iterations, "train_loss": history[-1]["loss"],
            "top1": evaluate_top1(model, test.batches(rc.eval_batch_size))}


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker once the study process that started it is gone (killed
    without the chance to stop its pool), instead of going on with jobs nobody collects."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


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
            ctx = _context(cfg)
            if job.kind == "mlp":
                result = _mlp_job(ctx, job.seed)
            elif job.kind == "network":
                result = _network_job(ctx, job, parts)
            elif job.kind == "tta":
                result = _tta_job(ctx, job, parts)
            else:
                result = _small_batch_job(ctx, job)
    finally:
        torch.set_num_threads(previous)
    write_json_atomic(job.path(parts, ".time.json"),
                      {"wall_s": time.perf_counter() - started_wall, "cpu_s": _cpu_seconds() - started_cpu})
    write_json_atomic(job.path(parts), result)
    return result


def eta_seconds(times: Sequence[float], remaining: int, workers: int) -> Optional[float]:
    """Seconds until ``remaining`` more jobs of a kind finish, ``workers`` at a time, each taking the
    mean of the finished jobs' ``times`` (None before one has finished)."""
    if not times:
        return None
    return sum(times) / len(times) * math.ceil(remaining / max(1, workers))


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
) -> Dict[str, dict]:
    """Run the jobs that have no stored result in ``parts`` (in ``workers`` processes; 1 runs them
    here, on ``data`` if the caller has loaded it) and return every job's result by key; ``on_done``
    gets each job and its result as it finishes (stored ones first)."""
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
                raise ValueError(f"cannot resume: {stored} is damaged ({err}); delete it to run that job again") from None
            if on_done is not None:
                on_done(job, results[job.key])
        else:
            pending.append(job)
    if workers <= 1 or len(pending) <= 1:
        if pending:
            _context(cfg, data)
        for job in pending:
            results[job.key] = _run_job(cfg, job, parts)
            if on_done is not None:
                on_done(job, results[job.key])
        _CONTEXTS.clear()  # free the data this process loaded
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context,
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_run_job, cfg, job, parts): job for job in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures[future]
                results[job.key] = future.result()
                if on_done is not None:
                    on_done(job, results[job.key])
    return results
