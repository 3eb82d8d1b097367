"""benchmarks/device_check.py: the CPU mode end to end, and its guards (errors, budgets, out-of-memory)."""
import argparse
import importlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timm_xbn.corruptions import CORRUPTIONS

from process_events import alive, wait_for_file, wait_until_gone

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    return importlib.import_module("benchmarks.device_check")  # benchmarks/ is a package (python -m benchmarks.regenerate)


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_mode_measures_every_section(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # the tiny mode bounds the work; the time budgets (a GPU lease's) are lifted, so a busy machine cannot trip them
    no_deadline = ["--budget-s", "100000", "--section-budgets", *["100000"] * 8]  # a day: past any tiny run
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--output", str(out), *no_deadline],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == ["throughput", "profile", "corruptions", "train_step", "nccl", "train_smoke",
                              "robustness_smoke", "study"]
    assert {name: r["status"] for name, r in sections.items()} == dict.fromkeys(sections, "ok"), sections
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["device"] == "cpu"

    assert not any(r.get("failed") or r.get("skipped") for r in sections.values())
    rows = sections["throughput"]["rows"]
    # AMP + channels_last first, then the other layout, then float32
    assert [(r["amp"], r["channels_last"]) for r in rows] == [("bf16", True), ("bf16", False), ("off", True), ("off", False)]
    for r in rows:
        assert r["model"] == "xbn_resnet50" and r["baseline"] == "resnet50" and r["batch_size"] == 2
        for mode in ("infer", "train"):
            assert 0 < r[f"{mode}_xbn"] < math.inf and 0 < r[f"{mode}_bn"] < math.inf
            assert r[f"{mode}_ratio"] == pytest.approx(r[f"{mode}_xbn"] / r[f"{mode}_bn"], rel=1e-12)
    assert rows[0]["infer_xbn"] != rows[1]["infer_xbn"]  # each setting measured, not copied

    profile = sections["profile"]["rows"]
    assert [p["self_ms"] for p in profile] == sorted((p["self_ms"] for p in profile), reverse=True)
    assert any("convolution" in p["kernel"] for p in profile) and all(p["calls"] >= 1 for p in profile)

    corruptions = sections["corruptions"]
    assert [r["corruption"] for r in corruptions["rows"]] == list(CORRUPTIONS)
    for r in corruptions["rows"]:
        assert r["device_img_s"] == pytest.approx(5 * corruptions["batch"] / r["device_s"])
        assert r["reference_img_s"] == pytest.approx(5 * corruptions["reference_images"] / r["reference_s"])
        assert r["speedup"] == pytest.approx(r["device_img_s"] / r["reference_img_s"])
    total = corruptions["all"]  # one image through all 15: the per-image times add up
    assert 1 / total["device_img_s"] == pytest.approx(sum(1 / r["device_img_s"] for r in corruptions["rows"]))
    assert 1 / total["reference_img_s"] == pytest.approx(sum(1 / r["reference_img_s"] for r in corruptions["rows"]))

    step = sections["train_step"]
    assert [(r["variant"], r["layout"]) for r in step["rows"]] == [("BN", "channels_last"), ("XBN-GN", "channels_last")]
    assert step["batch_size"] == 4 and step["device"] == "cpu"

    assert sections["nccl"]["backend"] == "gloo" and "all_reduce ok" in sections["nccl"]["output_tail"]

    train = sections["train_smoke"]
    checkpoint = torch.load(train["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["progress"]["num_updates"] == 24 // 4  # one epoch over 3 classes x 8 images, batch 4
    assert train["results"]["epochs"] == 1

    robustness = sections["robustness_smoke"]
    results = json.loads(Path(robustness["results_file"]).read_text())
    assert results["run"]["files"] == robustness["num_images"] == 12
    assert robustness["runs"] == 4  # 2 models x (clean + 1 delta x 1 seed)
    assert all(cell["count"] == 12 for cell in results["cells"])

    study = sections["study"]  # one default-study network job at tiny sizes: 3 epochs x 64 images / batch 16
    job = study["network_job"]
    assert job["job"] == "BN seed 0" and job["device"] == "cpu" and job["steps"] == 3 * 64 // 16
    assert 0 <= job["top1"] <= 100 and 0 < job["job_wall_s"] <= job["wall_s"]
    assert "not_run" in study["quick"] and "--study-job" in job["command"]


def _args(tmp_path, budgets):
    return argparse.Namespace(device="cpu", budget_s=60, section_budgets=budgets, out=tmp_path / "c.json", smoke_size=32)


def test_a_failing_section_is_recorded_and_the_next_still_runs(device_check, tmp_path, monkeypatch):
    def boom(args, budget, record):
        raise RuntimeError("no such kernel")

    def fine(args, budget, record):
        record["rows"] = [1]

    monkeypatch.setattr(device_check, "SECTIONS", {"boom": boom, "fine": fine})
    device_check.run(_args(tmp_path, [5, 5]))
    report = json.loads((tmp_path / "c.json").read_text())["sections"]
    assert report["boom"]["status"] == "error" and report["boom"]["error"] == "RuntimeError: no such kernel"
    assert "no such kernel" in report["boom"]["traceback"]
    assert report["fine"] == {"status": "ok", "budget_s": 5, "rows": [1], "seconds": report["fine"]["seconds"]}


def _throughput_args(models):
    return argparse.Namespace(device="cpu", models=models, amp=["off"], compile=False, batch_size=128, img_size=32,
                              warmup=0, steps=1, rounds=1)


def test_throughput_halves_the_batch_on_out_of_memory_and_skips_past_its_budget(device_check, monkeypatch):
    calls, clock = [], [0.0]

    def fake_measure(xbn, bn, args, channels_last):
        calls.append(args.batch_size)
        if args.batch_size > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {xbn: {"infer": 30.0, "train": 9.0}, bn: {"infer": 40.0, "train": 10.0}}

    monkeypatch.setattr(device_check, "measure_pair", fake_measure)
    record = {}
    device_check.section_throughput(_throughput_args(["xbn_resnet50", "xbn_resnet50_d2"]),
                                    device_check.Budget(60, math.inf), record)
    assert calls == [128, 64, 32, 32, 32, 32]  # the smaller batch is kept for the later settings
    assert [r["batch_size"] for r in record["rows"]] == [32] * 4 and not record["skipped"]
    assert record["rows"][0]["infer_ratio"] == 0.75 and record["rows"][0]["train_ratio"] == 0.9

    # a budget that one setting overruns: it is measured, the others are listed as skipped. The section's
    # clock is a counter that a measurement advances by 0.05 s, so no real time passes
    def slow_measure(xbn, bn, args, channels_last):
        clock[0] += 0.05
        return fake_measure(xbn, bn, args, channels_last)

    monkeypatch.setattr(device_check, "time", argparse.Namespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(device_check, "measure_pair", slow_measure)
    record = {}
    device_check.section_throughput(_throughput_args(["xbn_resnet50"]), device_check.Budget(0.02, math.inf), record)
    assert len(record["rows"]) == 1 and record["skipped"] == [
        {"model": "xbn_resnet50", "amp": "off", "channels_last": False, "compile": False}]


def test_a_failing_setting_is_recorded_and_the_others_measured(device_check, monkeypatch):
    def measure(xbn, bn, args, channels_last):
        if xbn == "xbn_resnet50_d2" and channels_last:
            raise RuntimeError("compile failed")
        return {xbn: {"infer": 2.0, "train": 1.0}, bn: {"infer": 4.0, "train": 1.0}}

    monkeypatch.setattr(device_check, "measure_pair", measure)
    record = {}
    device_check.section_throughput(_throughput_args(["xbn_resnet50", "xbn_resnet50_d2"]),
                                    device_check.Budget(60, math.inf), record)
    assert record["failed"] == [{"model": "xbn_resnet50_d2", "amp": "off", "channels_last": True, "compile": False,
                                 "error": "RuntimeError: compile failed"}]
    assert [(r["model"], r["channels_last"]) for r in record["rows"]] == [
        ("xbn_resnet50", True), ("xbn_resnet50", False), ("xbn_resnet50_d2", False)]
    assert all(r["infer_ratio"] == 0.5 and r["train_ratio"] == 1.0 for r in record["rows"])


def test_corruptions_section_totals_and_a_failing_corruption(device_check, monkeypatch):
    args = argparse.Namespace(device="cpu", corruption_images=4, corruption_size=32, ref_images=2)
    monkeypatch.setattr(device_check, "reference_seconds", lambda images, name: 0.1 * len(images))
    monkeypatch.setattr(device_check, "torch_seconds", lambda batch, name, size, gen: 0.01 * (1 + CORRUPTIONS.index(name)))
    record = {}
    device_check.section_corruptions(args, device_check.Budget(60, math.inf), record)
    rows = record["rows"]
    assert [r["reference_img_s"] for r in rows] == pytest.approx([50.0] * 15)  # 5 severities x 2 images / 0.2 s
    assert rows[1]["device_img_s"] == pytest.approx(20 / 0.02) and rows[1]["speedup"] == pytest.approx(20.0)
    # one image through all 15: 15 x 0.02 s (reference) against sum_k 0.01 k / 20 s (device)
    assert record["all"]["reference_img_s"] == pytest.approx(1 / (15 * 0.02))
    assert record["all"]["device_img_s"] == pytest.approx(20 / (0.01 * 120))

    def failing(batch, name, size, gen):
        if name == "glass_blur":
            raise RuntimeError("no CUDA kernel")
        return 0.01

    monkeypatch.setattr(device_check, "torch_seconds", failing)
    record = {}
    device_check.section_corruptions(args, device_check.Budget(60, math.inf), record)
    assert record["failed"] == [{"corruption": "glass_blur", "error": "RuntimeError: no CUDA kernel"}]
    assert len(record["rows"]) == 14 and "all" not in record  # no total over a partial set


def test_train_step_section_times_the_study_step_against_the_bare_loop(device_check):
    """The CPU mode of the section, for real at tiny sizes: both variants in the study's layout, the
    ratios in its summary line computed from its rows."""
    record = {}
    device_check.section_train_step(argparse.Namespace(device="cpu", tiny=True), device_check.Budget(60, math.inf), record)
    bn, xbn = record["rows"]
    assert (bn["variant"], xbn["variant"]) == ("BN", "XBN-GN") and bn["layout"] == xbn["layout"] == "channels_last"
    assert record["batch_size"] == 4 and record["steps"] == 1 and record["rounds"] == 1
    # on the CPU the summary reads CPU time
    assert record["summary"] == (f"study overhead <= {100 * max(bn['overhead_cpu'], xbn['overhead_cpu']):+.1f} %, XBN-GN / BN "
                                 f"{xbn['bare_cpu_ms'] / bn['bare_cpu_ms']:.2f} (bare), "
                                 f"{xbn['study_cpu_ms'] / bn['study_cpu_ms']:.2f} (study)")
    assert set(record["profiles"]) == {"BN", "XBN-GN"} and record["profiles"]["XBN-GN"]["group norm"] > 0


def _gated_popen(started: Path, launched: list):
    """``subprocess.Popen`` (recording what it starts in ``launched``) whose ``communicate(timeout=...)`` first
    waits until the hanging command has started its worker (the worker wrote ``started``): the section's
    budget then runs out with a worker to kill, however slowly a busy machine starts it."""

    class Gated(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            launched.append(self)

        def communicate(self, input=None, timeout=None):
            if timeout is not None:
                wait_for_file(started, self)
            return super().communicate(input, timeout)

    return Gated


# A worker that outlives its launcher's kill writes SURVIVED: its sleep is bounded work, so a broken kill
# fails the test (after that sleep) instead of hanging it, and a working kill is seen at once.
_WORKER = "import sys, time; time.sleep(600); open(sys.argv[1], 'w').write('survived')"
# a launcher that, like torchrun, starts its worker in the worker's own session, then both sleep
_HANGING_LAUNCHER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[3], sys.argv[2]], start_new_session=True)
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_a_hanging_command_is_killed_with_workers_in_their_own_session(device_check, tmp_path, monkeypatch):
    pid_file, survived, launched = tmp_path / "worker.pid", tmp_path / "SURVIVED", []
    monkeypatch.setattr(device_check.subprocess, "Popen", _gated_popen(pid_file, launched))
    with pytest.raises(RuntimeError, match="^killed: over the section's time budget$"):
        device_check.run_budgeted([sys.executable, "-c", _HANGING_LAUNCHER, str(pid_file), str(survived), _WORKER],
                                  device_check.Budget(0, math.inf), {})
    assert [p.poll() for p in launched] == [-signal.SIGKILL]  # the launcher, killed and reaped
    worker = int(pid_file.read_text())
    wait_until_gone(worker)
    assert not alive(worker) and not survived.exists(), "the worker in its own session outlived the kill"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_a_hanging_torchrun_section_stops_within_its_budget(device_check, tmp_path, monkeypatch):
    """The issue's case: torchrun's worker sleeps forever; the section must return, and no process survive."""
    pid_file, survived, launched = tmp_path / "worker.pid", tmp_path / "SURVIVED", []
    script = tmp_path / "hang.py"
    script.write_text(f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                      f"{_WORKER.replace('sys.argv[1]', repr(str(survived)))}\n")
    # torchrun takes seconds to start its worker on a loaded machine: the budget starts once it has
    monkeypatch.setattr(device_check.subprocess, "Popen", _gated_popen(pid_file, launched))
    monkeypatch.setattr(device_check, "SECTIONS", {"hang": lambda args, budget, record: device_check.torchrun(
        1, [str(script)], budget, record)})
    device_check.run(_args(tmp_path, [0]))
    record = json.loads((tmp_path / "c.json").read_text())["sections"]["hang"]
    assert record["status"] == "error" and "over the section's time budget" in record["error"]
    assert pid_file.exists(), "the worker never started: the test proves nothing"
    worker = int(pid_file.read_text())
    wait_until_gone(worker)
    assert not alive(worker) and not survived.exists(), "torchrun's worker outlived the kill"
    assert [p.poll() for p in launched] == [-signal.SIGKILL]  # the launcher, killed


def test_one_interrupt_stops_the_check_with_one_line_keeping_the_finished_sections(device_check, tmp_path, monkeypatch,
                                                                                    capsys):
    """Ctrl-C during a section: exit 130, one line on stderr, and the JSON on disk holds the sections before it."""
    out, calls = tmp_path / "check.json", []

    def section(args, budget, record):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        record["note"] = "finished"

    for name in list(device_check.SECTIONS):
        monkeypatch.setitem(device_check.SECTIONS, name, section)
    monkeypatch.setattr(sys, "argv", ["device_check.py", "--device", "cpu", "--tiny", "--output", str(out)])
    with pytest.raises(SystemExit) as stopped:
        device_check.main()
    assert stopped.value.code == 130 and len(calls) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted")
    finished = json.loads(out.read_text())["sections"]
    assert len(finished) == 1 and next(iter(finished.values()))["note"] == "finished"
