"""SAR's loss moving average and model recovery by value, and a prior-mode model in train mode.

SAR (Niu et al. 2023, mr-eyes/SAR): after each update ``ema = 0.9 * ema + 0.1 * loss`` of the
second (sharpness-aware) pass's loss, the first one taken as is; when ``ema < reset_constant`` the
model and its optimizer go back to the source state, the EMA is kept (as the reference code). Schneider et al.'s prior mode mixes
statistics in eval mode only: in train mode a BN must do exactly what ``nn.BatchNorm2d`` does.
"""
import copy

import pytest
import torch
import torch.nn as nn

from test_adapt import AFFINE, affine_of, batch, tiny_net
from timm_xbn.adapt import SAR
from timm_xbn.stats import recalibrate


def scripted_sar(losses, reset_constant):
    """A SAR whose second-pass losses are ``losses`` in turn (the first pass: every sample reliable)."""
    sar = SAR(tiny_net(), lr=0.1, margin=10.0, reset_constant=reset_constant)
    real = sar._reliable_entropy_backward
    script = iter(losses)

    def scripted(x, keep):
        logits, reliable, loss = real(x, keep)
        return logits, reliable, (loss if keep is None else next(script))

    sar._reliable_entropy_backward = scripted
    return sar


def test_sar_loss_ema_by_hand():
    sar = scripted_sar([0.5, 0.3, 0.1, 0.9], reset_constant=0.0)
    x, _ = batch()
    expected = [0.5, 0.9 * 0.5 + 0.1 * 0.3]  # 0.48
    expected += [0.9 * expected[-1] + 0.1 * 0.1]  # 0.442
    expected += [0.9 * expected[-1] + 0.1 * 0.9]  # 0.4878
    for value in expected:
        sar(x)
        assert sar.ema == pytest.approx(value, rel=1e-12)
    assert sar.resets == 0


def test_sar_recovers_the_source_model_when_the_ema_falls_below_the_constant():
    # EMA 0.5, 0.48, 0.442: below 0.45 only after the third batch
    sar = scripted_sar([0.5, 0.3, 0.1, 0.6], reset_constant=0.45)
    source = {k: v.clone() for k, v in affine_of(sar.model).items()}
    x, _ = batch()
    for resets in (0, 0, 1):
        sar(x)
        assert sar.resets == resets
    # the reference keeps the EMA across a recovery (its SAR.forward writes the old value back after
    # reset() cleared it); before issue 24 this project restarted it from None
    assert sar.ema == pytest.approx(0.442, rel=1e-12)
    for name in AFFINE:
        torch.testing.assert_close(affine_of(sar.model)[name], source[name], rtol=0, atol=0)
    assert not sar.optimizer.state_dict()["state"]  # the momentum buffers are the source's (none) too
    sar(x)  # after recovery the EMA goes on from the kept value: 0.9 * 0.442 + 0.1 * 0.6 = 0.4578 >= 0.45
    assert sar.ema == pytest.approx(0.4578, rel=1e-12) and sar.resets == 1


def bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.parametrize("prior", [0.0, 4.0, float("inf")])
def test_prior_mode_model_in_train_mode_is_a_plain_bn(prior):
    net = bn_net()
    adapted = recalibrate(net, mode="prior", prior=prior).train()
    plain = copy.deepcopy(net).train()
    g = torch.Generator().manual_seed(1)
    for n in (6, 3):
        x = torch.randn(n, 3, 9, 9, generator=g) * 2 + 1
        torch.testing.assert_close(adapted(x), plain(x), rtol=0, atol=0)
        for i in (1, 4):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(getattr(adapted[i], name), getattr(plain[i], name), rtol=0, atol=0, msg=name)
    # the updated statistics are the source that eval mode mixes from now on (N = inf: exactly them)
    if prior == float("inf"):
        x = torch.randn(4, 3, 9, 9, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(adapted.eval()(x), plain.eval()(x), rtol=0, atol=0)
