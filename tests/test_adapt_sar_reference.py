"""SAR as its reference code (Niu et al. 2023, github.com/mr-eggplant/SAR), point by point (issues 24, 32).

Each expectation is written out by hand from the reference: which layers ``collect_params`` adapts,
its ``main.py`` learning-rate rules (for TENT and EATA too, and SAR's doubling at batch size 1), TENT's
Nesterov option, and the SGD step SAR takes even when no sample passes a filter.
(The EMA kept across a recovery is pinned in test_adapt_values.py.)
"""
import pytest
import torch
import torch.nn as nn

from test_adapt import AFFINE, affine_of, batch, entropies, manual_logits, tiny_net
from timm_xbn.adapt import EATA, SAR, Tent, create_adapter
from timm_xbn.adapt.learning_rate import harness_learning_rate
from timm_xbn.adapt.norms import norm_affine_parameters, sar_affine_parameters
from timm_xbn.adapt.sar import sar_learning_rate


def named_net() -> nn.Module:
    """Modules named as in a ResNet and a ViT, with every norm type."""
    m = nn.Module()
    m.bn1 = nn.BatchNorm2d(2)
    m.layer1 = nn.Sequential(nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.InstanceNorm2d(2, affine=True), nn.BatchNorm1d(2))
    m.layer4 = nn.Sequential(nn.BatchNorm2d(2))
    m.blocks = nn.Sequential(*[nn.Module() for _ in range(12)])
    for block in m.blocks:
        block.norm1 = nn.LayerNorm(2)
    m.norm = nn.LayerNorm(2)
    m.fc_norm = nn.LayerNorm(2)
    m.head = nn.Module()
    m.head.norm = nn.Module()
    m.head.norm.ln = nn.LayerNorm(2)
    return m


def test_sar_adapts_the_layers_the_reference_collects():
    names = [n for n, _ in sar_affine_parameters(named_net())]
    modules = ["bn1", "layer1.0", "layer1.1"] + [f"blocks.{i}.norm1" for i in range(9)] + ["fc_norm"]
    assert names == [f"{m}.{kind}" for m in modules for kind in ("weight", "bias")]
    # left out: IN and BN1d (not BN2d/GN/LN), layer4, blocks 9-11, the final "norm", "head.norm.ln" ("norm.")
    assert len(norm_affine_parameters(named_net())) == 2 * (len(modules) + 2 + 1 + 3 + 1 + 1)


def test_sar_layers_option():
    net = named_net()
    net.head = nn.Linear(2, 2)
    reference = SAR(net)
    everything = SAR(net, layers="all")
    assert len(reference.params) == 2 * 13 and len(everything.params) == 2 * 20  # + IN, BN1d, layer4, blocks 9-11, norm
    with pytest.raises(ValueError, match="layers"):
        SAR(net, layers="top")


@pytest.mark.parametrize("bs,vit,lr", [(1, False, 0.00025 / 16), (2, False, 0.00025 / 16), (16, False, 0.000125),
                                        (31, False, 0.00025 * 31 / 32), (32, False, 0.00025), (64, False, 0.00025),
                                        (1, True, 0.001 / 32), (16, True, 0.00025), (64, True, 0.001), (128, True, 0.002)])
def test_sar_learning_rate_rule(bs, vit, lr):
    """main.py: 0.00025 / 64 * bs * 2 below 32 (ViT 0.001 / 64 * bs), doubled for SAR's bs-1 experiment."""
    assert sar_learning_rate(bs, vit) == pytest.approx(lr, rel=1e-15)


@pytest.mark.parametrize("bs,vit,lr", [(1, False, 0.00025 / 32), (16, False, 0.000125), (64, False, 0.00025),
                                        (1, True, 0.001 / 64), (16, True, 0.00025), (64, True, 0.001)])
def test_tent_and_eata_learning_rate_rule(bs, vit, lr):
    """The same rule without the doubling (the harness doubles for SAR only)."""
    for method in ("tent", "eata"):
        assert harness_learning_rate(bs, vit, method) == pytest.approx(lr, rel=1e-15)


@pytest.mark.parametrize("spec,rule,lr", [("tent:lr=0", "sar-harness", 0.00025 * 6 / 32),
                                          ("eata:lr=0", "sar-harness", 0.00025 * 6 / 32),
                                          ("sar", "sar-harness", 0.00025 * 6 / 32),
                                          ("tent", "fixed", 0.00025), ("eata:lr=0.01", "fixed", 0.01)])
def test_rule_is_applied_at_the_stream_batch_size_and_recorded(spec, rule, lr):
    adapter = create_adapter(tiny_net(), spec)
    assert adapter.lr_record() == {"lr_rule": rule, "lr": None if rule == "sar-harness" else lr}
    x, _ = batch(n=6)
    adapter(x)
    adapter.reset()  # the optimizer state goes back to the placeholder rate; the next batch sets the rule's again
    adapter(x[:2])  # a shorter last batch keeps the stream's rate
    assert adapter.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-15)
    assert adapter.lr_record() == {"lr_rule": rule, "lr": pytest.approx(lr, rel=1e-15)}


