"""Registered xbn_* models: names, equivalence with surgery, kwargs, pretrained loading, authors' layout."""
import json
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from typer.testing import CliRunner

import timm_xbn
from timm_xbn.cli import convert_app
from timm_xbn.layers import GroupNorm2d, InstanceNorm2d, paper_affine
from timm_xbn.models import HUB_ORG, XBN_VARIANTS, create_model, export_model, import_authors_checkpoint, load_exported

REQUIRED = ["xbn_resnet50", "xbn_resnet101", "xbn_resnet152", "xbn_resnext50_32x4d", "xbn_resnext101_32x8d",
            "xbn_resnet50_p1", "xbn_resnet50_p3", "xbn_resnet50_d2", "xbn_resnet50_d4", "xbn_resnet50_d8",
            "xbn_resnet50_in"]
PAPER_ARCHS = ["resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d"]  # Table 2
NARROW = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=3)


def shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_required_names_are_registered():
    assert set(REQUIRED) <= set(timm.list_models("xbn_*"))
    assert {f"{name}_bnstem" for name in REQUIRED} <= set(timm.list_models("xbn_*"))  # this project's BN-stem variants
    assert not timm.list_models("xbn_*_bfnstem")  # the old names are aliases, not listed


def authors_keys(arch: str, batch_free: set) -> set:
    """State-dict keys of the authors' network: torchvision's (their code is torchvision's ResNet),
    without the running statistics of the norms that are ``my.Norm`` (GroupNorm) there."""
    with torch.device("meta"):
        keys = getattr(torchvision.models, arch)().state_dict().keys()
    return {k for k in keys if k.rsplit(".", 1)[0] not in batch_free or k.rsplit(".", 1)[1] in ("weight", "bias")}


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_paper_names_are_the_authors_layout(arch):
    """models/resnet_XBNBlock_P2.py, resnext_XBNBlock_P2.py: self.bn1 = my.Norm(64) in the stem, bn2 = my.Norm(width)
    in every bottleneck, run with --norm=GN --norm-cfg=num_groups=64 (groups clamped to the channels by their _GroupNorm);
    the downsample BNs and bn1 / bn3 stay nn.BatchNorm2d."""
    with torch.device("meta"):
        model = timm.create_model(f"xbn_{arch}")
    blocks = resnet_blocks(model)
    expected_gn = {"bn1"} | {f"{b}.bn2" for b in blocks}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))}
    assert {n for n, m in norms.items() if isinstance(m, GroupNorm2d)} == expected_gn
    assert all(type(m) is nn.BatchNorm2d for n, m in norms.items() if n not in expected_gn)
    assert all(norms[n].num_groups == min(64, norms[n].num_channels) and norms[n].affine for n in expected_gn)
    assert set(model.state_dict()) == authors_keys(arch, expected_gn)
    with torch.device("meta"):
        bn_stem = timm.create_model(f"xbn_{arch}_bnstem")
    assert type(bn_stem.bn1) is nn.BatchNorm2d and set(bn_stem.state_dict()) == authors_keys(arch, expected_gn - {"bn1"})


def resnet_blocks(model) -> list:
    return [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(model, f"layer{i}")))]


def test_former_bfnstem_names_are_aliases_of_the_authors_layout():
    with warnings.catch_warnings(record=True) as caught, torch.device("meta"):
        warnings.simplefilter("always")
        old = timm.create_model("xbn_resnext50_32x4d_bfnstem")
        tagged = timm.create_model("xbn_resnet50_bfnstem.authors_in1k")
    assert any("xbn_resnext50_32x4d_bfnstem" in str(w.message) for w in caught)
    with torch.device("meta"):
        assert shapes(old) == shapes(timm.create_model("xbn_resnext50_32x4d"))
    assert tagged.pretrained_cfg["architecture"] == "xbn_resnet50" and tagged.pretrained_cfg["tag"] == "authors_in1k"


