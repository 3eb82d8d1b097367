"""Adaptation streams (issues 24, 32): the label-shift (Dirichlet) stream against its definition and
against RoTTA's sampler (slot cap, a draw per domain, per-batch label entropy), the i.i.d. stream equal to
the existing shuffled order, the stream settings recorded in the JSON and printed in the table header (the
mixed stream: ``test_adapt_mixed.py``; batch size 1: ``test_adapt_batch_size_one.py``)."""
import json
import math
import zlib
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from test_adapt_evaluate import source_of, tree  # noqa: F401 (fixture)
from test_corruptions_data import tiny_model
from timm_xbn.grid import evaluate_adaptation
from timm_xbn.adapt.report import adaptation_table
from timm_xbn.adapt.streams import (
    check_stream, dataset_labels, dirichlet_order, stream_data, stream_label, stream_record, stream_slots,
)
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


def rederived_order(labels, alpha, seed, slots, domain=None):
    """The label-shift stream written out again: one generator (seeded by ``seed``, or by ``seed`` and
    the crc32 of the domain's name); per class in label order, its shuffled members and a Dirichlet
    draw over ``slots``; then slot by slot, the pieces in a random order."""
    rng = np.random.default_rng(seed if domain is None else [seed, zlib.crc32(domain.encode())])
    pieces = [[] for _ in range(slots)]
    for c in sorted(set(labels)):
        members = rng.permutation([i for i, y in enumerate(labels) if y == c])
        share = rng.dirichlet(np.full(slots, alpha))
        start, total = 0, 0.0
        for s in range(slots):
            total += share[s]
            end = len(members) if s == slots - 1 else int(total * len(members))
            pieces[s].append(members[start:end])
            start = end
    return [int(i) for slot in pieces for k in rng.permutation(len(slot)) for i in slot[k]]


def test_slot_count_is_one_per_class_capped_at_100():
    assert (stream_slots(10), stream_slots(100), stream_slots(150), stream_slots(1000), stream_slots(150, 7)) == \
        (10, 100, 100, 100, 7)
    with pytest.raises(ValueError, match="slots"):
        stream_slots(10, -1)
    labels = np.repeat(np.arange(150), 3).tolist()
    order = dirichlet_order(labels, 0.5, seed=4)
    assert order == rederived_order(labels, 0.5, 4, slots=100)
    assert order != rederived_order(labels, 0.5, 4, slots=150)  # RoTTA caps the 150 slots at 100
    assert dirichlet_order(LABELS, 0.5, seed=4) == rederived_order(LABELS.tolist(), 0.5, 4, slots=10)


def test_a_draw_per_domain():
    """RoTTA draws the class proportions once per domain: a pair's draw depends on the stream seed and
    its name only (not on the pairs before it); without a domain every pair gets the seed's draw."""
    fog, snow = (dirichlet_order(LABELS, 0.1, seed=2, domain=d) for d in ("fog/5", "snow/5"))
    assert fog == rederived_order(LABELS.tolist(), 0.1, 2, 10, domain="fog/5")
    assert fog != snow and fog != dirichlet_order(LABELS, 0.1, seed=2)
    assert fog == dirichlet_order(LABELS, 0.1, seed=2, domain="fog/5")
    assert fog != dirichlet_order(LABELS, 0.1, seed=3, domain="fog/5")


def batch_label_entropies(stream, batch):
    """Entropy (nats) of the label histogram of each full batch of ``stream``."""
    out = []
    for i in range(0, len(stream) - batch + 1, batch):
        counts = np.bincount(stream[i:i + batch])
        p = counts[counts > 0] / batch
        out.append(float(-(p * np.log(p)).sum()))
    return out


def test_per_batch_label_entropy_by_hand():
    """alpha -> infinity, 10 classes of 11 images, 10 slots: the cuts fall at floor(11 j / 10) = j, so
    slots 0-8 hold one image of every class and slot 9 two: batches of 10 are slots, label entropy
    ln 10 for the first nine. 1000 images of one class: entropy 0 in every batch."""
    labels = np.repeat(np.arange(10), 11)
    stream = labels[dirichlet_order(labels, 1e12, seed=0)]
    assert batch_label_entropies(stream, 10)[:9] == pytest.approx([math.log(10)] * 9, abs=1e-12)
    ones = np.zeros(1000, dtype=int)
    assert batch_label_entropies(ones[dirichlet_order(ones, 0.1, seed=0)], 64) == [0.0] * 15


