"""The study as a user meets it: Ctrl-C, work saved as it goes, progress lines, quick-run labels,
the folder's remembered design, study-compare across designs, Fisher-z intervals, typed job kinds."""
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from test_study import tiny_config
from timm_xbn.study import StudyConfig, run_study
from timm_xbn.study import jobs as jobs_module
from timm_xbn.study import plots as plots_module
from timm_xbn.study import run as run_module
from timm_xbn.study.config import JOB_KINDS, QUICK_NOTE, JobKind
from timm_xbn.study.evidence import HOLDS, INCONCLUSIVE, correlation_effect
from timm_xbn.study.report import claim_esm_grows, design_differences
from timm_xbn.study.resnet import ImageSplit, ResNetConfig, build_variant, train_classifier
from timm_xbn.utils.interrupts import EXIT_CODE, Interrupted

ROOT = Path(__file__).resolve().parents[1]
DONE_LINE = re.compile(r"^interrupted after (\d+) of (\d+) jobs; rerun the same command to resume$")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200")


def _wait_for(proc: subprocess.Popen, ready) -> None:
    """Poll until ``ready()``; the process ending first fails the test (no wall-clock limit)."""
    while not ready():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)


def _results(out: Path) -> list:
    return [p for p in out.glob("parts/*/*.json") if not p.name.endswith((".time.json", ".train.json"))]


