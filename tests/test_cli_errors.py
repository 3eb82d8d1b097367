"""Bad input to ``xbn-eval`` / ``xbn-convert`` / ``xbn-hub``: one red line, exit code 2, nothing written.

Each case is a command line as a user would type it; the expected message names the flag or the file.
Checks that must come before any work (the output location, the checkpoint file) also assert that no
model was built.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import timm_xbn.evaluation
from timm_xbn.cli import convert_app, eval_app, hub_app

KWARGS = json.dumps({"num_classes": 3})


@pytest.fixture
def setup(image_folder, tmp_path, monkeypatch):
    """A 3-class folder, a resnet18 checkpoint, a text file, a file where a folder belongs; cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    image_folder(classes=3, per_class=2, size=40)
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(tmp_path / "r18.safetensors"))
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "a_file").write_text("keep me\n")
    (tmp_path / "bad.tar").write_bytes(b"not a tar archive" * 40)
    return tmp_path


def run(app, args):
    return CliRunner().invoke(app, [str(a) for a in args])


def eval_args(command, *extra, output="out"):
    base = ["-m", "resnet18", "--model-kwargs", KWARGS, "--checkpoint", "r18.safetensors", "--img-size", 32,
            "-j", 0, "--device", "cpu", "-o", output]
    data = ["--data-dir", "data"]
    specific = {"robustness": ["-d", 0.1, "--seeds", 1, "--blocks", 1], "esm": [], "adabn": [],
                "corruption": ["--corruptions", "contrast", "--severities", 1]}[command]
    return [command, *base, *data, *specific, *extra]


def assert_one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["robustness", "esm", "adabn", "corruption"])
@pytest.mark.parametrize("output, message", [
    ("a_file", "--output a_file is a file; give a folder"),
    ("a_file/sub", "--output a_file/sub is not writable: Not a directory"),
])
def test_unusable_output_fails_before_any_model_is_built(setup, monkeypatch, command, output, message):
    built = []
    monkeypatch.setattr(timm_xbn.evaluation, "create_models", lambda *a, **k: built.append(a) or {})
    assert_one_line_error(run(eval_app, eval_args(command, output=output)), message)
    assert built == [] and (setup / "a_file").read_text() == "keep me\n"


