"""The mixed stream (SAR's mixed distribution shifts): every (pair, image) read exactly once in one seeded
shuffle, images prepared with their own pair, errors per pair against independent computations, the
per-pair counts summing to the stream's, resume, and the CLI's refusals."""
import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_adapt_evaluate import CLASSES, source_of, tree  # noqa: F401 (fixture)
from test_corruptions_data import CONFIG, folder_samples, manual_error, normalize, tiny_model
from timm_xbn.adapt import Tent
from timm_xbn.grid import adapt as adapt_evaluate
from timm_xbn.grid import evaluate_adaptation
from timm_xbn.adapt.mixed import MixedPrep, mixed_data
from timm_xbn.cli import eval_app
from timm_xbn.corruptions import OnTheFly
from timm_xbn.corruptions.prep import BatchPrep
from timm_xbn.stats import recalibrate

PAIRS = ["fog/1", "fog/2", "contrast/1", "contrast/2"]  # source_of's pairs, in benchmark order


def digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def test_mixed_stream_reads_every_pair_image_exactly_once_in_one_seeded_shuffle(tree):  # noqa: F811
    _, root = tree
    source = source_of(root)
    expected = Counter()  # (pair, label, pixels) of every image of every pair, read pair by pair
    for p, (c, s) in enumerate(source.pairs):
        dataset = source.pair_data(c, s).dataset
        expected.update((p, int(label), digest(image)) for image, label in (dataset[i] for i in range(len(dataset))))
    assert sum(expected.values()) == 48 and len(expected) == 48  # 4 pairs x 12 distinct images

    def read(seed):
        return [(int(p), int(label), digest(image)) for b in mixed_data(source, seed).loader()
                for image, (label, p) in zip(b.images, b.targets)]

    stream = read(3)
    assert Counter(stream) == expected
    pairs = np.array([p for p, _, _ in stream])
    assert np.sum(pairs[1:] != pairs[:-1]) > 24  # mixed: pair changes ~47 x 3/4 = 35 times by chance, 3 if read pair by pair
    assert stream == read(3) and stream != read(4)


def test_mixed_errors_per_pair_against_independent_computations(tree):  # noqa: F811
    clean, root = tree
    model = tiny_model(fit=clean)
    results = evaluate_adaptation({"bn": model}, ["source", "norm", "tent:lr=2.0"], source_of(root), stream="mixed", order_seed=1)
    assert results["grid"]["pairs"] == PAIRS and results["run"]["protocol"] is None
    samples = {pair: folder_samples(root / pair, CLASSES) for pair in PAIRS}
    adabn = recalibrate(model, [normalize([im for images, _ in samples.values() for im in images])], mode="full")
    for pair, (images, targets) in samples.items():
        source = results["results"]["entries"]["bn | source"]["runs"][pair]
        assert source["top1_error"] == pytest.approx(manual_error(model, images, targets))  # per-image: order-free
        norm = results["results"]["entries"]["bn | norm"]["runs"][pair]
        assert norm["top1_error"] == pytest.approx(manual_error(adabn, images, targets))  # statistics of all 48 images
        assert (source["count"], source["forward"], source["backward"]) == (12, None, None)

    # TENT, never reset, on the stream's batches: a plain loop, images normalized by hand, counted per pair by hand
    tent, correct, count = Tent(model, lr=2.0), Counter(), Counter()
    for batch in mixed_data(source_of(root), 1).loader():
        x = (batch.images.float() / 255 - torch.tensor(CONFIG["mean"]).view(1, 3, 1, 1)) / torch.tensor(CONFIG["std"]).view(1, 3, 1, 1)
        predicted = tent(x).argmax(1)
        for (label, p), guess in zip(batch.targets.tolist(), predicted.tolist()):
            correct[PAIRS[p]] += guess == label
            count[PAIRS[p]] += 1
    entry = results["results"]["entries"]["bn | tent:lr=2.0"]
    assert {pair: (r["correct1"], r["count"]) for pair, r in entry["runs"].items()} == {p: (correct[p], count[p]) for p in PAIRS}
    whole = entry["mixed"]
    for field in ("correct1", "correct5", "count"):
        assert whole[field] == sum(r[field] for r in entry["runs"].values())
    assert whole["count"] == 48 and whole["top1_error"] == pytest.approx(100 * (1 - sum(correct.values()) / 48))
    assert (whole["forward"], whole["backward"]) == (48, 48) and entry["passes_per_image"] == {"forward": 1.0, "backward": 1.0}
    assert results["results"]["entries"]["bn | norm"]["mixed"]["forward"] == 96  # calibration pass + prediction pass


