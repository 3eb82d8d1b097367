"""xbn-train: distributed training, exact kill-and-resume, checkpoints, options and surgery."""
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file
from typer.testing import CliRunner

import timm_xbn
from timm_xbn.cli import train_app
from timm_xbn.layers import is_batch_free
from timm_xbn.training import build_args, train
from timm_xbn.training.checkpoint import TrainCheckpointSaver, capture_rng_state, restore_rng_state
from timm_xbn.training.model import create_train_model
from timm.task import ClassificationTask

# A narrow one-block-per-stage ResNet-26 converted to XBNBlock-P2: trains in a fraction of a second per epoch.
# 32 groups: layer4's bn2 (64 channels) sees 1x1 maps at 32 px, where 64 groups would normalize one value each.
TINY = [
    "--convert-from", "resnet26", "--groups", "32", "--model-kwargs", "layers=[1,1,1,1]", "channels=[8,16,32,64]", "stem_width=8",
    "--num-classes", "3", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
]


@pytest.fixture
def data(image_folder):
    """ImageFolder root with train/ (3 classes x 8) and validation/ (3 x 4) splits of 32 px images."""
    train_dir = image_folder("data/train", classes=3, per_class=8, size=32, seed=0)
    image_folder("data/validation", classes=3, per_class=4, size=32, seed=1)
    return train_dir.parent


