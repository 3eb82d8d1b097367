"""One flag per concept: walk every command's and benchmark's options and fail on a second spelling; every old
spelling still works, with one deprecation line (``timm_xbn.commands.vocabulary``)."""
import argparse
import importlib
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import typer.main

from timm_xbn import cli
from timm_xbn.commands import options
from timm_xbn.commands.vocabulary import RENAMED, VOCABULARY, renames_table, translate_argv

BENCHMARKS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py")
                    if "\ndef main(" in p.read_text())  # the scripts (helper modules have no main)
APPS = {"xbn-eval": cli.eval_app, "xbn-train": cli.train_app, "xbn-convert": cli.convert_app, "xbn-hub": cli.hub_app}
Option = Tuple[Tuple[str, ...], bool]  # (its flags, hidden)


def click_commands() -> dict:
    """Every console-script command by the name a user types (``xbn-eval adabn``, ``xbn-convert``)."""
    found = {}
    for script, app in APPS.items():
        root = typer.main.get_command(app)
        subs = getattr(root, "commands", None) or {"": root}  # typer's own click: no isinstance
        found.update({f"{script} {name}".strip(): command for name, command in subs.items()})
    return found


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser, args):
        self.parser, self.args = parser, args


def benchmark_parser(name: str, argv=(), monkeypatch=None) -> _Captured:
    """The benchmark's argparse parser and the argv its main() hands it (main stops right there)."""
    module = importlib.import_module(f"benchmarks.{name}")
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        if self.prog.startswith("pytest") or self.description is None or "--tiny" not in self._option_string_actions:
            return original(self, args, namespace)
        raise _Captured(self, args)

    argparse.ArgumentParser.parse_args = capture
    old_argv = sys.argv
    sys.argv = [f"benchmarks/{name}.py", *argv]
    try:
        module.main(list(argv)) if "argv" in module.main.__code__.co_varnames else module.main()
    except _Captured as captured:
        return captured
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = old_argv
    raise AssertionError(f"benchmarks/{name}.py main() did not parse its arguments")


def all_options() -> Dict[str, List[Option]]:
    """Every command's and benchmark's options (xbn-train: its train.py parser too)."""
    from timm_xbn.training.args import create_parser

    found: Dict[str, List[Option]] = {}
    for name, command in click_commands().items():
        found[name] = [(tuple(p.opts + p.secondary_opts), bool(p.hidden)) for p in command.params
                       if p.param_type_name == "option"]
    parsers = {"xbn-train (train.py flags)": create_parser()}
    parsers.update({f"benchmarks/{name}.py": benchmark_parser(name).parser for name in BENCHMARKS})
    for name, parser in parsers.items():
        found[name] = [(tuple(a.option_strings), a.help == argparse.SUPPRESS) for a in parser._actions
                       if a.option_strings]
    return found


@pytest.fixture(scope="module")
def every_option() -> Dict[str, List[Option]]:
    return all_options()


def test_the_walk_sees_every_command_and_benchmark(every_option):
    names = set(every_option)
    assert {"xbn-eval robustness", "xbn-eval adabn", "xbn-eval study", "xbn-convert", "xbn-hub pull",
            "xbn-train"} <= names
    assert {f"benchmarks/{b}.py" for b in ("calibration", "cpu_amp", "device_check", "sweep", "tta_demo")} <= names
    assert any("--output" in flags for flags, _ in every_option["benchmarks/calibration.py"])


def test_no_concept_has_a_second_spelling(every_option):
    old = {spelling: concept for concept in VOCABULARY for spelling in concept.old}
    found = [(name, flag, old[flag].flag) for name, opts in every_option.items() for flags, hidden in opts
             if not hidden for flag in flags if flag in old]
    assert not found, f"old spellings still shown (command, old, use): {found}"


def test_each_short_flag_means_one_long_flag_everywhere(every_option):
    meaning: Dict[str, set] = {}
    for name, opts in every_option.items():
        for flags, hidden in opts:
            longs = [f for f in flags if f.startswith("--")]
            for short in (f for f in flags if not f.startswith("--")):
                meaning.setdefault(short, set()).add((tuple(longs), name))
    clashes = {short: uses for short, uses in meaning.items() if len({longs for longs, _ in uses}) > 1}
    assert not clashes, clashes


def test_canonical_flags_carry_their_short_form(every_option):
    missing = []
    for concept in (c for c in VOCABULARY if c.short):
        for name, opts in every_option.items():
            for flags, _ in opts:
                if concept.flag in flags and concept.short not in flags:
                    missing.append((name, concept.flag, concept.short))
    assert not missing, missing


def test_renamed_flags_are_hidden_and_point_at_shown_ones(every_option):
    concept_of = {spelling: c.flag for c in VOCABULARY for spelling in c.old}
    for command, renames in RENAMED.items():
        shown = {f for flags, hidden in every_option[command] if not hidden for f in flags}
        for old, new in renames.items():
            assert new in shown and old not in shown, (command, old, new)
            assert concept_of.get(old, new) == new or (old, new) == ("--workers", "--jobs"), (command, old, new)


