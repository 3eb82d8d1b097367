"""Top-k counts and accuracies (percent, as timm's validate.py reports them), and the confidence calibration
of the predictions: expected calibration error (ECE, 15 equal-width bins of the top-1 confidence, Guo et al.
2017), negative log-likelihood (NLL) and the multi-class Brier score.

A batch is scored into one int64 vector (``score_batch``; layout ``SCORE_LAYOUT``): the top-k counts, then the
calibration sums in fixed point (each sample's value rounded to ``FIXED_POINT`` first). Integer sums are exact
and associative, so batches, resumed passes and torchrun ranks add up to bit-identical totals.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ["ECE_BINS", "FIXED_POINT", "SCORE_SIZE", "TOPK", "accuracy_from_counts", "calibration_from_scores",
           "score_batch", "scores_of_counts", "topk_correct"]

TOPK: Tuple[int, ...] = (1, 5)
ECE_BINS = 15
FIXED_POINT = 10 ** 6  # calibration sums in millionths
#: [correct@1, correct@5, samples, NLL sum, Brier sum, per bin: samples, confidence sum, correct@1]
SCORE_LAYOUT = ("correct1", "correct5", "count", "nll", "brier", "bin_count", "bin_confidence", "bin_correct")
SCORE_SIZE = 5 + 3 * ECE_BINS


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
    """``{"top1": %, "top5": %, "count": n}`` from the counts of ``topk_correct`` or ``score_batch`` (summed)."""
    n = int(counts[len(topk)])
    if n == 0:
        raise ValueError("no samples were evaluated")
    out = {f"top{k}": 100.0 * int(c) / n for k, c in zip(topk, counts[:len(topk)].tolist())}
    out["count"] = n
    return out


def _fixed(values: torch.Tensor) -> torch.Tensor:
    """Per-sample values in fixed point (int64), so that their sums are exact."""
    return torch.round(values.double() * FIXED_POINT).to(torch.int64)


def score_batch(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The ``SCORE_SIZE`` int64 scores of one batch on the logits' device: ``topk_correct``, then the NLL and
    Brier sums and the ECE bins of the softmax of ``logits`` (computed in float64)."""
    counts = topk_correct(logits, targets)
    targets = targets.to(logits.device)
    log_p = logits.double().log_softmax(dim=1)
    p = log_p.exp()
    nll = -log_p.gather(1, targets.view(-1, 1)).squeeze(1)
    one_hot = torch.nn.functional.one_hot(targets, p.shape[1]).to(p.dtype)
    brier = (p - one_hot).pow(2).sum(dim=1)
    confidence, pred = p.max(dim=1)
    bins = (torch.ceil(confidence * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1)  # bin b: (b/15, (b+1)/15]
    per_bin = [torch.zeros(ECE_BINS, dtype=torch.int64, device=p.device) for _ in range(3)]
    per_bin[0].index_add_(0, bins, torch.ones_like(bins))
    per_bin[1].index_add_(0, bins, _fixed(confidence))
    per_bin[2].index_add_(0, bins, pred.eq(targets).long())
    return torch.cat([counts, torch.stack([_fixed(nll).sum(), _fixed(brier).sum()]), *per_bin])


def scores_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """The scores of a batch scored by top-k only (``topk_correct``; no calibration): zeros beyond the counts."""
    scores = torch.zeros(SCORE_SIZE, dtype=torch.int64, device=counts.device)
    scores[:3] = counts
    return scores


def calibration_from_scores(scores: Sequence[int]) -> Dict[str, Optional[float]]:
    """``{"nll": mean NLL (nats), "brier": mean Brier score, "ece": ECE (%)}`` of summed ``score_batch`` scores;
    ``None`` for each where no sample was scored for calibration (e.g. multi-label ReaL)."""
    scores = [int(v) for v in scores]
    bins = [scores[5 + i * ECE_BINS: 5 + (i + 1) * ECE_BINS] for i in range(3)]
    n = sum(bins[0])
    if len(scores) < SCORE_SIZE or n == 0:
        return {"nll": None, "brier": None, "ece": None}
    gap = sum(abs(correct * FIXED_POINT - confidence) for confidence, correct in zip(bins[1], bins[2]))
    return {"nll": scores[3] / FIXED_POINT / n, "brier": scores[4] / FIXED_POINT / n,
            "ece": 100.0 * gap / FIXED_POINT / n}