# ---- interrupts ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_the_study_keeps_finished_jobs_and_a_rerun_resumes(tmp_path):
    """A real SIGINT to `xbn-eval study --quick` with 2 workers once its first job has finished: exit 130,
    one line naming the jobs kept (those on disk), no traceback, no temporary file; the rerun says what it
    resumes (and stops on SIGTERM the same way)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "timm_xbn.evaluation", "study", "--quick", "-w", "2", "-o", str(out)]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, lambda: _results(out))
    seen = len(_results(out))
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate()
    assert proc.returncode == EXIT_CODE, stderr
    assert "Traceback" not in stderr + stdout and "Exception ignored" not in stderr
    last = stderr.strip().splitlines()[-1]
    match = DONE_LINE.match(last)
    assert match and int(match[2]) == 28, last
    kept = _results(out)
    assert int(match[1]) == len(kept) >= 1 and not list(out.rglob("*.tmp"))
    assert len(kept) <= seen + 2  # the 2 running jobs at most finished: the queued ones were cancelled
    assert not (out / "summary.txt").exists()

    rerun = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any("Study jobs:" in line for line in lines):
        line = rerun.stderr.readline()
        assert line or rerun.poll() is None, lines
        lines.append(line)
    assert f"resuming: {len(kept)} of 28 jobs done" in lines[-1], lines
    rerun.send_signal(signal.SIGTERM)
    _, stderr = rerun.communicate()
    assert rerun.returncode == EXIT_CODE and DONE_LINE.match(stderr.strip().splitlines()[-1]), stderr
    assert "Traceback" not in stderr


# ---- work saved as it goes -----------------------------------------------------------------------


def _tiny_split() -> ImageSplit:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g)
    return ImageSplit(x, y, x.mean((0, 2, 3)), x.std((0, 2, 3)))


def test_training_stopped_after_an_epoch_resumes_bit_identically(tmp_path):
    """9 steps of 16 images (3 epochs) straight, vs stopped in epoch 2 and resumed from epoch 1's state:
    the same weights, buffers and history, bit for bit."""
    rc, split = ResNetConfig(arch="resnet26", channels=(4, 8, 8, 8), stem_width=8, gn_groups=2), _tiny_split()

    def train(checkpoint=None, stop_at=None):
        model = build_variant("XBN-GN", rc, 10, 0)

        def on_step(update: int) -> None:
            if update == stop_at:
                raise Interrupted()

        return model, train_classifier(model, split, 0, 16, 0.1, 1e-4, 1, 9, on_step=on_step, checkpoint=checkpoint)

    straight, history = train()
    state = tmp_path / "state.safetensors"
    with pytest.raises(Interrupted):
        train(state, stop_at=5)
    assert state.is_file()
    resumed, resumed_history = train(state)
    assert resumed_history == history and len(history) == 3
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    with_state, _ = train(tmp_path / "other.safetensors")  # saving the state changes nothing either
    assert all(torch.equal(t, with_state.state_dict()[n]) for n, t in straight.state_dict().items())


def test_a_network_job_interrupted_mid_training_resumes_from_its_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "plot_study", lambda *args, **kwargs: [])
    cfg = tiny_config()
    cfg.train_seeds = (0,)
    real = jobs_module._step_callback

    def stop_in_epoch_two(job, steps):
        inner = real(job, steps)

        def on_step(update: int) -> None:
            inner(update)
            if update == 5:  # 3 steps per epoch: epoch 1's state is saved
                raise Interrupted()

        return on_step

    monkeypatch.setattr(jobs_module, "_step_callback", stop_in_epoch_two)
    with pytest.raises(Interrupted, match=r"^interrupted after 0 of 2 jobs; rerun the same command to resume$"):
        run_study(cfg, tmp_path / "a", workers=1, parts=["network"], console=Console(file=io.StringIO()))
    (state,) = (tmp_path / "a" / "parts").glob("*/net_bn_seed0.ckpt.safetensors")
    monkeypatch.setattr(jobs_module, "_step_callback", real)
    log = io.StringIO()
    resumed = run_study(cfg, tmp_path / "a", workers=1, parts=["network"], console=Console(file=log, width=300))
    assert "resuming: 0 of 2 jobs done, 1 network at epoch 1/3" in log.getvalue()
    assert not state.exists()  # the finished network's state file is gone
    straight = run_study(cfg, tmp_path / "b", progress=False, workers=1, parts=["network"])
    assert json.dumps(resumed["resnet"], sort_keys=True) == json.dumps(straight["resnet"], sort_keys=True)


# ---- progress ------------------------------------------------------------------------------------

PROGRESS = re.compile(r"^progress (\d+:\d\d): (.+); (\d+) of (\d+) jobs(; ETA (.+))?$")
KIND = re.compile(r"^(\w+) (\d+)/(\d+)(?: \[(.+)\])?(?: ([\d.]+) CPU-s/step)?$")


def test_plain_progress_lines_off_a_terminal(tmp_path, monkeypatch):
    """Not a terminal: a plain line per progress event (every 0 s here), with the finished jobs per kind
    and in all never going down, the running job's step, the CPU-seconds per step and an ETA once a step is
    measured."""
    monkeypatch.setattr(run_module, "plot_study", lambda *args, **kwargs: [])
    cfg = tiny_config()
    cfg.train_seeds = (0,)
    log = io.StringIO()
    run_study(cfg, tmp_path, workers=1, parts=["network", "small_batch"], progress_every_s=0,
              console=Console(file=log, width=400))
    lines = [line for line in log.getvalue().splitlines() if line.startswith("progress ")]
    assert len(lines) > 10
    done_before, kinds_before, steps_before = 0, {}, {}
    for line in lines:
        match = PROGRESS.match(line)
        assert match, line
        done, total = int(match[3]), int(match[4])
        assert total == 2 + 6 and done_before <= done <= total
        done_before = done
        kinds, running_now = {}, False
        for part in match[2].split(", "):
            kind = KIND.match(part)
            assert kind, part
            kinds[kind[1]] = int(kind[2])
            assert kinds_before.get(kind[1], 0) <= int(kind[2]) <= int(kind[3])
            for running in (kind[4] or "").split("; ") if kind[4] else []:
                name, step, steps = re.match(r"^(.+) step (\d+)/(\d+)$", running).groups()
                assert steps_before.get(name, 0) <= int(step) <= int(steps)
                steps_before[name] = int(step)
            if kind[4]:
                running_now = True
                assert kind[5] is not None and float(kind[5]) > 0  # CPU-s per step, measured
        assert set(kinds) == {"network", "small_batch"} and sum(kinds.values()) == done
        kinds_before = kinds
        if running_now:  # a running job has measured its steps: an ETA in minutes
            assert match[6] and "min" in match[6], line
    assert done_before == 8 and steps_before["BN seed 0"] == 9  # the last step is always reported


def test_eta_is_the_work_left_times_the_measured_seconds_per_job(tmp_path):
    """Hand-computed: 2 network jobs of 9 steps, 2 workers. One reports step 3 after 6 s: 2 s per step,
    18 s per job, 2 - 3/9 jobs left -> 18 x 5/3 / 2 = 15 s. Then it finishes in 20 s (its time file) while
    the other reports step 6: 20 x (1 - 6/9) / 2 = 10/3 s."""
    from types import SimpleNamespace

    from timm_xbn.study.jobs import StepReport, plan_jobs

    cfg = tiny_config()
    cfg.train_seeds = (0,)
    data = SimpleNamespace(name="fake", source="memory", train_y=[0] * 48, test_y=[0] * 24)
    first, second = plan_jobs(cfg, data, [JobKind.NETWORK])
    progress = run_module._Progress(Console(file=io.StringIO()), cfg, data, [first, second], tmp_path, 2, math.inf)
    progress.step(StepReport(first.key, 3, 9, cpu_s=3.0, wall_s=6.0))
    assert progress._eta_s(JobKind.NETWORK) == pytest.approx(15.0)
    assert progress._cpu_per_step(JobKind.NETWORK) == pytest.approx(1.0)
    first.path(tmp_path, ".time.json").parent.mkdir(parents=True)
    first.path(tmp_path, ".time.json").write_text(json.dumps({"wall_s": 20.0, "cpu_s": 10.0}))
    progress.step(StepReport(second.key, 6, 9, cpu_s=4.0, wall_s=9.0))
    progress.done(first, {})
    assert progress._eta_s(JobKind.NETWORK) == pytest.approx(10 / 3)
    assert re.search(r"network 1/2 \[XBN-GN seed 0 step 6/9\] 0\.778 CPU-s/step; 1 of 2 jobs; ETA 0\.1 min$",
                     progress.line()), progress.line()


# ---- quick runs, claims printed once -------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    log = io.StringIO()
    results = run_study(StudyConfig.preset("quick"), out, workers=1, console=Console(file=log, width=400),
                        progress_every_s=math.inf)
    return out, results, log.getvalue()


@pytest.mark.slow
def test_a_quick_run_says_so_and_prints_each_claim_once(quick_results, monkeypatch):
    out, results, log = quick_results
    assert log.splitlines()[0].startswith(QUICK_NOTE)
    assert (out / "summary.txt").read_text().splitlines()[0] == QUICK_NOTE.upper()
    assert f"({QUICK_NOTE})." in (out / "summary.txt").read_text()
    assert (out / "claims.csv").read_text().splitlines()[0] == f"# {QUICK_NOTE}"
    for claim in results["claims"]:
        assert log.count(f"] {claim['claim']}  (") + log.count(f". {claim['claim']}  (") == 1, claim["id"]
    titles = []
    monkeypatch.setattr(plots_module, "save_figure",
                        lambda fig, path, **k: titles.append(fig._suptitle.get_text() if fig._suptitle else "") or path)
    plots_module.plot_study(results, out / "again")
    assert len(titles) == len(plots_module.PLOT_FILES) and all(t.startswith(QUICK_NOTE) for t in titles)
    titles.clear()
    plots_module.plot_study({**results, "config": {**results["config"], "preset": "default"}}, out / "again")
    assert not any(QUICK_NOTE in t for t in titles)


# ---- the folder remembers its design -------------------------------------------------------------


class _Stop(Exception):
    pass


def test_a_folder_refuses_a_run_with_other_settings_unless_overwrite(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.txt").write_text("the first run's summary\n")
    run_module._check_design(folder, StudyConfig.preset("quick"), overwrite=False)
    run_module._check_design(folder, StudyConfig.preset("quick"), overwrite=False)  # the same settings: fine
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 vs 1\); give --overwrite") as refused:
        run_module._check_design(folder, StudyConfig.preset("quick", seed=1), overwrite=False)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"preset: quick vs default; .*\+\d+ more"):
        run_module._check_design(folder, StudyConfig.preset(), overwrite=False)
    assert (folder / "summary.txt").read_text() == "the first run's summary\n"
    assert json.loads((folder / "design.json").read_text()) == json.loads(json.dumps(StudyConfig.preset("quick").to_dict()))
    run_module._check_design(folder, StudyConfig.preset("quick", seed=1), overwrite=True)
    assert json.loads((folder / "design.json").read_text())["seed"] == 1
    # a folder written before design.json: its study.json's config is the design
    old = tmp_path / "old"
    old.mkdir()
    (old / "study.json").write_text(json.dumps({"kind": "study", "config": {
        k: v for k, v in StudyConfig.preset("quick").to_dict().items() if k != "preset"}}))
    run_module._check_design(old, StudyConfig.preset("quick"), overwrite=False)
    with pytest.raises(ValueError, match="threads: 1 vs 2"):
        run_module._check_design(old, StudyConfig.preset("quick", threads=2), overwrite=False)


def test_cli_refuses_another_seed_in_the_same_folder_before_any_work(tmp_path, monkeypatch):
    from timm_xbn.cli import eval_app

    monkeypatch.setattr(run_module, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    run_module._check_design(tmp_path, StudyConfig.preset("quick"), overwrite=False)
    result = CliRunner().invoke(eval_app, ["study", "--quick", "--seed", "1", "-o", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "seed: 0 vs 1" in result.output and "--overwrite" in result.output
    result = CliRunner().invoke(eval_app, ["study", "--quick", "--seed", "1", "--overwrite", "-o", str(tmp_path)])
    assert isinstance(result.exception, _Stop)  # past the check, at the data


# ---- study-compare across designs ----------------------------------------------------------------


def _run_dict(config=None, n=5):
    out = {"threads": 1, "dataset": {"name": "d"}, "claims": [
        {"id": "x", "claim": "x", "verdict": HOLDS,
         "effects": [{"name": "e", "mean": 1.0, "ci_low": 0.5, "ci_high": 1.5, "verdict": HOLDS, "n": n}]}]}
    if config is not None:
        out["config"] = config
    return out


def test_design_differences_name_the_settings_but_not_threads_or_device():
    default, quick = StudyConfig.preset().to_dict(), StudyConfig.preset("quick").to_dict()
    assert design_differences(_run_dict(default), _run_dict(StudyConfig.preset(threads=2, device="cuda").to_dict())) == []
    changed = design_differences(_run_dict(default), _run_dict(quick))
    assert "preset: default vs quick" in changed and "train_seeds: [0, 1, 2, 3, 4] vs [0, 1]" in changed
    assert "resnet.epochs: 3.0 vs 1.0" in changed
    # a claims.csv without its design (written before it was recorded): the seed counts still tell
    assert design_differences(_run_dict(), _run_dict(quick, n=2)) == [
        "preset: not recorded vs quick", "training seeds per effect: 5 vs 2"]
    assert design_differences(_run_dict(), _run_dict(n=5)) == []


@pytest.mark.slow
def test_study_compare_warns_and_exits_1_on_different_designs(quick_results, tmp_path):
    from timm_xbn.cli import eval_app

    out, results, _ = quick_results
    committed = ROOT / "docs" / "study" / "claims.csv"  # the default design, 5 seeds
    result = CliRunner().invoke(eval_app, ["study-compare", str(committed), str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == lines[-1] and lines[0].startswith("WARNING: the two runs have different designs")
    # the committed claims.csv records its design: the differing settings are named
    assert "train_seeds: [0, 1, 2, 3, 4] vs [0, 1]" in lines[0] and "preset: default vs quick" in lines[0]
    same = CliRunner().invoke(eval_app, ["study-compare", str(out / "claims.csv"), str(out)])
    assert same.exit_code == 0 and "WARNING" not in same.output, same.output


# ---- Fisher-z intervals --------------------------------------------------------------------------


def test_correlation_interval_is_a_t_interval_on_fisher_z_within_minus_one_and_one():
    rho = [0.95, 0.7, 0.99]
    z = np.arctanh(rho)  # by hand: the t interval over seeds on z, then tanh
    half = stats.t.ppf(0.975, 2) * np.std(z, ddof=1) / math.sqrt(3)
    e = correlation_effect("r", rho, +1, pairs=20)
    assert e.mean == pytest.approx(math.tanh(z.mean()))
    assert (e.ci_low, e.ci_high) == (pytest.approx(math.tanh(z.mean() - half)), pytest.approx(math.tanh(z.mean() + half)))
    assert -1 < e.ci_low < e.ci_high < 1 and e.sd == pytest.approx(np.std(rho, ddof=1))
    # the plain t interval over these rhos would pass +1 (the ρ of +1.314 seen before)
    assert np.mean(rho) + stats.t.ppf(0.975, 2) * np.std(rho, ddof=1) / math.sqrt(3) > 1
    # a perfect rank correlation: half an adjacent swap short of 1 (1 - 6 / (n (n^2 - 1)))
    perfect = correlation_effect("r", [1.0, 1.0, 1.0], +1, pairs=4)
    assert perfect.ci_low == pytest.approx(1 - 6 / (4 * 15)) and perfect.verdict == HOLDS
    assert correlation_effect("r", [0.5, -0.4], +1, pairs=10).verdict == INCONCLUSIVE


def test_the_esm_growth_claim_uses_fisher_z():
    rng = np.random.default_rng(0)
    profiles = [[0.1 * l + rng.normal(0, 0.3) + 1.0 for l in range(1, 13)] for s in range(3)]
    from test_study import _mlp_results

    claim = claim_esm_grows(_mlp_results(profiles, profiles))
    effect = claim.effects[0][0]
    assert all(-1 < r < 1 for r in effect.per_seed)
    z = np.arctanh(effect.per_seed)
    half = stats.t.ppf(0.975, 2) * np.std(z, ddof=1) / math.sqrt(3)
    assert effect.ci_high == pytest.approx(math.tanh(z.mean() + half)) and effect.ci_high < 1


# ---- job kinds -----------------------------------------------------------------------------------


def test_every_job_kind_has_one_entry_and_reads_as_its_name():
    assert set(jobs_module._KINDS) == set(JobKind) and JOB_KINDS == tuple(JobKind)
    assert [str(k) for k in JOB_KINDS] == ["mlp", "network", "small_batch", "tta"]
    assert json.dumps({"parts": list(JOB_KINDS)}) == '{"parts": ["mlp", "network", "small_batch", "tta"]}'
    job = jobs_module.Job(JobKind.SMALL_BATCH, 3, "XBN-GN", 4)
    assert (job.key, job.describe()) == ("smallbatch_xbn_gn_b4_seed3", "XBN-GN batch 4 seed 3")
