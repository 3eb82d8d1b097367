"""A batch-free norm that would normalize one value per sample (1x1 maps with InstanceNorm, or GroupNorm with
one channel per group) is refused by name at every entry point: xbn-train --convert-from (unless --force),
xbn-eval esm and calibration (before torch's "Expected more than 1 ... when training"); and the authors'
imported weights keep the registry's tag."""
import json

import pytest
import timm
import torch
import torch.nn as nn
from typer.testing import CliRunner

import timm_xbn
from timm_xbn.cli import convert_app, eval_app, train_app
from timm_xbn.layers import GroupNorm2d, InstanceNorm2d, find_one_value_norms, input_map_sizes, values_per_group
from timm_xbn.training import build_args
from timm_xbn.training.model import create_train_model
from timm_xbn.utils.errors import UserError

CLASSES = 3
P3_IN = dict(base_model="resnet26", position=3, bfn="in", num_classes=CLASSES)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def resnet_map_sizes(img_size: int) -> dict:
    """timm ResNet's map sizes by the convolution arithmetic (not by running it): the 7x7/2 stem conv and
    the 3x3/2 max-pool, then the stride-2 3x3 conv of layer2-4's first block (bn2, bn3 of that block)."""
    size = _conv_out(_conv_out(img_size, 7, 2, 3), 3, 2, 1)
    sizes = {"layer1.0.bn3": size}
    for layer in (2, 3, 4):
        sizes[f"layer{layer}.0.bn1"] = size  # before the stride
        size = _conv_out(size, 3, 2, 1)
        sizes[f"layer{layer}.0.bn3"] = size
    return sizes


def _forced(position: int = 3, bfn: str = "in", **kwargs) -> tuple:
    torch.manual_seed(0)
    base = timm.create_model("resnet26", num_classes=CLASSES).eval()
    converted = timm_xbn.convert(base, position=position, bfn=bfn, input_size=(3, 32, 32), force=True, **kwargs).model
    return base, converted


def test_values_per_group_closed_form():
    assert values_per_group(nn.GroupNorm(8, 32), (3, 3)) == 4 * 9
    assert values_per_group(GroupNorm2d(32, 32), (1, 1)) == 1
    assert values_per_group(InstanceNorm2d(16), (1, 1)) == 1 and values_per_group(InstanceNorm2d(16), (2, 1)) == 2
    assert values_per_group(nn.InstanceNorm2d(16, track_running_stats=True), (1, 1)) is None  # running stats
    assert values_per_group(nn.BatchNorm2d(16), (1, 1)) is None


@pytest.mark.parametrize("img_size", [32, 64])
def test_map_sizes_match_the_convolution_arithmetic(img_size):
    model = timm.create_model("resnet26", num_classes=CLASSES).train()
    expected = resnet_map_sizes(img_size)
    measured = input_map_sizes(model, list(expected), (3, img_size, img_size))
    assert measured == {name: (size, size) for name, size in expected.items()}
    assert model.training and all(m.training for m in model.modules())  # the dry pass restored the flags


def test_find_one_value_norms_of_a_converted_model():
    assert resnet_map_sizes(32)["layer4.0.bn3"] == 1 and resnet_map_sizes(32)["layer4.0.bn1"] == 2
    _, converted = _forced()
    found = find_one_value_norms(converted, (3, 32, 32))
    # P3 = bn3: only layer4's blocks (all past the stride) see 1x1 maps at 32 px
    assert [f.name for f in found] == ["layer4.0.bn3", "layer4.1.bn3"] and {f.map_size for f in found} == {(1, 1)}
    assert find_one_value_norms(converted, (3, 64, 64)) == []


# ---- xbn-train --convert-from ------------------------------------------------------------------------------

def _train_argv(*extra: str) -> list:
    return ["--convert-from", "resnet26", "--position", "P3", "--bfn", "in", "--num-classes", str(CLASSES), *extra]


@pytest.mark.parametrize("size_flags", [["--img-size", "32"], ["--input-size", "3", "32", "32"]])
def test_xbn_train_refuses_at_the_training_input_size(size_flags):
    with pytest.raises(UserError, match=r"^layer4\.0\.bn3 gets 1x1 maps at input size 32x32, .*InstanceNorm.*"
                                        r"another position, a larger input, or .*--force"):
        create_train_model(build_args(argv=_train_argv(*size_flags)), in_chans=3)
    forced = create_train_model(build_args(argv=_train_argv(*size_flags, "--force")), in_chans=3)
    assert isinstance(forced.layer4[0].bn3, InstanceNorm2d)
    larger = create_train_model(build_args(argv=_train_argv("--img-size", "64")), in_chans=3)  # 2x2 maps
    assert isinstance(larger.layer4[0].bn3, InstanceNorm2d)


def test_xbn_train_checks_gn_with_one_channel_per_group():
    argv = ["--convert-from", "resnet26", "--position", "P2", "--groups", "512", "--img-size", "32",
            "--num-classes", str(CLASSES)]  # layer4's bn2: 512 channels in 512 groups, past the stride
    with pytest.raises(UserError, match=r"^layer4\.0\.bn2 gets 1x1 maps .*one channel per group.*more channels per group"):
        create_train_model(build_args(argv=argv), in_chans=3)
    assert create_train_model(build_args(argv=[*argv, "--groups", "256"]), in_chans=3).layer4[0].bn2.num_groups == 256


