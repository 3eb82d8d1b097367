"""Tests for timm_xbn.stats: Eq. 5 perturbation, AdaBN recalibration and ESM (Definition 2).

Expected values are computed independently: by hand-written forward passes with
``F.batch_norm`` over captured activations, numpy moments, or closed forms.
"""
import socket

import numpy as np
import pytest
import timm
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import timm_xbn
from timm_xbn.stats import (
    ESMRecord,
    esm_from_stats,
    esm_records_to_rows,
    estimation_shift,
    expected_bn_stats,
    perturb_bn_stats,
    perturbation_factors,
    recalibrate,
    select_perturbation_targets,
)

RESNET26_FIRST_BNS = [
    "layer1.0.bn1", "layer1.1.bn1", "layer2.0.bn1", "layer2.1.bn1", "layer3.0.bn1", "layer3.1.bn1",
]


# ---------------------------------------------------------------- helpers

def tiny_net(seed: int = 0) -> nn.Sequential:
    """conv -> BN -> ReLU -> Dropout -> conv -> BN -> pool -> linear, with non-trivial running stats."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )
    for bn in (net[1], net[5]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def tiny_batches(sizes=(5, 7, 4), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 6, 6, generator=g) * 2 + 0.5 for n in sizes]


def bn_out(h: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Train-mode BN output, written out: (h - batch mean) / sqrt(biased batch var + eps) * w + b."""
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def manual_batch_stat_forward(net: nn.Sequential, x: torch.Tensor):
    """Forward of ``tiny_net`` with both BNs on batch statistics and dropout off; returns (logits, bn inputs)."""
    h1 = net[0](x)
    h2 = net[4](F.relu(bn_out(h1, net[1])))
    y = net[8](bn_out(h2, net[5]).mean(dim=(2, 3)))
    return y, (h1, h2)


def population_stats(tensors):
    """Mean / biased variance over all samples and positions, per channel, of a list of (N, C, H, W) tensors."""
    cat = torch.cat([t.double() for t in tensors])
    return cat.mean(dim=(0, 2, 3)), cat.var(dim=(0, 2, 3), unbiased=False)


