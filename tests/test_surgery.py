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


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
@pytest.mark.parametrize("position, norm", [("P1", "bn1"), ("P2", "bn1"), ("P3", "bn2")])
def test_basic_block_positions_follow_the_authors(arch, position, norm):
    """models/resnet_XBNBlock_P1.py and _P2.py put my.Norm(planes) at bn1 of BasicBlock_XBNBlock_P1/P2,
    _P3.py at bn2; their keys are torchvision's, without the running statistics of the GroupNorms."""
    import torchvision

    model = timm.create_model(arch)
    converted, _ = timm_xbn.convert(model, position=position, stem=True)
    expected = {"bn1"} | {f"{b}.{norm}" for b in resnet_block_names(model)}
    norms = {n: m for n, m in converted.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))}
    assert {n for n, m in norms.items() if isinstance(m, GroupNorm2d)} == expected
    assert all(type(m) is nn.BatchNorm2d for n, m in norms.items() if n not in expected)
    assert all(norms[n].num_groups == min(64, norms[n].num_channels) for n in expected)
    with torch.device("meta"):
        authors = {k for k in getattr(torchvision.models, arch)().state_dict()
                   if k.rsplit(".", 1)[0] not in expected or k.endswith((".weight", ".bias"))}
    assert set(converted.state_dict()) == authors


# models/mobilenetV2_XBNBlock.py: (t, c, n, s) of the inverted residual settings, input channels 32 after the stem.
AUTHORS_MOBILENETV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def authors_mobilenetv2_norms() -> list:
    """Per block of the authors' MobileNetV2-XBNBlock, its norms in forward order: ("BFN" | "BN", channels).
    t = 1: dw conv, my.Norm(hidden), pw-linear, BN(oup); t > 1: pw, BN(hidden), dw, my.Norm(hidden), pw-linear, BN(oup)."""
    blocks, inp = [], 32
    for t, c, n, _ in AUTHORS_MOBILENETV2:
        for _ in range(n):
            hidden = inp * t
            blocks.append(([] if t == 1 else [("BN", hidden)]) + [("BFN", hidden), ("BN", c)])
            inp = c
    return blocks


def test_mobilenetv2_p2_replaces_the_depthwise_bn_of_every_block_as_the_authors_do():
    model = timm.create_model("mobilenetv2_100")
    converted, replaced = timm_xbn.convert(model, position="P2", groups=16)  # their run script: num_groups=16
    timm_blocks = [block for stage in converted.blocks for block in stage]
    found = [[("BFN" if isinstance(m, GroupNorm2d) else "BN", m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features)
              for m in block.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))] for block in timm_blocks]
    assert found == authors_mobilenetv2_norms()
    for block in timm_blocks:  # the BFN is the norm right after the depthwise convolution
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        dw = next(c for c in convs if c.groups == c.in_channels > 1)
        names = [n for n, m in block.named_modules()]
        bfn = next(n for n, m in block.named_modules() if isinstance(m, GroupNorm2d))
        dw_name = next(n for n, m in block.named_modules() if m is dw)
        after = [n for n in names[names.index(dw_name) + 1:] if isinstance(block.get_submodule(n), (nn.BatchNorm2d, nn.GroupNorm))]
        assert after[0] == bfn and block.get_submodule(bfn).num_groups == min(16, block.get_submodule(bfn).num_channels)
    assert type(converted.bn1) is type(model.bn1) and type(converted.bn2) is type(model.bn2)  # conv_bn / conv_1x1_bn stay BN
    assert replaced[0].name == "blocks.0.0.bn1" and len(replaced) == 17


def test_a_block_without_a_bn_is_an_error():
    model = timm.create_model("resnet18")
    model.layer2[1].bn1, model.layer2[1].bn2 = nn.Identity(), nn.Identity()
    with pytest.raises(ValueError, match=r"layer2.1 \(BasicBlock\) has no BatchNorm on its main path"):
        timm_xbn.convert(model)


@pytest.mark.parametrize("position", ["P0", "P", "X2", -1, "P4"])
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
        # 4 blocks; 5 with the registered model's batch-free stem; 9: the study's resnet26 (8 blocks and its stem)
        assert len(norms) in (4, 5, 9) and all(m.weight is None and m.bias is None for m in norms)
    gn = [m for m in timm.create_model("xbn_resnet26", **narrow).modules() if isinstance(m, GroupNorm2d)]
    assert gn and all(m.weight is not None for m in gn)  # the authors' GN is affine


def _first_map_of_one_pixel(img_size: int) -> str:
    """timm's ResNet at ``img_size`` px, by hand: the stem conv and max-pool halve the size, layers 2-4
    halve it again in their first block's 3x3 conv (bn1 of that block still sees the larger map)."""
    size = img_size // 4
    for layer in (2, 3, 4):
        size //= 2
        if size == 1:
            return f"layer{layer}.0"
    return ""


@pytest.mark.parametrize("position, bfn, kwargs, refused", [
    ("P3", "in", {}, "layer4.0.bn3"),
    ("P2", "in", {}, "layer4.0.bn2"),
    ("P1", "in", {}, "layer4.1.bn1"),  # layer4.0.bn1 is before the stride: 2x2
    ("P3", "gn", {"groups": 64}, None),  # 2048 channels: 32 per group
    ("P3", "gn", {"channels_per_group": 1}, "layer4.0.bn3"),
    ("P2", "gn", {"groups": 512}, "layer4.0.bn2"),  # 512 channels, 512 groups: one channel per group
    ("P2", "ln", {}, None),
])
def test_a_bfn_normalizing_one_value_per_sample_is_refused(position, bfn, kwargs, refused):
    torch.manual_seed(0)
    model = timm.create_model("resnet26").train()
    before = copy.deepcopy(model.state_dict())
    assert _first_map_of_one_pixel(32) == "layer4.0" and _first_map_of_one_pixel(64) == ""
    if refused is None:
        timm_xbn.convert(model, position=position, bfn=bfn, input_size=(3, 32, 32), **kwargs)
    else:
        with pytest.raises(ValueError, match=rf"^{refused} gets 1x1 maps at input size 32x32, .*another position, "
                                             r"a larger input, or .*force=True \(--force\)"):
            timm_xbn.convert(model, position=position, bfn=bfn, input_size=(3, 32, 32), **kwargs)
        forced, _ = timm_xbn.convert(model, position=position, bfn=bfn, input_size=(3, 32, 32), force=True, **kwargs)
        assert is_batch_free(forced.get_submodule(refused))
        timm_xbn.convert(model, position=position, bfn=bfn, input_size=(3, 64, 64), **kwargs)  # 2x2 maps: 4 values
    # the dry forward pass changed nothing: train mode kept, BN statistics untouched
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_xbn_convert_force_converts_what_the_check_refuses(tmp_path):
    from typer.testing import CliRunner

    from timm_xbn.cli import convert_app

    args = ["resnet26", "--position", "P3", "--bfn", "in", "--img-size", "32", "--model-kwargs", '{"num_classes": 3}']
    refused = CliRunner().invoke(convert_app, args + ["--output", str(tmp_path / "a")])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "layer4.0.bn3 gets 1x1 maps" in refused.output
    forced = CliRunner().invoke(convert_app, args + ["--force", "--output", str(tmp_path / "b")])
    assert forced.exit_code == 0, forced.output
    assert isinstance(timm_xbn.models.load_exported(tmp_path / "b").layer4[0].bn3, InstanceNorm2d)
