"""Issue 21: what a hostile user broke. No silent wrong numbers (refuse in one line, or warn and compute the
right number), no lost results (one lock per output folder, atomic writes), no tracebacks."""
import copy
import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from timm_xbn.utils.files import OutputWriteError, atomic_write
from timm_xbn.cli import convert_app, eval_app, hub_app, train_app
from timm_xbn.evaluation.results import claim_output_dir, write_csv, write_json_atomic

from test_hub import CONVERTED, randomized, results_files, write_checkpoint
from test_training import TINY, _error_line

runner = CliRunner()
TINY_R26 = json.dumps({"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8, "num_classes": 3})


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _listing(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# ---- atomic writes: a full disk keeps the earlier results and leaves no temporary file ---------------------


def test_failed_json_csv_and_figure_writes_keep_the_earlier_files(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from timm_xbn.evaluation.plots import save_figure

    write_json_atomic(tmp_path / "r.json", {"top1": 50.0})
    write_csv(tmp_path / "r.csv", [{"a": 1}])
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "r.png")
    before = {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)}

    def half_then_full(self, text, *args, **kwargs):  # writes part of the data, then the disk is full
        Path.write_bytes(self, text[:3].encode())
        _disk_full()

    def rows_then_full(self, rows):
        self.writerow(rows[0])
        _disk_full()

    monkeypatch.setattr(Path, "write_text", half_then_full)
    monkeypatch.setattr(csv.DictWriter, "writerows", rows_then_full)
    for write in (lambda: write_json_atomic(tmp_path / "r.json", {"top1": 99.0}),
                  lambda: write_csv(tmp_path / "r.csv", [{"a": 2}])):
        with pytest.raises(OutputWriteError, match=r"cannot write .*r\.(json|csv): No space left on device"):
            write()
    monkeypatch.undo()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    monkeypatch.setattr(fig, "savefig", lambda path, **kw: (Path(path).write_bytes(b"\x89PNG half"), _disk_full()))
    with pytest.raises(OutputWriteError, match=r"cannot write .*r\.png: No space left on device"):
        save_figure(fig, tmp_path / "r.png")
    assert {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)} == before  # no .tmp left either


def test_atomic_write_turns_torchs_write_failure_into_one_line(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"old")
    with pytest.raises(OutputWriteError, match=r"cannot write .*w\.pt: write failed"):
        with atomic_write(tmp_path / "w.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
    assert _listing(tmp_path) == ["w.pt"] and (tmp_path / "w.pt").read_bytes() == b"old"


def test_disk_full_during_a_training_checkpoint_keeps_last_and_leaves_no_tmp(tmp_path, monkeypatch):
    import torch.nn as nn
    from timm.task import ClassificationTask

    from timm_xbn.training.checkpoint import TrainCheckpointSaver

    task = ClassificationTask(nn.Linear(3, 2), verbose=False)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    saver = TrainCheckpointSaver(task, optimizer, {"model": "linear"}, lambda: {"progress": {"num_updates": 1}},
                                 checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.0)
    before = {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)}
    real_save = torch.save

    def save_then_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # truncated by the full disk
        _disk_full()

    monkeypatch.setattr(torch, "save", save_then_full)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        saver.save_checkpoint(1, metric=2.0)
    assert {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)} == before


def test_disk_full_in_an_eval_command_is_one_line_naming_the_file(image_folder, tmp_path, monkeypatch):
    root = image_folder(classes=3, per_class=2, size=32)
    ckpt = write_checkpoint(timm.create_model("resnet26", **json.loads(TINY_R26)), tmp_path / "r26.safetensors")
    args = ["esm", "-m", "resnet26", "--checkpoint", ckpt, "--model-kwargs", TINY_R26, "--data-dir", root,
            "--img-size", 32, "-b", 3, "-j", 0, "--device", "cpu", "-o", tmp_path / "out"]
    args = [str(a) for a in args]
    assert runner.invoke(eval_app, args).exit_code == 0
    before = {name: (tmp_path / "out" / name).read_bytes() for name in _listing(tmp_path / "out")}
    monkeypatch.setattr(Path, "write_text", _disk_full)
    line = _error_line(runner.invoke(eval_app, args))
    assert line == f"error: cannot write {tmp_path / 'out' / 'esm.json'}: No space left on device"
    monkeypatch.undo()
    assert {name: (tmp_path / "out" / name).read_bytes() for name in _listing(tmp_path / "out")} == before


