"""RoTTA's robust BN (Yuan et al. 2023) against its definition, written out by hand: per batch
mu <- (1 - m) mu + m mu_batch, var <- (1 - m) var + m var_batch (biased), from the source statistics,
and the batch normalized with the updated EMA."""
import pytest
import torch
import torch.nn.functional as F

from test_adapt import batch, tiny_net
from timm_xbn.adapt import RobustBN, create_adapter, parse_method


def reference_logits(net, mean, var, x):
    """tiny_net's forward with its BN normalizing by (mean, var)."""
    bn = net[1]
    h = F.conv2d(x, net[0].weight, net[0].bias, padding=1)
    h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    h = F.group_norm(F.relu(h), 2, net[4].weight, net[4].bias, net[4].eps)
    h = F.layer_norm(h.mean(dim=(2, 3)), (4,), net[7].weight, net[7].bias, net[7].eps)
    return F.linear(h, net[8].weight, net[8].bias)


@pytest.mark.parametrize("m", [0.05, 0.5])
def test_rbn_normalizes_with_an_ema_of_batch_statistics(m):
    net = tiny_net()
    rbn = RobustBN(net, momentum=m)
    mean, var = net[1].running_mean.clone(), net[1].running_var.clone()
    with torch.no_grad():
        for seed, n in [(1, 6), (2, 4), (3, 1)]:  # the last one a single image
            x, _ = batch(n=n, seed=seed)
            h = F.conv2d(x, net[0].weight, net[0].bias, padding=1)
            b_mean = h.mean(dim=(0, 2, 3))
            b_var = ((h - b_mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
            mean, var = (1 - m) * mean + m * b_mean, (1 - m) * var + m * b_var
            torch.testing.assert_close(rbn(x), reference_logits(net, mean, var, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(rbn.model[1].running_mean, mean, rtol=0, atol=1e-12)
    rbn.reset()  # episodic: back to the source statistics
    torch.testing.assert_close(rbn.model[1].running_var, net[1].running_var, rtol=0, atol=0)


def test_rbn_spec_and_bad_momentum():
    assert parse_method("rbn:0.1") == ("rbn", {"momentum": 0.1})
    assert create_adapter(tiny_net(), "rbn").momentum == 0.05  # RoTTA's ALPHA
    with pytest.raises(ValueError, match="momentum"):
        RobustBN(tiny_net(), momentum=0.0)
