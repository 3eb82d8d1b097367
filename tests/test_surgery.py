"""Surgery: which norms are replaced, what is kept bit-exact, and the errors."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_xbn
from timm_xbn.layers import GroupNorm2d, InstanceNorm2d, is_batch_free
from timm_xbn.surgery import find_residual_blocks, find_stem_norms


def resnet_block_names(model) -> list:
    """Blocks of a timm ResNet, listed independently of the surgery code: layer1.0, layer1.1, ..."""
    return [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(model, f"layer{i}")))]


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    model = timm.create_model("resnet50").eval()
    for m in model.modules():  # non-trivial statistics and affine so copies are checkable
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("position, attr", [("P1", "bn1"), ("P2", "bn2"), ("P3", "bn3"), (2, "bn2")])
def test_positions_replace_the_right_bn(resnet50, position, attr):
    converted, replaced = timm_xbn.convert(resnet50, position=position)
    assert [r.name for r in replaced] == [f"{b}.{attr}" for b in resnet_block_names(resnet50)]
    for block in resnet_block_names(resnet50):
        for other in {"bn1", "bn2", "bn3"} - {attr}:
            assert isinstance(converted.get_submodule(f"{block}.{other}"), nn.BatchNorm2d)
        assert isinstance(converted.get_submodule(f"{block}.{attr}"), GroupNorm2d)


@pytest.mark.parametrize("every, expected", [
    (2, ["layer1.1", "layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4", "layer4.0", "layer4.2"]),
    (4, ["layer2.0", "layer3.0", "layer3.4", "layer4.2"]),
    (8, ["layer3.0", "layer4.2"]),
])
def test_d_variants_count_blocks_over_the_whole_network(resnet50, every, expected):
    # ResNet-50 blocks 1..16: layer1 = 1-3, layer2 = 4-7, layer3 = 8-13, layer4 = 14-16.
    _, replaced = timm_xbn.convert(resnet50, every=every)
    assert [r.block for r in replaced] == expected
    assert [r.block_index for r in replaced] == list(range(every, 17, every))


def test_untouched_weights_are_bit_exact_and_affine_is_carried_over(resnet50):
    before = copy.deepcopy(resnet50.state_dict())
    converted, replaced = timm_xbn.convert(resnet50, position="P2", stem=True)
    replaced_names = {r.name for r in replaced}
    after = converted.state_dict()
    for key, value in before.items():
        owner = key.rsplit(".", 1)[0]
        if owner in replaced_names:
            if key.endswith(("weight", "bias")):
                assert torch.equal(after[key], value), key
            else:
                assert key not in after  # running stats are gone with the BN
        else:
            assert torch.equal(after[key], value), key
    # the caller's model is untouched
    assert all(torch.equal(resnet50.state_dict()[k], v) for k, v in before.items())
    assert not any(is_batch_free(m) for m in resnet50.modules())


def test_downsample_bns_stay_bn(resnet50):
    converted, _ = timm_xbn.convert(resnet50, position="P3", stem=True)
    downsample_bns = [n for n, m in converted.named_modules() if "downsample" in n and isinstance(m, nn.BatchNorm2d)]
    assert len(downsample_bns) == 4


def test_stem_option(resnet50):
    _, replaced = timm_xbn.convert(resnet50, stem=True)
    assert replaced[0].name == "bn1" and replaced[0].block is None
    deep_stem = timm.create_model("resnet26d")
    assert find_stem_norms(deep_stem) == ["conv1.1", "conv1.4", "bn1"]


def test_inplace_converts_the_given_model():
    model = timm.create_model("resnet18")
    result, _ = timm_xbn.convert(model, position="P1", inplace=True)
    assert result is model and isinstance(model.layer1[0].bn1, GroupNorm2d)
    assert model.xbn_cfg["position"] == 1


def test_groups_clamped_in_early_layers(resnet50):
    converted, _ = timm_xbn.convert(resnet50, groups=64)
    assert converted.layer1[0].bn2.num_groups == 64  # 64 channels -> per-channel
    converted, _ = timm_xbn.convert(resnet50, groups=32)
    assert converted.layer4[0].bn2.num_groups == 32


def test_instance_norm_variant(resnet50):
    converted, _ = timm_xbn.convert(resnet50, bfn="in")
    assert isinstance(converted.layer3[2].bn2, InstanceNorm2d)
    assert converted(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_fused_bn_activation_is_kept():
    model = timm.create_model("efficientnet_b0").eval()
    converted, replaced = timm_xbn.convert(model, position="P2", groups=8)
    old, new = model.blocks[1][0].bn2, converted.blocks[1][0].bn2
    assert type(new.act) is type(old.act) and not isinstance(old.act, nn.Identity)
    x = torch.randn(2, old.num_features, 5, 5)
    expected = F.silu(F.group_norm(x, 8, old.weight, old.bias, old.eps))
    torch.testing.assert_close(new(x), expected)


@pytest.mark.parametrize("name, groups", [
    ("resnet18", 64), ("seresnext26d_32x4d", 64), ("ecaresnet26t", 64), ("wide_resnet50_2", 64), ("resnetrs50", 64),
    ("regnety_016", 8), ("res2net50_26w_4s", 13), ("resnest14d", 64), ("efficientnet_b0", 8),
    ("mobilenetv3_large_100", 8), ("gernet_s", 8), ("cspresnet50", 64),
])
def test_families_convert_and_run(name, groups):
    model = timm.create_model(name, num_classes=5).eval()
    blocks = find_residual_blocks(model)
    converted, replaced = timm_xbn.convert(model, position="P1", groups=groups)
    assert {r.block for r in replaced} == {b.name for b in blocks}
    assert len(replaced) == sum(len(b.norm_slots[0]) for b in blocks)
    assert converted(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_p3_on_basic_block_is_an_error():
    with pytest.raises(ValueError, match="P3 needs a block with 3 BNs.*BasicBlock"):
        timm_xbn.convert(timm.create_model("resnet18"), position="P3")


@pytest.mark.parametrize("position", ["P0", "P", "X2", -1])
def test_bad_position(position):
    with pytest.raises(ValueError, match="position must be"):
        timm_xbn.convert(timm.create_model("resnet18"), position=position)


def test_model_without_batchnorm():
    with pytest.raises(ValueError, match="no BatchNorm.*LayerNorm"):
        timm_xbn.convert(timm.create_model("vit_tiny_patch16_224"))


def test_already_converted():
    converted, _ = timm_xbn.convert(timm.create_model("resnet18"))
    with pytest.raises(ValueError, match="already converted"):
        timm_xbn.convert(converted)


def test_unknown_block_type_lists_families():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    with pytest.raises(ValueError, match="supported timm families:(.|\n)*resnet(.|\n)*efficientnet"):
        timm_xbn.convert(model)


def test_bad_groups_fail_before_any_change():
    model = timm.create_model("regnety_016")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="cannot replace s2.*120 channels"):
        timm_xbn.convert(model, inplace=True)
    assert not any(is_batch_free(m) for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


class _HandNorm(nn.Module):
    """InstanceNorm (``groups=None``) or GroupNorm written out: per-sample (per-group) mean and biased
    variance, then the given per-channel weight and bias."""

    def __init__(self, groups, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        super().__init__()
        self.groups, self.weight, self.bias, self.eps = groups, weight.detach().clone(), bias.detach().clone(), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, c if self.groups is None else self.groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
        normalized = ((grouped - mean) / torch.sqrt(var + self.eps)).reshape(n, c, h, w)
        return normalized * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def _trained_looking_resnet26() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet26", layers=[1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, num_classes=3)
    model.maxpool = nn.Identity()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("bfn, groups", [("in", None), ("gn", 4)])
def test_surgery_keeps_the_bn_weight_and_bias_and_computes_a_hand_written_norm(bfn, groups):
    model = _trained_looking_resnet26()
    converted, replaced = timm_xbn.convert(model, position="P3", bfn=bfn, groups=4, stem=True)
    reference = copy.deepcopy(model)
    for r in replaced:
        bn, new = model.get_submodule(r.name), converted.get_submodule(r.name)
        assert new.affine and torch.equal(new.weight, bn.weight) and torch.equal(new.bias, bn.bias), r.name
        parent, _, attr = r.name.rpartition(".")
        setattr(reference.get_submodule(parent) if parent else reference, attr, _HandNorm(groups, bn.weight, bn.bias, bn.eps))
    assert converted.xbn_cfg["affine"] is True and len(replaced) == 5
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), reference(x), rtol=1e-4, atol=1e-5)


def test_from_scratch_models_keep_the_papers_instance_norm_without_affine():
    from timm_xbn.study.resnet import ResNetConfig, build_variant
    from timm_xbn.training import build_args
    from timm_xbn.training.model import create_train_model

    narrow = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    argv = ["--convert-from", "resnet26", "--bfn", "in", "--model-kwargs", "layers=[1,1,1,1]", "channels=[8,16,32,64]",
            "stem_width=8"]
    for model in (timm.create_model("xbn_resnet26", bfn="in", **narrow),
                  timm.create_model("xbn_converted", base_model="resnet26", bfn="in", **narrow),
                  create_train_model(build_args(argv=argv), in_chans=3),
                  build_variant("XBN-IN", ResNetConfig(arch="resnet26", channels_last=False), num_classes=10, seed=0),
                  timm_xbn.convert(_trained_looking_resnet26(), bfn="in", affine=False).model):
        norms = [m for m in model.modules() if isinstance(m, InstanceNorm2d)]
        assert len(norms) in (4, 8) and all(m.weight is None and m.bias is None for m in norms)  # 8: study resnet26
    gn = [m for m in timm.create_model("xbn_resnet26", **narrow).modules() if isinstance(m, GroupNorm2d)]
    assert gn and all(m.weight is not None for m in gn)  # the authors' GN is affine
