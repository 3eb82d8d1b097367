"""benchmarks/train_step.py (the study's training step vs a bare loop): its tiny mode, the loops it times."""
import importlib

import pytest
import torch

from timm_xbn.study.resnet import ResNetConfig, build_variant


@pytest.fixture(scope="module")
def train_step():
    return importlib.import_module("benchmarks.train_step")


@pytest.fixture(scope="module")
def tiny(train_step):
    return train_step.main(["--tiny"])


def test_tiny_mode_measures_both_variants_in_both_layouts(tiny):
    rows = tiny["rows"]
    assert [(r["variant"], r["layout"]) for r in rows] == [
        ("BN", "channels_last"), ("XBN-GN", "channels_last"), ("BN", "contiguous"), ("XBN-GN", "contiguous")]
    for r in rows:
        for key in ("study_ms", "bare_ms", "study_cpu_ms", "bare_cpu_ms"):
            assert 0 < r[key] < float("inf"), (key, r)
        assert r["overhead"] == pytest.approx(r["study_ms"] / r["bare_ms"] - 1)
        assert r["overhead_cpu"] == pytest.approx(r["study_cpu_ms"] / r["bare_cpu_ms"] - 1)
    s = tiny["summary"]  # on the CPU, from CPU time
    assert s["clock"] == "CPU"
    assert s["xbn_gn_vs_bn_bare"] == pytest.approx(rows[1]["bare_cpu_ms"] / rows[0]["bare_cpu_ms"])
    assert s["xbn_gn_vs_bn_study"] == pytest.approx(rows[1]["study_cpu_ms"] / rows[0]["study_cpu_ms"])
    assert s["xbn_gn_layout_ratio"] == pytest.approx(rows[3]["bare_cpu_ms"] / rows[1]["bare_cpu_ms"])
    assert s["max_overhead"] == max(rows[0]["overhead_cpu"], rows[1]["overhead_cpu"])


def test_profiles_find_group_norm_only_in_the_xbn_network(tiny):
    """The kernel groups come from the profiler's event names: the BN network has no GroupNorm, the
    XBN-GN network has both (its remaining BNs and the blocks' GroupNorms), and the groups fit the total."""
    bn, xbn = tiny["profiles"]["BN"], tiny["profiles"]["XBN-GN"]
    assert bn["group norm"] == 0 and bn["batch norm"] > 0 and bn["convolution"] > 0
    assert xbn["group norm"] > 0 and xbn["batch norm"] > 0
    for shares in (bn, xbn):
        assert sum(ms for group, ms in shares.items() if group != "total") <= shares["total"] + 1e-9


def test_both_loops_run_exactly_the_steps_asked_on_the_same_batch(train_step):
    """The study loop does one epoch of the synthetic split (``steps`` updates, every image once);
    the bare loop repeats the one prepared batch. Counted with a forward hook, independently of the loops."""
    cfg = ResNetConfig(batch_size=4, warmup_steps=1)
    split = train_step.synthetic_split(4 * 3, 32, torch.device("cpu"))
    model = build_variant("BN", cfg, train_step.NUM_CLASSES, seed=0)
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    train_step.study_loop(model, split, cfg)(3)
    assert len(seen) == 3
    inputs = torch.cat(seen)  # normalized images: undo the normalization, compare as sets of images
    images = inputs * split.std.view(1, -1, 1, 1) + split.mean.view(1, -1, 1, 1)
    order = lambda t: t.flatten(1).sum(1).argsort()  # noqa: E731
    assert torch.allclose(images[order(images)], split.x[order(split.x)], atol=1e-5)

    seen.clear()
    x, y = split.normalize(split.x[:4]), split.y[:4]
    before = [p.detach().clone() for p in model.parameters()]
    train_step.bare_loop(model, x, y, cfg)(2)
    assert len(seen) == 2 and all(torch.equal(s, x) for s in seen)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trains
