"""The grid runner and its results store: identity, resume by cell, method names, per-model files, the
0.1 layout for old readers, and every method of the grid against an independent computation."""
import json

import pytest
import torch
import torch.nn as nn

from test_evaluation import CLASSES, bn_buffers, make_model
from timm_xbn.evaluation import Cell, ResultsStore, accuracy_from_counts, legacy_layout, topk_correct
from timm_xbn.evaluation.metrics import score_batch
from timm_xbn.grid import GridRunner, Unit, canonical_method, evaluate_robustness, method_predictor, perturbation_spec
from timm_xbn.grid.methods import parse_perturbation
from timm_xbn.hub.results import load_results as load_card_results
from timm_xbn.stats import perturb_bn_stats, recalibrate


@pytest.fixture
def model_and_data(image_folder):
    root = image_folder(classes=CLASSES, per_class=3, size=40)
    return make_model(root, batch_size=5)


def plain_top1(model: nn.Module, data) -> float:
    """Top-1 (%) of ``model`` over ``data`` in its reading order: the independent loop."""
    with torch.no_grad():
        counts = sum(topk_correct(model(b.images), b.targets) for b in data.loader())
    return accuracy_from_counts(counts)["top1"]


def plain_scores(model: nn.Module, data) -> list:
    """The summed scores (counts and calibration sums) of ``model`` over ``data``, batch by batch."""
    with torch.no_grad():
        return sum(score_batch(model(b.images), b.targets) for b in data.loader()).tolist()


def store_of(tmp_path, sha="a", **run):
    return ResultsStore("adapt", {"dataset": "d", **run}, {"m": {"weights_sha1": sha}}, tmp_path, "grid.json")


def test_every_statistics_method_equals_its_independent_computation(model_and_data):
    model, data = model_and_data
    data = data.shuffled(seed=3)
    before = bn_buffers(model)
    methods = ["source", "norm", "mix:8", "batch", "perturb:0.9,1"]
    store = ResultsStore("adabn", {"dataset": "d"}, {"m": {"weights_sha1": "x"}})
    GridRunner({"m": model}, methods, store, targets={"m": ["layer1.0.bn1", "layer2.0.bn1"]}).run([Unit("u", data)])
    batches = [b.images for b in data.loader()]
    expected = {
        "source": plain_scores(model, data),
        "norm": plain_scores(recalibrate(model, batches, mode="full"), data),
        "mix:8": plain_scores(recalibrate(model, batches, mode="mix", prior=8.0), data),
        "batch": plain_scores(recalibrate(model, mode="batch"), data),
    }
    with perturb_bn_stats(model, 0.9, 1, ["layer1.0.bn1", "layer2.0.bn1"]):
        expected["perturb:0.9,1"] = plain_scores(model, data)
    assert {m: store.get("m", m, "u")["scores"] for m in methods} == expected  # counts and calibration sums
    assert len({tuple(v) for v in expected.values()}) == len(methods)  # every method really differs here
    assert all(torch.equal(before[n], v) for n, v in bn_buffers(model).items())  # the caller's model untouched


def test_method_names():
    assert parse_perturbation("perturb:0.5,3") == (0.5, 3) == parse_perturbation("perturb:delta=0.5,seed=3")
    assert parse_perturbation(perturbation_spec(0.25, 7)) == (0.25, 7)
    for bad in ("perturb:0.5", "perturb:1.5,0", "perturb:x,1", "perturb:0.1,2,3"):
        with pytest.raises(ValueError):
            canonical_method(bad)
    with pytest.warns(DeprecationWarning, match="'full' is now called 'norm'"):
        assert canonical_method("full") == "norm"
    assert canonical_method("prior:16") == "prior:16" and canonical_method("tent:lr=0.001") == "tent:lr=0.001"
    with pytest.raises(ValueError, match="unknown adaptation method 'adabn'"):
        canonical_method("adabn")