def test_mixed_on_the_fly_corrupts_each_image_with_its_own_pair(image_folder):
    clean = image_folder("clean", classes=3, per_class=3, size=32, ext="PNG")
    source = OnTheFly(clean, CONFIG, num_classes=3, corruptions=["gaussian_noise", "fog"], severities=[2, 5],
                      seed=7, batch_size=5, workers=0)
    prep = MixedPrep(source, torch.device("cpu"), seed=7)
    seen = Counter()
    for batch in mixed_data(source, 0).loader():
        x = prep(batch.images, batch.targets[:, 1])
        for image, (_, p), prepared in zip(batch.images, batch.targets.tolist(), x):
            alone = BatchPrep(CONFIG, torch.device("cpu"), source.pairs[p], seed=7)(image[None])[0]  # its pair's stream
            assert torch.equal(prepared, alone)
            seen[p] += 1
    assert seen == {p: 9 for p in range(4)}


def test_mixed_stream_resumes_per_method(tree, tmp_path, monkeypatch):  # noqa: F811
    _, root = tree
    model = tiny_model()
    first = evaluate_adaptation({"bn": model}, ["source"], source_of(root), stream="mixed", output_dir=tmp_path)
    ran = []
    real = adapt_evaluate.MixedPass

    def recording(adapters, *args):
        ran.extend(adapters)
        return real(adapters, *args)

    monkeypatch.setattr(adapt_evaluate, "MixedPass", recording)
    second = evaluate_adaptation({"bn": model}, ["source", "batch"], source_of(root), stream="mixed", output_dir=tmp_path)
    assert ran == ["bn | batch"]  # the finished method is not run again
    assert second["results"]["entries"]["bn | source"] == first["results"]["entries"]["bn | source"]
    assert second["results"]["entries"]["bn | batch"]["mixed"]["count"] == 48
    with pytest.raises(ValueError, match="holds results for order='mixed', this run has order='shuffle'"):  # another run
        evaluate_adaptation({"bn": model}, ["source"], source_of(root), output_dir=tmp_path)


def test_cli_mixed_stream(tree, tmp_path):  # noqa: F811
    _, root = tree
    args = ["adapt", "-m", "resnet18", "--model-kwargs", '{"num_classes": 3, "layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], '
            '"stem_width": 8}', "--img-size", "32", "--crop-pct", "1.0", "-b", "4", "-j", "0", "--device", "cpu",
            "--imagenet-c", str(root), "--severities", "1,2", "--method", "source", "--method", "rbn", "--stream", "mixed"]
    for extra, message in [(["--protocol", "continual"], "--protocol does not apply to --stream mixed"),
                           (["--protocol", "episodic"], "--protocol does not apply to --stream mixed"),
                           (["--dirichlet", "0.1"], "--dirichlet only applies to --stream label-shift"),
                           (["--order", "folder"], "--order folder only applies to --stream iid")]:
        bad = CliRunner().invoke(eval_app, args + extra + ["-o", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), bad.output
    ok = CliRunner().invoke(eval_app, args + ["--seed", "5", "-o", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert (saved["run"]["stream"], saved["run"]["dirichlet"], saved["run"]["order_seed"], saved["run"]["batch_size"], saved["run"]["protocol"]) == ("mixed", None, 5, 4, None)
    for entry in saved["results"]["entries"].values():
        assert set(entry["runs"]) == set(PAIRS) and entry["mixed"]["count"] == sum(r["count"] for r in entry["runs"].values()) == 48
    text = " ".join(ok.output.split())
    assert "one mixed stream, never reset" in text and "stream mixed, order seed 5, Dirichlet alpha n/a, batch size 4" in text
    assert "mixed stream" in text  # the column of the whole stream's error
    rows = (tmp_path / "out" / "adapt.csv").read_text().splitlines()
    assert sum(r.split(",")[2] == "mixed" for r in rows) == 2  # one whole-stream row per method
