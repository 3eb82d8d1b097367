"""The study's test-time adaptation part: its streams, its errors against direct computations, and its claim's criterion."""
import copy

import numpy as np
import pytest
import timm
import torch

from timm_xbn.stats import recalibrate
from timm_xbn.study.report import claim_tta_non_iid, tta_lines
from timm_xbn.study.tta import REFERENCE, TTA_STREAMS, TTAConfig, domains_of, stream_orders, tta_errors
from timm_xbn.utils.errors import UserError

LABELS = torch.arange(60) % 6  # 6 classes x 10 images
DOMAINS = domains_of(60, ("gaussian_noise", "fog"))  # two blocks of 30


def test_blocks_split_the_images_evenly_in_order():
    blocks = domains_of(10, ("a", "b", "c"))
    assert [(d.start, d.end) for d in blocks] == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(UserError):
        domains_of(2, ("a", "b", "c"))


def test_every_stream_reads_its_images_once_block_after_block():
    cfg = TTAConfig(batch_size=8, dirichlet=0.1, short_samples=10)
    orders = stream_orders(LABELS, DOMAINS, cfg, seed=3)
    assert list(orders) == list(TTA_STREAMS)
    for stream in ("iid", "label-shift"):
        order = orders[stream][0]
        assert sorted(order.tolist()) == list(range(60))
        assert sorted(order[:30].tolist()) == list(range(30))  # the first block is read first, whole
    assert [b for _, b in orders.values()] == [8, 8, 1, 8]
    # batch 1 and its reference read the same images: the first 5 of each block's i.i.d. order
    assert torch.equal(orders["batch-1"][0], orders["iid-short"][0])
    iid = orders["iid"][0]
    assert orders["batch-1"][0].tolist() == iid[:5].tolist() + iid[30:35].tolist()
    again = stream_orders(LABELS, DOMAINS, cfg, seed=3)
    assert all(torch.equal(orders[s][0], again[s][0]) for s in TTA_STREAMS)  # seeded
    other = stream_orders(LABELS, DOMAINS, cfg, seed=4)
    assert not torch.equal(orders["label-shift"][0], other["label-shift"][0])  # each training seed its own draw


def test_each_block_gets_its_own_dirichlet_draw():
    """Two blocks with the same labels: one shared draw would read them in the same class order."""
    labels = torch.cat([LABELS[:30], LABELS[:30]])
    order = stream_orders(labels, DOMAINS, TTAConfig(batch_size=8), seed=0)["label-shift"][0]
    first, second = labels[order[:30]], labels[order[30:]]
    assert not torch.equal(first, second)


def _classes_per_batch(order: torch.Tensor, batch: int) -> float:
    return float(np.mean([len(set(LABELS[order[i:i + batch]].tolist())) for i in range(0, len(order), batch)]))


def test_label_shift_batches_hold_fewer_classes_than_iid_ones():
    """Dirichlet alpha 0.1 concentrates each class in few slots: a batch of 8 sees 2-3 classes here,
    against about 4.5 expected for 8 draws from 6 equally likely classes."""
    whole = domains_of(60, ("gaussian_noise",))
    counts = {stream: np.mean([_classes_per_batch(stream_orders(LABELS, whole, TTAConfig(batch_size=8), s)[stream][0], 8)
                               for s in range(10)]) for stream in ("iid", "label-shift")}
    assert counts["label-shift"] < 3.0 < 4.0 < counts["iid"]


