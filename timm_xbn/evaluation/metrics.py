"""Top-k counts and accuracies (percent, as timm's validate.py reports them)."""
from typing import Dict, Tuple

import torch

__all__ = ["TOPK", "topk_correct", "accuracy_from_counts"]

TOPK: Tuple[int, ...] = (1, 5)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, topk: Tuple[int, ...] = TOPK) -> torch.Tensor:
    """``[correct@k for k in topk] + [samples]`` as an int64 tensor on the logits' device.

    Integer counts (not averaged accuracies) so that batches and ranks can be summed exactly;
    they stay on the device so that a GPU sweep never waits for a host copy per batch.
    ``k`` larger than the number of classes is clamped (top-5 of a 3-class problem is top-3).
    """
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits (N, classes) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hits = pred.eq(targets.to(pred.device).view(-1, 1))
    counts = [hits[:, : min(k, maxk)].any(dim=1).sum() for k in topk]
    return torch.stack(counts + [torch.tensor(targets.shape[0], device=pred.device)]).to(torch.int64)


def accuracy_from_counts(counts: torch.Tensor, topk: Tuple[int, ...] = TOPK) -> Dict[str, float]:
    """``{"top1": %, "top5": %, "count": n}`` from the counts of ``topk_correct`` (summed)."""
    n = int(counts[-1])
    if n == 0:
        raise ValueError("no samples were evaluated")
    out = {f"top{k}": 100.0 * int(c) / n for k, c in zip(topk, counts[:-1].tolist())}
    out["count"] = n
    return out
