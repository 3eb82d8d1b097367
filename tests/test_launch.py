"""``python -m timm_xbn.launch SCRIPT ARGS``: timm's scripts (validate.py, train.py, ...) see the xbn_* models.

timm's train.py / validate.py are not in timm's wheel nor its PyPI sdist (the ``timm_sdist`` fixture
has ``timm/`` and ``tests/`` only), so the tests run a small script written like them: it parses
arguments, builds a model by name and reports what it built.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import timm_xbn  # noqa: F401  (registers the xbn_* models)
from timm_xbn.launch import launch, main

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''
import argparse, json, sys
import timm
from helper import count  # a module next to the script, as `python SCRIPT` allows

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--num-classes", type=int, default=1000)
parser.add_argument("--exit-code", type=int, default=0)


def main():
    args = parser.parse_args()
    model = timm.create_model(args.model, num_classes=args.num_classes)
    print(json.dumps({"argv": sys.argv, "name": __name__, "params": count(model)}))
    if args.exit_code:
        sys.exit(args.exit_code)


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def script(tmp_path) -> Path:
    (tmp_path / "helper.py").write_text("def count(model):\n    return sum(p.numel() for p in model.parameters())\n")
    path = tmp_path / "validate_like.py"
    path.write_text(SCRIPT)
    return path


def _run(*argv: str, cwd: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True)


def test_script_builds_an_xbn_model_through_the_launcher_and_fails_without(script):
    launched = _run("-m", "timm_xbn.launch", script.name, "--model", "xbn_resnet26", "--num-classes", "7", cwd=script.parent)
    assert launched.returncode == 0, launched.stderr[-2000:]
    report = json.loads(launched.stdout.strip().splitlines()[-1])
    expected = sum(p.numel() for p in timm.create_model("xbn_resnet26", num_classes=7).parameters())
    assert report == {"argv": [script.name, "--model", "xbn_resnet26", "--num-classes", "7"], "name": "__main__",
                      "params": expected}
    plain = _run(script.name, "--model", "xbn_resnet26", cwd=script.parent)  # what timm's validate.py does alone
    assert plain.returncode != 0 and "Unknown model (xbn_resnet26)" in plain.stderr


def test_launch_in_process_passes_exit_codes_and_restores_argv_and_path(script, capsys):
    argv, path = sys.argv[:], sys.path[:]
    launch(str(script), ["--model", "xbn_resnet26", "--num-classes", "3"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["argv"] == [str(script), "--model", "xbn_resnet26", "--num-classes", "3"]
    assert report["params"] == sum(p.numel() for p in timm.create_model("xbn_resnet26", num_classes=3).parameters())
    with pytest.raises(SystemExit) as exited:
        main([str(script), "--model", "xbn_resnet26", "--num-classes", "3", "--exit-code", "3"])
    assert exited.value.code == 3  # the script's own exit code, as with `python SCRIPT`
    assert sys.argv == argv and sys.path == path


def test_missing_script_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "validate.py"), "--model", "xbn_resnet50"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: script not found:") and "\n" not in err and "timm source checkout" in err
    assert main([]) == 2 and "usage: python -m timm_xbn.launch SCRIPT" in capsys.readouterr().out
