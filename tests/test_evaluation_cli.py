"""``xbn-eval robustness | adabn | esm``: outputs, schemas and one-line errors (exit code 2)."""
import csv
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from timm_xbn.cli import eval_app
from timm_xbn.evaluation import accuracy_from_counts, topk_correct

from test_evaluation import CLASSES, IMG, make_model

KWARGS = json.dumps({"num_classes": CLASSES, "zero_init_last": False})


@pytest.fixture
def checkpoint_and_data(image_folder, tmp_path):
    root = image_folder(classes=CLASSES, per_class=3, size=40)
    model, data = make_model(root, batch_size=8)
    path = tmp_path / "r18.safetensors"
    save_file(model.state_dict(), str(path))
    return model, data, root, path


def invoke(*args):
    return CliRunner().invoke(eval_app, [str(a) for a in args])


def common(root, ckpt, out):
    return ["--model", "resnet18", "--checkpoint", ckpt, "--model-kwargs", KWARGS, "--data-dir", root,
            "--img-size", IMG, "--batch-size", 8, "--workers", 0, "--device", "cpu", "--output", out]


def test_robustness_single_delta(checkpoint_and_data, tmp_path):
    model, data, root, ckpt = checkpoint_and_data
    result = invoke("robustness", *common(root, ckpt, tmp_path / "out"), "--delta", 0.1, "--seeds", 2, "--blocks", 2)
    assert result.exit_code == 0, result.output
    assert "Δ=0.1" in result.stdout and "resnet18" in result.stdout
    saved = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert saved["kind"] == "robustness" and saved["timm_xbn_version"] == "0.1.0"
    assert saved["blocks"] == 2 and saved["seeds"] == [0, 1] and saved["dataset"] == str(root)
    entry = saved["models"]["resnet18"]
    assert set(entry["deltas"]) == {"0.1"} and len(entry["deltas"]["0.1"]["per_seed"]) == 2
    with torch.no_grad():  # clean top-1 by a plain loop over the same data
        counts = sum(topk_correct(model(b.images), b.targets) for b in data.loader())
    assert entry["clean_top1"] == accuracy_from_counts(counts)["top1"]
    rows = list(csv.DictReader((tmp_path / "out" / "robustness.csv").open()))
    assert [(r["delta"], r["seed"]) for r in rows] == [("", ""), ("0.1", "0"), ("0.1", "1")]
    assert (tmp_path / "out" / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_adabn_and_esm_commands(checkpoint_and_data, tmp_path):
    _, _, root, ckpt = checkpoint_and_data
    result = invoke("adabn", *common(root, ckpt, tmp_path / "a"), "--mode", "prior", "--prior", 8)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "a" / "adabn.json").read_text())
    assert saved["kind"] == "adabn"
    assert set(saved["models"]["resnet18"]) >= {"mode", "before_top1", "after_top1"}
    assert saved["models"]["resnet18"]["mode"] == "prior" and saved["models"]["resnet18"]["prior"] == 8

    result = invoke("esm", *common(root, ckpt, tmp_path / "e"))
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "e" / "esm.json").read_text())
    layers = saved["models"]["resnet18"]["layers"]
    assert saved["kind"] == "esm" and len(layers) == 20
    assert set(layers[0]) == {"name", "depth", "channels", "esm_mu", "esm_sigma", "esm_mu_per_channel", "esm_sigma_per_channel"}
    assert (tmp_path / "e" / "esm_sigma.png").exists()


@pytest.mark.parametrize("change,message", [
    ({"--data-dir": "missing"}, "error: data folder not found"),
    ({"--model": "resnet1_8"}, "error: unknown model 'resnet1_8'; did you mean: resnet18"),
    ({"--blocks": "12"}, "error: resnet18: --blocks 12 is out of range: ResNet has 8 residual blocks"),
    ({"--delta": "1.5"}, "error: noise magnitude delta must be in [0, 1)"),
])
def test_clear_one_line_errors(checkpoint_and_data, tmp_path, change, message):
    _, _, root, ckpt = checkpoint_and_data
    args = common(root, ckpt, tmp_path / "out") + ["--delta", 0.1, "--blocks", 2]
    for key, value in change.items():
        args[args.index(key) + 1] = tmp_path / value if key == "--data-dir" else value
    result = invoke("robustness", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