def test_choices_are_the_python_apis_choices():
    from timm_xbn.adapt.protocol import PROTOCOLS
    from timm_xbn.adapt.streams import STREAMS
    from timm_xbn.calibration import REESTIMATE_CHOICES
    from timm_xbn.evaluation.data import ORDERS
    from timm_xbn.stats import RECALIBRATION_MODES
    from timm_xbn.study.config import JOB_KINDS

    values = lambda enum: tuple(e.value for e in enum)  # noqa: E731
    assert values(options.Order) == ORDERS
    assert values(options.Protocol) == PROTOCOLS
    assert values(options.Stream) == STREAMS
    assert tuple(options.api_method(v) for v in values(options.RecalibMode)) == RECALIBRATION_MODES
    assert tuple(options.api_method(v) for v in values(options.Reestimate)) == REESTIMATE_CHOICES
    assert tuple(v.replace("-", "_") for v in values(options.StudyPart)) == JOB_KINDS


# ---- old spellings still work, with one line -------------------------------------------------------

REQUIRED = {  # the least a command needs to parse besides the renamed flag (nothing runs)
    "xbn-eval adabn": ["-m", "resnet18", "--data-dir", "d"],
    "xbn-eval study": [],
    "xbn-convert": ["resnet18"],
    "xbn-hub pull": ["me/model"],
}
VALUE = {"--output": "elsewhere", "--img-size": "48", "--batch-size": "3", "--jobs": "2", "--recalib-dir": "calib",
         "--recalib-batches": "5"}


def _params(command, args: List[str]) -> dict:
    return command.make_context("x", list(args)).params


@pytest.mark.parametrize("command, old, new", [(c, o, n) for c, r in RENAMED.items() if not c.startswith("bench")
                                               for o, n in r.items()])
def test_old_flag_of_a_command_still_works_with_a_note(capsys, command, old, new):
    cmd = click_commands()[command]
    got = _params(cmd, [*REQUIRED[command], old, VALUE[new]])
    note = capsys.readouterr().err.strip().splitlines()
    assert got == _params(cmd, [*REQUIRED[command], new, VALUE[new]])
    assert note == [f"note: {old} is deprecated, use {new} (the old spelling goes in the next release)"]


@pytest.mark.parametrize("command, args, param, value", [
    ("xbn-eval adabn", ["-m", "resnet18", "--data-dir", "d", "--mode", "full"], "mode", options.RecalibMode.norm),
    ("xbn-convert", ["resnet18", "-o", "o", "--reestimate=full"], "reestimate", options.Reestimate.norm),
    ("xbn-eval corruption", ["-m", "resnet18", "--adapt", "full"], "adapt", "norm"),
    ("xbn-eval adapt", ["-m", "resnet18", "--method", "source", "--method", "full"], "method", ["source", "norm"]),
])
def test_full_is_an_alias_of_norm_with_a_note(capsys, command, args, param, value):
    assert _params(click_commands()[command], args)[param] == value
    assert capsys.readouterr().err.count("deprecated") == 1


@pytest.mark.parametrize("name, old, new", [(c.split("/")[1][:-3], o, n) for c, r in RENAMED.items()
                                            if c.startswith("bench") for o, n in r.items()])
def test_old_flag_of_a_benchmark_still_works_with_a_note(capsys, name, old, new):
    value = VALUE[new]
    captured = benchmark_parser(name, [old, value])
    note = capsys.readouterr().err.strip().splitlines()
    assert vars(captured.parser.parse_args(captured.args)) == vars(captured.parser.parse_args([new, value]))
    assert note == [f"note: {old} is deprecated, use {new} (the old spelling goes in the next release)"]


def test_translate_argv_forms():
    notes = []
    renames = {"--out": "--output", "-w": "--jobs"}
    args = translate_argv(["--out=a", "-w4", "--mode", "full", "--mode=full", "--", "--out", "b"], renames,
                          note=lambda old, new: notes.append(old))
    assert args == ["--output=a", "--jobs", "4", "--mode", "norm", "--mode=norm", "--", "--out", "b"]
    assert len(notes) == 4
    assert translate_argv(["--prior", "full", "-o", "x"], renames, note=notes.append) == ["--prior", "full", "-o", "x"]


def test_docs_table_of_renamed_flags_is_current():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "commands.md").read_text()
    assert renames_table() in docs


def test_xbn_train_takes_json_model_kwargs_as_well_as_timms_key_value_form():
    from timm_xbn.training.args import create_parser

    parser = create_parser()
    timm_form = parser.parse_args(["--model-kwargs", "stem_width=8", "channels=[8,16,32,64]"]).model_kwargs
    assert parser.parse_args(["--model-kwargs", '{"stem_width": 8, "channels": [8, 16, 32, 64]}']).model_kwargs == timm_form
    with pytest.raises(ValueError, match="JSON object or key=value"):
        parser.parse_args(["--model-kwargs", '{"stem_width": 8'])
