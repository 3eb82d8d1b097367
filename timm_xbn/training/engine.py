"""The xbn-train training run, assembled from timm's library pieces.

One process per device (``torchrun`` sets the ranks; gloo on CPU, nccl on CUDA). The model is
trained through a ``timm.task.ClassificationTask`` (loss, DDP, ModelEmaV3), with timm's
optimizer / scheduler factories, data pipeline and Mixup, and evaluated with timm's
``ClassificationEvaluator``. Rank 0 shows a rich progress bar, appends ``summary.csv`` each epoch,
saves checkpoints (see ``checkpoint.py``) and writes ``results.json`` at the end.
"""
import argparse
import copy
import csv
import glob
import importlib
import math
from contextlib import ExitStack, nullcontext
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from timm import utils
from timm.data import IterableImageDataset, resolve_data_config
from timm.layers import convert_sync_batchnorm
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationEvaluator, ClassificationTask, evaluation_sample_limit
from timm.utils import NativeScaler, dispatch_clip_grad, unwrap_model

from ..utils.errors import UserError
from ..utils.files import write_text_atomic
from ..utils.interrupts import Interrupted, StopRequest, interruptible
from ..evaluation.models import state_dict_sha1
from ..evaluation.results import claim_output_dir, write_csv, write_json_atomic
from ..models import state_dict_mismatch
from .args import config_dict, resolve_lr
from .checkpoint import (
    TrainCheckpointSaver, gather_rng_states, load_training_checkpoint, restore_rng_state, save_safetensors_atomic,
    unwrapped_state_dict,
)
from .data import (
    ResumableSampler, check_class_count, create_datasets, create_eval_loader, create_mixup, create_train_loader, mixup_active, position_loader,
)
from .model import create_train_model, model_label, surgery_settings
from .output import check_writable, resume_path

__all__ = ["train", "Trainer"]


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training with resolved options (see ``build_args``); returns the ``results.json`` content.

    ``args`` is not modified. Under torchrun every rank calls this; rank 0 writes the outputs.
    """
    return Trainer(args).run()


def _trim_summary(path: Path, next_epoch: int) -> None:
    """Keep the summary rows of epochs before ``next_epoch`` (a resumed run rewrites the later ones)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["epoch"]) < next_epoch]
    if not kept:
        path.unlink()
        return
    write_csv(path, kept)


def _append_summary(path: Path, row: Dict[str, Any]) -> None:
    """timm's ``update_summary`` row (epoch, train_*, eval_*, lr), appended by rewriting the file atomically,
    so that a failed write keeps the earlier epochs' rows."""
    rows: List[Dict[str, Any]] = []
    if path.exists():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    write_csv(path, rows + [row])