def test_sar_doubles_its_rate_at_batch_size_one():
    sar = SAR(tiny_net())
    x, _ = batch(n=1)
    sar(x)
    assert sar.optimizer.param_groups[0]["lr"] == pytest.approx(0.00025 / 64 * 2 * 2, rel=1e-15)
    tent = Tent(tiny_net(), lr=0)
    tent(x)
    assert tent.optimizer.param_groups[0]["lr"] == pytest.approx(0.00025 / 64 * 2, rel=1e-15)


def test_tent_nesterov_step():
    """SGD with Nesterov momentum, first step from a zero buffer: b = g, d = g + mu b, so
    w1 = w0 - lr (1 + mu) g (plain momentum: w0 - lr g); g from autograd through the written-out forward."""
    net = tiny_net()
    x, _ = batch()
    affine = {k: v.detach().clone().requires_grad_(True) for k, v in affine_of(net).items()}
    entropies(manual_logits(net, affine, x)).mean().backward()
    tent = create_adapter(net, "tent:optimizer=nesterov,lr=0.1,momentum=0.9")
    tent(x)
    for name in AFFINE:
        torch.testing.assert_close(affine_of(tent.model)[name], affine[name].detach() - 0.1 * 1.9 * affine[name].grad,
                                   rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="momentum"):
        Tent(net, optimizer="nesterov", momentum=0.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        EATA(net, lr=-1.0)


def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=1, num_heads=2)


def test_sar_uses_the_rule_at_the_stream_batch_size_and_after_a_recovery():
    sar = SAR(tiny_net(), margin=10.0, reset_constant=100.0)  # recovers after every batch
    x, _ = batch(n=6)
    sar(x)
    assert sar.resets == 1
    sar(x[:2])  # a shorter last batch keeps the stream's rate
    assert sar.optimizer.param_groups[0]["lr"] == pytest.approx(0.00025 * 6 / 32, rel=1e-15)
    assert sar.lr_record() == {"lr_rule": "sar-harness", "lr": pytest.approx(0.00025 * 6 / 32, rel=1e-15)}
    assert SAR(tiny_net(), lr=0.01).optimizer.param_groups[0]["lr"] == 0.01
    vit = SAR(tiny_vit())
    vit(torch.randn(4, 3, 8, 8))
    assert vit.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 * 4 / 64, rel=1e-15)


def test_sar_steps_with_momentum_when_no_sample_is_reliable():
    """Batch 1 (all reliable): w1 = w0 - lr g1 (momentum buffer b1 = g1). Batch 2 (none reliable):
    the reference still steps on a zero gradient, b2 = 0.9 b1, so w2 = w1 - 0.9 lr g1 = w1 + 0.9 (w1 - w0)."""
    net = tiny_net()
    sar = SAR(net, lr=0.1, margin=10.0, reset_constant=0.0)
    x, _ = batch()
    w0 = {k: v.clone() for k, v in affine_of(sar.model).items()}
    sar(x)
    w1 = {k: v.clone() for k, v in affine_of(sar.model).items()}
    sar.margin = 0.0
    ema = sar.ema
    sar(x)
    assert sar.ema == ema  # no second loss: the EMA does not move
    for name in AFFINE:
        assert not torch.equal(w1[name], w0[name])
        torch.testing.assert_close(affine_of(sar.model)[name], w1[name] + 0.9 * (w1[name] - w0[name]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["eata", "sar"])
def test_eata_and_sar_take_adams_first_step_on_the_gradient_sgd_steps_on(method):
    """``optimizer=adam`` (claim 12's small-image setting): the same gradient, Adam's step. Plain SGD
    (momentum 0) moves w by -lr g, so g = (w0 - w_sgd) / lr; Adam's first step is -lr g / (|g| + 1e-8)."""
    net = tiny_net()
    x, _ = batch()
    w0 = affine_of(net)
    sgd = create_adapter(net, f"{method}:lr=0.1,momentum=0,margin=10")
    adam = create_adapter(net, f"{method}:lr=0.01,optimizer=adam,margin=10")
    sgd(x)
    adam(x)
    assert type(adam.optimizer) is torch.optim.Adam and type(sgd.optimizer) is torch.optim.SGD
    for name in AFFINE:
        grad = (w0[name] - affine_of(sgd.model)[name]) / 0.1
        assert grad.abs().min() > 1e-4, name  # a real gradient, so the sign test means something
        torch.testing.assert_close(affine_of(adam.model)[name], w0[name] - 0.01 * grad / (grad.abs() + 1e-8),
                                   rtol=0, atol=2e-5)
