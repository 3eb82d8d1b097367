"""benchmarks/calibration.py: the tiny mode writes a well-formed table, and the re-estimation default rule."""
import importlib
import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from timm_xbn.study.data import StudyData
from timm_xbn.utils.provenance import read_provenance

CELL = re.compile(r"^(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\]$")


@pytest.fixture(scope="module")
def script():
    return importlib.import_module("benchmarks.calibration")  # benchmarks/ is a package (python -m benchmarks.regenerate)


def _synthetic_fashion_mnist() -> StudyData:
    """Random 28 px grey images standing in for Fashion-MNIST: the table's form, not its numbers, is tested."""
    g = torch.Generator().manual_seed(0)
    return StudyData("synthetic", "test", torch.rand(200, 1, 28, 28, generator=g), torch.randint(0, 10, (200,), generator=g),
                     torch.rand(80, 1, 28, 28, generator=g), torch.randint(0, 10, (80,), generator=g), [str(i) for i in range(10)])


def test_tiny_mode_writes_a_well_formed_table(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "load_fashion_mnist", _synthetic_fashion_mnist)
    page = script.main(["--tiny", "--output", str(tmp_path)]).read_text()
    lines = page.splitlines()
    assert read_provenance(tmp_path / "calibration.md")["command"].startswith("python benchmarks/calibration.py --tiny --output ")
    assert read_provenance(tmp_path / "calibration.json") == read_provenance(tmp_path / "calibration.md")
    assert "CPU-seconds, 1 torch thread" in lines[1]
    data = json.loads((tmp_path / "calibration.json").read_text())
    tiny = script.TINY
    assert list(data["results"]) == ["ResNet", "RegNet", "EfficientNet"] and data["default"] in ("none", "full", "mix")
    for family, per in data["results"].items():
        assert len(per["BN"]) == len(tiny.seeds)
        header = lines.index(f"| top-1 % | {' | '.join(tiny.variants)} |")
        rows = lines[header + 2: header + 2 + len(script.ROWS) + 2]
        assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [*script.ROWS, "calibration s", "mean R² of the fits"]
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")[1:]]
            assert len(cells) == len(tiny.variants)
            for cell in cells:
                mean, low, high = map(float, CELL.match(cell).groups())
                assert all(map(math.isfinite, (mean, low, high))) and low <= mean <= high, (family, row)
        for variant in tiny.variants:
            values = per[variant]["calibrated + none"]
            assert len(values) == len(tiny.seeds) and all(0 <= v <= 100 for v in values)
    # a cell is the mean and the 95 % t interval of the per-seed values in the json
    values = np.array(data["results"]["RegNet"][tiny.variants[0]]["naive + full"])
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    regnet = lines[lines.index(f"| top-1 % | {tiny.variants[0]} |", lines.index("**RegNet**" + page.split("**RegNet**")[1].splitlines()[0])) + 2:]
    row = next(r for r in regnet if r.startswith("| naive + full |"))
    assert row == f"| naive + full | {values.mean():.1f} [{values.mean() - half:.1f}, {values.mean() + half:.1f}] |"


def _results(full_minus_none, mix_minus_none):
    """Calibrated cells of one family: per-seed effects of full and mix over none (none = 50 %)."""
    per = {"BN": [60.0, 60.0, 60.0]}
    for variant, (full, mix) in enumerate(zip(full_minus_none, mix_minus_none)):
        none = [50.0, 51.0, 52.0]
        per[f"V{variant}"] = {"calibrated + none": none, "calibrated + full": [n + d for n, d in zip(none, full)],
                              "calibrated + mix": [n + d for n, d in zip(none, mix)]}
    return {"F": per}


@pytest.mark.parametrize("full, mix, expected", [
    ([(3, 4, 5), (-1, 0, 1)], [(0, 0.1, -0.1), (0, 0.1, -0.1)], "full"),   # full better once, never worse
    ([(3, 4, 5), (-5, -6, -7)], [(0, 0.1, -0.1), (0, 0.1, -0.1)], "none"),  # full worse somewhere: rejected
    ([(3, 4, 5), (-5, -6, -7)], [(1, 1.1, 1.2), (0, 0.1, -0.1)], "mix"),    # mix better once, never worse
    ([(3, 4, 5), (0, 1, -1)], [(1, 1.1, 1.2), (0, 0.1, -0.1)], "mix"),      # a tie goes to mix
    ([(0, 1, -1), (0, 1, -1)], [(0, 0.1, -0.1), (0, 0.1, -0.1)], "none"),   # nothing better: keep the statistics
])
def test_the_default_rule(script, full, mix, expected):
    assert script.choose_default(_results(full, mix)) == expected
