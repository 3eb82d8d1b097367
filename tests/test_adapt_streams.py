"""Adaptation streams (issue 24): the label-shift (Dirichlet) stream against its definition, the i.i.d.
stream equal to the existing shuffled order, the stream settings recorded in the JSON and printed in the
table header (the mixed stream: ``test_adapt_mixed.py``; batch size 1: ``test_adapt_batch_size_one.py``)."""
import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from test_adapt_evaluate import source_of, tree  # noqa: F401 (fixture)
from test_corruptions_data import tiny_model
from timm_xbn.grid import evaluate_adaptation
from timm_xbn.adapt.report import adaptation_table
from timm_xbn.adapt.streams import check_stream, dataset_labels, dirichlet_order, stream_data
from timm_xbn.cli import eval_app

LABELS = np.repeat(np.arange(10), 40)  # 10 classes x 40, read class by class


def runs(labels):
    """Number of maximal blocks of equal consecutive labels."""
    return 1 + int(np.sum(labels[1:] != labels[:-1]))


def mean_classes_per_batch(labels, batch=8):
    return np.mean([len(set(labels[i:i + batch])) for i in range(0, len(labels), batch)])


@pytest.mark.parametrize("alpha", [0.1, 1.0, 1e6])
def test_dirichlet_stream_is_a_permutation_with_class_contiguous_slots(alpha):
    order = dirichlet_order(LABELS, alpha, seed=3)
    assert sorted(order) == list(range(len(LABELS)))  # every image once: label counts unchanged
    stream = LABELS[order]
    assert Counter(stream.tolist()) == Counter(LABELS.tolist())
    assert runs(stream) <= 10 * 10  # each of the 10 slots holds each class as one block at most


def test_dirichlet_stream_is_seeded():
    assert dirichlet_order(LABELS, 0.1, seed=1) == dirichlet_order(LABELS, 0.1, seed=1)
    assert dirichlet_order(LABELS, 0.1, seed=1) != dirichlet_order(LABELS, 0.1, seed=2)


def test_small_alpha_correlates_labels_in_time_and_large_alpha_spreads_classes_over_slots():
    iid = LABELS[np.random.default_rng(0).permutation(len(LABELS))]
    shifted = LABELS[dirichlet_order(LABELS, 0.1, seed=0)]
    same_next = lambda s: float(np.mean(s[1:] == s[:-1]))  # noqa: E731
    assert same_next(iid) < 0.2 < 0.75 < same_next(shifted)  # i.i.d.: about 1/10 by chance; at most 100 blocks in 400
    assert mean_classes_per_batch(shifted) < 2 < 5 < mean_classes_per_batch(iid)
    # alpha -> infinity: every class in every one of the 10 slots, one block each: 100 blocks (fewer
    # only where a slot ends and the next begins with the same class); alpha 0.1: each class in few slots
    even = runs(LABELS[dirichlet_order(LABELS, 1e6, seed=0)])
    assert 90 <= even <= 100 and runs(shifted) < 0.6 * even


def test_check_stream():
    check_stream("iid", None, "continual", "folder")
    check_stream("label-shift", 0.1, "episodic")
    check_stream("mixed", None)
    for args, match in [(("drift", None), "--stream"), (("label-shift", None), "--dirichlet"),
                        (("label-shift", 0.0), "--dirichlet"), (("iid", 0.1), "only applies"),
                        (("mixed", 0.1), "only applies to --stream label-shift"),
                        (("mixed", None, "episodic"), "--protocol does not apply to --stream mixed"),
                        (("mixed", None, None, "folder"), "--order folder only applies to --stream iid"),
                        (("label-shift", 0.1, None, "folder"), "--order folder only applies")]:
        with pytest.raises(ValueError, match=match):
            check_stream(*args)


def test_iid_stream_is_the_shuffled_order_and_label_shift_reads_its_labels(tree):  # noqa: F811
    _, root = tree
    data = source_of(root).pair_data("fog", 1)
    assert stream_data(data, "iid", 5).order == data.ordered("shuffle", 5).order
    assert stream_data(data, "iid", 5, order="folder").order is None
    shifted = stream_data(data, "label-shift", 5, 0.1)
    labels = dataset_labels(data.dataset)
    assert labels == [int(data.dataset[i][1]) for i in range(len(data))]  # read from the index = loaded
    read = [int(t) for b in shifted.loader() for t in b.targets]
    assert read == [labels[i] for i in dirichlet_order(labels, 0.1, 5)]


@pytest.mark.parametrize("stream, alpha, header", [
    ("iid", None, "stream iid, read shuffled (seed 2), Dirichlet alpha n/a, batch size 4"),
    ("label-shift", 0.1, "stream label-shift, order seed 2, Dirichlet alpha 0.1, batch size 4"),
    ("mixed", None, "stream mixed, order seed 2, Dirichlet alpha n/a, batch size 4"),
])
def test_stream_is_recorded_and_printed(tree, tmp_path, stream, alpha, header):  # noqa: F811
    _, root = tree
    evaluate_adaptation({"bn": tiny_model()}, ["source"], source_of(root), stream=stream, dirichlet=alpha, order_seed=2,
                        output_dir=tmp_path)
    saved = json.loads((tmp_path / "adapt.json").read_text())
    assert (saved["run"]["stream"], saved["run"]["dirichlet"], saved["run"]["order_seed"], saved["run"]["batch_size"]) == (stream, alpha, 2, 4)
    assert saved["run"]["protocol"] == (None if stream == "mixed" else "episodic")
    assert adaptation_table(saved).title.endswith(header)


def test_folder_order_header_has_no_seed(tree):  # noqa: F811
    _, root = tree
    results = evaluate_adaptation({"bn": tiny_model()}, ["source"], source_of(root), order="folder", order_seed=2)
    assert (results["run"]["order"], results["run"]["order_seed"]) == ("folder", None)
    assert adaptation_table(results).title.endswith("stream iid, read in folder order, Dirichlet alpha n/a, batch size 4")


def test_cli_label_shift_stream(tree, tmp_path):  # noqa: F811
    _, root = tree
    args = ["adapt", "-m", "resnet18", "--model-kwargs", '{"num_classes": 3}', "--img-size", "32", "--crop-pct", "1.0",
            "-b", "2", "-j", "0", "--device", "cpu", "--imagenet-c", str(root), "--severities", "1",
            "--method", "source", "--method", "rbn"]
    bad = CliRunner().invoke(eval_app, args + ["--stream", "label-shift", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--dirichlet" in bad.output
    ok = CliRunner().invoke(eval_app, args + ["--stream", "label-shift", "--dirichlet", "0.1", "-o", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert (saved["run"]["stream"], saved["run"]["dirichlet"]) == ("label-shift", 0.1)
    assert "stream label-shift, order seed 0, Dirichlet alpha 0.1, batch size 2" in " ".join(ok.output.split())
