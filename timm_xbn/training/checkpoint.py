"""Training checkpoints that load with ``torch.load(weights_only=True)`` and resume exactly.

``TrainCheckpointSaver`` keeps timm's ``CheckpointSaver`` layout and bookkeeping (``last.pth.tar``,
top-k ``checkpoint-N.pth.tar``, ``model_best.pth.tar``, ``recovery-E-B.pth.tar``, all written to a
temp file and renamed) but stores only plain tensors, numbers, strings, lists and dicts, and adds
what an exact resume needs: scheduler state, progress (epoch, batch, update count) and every
rank's RNG states. The best weights are also exported as ``model_best.safetensors``.
"""
import glob
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from timm.utils import CheckpointSaver, get_state_dict, unwrap_model

from ..utils.errors import UserError
from ..utils.files import atomic_write
from ..models.checkpoints import check_finite, load_problem

__all__ = [
    "capture_rng_state", "restore_rng_state", "gather_rng_states", "TrainCheckpointSaver",
    "load_training_checkpoint", "find_resume_checkpoint", "checkpoint_files", "save_safetensors_atomic",
    "unwrapped_state_dict",
]

#: The files a run leaves in its experiment folder that ``--resume`` reads (timm's CheckpointSaver names).
CHECKPOINT_PATTERNS = ("last.pth.tar", "model_best.pth.tar", "checkpoint-*.pth.tar", "recovery-*.pth.tar")


def capture_rng_state() -> Dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors and numbers."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        "MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (a collective: call it on all ranks)."""
    state = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def save_safetensors_atomic(state_dict: Dict[str, torch.Tensor], path: Union[str, Path]) -> None:
    """Write a state dict as safetensors through a temp file + rename."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


class TrainCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver writing weights-only-loadable checkpoints with full training state.

    Args:
        task: the timm ``TrainingTask`` owning the model (and EMA).
        optimizer / amp_scaler: saved with the model.
        config: the resolved options (plain types), stored as ``args``.
        arch: the model's name stored as ``arch`` (default: ``config["model"]``).
        training_state: returns the progress / scheduler / RNG entries to add at each save.
        export_best: also write the evaluated weights as ``model_best.safetensors``.
        Other arguments as ``timm.utils.CheckpointSaver``.
    """

    def __init__(self, task, optimizer, config: Dict[str, Any], training_state: Callable[[], Dict[str, Any]],
                 arch: str = "", amp_scaler=None, checkpoint_dir: str = "", recovery_dir: str = "", decreasing: bool = False,
                 max_history: int = 10, export_best: Callable[[], Dict[str, torch.Tensor]] = None):
        super().__init__(
            model=task.get_trainable_module(), optimizer=optimizer, args=None, amp_scaler=amp_scaler,
            checkpoint_dir=checkpoint_dir, recovery_dir=recovery_dir, decreasing=decreasing,
            max_history=max_history, task=task,
        )
        self.config = config
        self.arch = arch or config.get("model", "")
        self.training_state = training_state
        self.export_best = export_best
        self.superseded: List[str] = []

    def supersede(self, paths: List[str]) -> None:
        """Delete ``paths`` (recovery files of the run before a resume) once this run has saved a newer state,
        so that they neither pile up nor win a later ``--resume auto``."""
        self.superseded = list(paths)

    def _drop_superseded(self) -> None:
        for path in self.superseded:
            if os.path.exists(path) and path != self.curr_recovery_file:
                os.remove(path)
        self.superseded = []

    def save_checkpoint(self, epoch, metric=None):
        result = super().save_checkpoint(epoch, metric)
        self._drop_superseded()
        return result

    def save_recovery(self, epoch, batch_idx=0):
        super().save_recovery(epoch, batch_idx)
        self._drop_superseded()

    def _save(self, save_path, epoch, metric=None):
        state = {
            "epoch": epoch,
            "arch": self.arch,
            "version": 2,
            "args": self.config,
            "optimizer": self.optimizer.state_dict(),
        }
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        state.update(self.task.get_checkpoint_state(unwrap_fn=self.unwrap_fn))
        state.update(self.task.get_checkpoint_state(ema=True, unwrap_fn=self.unwrap_fn))
        if metric is not None:
            state["metric"] = metric
        state["saver"] = self.state_dict(epoch, metric)
        state.update(self.training_state())
        with atomic_write(save_path) as tmp:
            torch.save(state, tmp)

    def _duplicate(self, src, dst):
        """Hardlink like timm; where links are unavailable copy to a temp file and rename (atomic)."""
        if self.can_hardlink:
            try:
                tmp = dst + ".tmp"
                if os.path.exists(tmp):
                    os.unlink(tmp)
                os.link(src, tmp)
                os.replace(tmp, dst)
                return
            except (OSError, NotImplementedError):
                self.can_hardlink = False
        with atomic_write(dst) as tmp:
            shutil.copy2(src, tmp)

    def _track_checkpoint(self, save_path, epoch, metric=None, update_best_file=True):
        best_before = self.best_metric, self.best_epoch
        super()._track_checkpoint(save_path, epoch, metric, update_best_file)
        if update_best_file and self.export_best is not None and (self.best_metric, self.best_epoch) != best_before:
            save_safetensors_atomic(self.export_best(), os.path.join(self.checkpoint_dir, "model_best.safetensors"))


def load_training_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load an xbn-train checkpoint with ``weights_only=True`` (CPU tensors); a file that is missing,
    damaged, pickled (needs ``weights_only=False``) or not a training checkpoint is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, a text file, a pickle, ...: torch raises many types
        hint = ("; resume from a checkpoint written by xbn-train, or start from its weights with --initial-checkpoint"
                if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err) else "")
        raise UserError(f"cannot resume from {path}: {load_problem(path, err, 'a torch checkpoint')}{hint}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "progress" not in checkpoint:
        raise UserError(f"{path} is not an xbn-train training checkpoint (expected 'state_dict' and 'progress' entries)")
    check_finite(checkpoint["state_dict"], path)
    return checkpoint


def checkpoint_files(folder: Union[str, Path]) -> List[str]:
    """The checkpoint files of ``folder`` (``CHECKPOINT_PATTERNS``), sorted."""
    return sorted(path for pattern in CHECKPOINT_PATTERNS for path in glob.glob(os.path.join(str(folder), pattern)))


def find_resume_checkpoint(folder: Union[str, Path]) -> Optional[str]:
    """The newest state in ``folder``: the ``last.pth.tar`` or ``recovery-*.pth.tar`` with the most
    updates (the more recently written one on a tie), or None when none can be read."""
    candidates = glob.glob(os.path.join(str(folder), "last.pth.tar")) + glob.glob(os.path.join(str(folder), "recovery-*.pth.tar"))
    best, best_key = None, None
    for path in candidates:
        try:
            progress = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("progress", {})
        except Exception:  # a truncated file from a kill mid-write is skipped, the previous one still exists
            continue
        key = (progress.get("num_updates", -1), os.path.getmtime(path))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def unwrapped_state_dict(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """State dict of a module behind DDP / EMA wrappers."""
    return get_state_dict(module, unwrap_model)
