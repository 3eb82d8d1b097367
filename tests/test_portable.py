"""timm_xbn.utils.portable: a command given --portable re-executes itself pinned (torch then reports AVX2
kernels), callers that cannot be re-executed get one error line, the provenance records carry the kernel
fields, and benchmarks/portable.py's tiny mode trains the study's network under both settings."""
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

import pytest
import torch
from typer.testing import CliRunner

from benchmarks import portable as bench
from timm_xbn.cli import eval_app
from timm_xbn.utils import portable
from timm_xbn.utils.provenance import provenance, read_provenance, stamp

ROOT = Path(__file__).parents[1]
HAS_AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="portable mode needs an x86-64 CPU with AVX2")
_REPORT = ("import json; from timm_xbn.utils.portable import ensure_portable, kernel_record; "
           "ensure_portable(); print(json.dumps([kernel_record(), kernel_record(threads=2)]))")


def _unpinned_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in portable.PINS and k != "TIMM_XBN_PORTABLE_REEXEC"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _REPORT, *args], cwd=ROOT, env=env, capture_output=True, text=True)


@needs_avx2
def test_a_command_with_the_flag_reexecutes_itself_pinned():
    result = _run(_unpinned_env(OMP_NUM_THREADS="4"), "--portable")
    assert result.returncode == 0, result.stderr
    record, two_threads = json.loads(result.stdout)
    assert (record["capability"], record["isa_cap"], record["mkl_branch"]) == ("AVX2", "AVX2", "COMPATIBLE")
    assert record["threads"] == 1 and record["portable"] is True
    assert two_threads["portable"] is False  # pinned, but two threads round otherwise


@needs_avx2
def test_a_process_started_pinned_runs_without_reexecution_at_one_thread():
    result = _run({**_unpinned_env(OMP_NUM_THREADS="4"), **portable.PINS})  # no flag: nothing to re-execute
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)[0]
    assert record["capability"] == "AVX2" and record["threads"] == 1 and record["portable"] is True


@needs_avx2
def test_no_second_reexecution_and_no_pins_without_avx2():
    looped = _run(_unpinned_env(TIMM_XBN_PORTABLE_REEXEC="1"), "--portable")  # pins lost: refuse, never loop
    assert looped.returncode != 0 and "must be set before torch starts" in looped.stderr
    no_avx2 = _run(_unpinned_env(ATEN_CPU_CAPABILITY="default"), "--portable")  # a CPU below AVX2
    assert no_avx2.returncode != 0 and "needs AVX2, and torch reports DEFAULT" in no_avx2.stderr


def test_in_process_callers_get_the_settings_to_use(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "pytest"])
    if not portable.is_pinned():
        with pytest.raises(portable.PortableModeError, match="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"):
            portable.ensure_portable()
    with pytest.raises(portable.PortableModeError, match="one thread per job, not 2"):
        portable.ensure_portable(threads=2)


def test_the_study_command_and_the_benchmarks_refuse_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "pytest"])
    result = CliRunner().invoke(eval_app, ["study", "--quick", "--portable", "--threads", "2", "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and "error: portable mode runs one thread per job, not 2" in result.output
    if portable.is_pinned():
        return
    result = CliRunner().invoke(eval_app, ["study", "--quick", "--portable", "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and "must be set before torch starts" in result.output
    from benchmarks import tta_demo

    with pytest.raises(SystemExit) as exit_:
        tta_demo.main(["--tiny", "--portable", "-o", str(tmp_path / "tta")])
    assert exit_.value.code == 2 and not (tmp_path / "tta").exists()


@pytest.mark.parametrize("name", ["t.md", "t.csv", "t.json"])
def test_provenance_records_the_kernels_in_every_format(tmp_path, name):
    path = tmp_path / name
    path.write_text("{}" if name.endswith(".json") else "a\n")
    record = provenance("cmd", {"capability": "AVX2", "isa_cap": "AVX2", "mkl_branch": "COMPATIBLE", "threads": 1,
                                "cpu": "AMD EPYC 7B13 (64-core), v2", "portable": True})
    stamp(path, record)
    assert read_provenance(path) == record
    native = {**record, "capability": "AVX512", "isa_cap": "none", "threads": 2, "portable": False}
    stamp(path, native)
    assert read_provenance(path) == native
    if name == "t.md":
        assert ", 2 threads, native mode, CPU AMD EPYC 7B13 (64-core), v2." in path.read_text().splitlines()[0]


def test_the_record_describes_this_process():
    record = provenance("cmd")
    assert record["capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = {line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")}
        assert names and record["cpu"] in names
    assert record["isa_cap"] == os.environ.get("ONEDNN_MAX_CPU_ISA", "none")
    assert record["portable"] == (portable.is_pinned() and torch.get_num_threads() == 1)


@needs_avx2
def test_the_cost_benchmark_trains_under_both_settings(capsys):
    results = bench.main(["--tiny"])
    native, pinned = results["native"][0], results["portable"][0]
    assert native["capability"] == torch.backends.cpu.get_cpu_capability() and native["portable"] is False
    assert (pinned["capability"], pinned["threads"], pinned["portable"]) == ("AVX2", 1, True)
    assert len(native["cpu_s"]) == len(pinned["cpu_s"]) == 2  # 3 steps, the first untimed
    if native["capability"] == "AVX512":  # other kernels, other rounding: other weights
        assert native["hash"] != pinned["hash"]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| portable |")]
    ratio = median(pinned["cpu_s"]) / median(native["cpu_s"])
    assert len(rows) == 1 and f"| {ratio:.2f}x |" in rows[0]