def bn_state(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


@pytest.fixture(scope="module")
def resnet26():
    torch.manual_seed(0)
    model = timm.create_model("resnet26", num_classes=3).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


# ---------------------------------------------------------------- perturbation (Eq. 5)

def test_perturbation_factors_range_seed_and_draw_order():
    channels = [64, 3, 128]
    a = perturbation_factors(channels, delta=0.3, seed=7)
    for (mu_f, var_f), c in zip(a, channels):
        assert mu_f.shape == var_f.shape == (c,) and mu_f.dtype == torch.float64
        for f in (mu_f, var_f):
            assert f.min() >= 0.7 and f.max() <= 1.3
    # same seed repeats bit-exactly, another seed differs
    b = perturbation_factors(channels, delta=0.3, seed=7)
    c = perturbation_factors(channels, delta=0.3, seed=8)
    assert all(torch.equal(x, y) for fa, fb in zip(a, b) for x, y in zip(fa, fb))
    assert not torch.equal(a[0][0], c[0][0])
    # documented draw order: per target, all d_mu then all d_sigma, from one CPU generator
    g = torch.Generator().manual_seed(7)
    draws = [torch.rand(n, generator=g, dtype=torch.float64) for c in channels for n in (c, c)]
    flat = [f for pair in a for f in pair]
    for d, f in zip(draws, flat):
        torch.testing.assert_close(f, 1 + 0.3 * (2 * d - 1), rtol=0, atol=1e-15)
    # zero noise leaves the statistics alone
    no_noise = perturbation_factors(channels, 0.0, 3)
    assert all(torch.equal(f, torch.ones(c, dtype=torch.float64)) for pair, c in zip(no_noise, channels) for f in pair)


@pytest.mark.parametrize("delta", [-0.1, 1.0, 1.5])
def test_delta_outside_unit_interval_is_rejected(delta):
    net = tiny_net()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        perturbation_factors([4], delta, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with perturb_bn_stats(net, delta, 0, ["1"]):
            pass


def test_only_targets_change_inside_and_restore_after_exit(resnet26):
    model = resnet26
    before = bn_state(model)
    buffers = {n: b for n, b in model.named_buffers()}
    targets = RESNET26_FIRST_BNS[:3]
    with perturb_bn_stats(model, delta=0.5, seed=3, targets=targets) as p:
        assert p.names == tuple(targets)
        for name, (mu_f, var_f) in zip(targets, p.factors):
            bn = model.get_submodule(name)
            assert torch.equal(bn.running_mean, (before[f"{name}.running_mean"].double() * mu_f).float())
            assert torch.equal(bn.running_var, (before[f"{name}.running_var"].double() * var_f).float())
            assert not torch.equal(bn.running_mean, before[f"{name}.running_mean"])
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {f"{t}.{s}" for t in targets for s in ("running_mean", "running_var")}
    assert_state_equal(model, before)
    assert all(b is buffers[n] for n, b in model.named_buffers())  # same buffer objects


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_restore_on_exception_even_after_train_mode_updates(error):
    net = tiny_net()
    before = bn_state(net)
    with pytest.raises(error):
        with perturb_bn_stats(net, 0.9, 0, ["1"]):
            net.train()(torch.randn(4, 3, 6, 6))  # also updates the non-target BN's buffers
            net[5].running_var = torch.zeros(5)  # even a re-assigned buffer comes back
            raise error()
    net.eval()
    assert_state_equal(net, before)


def test_perturbation_changes_the_output_only_inside():
    net = tiny_net()
    x = torch.randn(4, 3, 6, 6)
    clean = net(x)
    with perturb_bn_stats(net, 0.5, 0, ["1", "5"]):
        assert not torch.allclose(net(x), clean)
    assert torch.equal(net(x), clean)


def test_bad_targets_are_rejected():
    net = tiny_net()
    with pytest.raises(ValueError, match="expected a BatchNorm"):
        with perturb_bn_stats(net, 0.1, 0, ["0"]):
            pass
    with pytest.raises(ValueError, match="not a submodule"):
        with perturb_bn_stats(net, 0.1, 0, ["nope"]):
            pass


# ---------------------------------------------------------------- target selection

def test_targets_first_bn_of_first_blocks(resnet26):
    assert select_perturbation_targets(resnet26) == RESNET26_FIRST_BNS
    assert select_perturbation_targets(resnet26, blocks=8)[-1] == "layer4.1.bn1"
    every_bn = [n for n, m in resnet26.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert select_perturbation_targets(resnet26, blocks=None) == every_bn
    assert select_perturbation_targets(resnet26, scope="all") == every_bn
    assert "layer1.0.downsample.1" in every_bn


def test_targets_explicit_block_names_in_network_order(resnet26):
    assert select_perturbation_targets(resnet26, ["layer3.1", "layer1.0"]) == ["layer1.0.bn1", "layer3.1.bn1"]
    assert select_perturbation_targets(resnet26, "layer2.0") == ["layer2.0.bn1"]


def test_targets_skip_batch_free_norms_of_p1_models(resnet26):
    p1 = timm_xbn.convert(resnet26, position="P1").model
    assert select_perturbation_targets(p1, 3) == ["layer1.0.bn2", "layer1.1.bn2", "layer2.0.bn2"]
    p1_d2 = timm_xbn.convert(resnet26, position="P1", every=2).model
    assert select_perturbation_targets(p1_d2, 4) == ["layer1.0.bn1", "layer1.1.bn2", "layer2.0.bn1", "layer2.1.bn2"]
    p2 = timm_xbn.convert(resnet26, position="P2").model
    assert select_perturbation_targets(p2, 2) == ["layer1.0.bn1", "layer1.1.bn1"]
    assert not any(".bn2" in n for n in select_perturbation_targets(p2, scope="all"))


def test_target_selection_errors(resnet26):
    with pytest.raises(ValueError, match="has 8 residual blocks"):
        select_perturbation_targets(resnet26, blocks=9)
    with pytest.raises(ValueError, match="layer1.0, layer1.1"):
        select_perturbation_targets(resnet26, ["layer9.9"])
    with pytest.raises(ValueError, match="scope"):
        select_perturbation_targets(resnet26, scope="last")
    with pytest.raises(ValueError, match="no BatchNorm"):
        select_perturbation_targets(nn.Sequential(nn.Linear(2, 2)))
    mlp = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8))
    with pytest.raises(ValueError, match="no supported residual blocks"):
        select_perturbation_targets(mlp)
    assert select_perturbation_targets(mlp, scope="all") == ["1", "4"]
    assert select_perturbation_targets(mlp, blocks=None) == ["1", "4"]


# ---------------------------------------------------------------- recalibration (AdaBN)

def test_full_recalibration_equals_independent_statistics():
    net = tiny_net().train()  # caller's mode must come back
    before = bn_state(net)
    batches = tiny_batches()
    adapted = recalibrate(net, [(x, torch.zeros(len(x))) for x in batches], mode="full")

    with torch.no_grad():
        captured = [manual_batch_stat_forward(net, x)[1] for x in batches]
    for i, idx in enumerate((1, 5)):
        mean, var = population_stats([c[i] for c in captured])
        torch.testing.assert_close(adapted[idx].running_mean.double(), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(adapted[idx].running_var.double(), var, rtol=0, atol=1e-5)
    assert adapted is not net and all(m.training for m in adapted.modules())
    assert all(m.training for m in net.modules())
    assert_state_equal(net, before)
    assert torch.equal(adapted[1].num_batches_tracked, before["1.num_batches_tracked"])


def test_full_recalibration_inplace_and_max_batches():
    net = tiny_net()
    batches = tiny_batches()
    returned = recalibrate(net, iter(batches), inplace=True, max_batches=2)
    assert returned is net
    with torch.no_grad():
        mean, var = population_stats([net[0](x) for x in batches[:2]])
    torch.testing.assert_close(net[1].running_mean.double(), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(net[1].running_var.double(), var, rtol=0, atol=1e-5)


def test_mix_recalibration_is_the_closed_form_mix():
    net = tiny_net()
    batches = tiny_batches()
    n, prior = batches[0].shape[0], 16.0
    mixed = recalibrate(net, batches, mode="mix", prior=prior)
    with torch.no_grad():
        captured = [manual_batch_stat_forward(net, x)[1] for x in batches]
    for i, idx in enumerate((1, 5)):
        mean, var = population_stats([c[i] for c in captured])
        src_mean, src_var = net[idx].running_mean.double(), net[idx].running_var.double()
        expect_mean = prior / (prior + n) * src_mean + n / (prior + n) * mean
        expect_var = prior / (prior + n) * src_var + n / (prior + n) * var
        torch.testing.assert_close(mixed[idx].running_mean.double(), expect_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(mixed[idx].running_var.double(), expect_var, rtol=0, atol=1e-5)
    no_prior = recalibrate(net, batches, mode="mix", prior=0.0)
    full = recalibrate(net, batches, mode="full")
    assert torch.equal(no_prior[5].running_var, full[5].running_var)


def prior_bn_out(h: torch.Tensor, bn: nn.BatchNorm2d, prior: float) -> torch.Tensor:
    """Schneider et al.'s BN written out in float64: statistics N/(N+n) * source + n/(N+n) * batch."""
    h = h.double()
    n = h.shape[0]
    w = 1.0 if prior == float("inf") else prior / (prior + n)
    mean = w * bn.running_mean.double() + (1 - w) * h.mean(dim=(0, 2, 3))
    var = w * bn.running_var.double() + (1 - w) * h.var(dim=(0, 2, 3), unbiased=False)
    out = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    return out * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)


@pytest.mark.parametrize("prior", [0.0, 3.0, 16.0, float("inf")])
def test_prior_mode_is_schneiders_per_batch_mix_in_every_bn(prior):
    net = tiny_net()
    before = bn_state(net)
    adapted = recalibrate(net, mode="prior", prior=prior)
    for x in tiny_batches(sizes=(5, 2, 9)):  # n changes per batch: so does the weight N/(N+n)
        with torch.no_grad():
            h2 = net[4](F.relu(prior_bn_out(net[0](x), net[1], prior)).float())  # upstream BN mixed too
            expect = net[8](prior_bn_out(h2, net[5], prior).float().mean(dim=(2, 3)))
            got = adapted(x)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
        if prior == 0.0:  # N = 0 is prediction-time BN
            torch.testing.assert_close(got, recalibrate(net, mode="batch")(x), rtol=1e-5, atol=1e-6)
        if prior == float("inf"):  # N -> inf is the source model
            torch.testing.assert_close(got, net(x), rtol=1e-5, atol=1e-6)
    assert_state_equal(net, before)
    assert_state_equal(adapted, before)  # the adapted copy's state keeps the source statistics


def test_prior_mode_large_n_tends_to_source_and_rejects_negative_n():
    net = tiny_net()
    x = tiny_batches()[0]
    far, near = (recalibrate(net, mode="prior", prior=n)(x) for n in (1e3, 1e7))
    source = net(x)
    assert (near - source).abs().max() < (far - source).abs().max() < 1.0
    torch.testing.assert_close(near, source, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="source strength"):
        recalibrate(net, mode="prior", prior=-1.0)


def test_batch_mode_uses_test_batch_statistics_with_dropout_off():
    net = tiny_net()
    before = bn_state(net)
    x = torch.randn(6, 3, 6, 6)
    adapted = recalibrate(net, mode="batch")
    assert not adapted.training and adapted[1].running_mean is None
    with torch.no_grad():
        expected, _ = manual_batch_stat_forward(net, x)
        out1, out2 = adapted(x), adapted(x)
    torch.testing.assert_close(out1, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out1, out2)  # dropout stayed off
    assert_state_equal(net, before)
    assert not torch.allclose(net(x), expected, atol=1e-3)  # the caller's model still uses its running stats


def test_recalibrate_errors():
    net = tiny_net()
    with pytest.raises(ValueError, match="mode"):
        recalibrate(net, tiny_batches(), mode="ema")
    with pytest.raises(ValueError, match="needs target batches"):
        recalibrate(net)
    with pytest.raises(ValueError, match="empty"):
        recalibrate(net, [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate(nn.Linear(2, 2), [torch.zeros(1, 2)])


def test_recalibrate_timm_model_leaves_caller_untouched(resnet26):
    before = bn_state(resnet26)
    x = torch.randn(4, 3, 32, 32)
    adapted = recalibrate(resnet26, [x], mode="full")
    assert_state_equal(resnet26, before)
    # the stem BN's input does not depend on any other BN: its new stats are the conv1 output's moments
    with torch.no_grad():
        mean, var = population_stats([resnet26.conv1(x)])
    torch.testing.assert_close(adapted.bn1.running_mean.double(), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(adapted.bn1.running_var.double(), var, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- ESM (Definition 2)

def test_expected_stats_match_numpy_for_1d_2d_and_3d_inputs():
    g = torch.Generator().manual_seed(0)
    for shape, axes in (((13, 6), (0,)), ((13, 6, 5), (0, 2)), ((13, 6, 3, 4), (0, 2, 3))):
        data = torch.randn(*shape, generator=g) * 3 + 2
        model = nn.BatchNorm1d(6) if len(shape) < 4 else nn.BatchNorm2d(6)
        stats = expected_bn_stats(model, [data[:4], (data[4:9],), data[9:]])
        mean, var, count = stats[""]
        np.testing.assert_allclose(mean.numpy(), data.numpy().astype(np.float64).mean(axis=axes), rtol=0, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), data.numpy().astype(np.float64).var(axis=axes), rtol=0, atol=1e-11)
        assert count == data.numel() // 6 and mean.dtype == torch.float64


def test_expected_stats_do_not_touch_the_model():
    net = tiny_net().train()
    before = bn_state(net)
    stats = expected_bn_stats(net, tiny_batches())
    assert list(stats) == ["1", "5"]
    assert all(m.training for m in net.modules())
    assert all(not m._forward_pre_hooks for m in net.modules())
    assert_state_equal(net, before)
    # eval-mode inputs of the first BN: conv outputs, independent of any BN
    with torch.no_grad():
        mean, var = population_stats([net[0](x) for x in tiny_batches()])
    torch.testing.assert_close(stats["1"][0], mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(stats["1"][1], var, rtol=0, atol=1e-10)


def test_esm_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(50, 8, generator=g) * 2 + 1
    bn = nn.BatchNorm1d(8).eval()
    bn.running_mean.copy_(torch.linspace(-1, 1, 8))
    bn.running_var.copy_(torch.linspace(0.5, 3, 8))
    (record,) = estimation_shift(bn, [data[:20], data[20:]])
    x = data.numpy().astype(np.float64)
    mu_hat, var_hat = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    esm_mu = np.linalg.norm(mu_hat - x.mean(0))
    esm_sigma = np.linalg.norm(np.sqrt(var_hat) - np.sqrt(x.var(0)))
    approx = lambda v: pytest.approx(v, abs=1e-6)  # noqa: E731
    assert record == ESMRecord("", 1, 8, approx(esm_mu), approx(esm_sigma),
                               approx(esm_mu / np.sqrt(8)), approx(esm_sigma / np.sqrt(8)))
    rows = esm_records_to_rows([record])
    assert set(rows[0]) == {
        "name", "depth", "channels", "esm_mu", "esm_sigma", "esm_mu_per_channel", "esm_sigma_per_channel",
    }


def test_esm_is_zero_when_running_stats_equal_the_expected_ones():
    net = tiny_net()
    batches = tiny_batches()
    # BN 2's expected stats depend on BN 1's running stats in eval mode: fix them layer by layer
    for _ in range(2):
        for name, (mean, var, _) in expected_bn_stats(net, batches).items():
            net.get_submodule(name).running_mean.copy_(mean)
            net.get_submodule(name).running_var.copy_(var)
    records = estimation_shift(net, batches)
    assert [r.depth for r in records] == [1, 2] and [r.channels for r in records] == [4, 5]
    assert max(max(r.esm_mu, r.esm_sigma) for r in records) <= 1e-6
    # and a known shift of the running mean shows up exactly
    net[5].running_mean.add_(0.5)
    stats = expected_bn_stats(net, batches)
    shifted = esm_from_stats(net, stats)[1]
    assert shifted.esm_mu == pytest.approx(0.5 * np.sqrt(5), abs=1e-5)


def test_esm_depth_counts_bns_only_and_skips_batch_free_norms(resnet26):
    p2 = timm_xbn.convert(resnet26, position="P2").model
    records = estimation_shift(p2, [torch.randn(2, 3, 32, 32)])
    bns = [n for n, m in p2.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [r.name for r in records] == bns
    assert [r.depth for r in records] == list(range(1, len(bns) + 1))


# ---------------------------------------------------------------- torch.distributed (gloo, 2 processes)

def _dist_worker(rank: int, world: int, port: int, sizes, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = tiny_net()
        data = torch.cat(tiny_batches(sizes))
        shard = data[:5] if rank == 0 else data[5:]  # unequal halves
        stats = expected_bn_stats(net, [shard[:3], shard[3:]])
        adapted = recalibrate(net, [shard], mode="full")
        torch.save({
            "stats": {k: (m, v, c) for k, (m, v, c) in stats.items()},
            "running": {k: v for k, v in adapted.state_dict().items() if "running" in k},
        }, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_distributed_stats_equal_single_process_on_all_data(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sizes = (6, 6)
    mp.spawn(_dist_worker, args=(2, port, sizes, str(tmp_path)), nprocs=2, join=True)

    net = tiny_net()
    data = torch.cat(tiny_batches(sizes))
    single = expected_bn_stats(net, [data])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["stats"].keys() == single.keys()
        for name, (mean, var, count) in single.items():
            torch.testing.assert_close(got["stats"][name][0], mean, rtol=0, atol=1e-10)
            torch.testing.assert_close(got["stats"][name][1], var, rtol=0, atol=1e-10)
            assert got["stats"][name][2] == count
        # full AdaBN: with one batch per rank, the first BN sees the conv output of all 12 samples
        mean, var = population_stats([net[0](data).detach()])
        torch.testing.assert_close(got["running"]["1.running_mean"].double(), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(got["running"]["1.running_var"].double(), var, rtol=0, atol=1e-5)


def test_perturbation_and_shared_pass_sweep_leave_the_global_rng_untouched():
    """The factors come from a generator of their own: a version that seeded or drew from the global
    torch RNG gives the same factors (so no other test notices), but changes every random number the
    caller draws afterwards (its data order, augmentations, dropout). The global state must not move."""
    from timm_xbn.evaluation.sweep import SharedPass, robustness_settings

    net = tiny_net()
    x, y = tiny_batches(sizes=(6,))[0], torch.tensor([0, 1, 2, 0, 1, 2])
    targets = ["1", "5"]
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    factors = perturbation_factors([4, 5], delta=0.5, seed=3)
    with perturb_bn_stats(net, delta=0.5, seed=3, targets=targets):
        net(x)
    sweep = SharedPass.of_settings({"net": net}, robustness_settings(["net"], [0.3, 0.9], [0, 1]), {"net": targets})
    sweep.update(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    # and the same factors whatever the global state (independent of it, not merely restored)
    torch.manual_seed(99)
    again = perturbation_factors([4, 5], delta=0.5, seed=3)
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(factors, again) for a, b in zip(pair_a, pair_b))
