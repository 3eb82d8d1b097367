"""Scores of a batch: top-k counts and confidence calibration (ECE, NLL, Brier) against hand computations and a
plain per-sample loop; integer sums that add up the same in any split of the data."""
import math

import pytest
import torch

from timm_xbn.evaluation.metrics import ECE_BINS, accuracy_from_counts, calibration_from_scores, score_batch


def test_two_samples_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    scores = score_batch(logits, targets)
    p0 = math.exp(2) / (math.exp(2) + 2)  # sample 0: right, confidence p0
    p1 = math.e / (math.e + 2)  # sample 1: predicts class 1 with confidence p1, the target (class 2) has 1 / (e + 2)
    nll = (-math.log(p0) - math.log(1 / (math.e + 2))) / 2
    brier = ((p0 - 1) ** 2 + 2 * ((1 - p0) / 2) ** 2 + (1 / (math.e + 2)) ** 2 + p1 ** 2 + (1 / (math.e + 2) - 1) ** 2) / 2
    ece = 100 * (abs(1 - p0) + abs(0 - p1)) / 2  # one sample per bin: |accuracy - confidence|, weighted 1/2 each
    cal = calibration_from_scores(scores.tolist())
    assert cal["nll"] == pytest.approx(nll, abs=1e-6) and cal["brier"] == pytest.approx(brier, abs=1e-6)
    assert cal["ece"] == pytest.approx(ece, abs=1e-4)
    assert accuracy_from_counts(scores) == {"top1": 50.0, "top5": 100.0, "count": 2}
    # bins of width 1/15: p0 = 0.787 falls in (11/15, 12/15], p1 = 0.576 in (8/15, 9/15]
    counts = scores[5:5 + ECE_BINS].tolist()
    assert counts[11] == 1 and counts[8] == 1 and sum(counts) == 2


def plain_ece(logits: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """ECE (%) as Guo et al. define it, with a loop over the bins (the independent computation)."""
    p = logits.double().softmax(1)
    conf, pred = p.max(1)
    total = 0.0
    for b in range(bins):
        inside = (conf > b / bins) & (conf <= (b + 1) / bins)
        if inside.any():
            acc = (pred[inside] == targets[inside]).double().mean().item()
            total += inside.double().mean().item() * abs(acc - conf[inside].mean().item())
    return 100 * total


def test_random_batches_against_plain_computations_and_any_split():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g) * 3
    targets = torch.randint(0, 10, (300,), generator=g)
    whole = score_batch(logits, targets)
    parts = sum(score_batch(logits[i:i + 7], targets[i:i + 7]) for i in range(0, 300, 7))
    assert torch.equal(whole, parts)  # exact integer sums: any batching gives the same totals
    cal = calibration_from_scores(whole.tolist())
    log_p = logits.double().log_softmax(1)
    assert cal["nll"] == pytest.approx(-log_p[torch.arange(300), targets].mean().item(), abs=1e-6)
    one_hot = torch.nn.functional.one_hot(targets, 10).double()
    assert cal["brier"] == pytest.approx((log_p.exp() - one_hot).pow(2).sum(1).mean().item(), abs=1e-6)
    assert cal["ece"] == pytest.approx(plain_ece(logits, targets), abs=1e-3)


def test_a_calibrated_predictor_has_no_calibration_error():
    # every sample predicted with confidence 0.8 (two classes: logit gap log 4); 8 of 10 right: ECE 0
    logits = torch.tensor([[math.log(4.0), 0.0]] * 10)
    targets = torch.tensor([0] * 8 + [1] * 2)
    assert calibration_from_scores(score_batch(logits, targets).tolist())["ece"] == pytest.approx(0.0, abs=1e-4)
    # counts alone (no calibration sums): None rather than a made-up number
    assert calibration_from_scores([3, 3, 4]) == {"nll": None, "brier": None, "ece": None}
