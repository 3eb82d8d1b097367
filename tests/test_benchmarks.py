"""Every script in benchmarks/ runs in its tiny mode and returns a well-formed result table: the expected
columns, finite positive measurements, and its derived columns consistent with the measured ones."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load(name: str):
    """benchmarks/<name>.py as a module (the scripts import their neighbours: benchmarks/ goes on the path)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive_finite(row: dict, keys) -> None:
    for key in keys:
        assert isinstance(row[key], float) and 0 < row[key] < math.inf, (key, row)


def check_corruptions(rows):
    assert [r["corruption"] for r in rows] == ["gaussian_noise", "contrast", "jpeg_compression", "all"]
    for r in rows:
        _positive_finite(r, ("reference_img_s", "torch_img_s", "speedup"))
        assert r["speedup"] == pytest.approx(r["torch_img_s"] / r["reference_img_s"])
        assert r["reference_setup_s"] >= 0 and r["torch_setup_s"] >= 0
        _positive_finite(r, ("speedup_wall", "speedup_steady"))  # CPU-time ratios, the wall-time one beside; steady
    # the floors: the noise's draws and libjpeg's codec; contrast is bound by none
    assert [r.get("floor") for r in rows] == ["a normal per value", None, "libjpeg encode + decode", None]
    for r in (rows[0], rows[2]):
        _positive_finite(r, ("floor_img_s", "floor_speedup"))
        assert r["floor_speedup"] == pytest.approx(r["floor_img_s"] / r["reference_img_s"])
    # the total: one image through every corruption, so the per-image times add up
    assert 1 / rows[-1]["torch_img_s"] == pytest.approx(sum(1 / r["torch_img_s"] for r in rows[:-1]))


def check_cpu_amp(rows):
    assert [r["autocast"].split()[0] for r in rows] == ["off", "bfloat16", "float16"]
    for r in rows:
        _positive_finite(r, ("s_per_step", "vs_float32"))
        assert r["vs_float32"] == pytest.approx(r["s_per_step"] / rows[0]["s_per_step"])
    assert rows[0]["vs_float32"] == 1.0


def check_surgery_coverage(rows):
    import timm

    assert [r["module"] for r in rows] == ["resnet", "regnet"]
    for r in rows:
        names = timm.list_models(module=r["module"])[:3]
        assert r["models"] == len(names) == 3 and r["converted"] == 3 - len(r["not_converted"])
        assert set(r["not_converted"]) <= set(names)


def check_sweep(rows):
    assert [r["clock"] for r in rows] == ["wall", "CPU"]
    for r in rows:
        _positive_finite(r, ("decode_s", "pure_forward_s", "naive_s", "shared_s"))
        assert r["naive_over_shared"] == pytest.approx(r["naive_s"] / r["shared_s"])
        assert r["shared_over_pure"] == pytest.approx(r["shared_s"] / r["pure_forward_s"])
        assert r["same_counts"] is True


def check_throughput(rows):
    assert [(r["model"], r["baseline"], r["channels_last"]) for r in rows] == [
        ("xbn_resnet26", "resnet26", False), ("xbn_resnet26", "resnet26", True)]
    for r in rows:
        _positive_finite(r, ("infer_xbn", "infer_bn", "train_xbn", "train_bn"))
        for mode in ("infer", "train"):
            assert r[f"{mode}_ratio"] == pytest.approx(r[f"{mode}_xbn"] / r[f"{mode}_bn"])


CHECKS = {"corruptions": check_corruptions, "cpu_amp": check_cpu_amp, "surgery_coverage": check_surgery_coverage,
          "sweep": check_sweep, "throughput": check_throughput}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_benchmark_tiny_mode_returns_a_well_formed_table(name, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py"])
    CHECKS[name](load(name).main(["--tiny"]))


def test_every_benchmark_has_a_tiny_mode_test():
    """A script in benchmarks/ must come with a test that runs it with ``--tiny`` (here or in a test file
    naming the script)."""
    tests = [p.read_text() for p in Path(__file__).parent.glob("test_*.py")]
    for script in BENCHMARKS.glob("*.py"):
        if script.stem.startswith("_") or script.stem == "regenerate":
            continue
        named = (f'"{script.stem}"', script.name)
        assert script.stem in CHECKS or any(any(n in text for n in named) and "--tiny" in text for text in tests), script.name
