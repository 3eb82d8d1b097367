"""benchmarks/tta_demo.py in its tiny mode, run by ``python -m benchmarks.regenerate --only tta --tiny`` into a
temporary folder: the result tables are well formed, averaged over the seeds and their intervals are the
paired Student-t intervals, and every file names its command, commit and machine."""
import json
import math
import sys
from pathlib import Path
from statistics import fmean, stdev

import pytest

from benchmarks import regenerate
from timm_xbn.utils.provenance import read_provenance

sys.path.insert(0, str(Path(__file__).parent))
from test_benchmarks import load  # noqa: E402

T_975_1 = 12.706204736174704  # Student t, 97.5 % quantile, 1 degree of freedom (two seeds)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    docs = tmp_path_factory.mktemp("docs")
    written = regenerate.main(["--only", "tta", "--tiny", "--output", str(docs), "--work", str(docs / "work")])
    assert written == [docs / "tta" / name for name in ("tta_demo.json", "tta_demo.md", "tta_demo.png")]
    return docs / "tta", json.loads((docs / "tta" / "tta_demo.json").read_text())


def test_rows_are_means_over_the_seeds_of_every_model_and_method(tiny_run):
    _, result = tiny_run
    demo = load("tta_demo")
    rows, per_seed = result["rows"], result["per_seed"]
    assert len(per_seed) == 2 and result["settings"]["seeds"] == [0, 1]
    expected = [(m, a) for m in ("BN", "all-GN", "XBN-P2") for a in (
        "source", "norm", "prior", "batch", "tent", "eata", "sar", "tent (cont.)", "eata (cont.)", "sar (cont.)")]
    assert [(r["model"], r["method"]) for r in rows] == expected
    columns = ["model", "method", "clean (source)", "mean sev 5", "mean sev 5 ±", "mean sev 3", "mean sev 3 ±",
               "gaussian_noise", "fwd/img", "bwd/img"]
    assert list(rows[0]) == columns
    for i, row in enumerate(rows):
        for key in columns[2:]:
            assert math.isfinite(row[key]), (row, key)
        for key in ("clean (source)", "mean sev 5", "gaussian_noise"):
            assert row[key] == pytest.approx(fmean(seed[i][key] for seed in per_seed))
        half = T_975_1 * stdev(seed[i]["mean sev 3"] for seed in per_seed) / math.sqrt(2)
        assert row["mean sev 3 ±"] == pytest.approx(half)
    for seed in per_seed:  # the all-GN network has no BN: re-estimating statistics changes nothing
        by = {(r["model"], r["method"]): r for r in seed}
        for method in ("norm", "prior", "batch"):
            assert by[("all-GN", method)]["mean sev 5"] == by[("all-GN", "source")]["mean sev 5"]
        assert by[("BN", "source")]["bwd/img"] == 0 and by[("BN", "tent")]["bwd/img"] == 1.0
    assert len(result["effects"]) == 2 * len(demo.COMPARISONS)


def test_effects_are_paired_differences_with_t_intervals(tiny_run):
    _, result = tiny_run
    per_seed = result["per_seed"]

    def values(model, method, severity):
        return [next(r[f"mean sev {severity}"] for r in seed if r["model"] == model and r["method"] == method)
                for seed in per_seed]

    by_name = {(e["comparison"], e["severity"]): e for e in result["effects"]}
    for (name, severity), (a, b) in {("XBN-P2: norm - source", 5): (("XBN-P2", "norm"), ("XBN-P2", "source")),
                                     ("BN: tent (cont.) - tent", 3): (("BN", "tent (cont.)"), ("BN", "tent")),
                                     ("XBN-P2 - BN: norm", 5): (("XBN-P2", "norm"), ("BN", "norm"))}.items():
        diff = [x - y for x, y in zip(values(*a, severity), values(*b, severity))]
        effect = by_name[(name, severity)]
        assert effect["per_seed"] == pytest.approx(diff) and effect["mean"] == pytest.approx(fmean(diff))
        half = T_975_1 * stdev(diff) / math.sqrt(2)
        assert (effect["ci_low"], effect["ci_high"]) == pytest.approx((fmean(diff) - half, fmean(diff) + half))
        low, high = effect["ci_low"], effect["ci_high"]
        assert effect["verdict"] == ("lower" if high < 0 else "higher" if low > 0 else "inconclusive")


def test_every_file_names_its_command_commit_and_machine(tiny_run):
    out, _ = tiny_run
    for name in ("tta_demo.json", "tta_demo.md", "tta_demo.png"):
        prov = read_provenance(out / name)
        assert prov is not None, name
        assert prov["command"] == f"python benchmarks/tta_demo.py -o {out} --portable --tiny"
        assert prov["commit"] and prov["machine"]
    table = (out / "tta_demo.md").read_text().splitlines()
    assert table[0].startswith("Written by `") and "| XBN-P2 | sar (cont.) |" in "\n".join(table)
