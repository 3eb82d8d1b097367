"""Malformed results files given to the commands that read them back: one ``error:`` line, exit code 2.

``study-compare`` reads two study.json files, ``study`` reads its finished jobs back when it resumes,
``adapt`` its adapt.json (robustness / corruption / hub push: ``test_cli_errors.py``). No command
may start work on a file it cannot read: the study's jobs are replaced by one that fails the test.
"""
import json

import pytest
from typer.testing import CliRunner

from test_corruptions_data import make_imagenet_c
from timm_xbn.cli import eval_app

STUDY = {"kind": "study", "threads": 1, "dataset": {"name": "d"}, "claims": [
    {"id": "a", "claim": "A", "verdict": "HOLDS", "effects": [
        {"name": "e", "mean": 1.0, "ci_low": 0.5, "ci_high": 1.5, "verdict": "HOLDS"}]}]}


def assert_one_line_error(result, message):
    """Exit code 2 and one ``error:`` line (after any progress lines) that says ``message``."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    assert message in errors[0], result.stderr
    assert "Traceback" not in result.output


def _without(path, key):
    """STUDY with ``key`` removed from the object at ``path`` (a tuple of keys / indices)."""
    study = json.loads(json.dumps(STUDY))
    target = study
    for step in path:
        target = target[step]
    del target[key]
    return study


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "study.json"),
    ('"a string"', "study.json"),
    (json.dumps({"kind": "robustness", "claims": []}), "is not a study results file"),
    (json.dumps({"kind": "study"}), "is a damaged or incomplete study results file"),
    (json.dumps(_without((), "threads")), "threads"),
    (json.dumps(_without(("claims", 0), "verdict")), "verdict"),
    (json.dumps(_without(("claims", 0, "effects", 0), "mean")), "mean"),
    (json.dumps({**STUDY, "claims": [1]}), "study.json"),
])
def test_study_compare_refuses_malformed_files(tmp_path, text, message):
    good, bad = tmp_path / "good.json", tmp_path / "study.json"
    good.write_text(json.dumps(STUDY))
    bad.write_text(text)
    assert CliRunner().invoke(eval_app, ["study-compare", str(good), str(good)]).exit_code == 0
    for args in ([good, bad], [bad, good]):
        assert_one_line_error(CliRunner().invoke(eval_app, ["study-compare", *map(str, args)]), message)


def test_study_resume_refuses_a_damaged_job_result_before_running_anything(tmp_path, monkeypatch):
    import timm_xbn.study.jobs as jobs_module
    from timm_xbn.study import StudyConfig
    from timm_xbn.study.data import load_dataset

    def no_job(*args, **kwargs):
        raise AssertionError("a job ran")

    monkeypatch.setattr(jobs_module, "_run_job", no_job)
    cfg = StudyConfig.preset("quick")
    out = tmp_path / "study"
    jobs = jobs_module.plan_jobs(cfg, load_dataset(cfg.dataset, cfg.image_size, cfg.seed))
    damaged = jobs[0].path(out / "parts")
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"top1": 5')  # killed mid-write by something other than the study's atomic writes
    assert_one_line_error(CliRunner().invoke(eval_app, ["study", "--quick", "-o", str(out)]), damaged.name)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1]", "it holds a JSON list"),
    (json.dumps({"kind": "robustness"}), "it holds 'robustness' results, expected 'adapt'"),
])
def test_adapt_refuses_a_malformed_results_file_in_its_output_folder(image_folder, tmp_path, content, message):
    clean = image_folder("clean", classes=3, per_class=1, size=32, ext="PNG")
    root = make_imagenet_c(clean, tmp_path / "imagenet-c", severities=(1,))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapt.json").write_text(content)
    result = CliRunner().invoke(eval_app, [
        "adapt", "-m", "resnet18", "--model-kwargs", '{"num_classes": 3}', "--img-size", "32", "--crop-pct", "1.0",
        "-b", "4", "-j", "0", "--device", "cpu", "--imagenet-c", str(root), "--severities", "1", "--method", "tent", "-o", str(tmp_path / "out")])
    assert_one_line_error(result, message)
    assert (tmp_path / "out" / "adapt.json").read_text() == content  # left as it was
