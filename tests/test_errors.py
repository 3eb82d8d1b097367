"""The one command-line handler (``timm_xbn.utils.errors.command_errors``) at every entry point: a user error
is one red line and exit 2, a bug keeps its traceback and exits 1, ``XBN_DEBUG=1`` shows the traceback of
user errors too, and Ctrl-C is one line and exit 130."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from timm_xbn.cli import eval_app, train_app
from timm_xbn.commands.options import handle_errors
from timm_xbn.utils.errors import INTERRUPTED, INTERRUPTED_RESUMES, UserError

ROOT = Path(__file__).parents[1]
CLAIMS = ROOT / "docs" / "study" / "claims.csv"  # a committed study result: study-compare reads it without a model
runner = CliRunner()


def _raising(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


def _compare(monkeypatch, error: BaseException):
    """``xbn-eval study-compare`` with its last step raising ``error``."""
    monkeypatch.setattr("timm_xbn.study.compare_lines", _raising(error))
    return runner.invoke(eval_app, ["study-compare", str(CLAIMS), str(CLAIMS)])


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)  # callers and tests that catch ValueError keep working


def test_a_user_error_is_one_red_line_and_exit_2(monkeypatch):
    monkeypatch.delenv("XBN_DEBUG", raising=False)
    result = _compare(monkeypatch, UserError("--foo must be positive, got -1"))
    assert result.exit_code == 2
    assert result.stderr == "error: --foo must be positive, got -1\n"


@pytest.mark.parametrize("error", [KeyError("top1"), ValueError("math domain error"), TypeError("bad operand")])
def test_an_internal_error_keeps_its_traceback_and_exits_1(monkeypatch, error):
    monkeypatch.delenv("XBN_DEBUG", raising=False)
    result = _compare(monkeypatch, error)
    assert result.exit_code == 1 and result.exception is error  # propagates: Python prints the traceback
    assert "error:" not in result.stderr


@pytest.mark.parametrize("debug, shown", [("1", True), ("0", False), ("", False)])
def test_xbn_debug_shows_the_traceback_of_a_user_error(monkeypatch, debug, shown):
    monkeypatch.setenv("XBN_DEBUG", debug)
    result = _compare(monkeypatch, UserError("bad input"))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[-1] == "error: bad input"
    assert ("Traceback (most recent call last)" in result.stderr) is shown
    assert ("timm_xbn.utils.errors.UserError: bad input" in lines) is shown and (len(lines) == 1) is not shown


@pytest.mark.parametrize("error, code", [(FileNotFoundError("no study results at x"), 2),
                                         (NotADirectoryError("x is a file"), 2),
                                         (OSError(28, "No space left on device", "/r/x.json"), 2),
                                         (OSError(9, "Bad file descriptor"), 1)])
def test_os_errors_of_the_user_or_the_machine_are_one_line_and_others_a_traceback(monkeypatch, error, code):
    monkeypatch.delenv("XBN_DEBUG", raising=False)
    result = _compare(monkeypatch, error)
    assert result.exit_code == code
    if code == 2:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    else:
        assert result.exception is error


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    monkeypatch.delenv("XBN_DEBUG", raising=False)
    result = _compare(monkeypatch, KeyboardInterrupt())
    assert result.exit_code == 130 and result.stderr == INTERRUPTED + "\n"
    monkeypatch.setenv("XBN_DEBUG", "1")
    result = _compare(monkeypatch, KeyboardInterrupt())
    assert result.exit_code == 130 and "Traceback" in result.stderr and result.stderr.endswith(INTERRUPTED + "\n")


def test_a_resuming_command_says_how_to_resume():
    app = typer.Typer()

    @app.command()
    @handle_errors(resumes=True)
    def sweep(n: int) -> None:
        raise KeyboardInterrupt

    result = runner.invoke(app, ["1"])
    assert result.exit_code == 130 and result.stderr == "interrupted; rerun the same command to resume\n"
    assert INTERRUPTED_RESUMES == "interrupted; rerun the same command to resume"


@pytest.mark.parametrize("command", [["robustness", "-d", "0.1"], ["corruption"], ["adapt"]])
def test_xbn_eval_commands_that_resume_say_so_on_ctrl_c(monkeypatch, tmp_path, command):
    monkeypatch.setattr("timm_xbn.commands.eval.eval_setup", _raising(KeyboardInterrupt()))
    monkeypatch.setattr("timm_xbn.commands.eval._corruption_source", _raising(KeyboardInterrupt()))
    result = runner.invoke(eval_app, [*command, "-m", "resnet18", "--data-dir", str(tmp_path), "-o", str(tmp_path / "o"),
                                      "-j", "0", "--device", "cpu"])
    assert result.exit_code == 130 and result.stderr == INTERRUPTED_RESUMES + "\n", result.output


def test_an_internal_key_error_in_a_real_process_prints_its_traceback():
    """The console script as a user runs it: the traceback reaches the terminal, not ``error: 'top1'``."""
    code = ("import timm_xbn.study as s\n"
            "def boom(*a): raise KeyError('top1')\n"
            "s.compare_lines = boom\n"
            "from timm_xbn.cli import eval_app\n"
            "eval_app()\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), COLUMNS="200")
    env.pop("XBN_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", code, "study-compare", str(CLAIMS), str(CLAIMS)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'top1'" in proc.stderr and "error: 'top1'" not in proc.stderr


# ---- xbn-train and python -m timm_xbn.training --------------------------------------------------------------

def _patch_training(monkeypatch, error: BaseException):
    args = argparse.Namespace()
    monkeypatch.setattr("timm_xbn.training.build_args", lambda **kwargs: args)
    monkeypatch.setattr("timm_xbn.training.args.build_args", lambda **kwargs: args)
    monkeypatch.setattr("timm_xbn.training.train", _raising(error))
    monkeypatch.setattr("timm_xbn.training.engine.train", _raising(error))


def test_xbn_train_handles_errors_like_every_command(monkeypatch):
    monkeypatch.delenv("XBN_DEBUG", raising=False)
    _patch_training(monkeypatch, UserError("--lr must be > 0"))
    result = runner.invoke(train_app, ["--data-dir", "x"])
    assert result.exit_code == 2 and result.stderr == "error: --lr must be > 0\n"
    error = KeyError("top1")
    _patch_training(monkeypatch, error)
    result = runner.invoke(train_app, ["--data-dir", "x"])
    assert result.exit_code == 1 and result.exception is error
    _patch_training(monkeypatch, KeyboardInterrupt())
    result = runner.invoke(train_app, ["--data-dir", "x"])
    assert result.exit_code == 130 and result.stderr == INTERRUPTED + "\n"


def test_python_m_timm_xbn_training_uses_the_same_handler(monkeypatch, capsys):
    from timm_xbn.training.main import main

    monkeypatch.delenv("XBN_DEBUG", raising=False)
    _patch_training(monkeypatch, UserError("--lr must be > 0"))
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", "x"])
    assert exited.value.code == 2 and capsys.readouterr().err == "error: --lr must be > 0\n"
    _patch_training(monkeypatch, KeyError("top1"))
    with pytest.raises(KeyError, match="top1"):  # a bug: its traceback, exit 1
        main(["--data-dir", "x"])
    monkeypatch.setenv("XBN_DEBUG", "1")
    _patch_training(monkeypatch, UserError("--lr must be > 0"))
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", "x"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" in err and err.endswith("error: --lr must be > 0\n")


def test_the_training_module_entry_shows_an_internal_error_with_its_traceback(tmp_path):
    code = ("import sys, runpy, argparse\n"
            "import timm_xbn.training.args as a, timm_xbn.training.engine as e\n"
            "a.build_args = lambda **k: argparse.Namespace()\n"
            "def boom(args): raise KeyError('top1')\n"
            "e.train = boom\n"
            "sys.argv = ['timm_xbn.training', '--data-dir', 'x']\n"
            "runpy.run_module('timm_xbn.training', run_name='__main__', alter_sys=True)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("XBN_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'top1'" in proc.stderr


# ---- python -m timm_xbn.launch -----------------------------------------------------------------------------

def test_launch_ctrl_c_in_the_script_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    from timm_xbn.launch import main

    monkeypatch.delenv("XBN_DEBUG", raising=False)
    script = tmp_path / "benchmark.py"
    script.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(SystemExit) as exited:
        main([str(script)])
    assert exited.value.code == 130 and capsys.readouterr().err == INTERRUPTED + "\n"
    script.write_text("raise KeyError('top1')\n")
    with pytest.raises(KeyError, match="top1"):
        main([str(script)])
