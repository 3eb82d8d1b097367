"""benchmarks/regenerate.py: every docs/ file has one target, the steps copy and stamp what they write, and
the TTA target runs end to end in its tiny mode into a temporary folder (tests/test_tta_demo.py)."""
from pathlib import Path

import pytest

from benchmarks import regenerate
from benchmarks.regenerate import Step, Target
from timm_xbn.utils.provenance import read_provenance

DOCS = Path(__file__).parents[1] / "docs"


def test_every_docs_file_belongs_to_exactly_one_target():
    owners = {}
    for target in regenerate.TARGETS.values():
        for name in target.files:
            assert name not in owners, f"{name}: {owners[name]} and {target.name}"
            owners[name] = target.name
    committed = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*") if p.is_file()}
    assert committed - set(owners) == set(regenerate.PAGES), "a docs file no target writes"
    assert set(regenerate.PAGES) <= committed, "a listed page is missing"


def test_list_names_every_target_and_its_command(capsys):
    assert regenerate.main(["--list"]) == []
    listing = capsys.readouterr().out
    for target in regenerate.TARGETS.values():
        assert f"{target.name}: {', '.join(target.files)}" in listing
        assert all(step.command in listing for step in target.steps)


def test_tiny_refuses_to_overwrite_the_repository_docs():
    with pytest.raises(SystemExit) as error:
        regenerate.main(["--tiny", "--only", "tta"])
    assert error.value.code == 2


_WRITER = "import pathlib, sys; pathlib.Path(sys.argv[1]).mkdir(parents=True, exist_ok=True); " \
          "(pathlib.Path(sys.argv[1]) / 'r.csv').write_text('a,b\\n1,2\\n'); print('table' + ''.join(sys.argv[2:]))"


def test_steps_copy_capture_and_stamp_their_files(tmp_path, monkeypatch):
    step = Step(f"python -c \"{_WRITER}\" {{work}}/run", "small", copies={"run/r.csv": "x/r.csv"}, stdout="x/out.txt")
    monkeypatch.setitem(regenerate.TARGETS, "fake", Target("fake", ("x/r.csv", "x/out.txt"), (step,)))
    written = regenerate.main(["--only", "fake", "--tiny", "--output", str(tmp_path / "docs"), "--work", str(tmp_path / "w")])
    assert written == [tmp_path / "docs/x/r.csv", tmp_path / "docs/x/out.txt"]
    csv_lines = written[0].read_text().splitlines()
    assert csv_lines[0].startswith("# Written by `python -c ") and csv_lines[1:] == ["a,b", "1,2"]
    assert written[1].read_text().splitlines()[1:] == ["table--portablesmall"]  # both flags reached the command
    prov = read_provenance(written[1])
    assert prov["command"].endswith(f"{tmp_path / 'w'}/run --portable small") and prov["commit"] and prov["machine"]
    assert prov["portable"] and (prov["capability"], prov["threads"]) == ("AVX2", 1)  # the child's kernels


def test_no_portable_runs_the_command_as_given(tmp_path, monkeypatch):
    step = Step(f"python -c \"{_WRITER}\" {{work}}/run", "", stdout="x/out.txt", threads=3)
    monkeypatch.setitem(regenerate.TARGETS, "fake", Target("fake", ("x/out.txt",), (step,)))
    written = regenerate.main(["--only", "fake", "--no-portable", "--out", str(tmp_path / "docs"), "--work", str(tmp_path / "w")])
    assert written[0].read_text().splitlines()[1:] == ["table"]
    prov = read_provenance(written[0])
    assert not prov["portable"] and prov["threads"] == 3


def test_a_target_that_leaves_a_file_unwritten_fails(tmp_path, monkeypatch):
    step = Step(f"python -c \"{_WRITER}\" {{work}}/run", "", copies={"run/r.csv": "x/r.csv"})
    monkeypatch.setitem(regenerate.TARGETS, "fake", Target("fake", ("x/r.csv", "x/missing.png"), (step,)))
    with pytest.raises(SystemExit, match="x/missing.png"):
        regenerate.main(["--only", "fake", "--output", str(tmp_path / "docs"), "--work", str(tmp_path / "w")])


def test_committed_docs_files_name_their_command_commit_and_machine():
    for path in sorted(DOCS.rglob("*")):
        name = str(path.relative_to(DOCS))
        if path.is_file() and name not in regenerate.PAGES:
            prov = read_provenance(path)
            assert prov and prov["command"] and prov["commit"] and prov["machine"], name