def test_force_without_a_conversion_is_an_error():
    with pytest.raises(UserError, match="--force only applies to a conversion"):
        create_train_model(build_args(argv=["--model", "resnet18", "--force"]), in_chans=3)


def test_xbn_train_cli_refusal_is_one_line_and_exit_2(image_folder, tmp_path, monkeypatch, capsys):
    from timm_xbn.training.main import main

    monkeypatch.delenv("XBN_DEBUG", raising=False)
    root = image_folder(classes=CLASSES, per_class=2, size=32)
    argv = _train_argv("--img-size", "32", "--device", "cpu", "--workers", "0", "--output", str(tmp_path / "out"))
    result = CliRunner().invoke(train_app, ["--data-dir", str(root), *argv])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("error: layer4.0.bn3 gets 1x1 maps at input size 32x32")
    with pytest.raises(SystemExit) as exited:  # python -m timm_xbn.training
        main(["--data-dir", str(root), *argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "layer4.0.bn3 gets 1x1 maps" in err


# ---- xbn-eval esm and calibration ---------------------------------------------------------------------------

def test_esm_refuses_by_name_before_any_batch(image_folder, tmp_path):
    root = image_folder(classes=CLASSES, per_class=2, size=40)
    args = ["esm", "--model", "xbn_converted", "--model-kwargs", json.dumps(P3_IN), "--data-dir", str(root),
            "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    result = CliRunner().invoke(eval_app, [*args, "--img-size", "32", "--output", str(tmp_path / "a")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "xbn_converted: layer4.0.bn3 gets 1x1 maps at input size 32x32" in result.stderr
    assert "larger input size (--img-size)" in result.stderr and "when training" not in result.stderr
    assert not (tmp_path / "a" / "esm.json").exists()
    ok = CliRunner().invoke(eval_app, [*args, "--img-size", "64", "--output", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
    layers = json.loads((tmp_path / "b" / "esm.json").read_text())["models"]["xbn_converted"]["layers"]
    model = timm.create_model("xbn_converted", **P3_IN)
    assert len(layers) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_every_eval_command_refuses_by_name_before_any_batch(image_folder, tmp_path):
    """robustness (and adabn, corruption, adapt, shift: one setup) check the models like esm."""
    root = image_folder(classes=CLASSES, per_class=2, size=40)
    result = CliRunner().invoke(eval_app, [
        "robustness", "--delta", "0.5", "--model", "xbn_converted", "--model-kwargs", json.dumps(P3_IN), "--data-dir", str(root),
        "--batch-size", "4", "--workers", "0", "--device", "cpu", "--img-size", "32", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "xbn_converted: layer4.0.bn3 gets 1x1 maps at input size 32x32" in result.stderr
    assert not list((tmp_path / "r").glob("*.json"))


def test_evaluate_esm_api_refuses_gn_with_one_channel_per_group(image_folder):
    from timm_xbn.evaluation import create_eval_data, evaluate_esm, input_data_config

    _, converted = _forced(position=3, bfn="gn", channels_per_group=1)
    data = create_eval_data(image_folder(classes=CLASSES, per_class=1, size=32),
                            input_data_config(converted, img_size=32, crop_pct=1.0), batch_size=2, workers=0)
    with pytest.raises(UserError, match=r"^gn: layer4\.0\.bn3 gets 1x1 maps .*one channel per group"):
        evaluate_esm({"gn": converted}, data)


def test_calibrate_refuses_before_fitting():
    base, converted = _forced()
    torch.manual_seed(1)
    small = [torch.randn(4, 3, 32, 32)]
    with pytest.raises(UserError, match=r"^layer4\.0\.bn3 gets 1x1 maps at input size 32x32, .*calibrate on larger images"):
        timm_xbn.calibrate(converted, base, small)
    fit = timm_xbn.calibrate(converted, base, [torch.randn(4, 3, 64, 64)])
    assert len(fit.fits) == sum(isinstance(m, InstanceNorm2d) for m in converted.modules())


def test_xbn_convert_calibrate_with_force_is_one_line(image_folder, tmp_path):
    root = image_folder(classes=CLASSES, per_class=2, size=32)
    result = CliRunner().invoke(convert_app, [
        "resnet26", "--position", "P3", "--bfn", "in", "--img-size", "32", "--crop-pct", "1",
        "--model-kwargs", json.dumps({"num_classes": CLASSES}), "--calibrate", str(root), "--calib-images", "4",
        "--force", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "layer4.0.bn3 gets 1x1 maps" in result.stderr and "calibrate on larger images" in result.stderr


# ---- the authors' weights keep the registry's tag ----------------------------------------------------------

@pytest.mark.parametrize("bfn", ["gn", "in"])
def test_authors_import_records_the_authors_tag(tmp_path, bfn):
    from test_registered_models import authors_layout_state_dict

    checkpoint = authors_layout_state_dict()
    if bfn == "in":  # the authors' IN has no affine parameters: no keys for the stem norm and the bn2s
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not (k.startswith("module.bn1.") or ".bn2." in k)}
    torch.save(checkpoint, tmp_path / "authors.pth")
    result = CliRunner().invoke(convert_app, ["resnet50", "--authors", str(tmp_path / "authors.pth"), "--bfn", bfn,
                                              "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "authors_in1k"
    assert config["model_args"].get("bfn", "gn") == bfn
