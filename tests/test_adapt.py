"""Tests for timm_xbn.adapt: each method against an independent computation.

The reference forward passes below are written out with torch.nn.functional (BN on batch statistics
by hand), gradients come from central finite differences (TENT) or autograd through that written-out
forward (SAR), so a wrong parameter set, a skipped filter or a missing reset shows up.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_xbn.adapt import (
    EATA, SAR, Tent, create_adapter, norm_affine_parameters, parse_method, run_protocol,
)
from timm_xbn.stats import recalibrate

AFFINE = ["1.weight", "1.bias", "4.weight", "4.bias", "7.weight", "7.bias"]


def tiny_net(seed: int = 0) -> nn.Sequential:
    """conv -> BN -> ReLU -> Dropout -> GN -> pool -> LN -> linear in float64, non-trivial affine / running stats."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.GroupNorm(2, 4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 3),
    ).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in AFFINE:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[8].weight.mul_(4)  # confident enough logits that entropies spread out
    return net.eval()


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64) * 2 + 0.5, torch.randint(0, 3, (n,), generator=g)


def manual_logits(net: nn.Sequential, affine: dict, x: torch.Tensor) -> torch.Tensor:
    """The net's forward with the BN on batch statistics, dropout off, the given affine parameters."""
    h = F.conv2d(x, net[0].weight, net[0].bias, padding=1)
    mean, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + net[1].eps) * affine["1.weight"].view(1, -1, 1, 1) + affine["1.bias"].view(1, -1, 1, 1)
    h = F.group_norm(F.relu(h), 2, affine["4.weight"], affine["4.bias"], net[4].eps)
    h = F.layer_norm(h.mean(dim=(2, 3)), (4,), affine["7.weight"], affine["7.bias"], net[7].eps)
    return F.linear(h, net[8].weight, net[8].bias)