@pytest.mark.parametrize("name", sorted(XBN_VARIANTS))
def test_registered_equals_surgery_on_the_base(name):
    settings = XBN_VARIANTS[name]
    with torch.device("meta"):
        registered = timm.create_model(name)
        base = timm.create_model(settings["base"])
    surgery = {k: v for k, v in settings.items() if k != "base"}
    converted, _ = timm_xbn.convert(base, **dict(surgery, affine=paper_affine(settings["bfn"])))
    assert shapes(registered) == shapes(converted)
    assert [type(m).__name__ for m in registered.modules()][1:] == [type(m).__name__ for m in converted.modules()][1:]


def test_default_xbn_resnet50_is_convert_of_resnet50_with_defaults():
    with torch.device("meta"):
        assert shapes(timm.create_model("xbn_resnet50")) == shapes(timm_xbn.convert(timm.create_model("resnet50"), stem=True).model)
        assert shapes(timm.create_model("xbn_resnet50_bnstem")) == shapes(timm_xbn.convert(timm.create_model("resnet50")).model)


@pytest.mark.parametrize("name, module, cls", [
    ("xbn_resnet50_p1", "layer2.1.bn1", GroupNorm2d), ("xbn_resnet50_p3", "layer2.1.bn3", GroupNorm2d),
    ("xbn_resnet50_in", "layer3.0.bn2", InstanceNorm2d), ("xbn_resnet50_d4", "layer3.4.bn2", GroupNorm2d),
    ("xbn_resnet50_d4", "layer3.3.bn2", nn.BatchNorm2d), ("xbn_resnet50", "bn1", GroupNorm2d),
    ("xbn_resnet50_in", "bn1", InstanceNorm2d), ("xbn_resnet50_p1_bnstem", "bn1", nn.BatchNorm2d),
    ("xbn_resnet50_bnstem", "bn1", nn.BatchNorm2d), ("xbn_resnet26", "bn1", GroupNorm2d),
])
def test_variant_semantics(name, module, cls):
    with torch.device("meta"):
        assert type(timm.create_model(name).get_submodule(module)) is cls


def test_timm_kwargs_pass_through():
    model = timm.create_model("xbn_resnet26", num_classes=7, drop_path_rate=0.1, in_chans=1)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    features = timm.create_model("xbn_resnet26", features_only=True, out_indices=(2, 4))
    outs = features(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [512, 2048]
    assert timm.create_model("xbn_resnet26", position="P1").xbn_cfg["position"] == 1


def test_pretrained_tags_point_at_project_hub():
    for tag in timm.list_pretrained("xbn_*"):
        cfg = timm.models.get_pretrained_cfg(tag.split(".")[0] + "." + tag.split(".")[1])
        assert cfg.hf_hub_id == f"{HUB_ORG}/{tag}"


def test_pretrained_loading_through_timm_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("xbn_resnet26", num_classes=4)
    for m in source.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = timm.create_model("xbn_resnet26", pretrained=True, num_classes=4,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=4))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def authors_layout_state_dict(arch: str = "resnet50") -> dict:
    """An authors'-layout checkpoint built independently with torchvision: GN (weight/bias only)
    in the stem and in bn2 of every bottleneck, torchvision keys, DataParallel 'module.' prefix."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)()
    state = {}
    for key, value in tv.state_dict().items():
        owner, leaf = key.rsplit(".", 1)
        is_gn = owner == "bn1" or owner.endswith(".bn2")
        if is_gn and leaf not in ("weight", "bias"):
            continue
        state[f"module.{key}"] = torch.randn_like(value) if value.is_floating_point() else value
    return {"state_dict": state, "epoch": 100}


def test_import_authors_checkpoint(tmp_path):
    checkpoint = authors_layout_state_dict()
    path = tmp_path / "authors.pth"
    torch.save(checkpoint, path)
    model = import_authors_checkpoint(path, arch="resnet50")
    assert model.pretrained_cfg["architecture"] == "xbn_resnet50" and model.pretrained_cfg["tag"] == "authors_in1k"
    assert isinstance(model.bn1, GroupNorm2d) and isinstance(model.layer4[2].bn2, GroupNorm2d)
    state = model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(state[key.removeprefix("module.")], value), key
    result = CliRunner().invoke(convert_app, ["resnet50", "--authors", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "xbn_resnet50" and config["pretrained_cfg"]["tag"] == "authors_in1k"
    assert config["model_args"]["stem"] is True  # the layout is in the config, whatever a name's default becomes


def test_a_bn_stem_checkpoint_names_the_bnstem_model(tmp_path):
    """A checkpoint of xbn_<base> from before the authors' stem became the default has a BN stem."""
    torch.manual_seed(0)
    old = timm.create_model("xbn_resnet26_bnstem", **NARROW)
    save_file(old.state_dict(), str(tmp_path / "old.safetensors"))
    with pytest.raises(ValueError, match=r"BatchNorm statistics for bn1, .*loads into xbn_<base>_bnstem"):
        create_model("xbn_resnet26", checkpoint=tmp_path / "old.safetensors", **NARROW)
    with pytest.raises(ValueError, match=r"BatchNorm stem .*load it as xbn_resnet26_bnstem or with stem=False"):
        timm.create_model("xbn_resnet26", pretrained=True, **NARROW,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "old.safetensors")))
    loaded = create_model("xbn_resnet26_bnstem", checkpoint=tmp_path / "old.safetensors", **NARROW)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in old.state_dict().items())


