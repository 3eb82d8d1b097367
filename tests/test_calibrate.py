"""Surgery calibration: each BFN fitted to the BN it replaced, checked against numpy and exact cases."""
import copy
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.models.regnet import RegNet, RegNetCfg
from typer.testing import CliRunner

import timm_xbn
from timm_xbn.models import create_base_model
from timm_xbn.cli import convert_app
from timm_xbn.layers import is_batch_free
from timm_xbn.models import load_exported
from timm_xbn.calibration import ChannelRegression, calibration_batches, reestimate_bns
from timm_xbn.surgery import is_bn
from timm_xbn.training import build_args
from timm_xbn.training.model import create_train_model

TINY_RESNET = dict(layers=[1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, num_classes=3)


def _randomize_bns(model: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics and affine parameters far from their defaults, so a wrong fit shows."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if is_bn(m):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=generator))
            m.bias.data.copy_(torch.rand(c, generator=generator) - 0.5)
    return model.eval()


def tiny_resnet(seed: int = 0) -> nn.Module:
    """A narrow timm ResNet-26 (one bottleneck per stage, plain BN + separate act), no max-pool:
    32 px inputs keep 2x2 maps in the last stage, so InstanceNorm has something to normalize."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet26", **TINY_RESNET)
    model.maxpool = nn.Identity()
    return _randomize_bns(model, seed)


def tiny_regnet(seed: int = 0) -> nn.Module:
    """A timm RegNet with 4 bottlenecks whose BNs are fused BatchNormAct2d (BN + ReLU in one module)."""
    torch.manual_seed(seed)
    return _randomize_bns(RegNet(RegNetCfg(depth=4, w0=8, wa=8.0, wm=1.3, group_size=8), num_classes=3), seed)


def random_images(n: int = 32, size: int = 32, seed: int = 1, batch: int = 16) -> list:
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return list(x.split(batch))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("make, bfn", [(tiny_resnet, "in"), (tiny_resnet, "gn"), (tiny_regnet, "gn")])
def test_exact_when_a_bfn_can_represent_the_bn(make, bfn):
    # Copies of one image: every sample's own statistics are the population's, so each BN output is an
    # exact per-channel affine function of the BFN's normalized input, though with other a, b than the
    # BN's weight and bias (the BN's running statistics are not the images' statistics).
    original = make()
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    images = [image.expand(8, -1, -1, -1).clone()] * 2
    naive = timm_xbn.convert(original, position="P2", bfn=bfn, groups=4, affine=True).model
    calibrated = timm_xbn.calibrate(naive, original, images, reestimate="none").model
    with torch.no_grad():
        reference = original(images[0])
        assert relative_error(naive.eval()(images[0]), reference) > 1e-2  # the surgery alone changes the net
        assert relative_error(calibrated.eval()(images[0]), reference) < 1e-4


def _numpy_gn(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1).astype(np.float64)
    mean, var = grouped.mean(-1, keepdims=True), grouped.var(-1, keepdims=True)
    return ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)


def _numpy_bn(x: np.ndarray, bn: nn.Module) -> np.ndarray:
    shape = (1, -1, 1, 1)
    rm, rv = bn.running_mean.numpy().reshape(shape), bn.running_var.numpy().reshape(shape)
    w, b = bn.weight.detach().numpy().reshape(shape), bn.bias.detach().numpy().reshape(shape)
    return (x.astype(np.float64) - rm) / np.sqrt(rv + bn.eps) * w + b


def _inputs_of(model: nn.Module, names: list, images: list) -> dict:
    """The input of each named module over all images, captured with hooks (numpy)."""
    captured = {name: [] for name in names}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: captured[name].append(args[0].detach().numpy())) for name in names]
    with torch.no_grad():
        for x in images:
            model.eval()(x)
    for handle in handles:
        handle.remove()
    return {name: np.concatenate(chunks) for name, chunks in captured.items()}


def test_fit_equals_numpy_lstsq_layer_by_layer():
    # Fused BN + ReLU: the fit must target the BN's affine output before the ReLU, and each layer must be
    # fitted on the inputs the already-calibrated earlier layers produce (the calibrated model's own inputs).
    original = tiny_regnet()
    images = random_images()
    result = timm_xbn.calibrate(timm_xbn.convert(original, position="P2", groups=4).model, original, images,
                                reestimate="none")
    names = [f.name for f in result.fits]
    assert names == [n for n, m in result.model.named_modules() if is_batch_free(m)] and len(names) == 4
    bfn_inputs, bn_inputs = _inputs_of(result.model, names, images), _inputs_of(original, names, images)
    for name in names:
        bfn, bn = result.model.get_submodule(name), original.get_submodule(name)
        x_hat, y = _numpy_gn(bfn_inputs[name], bfn.num_groups, bfn.eps), _numpy_bn(bn_inputs[name], bn)
        for c in range(bn.num_features):
            design = np.stack([x_hat[:, c].ravel(), np.ones(x_hat[:, c].size)], axis=1)
            (a, b), *_ = np.linalg.lstsq(design, y[:, c].ravel(), rcond=None)
            assert bfn.weight[c].item() == pytest.approx(a, rel=1e-4, abs=1e-5), (name, c)
            assert bfn.bias[c].item() == pytest.approx(b, rel=1e-4, abs=1e-5), (name, c)


def test_channel_regression_merges_batches_like_one_lstsq():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(37, 3, 4, 4))
    x[:, 2] = 0.0  # a constant (normalized) channel: lstsq's minimum-norm answer is a = 0, b = mean(y)
    y = 3.0 * x + 1e4 + rng.normal(0, 0.5, size=x.shape)  # a large mean: raw sums would cancel badly in float32
    regression = ChannelRegression(3)
    for chunk in np.array_split(np.arange(37), [5, 6, 30]):  # uneven batches, one of a single sample
        regression.update(torch.from_numpy(x[chunk]), torch.from_numpy(y[chunk]))
    slope, intercept = regression.solve()
    for c in range(3):
        design = np.stack([x[:, c].ravel(), np.ones(x[:, c].size)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y[:, c].ravel(), rcond=None)
        assert slope[c].item() == pytest.approx(a, abs=1e-9) and intercept[c].item() == pytest.approx(b, rel=1e-12)
        residual = y[:, c].ravel() - design @ np.array([a, b])
        r2 = 1 - residual.var() / y[:, c].var()
        assert regression.r2()[c].item() == pytest.approx(r2, abs=1e-9)


def test_only_bfn_affine_and_bn_statistics_change():
    original = tiny_resnet()
    converted = timm_xbn.convert(original, position="P3", bfn="in", affine=True).model
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    calibrated = timm_xbn.calibrate(converted, original, random_images(), reestimate="full").model
    bfns = {n for n, m in calibrated.named_modules() if is_batch_free(m)}
    allowed = {f"{n}.{p}" for n in bfns for p in ("weight", "bias")}
    allowed |= {f"{n}.{b}" for n, m in calibrated.named_modules() if is_bn(m) for b in ("running_mean", "running_var")}
    changed = {k for k, v in calibrated.state_dict().items() if not torch.equal(v, before[k])}
    assert changed <= allowed
    assert {k for k in changed if k.endswith("running_var")} and {k for k in changed if k.endswith(".weight")}
    assert all(torch.equal(v, before[k]) for k, v in converted.state_dict().items())  # not inplace: a copy


def _bn_stats(model: nn.Module) -> dict:
    return {n: (m.running_mean.double(), m.running_var.double()) for n, m in model.named_modules() if is_bn(m)}


def test_reestimation_choices_against_their_closed_forms():
    # The stem BN's input (conv1 of the images) does not depend on any other norm, so its "full" statistics
    # are the plain mean and population variance of conv1's output over all images; "mix" is the average of
    # the trained and the full statistics weighted N : n (N = source_images, n = the 32 images), every BN.
    original, images = tiny_resnet(), random_images(n=32, batch=8)
    converted = timm_xbn.convert(original, position="P2", groups=4).model
    none, full, mix = (timm_xbn.calibrate(converted, original, images, reestimate=choice, source_images=96).model
                       for choice in ("none", "full", "mix"))
    trained = _bn_stats(original)
    assert all(torch.equal(m, trained[n][0]) and torch.equal(v, trained[n][1]) for n, (m, v) in _bn_stats(none).items())
    with torch.no_grad():
        stem = original.conv1(torch.cat(images)).double()
    torch.testing.assert_close(full.bn1.running_mean.double(), stem.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full.bn1.running_var.double(), stem.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)
    weight = 96 / (96 + 32)
    full_stats = _bn_stats(full)
    for name, (mean, var) in _bn_stats(mix).items():
        torch.testing.assert_close(mean, weight * trained[name][0] + (1 - weight) * full_stats[name][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, weight * trained[name][1] + (1 - weight) * full_stats[name][1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full_stats["layer2.0.bn1"][1], trained["layer2.0.bn1"][1])  # the choices differ


def test_reestimate_bns_counts_the_images_of_any_loader():
    # reestimate_bns on a plain list (not calibrate's counted images) weights the mix by its 24 images too.
    original, images = tiny_resnet(), random_images(n=24, batch=8)
    full = reestimate_bns(copy.deepcopy(original), images, "full")
    mix = reestimate_bns(copy.deepcopy(original), images, "mix", source_images=8)
    expected = 0.25 * original.layer1[0].bn1.running_var.double() + 0.75 * full.layer1[0].bn1.running_var.double()
    torch.testing.assert_close(mix.layer1[0].bn1.running_var.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(reestimate="adabn"), "reestimate must be one of none, full, mix, got 'adabn'"),
    (dict(reestimate="mix"), "reestimate='mix' needs source_images >= 0"),
])
def test_bad_reestimation_is_an_error(kwargs, message):
    original = tiny_resnet()
    with pytest.raises(ValueError, match=message):
        timm_xbn.calibrate(timm_xbn.convert(original).model, original, random_images(), **kwargs)


def test_original_stays_bit_exact_with_its_modes_and_no_hooks():
    original = tiny_regnet().train()
    original.get_submodule("s1").eval()  # a mixed train/eval state must come back as it was
    modes = {n: m.training for n, m in original.named_modules()}
    state = {k: v.clone() for k, v in original.state_dict().items()}
    converted = timm_xbn.convert(original, position="P1", groups=4).model
    timm_xbn.calibrate(converted, original, random_images(), inplace=True)
    assert all(torch.equal(v, state[k]) for k, v in original.state_dict().items())
    assert {n: m.training for n, m in original.named_modules()} == modes
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in list(original.modules()) + list(converted.modules()))


class _Augmenting:
    """A loader that adds fresh noise on every pass, as a random training transform would."""

    def __init__(self, images: list):
        self.images = images

    def __iter__(self):
        yield from (x + 0.1 * torch.randn_like(x) for x in self.images)


def test_the_order_of_the_images_does_not_matter():
    original, images = tiny_resnet(), random_images(batch=8)
    converted = timm_xbn.convert(original, position="P2", groups=4).model
    ordered = timm_xbn.calibrate(converted, original, images, reestimate="none").model
    shuffled = timm_xbn.calibrate(converted, original, images[::-1], reestimate="none").model
    for key, value in ordered.state_dict().items():
        torch.testing.assert_close(shuffled.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("no_bfn", "has no batch-free norms to calibrate"),
    ("no_images", "the calibration loader gave no images"),
    ("grey_images", r"calibration images must be \(N, 3, H, W\) for this model, got a batch of shape \(4, 1, 32, 32\)"),
    ("no_affine", "layer1.0.bn2 \\(InstanceNorm2d\\) has no affine parameters to calibrate"),
    ("other_model", "does not match the converted one at layer1.0.bn2"),
    ("augmented", "other images on a later pass"),
])
def test_bad_input_is_a_one_line_error(case, message):
    original, images = tiny_resnet(), random_images()
    converted = timm_xbn.convert(original, position="P2", groups=4).model
    other = timm.create_model("resnet18", num_classes=3)
    args = {
        "no_bfn": (original, original, images),
        "no_images": (converted, original, []),
        "grey_images": (converted, original, [torch.zeros(4, 1, 32, 32)]),
        "no_affine": (timm_xbn.convert(original, bfn="in", affine=False).model, original, images),
        "other_model": (converted, other, images),
        "augmented": (converted, original, _Augmenting(images)),
    }[case]
    with pytest.raises(ValueError, match=message) as err:
        timm_xbn.calibrate(*args)
    assert "\n" not in str(err.value)


def test_xbn_convert_calibrate_writes_the_calibrated_model(tmp_path, image_folder):
    torch.manual_seed(0)
    base = timm.create_model("resnet26", **TINY_RESNET).eval()
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    folder = image_folder("calib", classes=2, per_class=6, size=40)
    out = tmp_path / "out"
    result = CliRunner().invoke(convert_app, [
        "resnet26", "--checkpoint", str(tmp_path / "base.safetensors"), "--model-kwargs",
        '{"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8, "num_classes": 3}', "--bfn", "in",
        "--position", "P3", "--calibrate", str(folder), "--calib-images", "10", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "calibrated 4 batch-free norms on 10 images" in result.output
    converted = timm_xbn.convert(base, position="P3", bfn="in").model
    expected = timm_xbn.calibrate(converted, base, calibration_batches(folder, base, 10)).model
    reloaded = load_exported(out)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in reloaded.state_dict().items())


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "EMPTY"], "no images found in"),
    (["--calibrate", "missing"], "data folder not found"),
    (["--calibrate", "DATA", "--calib-images", "0"], "the number of calibration images must be >= 1, got 0"),
    (["--calibrate", "DATA", "--authors", "x.pth"], "the authors' checkpoint is already converted"),
    (["--calibrate", "DATA", "--reestimate", "mix"], "--reestimate mix needs --source-images >= 0"),
    (["--calibrate", "DATA", "--reestimate", "adabn"], "'adabn' is not one of"),
    (["--img-size", "0"], "--img-size must be a positive number of pixels, got 0"),
])
def test_xbn_convert_calibrate_errors(tmp_path, image_folder, args, message):
    (tmp_path / "empty").mkdir()
    data = image_folder("data", classes=1, per_class=2)
    args = [{"EMPTY": str(tmp_path / "empty"), "DATA": str(data)}.get(a, a) for a in args]
    result = CliRunner().invoke(convert_app, ["resnet18", *args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "") and "Traceback" not in result.output


def test_xbn_train_calibrates_the_conversion_on_the_training_size(image_folder):
    folder = image_folder("calib", classes=2, per_class=4, size=48)
    kwargs = ["--model-kwargs", "layers=[1,1,1,1]", "channels=[8,16,32,64]", "stem_width=8", "--num-classes", "3"]
    argv = ["--convert-from", "resnet26", "--bfn", "in", *kwargs, "--img-size", "64", "--workers", "0",
            "--calibrate", str(folder), "--calib-images", "6"]
    torch.manual_seed(0)
    model = create_train_model(build_args(argv=argv), in_chans=3)
    torch.manual_seed(0)
    base = create_base_model("resnet26", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8, num_classes=3)
    config = dict(timm.data.resolve_data_config(model=base), input_size=(3, 64, 64))
    converted = timm_xbn.convert(base, bfn="in").model
    expected = timm_xbn.calibrate(converted, base, calibration_batches(folder, base, 6, data_config=config)).model
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())
    for bad in (["--model", "resnet26"], ["--convert-from", "resnet26", "--initial-checkpoint", "w.safetensors"]):
        with pytest.raises(ValueError, match="--calibrate fits a fresh conversion"):
            create_train_model(build_args(argv=bad + ["--calibrate", str(folder)]), in_chans=3)


def test_calibration_batches_draw_a_seeded_sample_of_a_flat_folder(tmp_path):
    from PIL import Image

    for i in range(12):  # no class sub-folders: an unlabeled folder; image i is uniformly 20 * i
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(tmp_path / f"img_{i:02d}.png")
    model = timm.create_model("resnet18", num_classes=3)
    config = dict(timm.data.resolve_data_config(model=model), input_size=(3, 8, 8), crop_pct=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    batches = calibration_batches(tmp_path, model, 5, batch_size=2, workers=0, data_config=config)
    assert [len(b) for b in batches] == [2, 2, 1]
    drawn = sorted(round(float(x.mean()) * 255 / 20) for x in torch.cat(batches))
    expected = sorted(torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5].tolist())
    assert drawn == expected and drawn != [0, 1, 2, 3, 4]


def _base_checkpoint(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model("resnet26", **TINY_RESNET).eval()
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    return base, ["resnet26", "--checkpoint", str(tmp_path / "base.safetensors"), "--model-kwargs",
                  '{"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8, "num_classes": 3}']


def test_xbn_convert_input_options_feed_calibration_and_the_exported_config(tmp_path, image_folder):
    base, command = _base_checkpoint(tmp_path)
    folder = image_folder("calib", classes=2, per_class=4, size=48)
    out = tmp_path / "out"
    result = CliRunner().invoke(convert_app, [
        *command, "--calibrate", str(folder), "--calib-images", "6", "--reestimate", "mix", "--source-images", "18",
        "--img-size", "40", "--mean", "0.1", "0.2", "0.3", "--std", "0.5", "0.6", "0.7", "--crop-pct", "1.0",
        "--output", str(out)])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 40, 40] and cfg["mean"] == [0.1, 0.2, 0.3] and cfg["std"] == [0.5, 0.6, 0.7]
    assert cfg["crop_pct"] == 1.0
    config = dict(timm.data.resolve_data_config(model=base), input_size=(3, 40, 40), mean=(0.1, 0.2, 0.3),
                  std=(0.5, 0.6, 0.7), crop_pct=1.0)
    images = calibration_batches(folder, base, 6, data_config=config)
    assert images[0].shape[-1] == 40
    expected = timm_xbn.calibrate(timm_xbn.convert(base).model, base, images, reestimate="mix", source_images=18).model
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in reloaded.state_dict().items())
    assert timm.data.resolve_data_config(model=reloaded)["input_size"] == (3, 40, 40)  # timm reads it back


def test_xbn_convert_input_config_takes_another_models_preprocessing(tmp_path):
    _, command = _base_checkpoint(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(convert_app, [*command, "--input-config", "inception_v3", "--crop-pct", "0.9",
                                              "--output", str(out)])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    inception = timm.models.get_pretrained_cfg("inception_v3")
    assert cfg["input_size"] == list(inception.input_size) and cfg["interpolation"] == inception.interpolation
    assert cfg["mean"] == list(inception.mean) and cfg["std"] == list(inception.std) and cfg["crop_pct"] == 0.9
    bad = CliRunner().invoke(convert_app, [*command, "--input-config", "no_such_net", "--output", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "no timm pretrained config named 'no_such_net'" in bad.output
