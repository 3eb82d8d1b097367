"""Issue 33: the hostile cases still mishandled. Each is one red line (exit 2) naming what is wrong, or the right
number; no traceback, no file of an earlier run lost, no temporary file left."""
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from timm_xbn.cli import eval_app, hub_app, train_app
from timm_xbn.utils.errors import user_message
from timm_xbn.utils.files import OutputWriteError

from test_evaluation import CLASSES, make_model
from test_hub import CONVERTED, randomized, write_checkpoint
from test_training import TINY, _error_line

runner = CliRunner()


def _listing(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# ---- disk full while xbn-train saves a checkpoint ------------------------------------------------------------


def test_torch_saves_unexpected_pos_on_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import torch.nn as nn
    from timm.task import ClassificationTask

    from timm_xbn.training.checkpoint import TrainCheckpointSaver

    task = ClassificationTask(nn.Linear(3, 2), verbose=False)
    saver = TrainCheckpointSaver(task, torch.optim.SGD(task.parameters(), lr=0.1), {"model": "linear"},
                                 lambda: {"progress": {"num_updates": 1}}, checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.0)
    before = {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)}
    real_save = torch.save

    def save_then_full(obj, f, *args, **kwargs):  # what torch.save raises when the disk fills mid-archive
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:64])
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 50")

    monkeypatch.setattr(torch, "save", save_then_full)
    with pytest.raises(OutputWriteError) as failed:
        saver.save_checkpoint(1, metric=2.0)
    assert user_message(failed.value) == f"cannot write {tmp_path / 'tmp.pth.tar'}: write failed (disk full?)"
    assert {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)} == before  # no temp file either


def test_xbn_train_on_a_disk_that_fills_at_the_second_checkpoint_is_one_line(three_classes, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def full_at_second(obj, f, *args, **kwargs):
        calls.append(f)
        real_save(obj, f, *args, **kwargs)
        if len(calls) > 1:
            Path(f).write_bytes(Path(f).read_bytes()[:64])
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 50")

    out = tmp_path / "o"
    argv = ["--data-dir", str(three_classes), *TINY, "--epochs", "2", "--warmup-epochs", "0", "-o", str(out),
            "--experiment", "e"]
    monkeypatch.setattr(torch, "save", full_at_second)
    line = _error_line(runner.invoke(train_app, argv))
    assert line == f"error: cannot write {out / 'e' / 'tmp.pth.tar'}: write failed (disk full?)"
    last = torch.load(out / "e" / "last.pth.tar", weights_only=True)
    assert last["epoch"] == 0  # the first epoch's checkpoint, intact
    assert not [p.name for p in (out / "e").iterdir() if "tmp" in p.name]


# ---- xbn-eval study on a one-class ImageFolder ---------------------------------------------------------------


def test_study_on_a_one_class_folder_is_one_line(image_folder, tmp_path):
    root = image_folder("one", classes=1, per_class=6, size=16)
    line = _error_line(runner.invoke(eval_app, ["study", "--quick", "--dataset", str(root), "-o", str(tmp_path / "s")]))
    assert line == (f"error: ImageFolder {root} has 1 class folder (class_0); the study trains classifiers: "
                    "give at least 2 classes")


# ---- xbn-train --num-classes below the class folders --------------------------------------------------------


@pytest.fixture
def three_classes(image_folder):
    """train/ and validation/ splits of 3 class folders."""
    image_folder("data/validation", classes=3, per_class=2, size=32, seed=1)
    return image_folder("data/train", classes=3, per_class=4, size=32, seed=0).parent


def test_train_with_fewer_outputs_than_class_folders_is_one_line(three_classes, tmp_path):
    at = TINY.index("--num-classes") + 1
    tiny = [*TINY[:at], "2", *TINY[at + 1:]]
    line = _error_line(runner.invoke(train_app, ["--data-dir", str(three_classes), *tiny, "-o", str(tmp_path / "o")]))
    assert line == "error: the training split has 3 class folders but the model has 2 outputs: pass --num-classes 3 " \
                   "(or a --class-map of at most 2 classes)"


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--warmup-lr", "nan"),
                                         ("--min-lr", "-1"), ("--lr-base", "inf")])