@pytest.fixture(scope="module")
def trained_bn_model():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=6, channels=(4, 8, 8, 8), stem_width=8)
    model.maxpool = torch.nn.Identity()  # as the study's networks: 2 x 2 px in the last stage, so batch 1 has statistics
    x = torch.randn(60, 3, 32, 32) + LABELS.view(-1, 1, 1, 1).float() / 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(5):  # a few steps, so the running statistics and the weights are not at their initial values
        loss = torch.nn.functional.cross_entropy(model(x), LABELS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x


def test_source_and_norm_errors_equal_direct_computations(trained_bn_model):
    model, x = trained_bn_model
    state = copy.deepcopy(model.state_dict())
    errors = tta_errors(model, x, LABELS, DOMAINS, TTAConfig(methods=("source", "norm"), batch_size=8), seed=1)
    for key, value in model.state_dict().items():  # the caller's model is never changed
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        source = 100.0 * int((model(x).argmax(1) != LABELS).sum()) / 60
        order = stream_orders(LABELS, DOMAINS, TTAConfig(batch_size=8), 1)["iid"][0]
        adapted = recalibrate(model, [x[order[i:i + 8]] for i in range(0, 60, 8)], mode="full")
        norm = 100.0 * int((adapted(x).argmax(1) != LABELS).sum()) / 60
    for stream in ("iid", "label-shift"):
        assert errors[stream]["source"] == pytest.approx(source, abs=1e-9)
    assert errors["iid"]["norm"] == pytest.approx(norm, abs=1e-9)
    # the population statistics of the same images in another grouping: equal up to a rounding-level argmax flip
    assert abs(errors["label-shift"]["norm"] - norm) <= 100.0 / 60 + 1e-9


def test_batch_statistics_methods_see_the_grouping(trained_bn_model):
    """prediction with test-batch statistics (prior with N = 0 ~ batch) depends on which images share a batch."""
    model, x = trained_bn_model
    errors = tta_errors(model, x, LABELS, DOMAINS, TTAConfig(methods=("batch",), batch_size=8), seed=1)
    with torch.no_grad():
        adapted = recalibrate(model, mode="batch")
        order = stream_orders(LABELS, DOMAINS, TTAConfig(batch_size=8), 1)["label-shift"][0]
        wrong = sum(int((adapted(x[order[i:i + 8]]).argmax(1) != LABELS[order[i:i + 8]]).sum()) for i in range(0, 60, 8))
    assert errors["label-shift"]["batch"] == pytest.approx(100.0 * wrong / 60, abs=1e-9)


def _tta_results(loss_bn: float, loss_xbn, noise: float, seeds: int = 5, tent_gain: float = 0.0) -> dict:
    """Synthetic tta section: error 20 on the reference streams (iid, iid-short) for every method but tent
    (20 - ``tent_gain``); label-shift / batch-1 add each variant's loss (per seed when a list; plus seeded
    noise) for every method but source."""
    rng = np.random.default_rng(0)
    methods = ["source", "norm", "batch", "tent"]
    models = {}
    for variant, loss in (("BN", loss_bn), ("XBN-GN", loss_xbn), ("GN", loss_bn)):
        per_seed = loss if isinstance(loss, list) else [loss] * seeds
        models[variant] = {
            str(s): {stream: {m: 20.0 - (tent_gain if m == "tent" else 0.0)
                              + (0.0 if m == "source" or stream in REFERENCE.values() else per_seed[s] + rng.normal(0, noise))
                              for m in methods} for stream in TTA_STREAMS}
            for s in range(seeds)}
    cfg = TTAConfig(methods=tuple(methods)).to_dict()
    return {"config": cfg, "seeds": list(range(seeds)), "models": models}


@pytest.mark.parametrize("loss_bn, loss_xbn, noise, verdict", [
    (10.0, 2.0, 0.5, "HOLDS"), (2.0, 10.0, 0.5, "CONTRADICTED"), (5.0, [6.0, 4.0, 7.0, 3.0, 5.0], 0.0, "INCONCLUSIVE")])
def test_claim_follows_its_criterion(loss_bn, loss_xbn, noise, verdict):
    tta = _tta_results(loss_bn, loss_xbn, noise)
    claim = claim_tta_non_iid(tta).to_dict()
    assert claim["verdict"] == verdict and claim["predicted_by"] == "hypothesis"
    (deciding,) = [e for e in claim["effects"] if e["counts"]]
    assert deciding["name"].startswith("label shift") and "XBN-GN - BN, mean over methods" in deciding["name"]
    # the effect is the mean over the grouping-dependent methods (source and norm beside) of the per-seed loss difference
    expected = np.mean([np.mean([(tta["models"]["XBN-GN"][s]["label-shift"][m] - 20.0)
                                 - (tta["models"]["BN"][s]["label-shift"][m] - 20.0) for m in ("batch", "tent")])
                        for s in map(str, range(5))])
    assert deciding["mean"] == pytest.approx(expected, abs=1e-12)
    norm = [e for e in claim["effects"] if e["name"] == "label shift (alpha 0.1): loss XBN-GN - BN, norm"]
    assert len(norm) == 1 and not norm[0]["counts"]  # norm reported beside, not averaged in


def test_batch_1_loss_is_against_the_same_images_in_iid_batches():
    tta = _tta_results(3.0, 1.0, 0.0)
    for variant, reference in (("BN", 30.0), ("XBN-GN", 50.0)):
        for s in map(str, range(5)):
            tta["models"][variant][s]["iid-short"] = {m: reference for m in tta["config"]["methods"]}  # iid is still 20
    (effect,) = [e for e in claim_tta_non_iid(tta).to_dict()["effects"]
                 if e["name"] == "batch size 1: loss XBN-GN - BN, mean over methods"]
    assert effect["mean"] == pytest.approx((21.0 - 50.0) - (23.0 - 30.0), abs=1e-12)  # each against its own iid-short


def test_adaptation_check_reports_the_gradient_methods_gap_to_batch():
    claim = claim_tta_non_iid(_tta_results(2.0, 1.0, 0.0, tent_gain=1.5)).to_dict()
    gaps = {e["name"]: e for e in claim["effects"] if e["name"].startswith("adaptation check")}
    assert set(gaps) == {"adaptation check, iid: tent - batch, BN", "adaptation check, iid: tent - batch, XBN-GN"}
    assert all(e["mean"] == pytest.approx(-1.5, abs=1e-12) and not e["counts"] for e in gaps.values())


def test_summary_table_has_a_row_per_stream_and_variant():
    lines = tta_lines(_tta_results(4.0, 1.0, 0.0))
    rows = [line for line in lines if line.strip().split(" ")[0] in TTA_STREAMS]
    assert len(rows) == len(TTA_STREAMS) * 3
    label_shift = [r for r in rows if r.split()[0] == "label-shift"]
    assert "24.00 ± 0.00" in label_shift[0] and "21.00 ± 0.00" in label_shift[1]