@pytest.mark.parametrize("extra, message", [
    (["--img-size", 0], "--img-size must be a positive number of pixels, got 0"),
    (["-j", -1], "--workers (-j) must be >= 0"),
    (["--batch-size", 0], "--batch-size must be >= 1, got 0"),
    (["--crop-pct", 0], "--crop-pct must be a fraction > 0"),
    (["--checkpoint", "notes.txt"], "--checkpoint notes.txt is neither a .safetensors file nor a torch checkpoint (it starts with b'hello\\n')"),
    (["--device", "tpu"], "device 'tpu' is not a device name: use auto, cpu, cuda or cuda:K"),
    (["--data-dir", "bad.tar"], "cannot read bad.tar as a tar file of images"),
])
def test_eval_input_errors(setup, extra, message):
    assert_one_line_error(run(eval_app, eval_args("robustness", *extra)), message)
    assert not (setup / "out" / "robustness.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["robustness", "corruption"])
def test_cuda_without_a_gpu(setup, command):
    assert_one_line_error(run(eval_app, eval_args(command, "--device", "cuda")),
                          "device 'cuda' asked for, but torch sees no CUDA GPU here; use cpu (or auto)")


def test_blocks_messages_name_the_flag(setup):
    result = run(eval_app, eval_args("robustness", "--blocks", 12))
    assert_one_line_error(result, "error: resnet18: --blocks 12 is out of range: ResNet has 8 residual blocks")
    args = eval_args("robustness")
    args[args.index("resnet18")] = "dla46_c"  # BN but no residual blocks
    args[args.index("--checkpoint"):args.index("--checkpoint") + 2] = []
    result = run(eval_app, args)
    assert result.exit_code == 2 and "use --blocks all to disturb every BN" in result.stderr
    assert "blocks=None" not in result.stderr and "scope=" not in result.stderr
    assert run(eval_app, eval_args("robustness", "--blocks", "all")).exit_code == 0
    assert_one_line_error(run(eval_app, eval_args("robustness", "--blocks", 2)),
                          "out/robustness.json holds results for --blocks all, this run has --blocks 2; use another output folder")


@pytest.mark.parametrize("content, message", [
    ([1, 2], "cannot resume from out/robustness.json: it holds a JSON list, not 'robustness' results"),
    ({"kind": "robustness", "schema": 2, "run": {}, "models": {}, "cells": [5], "skipped_images": {}},
     "cannot resume from out/robustness.json: cells[0]: expected an object, got int"),
    ({"kind": "robustness", "schema": 2, "run": {}, "models": {"resnet18": {"targets": []}}, "cells": [],
      "skipped_images": {}},
     "cannot resume from out/robustness.json: models['resnet18'].weights_sha1: missing"),
    ({"kind": "robustness", "model_info": {"resnet18": {"weights_sha1": "x"}}},  # 0.1's layout
     "out/robustness.json was written by timm-xbn 0.1 in an older layout, which cannot be resumed; use another output folder"),
])
def test_results_file_of_the_wrong_shape_in_the_resume_folder(setup, content, message):
    (setup / "out").mkdir()
    (setup / "out" / "robustness.json").write_text(json.dumps(content))
    assert_one_line_error(run(eval_app, eval_args("robustness")), message)
    assert json.loads((setup / "out" / "robustness.json").read_text()) == content  # left as it was


def test_corruption_results_file_of_the_wrong_shape(setup):
    (setup / "out").mkdir()
    bad = {"kind": "corruption", "schema": 2, "run": {}, "models": {}, "skipped_images": {},
           "cells": [{"model": "resnet18", "method": "source", "pair": "contrast/1", "correct1": "3"}]}
    (setup / "out" / "corruption-resnet18.json").write_text(json.dumps(bad))
    assert_one_line_error(run(eval_app, eval_args("corruption")),
                          "corruption-resnet18.json: cells[0].correct1: expected int, got str")


@pytest.mark.parametrize("args, message", [
    (["resnet18", "--output", "a_file"], "--output a_file is a file; give a folder"),
    (["resnet18", "--output", "a_file/sub"], "--output a_file/sub is not writable: Not a directory"),
    (["resnet18", "--checkpoint", "notes.txt", "--output", "new"], "--checkpoint notes.txt is neither a .safetensors file"),
    (["resnet50", "--authors", "notes.txt", "--output", "new"], "--authors notes.txt is neither a .safetensors file"),
])
def test_convert_errors(setup, args, message):
    assert_one_line_error(run(convert_app, args), message)
    assert not (setup / "new").exists() and (setup / "a_file").read_text() == "keep me\n"


def test_convert_failing_after_the_output_check_leaves_no_empty_folder(setup):
    result = run(convert_app, ["convnext_atto", "--output", "new"])  # no BatchNorm: fails after the folder was made
    assert result.exit_code == 2 and "no BatchNorm" in result.stderr
    assert not (setup / "new").exists()


def test_hub_push_results_of_the_wrong_inner_shape_write_nothing(setup):
    esm = {"kind": "esm", "dataset": "d", "models": {"resnet18": {
        "mean_esm_sigma": 0.3, "layers": [{"name": "bn1", "esm_sigma": "large"}]}}}
    (setup / "esm.json").write_text(json.dumps(esm))
    result = run(hub_app, ["push", "--model", "resnet18", "--model-kwargs", KWARGS, "--checkpoint", "r18.safetensors",
                           "--repo-id", "me/r18", "--results", "esm.json", "--dry-run", "repo"])
    assert_one_line_error(result, "esm.json (esm results) does not have the shape xbn-train / xbn-eval write: "
                                  "models['resnet18'].layers[0].esm_sigma: expected a number, got str")
    assert not (setup / "repo").exists()
    assert sorted(p.name for p in setup.iterdir() if p.name.startswith(".")) == []  # no staging folder left


@pytest.mark.parametrize("args, message", [
    (["info", "./missing_folder"], "no local folder ./missing_folder, and it is not a Hub repo id ORG/NAME either"),
    (["pull", "me/model", "--output", "a_file"], "--output a_file is a file; give a folder"),
    (["push", "--model", "resnet18", "--checkpoint", "notes.txt", "--repo-id", "me/r18", "--dry-run", "repo"],
     "--checkpoint notes.txt is neither a .safetensors file"),
])
def test_hub_errors(setup, args, message):
    assert_one_line_error(run(hub_app, args), message)
    assert not (setup / "repo").exists()