class Trainer:
    """Holds one training run's objects; ``run()`` trains and returns the results."""

    def __init__(self, args: argparse.Namespace):
        self.args = copy.deepcopy(args)
        self.config = config_dict(args)
        self.progress = dict(epoch=0, batch=0, num_updates=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        self.eval_metrics: Dict[str, float] = {}
        self.resume_path = ""
        self.rng_states: List[Dict[str, Any]] = []
        self.best: Dict[str, Any] = {}
        self.lock = ExitStack()
        self.stop = StopRequest()  # set by the first Ctrl-C / SIGTERM (one process only): save, then stop

    # ---- setup ---------------------------------------------------------------------------------
    def _setup_device(self) -> None:
        args = self.args
        for module in args.device_modules or ():
            importlib.import_module(module)
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {args.device!r} requested but CUDA is not available; use --device cpu")
        self.device = utils.init_distributed_device(args)
        self.primary = utils.is_primary(args)
        self.console = Console(stderr=True, quiet=not self.primary)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        for flag in ("amp", "channels_last"):
            if getattr(args, flag) and not self.cuda:
                self.console.print(f"[yellow]note: {flag} is only used on CUDA; training on {self.device} in float32[/yellow]")
        amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        self.use_amp = args.amp and self.cuda
        self.autocast = partial(torch.autocast, device_type="cuda", dtype=amp_dtype) if self.use_amp else nullcontext
        self.loss_scaler = NativeScaler(device="cuda") if self.use_amp and amp_dtype == torch.float16 else None
        self.channels_last = args.channels_last and self.cuda
        self.prefetch = self.cuda and not args.no_prefetcher
        utils.random_seed(args.seed, args.rank)

    def _build_model(self) -> None:
        args = self.args
        in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
        model = create_train_model(args, in_chans)
        self.model_name = surgery_settings(args)[0]  # what timm.create_model takes (with the run's model_kwargs)
        self.label = model_label(args)  # for people: the name, or e.g. xbn_converted(resnet50,P2,every=1,gn)
        if args.num_classes is None:
            args.num_classes = model.num_classes
        self.data_config = resolve_data_config(vars(args), model=model, verbose=False)
        model.to(device=self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if args.sync_bn and args.distributed and not self.cuda:
            raise UserError("sync_bn needs CUDA devices (torch's SyncBatchNorm); on CPU keep dist_bn: reduce instead")
        if args.distributed and args.sync_bn:
            args.dist_bn = ""  # SyncBN keeps the running stats identical already
            model = convert_sync_batchnorm(model)  # batch-free norms are not BN and stay as they are
        if not args.lr:
            args.lr = resolve_lr(args, args.world_size)
            self.console.print(f"lr {args.lr:g} from lr_base {args.lr_base:g} for a global batch of "
                               f"{args.batch_size * args.world_size * args.grad_accum_steps} (lr_base_size {args.lr_base_size})")
        self.optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
        criterion = dict(smoothing=args.smoothing, soft_targets=mixup_active(args))
        if args.bce_loss:
            criterion.update(loss_type="bce", bce_target_thresh=args.bce_target_thresh)
        elif args.bce_target_thresh is not None:
            raise UserError("bce_target_thresh needs bce_loss")
        self.task = ClassificationTask(model, criterion_kwargs=criterion, device=self.device, verbose=False)

    def _check_output(self) -> None:
        """Before any model or data work: the output folder is writable, and the experiment folder
        holds no other run's checkpoints (sets ``resume_path``, the checkpoint to resume from)."""
        args = self.args
        root = Path(args.output or "./output/train")
        if args.resume and args.resume != "auto" and Path(args.resume).is_dir():
            raise UserError(f"--resume {args.resume} is a folder; give a checkpoint file in it (e.g. "
                            f"{Path(args.resume) / 'last.pth.tar'}), or --resume auto with --experiment")
        if not args.experiment:
            if args.resume == "auto":
                raise UserError("--resume auto needs --experiment NAME (the folder to continue in)")
            check_writable(root)
            self.resume_path = args.resume
            return
        check_writable(root / args.experiment)
        if self.primary:  # a second run into this experiment folder fails now instead of mixing its files in
            self.lock.enter_context(claim_output_dir(root / args.experiment, "--experiment"))
        self.resume_path = resume_path(root / args.experiment, args.resume)
        if args.resume == "auto" and not self.resume_path:
            self.console.print(f"no checkpoint in {root / args.experiment}: starting a fresh run")

    def _load_resume(self) -> Optional[Dict[str, Any]]:
        args, path = self.args, self.resume_path
        if not path:
            return None
        checkpoint = load_training_checkpoint(path)
        problems = state_dict_mismatch(self.task.get_trainable_module(), checkpoint["state_dict"], limit=3)
        if problems:
            raise UserError(f"cannot resume from {path}: its model ({checkpoint.get('arch') or 'unknown'}) does not fit "
                            f"this run's {self.label}: {'; '.join(problems)}")
        self.task.load_checkpoint_state(checkpoint["state_dict"], checkpoint.get("task_state"))
        if not args.no_resume_opt:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.loss_scaler is not None and NativeScaler.state_dict_key in checkpoint:
                self.loss_scaler.load_state_dict(checkpoint[NativeScaler.state_dict_key])
        self.console.print(f"resuming from {path} at epoch {checkpoint['progress']['epoch']}, batch {checkpoint['progress']['batch']}")
        return checkpoint

    def _setup_ema(self, checkpoint: Optional[Dict[str, Any]]) -> None:
        args = self.args
        if not args.model_ema:
            return
        ema = self.task.setup_ema(
            decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
            device=torch.device("cpu") if args.model_ema_force_cpu else None,
        )
        if checkpoint is not None and "state_dict_ema" in checkpoint:
            self.task.load_checkpoint_state(checkpoint["state_dict_ema"], checkpoint.get("task_state_ema"), ema=True)
            if "ema_rng" in checkpoint:
                ema._sr_generator.set_state(checkpoint["ema_rng"])

    def _build_data(self) -> None:
        args = self.args
        dataset_train, dataset_eval = create_datasets(args, warn=lambda m: self.console.print(f"[yellow]warning: {m}[/yellow]"))
        if isinstance(dataset_train, (IterableImageDataset, torch.utils.data.IterableDataset)):
            raise UserError(f"xbn-train needs a map-style dataset (ImageFolder/ImageTar, torch/, hfds/), got {args.dataset!r}")
        check_class_count(dataset_train, args.num_classes)
        mixup = create_mixup(args, args.num_classes, collate=self.prefetch)
        self.mixup_fn = None if self.prefetch else mixup
        self.sampler = ResumableSampler(dataset_train, args.world_size, args.rank, args.seed)
        self.loader_train = create_train_loader(
            dataset_train, args, self.data_config, self.device, self.sampler, self.prefetch,
            collate_fn=mixup if self.prefetch else None,
        )
        if len(self.loader_train) == 0:
            raise UserError(
                f"train split has {len(dataset_train)} images: fewer than batch_size {args.batch_size} x "
                f"{args.world_size} process(es), so an epoch has no full batch"
            )
        self.loader_eval = None
        if dataset_eval is not None:
            self.loader_eval = create_eval_loader(dataset_eval, args, self.data_config, self.device, args.distributed, self.prefetch)

    def _build_schedule(self) -> None:
        args = self.args
        if args.sched == "plateau":
            raise UserError("sched 'plateau' (deprecated in timm) is not supported by xbn-train: its state cannot be saved weights-only")
        self.updates_per_epoch = (len(self.loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
        self.lr_scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == "loss"),
            updates_per_epoch=self.updates_per_epoch,
        )

    def _resume_progress(self, checkpoint: Optional[Dict[str, Any]]) -> None:
        """Continue the progress and schedule of ``checkpoint``, or start at ``start_epoch``."""
        args = self.args
        exact = checkpoint is not None and not args.no_resume_opt and args.start_epoch is None
        if checkpoint is not None:
            self.progress.update(checkpoint["progress"])
            self.eval_metrics = dict(checkpoint.get("eval_metrics", {}))
            self.best = dict(checkpoint.get("best_eval", {}))
        if args.start_epoch is not None:
            self.progress.update(epoch=args.start_epoch, batch=0, num_updates=args.start_epoch * self.updates_per_epoch,
                                 epoch_loss_sum=0.0, epoch_loss_count=0)
        if self.lr_scheduler is None:
            return
        if exact:
            self.lr_scheduler.load_state_dict(checkpoint["scheduler"])
        elif self.progress["epoch"] > 0:  # like train.py: put the schedule at the starting epoch
            if args.sched_on_updates:
                self.lr_scheduler.step_update(self.progress["epoch"] * self.updates_per_epoch)
            else:
                self.lr_scheduler.step(self.progress["epoch"])

    def _setup_output(self) -> None:
        args = self.args
        name = args.experiment or "-".join([
            datetime.now().strftime("%Y%m%d-%H%M%S"), safe_model_name(self.label), str(self.data_config["input_size"][-1]),
        ])
        self.output_dir = Path(args.output or "./output/train") / name

    def _setup_saver(self) -> None:
        args = self.args
        self.saver = None
        if not self.primary:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "args.yaml", yaml.safe_dump(self.config, sort_keys=True))
        self.saver = TrainCheckpointSaver(
            self.task, self.optimizer, self.config, self._training_state, arch=self.label, amp_scaler=self.loss_scaler,
            checkpoint_dir=str(self.output_dir), recovery_dir=str(self.output_dir),
            decreasing=args.eval_metric == "loss", max_history=args.checkpoint_hist, export_best=self._evaluated_weights,
        )
        summary = self.output_dir / "summary.csv"
        resumed_here = self.resume_path and Path(self.resume_path).resolve().parent == self.output_dir.resolve()
        if resumed_here:
            self.saver.load_state_dict(self.resume_checkpoint["saver"])
            self.saver.supersede(glob.glob(str(self.output_dir / "recovery-*.pth.tar")))
            _trim_summary(summary, self.progress["epoch"])
        elif summary.exists():
            summary.unlink()  # a fresh run into an existing folder starts a fresh summary, like train.py

    # ---- state ---------------------------------------------------------------------------------
    def _training_state(self) -> Dict[str, Any]:
        state = {
            "progress": dict(self.progress),
            "scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else {},
            "rng": self.rng_states,
            "world_size": self.args.world_size,
            "eval_metrics": dict(self.eval_metrics),
            "best_eval": dict(self.best),
        }
        if self.task.has_ema():
            state["ema_rng"] = self.task.get_trainable_module(ema=True)._sr_generator.get_state()
        return state

    def _evaluated_weights(self) -> Dict[str, torch.Tensor]:
        """The weights whose metric ranks checkpoints: the EMA's when it is evaluated, else the model's."""
        if self.task.has_ema() and not self.args.model_ema_force_cpu:
            return unwrapped_state_dict(self.task.get_trainable_module(ema=True))
        return unwrapped_state_dict(self.task.get_trainable_module())

    def _restore_rng(self, checkpoint: Optional[Dict[str, Any]]) -> None:
        if checkpoint is None or self.args.start_epoch is not None:
            return
        states = checkpoint.get("rng", [])
        if len(states) == self.args.world_size:
            restore_rng_state(states[self.args.rank])
        else:
            self.console.print(f"[yellow]note: checkpoint holds RNG states of {len(states)} process(es), this run has "
                               f"{self.args.world_size}: random streams are re-seeded (the resume is not bit-exact)[/yellow]")

    def _save_point(self) -> None:
        """Collect every rank's RNG state (collective) before rank 0 writes a checkpoint."""
        self.rng_states = gather_rng_states()

    # ---- loops ---------------------------------------------------------------------------------
    def _to_device(self, input: torch.Tensor, target: torch.Tensor):
        if not self.prefetch:
            input, target = input.to(self.device), target.to(self.device)
            if self.mixup_fn is not None:
                input, target = self.mixup_fn(input, target)
        if self.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        return input, target

    def _train_epoch(self, epoch: int, bar: Progress) -> bool:
        """Train one epoch from ``progress['batch']``; False when stopped by ``--stop-after-steps``."""
        args, task, optimizer = self.args, self.task, self.optimizer
        task.train()
        num_batches = len(self.loader_train)
        accum = args.grad_accum_steps
        last_group = num_batches - num_batches % accum if num_batches % accum else num_batches - accum
        start = self.progress["batch"]
        loss_sum = torch.tensor(self.progress["epoch_loss_sum"], dtype=torch.float64, device=self.device)
        loss_count = self.progress["epoch_loss_count"]
        bar_task = bar.add_task(f"epoch {epoch + 1}/{self.num_epochs}", total=num_batches, completed=start, loss=float("nan"))
        for batch_idx, (input, target) in enumerate(self.loader_train, start=start):
            input, target = self._to_device(input, target)
            need_update = (batch_idx + 1) % accum == 0 or batch_idx + 1 == num_batches
            group_size = num_batches - last_group if batch_idx >= last_group else accum
            sync = nullcontext() if need_update or not args.distributed else task.no_sync()
            with sync:
                with self.autocast():
                    loss = task(input, target)["loss"]
                scaled = loss / group_size if group_size > 1 else loss
                if self.loss_scaler is not None:
                    self.loss_scaler(
                        scaled, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                        parameters=task.get_clip_parameters(exclude_head="agc" in args.clip_mode), need_update=need_update,
                    )
                else:
                    scaled.backward()
                    if need_update:
                        if args.clip_grad is not None:
                            dispatch_clip_grad(task.get_clip_parameters(exclude_head="agc" in args.clip_mode),
                                               value=args.clip_grad, mode=args.clip_mode)
                        optimizer.step()
            loss_sum += loss.detach().double()
            loss_count += 1
            if not need_update:
                continue
            optimizer.zero_grad(set_to_none=True)
            self.progress["num_updates"] += 1
            task.update_ema(step=self.progress["num_updates"])
            if self.lr_scheduler is not None:
                self.lr_scheduler.step_update(num_updates=self.progress["num_updates"])
            self.progress["batch"] = batch_idx + 1
            if (batch_idx + 1) % args.log_interval == 0:
                bar.update(bar_task, completed=batch_idx + 1, loss=loss_sum.item() / loss_count)
            update_in_epoch = (batch_idx + accum) // accum
            if args.recovery_interval and update_in_epoch % args.recovery_interval == 0 and batch_idx + 1 < num_batches:
                self.progress.update(epoch_loss_sum=loss_sum.item(), epoch_loss_count=loss_count)
                self._save_point()
                if self.saver is not None:
                    self.saver.save_recovery(epoch, batch_idx=batch_idx + 1)
            if self.stop and batch_idx + 1 < num_batches:  # at the epoch's end, _run stops after its checkpoint
                self.progress.update(epoch_loss_sum=loss_sum.item(), epoch_loss_count=loss_count)
                self._save_point()
                self.saver.save_recovery(epoch, batch_idx=batch_idx + 1)
                raise self._interrupted()
            if args.stop_after_steps is not None and self.progress["num_updates"] >= args.stop_after_steps:
                return False
        if args.distributed:
            dist.all_reduce(loss_sum)
            loss_count *= args.world_size
        self.train_loss = loss_sum.item() / max(loss_count, 1)
        bar.update(bar_task, completed=num_batches, loss=self.train_loss)
        return True

    @torch.no_grad()
    def _evaluate(self, module: torch.nn.Module) -> Dict[str, float]:
        module.eval()
        evaluator = ClassificationEvaluator(device=self.device, max_samples=evaluation_sample_limit(self.loader_eval))
        for input, target in self.loader_eval:
            if not self.prefetch:
                input, target = input.to(self.device), target.to(self.device)
            if self.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                output = module(input)
            evaluator.update(output, target)
        return dict(evaluator.compute(distributed=self.args.distributed))

    def _end_epoch(self, epoch: int) -> None:
        args, task = self.args, self.task
        if args.distributed and args.dist_bn in ("broadcast", "reduce"):
            utils.distribute_bn(task.get_trainable_module(), args.world_size, args.dist_bn == "reduce")
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        lr = sum(lrs) / len(lrs)
        if self.loader_eval is not None:
            self.eval_metrics = self._evaluate(unwrap_model(task.get_trainable_module()))
            if task.has_ema():
                ema = task.get_trainable_module(ema=True)
                if args.distributed and args.dist_bn in ("broadcast", "reduce"):
                    utils.distribute_bn(ema, args.world_size, args.dist_bn == "reduce")
                if not args.model_ema_force_cpu:
                    self.eval_metrics = self._evaluate(ema.module)
        metric = self.eval_metrics.get(args.eval_metric) if self.loader_eval is not None else None
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(epoch + 1, metric)
        if not math.isfinite(self.train_loss):
            raise UserError(f"training diverged: the train loss of epoch {epoch} is {self.train_loss}; lower --lr "
                            "(the last finite state is kept in the experiment folder)")
        self.progress.update(epoch=epoch + 1, batch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        self._save_point()
        if self.primary:
            evals = {f"eval_{k}": v for k, v in self.eval_metrics.items()} if self.loader_eval is not None else {}
            _append_summary(self.output_dir / "summary.csv", {"epoch": epoch, "train_loss": self.train_loss, **evals, "lr": lr})
            if metric is not None and (self.saver.best_metric is None or self.saver.cmp(metric, self.saver.best_metric)):
                # set before saving, so the checkpoint carries it: model_best.safetensors will hold these weights
                self.best = {"epoch": epoch, "top1": self.eval_metrics.get("top1"), "top5": self.eval_metrics.get("top5"),
                             "weights_sha1": state_dict_sha1(self._evaluated_weights())}
            self.saver.save_checkpoint(epoch, metric=metric)
            shown = "  ".join(f"eval_{k} {v:.4f}" for k, v in self.eval_metrics.items())
            self.console.print(f"epoch {epoch}: train_loss {self.train_loss:.4f}  {shown}  lr {lr:.4g}")

    def _results(self) -> Dict[str, Any]:
        from ..evaluation.results import make_results

        args = self.args
        results = make_results("train", {
            "model": self.model_name,
            "model_label": self.label,
            "val_top1": self.eval_metrics.get("top1"),
            "val_top5": self.eval_metrics.get("top5"),
            "epochs": self.num_epochs,
            "recipe": Path(args.config).stem if args.config else "",
            "dataset": args.dataset or str(args.data_dir),
        })
        if self.saver is not None:
            results.update(best_metric=self.saver.best_metric, best_epoch=self.saver.best_epoch,
                           output_dir=str(self.output_dir), weights_sha1=state_dict_sha1(self._evaluated_weights()))
            if self.best:
                results["best"] = dict(self.best)
        return results

    # ---- run -----------------------------------------------------------------------------------
    def _interrupted(self) -> Interrupted:
        return Interrupted(f"interrupted after {self.progress['num_updates']} updates, saved in {self.output_dir}; "
                           f"continue with --experiment {self.output_dir.name} --resume auto")

    def run(self) -> Dict[str, Any]:
        self._setup_device()
        try:
            # one process: the first Ctrl-C stops after the current update, saved (ranks would not agree on when)
            with self.lock, interruptible(raise_now=False) if not self.args.distributed else nullcontext(self.stop) as stop:
                self.stop = stop
                return self._run()
        finally:
            if self.args.distributed and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> Dict[str, Any]:
        args = self.args
        self._check_output()
        self._build_model()
        self._setup_output()
        self._build_data()
        self._build_schedule()  # before resuming: creating a scheduler sets the optimizer's lr
        self.resume_checkpoint = checkpoint = self._load_resume()
        self._resume_progress(checkpoint)
        self._setup_ema(checkpoint)
        if args.distributed:
            ddp_kwargs = dict(broadcast_buffers=False) if args.no_ddp_bb else {}
            self.task.prepare_distributed(device_ids=[self.device] if self.cuda else None, **ddp_kwargs)
        self._setup_saver()
        self.console.print(
            f"training {self.label} for {self.num_epochs} epochs on {args.world_size} process(es) x batch "
            f"{args.batch_size} ({self.device}), {self.updates_per_epoch} updates/epoch -> {self.output_dir}"
        )
        self._restore_rng(checkpoint)  # last: nothing below draws random numbers before the first batch
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, disable=not self.primary) as bar:
            for epoch in range(self.progress["epoch"], self.num_epochs):
                if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                    if self.prefetch and self.loader_train.mixup_enabled:
                        self.loader_train.mixup_enabled = False
                    elif self.mixup_fn is not None:
                        self.mixup_fn.mixup_enabled = False
                position_loader(self.loader_train, self.sampler, epoch, self.progress["batch"], args.seed, args.rank)
                if not self._train_epoch(epoch, bar):
                    self._dump_rank_weights()
                    return {"kind": "train", "stopped_at_update": self.progress["num_updates"]}
                self._end_epoch(epoch)
                if self.stop and epoch + 1 < self.num_epochs:
                    raise self._interrupted()
        self._dump_rank_weights()
        results = self._results()
        if self.primary:
            write_json_atomic(self.output_dir / "results.json", results)
        return results

    def _dump_rank_weights(self) -> None:
        if self.args.debug_rank_weights:
            folder = Path(self.args.debug_rank_weights)
            folder.mkdir(parents=True, exist_ok=True)
            save_safetensors_atomic(unwrapped_state_dict(self.task.get_trainable_module()), folder / f"rank{self.args.rank}.safetensors")
