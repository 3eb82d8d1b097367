"""``python -m benchmarks.regenerate --check`` (benchmarks/regenerate_check.py): the tiny tta and calibration
targets (--tiny), rerun in portable mode, give the numbers of the committed tiny references
(tests/data/regenerate_tiny, written by the same command) bit for bit; the comparison rules (identical when
both files are portable, else within the committed interval's half-width, verdicts and settings always equal)
on hand-made files."""
import contextlib
import copy
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks import regenerate
from benchmarks.regenerate_check import compare_file, half_width, report
from timm_xbn.utils.provenance import read_provenance

REFS = Path(__file__).parent / "data" / "regenerate_tiny"
T_975_1 = 12.706204736174704  # Student t, 97.5 % quantile, 1 degree of freedom (two seeds)
PORTABLE = {"command": "c", "commit": "x", "machine": "box, torch 2.14.1", "capability": "AVX2", "isa_cap": "AVX2",
            "mkl_branch": "COMPATIBLE", "threads": 1, "cpu": "box", "portable": True}
NATIVE = {**PORTABLE, "capability": "AVX512", "isa_cap": "none", "mkl_branch": "auto", "portable": False}


def _tta(prov: dict, seed_values=((20.0, 40.0), (30.0, 50.0)), verdict: str = "inconclusive") -> dict:
    """A tta_demo.json with one row (two seeds) and one comparison."""
    per_seed = [[{"model": "BN", "method": "norm", "mean sev 5": a, "mean sev 3": b}] for a, b in seed_values]
    rows = [{"model": "BN", "method": "norm", "mean sev 5": 0.0, "mean sev 5 ±": 0.0, "mean sev 3": 0.0}]
    effects = [{"comparison": "BN: norm - source", "severity": 5, "mean": -1.0, "ci_low": -3.0, "ci_high": 1.0,
                "verdict": verdict, "per_seed": [-1.0, -1.0]}]
    return {"provenance": prov, "settings": {"seeds": [0, 1], "train_seconds": 5}, "rows": rows, "effects": effects,
            "per_seed": per_seed}


def _write(folder: Path, data: dict) -> Path:
    (folder / "tta").mkdir(parents=True, exist_ok=True)
    (folder / "tta" / "tta_demo.json").write_text(json.dumps(data))
    return folder


def test_the_interval_half_width_is_the_student_t_one():
    assert half_width([20.0, 30.0]) == pytest.approx(T_975_1 * 5.0)  # sd 7.07 / sqrt(2) = 5


def test_without_portable_mode_numbers_may_move_within_the_half_width(tmp_path):
    committed = _write(tmp_path / "a", _tta(NATIVE))
    inside = _write(tmp_path / "b", _tta(PORTABLE, ((20.0 + 60.0, 40.0), (30.0 + 60.0, 50.0))))  # mean +60 < 63.5
    result = compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", inside / "tta/tta_demo.json")
    assert result.mode == "within intervals" and result.passed
    assert [m.field for m in result.moved] == ["BN / norm / mean sev 5"] and result.moved[0].new == 85.0
    outside = _write(tmp_path / "c", _tta(PORTABLE, ((20.0 + 64.0, 40.0), (30.0 + 64.0, 50.0))))  # +64 > 63.5
    assert not compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", outside / "tta/tta_demo.json").passed


def test_a_changed_verdict_fails_and_both_portable_files_must_be_identical(tmp_path):
    committed = _write(tmp_path / "a", _tta(PORTABLE))
    flipped = _write(tmp_path / "b", _tta(NATIVE, verdict="lower"))
    result = compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", flipped / "tta/tta_demo.json")
    assert not result.passed and [m.field for m in result.moved] == ["BN: norm - source @ sev 5: verdict"]
    nudged = _write(tmp_path / "c", _tta(PORTABLE, ((20.0, 40.0), (30.0, 50.000001))))
    result = compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", nudged / "tta/tta_demo.json")
    assert result.mode == "identical" and not result.passed
    assert {m.field for m in result.moved} == {"BN / norm / mean sev 3", "BN / norm / mean sev 3 [seed 1]"}
    slower = _tta(PORTABLE)
    slower["settings"]["train_seconds"] = 9  # a timing: not compared
    assert compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", _write(tmp_path / "e", slower) / "tta/tta_demo.json").passed
    more_seeds = _tta(PORTABLE)
    more_seeds["settings"]["seeds"] = [0, 1, 2]  # another experiment: fails whatever its numbers
    result = compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", _write(tmp_path / "f", more_seeds) / "tta/tta_demo.json")
    assert not result.passed and [m.field for m in result.moved] == ["setting seeds"]
    other_torch = _write(tmp_path / "d", _tta({**PORTABLE, "machine": "box, torch 2.15.0"}, ((20.0, 40.0), (30.0, 50.000001))))
    assert compare_file("tta/tta_demo.json", committed / "tta/tta_demo.json", other_torch / "tta/tta_demo.json").passed


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("portable mode needs an x86-64 CPU with AVX2")
    out = tmp_path_factory.mktemp("check")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the report (the commands' own output goes to the terminal)
        regenerate.main(["--check", "--tiny", "--only", "tta", "--only", "calibration", "--against", str(REFS),
                         "--out", str(out / "docs"), "--work", str(out / "work")])
    return out / "docs", printed.getvalue()


def test_the_tiny_targets_reproduce_the_committed_references_bit_for_bit(tiny_check):
    docs, printed = tiny_check
    for name in ("tta/tta_demo.json", "calibration.json"):
        assert read_provenance(REFS / name)["portable"] and read_provenance(docs / name)["portable"]
        result = compare_file(name, REFS / name, docs / name)
        assert result.mode == "identical" and result.passed and not result.moved, report([result])
        assert f"{name}: PASS (identical)" in printed


def test_the_check_prints_what_moved_and_fails(tiny_check, tmp_path, capsys):
    refs = tmp_path / "refs"
    shutil.copytree(REFS, refs)
    data = json.loads((refs / "calibration.json").read_text())
    changed = copy.deepcopy(data)
    changed["results"]["ResNet"]["BN"][1] += 1.5625
    (refs / "calibration.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit) as failed:
        regenerate.main(["--check", "--only", "calibration", "--against", str(refs), "--from", str(tiny_check[0])])
    assert failed.value.code == 1
    out = capsys.readouterr().out
    old, new = changed["results"]["ResNet"]["BN"][1], data["results"]["ResNet"]["BN"][1]
    assert f"| calibration.json | ResNet / BN [seed 1] | {old:.4f} | {new:.4f} | NO |" in out
    assert "calibration.json: FAIL (identical)" in out


def test_from_needs_check_and_the_files(tmp_path):
    for argv in (["--only", "tta", "--from", str(tmp_path)], ["--check", "--only", "tta", "--from", str(tmp_path)]):
        with pytest.raises(SystemExit) as refused:
            regenerate.main(argv)
        assert refused.value.code == 2
