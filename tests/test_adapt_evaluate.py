"""``evaluate_adaptation`` and ``xbn-eval adapt`` on the released ImageNet-C folder layout (test fixtures):
errors against per-image evaluation, episodic vs a plain ``run_protocol``, continual resume, sharding refusal."""
import json

import pytest
import torch
from typer.testing import CliRunner

from test_corruptions_data import CONFIG, folder_samples, make_imagenet_c, manual_error, tiny_model
from timm_xbn.adapt import Tent, run_protocol
from timm_xbn.grid import adapt as adapt_evaluate
from timm_xbn.grid import runner as grid_runner
from timm_xbn.grid import evaluate_adaptation
from timm_xbn.cli import eval_app
from timm_xbn.corruptions import ImageNetCFolders
from timm_xbn.corruptions.prep import BatchPrep
from timm_xbn.evaluation.models import weights_sha1
from timm_xbn.stats import recalibrate

CLASSES = {f"class_{i}": i for i in range(3)}


@pytest.fixture
def tree(image_folder, tmp_path):
    clean = image_folder("clean", classes=3, per_class=4, size=32, ext="PNG")
    return clean, make_imagenet_c(clean, tmp_path / "imagenet-c")


def source_of(root, clean=None):
    return ImageNetCFolders(root, CONFIG, num_classes=3, clean_dir=clean, batch_size=4, workers=0)


def test_errors_match_per_image_evaluation_and_models_are_untouched(tree, tmp_path):
    clean, root = tree
    model = tiny_model(fit=clean)
    sha = weights_sha1(model)
    results = evaluate_adaptation({"bn": model}, ["source", "norm", "tent:lr=0.01"], source_of(root, clean),
                                  output_dir=tmp_path / "out")
    assert weights_sha1(model) == sha
    assert results["results"]["clean_error"]["bn"] == pytest.approx(manual_error(model, *folder_samples(clean, CLASSES)))
    for corruption, severity in [("fog", 1), ("contrast", 2)]:
        images, targets = folder_samples(root / corruption / str(severity), CLASSES)
        source = results["results"]["entries"]["bn | source"]["runs"][f"{corruption}/{severity}"]
        assert source["top1_error"] == pytest.approx(manual_error(model, images, targets))
        from test_corruptions_data import normalize

        adabn = recalibrate(model, [normalize(images)], mode="full")  # full statistics: batching-independent
        norm = results["results"]["entries"]["bn | norm"]["runs"][f"{corruption}/{severity}"]
        assert norm["top1_error"] == pytest.approx(manual_error(adabn, images, targets))
        assert norm["forward"] == 2 * norm["count"] and source["forward"] == source["count"]
        tent = results["results"]["entries"]["bn | tent:lr=0.01"]["runs"][f"{corruption}/{severity}"]
        assert tent["forward"] == tent["backward"] == tent["count"] == 12
    for name in ("adapt.json", "adapt.csv", "adapt.png"):
        assert (tmp_path / "out" / name).is_file()


def pair_batches(root, corruption, severity, seed=0):
    data = source_of(root).pair_data(corruption, severity).shuffled(seed)
    prep = BatchPrep(CONFIG, torch.device("cpu"))
    return lambda: [(prep(b.images), b.targets) for b in data.loader()]


PAIRS = [("fog", 1), ("fog", 2), ("contrast", 1), ("contrast", 2)]


def test_episodic_and_continual_tent_equal_plain_runs_in_the_seeded_order(tree):
    clean, root = tree
    model = tiny_model()  # untrained, and a large lr: TENT's drift shows in the errors of a stream this short
    streams = {f"{c}/{s}": pair_batches(root, c, s) for c, s in PAIRS}
    expected = {protocol: run_protocol(Tent(model, lr=2.0), streams, protocol) for protocol in ("episodic", "continual")}
    assert expected["episodic"] != expected["continual"]
    for protocol, runs in expected.items():
        results = evaluate_adaptation({"bn": model}, ["tent:lr=2.0"], source_of(root), protocol=protocol)
        assert results["grid"]["pairs"] == list(streams)
        assert results["results"]["entries"]["bn | tent:lr=2.0"]["runs"] == runs, protocol


def test_continual_resume_continues_the_saved_stream(tree, tmp_path):
    clean, root = tree
    model = tiny_model()
    methods = ["tent:lr=2.0", "sar:lr=2.0,margin=2.0,reset_constant=0.0"]
    whole = evaluate_adaptation({"bn": model}, methods, source_of(root), protocol="continual", output_dir=tmp_path / "a")
    first = ImageNetCFolders(root, CONFIG, num_classes=3, corruptions=["fog"], batch_size=4, workers=0)
    evaluate_adaptation({"bn": model}, methods, first, protocol="continual", output_dir=tmp_path / "b")  # "interrupted"
    resumed = evaluate_adaptation({"bn": model}, methods, source_of(root), protocol="continual", output_dir=tmp_path / "b")
    for key in whole["results"]["entries"]:
        assert resumed["results"]["entries"][key]["runs"] == whole["results"]["entries"][key]["runs"], key
    episodic = evaluate_adaptation({"bn": model}, methods[:1], source_of(root))
    assert episodic["results"]["entries"]["bn | tent:lr=2.0"]["runs"] != whole["results"]["entries"]["bn | tent:lr=2.0"]["runs"]
    (tmp_path / "b" / "adapt-state" / "bn___tent_lr=2.0.pt").unlink()
    bigger = ImageNetCFolders(root, CONFIG, num_classes=3, corruptions=["fog", "contrast", "snow"], batch_size=4, workers=0)
    with pytest.raises(ValueError, match="cannot resume the continual stream"):
        evaluate_adaptation({"bn": model}, methods, bigger, protocol="continual", output_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="protocol='continual'"):
        evaluate_adaptation({"bn": model}, methods, source_of(root), protocol="episodic", output_dir=tmp_path / "b")


def test_sharding_is_refused_for_stream_order_methods(tree, monkeypatch):
    clean, root = tree
    monkeypatch.setattr(grid_runner, "world_info", lambda: (0, 2))
    with pytest.raises(ValueError, match="tent:lr=0.1, sar update the model after every batch"):
        evaluate_adaptation({"bn": tiny_model()}, ["norm", "tent:lr=0.1", "sar"], source_of(root))


def test_cli_adapt_on_released_folders(tree, tmp_path):
    clean, root = tree
    runner = CliRunner()
    base = ["adapt", "-m", "resnet18", "--model-kwargs", '{"num_classes": 3}', "--img-size", "32", "--crop-pct", "1.0",
            "-b", "4", "-j", "0", "--device", "cpu", "--imagenet-c", str(root)]
    result = runner.invoke(eval_app, base + ["--severities", "1,2", "--method", "source", "--method", "prior:8",
                                             "--method", "tent", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "severity 2" in result.output and "fwd/img" in result.output and "tent" in result.output
    saved = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert set(saved["results"]["entries"]) == {"resnet18 | source", "resnet18 | prior:8", "resnet18 | tent"}
    assert saved["results"]["entries"]["resnet18 | tent"]["passes_per_image"] == {"forward": 1.0, "backward": 1.0}
    for extra, message in ((["--method", "tentative"], "unknown adaptation method"),
                           (["--method", "tent:lr=-1", "--severities", "1"], "lr must be > 0"),
                           (["--protocol", "online"], "Invalid value for '--protocol'"),
                           (["--severities", "3"], "no corruption x severity found")):
        result = runner.invoke(eval_app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
