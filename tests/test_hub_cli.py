"""``xbn-hub`` commands: a dry-run push and ``info`` through the CLI, and one-line errors (exit code 2)."""
import json
from pathlib import Path

import pytest
import timm
from huggingface_hub import constants as hf_constants
from typer.testing import CliRunner

from timm_xbn.cli import hub_app
from timm_xbn.hub import REPO_FILES

from test_hub import CONVERTED, randomized, results_files, write_checkpoint

runner = CliRunner()


@pytest.fixture
def converted_checkpoint(tmp_path: Path) -> Path:
    name, kwargs = CONVERTED
    return write_checkpoint(randomized(timm.create_model(name, **kwargs)), tmp_path / "ckpt.safetensors")


def test_cli_dry_run_push_then_info(tmp_path: Path, converted_checkpoint: Path) -> None:
    paths = results_files(tmp_path, model="xbn_converted")
    name, kwargs = CONVERTED
    out = tmp_path / "repo"
    result = runner.invoke(hub_app, [
        "push", "--model", name, "--model-kwargs", json.dumps(kwargs), "--checkpoint", str(converted_checkpoint),
        "--repo-id", "someone/tiny", "--results", str(paths["train"]), "--results", str(paths["esm"]),
        "--dry-run", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "nothing uploaded" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(REPO_FILES)

    shown = runner.invoke(hub_app, ["info", str(out)])
    assert shown.exit_code == 0, shown.output
    train = json.loads(paths["train"].read_text())
    esm = json.loads(paths["esm"].read_text())["models"]["xbn_converted"]
    for figure in (train["val_top1"], train["val_top5"], esm["mean_esm_sigma"]):
        assert str(figure) in shown.stdout
    assert "xbn_converted" in shown.stdout and '"base_model": "resnet10t"' in shown.stdout.replace("\n", " ")


@pytest.mark.parametrize("args, message", [
    (["--repo-id", "bad id"], "invalid repo id 'bad id'"),
    (["--checkpoint", "missing.safetensors"], "checkpoint not found"),
    (["--results", "missing.json"], "results file not found"),
    ([], "no Hugging Face token"),
])
def test_cli_push_errors_are_one_line(args, message, tmp_path: Path, converted_checkpoint: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.chdir(tmp_path)
    name, kwargs = CONVERTED
    base = {"--model": name, "--model-kwargs": json.dumps(kwargs), "--checkpoint": str(converted_checkpoint),
            "--repo-id": "someone/tiny"}
    overridden = dict(zip(args[::2], args[1::2]))
    argv = ["push"] + [x for k, v in {**base, **overridden}.items() for x in (k, v)]
    result = runner.invoke(hub_app, argv)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.output


def test_cli_pull_and_info_reject_bad_repo_ids(tmp_path: Path) -> None:
    result = runner.invoke(hub_app, ["pull", "a/b/c", "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "invalid repo id" in result.stderr
    assert not (tmp_path / "x").exists()
    result = runner.invoke(hub_app, ["info", "not a repo"])  # neither a folder nor an id
    assert result.exit_code == 2 and "no local folder not a repo, and it is not a Hub repo id" in result.stderr