def test_resume_runs_only_the_cells_not_stored_and_refuses_another_run(model_and_data, tmp_path):
    model, data = model_and_data
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    store = GridRunner({"m": model}, ["source"], store_of(tmp_path)).run([Unit("a", data)])
    store.write(store.document({}, {}))
    assert sum(seen) == len(data)
    seen.clear()
    grown = store_of(tmp_path)
    assert grown.done(Cell("m", "source", "a"))
    GridRunner({"m": model}, ["source", "batch"], grown).run([Unit("a", data), Unit("b", data)])
    # unit a: batch only (its deep copy carries the hook); unit b: source and batch. Not source on a again.
    assert sum(seen) == 3 * len(data)
    assert sorted((c.method, c.pair) for c in grown.cells) == [("batch", "a"), ("batch", "b"), ("source", "a"), ("source", "b")]
    with pytest.raises(ValueError, match=r"holds results for dataset='d', this run has dataset='e'; use another output"):
        ResultsStore("adapt", {"dataset": "e"}, {"m": {"weights_sha1": "a"}}, tmp_path, "grid.json")
    with pytest.raises(ValueError, match=r"holds results of 'm' with other weights_sha1"):
        store_of(tmp_path, sha="b")
    with pytest.raises(ValueError, match=r"holds results for order=None, this run has order='shuffle'"):
        store_of(tmp_path, order="shuffle")  # a field added to the run is a different run too
    shuffled = store_of(tmp_path / "b", order="shuffle")
    shuffled.write(shuffled.document({}, {}))
    with pytest.raises(ValueError, match=r"holds results for order='shuffle', this run has order=None"):
        store_of(tmp_path / "b")  # and so is a field the stored run has and this one lacks


def test_a_file_of_the_0_1_layout_is_not_resumed_but_still_read(tmp_path):
    old = {"kind": "adapt", "timm_xbn_version": "0.1.0", "entries": {}}
    (tmp_path / "grid.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="older layout, which cannot be resumed"):
        store_of(tmp_path)
    assert legacy_layout(old) == old


def test_per_model_files_and_the_card_reader_reads_schema_2(model_and_data, tmp_path):
    model, data = model_and_data
    results = evaluate_robustness({"bn": model}, data, deltas=[0.5], seeds=2, blocks=2, output_dir=tmp_path)
    assert results["schema"] == 2 and set(results) >= {"run", "models", "grid", "results", "cells"}
    assert results["models"]["bn"]["targets"] == ["layer1.0.bn1", "layer1.1.bn1"]
    card = load_card_results([tmp_path / "robustness.json"])[0]
    assert card.data["models"]["bn"]["clean_top1"] == results["results"]["bn"]["clean_top1"] == plain_top1(model, data)
    assert card.data["seeds"] == [0, 1] and card.data["blocks"] == 2
    store = ResultsStore("corruption", {"dataset": "d"}, {"a/b": {"weights_sha1": "1"}, "c": {"weights_sha1": "2"}},
                         tmp_path, "corruption-{model}.json")
    store.record(Cell("a/b", "source", "fog/1"), torch.tensor([1, 2, 4]))
    store.record(Cell("c", "source", "fog/1"), torch.tensor([3, 4, 4]))
    for label in ("a/b", "c"):
        store.write(store.document({}, {}, model=label))
    first = json.loads((tmp_path / "corruption-a_b.json").read_text())
    assert first["model"] == "a/b" and [c["model"] for c in first["cells"]] == ["a/b"] and first["cells"][0]["top1"] == 25.0
    again = ResultsStore("corruption", {"dataset": "d"}, {"a/b": {"weights_sha1": "1"}, "c": {"weights_sha1": "2"}},
                         tmp_path, "corruption-{model}.json")
    assert again.get("c", "source", "fog/1")["correct1"] == 3 and again.done(Cell("a/b", "source", "fog/1"))


def test_perturbed_predictor_shares_the_model_and_restores_it(model_and_data):
    model, data = model_and_data
    before = bn_buffers(model)
    predictor = method_predictor(model, "perturb:0.9,0", ["layer1.0.bn1"])
    assert predictor.model is model  # no copy of the weights
    x = next(iter(data.loader())).images
    with torch.no_grad(), perturb_bn_stats(model, 0.9, 0, ["layer1.0.bn1"]):
        expected = model(x)
    with torch.no_grad():
        assert torch.equal(predictor(x), expected)
    assert all(torch.equal(before[n], v) for n, v in bn_buffers(model).items())
    assert method_predictor(model, "source") is model