def test_an_export_of_a_former_bfnstem_name_loads(tmp_path):
    """Configs written before the rename name xbn_<arch>_bfnstem and no surgery settings."""
    torch.manual_seed(0)
    model = timm.create_model("xbn_resnet50", **NARROW)
    export_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architecture"] = "xbn_resnet50_bfnstem"
    config["model_args"] = {k: v for k, v in config["model_args"].items() if k not in timm_xbn.models.SURGERY_KWARGS}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_exported(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_authors_checkpoint_mismatch_names_keys(tmp_path):
    checkpoint = authors_layout_state_dict()
    del checkpoint["state_dict"]["module.layer1.0.bn2.weight"]
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys: layer1.0.bn2.weight"):
        import_authors_checkpoint(tmp_path / "bad.pth", arch="resnet50")


def test_xbn_convert_cli_round_trip(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model("regnety_016", num_classes=3).eval()
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    out = tmp_path / "out"
    result = CliRunner().invoke(convert_app, [
        "regnety_016", "--checkpoint", str(tmp_path / "base.safetensors"), "--groups", "8", "--every", "2",
        "--model-kwargs", '{"num_classes": 3}', "--output", str(out)])
    assert result.exit_code == 0, result.output
    expected, _ = timm_xbn.convert(base, every=2, groups=8)
    reloaded = load_exported(out).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(reloaded(x), expected(x), rtol=0, atol=0)


@pytest.mark.parametrize("args, message", [
    (["resnet5"], "unknown model 'resnet5'; did you mean: resnet50"),
    (["resnet18", "--position", "P4"], "Invalid value for '--position'"),  # typer's check of the choice
    (["convnext_atto"], "no BatchNorm layers"),
    (["resnet18", "--checkpoint", "missing.safetensors"], "checkpoint not found"),
    (["resnet26", "--position", "P3", "--bfn", "in", "--img-size", "32"], "layer4.0.bn3 gets 1x1 maps at input size 32x32"),
])
def test_xbn_convert_cli_errors(tmp_path, args, message):
    result = CliRunner().invoke(convert_app, args + ["--output", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "")


def test_local_dir_model_loads_its_own_weights(tmp_path):
    from timm_xbn.models import create_model, export_model

    torch.manual_seed(0)
    converted, _ = timm_xbn.convert(timm.create_model("resnet18", num_classes=3), position="P1")
    export_model(converted, tmp_path / "folder")
    loaded = create_model(f"local-dir:{tmp_path / 'folder'}")
    for key, value in converted.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="no config.json"):
        create_model(f"local-dir:{tmp_path / 'missing'}")


def _norm_weights(model: nn.Module):
    """Affine weights of every BN and batch-free norm, by module name."""
    from timm_xbn.layers import is_batch_free

    return {n: m.weight.detach() for n, m in model.named_modules()
            if (isinstance(m, nn.BatchNorm2d) or is_batch_free(m)) and getattr(m, "weight", None) is not None}


@pytest.mark.parametrize("position", [2, 3])
def test_converted_from_scratch_initialises_norms_like_the_xbn_models(position):
    """timm zero-initialises the last BN of each ResNet block (bn3 weight 0); the xbn_* models and the
    authors' code start it at 1. xbn_converted and xbn-train --convert-from must start like xbn_resnet26
    (for P3 the BFN replacing bn3 inherits that weight)."""
    from timm_xbn.training import build_args
    from timm_xbn.training.model import create_train_model

    narrow = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    registered = _norm_weights(timm.create_model("xbn_resnet26", position=position, **narrow))
    assert all(torch.equal(w, torch.ones_like(w)) for w in registered.values())
    converted = _norm_weights(timm.create_model("xbn_converted", base_model="resnet26", position=position, **narrow))
    argv = ["--convert-from", "resnet26", "--position", f"P{position}", "--model-kwargs", "layers=[1,1,1,1]",
            "channels=[8,16,32,64]", "stem_width=8"]
    trained = _norm_weights(create_train_model(build_args(argv=argv), in_chans=3))
    for weights in (converted, trained):
        assert weights.keys() == registered.keys()
        for name, weight in registered.items():
            assert torch.equal(weights[name], weight), name
    assert not torch.any(timm.create_model("resnet26", **narrow).layer1[0].bn3.weight)  # what timm alone does
    # an explicit choice is kept, and bases without the option (EfficientNet) still build
    zeroed = timm.create_model("xbn_converted", base_model="resnet26", position=position, zero_init_last=True, **narrow)
    assert not torch.any(zeroed.layer1[0].bn3.weight)
    assert type(timm.create_model("xbn_converted", base_model="efficientnet_b0", groups=8)).__name__ == "EfficientNet"


def test_convert_num_classes_gives_a_fresh_head_that_train_py_initial_checkpoint_takes(tmp_path):
    """finetune_converted.yaml on another dataset: a 1000-class checkpoint converted with --num-classes K
    loads as --initial-checkpoint into the recipe's xbn_converted model with --num-classes K."""
    from timm_xbn.models import load_weights
    from timm_xbn.training import build_args
    from timm_xbn.training.model import create_train_model

    narrow = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    torch.manual_seed(0)
    bn = timm.create_model("resnet26", **narrow)  # 1000 classes, like timm's ImageNet weights
    save_file(bn.state_dict(), str(tmp_path / "bn.safetensors"))
    kwargs = '{"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}'
    result = CliRunner().invoke(convert_app, ["resnet26", "--checkpoint", str(tmp_path / "bn.safetensors"), "--model-kwargs", kwargs,
                                              "--num-classes", "5", "--output", str(tmp_path / "conv")])
    assert result.exit_code == 0, result.output
    exported = load_exported(tmp_path / "conv")
    assert exported.get_classifier().out_features == 5 and exported.num_classes == 5
    reference = timm_xbn.convert(bn).model.state_dict()
    for key, value in exported.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, reference[key]), key  # everything but the head kept bit-exact
    argv = ["--model", "xbn_converted", "--model-kwargs", "base_model=resnet26", "layers=[1,1,1,1]", "channels=[8,16,32,64]",
            "stem_width=8", "--num-classes", "5", "--initial-checkpoint", str(tmp_path / "conv" / "model.safetensors")]
    model = create_train_model(build_args(argv=argv), in_chans=3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in exported.state_dict().items())
    with pytest.raises(ValueError, match=r"fc.weight: checkpoint \(1000, 256\) vs model \(5, 256\)"):  # what the recipe hit before
        load_weights(timm.create_model("xbn_converted", base_model="resnet26", num_classes=5, **narrow), tmp_path / "bn.safetensors")


def test_load_weights_names_what_is_wrong_with_a_text_file(tmp_path):
    from timm_xbn.models.checkpoints import load_weights

    text = tmp_path / "notes.pth"
    text.write_text("hello\n")
    with pytest.raises(ValueError) as err:
        load_weights(timm.create_model("resnet18", num_classes=3), text)
    message = str(err.value)
    assert str(text) in message and "not a .safetensors file or a weights-only torch checkpoint" in message
