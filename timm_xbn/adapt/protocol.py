"""Run adapters over a sequence of test streams: ``episodic`` (reset before each stream) or
``continual`` (one stream through them all, never reset)."""
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..evaluation.metrics import SCORE_SIZE, accuracy_from_counts, calibration_from_scores, score_batch
from ..utils.errors import UserError
from .base import Adapter

__all__ = ["PROTOCOLS", "check_protocol", "counts_record", "run_protocol"]

PROTOCOLS = ("episodic", "continual")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def counts_record(counts: torch.Tensor, forward: Optional[int], backward: Optional[int]) -> Dict[str, Any]:
    """One stream's result from its summed ``score_batch`` scores: counts, errors (%), pass counts (``None`` for
    a pair's share of a mixed stream, whose passes are counted for the stream as a whole) and calibration."""
    acc = accuracy_from_counts(counts)
    c1, c5, n = (int(v) for v in counts[:3].tolist())
    return {"correct1": c1, "correct5": c5, "count": n, "top1_error": 100.0 - acc["top1"],
            "top5_error": 100.0 - acc["top5"], "forward": forward, "backward": backward,
            **calibration_from_scores(counts.tolist())}


def run_protocol(
    adapter: Adapter,
    streams: Mapping[str, Callable[[], Iterable[Tuple[torch.Tensor, torch.Tensor]]]],
    protocol: str = "episodic",
) -> Dict[str, Dict[str, Any]]:
    """Errors of ``adapter`` on each stream, in order; ``streams`` maps a key to a function giving
    that stream's ``(inputs, labels)`` batches (called twice for methods that see the data first).

    Returns ``{key: counts_record}``; forward / backward count the samples of that stream's passes.
    """
    check_protocol(protocol)
    results = {}
    for key, batches in streams.items():
        if protocol == "episodic":
            adapter.reset()
        start = adapter.passes.as_dict()
        if adapter.needs_data:
            adapter.prepare(x for x, _ in batches())
        counts = torch.zeros(SCORE_SIZE, dtype=torch.int64)
        for x, y in batches():
            counts += score_batch(adapter(x), y).cpu()
        end = adapter.passes.as_dict()
        results[key] = counts_record(counts, end["forward"] - start["forward"], end["backward"] - start["backward"])
    return results