# ---- xbn-train: data splits, NaN, the experiment lock, the card of model_best --------------------------------


def _train_args(data: Path, tmp_path: Path, *extra: str):
    from timm_xbn.training import build_args

    return build_args(argv=["--data-dir", str(data), *TINY, "--output", str(tmp_path / "out"), *extra])


def test_validation_split_missing_a_class_is_scored_by_class_name(image_folder, tmp_path):
    from timm_xbn.training.data import create_datasets

    image_folder("data/train", classes=3, per_class=2, size=32)
    val = image_folder("data/validation", classes=3, per_class=2, size=32, seed=1)
    for image in (val / "class_1").iterdir():
        image.unlink()
    (val / "class_1").rmdir()
    warnings = []
    _, evaluation = create_datasets(_train_args(tmp_path / "data", tmp_path), warn=warnings.append)
    # each validation image's label is the training index of its folder's name (class_2 is index 2, not 1)
    labels = {Path(f).parent.name: t for f, t in evaluation.reader.samples}
    assert labels == {"class_0": 0, "class_2": 2}
    assert len(warnings) == 1 and "has 2 of the 3 training classes (missing class_1)" in warnings[0]


def test_validation_class_unknown_to_training_and_no_validation_split_are_refused(image_folder, tmp_path):
    from timm_xbn.training.data import create_datasets

    image_folder("data/train", classes=2, per_class=2, size=32)
    with pytest.raises(ValueError, match=r"no validation split in .*data \(looked for validation/.*--val-split ''"):
        create_datasets(_train_args(tmp_path / "data", tmp_path))
    _, evaluation = create_datasets(_train_args(tmp_path / "data", tmp_path, "--val-split", ""))
    assert evaluation is None
    image_folder("data/validation", classes=3, per_class=1, size=32)
    with pytest.raises(ValueError, match="classes the training split lacks: class_2"):
        create_datasets(_train_args(tmp_path / "data", tmp_path))


def test_symlink_loop_in_a_data_folder_is_refused(image_folder, tmp_path):
    from timm_xbn.evaluation.data import validate_data_dir
    from timm_xbn.training.data import create_datasets

    root = image_folder("data/train", classes=2, per_class=2, size=32).parent
    image_folder("data/validation", classes=2, per_class=2, size=32)
    (root / "train" / "class_0" / "loop").symlink_to(root / "train")
    with pytest.raises(ValueError, match=r"symbolic link loop: .*class_0/loop -> "):
        validate_data_dir(root / "train")
    with pytest.raises(ValueError, match="symbolic link loop"):
        create_datasets(_train_args(root, tmp_path))
    (root / "train" / "class_0" / "loop").unlink()
    (root / "train" / "class_0" / "elsewhere").symlink_to(root / "validation" / "class_1")  # a link, not a loop
    assert validate_data_dir(root / "train") == root / "train"


def _nan_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(path))
    return path


def test_nan_weights_are_refused_by_eval_train_and_push(image_folder, tmp_path):
    from timm_xbn.training.checkpoint import load_training_checkpoint
    from timm_xbn.training.model import create_train_model

    root = image_folder(classes=3, per_class=2, size=32)
    kwargs = json.loads(TINY_R26)
    bad = _nan_checkpoint(timm.create_model("resnet26", **kwargs), tmp_path / "nan.safetensors")
    expected = f"checkpoint {bad} holds NaN or infinite values in fc.weight"
    line = _error_line(runner.invoke(eval_app, [str(a) for a in [
        "robustness", "-m", "resnet26", "--checkpoint", bad, "--model-kwargs", TINY_R26, "--data-dir", root,
        "--img-size", 32, "-d", 0.1, "--seeds", 2, "-j", 0, "--device", "cpu", "-o", tmp_path / "o"]]))
    assert expected in line
    with pytest.raises(ValueError, match="holds NaN or infinite values in fc.weight"):
        create_train_model(_train_args_r26(root, tmp_path, bad), in_chans=3)
    with pytest.raises(ValueError, match="nan.pth.tar holds NaN or infinite values in fc.weight"):
        load_training_checkpoint(_nan_training_checkpoint(bad, tmp_path / "nan.pth.tar"))
    line = _error_line(runner.invoke(hub_app, ["push", "--model", "resnet26", "--model-kwargs", TINY_R26, "--checkpoint",
                                               str(bad), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "repo")]))
    assert expected in line and not (tmp_path / "repo").exists()


