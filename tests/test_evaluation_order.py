"""One image, one corruption; one order for every command.

On-the-fly corruptions are keyed by the image (the same pixels in any batch, position, order or
batch size), and every batch-dependent evaluation (``corruption --adapt``, ``adapt``, ``adabn``)
reads the data in the same seeded order, so that the same method gives the same numbers whichever
command computes it."""
import json

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from typer.testing import CliRunner

from test_corruptions_data import CONFIG, fit_to, make_imagenet_c
from timm_xbn.cli import eval_app
from timm_xbn.corruptions import CORRUPTIONS, ImageNetCFolders, OnTheFly, corrupt_batch
from timm_xbn.grid import evaluate_adabn, evaluate_adaptation, evaluate_corruptions
from timm_xbn.corruptions.seeding import corrupt_images, pixel_seed
from timm_xbn.evaluation import create_eval_data


def two_bn_model(fit=None) -> nn.Module:
    """conv-BN-ReLU-conv-BN-ReLU-pool-linear: the second BN's input depends on the first BN's batch
    statistics, so full recalibration depends on how the calibration images are batched."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return fit_to(model, fit) if fit is not None else model.eval()


@pytest.mark.parametrize("severity", [2, 5])
def test_an_image_gets_the_same_pixels_in_any_order_and_batch_size(severity):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 40), dtype=torch.uint8)
    images[:, :, 8:20] //= 3  # some structure for the blurs
    images[5] = images[1]  # a duplicate gets the same corruption
    for name in CORRUPTIONS:
        # each image alone through one generator seeded by (seed, corruption, severity, its pixels)
        alone = torch.stack([corrupt_batch(x, name, severity, torch.Generator().manual_seed(pixel_seed(3, name, severity, x)))
                             for x in images])
        for order in (torch.arange(6), torch.tensor([4, 1, 5, 0, 3, 2])):
            for batch_size in (6, 3):  # CPU chunks of 4 images: [4 + 2] or [3], [3]
                out = torch.empty_like(images)
                for start in range(0, 6, batch_size):
                    index = order[start:start + batch_size]
                    out[index] = corrupt_images(images[index], name, severity, seed=3)
                assert torch.equal(out, alone), (name, order.tolist(), batch_size)
        assert not torch.equal(alone, images) and torch.equal(alone[5], alone[1]), name
    assert pixel_seed(3, "fog", severity, images[0]) != pixel_seed(4, "fog", severity, images[0])
    assert pixel_seed(3, "fog", severity, images[0]) != pixel_seed(3, "snow", severity, images[0])
    assert pixel_seed(3, "fog", severity, images[0]) != pixel_seed(3, "fog", 6 - severity, images[0])


COUNTS = ("correct1", "correct5", "count")
# adapt method -> the same method spelled for ``corruption --adapt``
SAME_METHOD = {"source": None, "norm": "full", "prior:4": "prior:4", "batch": "batch"}


def counts(run):
    return {k: run[k] for k in COUNTS}


def cell(document, model, method, pair):
    """The stored cell of ``model`` x ``method`` on ``pair`` in a results document of any view."""
    return next(c for c in document["cells"] if (c["model"], c["method"], c["pair"]) == (model, method, pair))


def test_adapt_methods_equal_corruption_adapt_on_the_fly(image_folder):
    clean = image_folder("clean", classes=3, per_class=6, size=32, ext="PNG")
    model = two_bn_model(fit=clean)
    source = OnTheFly(clean, CONFIG, num_classes=3, corruptions=["gaussian_noise", "shot_noise", "fog"], severities=[5],
                      seed=0, batch_size=4, workers=0)
    adapted = evaluate_adaptation({"m": model}, list(SAME_METHOD), source)
    for method, spec in SAME_METHOD.items():
        corrupted = evaluate_corruptions({"m": model}, source, adapt=spec)["m"]
        for pair, run in adapted["results"]["entries"][f"m | {method}"]["runs"].items():
            assert counts(run) == counts(cell(corrupted, "m", method, pair)), (method, pair)


def test_adapt_norm_equals_corruption_full_and_adabn_full(image_folder, tmp_path):
    clean = image_folder("clean", classes=3, per_class=6, size=32, ext="PNG")
    root = make_imagenet_c(clean, tmp_path / "imagenet-c", corruptions=("contrast",), severities=(3,))
    model = two_bn_model()  # untrained: its adapted predictions follow the calibration batches closely
    source = ImageNetCFolders(root, CONFIG, num_classes=3, batch_size=4, workers=0)
    data = create_eval_data(root / "contrast" / "3", CONFIG, batch_size=4, workers=0, num_classes=3)
    top1 = {}
    for order in ("shuffle", "folder"):
        norm = evaluate_adaptation({"m": model}, ["norm"], source, order=order)["results"]["entries"]["m | norm"]["runs"]["contrast/3"]
        full = cell(evaluate_corruptions({"m": model}, source, adapt="norm", order=order)["m"], "m", "norm", "contrast/3")
        adabn = evaluate_adabn({"m": model}, data, mode="norm", order=order)["results"]["m"]
        assert counts(norm) == counts(full), order
        # adabn normalises with timm's transform (x / 255 - mean) / std: the same images up to float rounding
        assert 100 * norm["correct1"] / norm["count"] == pytest.approx(adabn["after_top1"], abs=1e-9), order
        top1[order] = adabn["after_top1"]
    assert top1["shuffle"] != top1["folder"]  # the order matters here: a command in another order would differ


def test_cli_commands_share_the_order_and_record_it(image_folder, tmp_path):
    clean = image_folder("clean", classes=3, per_class=4, size=32, ext="PNG")
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(tmp_path / "r18.safetensors"))
    common = ["-m", "resnet18", "--model-kwargs", '{"num_classes": 3}', "--checkpoint", tmp_path / "r18.safetensors",
              "--img-size", "32", "--crop-pct", "1.0", "-b", "4", "-j", "0", "--device", "cpu"]
    on_the_fly = ["--data-dir", str(clean), "--corruptions", "fog", "--severities", "3"]

    def invoke(*args):
        result = CliRunner().invoke(eval_app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())  # the table titles, unwrapped

    runs = {}
    for order in ("shuffle", "folder"):
        flag = [] if order == "shuffle" else ["--order", "folder"]  # shuffle is the default
        label = "read shuffled (seed 0)" if order == "shuffle" else "read in folder order"
        assert label in invoke("adapt", *common, *on_the_fly, "--method", "batch", "-o", tmp_path / f"a-{order}", *flag)
        assert label in invoke("corruption", *common, *on_the_fly, "--adapt", "batch", "-o", tmp_path / f"c-{order}", *flag)
        adapt = json.loads((tmp_path / f"a-{order}" / "adapt.json").read_text())
        corruption = json.loads((tmp_path / f"c-{order}" / "corruption-resnet18.json").read_text())
        expected = {"order": order, "order_seed": 0 if order == "shuffle" else None}
        for saved in (adapt, corruption):
            assert {k: saved["run"][k] for k in expected} == expected
        runs[order] = counts(cell(adapt, "resnet18", "batch", "fog/3"))
        assert runs[order] == counts(cell(corruption, "resnet18", "batch", "fog/3")), order
    assert "read shuffled (seed 2)" in invoke("adabn", *common, "--data-dir", clean, "--mode", "batch", "--seed", 2,
                                              "-o", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "adabn.json").read_text())["run"]["order_seed"] == 2
    result = CliRunner().invoke(eval_app, ["corruption", *common, *on_the_fly, "--order", "sorted", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'sorted' is not one of" in result.stderr
