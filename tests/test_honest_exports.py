"""Exports say what they hold: input settings from the options or the checkpoint's own config, no pretrained tag
for weights that are not a released set, and files with the user's umask (issue 36, "Honest exports")."""
import json
import os
from pathlib import Path

import pytest
import timm
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from timm_xbn.cli import convert_app, hub_app
from timm_xbn.models.checkpoints import export_model
from timm_xbn.utils.files import write_text_atomic

TINY = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8, "num_classes": 3}
INPUTS = ["--img-size", "32", "--crop-pct", "1", "--mean", "0.29", "0.29", "0.29", "--std", "0.35", "0.35", "0.35"]
runner = CliRunner()


def _pretrained_cfg(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["pretrained_cfg"]


def _assert_32px_inputs(cfg: dict) -> None:
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == [0.29] * 3 and cfg["std"] == [0.35] * 3


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o666 & ~0o027  # 0o640: what the shell's own `touch` would give
    os.umask(old)


def test_atomic_writes_get_the_users_umask(tmp_path, umask_027):
    export_model(timm.create_model("resnet26", **TINY), tmp_path / "export")
    write_text_atomic(tmp_path / "notes.txt", "x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*(tmp_path / "export").iterdir(), tmp_path / "notes.txt"]}
    assert modes == {"model.safetensors": umask_027, "config.json": umask_027, "notes.txt": umask_027}


def test_convert_of_random_weights_has_no_pretrained_tag_and_the_given_inputs(tmp_path):
    out = tmp_path / "r26"
    result = runner.invoke(convert_app, ["resnet26", "--model-kwargs", json.dumps(TINY), "--groups", "4", *INPUTS,
                                         "-o", str(out)])
    assert result.exit_code == 0, result.output
    cfg = _pretrained_cfg(out)
    assert timm.create_model("resnet26").pretrained_cfg["tag"]  # timm's default cfg names its released weights
    assert not {"tag", "origin_url", "paper_ids"} & set(cfg), cfg
    _assert_32px_inputs(cfg)


def test_convert_reads_the_inputs_recorded_beside_its_checkpoint(tmp_path):
    source = tmp_path / "bn"
    export_model(timm.create_model("resnet26", **TINY), source, data_config={
        "input_size": (3, 32, 32), "crop_pct": 1.0, "mean": (0.29,) * 3, "std": (0.35,) * 3, "interpolation": "bilinear"})
    out = tmp_path / "xbn"
    result = runner.invoke(convert_app, ["resnet26", "--model-kwargs", json.dumps(TINY), "--groups", "4",
                                         "--checkpoint", str(source / "model.safetensors"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    _assert_32px_inputs(_pretrained_cfg(out))
    assert "tag" not in _pretrained_cfg(out)


def _checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "train" / "model_best.safetensors"
    path.parent.mkdir()
    save_file(timm.create_model("resnet26", **TINY).state_dict(), str(path))
    return path


def _push(checkpoint: Path, folder: Path, repo: str, *extra: str):
    return runner.invoke(hub_app, ["push", "--model", "resnet26", "--model-kwargs", json.dumps(TINY), "--checkpoint",
                                   str(checkpoint), "--repo-id", repo, "--dry-run", str(folder), *extra])


def test_push_writes_the_given_inputs_into_config_and_card_and_no_tag(tmp_path, umask_027):
    folder = tmp_path / "repo"
    result = _push(_checkpoint(tmp_path), folder, "me/r26-digits", *INPUTS)
    assert result.exit_code == 0, result.output
    cfg = _pretrained_cfg(folder)
    _assert_32px_inputs(cfg)
    assert "tag" not in cfg
    card = (folder / "README.md").read_text()
    assert "3×32×32" in card and "224" not in card
    assert "| Normalization | mean (0.29, 0.29, 0.29), std (0.35, 0.35, 0.35) |" in card
    assert "| Center crop | 1 (" in card and "| Pretrained tag | none" in card
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(
        ["model.safetensors", "config.json", "README.md"], umask_027)


def test_push_reads_xbn_train_args_and_takes_the_tag_the_repo_names(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    (checkpoint.parent / "args.yaml").write_text(yaml.safe_dump(
        {"img_size": 32, "crop_pct": 1.0, "mean": [0.29] * 3, "std": [0.35] * 3, "model": "resnet26"}))
    result = _push(checkpoint, tmp_path / "repo", "me/r26.fmnist")
    assert result.exit_code == 0, result.output
    cfg = _pretrained_cfg(tmp_path / "repo")
    _assert_32px_inputs(cfg)
    assert cfg["tag"] == "fmnist"
    tagged = _push(checkpoint, tmp_path / "repo2", "me/r26", "--tag", "in1k", "--img-size", "48")
    assert tagged.exit_code == 0, tagged.output
    assert _pretrained_cfg(tmp_path / "repo2")["tag"] == "in1k"
    assert _pretrained_cfg(tmp_path / "repo2")["input_size"] == [3, 48, 48]  # the option wins over args.yaml
