"""``xbn-eval robustness | adabn | esm``: outputs, schemas and one-line errors (exit code 2)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
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
    assert saved["run"]["blocks"] == 2 and saved["grid"]["seeds"] == [0, 1] and saved["run"]["dataset"] == str(root)
    entry = saved["results"]["resnet18"]
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
    assert set(saved["results"]["resnet18"]) >= {"mode", "before_top1", "after_top1"}
    assert saved["results"]["resnet18"]["mode"] == "prior" and saved["results"]["resnet18"]["prior"] == 8

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


HOLD_LOCK = """import sys
from timm_xbn.evaluation.results import claim_output_dir
with claim_output_dir(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_on_a_busy_output_fails_and_the_first_results_stay(checkpoint_and_data, tmp_path):
    _, _, root, ckpt = checkpoint_and_data
    out = tmp_path / "out"
    sweep = ["--seeds", 1, "--blocks", 1]
    assert invoke("robustness", *common(root, ckpt, out), "--delta", 0.1, *sweep).exit_code == 0
    before = (out / "robustness.json").read_bytes()
    # another process (the same lock the commands take) is writing to the folder
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("robustness", *common(root, ckpt, out), "--delta", 0.3, *sweep)
        assert result.exit_code == 2
        assert result.stderr == f"error: --output {out} is in use by another run; wait for it to finish or give another folder\n"
        assert (out / "robustness.json").read_bytes() == before
    finally:
        holder.stdin.close()
        assert holder.wait() == 0
    # once it is done, the same command runs and keeps both runs' results
    assert invoke("robustness", *common(root, ckpt, out), "--delta", 0.3, *sweep).exit_code == 0
    cells = json.loads((out / "robustness.json").read_text())["cells"]
    assert sorted({c["method"] for c in cells}) == ["perturb:0.1,0", "perturb:0.3,0", "source"]


def test_a_damaged_partial_pass_is_discarded_with_a_warning(checkpoint_and_data, tmp_path):
    _, _, root, ckpt = checkpoint_and_data
    sweep = ["--delta", 0.2, "--seeds", 1, "--blocks", 1]
    assert invoke("robustness", *common(root, ckpt, tmp_path / "fresh"), *sweep).exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "robustness.partial.json").write_text('{"meta": {"dataset": ')  # cut off mid-write
    result = invoke("robustness", *common(root, ckpt, out), *sweep)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"warning: discarded the damaged partial pass {out / 'robustness.partial.json'} (not valid JSON")
    fresh = json.loads((tmp_path / "fresh" / "robustness.json").read_text())
    assert json.loads((out / "robustness.json").read_text())["cells"] == fresh["cells"]


def always_one(tmp_path: Path) -> Path:
    """A 3-class resnet18 checkpoint that predicts class 1 for every image."""
    model = timm.create_model("resnet18", num_classes=3)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    path = tmp_path / "always_one.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def one_class_folder(image_folder, name: str) -> Path:
    root = image_folder(name=f"only_{name}", classes=1, per_class=3, size=40)
    (root / "class_0").rename(root / name)
    return root


@pytest.mark.parametrize("folder, class_map, top1, warns", [
    ("1", None, 100.0, False),          # an integer folder name is the class index
    ("dog", "cat\ndog\nbird\n", 100.0, False),  # --class-map: one folder name per line, in model index order
    ("dog", None, 0.0, True),           # nothing says which class "dog" is: class 0, with a warning
])
def test_class_folders_holding_some_classes_map_to_the_models_indices(image_folder, tmp_path, folder, class_map, top1, warns):
    root = one_class_folder(image_folder, folder)
    args = ["--model", "resnet18", "--checkpoint", always_one(tmp_path), "--model-kwargs", json.dumps({"num_classes": 3}),
            "--data-dir", root, "--img-size", IMG, "--workers", 0, "--device", "cpu", "-o", tmp_path / "out",
            "--delta", 0.1, "--seeds", 1, "--blocks", 1]
    if class_map:
        (tmp_path / "classes.txt").write_text(class_map)
        args += ["--class-map", tmp_path / "classes.txt"]
    result = invoke("robustness", *args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "robustness.json").read_text())["results"]["resnet18"]["clean_top1"] == top1
    warning = " ".join(result.stderr.split())
    assert (f"warning: {root} has 1 class folders for a model with 3 classes" in warning) == warns
    assert ("pass --class-map" in warning) == warns


def test_a_class_folder_beyond_the_models_head_is_an_error(image_folder, tmp_path):
    root = one_class_folder(image_folder, "7")
    result = invoke("esm", "--model", "resnet18", "--model-kwargs", json.dumps({"num_classes": 3}), "--data-dir", root,
                    "--img-size", IMG, "--workers", 0, "--device", "cpu", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {root} has 1 classes mapped up to index 7 (numeric folder names), but the model "
                             "has only 3 outputs (pass --class-map, or set num_classes)\n")