def _nan_training_checkpoint(weights: Path, path: Path) -> Path:
    torch.save({"state_dict": load_file(weights), "progress": {"epoch": 1}}, path)
    return path


def _train_args_r26(root: Path, tmp_path: Path, checkpoint: Path):
    from timm_xbn.training import build_args

    return build_args(argv=["--data-dir", str(root), "--model", "resnet26", "--model-kwargs", "layers=[1,1,1,1]",
                            "channels=[8,16,32,64]", "stem_width=8", "--num-classes", "3", "--initial-checkpoint",
                            str(checkpoint), "--output", str(tmp_path / "o")])


def test_diverged_training_is_refused_not_reported(image_folder, tmp_path):
    from timm_xbn.training import train

    image_folder("data/train", classes=3, per_class=4, size=32)
    image_folder("data/validation", classes=3, per_class=2, size=32, seed=1)
    with pytest.raises(ValueError, match="training diverged: the train loss of epoch 0 is (nan|inf)"):
        train(_train_args(tmp_path / "data", tmp_path, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0",
                          "--experiment", "e"))
    assert not (tmp_path / "out" / "e" / "results.json").exists()


def test_second_run_on_a_busy_experiment_fails_and_leaves_the_first_runs_files(image_folder, tmp_path):
    from timm_xbn.training import train

    image_folder("data/train", classes=3, per_class=4, size=32)
    image_folder("data/validation", classes=3, per_class=2, size=32, seed=1)
    folder = tmp_path / "out" / "e"
    with claim_output_dir(folder):  # the first run, still training
        (folder / "summary.csv").write_text("epoch,train_loss\n0,1.0\n")
        with pytest.raises(ValueError, match=r"--experiment .*e is in use by another run"):
            train(_train_args(tmp_path / "data", tmp_path, "--epochs", "1", "--experiment", "e"))
        assert (folder / "summary.csv").read_text() == "epoch,train_loss\n0,1.0\n"