def entropies(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    return -(p * torch.log(p)).sum(1)


def affine_of(net: nn.Module) -> dict:
    params = dict(net.named_parameters())
    return {k: params[k].detach().clone() for k in AFFINE}


def finite_difference_grad(net, affine, x, h=1e-6):
    """d mean-entropy / d affine, element by element by central differences."""
    grads = {}
    for name, value in affine.items():
        g = torch.zeros_like(value)
        for i in range(value.numel()):
            plus, minus = dict(affine), dict(affine)
            plus[name] = value.clone().view(-1).index_add(0, torch.tensor([i]), torch.tensor([h], dtype=value.dtype)).view_as(value)
            minus[name] = value.clone().view(-1).index_add(0, torch.tensor([i]), torch.tensor([-h], dtype=value.dtype)).view_as(value)
            g.view(-1)[i] = (entropies(manual_logits(net, plus, x)).mean() - entropies(manual_logits(net, minus, x)).mean()) / (2 * h)
        grads[name] = g
    return grads


def state_copy(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, state: dict) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


# ---------------------------------------------------------------- TENT


def test_tent_sgd_step_is_the_hand_computed_entropy_gradient_step_on_norm_affine_params_only():
    net = tiny_net()
    x, _ = batch()
    lr = 0.05
    tent = Tent(net, lr=lr, optimizer="sgd", momentum=0.9)
    before = affine_of(net)
    grads = finite_difference_grad(net, before, x)
    logits = tent(x)
    torch.testing.assert_close(logits, manual_logits(net, before, x))  # the logits before the step
    after = dict(tent.model.named_parameters())
    for name in AFFINE:
        torch.testing.assert_close(after[name].detach(), before[name] - lr * grads[name], rtol=0, atol=1e-8)
        assert not torch.equal(after[name].detach(), before[name]), name  # the step really moved it
    for name, p in net.named_parameters():  # nothing else moved
        if name not in AFFINE:
            assert torch.equal(after[name], p), name
    assert tent.passes.as_dict() == {"forward": 6, "backward": 6}
    # the second step uses momentum 0.9: w2 = w1 - lr * (0.9 g1 + g2)
    w1 = affine_of(tent.model)
    g2 = finite_difference_grad(net, w1, x)
    tent(x)
    for name in AFFINE:
        expect = w1[name] - lr * (0.9 * grads[name] + g2[name])
        torch.testing.assert_close(dict(tent.model.named_parameters())[name].detach(), expect, rtol=0, atol=1e-8)


def test_tent_adam_first_step_moves_each_parameter_by_lr_against_its_gradient_sign():
    net = tiny_net()
    x, _ = batch()
    before = affine_of(net)
    grads = finite_difference_grad(net, before, x)
    tent = create_adapter(net, "tent:optimizer=adam,lr=0.01")
    tent(x)
    after = dict(tent.model.named_parameters())
    for name in AFFINE:  # Adam's first step: m/(sqrt(v)+eps) = g/(|g|+eps)
        expect = before[name] - 0.01 * grads[name] / (grads[name].abs() + 1e-8)
        torch.testing.assert_close(after[name].detach(), expect, rtol=0, atol=1e-6)


def test_methods_never_change_the_callers_model():
    net = tiny_net()
    net[3].train()  # a mixed train/eval state must survive too
    state, flags = state_copy(net), [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    x, y = batch()
    for spec in ("source", "norm", "prior:4", "batch", "tent:lr=0.1", "eata:lr=0.1,margin=10", "sar:lr=0.1,margin=10"):
        adapter = create_adapter(net, spec)
        run_protocol(adapter, {"a": lambda: [(x, y)], "b": lambda: [(x, y)]}, "continual")
    assert_same_state(net, state)
    assert [m.training for m in net.modules()] == flags
    assert [p.requires_grad for p in net.parameters()] == grads
    assert net[1].track_running_stats and net[1].running_mean is not None


def test_episodic_resets_before_each_stream_and_continual_does_not():
    net = tiny_net()
    x, y = batch()
    streams = {"a": lambda: [(x, y)], "b": lambda: [(x, y)]}
    once = Tent(net, lr=0.5)
    run_protocol(once, {"a": streams["a"]})
    one_stream = affine_of(once.model)
    episodic = Tent(net, lr=0.5)
    results = run_protocol(episodic, streams, "episodic")
    assert results["a"] == results["b"]
    for name, value in affine_of(episodic.model).items():  # b started again from the source weights
        assert torch.equal(value, one_stream[name]), name
    continual = Tent(net, lr=0.5)
    run_protocol(continual, streams, "continual")
    assert all(not torch.equal(v, one_stream[k]) for k, v in affine_of(continual.model).items())
    episodic.reset()
    assert_same_state(episodic.model, Tent(net).model.state_dict())
    assert not episodic.optimizer.state  # momentum buffers are reset too
    with pytest.raises(ValueError, match="protocol"):
        run_protocol(episodic, streams, "online")


# ---------------------------------------------------------------- SAR


def sar_reference(net, x, lr, rho, margin):
    """SAR's update written out: reliable filter, SAM ascent, second filter, SGD step (momentum is
    irrelevant on the first step)."""
    w = {k: v.clone().requires_grad_(True) for k, v in affine_of(net).items()}
    e0 = margin * math.log(3)
    ent = entropies(manual_logits(net, w, x))
    keep = ent < e0
    g = torch.autograd.grad(ent[keep].mean(), list(w.values()))
    norm = torch.norm(torch.stack([t.norm() for t in g]))
    w_adv = {k: (v + rho * gi / norm).detach().requires_grad_(True) for (k, v), gi in zip(w.items(), g)}
    ent2 = entropies(manual_logits(net, w_adv, x))
    keep2 = keep & (ent2 < e0)
    g2 = torch.autograd.grad(ent2[keep2].mean(), list(w_adv.values()))
    return {k: (v - lr * gi).detach() for (k, v), gi in zip(w.items(), g2)}, ent.detach(), keep, keep2


def test_sar_filters_unreliable_samples_and_takes_a_sharpness_aware_step():
    net = tiny_net()
    x, _ = batch(n=12)
    ent = entropies(manual_logits(net, affine_of(net), x)).detach()
    margin = float(ent.median()) / math.log(3)  # E0 between the samples: about half are reliable
    expect, _, keep, keep2 = sar_reference(net, x, lr=0.1, rho=0.05, margin=margin)
    assert 0 < int(keep.sum()) < len(x)
    sar = SAR(net, lr=0.1, rho=0.05, margin=margin, reset_constant=0.0)
    sar(x)
    after = dict(sar.model.named_parameters())
    for name in AFFINE:
        torch.testing.assert_close(after[name].detach(), expect[name], rtol=0, atol=1e-10)
    assert sar.passes.as_dict() == {"forward": 24, "backward": int(keep.sum()) + int(keep2.sum())}


def test_sar_second_filter_keeps_only_samples_reliable_in_both_passes():
    net = tiny_net()
    x, _ = batch()
    sar = SAR(net, margin=10.0)  # every sample below E0 on its own
    first = torch.tensor([True, False, True, False, False, True])
    _, reliable, loss = sar._reliable_entropy_backward(x, first)
    assert torch.equal(reliable, first) and sar.passes.backward == 3
    with torch.no_grad():
        expect = entropies(manual_logits(net, affine_of(net), x))[first].mean()
    torch.testing.assert_close(loss, float(expect))


def test_sar_without_reliable_samples_does_not_move_and_recovers_when_the_loss_ema_collapses():
    net = tiny_net()
    x, _ = batch()
    idle = SAR(net, margin=0.0)  # E0 = 0: no sample is reliable
    idle(x)
    assert_same_state(idle.model, Tent(net).model.state_dict())
    assert idle.passes.as_dict() == {"forward": 12, "backward": 0} and idle.ema is None  # two passes, as the reference
    recovering = SAR(net, lr=0.1, margin=10.0, reset_constant=100.0)  # any EMA is below 100: reset every batch
    recovering(x)
    assert recovering.resets == 1 and recovering.ema is not None  # the EMA survives recovery (reference)
    assert_same_state(recovering.model, Tent(net).model.state_dict())
    kept = SAR(net, lr=0.1, margin=10.0, reset_constant=0.0)
    kept(x)
    assert kept.resets == 0 and kept.ema is not None
    assert any(not torch.equal(a, b) for a, b in zip(affine_of(kept.model).values(), affine_of(net).values()))


# ---------------------------------------------------------------- EATA


def test_eata_step_is_sgd_on_reweighted_reliable_entropies_and_tracks_their_mean_softmax():
    net = tiny_net()
    x, _ = batch(n=12)
    w = {k: v.clone().requires_grad_(True) for k, v in affine_of(net).items()}
    logits = manual_logits(net, w, x)
    ent = entropies(logits)
    margin = float(ent.detach().median()) / math.log(3)
    e0 = margin * math.log(3)
    keep = ent < e0
    assert 0 < int(keep.sum()) < len(x)
    loss = (ent[keep] * torch.exp(e0 - ent[keep].detach())).mean()
    grads = dict(zip(w, torch.autograd.grad(loss, list(w.values()))))
    eata = EATA(net, lr=0.1, margin=margin, d_margin=0.05)
    eata(x)
    after = dict(eata.model.named_parameters())
    for name in AFFINE:
        torch.testing.assert_close(after[name].detach(), w[name].detach() - 0.1 * grads[name], rtol=0, atol=1e-10)
    torch.testing.assert_close(eata.model_probs, logits.detach().softmax(1)[keep].mean(0))
    assert eata.passes.as_dict() == {"forward": 12, "backward": int(keep.sum())}
    # second batch: samples whose softmax is too close in direction to the running mean are redundant
    x2, _ = batch(n=12, seed=5)
    with torch.no_grad():
        probs2 = manual_logits(net, affine_of(eata.model), x2).softmax(1)
        ent2 = entropies(manual_logits(net, affine_of(eata.model), x2))
    cos = F.cosine_similarity(eata.model_probs.unsqueeze(0), probs2, dim=1).abs()
    eata.d_margin = float(cos[ent2 < e0].median())
    keep2 = (ent2 < e0) & (cos < eata.d_margin)
    assert 0 < int(keep2.sum()) < int((ent2 < e0).sum())
    old = eata.model_probs.clone()
    eata(x2)
    assert eata.passes.backward == int(keep.sum()) + int(keep2.sum())
    torch.testing.assert_close(eata.model_probs, 0.9 * old + 0.1 * probs2[keep2].mean(0))
    eata.reset()
    assert eata.model_probs is None and not eata.optimizer.state


# ---------------------------------------------------------------- statistics methods, parameters, specs


def test_norm_prior_batch_adapters_match_recalibrate_and_count_passes():
    net = tiny_net()
    x, y = batch()
    streams = {"a": lambda: [(x[:3], y[:3]), (x[3:], y[3:])]}
    norm = create_adapter(net, "norm")
    assert run_protocol(norm, streams)["a"]["forward"] == 12  # calibration pass + prediction pass
    torch.testing.assert_close(norm(x), recalibrate(net, [x[:3], x[3:]], mode="full")(x))
    torch.testing.assert_close(create_adapter(net, "prior:7")(x), recalibrate(net, mode="prior", prior=7.0)(x))
    torch.testing.assert_close(create_adapter(net, "batch")(x), recalibrate(net, mode="batch")(x))
    torch.testing.assert_close(create_adapter(net, "source")(x), net(x))


def test_statistics_methods_leave_a_bn_free_network_as_the_source():
    torch.manual_seed(0)
    gn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    x, y = batch()
    for spec in ("norm", "prior:4", "batch"):
        adapter = create_adapter(gn, spec)
        runs = run_protocol(adapter, {"a": lambda: [(x, y)]})
        assert runs["a"]["forward"] == 6, spec  # norm skips its calibration pass: nothing to calibrate
        assert torch.equal(adapter(x), gn(x)), spec


def test_norm_affine_parameters_cover_bn_gn_ln_affine_in_and_xbn_networks():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True),
                        nn.InstanceNorm2d(4), nn.LayerNorm(4))
    assert [n for n, _ in norm_affine_parameters(net)] == [
        "1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    import timm
    from timm_xbn.surgery import convert

    bn = timm.create_model("resnet18", num_classes=3)
    xbn = convert(bn, position="P2", bfn="gn", groups=8).model
    names = [n for n, _ in norm_affine_parameters(xbn)]
    assert "layer1.0.bn2.weight" in names and "layer1.0.bn1.weight" in names
    assert len(names) == 2 * sum(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in xbn.modules())
    with pytest.raises(ValueError, match="no normalization"):
        Tent(nn.Linear(3, 2))


@pytest.mark.parametrize("spec, expected", [
    ("tent", ("tent", {})), ("prior:16", ("prior", {"prior": 16.0})), ("prior:prior=2", ("prior", {"prior": 2.0})),
    ("sar:lr=0.001,margin=0.5", ("sar", {"lr": 0.001, "margin": 0.5})), ("tent:optimizer=adam", ("tent", {"optimizer": "adam"})),
])
def test_parse_method(spec, expected):
    assert parse_method(spec) == expected


@pytest.mark.parametrize("bad", ["tentt", "tent:lr", "tent:lr=x", "tent:rho=1", "prior:-1", "tent:optimizer=rmsprop"])
def test_parse_method_rejects_bad_specs(bad):
    with pytest.raises(ValueError):
        create_adapter(tiny_net(), bad)