def test_non_finite_or_negative_learning_rates_are_refused_with_warmup(flag, value, three_classes, tmp_path):
    argv = ["--data-dir", str(three_classes), *TINY, "--warmup-epochs", "1", flag, value, "-o", str(tmp_path / "o")]
    line = _error_line(runner.invoke(train_app, argv))
    assert line.startswith(f"error: {flag} must be a finite number >= 0, got ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("experiment", ["../../x", "../x", "a/../../x", "/tmp/x"])
def test_an_experiment_that_leaves_the_output_folder_is_refused(experiment, three_classes, tmp_path):
    out = tmp_path / "deep" / "out"
    line = _error_line(runner.invoke(train_app, ["--data-dir", str(three_classes), *TINY, "-o", str(out),
                                                 "--experiment", experiment]))
    assert line == f"error: --experiment {experiment} must be a folder name inside --output, not a path that leaves it"
    assert _listing(tmp_path) == ["data"]


# ---- xbn-hub push: offline, no network, a license with a newline ---------------------------------------------


@pytest.fixture
def push_args(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    name, kwargs = CONVERTED
    ckpt = write_checkpoint(randomized(timm.create_model(name, **kwargs)), tmp_path / "ckpt.safetensors")
    return ["push", "--model", name, "--model-kwargs", json.dumps(kwargs), "--checkpoint", str(ckpt),
            "--repo-id", "someone/tiny"]


def test_push_offline_is_one_line_naming_the_service(push_args, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = _error_line(runner.invoke(hub_app, push_args))
    assert line == ("error: cannot push someone/tiny to the Hugging Face Hub (https://huggingface.co): HF_HUB_OFFLINE "
                    "is set; nothing was uploaded (check the connection, or write the repo folder with --dry-run DIR)")


def test_push_without_network_is_one_line_naming_the_service(push_args, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    line = _error_line(runner.invoke(hub_app, push_args))
    assert line.startswith("error: cannot push someone/tiny to the Hugging Face Hub (http://127.0.0.1:9): no connection "
                           "(ConnectError: offline or no network?)")


@pytest.mark.parametrize("license", ["mit\nevil: yes", "apache-2.0 ", "", "a: b"])
def test_a_license_that_is_not_an_id_is_refused_before_anything_is_written(license, push_args, tmp_path):
    line = _error_line(runner.invoke(hub_app, [*push_args, "--license", license, "--dry-run", str(tmp_path / "repo")]))
    assert line == f"error: --license {license!r} is not a license id (letters, digits and .-+_, e.g. apache-2.0 or other)"
    assert not (tmp_path / "repo").exists()
    ok = runner.invoke(hub_app, [*push_args, "--license", "cc-by-nc-4.0", "--dry-run", str(tmp_path / "repo")])
    assert ok.exit_code == 0, ok.output
    assert "\nlicense: cc-by-nc-4.0\n" in (tmp_path / "repo" / "README.md").read_text()


# ---- python -m timm_xbn.launch validate.py / inference.py ----------------------------------------------------


@pytest.fixture
def scripts(tmp_path):
    for name in ("validate.py", "inference.py"):
        (tmp_path / name).write_text(f"raise SystemExit('{name} ran')\n")
    return tmp_path


def _launch_line(argv, capsys):
    from timm_xbn.launch import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_validate_without_model_checks_the_default_dpn92(scripts, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr("timm_xbn.models.pretrained.check_pretrained", lambda name: (seen.append(name), _offline(name)))
    line = _launch_line([str(scripts / "validate.py"), "--data-dir", "x"], capsys)
    assert seen == ["dpn92"] and line == "error: no pretrained weights for dpn92 (offline)"


def _offline(name):
    from timm_xbn.utils.errors import UserError

    raise UserError(f"no pretrained weights for {name} (offline)")


def test_inference_with_a_pickle_checkpoint_is_refused_unloaded(scripts, capsys):
    import argparse

    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, scripts / "pickled.pth.tar")
    line = _launch_line([str(scripts / "inference.py"), "--model", "resnet18", "--checkpoint",
                         str(scripts / "pickled.pth.tar")], capsys)
    assert line == (f"error: --checkpoint {scripts / 'pickled.pth.tar'}: it holds pickled Python objects, which are "
                    "never loaded (argparse.Namespace)")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, scripts / "ok.pth.tar")
    from timm_xbn.launch import main

    with pytest.raises(SystemExit, match="inference.py ran"):
        main([str(scripts / "inference.py"), "--model", "resnet18", "--checkpoint", str(scripts / "ok.pth.tar")])


def test_validate_accepts_a_checkpoint_folder_as_its_bulk_mode(scripts, capsys):
    import argparse

    from timm_xbn.launch import main

    folder = scripts / "checkpoints"
    folder.mkdir()
    line = _launch_line([str(scripts / "validate.py"), "--model", "resnet18", "--checkpoint", str(folder)], capsys)
    assert line == f"error: --checkpoint {folder} is a folder without checkpoints (*.pth.tar, *.pth)"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, folder / "checkpoint-1.pth.tar")
    torch.save({"w": torch.zeros(1)}, folder / "last.pth")
    with pytest.raises(SystemExit, match="validate.py ran"):
        main([str(scripts / "validate.py"), "--model", "resnet18", "--checkpoint", str(folder)])
    torch.save({"args": argparse.Namespace(lr=1)}, folder / "checkpoint-2.pth.tar")
    line = _launch_line([str(scripts / "validate.py"), "--model", "resnet18", "--checkpoint", str(folder)], capsys)
    assert line.startswith(f"error: --checkpoint {folder / 'checkpoint-2.pth.tar'}: it holds pickled Python objects")


def test_launcher_help_says_what_it_checks(capsys):
    from timm_xbn.launch import main

    assert main(["--help"]) == 0
    assert "a pickled checkpoint is refused, never loaded" in capsys.readouterr().out


# ---- unreadable images: every view counts the images it scored ----------------------------------------------


def _bad_files(root: Path) -> None:
    good = (root / "class_1" / "img_0.jpeg").read_bytes()
    (root / "class_0" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "class_1" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "class_2" / "empty.png").write_bytes(b"")
    os.symlink(root / "gone.jpg", root / "class_2" / "dangling.jpg")


def test_adabn_counts_the_images_it_scored_and_lists_the_skipped(image_folder):
    from timm_xbn.evaluation import adabn_table, create_eval_data
    from timm_xbn.grid import evaluate_adabn

    root = image_folder("bad", classes=CLASSES, per_class=5, size=40)
    model, clean = make_model(root)
    _bad_files(root)
    data = create_eval_data(root, clean.data_config, batch_size=6, workers=0)
    results = evaluate_adabn({"m": model}, data, mode="norm")
    files = len(data)
    skipped = results["skipped_images"]["target"]
    assert {c["count"] for c in results["cells"]} == {40} and results["results"]["m"]["count"] == 40
    assert skipped["count"] == files - 40 >= 3
    assert {"broken.jpg", "truncated.jpg", "empty.png"} <= {Path(f["file"]).name for f in skipped["files"]}
    assert adabn_table(results).title.endswith(f"40 images scored ({files - 40} unreadable skipped)")


def _document(counts, skipped):
    cells = [{"model": "m", "method": "source", "pair": pair, "count": n} for pair, n in counts.items()]
    return {"cells": cells, "skipped_images": {pair: {"count": k, "files": []} for pair, k in skipped.items()}}


def test_scored_images_reads_the_cells_not_the_files():
    from timm_xbn.evaluation.store import scored_images

    assert scored_images(_document({"fog/1": 40, "fog/2": 40}, {"fog/1": 2, "fog/2": 2})) == \
        "40 images scored (2 unreadable skipped)"
    assert scored_images(_document({"a": 38, "b": 40}, {"a": 2, "b": 0})) == "38-40 images scored (2 unreadable skipped)"
    assert scored_images(_document({"a": 38, "b": 40}, {"a": 2, "b": 0}), ["b"]) == "40 images scored"
    assert scored_images({"kind": "adabn"}) == ""


def test_shift_table_gives_each_sets_scored_images():
    from timm_xbn.grid.tables import shift_table

    document = {**_document({"imagenet-r": 9, "imagenet-a": 5}, {"imagenet-r": 1}),
                "grid": {"pairs": ["imagenet-r", "imagenet-a"]}, "results": {"m | source": {}},
                "run": {"sets": {"imagenet-r": {"files": 10}, "imagenet-a": {"files": 5}}}}
    assert shift_table(document).title.endswith("imagenet-r 9 images scored (1 unreadable skipped), "
                                                "imagenet-a 5 images scored")