def test_card_of_model_best_shows_that_checkpoints_accuracy(image_folder, tmp_path):
    """The results name the weights they were measured on; a push of model_best gets the best epoch's
    top-1, of the final weights the last epoch's, and of other weights an error."""
    from timm_xbn.evaluation.models import weights_sha1
    from timm_xbn.hub import push
    from timm_xbn.hub.card import card_results
    from timm_xbn.training import train

    image_folder("data/train", classes=3, per_class=8, size=32)
    image_folder("data/validation", classes=3, per_class=4, size=32, seed=1)
    train(_train_args(tmp_path / "data", tmp_path, "--epochs", "2", "--experiment", "e"))
    folder = tmp_path / "out" / "e"
    results = json.loads((folder / "results.json").read_text())
    rows = list(csv.DictReader((folder / "summary.csv").open()))
    top1 = [float(r["eval_top1"]) for r in rows]
    assert results["best"]["epoch"] == top1.index(max(top1))  # timm ranks by top-1, the earlier epoch on ties
    assert results["best"]["top1"] == pytest.approx(max(top1))
    model = timm.create_model("xbn_converted", base_model="resnet26", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64],
                              stem_width=8, num_classes=3)
    model.load_state_dict(load_file(folder / "model_best.safetensors"))
    assert weights_sha1(model) == results["best"]["weights_sha1"]
    last = torch.load(folder / "last.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(last)
    assert weights_sha1(model) == results["weights_sha1"]

    # the card: a hand-made file whose best and last epochs differ (as in the issue: 50 % vs 16.67 %)
    best, final = (randomized(copy.deepcopy(model), seed=s) for s in (1, 2))
    fake = dict(results, val_top1=16.67, val_top5=100.0, best=dict(results["best"], top1=50.0, top5=100.0,
                                                                    weights_sha1=weights_sha1(best)),
                weights_sha1=weights_sha1(final))
    (tmp_path / "train.json").write_text(json.dumps(fake))
    for weights, top1 in ((best, 50.0), (final, 16.67)):
        push(weights, "someone/tiny", results=[tmp_path / "train.json"], dry_run=tmp_path / f"repo{top1}")
        shown = {r["metric"]: r["value"] for r in card_results(tmp_path / f"repo{top1}" / "README.md")}
        assert shown["Top 1 Accuracy"] == top1
    with pytest.raises(ValueError, match="measured on other weights than this checkpoint"):
        push(randomized(copy.deepcopy(model), seed=3), "someone/tiny", results=[tmp_path / "train.json"], dry_run=tmp_path / "r3")


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_non_finite_results_never_reach_a_card(tmp_path, value):
    name, kwargs = CONVERTED
    checkpoint = write_checkpoint(randomized(timm.create_model(name, **kwargs)), tmp_path / "c.safetensors")
    paths = results_files(tmp_path, model=name)
    paths["train"].write_text(paths["train"].read_text().replace("71.234", value))
    line = _error_line(runner.invoke(hub_app, ["push", "--model", name, "--model-kwargs", json.dumps(kwargs),
                                               "--checkpoint", str(checkpoint), "--repo-id", "someone/tiny", "--results",
                                               str(paths["train"]), "--dry-run", str(tmp_path / "repo")]))
    assert f"val_top1: expected a finite number, got {float(value)}" in line


# ---- checkpoints given to the wrong model, --resume files, .npy files --------------------------------------


def test_fewer_checkpoints_than_models_is_refused_unless_pretrained():
    from timm_xbn.evaluation import build_model_specs

    with pytest.raises(ValueError, match="1 checkpoint\\(s\\) for 2 models: the others would be scored with random weights"):
        build_model_specs(["resnet18", "resnet26"], ["a.safetensors"])
    specs = build_model_specs(["resnet18", "resnet26"], ["a.safetensors"], pretrained=True)
    assert [(s.checkpoint, s.pretrained) for s in specs] == [("a.safetensors", True), (None, True)]


def test_resume_file_problems_are_named_for_what_they_are(image_folder, tmp_path):
    import argparse

    from timm_xbn.training.checkpoint import load_training_checkpoint

    (tmp_path / "random.pth.tar").write_bytes(np.random.default_rng(0).bytes(2000))
    (tmp_path / "run.json").write_text('{"kind": "train"}')
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth.tar")
    for name, message in (("random.pth.tar", "not a torch checkpoint, or truncated (it starts with b'"),
                          ("run.json", "not a torch checkpoint, or truncated (it starts with b'{\"kind\": \"tr')"),
                          ("pickled.pth.tar", "it holds pickled Python objects, which are never loaded (argparse.Namespace)")):
        with pytest.raises(ValueError) as err:
            load_training_checkpoint(tmp_path / name)
        assert message in str(err.value) and "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    image_folder("data/train", classes=3, per_class=2, size=32)
    image_folder("data/validation", classes=3, per_class=1, size=32)
    line = _error_line(runner.invoke(train_app, ["--data-dir", str(tmp_path / "data"), *TINY, "--output", str(tmp_path),
                                                 "--experiment", "e", "--resume", str(tmp_path)]))
    assert f"--resume {tmp_path} is a folder; give a checkpoint file in it" in line


def test_a_garbage_npy_is_not_called_pickled_data(tmp_path):
    from timm_xbn.corruptions import CifarC

    np.save(tmp_path / "labels.npy", np.zeros(5, dtype=np.int64))
    (tmp_path / "fog.npy").write_bytes(b"garbage, not an array")
    with pytest.raises(ValueError) as err:
        CifarC(tmp_path, {"input_size": (3, 32, 32)}, corruptions=["fog"])
    assert "fog.npy is not a .npy array file (it starts with b'garbag')" in str(err.value)
    assert "pickle" not in str(err.value)
    np.save(tmp_path / "fog.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="fog.npy is not a plain numeric .npy array"):
        CifarC(tmp_path, {"input_size": (3, 32, 32)}, corruptions=["fog"])


def test_clean_error_outside_0_to_100_is_refused(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("timm_xbn.evaluation.create_models", lambda *a, **k: pytest.fail("models built"))
    root = image_folder(classes=3, per_class=1, size=32)
    for command in ("corruption", "adapt"):
        line = _error_line(runner.invoke(eval_app, [command, "-m", "resnet18", "--data-dir", str(root), "--clean-error",
                                                    "150", "-o", str(tmp_path / command)]))
        assert line == "error: --clean-error is a top-1 error in percent (0-100), got 150.0"


# ---- xbn-convert, launcher, offline Hub ----------------------------------------------------------------------


def test_convert_onto_an_existing_export_needs_overwrite(tmp_path):
    out = tmp_path / "export"
    args = ["resnet26", "--model-kwargs", TINY_R26, "--groups", "4", "--output", str(out)]
    assert runner.invoke(convert_app, args).exit_code == 0
    before = {name: (out / name).read_bytes() for name in _listing(out)}
    line = _error_line(runner.invoke(convert_app, args[:-2] + ["--every", "2", "--output", str(out)]))
    assert f"--output {out} already holds an export (model.safetensors, config.json); pass --overwrite" in line
    assert {name: (out / name).read_bytes() for name in _listing(out)} == before
    assert runner.invoke(convert_app, args[:-2] + ["--every", "2", "--output", str(out), "--overwrite"]).exit_code == 0
    assert json.loads((out / "config.json").read_text())["model_args"]["every"] == 2
    assert _listing(out) == sorted(before)  # no staging folder left


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE with an empty Hub cache; any download attempt fails the test."""
    from huggingface_hub import constants

    import timm_xbn.models.pretrained as pretrained

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr("timm_xbn.hub.publish.hf_hub_download", lambda *a, **k: pytest.fail("download attempted"))
    monkeypatch.setattr("timm.models._builder.load_pretrained", lambda *a, **k: pytest.fail("download attempted"))


def test_offline_pretrained_and_hub_info_fail_in_one_line(image_folder, tmp_path, offline):
    from timm_xbn.launch import main

    root = image_folder(classes=3, per_class=1, size=32)
    line = _error_line(runner.invoke(eval_app, ["esm", "-m", "resnet18", "--pretrained", "--data-dir", str(root),
                                                "-o", str(tmp_path / "o"), "-j", "0"]))
    assert "no pretrained weights for resnet18: Hub repo timm/resnet18" in line
    assert "HF_HUB_OFFLINE is set. Use local weights instead: --checkpoint FILE" in line
    line = _error_line(runner.invoke(hub_app, ["info", "someone/model"]))
    assert line == ("error: cannot read someone/model from the Hub: the repo is not in the local Hub cache and "
                    "HF_HUB_OFFLINE is set; pull it once online (xbn-hub pull someone/model -o DIR) and run "
                    "xbn-hub info DIR")
    script = tmp_path / "validate.py"
    script.write_text("raise SystemExit('validate.py ran')\n")
    with pytest.raises(SystemExit) as exited:  # validate.py would load pretrained weights
        main([str(script), "--model", "resnet18"])
    assert exited.value.code == 2


def test_launcher_refuses_a_pickled_checkpoint_for_validate_py(tmp_path, capsys):
    import argparse

    from timm_xbn.launch import main

    script = tmp_path / "validate.py"
    script.write_text("raise SystemExit('validate.py ran')\n")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth.tar")
    with pytest.raises(SystemExit) as exited:
        main([str(script), "--model", "resnet18", "--checkpoint", str(tmp_path / "pickled.pth.tar")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --checkpoint {tmp_path / 'pickled.pth.tar'}: it holds pickled Python objects, which are "
                   "never loaded (argparse.Namespace)"]
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "ok.pth.tar")
    with pytest.raises(SystemExit, match="validate.py ran"):
        main([str(script), "--model", "resnet18", "--checkpoint", str(tmp_path / "ok.pth.tar")])


# ---- xbn-eval study / study-compare ------------------------------------------------------------------------


@pytest.fixture
def no_study(monkeypatch):
    monkeypatch.setattr("timm_xbn.study.run_study", lambda *a, **k: pytest.fail("the study started"))


def test_study_output_and_options_are_checked_before_the_study_starts(tmp_path, no_study):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["-o", str(a_file)], f"error: --output {a_file} is a file; give a folder (it is created if missing)"),
        (["-o", str(a_file / "sub")], f"error: --output {a_file / 'sub'} is not writable: Not a directory"),
        (["--train-samples", "0", "-o", str(tmp_path / "s")], "error: --train-samples must be at least the batch size (64), got 0"),
    ]
    for args, expected in cases:
        assert _error_line(runner.invoke(eval_app, ["study", "--quick", *args])) == expected
    folder = tmp_path / "busy"
    with claim_output_dir(folder):  # another study on this folder
        line = _error_line(runner.invoke(eval_app, ["study", "--quick", "-o", str(folder)]))
    assert line == f"error: --output {folder} is in use by another run; wait for it to finish or give another folder"


def test_study_runs_inside_the_lock(tmp_path, monkeypatch):
    seen = []

    def fake_study(cfg, folder, **kwargs):
        with pytest.raises(ValueError, match="in use by another run"):
            with claim_output_dir(folder):
                pass
        seen.append(folder)

    monkeypatch.setattr("timm_xbn.study.run_study", fake_study)
    assert runner.invoke(eval_app, ["study", "--quick", "-o", str(tmp_path / "s")]).exit_code == 0
    assert seen == [tmp_path / "s"]


@pytest.mark.parametrize("content, message", [
    ('{"kind": "study"}', "is a damaged or incomplete study results file: threads: missing"),
    ('{"kind": "study", "threads": 1, "dataset": {"name": "d"}, "claims": 5}', "claims: expected a list, got int"),
    ('{"kind": "study", "threads": 1, "dataset": {"name": "d"}, "claims": [{"id": "c1"}]}', "claims[0].claim: missing"),
    ("[1, 2]", "is not a study results file (kind 'list')"),
])
def test_study_compare_names_what_is_wrong_with_a_results_file(tmp_path, content, message):
    (tmp_path / "study.json").write_text(content)
    line = _error_line(runner.invoke(eval_app, ["study-compare", str(tmp_path), str(tmp_path)]))
    assert message in line


def test_permission_and_disk_errors_anywhere_are_one_line_naming_the_path():
    import typer

    from timm_xbn.commands.options import handle_errors

    app = typer.Typer()

    @app.command()
    @handle_errors
    def command(code: int) -> None:
        raise OSError(code, os.strerror(code), "/results/x.json")

    for code in (errno.EACCES, errno.ENOSPC, errno.EROFS):
        assert _error_line(runner.invoke(app, [str(code)])) == f"error: {os.strerror(code)}: /results/x.json"
    assert isinstance(runner.invoke(app, [str(errno.EBADF)]).exception, OSError)  # a bug, not the machine: traceback


# The parent's pool worker runs a job that sleeps (bounded work) and then writes SURVIVED: a worker that
# goes on after its study process is killed fails the test once that job ends, instead of hanging it.
KILLED_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from timm_xbn.study.jobs import _exit_with_parent


def job(marker):
    time.sleep(300)
    open(marker, "w").write("survived")


if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(job, sys.argv[1])
        time.sleep(300)
"""


def test_study_workers_end_when_the_study_process_is_killed(tmp_path):
    """SIGKILL (or a SIGTERM that skips the pool's shutdown) of the study process must not leave its
    workers training on for nobody: each worker watches its parent and exits when it is gone."""
    import signal
    import subprocess
    import sys

    from process_events import alive, wait_until_gone

    script, survived = tmp_path / "parent.py", tmp_path / "SURVIVED"
    script.write_text(KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(survived)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    worker = int(parent.stdout.readline())
    assert Path(f"/proc/{worker}").exists()
    parent.send_signal(signal.SIGKILL)
    assert parent.wait() == -signal.SIGKILL
    wait_until_gone(worker)
    assert not alive(worker) and not survived.exists(), "the worker outlived its study process"
