"""The study's training options (lr schedules, weight-decay grouping, batch-free stem) and the schedule trial (benchmarks/study_schedules.py --tiny)."""
import json

import pytest
import torch
import torch.nn as nn

import timm_xbn.study.resnet as resnet
from benchmarks import study_schedules
from benchmarks.train_step import synthetic_split
from timm_xbn.study.resnet import ResNetConfig, build_variant, lr_scheduler, train_classifier
from timm_xbn.utils.norms import is_bn


def _rates(schedule: str, steps: int, warmup: int, lr: float):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = lr_scheduler(optimizer, schedule, steps, warmup, lr)
    rates = []
    for update in range(steps + 1):
        scheduler.step_update(update)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_linear_schedule_is_one_cycle_warm_up_to_the_peak_then_straight_to_zero():
    steps, warmup, lr = 50, 10, 0.2
    rates = _rates("linear", steps, warmup, lr)
    for t in range(warmup):  # linear warm-up from lr / 10
        assert rates[t] == pytest.approx(lr / 10 + (lr - lr / 10) * t / warmup, rel=1e-9)
    for t in range(warmup, steps + 1):  # the peak at the warm-up's end, then a straight line to 0 at the last update
        assert rates[t] == pytest.approx(lr * (1 - (t - warmup) / (steps - warmup)), abs=1e-12)


def test_cosine_schedule_is_the_committed_one():
    """timm's cosine over all updates (the warm-up inside it), as the committed study trained."""
    import math

    steps, warmup, lr = 40, 8, 0.1
    rates = _rates("cosine", steps, warmup, lr)
    for t in range(warmup, steps):
        assert rates[t] == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * t / steps)), rel=1e-9)


def _optimizer_of_training(monkeypatch, decay_norms: bool) -> torch.optim.Optimizer:
    built = []
    real = resnet.create_optimizer_v2
    monkeypatch.setattr(resnet, "create_optimizer_v2", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    cfg = ResNetConfig()
    model = build_variant("XBN-GN", cfg, 10, seed=0)
    train_classifier(model, synthetic_split(8, 32, torch.device("cpu")), 0, 4, 0.1, 1e-4, 0, 1, decay_norms=decay_norms)
    return built[0], model


@pytest.mark.parametrize("decay_norms", [True, False])
def test_weight_decay_grouping_follows_the_authors_or_timm(monkeypatch, decay_norms):
    """The authors' extension/optimizer.py decays every parameter; timm's filter leaves 1-d tensors (norm
    weights and biases, the fc bias) without decay."""
    optimizer, model = _optimizer_of_training(monkeypatch, decay_norms)
    decayed = sum(len(g["params"]) for g in optimizer.param_groups if g["weight_decay"] > 0)
    params = list(model.parameters())
    expected = len(params) if decay_norms else sum(p.ndim > 1 for p in params)
    assert decayed == expected and len(params) - expected == (0 if decay_norms else sum(p.ndim <= 1 for p in params))


def test_xbn_variants_get_the_batch_free_stem_and_bn_keeps_its_own():
    cfg = ResNetConfig()
    assert is_bn(build_variant("BN", cfg, 10, 0).bn1)
    stem = build_variant("XBN-GN", cfg, 10, 0).bn1
    # the authors' stem norm: GN, 64 groups on 64 channels (timm's plain stem has 64 channels whatever stem_width)
    assert isinstance(stem, nn.GroupNorm) and stem.num_groups == stem.num_channels == 64
    assert isinstance(build_variant("XBN-IN", cfg, 10, 0).bn1, (nn.InstanceNorm2d, nn.GroupNorm))
    assert is_bn(build_variant("XBN-GN", ResNetConfig(stem_bfn=False), 10, 0).bn1)  # the committed layout


def test_schedule_trial_verdict_rule():
    bn = [{"top1": v} for v in (90.2, 90.0, 89.9, 90.1, 90.3)]  # mean 90.1
    assert study_schedules.verdict(bn, [], range(5), 90.0, 89.95) == "XBN-GN not trained yet"
    assert study_schedules.verdict(bn, [{"top1": 90.0}] * 5, range(5), 90.0, 89.95) == "kept"
    assert study_schedules.verdict(bn, [{"top1": 89.9}] * 5, range(5), 90.0, 89.95).startswith("rejected: XBN-GN 89.90")
    assert study_schedules.verdict(bn, [{"top1": 95.0}] * 5, range(5), 90.2, 89.95).startswith("rejected: BN 90.10")


def test_schedule_trial_tiny_run_trains_each_network_once_and_resumes(tmp_path, capsys):
    verdicts = study_schedules.main(["--tiny", "-o", str(tmp_path), "--jobs", "1"])
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == sorted(f"{c}_{v}_seed{s}.json" for c in study_schedules.CANDIDATES for v in ("BN", "XBN-GN")
                           for s in (0, 1))
    assert set(verdicts) == set(study_schedules.CANDIDATES)
    record = json.loads((tmp_path / files[0]).read_text())
    candidate = study_schedules.CANDIDATES[record["candidate"]]
    assert all(record["settings"][k] == v for k, v in candidate.items() if k not in ("epochs", "warmup_steps"))
    assert record["settings"]["decay_norms"] is False and record["settings"]["stem_bfn"] is False  # the committed layout
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    capsys.readouterr()
    study_schedules.main(["--tiny", "-o", str(tmp_path), "--jobs", "1"])
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == stamps  # nothing retrained
    assert "top-1" not in capsys.readouterr().out.split("Study schedules")[0]