def rotta_sampler(labels, gamma, slots, rs):
    """RoTTA's ``LabelDirichletDomainSequence`` for one domain, written out (a legacy numpy generator
    ``rs`` as its global one, members in data set order, one Dirichlet matrix for all classes)."""
    class_ids = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    shares = rs.dirichlet([gamma] * slots, len(class_ids))
    pieces = [[] for _ in range(slots)]
    for ids, share in zip(class_ids, shares):
        for s, part in enumerate(np.split(ids, (np.cumsum(share)[:-1] * len(ids)).astype(int))):
            pieces[s].append(part)
    order = []
    for slot in pieces:
        for k in rs.permutation(len(slot)):
            order.extend(slot[k])
    return np.asarray(order, dtype=int)


def test_label_shift_stream_has_rottas_per_batch_label_entropy():
    """Mean per-batch label entropy over 400 draws, ours against RoTTA's sampler (batches of 16, 10
    classes of 48, alpha 0.1): equal within 4 standard errors of the difference."""
    labels = np.repeat(np.arange(10), 48)
    ours = [np.mean(batch_label_entropies(labels[dirichlet_order(labels, 0.1, seed)], 16)) for seed in range(400)]
    rs = np.random.RandomState(0)
    theirs = [np.mean(batch_label_entropies(labels[rotta_sampler(labels, 0.1, 10, rs)], 16)) for _ in range(400)]
    se = math.sqrt(np.var(ours) / len(ours) + np.var(theirs) / len(theirs))
    assert abs(np.mean(ours) - np.mean(theirs)) < 4 * se
    iid = [np.mean(batch_label_entropies(rs.permutation(labels), 16)) for _ in range(50)]
    assert np.mean(theirs) + 20 * se < np.mean(iid)  # the test can tell a label-shift stream from an i.i.d. one


def test_stream_record_names_the_order():
    assert stream_record("iid", None) == {"stream": "iid", "dirichlet": None}
    assert stream_record("label-shift", 0.1) == {"stream": "label-shift", "dirichlet": 0.1, "order": "dirichlet",
                                                 "max_slots": 100}
    assert stream_record("label-shift", 0.1, per_domain=True)["order"] == "dirichlet-per-domain"
    assert stream_record("mixed", None)["order"] == "mixed"
    results = {"stream": "label-shift", "dirichlet": 0.1, "order": "dirichlet-per-domain", "order_seed": 3, "batch_size": 8}
    assert stream_label(results) == ("stream label-shift, order seed 3 (a draw per corruption x severity), "
                                     "Dirichlet alpha 0.1, batch size 8")


def test_check_stream():
    check_stream("iid", None, "continual", "folder")
    check_stream("label-shift", 0.1, "episodic")
    check_stream("mixed", None)
    for args, match in [(("drift", None), "--stream"), (("label-shift", None), "--dirichlet"),
                        (("label-shift", 0.0), "--dirichlet"), (("iid", 0.1), "only applies"),
                        (("mixed", 0.1), "only applies to --stream label-shift"),
                        (("mixed", None, "episodic"), "--protocol does not apply to --stream mixed"),
                        (("mixed", None, None, "folder"), "--order folder only applies to --stream iid"),
                        (("label-shift", 0.1, None, "folder"), "--order folder only applies"),
                        (("iid", None, None, "shuffle", True), "--per-domain")]:
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
    assert stream_data(data, "label-shift", 5, 0.1, domain="fog/1").order == dirichlet_order(labels, 0.1, 5, domain="fog/1")


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
    run = saved["run"]
    assert (run["stream"], run["dirichlet"], run["order_seed"], run["batch_size"]) == (stream, alpha, 2, 4)
    assert run["order"] == {"iid": "shuffle", "label-shift": "dirichlet", "mixed": "mixed"}[stream]
    assert run["protocol"] == (None if stream == "mixed" else "episodic")
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
