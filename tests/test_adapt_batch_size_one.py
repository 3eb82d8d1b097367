"""Batch size 1 (issue 24) for every adaptation method on a tiny timm ResNet: the streams of single
images give what a plain loop gives, prediction-time BN equals instance normalization, and a BN given
one value per channel stops with a one-line error naming the layer and the method."""
import copy
import re

import pytest
import timm
import torch
import torch.nn as nn
from typer.testing import CliRunner

from test_adapt import tiny_net
from test_adapt_evaluate import CLASSES, tree  # noqa: F401 (fixture)
from test_corruptions_data import CONFIG, folder_samples, make_imagenet_c, manual_error
from timm_xbn.adapt import METHODS, create_adapter, run_protocol
from timm_xbn.grid import evaluate_adaptation
from timm_xbn.cli import eval_app
from timm_xbn.corruptions import ImageNetCFolders
from timm_xbn.corruptions.prep import BatchPrep

TINY = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8, num_classes=3)
FROM_THE_BATCH = ("norm", "mix", "batch", "tent", "eata", "sar", "rbn", "prior:0")  # BN statistics from the batch (rbn: into its EMA)


def tiny_resnet() -> nn.Module:
    """timm's ResNet-18 layout, 1 block per stage, 8-64 channels: stride 32, so a 32 px input reaches
    layer4 as 1 x 1 maps and a 64 px one as 2 x 2."""
    torch.manual_seed(0)
    return timm.create_model("resnet18", **TINY).eval()


def instance_norm_copy(model: nn.Module) -> nn.Module:
    """``model`` with every BN2d replaced by an instance norm with its affine parameters: what a BN
    normalizing a batch of one image with that batch's statistics computes."""
    copied = copy.deepcopy(model)
    for name, bn in list(copied.named_modules()):
        if isinstance(bn, nn.BatchNorm2d):
            inorm = nn.InstanceNorm2d(bn.num_features, eps=bn.eps, affine=True)
            inorm.load_state_dict({"weight": bn.weight, "bias": bn.bias})
            parent, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent) if parent else copied, child, inorm)
    return copied


def test_every_method_at_batch_size_one_on_a_tiny_timm_resnet(image_folder, tmp_path):
    clean = image_folder("clean64", classes=3, per_class=2, size=64, ext="PNG")
    root = make_imagenet_c(clean, tmp_path / "c64", corruptions=("fog",), severities=(1,))
    config = {**CONFIG, "input_size": (3, 64, 64)}
    source = ImageNetCFolders(root, config, num_classes=3, batch_size=1, workers=0)
    model = tiny_resnet()
    results = evaluate_adaptation({"r": model}, list(METHODS), source, order_seed=4)
    assert results["run"]["batch_size"] == 1
    data = source.pair_data("fog", 1).shuffled(4)
    prep = BatchPrep(config, torch.device("cpu"))
    stream = {"fog/1": lambda: [(prep(b.images), b.targets) for b in data.loader()]}
    for method in METHODS:
        run = results["results"]["entries"][f"r | {method}"]["runs"]["fog/1"]
        assert run == run_protocol(create_adapter(model, method), stream)["fog/1"], method  # a plain loop of single images
        assert run["count"] == 6
    images, targets = folder_samples(root / "fog" / "1", CLASSES)
    runs = {m: results["results"]["entries"][f"r | {m}"]["runs"]["fog/1"] for m in METHODS}
    assert runs["source"]["top1_error"] == pytest.approx(manual_error(model, images, targets))
    assert runs["batch"]["top1_error"] == pytest.approx(manual_error(instance_norm_copy(model), images, targets))
    x = stream["fog/1"]()[0][0]
    with torch.no_grad():
        logits = create_adapter(model, "batch")(x)
        assert torch.allclose(logits, instance_norm_copy(model)(x), atol=1e-5)
        assert not torch.allclose(logits, model(x), atol=1e-2)  # the running statistics would give other logits
    assert runs["tent"]["backward"] == 6 and runs["norm"]["forward"] == 12


@pytest.mark.parametrize("method", list(METHODS) + ["prior:0"])
def test_a_bn_given_one_value_per_channel(tree, method):  # noqa: F811
    """At 32 px layer4 gets 1 x 1 maps: the methods whose BN statistics come from the batch stop at its
    first BN with a one-line error naming it and the method; source and prior:16 (mixed with the source
    statistics) predict."""
    _, root = tree
    source = ImageNetCFolders(root, CONFIG, num_classes=3, corruptions=["fog"], severities=[1], batch_size=1, workers=0)
    model = tiny_resnet()
    if method in FROM_THE_BATCH:
        with pytest.raises(ValueError) as err:
            evaluate_adaptation({"r": model}, [method], source)
        assert re.match(rf"{method.split(':')[0]}: layer4\.0\.bn1 \(BatchNorm2d\) takes its statistics from the batch, and a "
                        r"batch of 1 gives it 1 value per channel \(input \(1, 64, 1, 1\)\)", str(err.value))
        assert "\n" not in str(err.value)
        return
    run = evaluate_adaptation({"r": model}, [method], source)["results"]["entries"][f"r | {method}"]["runs"]["fog/1"]
    assert run["count"] == 12
    if method == "source":
        assert run["top1_error"] == pytest.approx(manual_error(model, *folder_samples(root / "fog" / "1", CLASSES)))


def bn1d_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(75, 4), nn.BatchNorm1d(4), nn.LayerNorm(4), nn.Linear(4, 3)).double().eval()


@pytest.mark.parametrize("method", list(METHODS) + ["prior:0"])
def test_batchnorm1d_after_pooling_at_batch_size_one(method):
    """A BN2d with H x W > 1 values per channel works for every method; a BatchNorm1d gets one value per
    channel from a single image, and the batch-statistics methods name it."""
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    for net, fails in [(tiny_net(), False), (bn1d_net(), method in FROM_THE_BATCH)]:
        adapter = create_adapter(net, method)
        run = (lambda: adapter.prepare([x])) if adapter.needs_data else (lambda: adapter(x))
        if fails:
            with pytest.raises(ValueError, match=rf"^{method.split(':')[0]}: 2 \(BatchNorm1d\) .* 1 value per channel \(input \(1, 4\)\)"):
                run()
            continue
        run()
        assert adapter(x).isfinite().all()


def test_cli_batch_size_one_error_is_one_line(tree, tmp_path):  # noqa: F811
    _, root = tree
    kwargs = '{"num_classes": 3, "layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}'
    result = CliRunner().invoke(eval_app, ["adapt", "-m", "resnet18", "--model-kwargs", kwargs, "--img-size", "32",
                                           "--crop-pct", "1.0", "-b", "1", "-j", "0", "--device", "cpu", "--imagenet-c",
                                           str(root), "--severities", "1", "--corruptions", "fog", "--method", "tent",
                                           "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: tent: layer4.0.bn1 (BatchNorm2d)") and "Traceback" not in result.output