def _summary(folder: Path):
    with (folder / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_process_torchrun_trains_identical_replicas(data, tmp_path):
    out, weights = tmp_path / "out", tmp_path / "weights"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "timm_xbn.training", "--data-dir", str(data), *TINY, "--epochs", "3", "--lr", "0.02",
        "--warmup-epochs", "0", "--output", str(out), "--experiment", "ddp", "--debug-rank-weights", str(weights),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_file(weights / "rank0.safetensors"), load_file(weights / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # parameters and BN running statistics (dist_bn reduce) agree bit for bit
        assert torch.equal(rank0[key], rank1[key]), key
    init = create_train_model(build_args(argv=["--data-dir", str(data), *TINY]), in_chans=3).state_dict()
    assert any(not torch.equal(init[k], rank0[k]) for k in rank0)  # trained, not merely initialised alike
    rows = _summary(out / "ddp")
    losses = [float(r["train_loss"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert losses[-1] < 0.85 * losses[0], losses
    # 24 training images over 2 ranks x batch 4 = 3 updates per epoch: the data was sharded, not duplicated
    last = torch.load(out / "ddp" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert last["progress"]["num_updates"] == 9 and last["world_size"] == 2 and len(last["rng"]) == 2
    results = json.loads((out / "ddp" / "results.json").read_text())
    assert results["kind"] == "train" and results["epochs"] == 3 and results["timm_xbn_version"] == timm_xbn.__version__
    assert results["val_top1"] == pytest.approx(float(rows[-1]["eval_top1"]))
    assert 0.0 <= results["val_top1"] <= 100.0


@pytest.mark.parametrize("stop_after", [9, 13], ids=["mid-epoch-recovery", "epoch-boundary"])
def test_kill_and_resume_equals_uninterrupted_run(data, tmp_path, stop_after):
    """Stop after ``stop_after`` updates as if killed (6 updates per epoch, recovery every 2), resume
    from the newest checkpoint: 9 -> recovery at epoch 1 batch 2 (one update redone), 13 -> last.pth.tar
    of epoch 1. Mixup, drop-path, random erasing and EMA all draw random numbers along the way."""
    common = [
        "--data-dir", str(data), *TINY, "--epochs", "3", "--lr", "0.02", "--warmup-epochs", "1",
        "--mixup", "0.2", "--drop-path", "0.1", "--reprob", "0.3", "--model-ema", "--model-ema-decay", "0.9",
        "--recovery-interval", "2", "--output", str(tmp_path),
    ]
    train(build_args(argv=common + ["--experiment", "full", "--debug-rank-weights", str(tmp_path / "w_full")]))
    stopped = train(build_args(argv=common + ["--experiment", "cut", "--stop-after-steps", str(stop_after)]))
    assert stopped == {"kind": "train", "stopped_at_update": stop_after}
    assert not (tmp_path / "cut" / "results.json").exists()
    train(build_args(argv=common + ["--experiment", "cut", "--resume", "auto", "--debug-rank-weights", str(tmp_path / "w_cut")]))

    full, resumed = load_file(tmp_path / "w_full" / "rank0.safetensors"), load_file(tmp_path / "w_cut" / "rank0.safetensors")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    a = torch.load(tmp_path / "full" / "last.pth.tar", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pth.tar", map_location="cpu", weights_only=True)
    for key in a["state_dict_ema"]:
        assert torch.equal(a["state_dict_ema"][key], b["state_dict_ema"][key]), key
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"] and a["progress"] == b["progress"]
    assert _summary(tmp_path / "full") == _summary(tmp_path / "cut")  # rows of the redone epoch replaced, not duplicated


def test_checkpoints_load_weights_only_and_keep_timm_layout(data, tmp_path):
    args = build_args(argv=["--data-dir", str(data), *TINY, "--epochs", "4", "--lr", "0.02", "--warmup-epochs", "0",
                            "--checkpoint-hist", "2", "--output", str(tmp_path), "--experiment", "run"])
    results = train(args)
    folder = tmp_path / "run"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["args.yaml", "summary.csv", "results.json", "last.pth.tar", "model_best.pth.tar",
                            "model_best.safetensors"] + [f"checkpoint-{e}.pth.tar" for e in _top_epochs(folder, 2)])
    rows = _summary(folder)
    best_epoch = max(range(len(rows)), key=lambda i: (float(rows[i]["eval_top1"]), -i))
    best = torch.load(folder / "model_best.pth.tar", map_location="cpu", weights_only=True)
    assert best["epoch"] == best_epoch == results["best_epoch"]
    exported = load_file(folder / "model_best.safetensors")
    assert exported.keys() == best["state_dict"].keys()
    assert all(torch.equal(exported[k], best["state_dict"][k]) for k in exported)
    # the exported weights load into the registered architecture, and timm reads the training checkpoint
    model = timm.create_model("xbn_converted", base_model="resnet26", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64],
                              stem_width=8, num_classes=3)
    timm_xbn.models.load_weights(model, folder / "model_best.safetensors")
    timm.models.load_checkpoint(model, str(folder / "last.pth.tar"))
    last = torch.load(folder / "last.pth.tar", map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], last["state_dict"][k]) for k in last["state_dict"])
    assert last["args"]["convert_from"] == "resnet26" and last["progress"]["epoch"] == 4


def _top_epochs(folder: Path, k: int):
    """Epochs timm's ranking keeps: best eval_top1 first, earlier epoch on ties."""
    rows = _summary(folder)
    ranked = sorted(range(len(rows)), key=lambda i: (-float(rows[i]["eval_top1"]), i))
    return ranked[:k]


def test_failed_checkpoint_write_leaves_previous_checkpoint(tmp_path):
    task = ClassificationTask(nn.Linear(3, 2), verbose=False)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    extra = {"progress": {"num_updates": 1}}
    saver = TrainCheckpointSaver(task, optimizer, {"model": "linear"}, lambda: extra, checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.0)
    before = (tmp_path / "last.pth.tar").read_bytes()
    extra["progress"] = {"num_updates": lambda: None}  # not serialisable: the write fails part-way
    with pytest.raises(Exception):
        saver.save_checkpoint(1, metric=2.0)
    assert (tmp_path / "last.pth.tar").read_bytes() == before
    assert torch.load(tmp_path / "last.pth.tar", weights_only=True)["progress"]["num_updates"] == 1


def test_rng_state_roundtrip_is_exact():
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (torch.rand(4), np.random.normal(size=3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_state(torch.load(_roundtrip(state), weights_only=True))
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.normal(size=3), expected[1]) and random.random() == expected[2]


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_unknown_and_unsupported_keys_are_errors_naming_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: resnet50\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        build_args(recipe)
    recipe.write_text("model: resnet50\naug_splits: 3\n")
    with pytest.raises(ValueError, match="train.py key 'aug_splits' is not supported"):
        build_args(recipe)
    with pytest.raises(ValueError, match="'jsd_loss' is not supported"):
        build_args(argv=["--jsd-loss"])
    with pytest.raises(ValueError, match="unknown key 'epochz'"):
        build_args(epochz=3)
    with pytest.raises(ValueError, match="bad value for lr"):
        build_args(argv=["-c", str(_write(tmp_path, "lr: fast\n"))])
    with pytest.raises(ValueError, match="input_size"):
        build_args(_write(tmp_path, "input_size: 224\n"))
    # YAML 1.1 reads 1e-4 as a string: converted like the command line would
    args = build_args(_write(tmp_path, "weight_decay: 1e-4\nmean: ['0.5', 0.4, 0.3]\n"), argv=["--epochs", "7"])
    assert args.weight_decay == 1e-4 and args.mean == [0.5, 0.4, 0.3] and args.epochs == 7


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_cli_reports_bad_keys_in_one_line_and_trains(data, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(train_app, ["--data-dir", str(data), "--aug-repeats", "3"])
    assert bad.exit_code == 2
    assert "aug_repeats" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(train_app, ["--data-dir", str(data), "--model", "resnet18", "--model-kwargs", "channels=[8,16,32,64]",
                                   "stem_width=8", "--num-classes", "3", "--img-size", "32", "-b", "4", "--workers", "0",
                                   "--device", "cpu", "--epochs", "1", "--output", str(tmp_path), "--experiment", "cli"])
    assert ok.exit_code == 0, ok.output
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["model"] == "resnet18" and results["epochs"] == 1
    assert results["val_top1"] == pytest.approx(float(_summary(tmp_path / "cli")[0]["eval_top1"]))


def test_results_name_the_timm_model_so_a_card_takes_them(data, tmp_path):
    from timm_xbn.hub import push

    train(build_args(argv=["--data-dir", str(data), *TINY, "--epochs", "1", "--output", str(tmp_path), "--experiment", "x"]))
    path = tmp_path / "x" / "results.json"
    results = json.loads(path.read_text())
    assert results["model"] == "xbn_converted"  # the name timm.create_model takes, not a display label
    assert results["model_label"] == "xbn_converted(resnet26,P2,every=1,gn)"
    model = timm.create_model("xbn_converted", base_model="resnet26", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64],
                              stem_width=8, num_classes=3)
    model.load_state_dict(load_file(tmp_path / "x" / "model_best.safetensors"))
    # xbn-hub matches the file to the trained model by its architecture, with no --results-name
    push(model, "someone/tiny", results=[path], dry_run=tmp_path / "repo")
    card = (tmp_path / "repo" / "README.md").read_text()
    assert f"| {results['val_top1']:.2f} | {results['val_top5']:.2f} |" in card


def test_model_kwargs_the_model_does_not_take_are_a_one_line_error(data, tmp_path):
    argv = ["--model-kwargs", "layers=[1,1,1,1]", "no_such_arg=1", "--num-classes", "3"]
    for model in (["--model", "resnet26"], ["--convert-from", "resnet26"]):
        with pytest.raises(ValueError, match="cannot create resnet26 .*unexpected keyword argument 'no_such_arg'"):
            create_train_model(build_args(argv=model + argv), in_chans=3)
    result = CliRunner().invoke(train_app, ["--data-dir", str(data), "--model", "resnet26", *argv, "--output", str(tmp_path)])
    assert result.exit_code == 2 and "no_such_arg" in result.output and "Traceback" not in result.output


def test_convert_from_matches_surgery_and_loads_initial_checkpoint(tmp_path):
    argv = ["--convert-from", "resnet26", "--position", "P1", "--every", "2", "--groups", "4",
            "--model-kwargs", "layers=[1,1,1,1]", "channels=[8,16,32,64]", "stem_width=8", "--num-classes", "3"]
    model = create_train_model(build_args(argv=argv), in_chans=3)
    reference = timm_xbn.convert(timm.create_model("resnet26", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8,
                                                   num_classes=3), position="P1", every=2, groups=4).model
    converted = sorted(n for n, m in model.named_modules() if is_batch_free(m))
    assert converted == sorted(n for n, m in reference.named_modules() if is_batch_free(m))
    assert converted == ["layer2.0.bn1", "layer4.0.bn1"]  # P1 of bottlenecks 2 and 4 (D2), none in the stem
    assert model.get_submodule("layer2.0.bn1").num_groups == 4
    # --initial-checkpoint stands in for --pretrained here: the weights load after the surgery
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    from safetensors.torch import save_file
    save_file(weights, str(tmp_path / "w.safetensors"))
    loaded = create_train_model(build_args(argv=argv + ["--initial-checkpoint", str(tmp_path / "w.safetensors")]), in_chans=3)
    assert all(torch.equal(loaded.state_dict()[k], weights[k]) for k in weights)
    with pytest.raises(ValueError, match="--position only apply with --convert-from"):
        create_train_model(build_args(argv=["--model", "resnet26", "--position", "P1"]), in_chans=3)


def test_sync_bn_conversion_keeps_batch_free_norms():
    from timm.layers import convert_sync_batchnorm

    model = timm_xbn.convert(timm.create_model("resnet26", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)).model
    synced = convert_sync_batchnorm(model)
    kinds = {n: type(m) for n, m in synced.named_modules()}
    assert all(kinds[n] is type(m) for n, m in model.named_modules() if is_batch_free(m))
    assert all(kinds[n] is nn.SyncBatchNorm for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))


def _error_line(result) -> str:
    """The single red error line of a failed CLI call (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def no_model_building(monkeypatch):
    """Fail the test if xbn-train gets as far as building a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the output location was checked")

    monkeypatch.setattr("timm_xbn.training.engine.create_train_model", refuse)


def test_unusable_output_fails_before_any_model_or_data_work(data, tmp_path, no_model_building):
    runner = CliRunner()
    out_file = tmp_path / "out_file"
    out_file.write_text("keep me")
    base = ["--data-dir", str(data), *TINY, "--epochs", "1"]
    line = _error_line(runner.invoke(train_app, base + ["--output", str(out_file)]))
    assert f"output folder {out_file} is an existing file" in line
    line = _error_line(runner.invoke(train_app, base + ["--output", str(tmp_path), "--experiment", "out_file"]))
    assert "is an existing file" in line
    line = _error_line(runner.invoke(train_app, base + ["--output", str(out_file), "--experiment", "e"]))
    assert f"cannot write to output folder {out_file / 'e'}: Not a directory" in line
    assert out_file.read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_fails_before_any_model_work(data, tmp_path, no_model_building):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = CliRunner().invoke(train_app, ["--data-dir", str(data), *TINY, "--output", str(locked), "--experiment", "e"])
        assert "cannot write to output folder" in _error_line(result)
    finally:
        locked.chmod(0o700)


def _tree(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_fresh_run_never_mixes_with_an_earlier_runs_checkpoints(data, tmp_path):
    """The issue's case: an interrupted run leaves recovery files; a fresh run into the same
    experiment folder is refused (nothing changed), and --resume auto continues the earlier run."""
    common = ["--data-dir", str(data), *TINY, "--epochs", "2", "--recovery-interval", "2", "--output", str(tmp_path)]
    train(build_args(argv=common + ["--experiment", "e", "--stop-after-steps", "9"]))
    folder = tmp_path / "e"
    assert {"last.pth.tar", "recovery-1-2.pth.tar"} <= set(_tree(folder))
    before = _tree(folder)
    for extra in ([], ["--lr", "0.5"], ["--resume", str(tmp_path / "elsewhere" / "last.pth.tar")]):
        with pytest.raises(ValueError, match=r"e holds checkpoints of an earlier run \(checkpoint-0.pth.tar, last.pth.tar, "
                                             r"model_best.pth.tar, recovery-0-4.pth.tar \+1 more\): continue it with --resume auto"):
            train(build_args(argv=common + ["--experiment", "e"] + extra))
    assert _tree(folder) == before
    result = train(build_args(argv=common + ["--experiment", "e", "--resume", "auto"]))
    assert result["epochs"] == 2
    last = torch.load(folder / "last.pth.tar", map_location="cpu", weights_only=True)
    assert last["progress"]["num_updates"] == 12  # 2 epochs x 6 updates: continued, not restarted
    # a folder whose checkpoints are all damaged is an error for --resume auto, not a silent fresh start
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "last.pth.tar").write_bytes((folder / "last.pth.tar").read_bytes()[:5000])
    with pytest.raises(ValueError, match="no readable checkpoint in .*damaged: last.pth.tar"):
        train(build_args(argv=common + ["--experiment", "damaged", "--resume", "auto"]))


def test_resume_auto_takes_the_newest_state_and_old_recovery_files_go(data, tmp_path):
    """Run 1 stops at update 11 (recovery-1-2 = update 8, recovery-1-4 = update 10, last = update 6).
    Run 2 resumes from last.pth.tar and stops at update 9: it rewrote recovery-1-2 (update 8), and the
    older recovery-1-4 (update 10, more updates but an abandoned state) must be gone, so --resume auto
    takes run 2's state. After the final resume only that process's recovery files remain."""
    from timm_xbn.training import find_resume_checkpoint

    common = ["--data-dir", str(data), *TINY, "--epochs", "3", "--recovery-interval", "2", "--output", str(tmp_path),
              "--experiment", "e"]
    folder = tmp_path / "e"
    train(build_args(argv=common + ["--stop-after-steps", "11"]))
    assert sorted(p.name for p in folder.glob("recovery-*")) == ["recovery-1-2.pth.tar", "recovery-1-4.pth.tar"]
    train(build_args(argv=common + ["--resume", str(folder / "last.pth.tar"), "--stop-after-steps", "9"]))
    assert sorted(p.name for p in folder.glob("recovery-*")) == ["recovery-1-2.pth.tar"]
    newest = find_resume_checkpoint(folder)
    assert Path(newest).name == "recovery-1-2.pth.tar"
    assert torch.load(newest, map_location="cpu", weights_only=True)["progress"]["num_updates"] == 8
    train(build_args(argv=common + ["--resume", "auto"]))
    # the final process saved recovery-1-4, -2-2 and -2-4 (timm keeps its last two); recovery-1-2 of run 2 is gone
    assert sorted(p.name for p in folder.glob("recovery-*")) == ["recovery-2-2.pth.tar", "recovery-2-4.pth.tar"]
    assert torch.load(folder / "last.pth.tar", map_location="cpu", weights_only=True)["progress"]["num_updates"] == 18


def test_bad_training_inputs_are_one_line_errors(data, tmp_path):
    """Each case: exit 2 and one red line naming the problem, never a traceback."""
    import argparse

    runner = CliRunner()
    base = ["--data-dir", str(data), *TINY, "--epochs", "2", "--output", str(tmp_path)]
    train(build_args(argv=base + ["--epochs", "1", "--experiment", "src"]))
    good = tmp_path / "src" / "last.pth.tar"
    (tmp_path / "truncated.pth.tar").write_bytes(good.read_bytes()[:20000])
    (tmp_path / "text.pth.tar").write_text("hello\n")
    state = torch.load(good, map_location="cpu", weights_only=True)
    state["args"] = argparse.Namespace(model="resnet26")  # as timm's train.py saves its args: a pickled object
    torch.save(state, tmp_path / "pickled.pth.tar")
    (tmp_path / "bad.yaml").write_text("model: [resnet50\nepochs: 3\n")
    other_model = ["--data-dir", str(data), "--model", "resnet18", "--model-kwargs", "channels=[8,16,32,64]", "stem_width=8",
                   "--num-classes", "3", "--img-size", "32", "-b", "4", "--workers", "0", "--device", "cpu",
                   "--output", str(tmp_path)]
    cases = [
        (base + ["-c", str(tmp_path / "bad.yaml")], "bad.yaml: not valid YAML at line 2, column 7"),
        (base + ["--resume", str(tmp_path / "truncated.pth.tar")], "not a torch checkpoint, or truncated"),
        (base + ["--resume", str(tmp_path / "text.pth.tar")], "text.pth.tar: not a torch checkpoint, or truncated"),
        (base + ["--resume", str(tmp_path / "pickled.pth.tar")], "holds pickled Python objects, which are never loaded"),
        (other_model + ["--resume", str(good)], "its model (xbn_converted(resnet26,P2,every=1,gn)) does not fit this run's resnet18"),
        (base + ["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (base + ["-j", "-1"], "-j/--workers must be at least 0, got -1"),
        (base + ["--recovery-interval", "-5"], "--recovery-interval must be at least 0"),
    ]
    if not torch.cuda.is_available():
        cases.append((base + ["--device", "cuda"], "device 'cuda' requested but CUDA is not available"))
    for argv, expected in cases:
        line = _error_line(runner.invoke(train_app, argv))
        assert expected in line, (argv, line)
    assert not (tmp_path / "pickled.pth.tar.tmp").exists() and good.read_bytes()  # inputs untouched
