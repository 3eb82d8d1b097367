"""Drive one shared data pass: sharding, progress bar, resumable partial counts, all-reduce.

``run_pass`` feeds every batch of an ``EvalData`` to a ``SharedPass``. With a ``state_file`` the
summed counts and the index of the next unread image are written every ``checkpoint_every``
batches; a later call with the same settings and the same ``meta`` continues from there, so an
interrupted sweep loses at most ``checkpoint_every`` batches of work.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..utils.distributed import all_gather_objects, all_reduce_sum, is_main_process, world_info
from ..utils.errors import UserError
from .data import EvalData, SkippedSample
from .metrics import SCORE_SIZE
from .results import shape_error, write_json_atomic
from .sweep import SharedPass

__all__ = ["PassResult", "run_pass"]

STATE_SHAPE = {"next_index": int, "counts": [[int]], "skipped": [list]}  # counts: SCORE_SIZE scores per key


@dataclass
class PassResult:
    """Summed scores per key (``[correct@1, correct@5, samples, ...]``, ``metrics.SCORE_LAYOUT``) and the skipped images."""

    counts: Dict[str, torch.Tensor]
    skipped: List[SkippedSample]
    resumed_from: int = 0


def _warn(message: str) -> None:
    if is_main_process():
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def _load_state(state_file: Optional[Path], keys: Sequence[str], meta: Mapping[str, Any],
                length: int) -> Optional[Dict[str, Any]]:
    """The partial pass saved in ``state_file`` for these settings and ``meta``; ``None`` (start over)
    when there is none, when it belongs to another run, or when it is damaged (with a warning)."""
    if state_file is None or not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        _warn(f"discarded the damaged partial pass {state_file} (not valid JSON: {err}); starting the pass over")
        return None
    if not isinstance(state, dict) or state.get("meta") != meta or state.get("keys") != list(keys):
        return None  # another run's partial pass: start over
    error = shape_error(state, STATE_SHAPE)
    fits = error is None and 0 <= state["next_index"] <= length and all(len(s) == 3 for s in state["skipped"]) \
        and [len(c) for c in state["counts"]] == [SCORE_SIZE] * len(keys)
    if error is None and not fits:
        error = f"its next_index, counts or skipped images do not fit {length} images and {len(keys)} settings"
    if error:
        _warn(f"discarded the damaged partial pass {state_file} ({error}); starting the pass over")
        return None
    return state


def _sorted_skipped(chunks: Sequence[Sequence[Any]]) -> List[SkippedSample]:
    return sorted((SkippedSample(*s) for chunk in chunks for s in chunk), key=lambda s: s.index)


def run_pass(
    evaluator: SharedPass,
    data: EvalData,
    progress: bool = False,
    state_file: Optional[Union[str, Path]] = None,
    meta: Optional[Mapping[str, Any]] = None,
    checkpoint_every: int = 20,
    description: str = "evaluating",
) -> PassResult:
    """One pass over ``data`` (this rank's shard under torch.distributed) through ``evaluator``.

    Returns the counts of all ranks together (identical on every rank). ``meta`` identifies the run
    (data, models, targets); a state file written with other ``meta`` or settings is ignored.
    """
    if checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be a positive number of batches, got {checkpoint_every}")
    keys = list(evaluator.keys)
    meta = dict(meta or {})
    path = Path(state_file) if state_file is not None else None
    state = _load_state(path, keys, meta, len(data))
    start = int(state["next_index"]) if state else 0
    base = torch.tensor(state["counts"], dtype=torch.int64) if state else torch.zeros(len(keys), SCORE_SIZE, dtype=torch.int64)
    base_skipped = [SkippedSample(*s) for s in state["skipped"]] if state else []

    _, world = world_info()
    loader = data.loader(start=start, pin_memory=any(d.type == "cuda" for d in evaluator.devices.values()))
    # checkpoints happen only at steps every rank reaches with full batches, so that the images
    # read so far are exactly [0, next_index) and all ranks join the all-reduce
    total_batches = -(-max(0, len(data) - start) // data.batch_size)
    safe_steps = min(len(range(r, total_batches, world)) for r in range(world))
    skipped: List[SkippedSample] = []

    def checkpoint(step: int) -> None:
        counts = all_reduce_sum(evaluator.counts_tensor())
        gathered = all_gather_objects([tuple(s) for s in skipped])
        if is_main_process() and path is not None:
            next_index = min(len(data), start + step * world * data.batch_size)
            write_json_atomic(path, {
                "meta": meta, "keys": keys, "next_index": next_index,
                "counts": (base + counts).tolist(),
                "skipped": [tuple(s) for s in base_skipped + _sorted_skipped(gathered)],
            })

    bar = None
    if progress and is_main_process():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        task = bar.add_task(f"{description} ({len(keys)} settings{', resumed' if start else ''})", total=len(loader))
        bar.start()
    step = 0
    try:
        for batch in loader:
            skipped.extend(batch.skipped)
            if batch.images is not None:
                evaluator.update(batch.images, batch.targets)
            step += 1
            if bar is not None:
                bar.advance(task)
            if path is not None and step % checkpoint_every == 0 and step < safe_steps:
                checkpoint(step)
    finally:
        if bar is not None:
            bar.stop()
    counts = base + all_reduce_sum(evaluator.counts_tensor())
    all_skipped = base_skipped + _sorted_skipped(all_gather_objects([tuple(s) for s in skipped]))
    if path is not None and is_main_process() and path.exists():
        path.unlink()
    return PassResult({k: c for k, c in zip(keys, counts)}, all_skipped, resumed_from=start)
