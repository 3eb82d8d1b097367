"""Distribution-shift sets on generated folders with timm's real index files: the 200-class subsets against
masking the logits by hand, ReaL's multi-label accuracy by hand, folders that are not their set refused, the shift
view with its methods, and the RobustBench files read back by a schema check."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_xbn.corruptions.names import CORRUPTIONS, SEVERITIES
from timm_xbn.evaluation import create_eval_data, resolve_eval_data_config
from timm_xbn.evaluation.metrics import calibration_from_scores, score_batch
from timm_xbn.evaluation.shift import _info_file, create_shift_data
from timm_xbn.evaluation.store import Cell, ResultsStore
from timm_xbn.grid import evaluate_shift
from timm_xbn.grid.robustbench import ROBUSTBENCH_KEYS, write_robustbench

SIZE = 16


def write_folder(root: Path, files: dict) -> Path:
    """``{class folder: [file names]}`` of small noise images."""
    rng = np.random.default_rng(0)
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / folder / name, format="PNG")
    return root


def synsets(name: str) -> list:
    return _info_file(name).read_text().split()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=1000, zero_init_last=False).eval()


def config(model):
    return resolve_eval_data_config({"m": model}, {"img_size": SIZE, "crop_pct": 1.0})


def logits_and_targets(model, data):
    with torch.no_grad():
        batches = [(model(b.images), b.targets) for b in data.loader()]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_a_200_class_set_scores_the_masked_logits(tmp_path, model, name):
    wnids = synsets(f"imagenet_{name[-1]}_synsets.txt")
    root = write_folder(tmp_path / name, {w: ["a.png"] for w in wnids})
    data, scorer = create_shift_data(root, name, config(model), batch_size=50, workers=0)
    logits, targets = logits_and_targets(model, data)
    # independently: the 1000-class label of each folder by ImageNet synset order, the logits masked to the
    # set's outputs (timm's index file), the prediction mapped back to the 1000 classes
    imagenet = synsets("imagenet_synsets.txt")
    indices = [int(i) for i in _info_file(f"imagenet_{name[-1]}_indices.txt").read_text().split()]
    assert indices == [imagenet.index(w) for w in wnids]  # timm's two files agree: the subset in synset order
    assert sorted(targets.tolist()) == sorted(indices)
    masked = logits[:, indices]
    predicted = torch.tensor(indices)[masked.argmax(1)]
    scores = sum(scorer(logits[i:i + 50], targets[i:i + 50]) for i in range(0, 200, 50))
    assert int(scores[0]) == int((predicted == targets).sum()) and int(scores[2]) == 200
    position = torch.tensor([indices.index(t) for t in targets.tolist()])
    nll = -masked.double().log_softmax(1)[torch.arange(200), position].mean().item()
    assert calibration_from_scores(scores.tolist())["nll"] == pytest.approx(nll, abs=1e-6)
    assert not torch.equal(logits.argmax(1), predicted)  # the mask matters: unmasked predictions differ


def test_real_multi_label_accuracy_by_hand(tmp_path, model):
    labels = json.loads(_info_file("imagenet_real_labels.json").read_text())
    imagenet = synsets("imagenet_synsets.txt")
    numbers = range(1, 13)  # val images 1..12; image 1 has no ReaL label
    files = {}
    for n in numbers:
        folder = imagenet[labels[n - 1][0]] if labels[n - 1] else imagenet[0]
        files.setdefault(folder, []).append(f"ILSVRC2012_val_{n:08d}.png")
    root = write_folder(tmp_path / "val", files)
    data, scorer = create_shift_data(root, "imagenet-real", config(model), batch_size=5, workers=0)
    plain = create_eval_data(root, config(model), batch_size=5, workers=0, num_classes=1000)
    logits, _ = logits_and_targets(model, plain)
    order = [int(re.search(r"_val_(\d{8})", plain.dataset.filename(i)).group(1)) for i in range(len(plain))]
    top5 = logits.topk(5, dim=1).indices.tolist()
    hits1 = sum(top5[i][0] in labels[n - 1] for i, n in enumerate(order) if labels[n - 1])
    hits5 = sum(any(p in labels[n - 1] for p in top5[i]) for i, n in enumerate(order) if labels[n - 1])
    labelled = sum(1 for n in order if labels[n - 1])
    scores = torch.zeros_like(score_batch(logits[:1], torch.zeros(1, dtype=torch.long)))
    for batch in data.loader():
        with torch.no_grad():
            scores += scorer(model(batch.images), batch.targets)
    assert (int(scores[0]), int(scores[1]), int(scores[2])) == (hits1, hits5, labelled) and labelled == 11
    assert calibration_from_scores(scores.tolist()) == {"nll": None, "brier": None, "ece": None}


def test_folders_that_are_not_their_set_are_refused(tmp_path, model):
    wnids = synsets("imagenet_r_synsets.txt")
    root = write_folder(tmp_path / "r", {w: ["a.png"] for w in wnids[1:]} | {"n99999999": ["a.png"]})
    with pytest.raises(ValueError, match=r"does not hold the 200 class folders of imagenet-r .*1 missing \(e\.g\. \['"
                                         + wnids[0] + r"'\]\), 1 not of the set \(e\.g\. \['n99999999'\]\)"):
        create_shift_data(root, "imagenet-r", config(model), workers=0)
    v2 = write_folder(tmp_path / "v2", {str(i): ["a.png"] for i in range(999)})
    with pytest.raises(ValueError, match=r"does not hold 1000 class folders 0\.\.999: 1 missing \(e\.g\. \['999'\]\)"):
        create_shift_data(v2, "imagenet-v2", config(model), workers=0)
    real = write_folder(tmp_path / "real", {synsets("imagenet_synsets.txt")[0]: ["photo.png"]})
    with pytest.raises(ValueError, match=r"by their file number .*photo\.png is not one of them"):
        create_shift_data(real, "imagenet-real", config(model), workers=0)
    with pytest.raises(ValueError, match="unknown shift set 'imagenet-x'"):
        create_shift_data(root, "imagenet-x", config(model))
    with pytest.raises(ValueError, match="ImageNet-1k models; the model has 10 outputs"):
        create_shift_data(root, "imagenet-r", config(model), num_classes=10)


def test_the_shift_view_runs_every_method_and_resumes(tmp_path, model):
    wnids = synsets("imagenet_a_synsets.txt")
    root = write_folder(tmp_path / "a", {w: ["a.png", "b.png"] for w in wnids})
    sets = {"imagenet-a": create_shift_data(root, "imagenet-a", config(model), batch_size=40, workers=0)}
    results = evaluate_shift({"m": model}, ["source", "norm"], sets, output_dir=tmp_path / "out")
    data, scorer = sets["imagenet-a"]
    with torch.no_grad():
        expected = sum(scorer(model(b.images), b.targets) for b in data.shuffled(0).loader())
    source = results["results"]["m | source"]["imagenet-a"]
    assert source["top1"] == 100.0 * int(expected[0]) / 400 and source["count"] == 400
    assert source["ece"] == pytest.approx(calibration_from_scores(expected.tolist())["ece"])
    assert results["results"]["m | norm"]["imagenet-a"]["top1"] != source["top1"] or \
        results["results"]["m | norm"]["imagenet-a"]["nll"] != source["nll"]
    rows = list(csv.DictReader((tmp_path / "out" / "shift.csv").open()))
    assert [(r["method"], r["set"]) for r in rows] == [("source", "imagenet-a"), ("norm", "imagenet-a")]
    again = evaluate_shift({"m": model}, ["source", "norm"], sets, output_dir=tmp_path / "out")
    assert again["cells"] == results["cells"]


def test_robustbench_files_read_back_in_the_leaderboard_layout(tmp_path):
    store = ResultsStore("corruption", {"dataset": "/data/imagenet-c", "source": "imagenet-c"},
                         {"r50": {"weights_sha1": "x", "spec": {"model": "resnet50"}}})
    accuracy = {}
    for i, c in enumerate(CORRUPTIONS):
        for s in SEVERITIES:
            correct = 100 - 10 * s - i
            accuracy[c, s] = correct / 100
            store.record(Cell("r50", "source", f"{c}/{s}"), torch.tensor([correct, 100, 100]))
    errors = {c: {str(s): 100 - 100 * accuracy[c, s] for s in SEVERITIES} for c in CORRUPTIONS}
    document = store.document({}, {"errors": errors, "clean_error": 23.9}, model="r50")
    paths = write_robustbench(tmp_path, {"r50": document}, shift={"r50": {"imagenet-r": {"top1": 36.17}}})
    assert [p.name for p in paths] == ["r50.json", "unaggregated_results.csv"]
    entry = json.loads(paths[0].read_text())
    assert set(ROBUSTBENCH_KEYS) <= set(entry) and set(entry) - set(ROBUSTBENCH_KEYS) == {"imagenet_r_acc"}
    assert entry["clean_acc"] == "76.10" and entry["dataset"] == "imagenet" and entry["architecture"] == "resnet50"
    mean = sum(accuracy.values()) / 75
    assert entry["corruptions_acc"] == f"{100 * mean:.2f}" and entry["imagenet_r_acc"] == "36.17"
    assert isinstance(entry["additional_data"], bool) and entry["eps"] is None and entry["number_forward_passes"] == 1
    header, severities, row = list(csv.reader(paths[1].open()))
    assert header[1:6] == [CORRUPTIONS[0]] * 5 and severities[1:6] == ["1", "2", "3", "4", "5"] and header[-1] == "average"
    assert row[0] == "r50" and float(row[1]) == accuracy[CORRUPTIONS[0], 1] and float(row[-1]) == pytest.approx(mean)
    del errors["fog"]["5"]  # incomplete: no average over fewer pairs
    partial = write_robustbench(tmp_path / "p", {"r50": store.document({}, {"errors": errors, "clean_error": None},
                                                                       model="r50")})
    assert json.loads(partial[0].read_text())["corruptions_acc"] is None and len(partial) == 1


def test_the_shift_command_writes_its_table_json_and_robustbench_entry(tmp_path):
    from typer.testing import CliRunner

    from timm_xbn.cli import eval_app

    root = write_folder(tmp_path / "imagenet-r", {w: ["a.png"] for w in synsets("imagenet_r_synsets.txt")})
    args = ["shift", "-m", "resnet18", "--dataset", "imagenet-r", "--data-dir", str(root), "--img-size", str(SIZE),
            "--crop-pct", "1.0", "-b", "50", "-j", "0", "--device", "cpu", "--method", "source", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "shift.json").read_text())
    top1 = saved["results"]["resnet18 | source"]["imagenet-r"]["top1"]
    entry = json.loads((tmp_path / "out" / "robustbench" / "resnet18.json").read_text())
    assert entry["imagenet_r_acc"] == f"{top1:.2f}" and entry["corruptions_acc"] is None
    assert "imagenet-r top-1" in " ".join(result.output.split())
    result = CliRunner().invoke(eval_app, args[:3] + ["--dataset", "imagenet-a"] + args[3:])
    assert result.exit_code == 2 and "one --data-dir per --dataset" in result.output
