"""Evaluation engine: shared pass vs naive loop, sharding, resume, unreadable images, adabn, esm, errors."""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import timm_xbn
from timm_xbn.evaluation import (
    SharedPass, ShardSampler, Setting, accuracy_from_counts, build_model_specs, create_eval_data,
    create_eval_model, evaluate_esm, naive_sweep, resolve_eval_data_config, robustness_settings, topk_correct,
)
from timm_xbn.grid import evaluate_adabn, evaluate_robustness, perturbation_spec
from timm_xbn.evaluation import robustness_table
from timm_xbn.evaluation import sweep as sweep_module
from timm_xbn.stats import estimation_shift, recalibrate

CLASSES = 8
IMG = 32


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters (a fresh model has mean 0 / var 1,
    which Eq. 5's multiplicative noise leaves almost unchanged)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def fit_ncm_head(model: nn.Module, data) -> nn.Module:
    """Nearest-class-mean classifier on the pooled features: a model that gets the clean images
    right and whose predictions move when early BN statistics are disturbed (no training needed)."""
    feats, labels = [], []
    with torch.no_grad():
        for batch in data.loader():
            feats.append(model.forward_head(model.forward_features(batch.images), pre_logits=True))
            labels.append(batch.targets)
        f, y = torch.cat(feats), torch.cat(labels)
        means = torch.stack([f[y == c].mean(0) for c in range(CLASSES)])
        fc = model.get_classifier()
        fc.weight.copy_(means)
        fc.bias.copy_(-0.5 * (means ** 2).sum(1))
    return model


def make_model(data_root: Path, name: str = "resnet18", seed: int = 0, batch_size: int = 6):
    torch.manual_seed(seed)
    model = randomize_bn(timm.create_model(name, num_classes=CLASSES, zero_init_last=False), seed).eval()
    data = create_eval_data(data_root, resolve_eval_data_config(model, {"img_size": IMG}), batch_size=batch_size, workers=0)
    return fit_ncm_head(model, data), data


def bn_buffers(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


@pytest.fixture
def two_models(image_folder):
    """A BN resnet18 and its XBNBlock conversion, both with discriminative heads, and the data."""
    root = image_folder(classes=CLASSES, per_class=5, size=40)
    bn, data = make_model(root)
    xbn = fit_ncm_head(timm_xbn.convert(bn, position="P3").model, data)  # a BasicBlock's P3 is bn2
    return {"bn": bn, "xbn": xbn}, data, root


def test_topk_correct_hand_computed():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    targets = torch.tensor([1, 2, 1, 2])
    # top-1 hits: row 0; top-2 hits: rows 0 and 2 (its target has the second-largest logit)
    counts = topk_correct(logits, targets, topk=(1, 2))
    assert counts.tolist() == [1, 2, 4]
    assert topk_correct(logits, targets).tolist() == [1, 4, 4]  # top-5 of 3 classes = all
    assert accuracy_from_counts(torch.tensor([1, 4, 4])) == {"top1": 25.0, "top5": 100.0, "count": 4}


@pytest.mark.parametrize("length,world,block,start", [(10, 2, 3, 0), (10, 3, 3, 3), (7, 2, 4, 0), (5, 4, 2, 0), (40, 2, 6, 24)])
def test_shard_sampler_deals_whole_batches(length, world, block, start):
    shards = [list(ShardSampler(length, r, world, start, block)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(start, length))  # each image exactly once
    single = list(range(start, length))
    single_batches = [single[i:i + block] for i in range(0, len(single), block)]
    rank_batches = [[s[i:i + block] for i in range(0, len(s), block)] for s in shards]
    # batch b of the single-process run is batch b // world of rank b % world
    assert [rank_batches[b % world][b // world] for b in range(len(single_batches))] == single_batches
    assert [len(ShardSampler(length, r, world, start, block)) for r in range(world)] == [len(s) for s in shards]


def setting_cell(results, setting):
    """The stored cell of a robustness ``Setting`` (method ``source`` or ``perturb:DELTA,SEED`` on the clean data)."""
    method = "source" if setting.clean else perturbation_spec(setting.delta, setting.seed)
    return next(c for c in results["cells"] if (c["model"], c["method"], c["pair"]) == (setting.model, method, "clean"))


def test_shared_pass_equals_naive_loop(two_models):
    models, data, _ = two_models
    before = {k: bn_buffers(m) for k, m in models.items()}
    results = evaluate_robustness(models, data, deltas=[0.3, 0.9], seeds=3, blocks=2)
    settings = robustness_settings(list(models), [0.3, 0.9], [0, 1, 2])
    targets = {k: results["models"][k]["targets"] for k in models}
    naive = naive_sweep(models, settings, targets, data.loader)
    got = {s.key: setting_cell(results, s)["scores"] for s in settings}  # counts and calibration sums
    assert got == {s.key: naive[s.key].tolist() for s in settings}
    # the sweep is not vacuous: the disturbance changes the BN model's accuracy, differently per seed
    bn_top1 = [got[s.key][0] for s in settings if s.model == "bn"]
    assert len(set(bn_top1)) > 2 and got["bn|clean"][0] == 40
    # targets follow the paper's rule: first BN of blocks 1 and 2; the XBN model's bn1 is still BN (P3)
    assert targets["bn"] == ["layer1.0.bn1", "layer1.1.bn1"] == targets["xbn"]
    # summary: mean / sample std of the per-seed top-1
    d = results["results"]["bn"]["deltas"]["0.9"]
    per_seed = [100.0 * got[f"bn|delta=0.9|seed={s}"][0] / 40 for s in range(3)]
    assert d["per_seed"] == per_seed
    assert d["mean"] == pytest.approx(sum(per_seed) / 3)
    assert d["std"] == pytest.approx(torch.tensor(per_seed).std(unbiased=True).item())
    for k, m in models.items():  # statistics restored bit-exactly
        after = bn_buffers(m)
        assert all(torch.equal(before[k][n], after[n]) for n in after)


def test_shared_pass_any_setting_order(two_models):
    """A clean setting after a disturbed one sees the clean statistics again."""
    models, data, _ = two_models
    model = {"bn": models["bn"]}
    clean, noisy = robustness_settings(["bn"], [0.9], [1])
    order = [noisy, clean, Setting("bn", 0.9, 2)]
    evaluator = SharedPass.of_settings(model, order, {"bn": ["layer1.0.bn1", "layer1.1.bn1"]})
    for batch in data.loader():
        evaluator.update(batch.images, batch.targets)
    naive = naive_sweep(model, order, {"bn": ["layer1.0.bn1", "layer1.1.bn1"]}, data.loader)
    assert {k: v.tolist() for k, v in evaluator.counts.items()} == {k: v.tolist() for k, v in naive.items()}
    assert naive[clean.key].tolist() != naive[noisy.key].tolist()


def test_shared_pass_restores_buffers_on_error(two_models):
    models, data, _ = two_models
    model = models["bn"]
    before = bn_buffers(model)
    evaluator = SharedPass.of_settings({"bn": model}, robustness_settings(["bn"], [0.9], [0]), {"bn": ["layer1.0.bn1"]})
    with pytest.raises(RuntimeError):
        evaluator.update(torch.zeros(2, 5, IMG, IMG), torch.zeros(2, dtype=torch.long))  # wrong channels
    assert all(torch.equal(before[n], v) for n, v in bn_buffers(model).items())


class _EvalCached(nn.Module):
    """Caches a weight-derived tensor in eval mode and drops it in ``train()``, as timm's LeViT /
    EfficientFormer / TinyViT attention-bias caches do."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.cache = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.cache = None
        return self

    def forward(self, x):
        if self.training:
            return self.lin(x)
        if self.cache is None:
            self.cache = self.lin.weight.detach().clone()
        return x @ self.cache.T + self.lin.bias


def test_eval_mode_runs_train_hooks_and_restores_flags():
    model = _EvalCached()
    model.lin.training = False  # a mixed state, restored flag by flag
    x = torch.randn(4, 3)
    with sweep_module.eval_mode([model]), torch.no_grad():
        model(x)
    assert (model.training, model.lin.training) == (True, False)
    with torch.no_grad():
        model.lin.weight.add_(1.0)  # a training step between two evaluations
        with sweep_module.eval_mode([model]):
            assert not model.training
            out = model(x)
    assert torch.allclose(out, x @ model.lin.weight.T + model.lin.bias)  # not the stale cached weight


@pytest.mark.parametrize("damage", [
    lambda state: state.update(counts=state["counts"][:-1]),  # one setting's counts lost
    lambda state: state.update(next_index=10 ** 6),  # beyond the data
    lambda state: state.update(skipped=[[0, "a.jpg"]]),  # a skipped image without its error
])
def test_a_partial_pass_of_the_wrong_shape_is_discarded_with_a_warning(two_models, tmp_path, monkeypatch, capsys, damage):
    models, data, _ = two_models
    models = {"bn": models["bn"]}
    full = evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2)
    out, calls = tmp_path / "out", []
    real_update = SharedPass.update

    def interrupted_update(self, images, labels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_update(self, images, labels)

    monkeypatch.setattr(sweep_module.SharedPass, "update", interrupted_update)
    with pytest.raises(KeyboardInterrupt):
        evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2, output_dir=out, checkpoint_every=1)
    monkeypatch.undo()
    state_file = out / "robustness.partial.json"
    state = json.loads(state_file.read_text())
    assert state["next_index"] == 2 * data.batch_size  # a real mid-pass checkpoint, with this run's meta
    damage(state)
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    resumed = evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2, output_dir=out, checkpoint_every=1)
    assert f"warning: discarded the damaged partial pass {state_file}" in capsys.readouterr().err
    assert resumed["cells"] == full["cells"]


def test_resume_skips_done_settings_and_continues_a_partial_pass(two_models, image_folder, tmp_path, monkeypatch):
    models, data, _ = two_models
    models = {"bn": models["bn"]}
    full = evaluate_robustness(models, data, deltas=[0.5, 0.9], seeds=2, blocks=2)
    out = tmp_path / "out"
    calls = []
    real_update = SharedPass.update

    def counting_update(self, images, labels):
        calls.append(len(self.keys))
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real_update(self, images, labels)

    monkeypatch.setattr(sweep_module.SharedPass, "update", counting_update)
    # 1) Delta 0.5 only, interrupted at the 3rd of 7 batches; checkpoints after every batch
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2, output_dir=out, checkpoint_every=1)
    state = json.loads((out / "robustness.partial.json").read_text())
    assert state["next_index"] == 2 * data.batch_size
    # 2) same command again: continues at batch 3 (5 batches left), then the results match a fresh run
    interrupt, calls[:] = False, []
    first = evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2, output_dir=out, checkpoint_every=1)
    assert calls == [3] * 5 and not (out / "robustness.partial.json").exists()
    # 3) add Delta 0.9: only its 2 settings are evaluated, over all 7 batches
    calls[:] = []
    second = evaluate_robustness(models, data, deltas=[0.5, 0.9], seeds=2, blocks=2, output_dir=out)
    assert calls == [2] * 7
    assert second["cells"] == full["cells"]
    assert first["results"]["bn"]["deltas"]["0.5"] == full["results"]["bn"]["deltas"]["0.5"]
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["kind"] == "robustness" and saved["results"] == full["results"] and saved["schema"] == 2
    assert (out / "robustness.png").stat().st_size > 0
    rows = (out / "robustness.csv").read_text().splitlines()
    assert rows[0].startswith("model,delta,seed,top1,top5") and len(rows) == 1 + 5
    # 4) other data into the same output folder: refused
    other = create_eval_data(image_folder("other", classes=CLASSES, per_class=2, size=40), data.data_config, workers=0)
    with pytest.raises(ValueError, match="use another output folder"):
        evaluate_robustness(models, other, deltas=[0.5], seeds=2, blocks=2, output_dir=out)


def test_unreadable_images_are_skipped_and_reported(image_folder):
    root = image_folder("bad", classes=CLASSES, per_class=5, size=40)
    model, clean_data = make_model(root)
    reference = evaluate_robustness({"m": model}, clean_data, deltas=[0.9], seeds=2, blocks=2)
    (root / "class_0" / "broken.jpg").write_bytes(b"not a jpeg at all")
    good = (root / "class_1" / "img_0.jpeg").read_bytes()
    (root / "class_1" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    data = create_eval_data(root, clean_data.data_config, batch_size=6, workers=0)
    assert len(data) == 42
    results = evaluate_robustness({"m": model}, data, deltas=[0.9], seeds=2, blocks=2)
    assert results["skipped_images"]["clean"]["count"] == 2
    assert sorted(Path(f["file"]).name for f in results["skipped_images"]["clean"]["files"]) == ["broken.jpg", "truncated.jpg"]
    # the remaining 40 images give exactly the counts of the folder without the bad files
    assert results["cells"] == reference["cells"]
    # counts are the images scored, in the JSON and in the table title (issue 33: 42 files, 40 scored)
    assert results["run"]["files"] == 42 and results["results"]["m"]["count"] == 40
    assert robustness_table(results).title.endswith("40 images scored (2 unreadable skipped)")


def test_adabn_matches_independent_recalibration(two_models, tmp_path):
    models, data, _ = two_models
    model = models["bn"]
    before = bn_buffers(model)
    results = evaluate_adabn({"bn": model}, data, mode="full", output_dir=tmp_path)
    # independent: recalibrate on all images, batched in the default order (a shuffle with seed 0: the
    # earlier BNs' batch statistics shape the later BNs' inputs), evaluate each model with a plain loop
    adapted = recalibrate(model, [b.images for b in data.shuffled(seed=0).loader()], mode="full")
    expected = {}
    for tag, m in (("before", model), ("after", adapted)):
        counts = sum(topk_correct(m(b.images), b.targets) for b in data.loader())
        expected[tag] = accuracy_from_counts(counts)["top1"]
    entry = results["results"]["bn"]
    assert (entry["before_top1"], entry["after_top1"]) == (expected["before"], expected["after"])
    assert entry["after_top1"] != entry["before_top1"]
    assert all(torch.equal(before[n], v) for n, v in bn_buffers(model).items())  # caller's model untouched
    assert json.loads((tmp_path / "adabn.json").read_text())["kind"] == "adabn"

    # prediction-time BN: the same as a copy whose BNs run in train mode (batch statistics),
    # on batches drawn in a seeded random order (the folder is class-sorted)
    batch = evaluate_adabn({"bn": model}, data, mode="batch")
    reference = timm.create_model("resnet18", num_classes=CLASSES, zero_init_last=False)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        counts = sum(topk_correct(reference(b.images), b.targets) for b in data.shuffled(seed=0).loader())
    assert batch["results"]["bn"]["after_top1"] == accuracy_from_counts(counts)["top1"]


def test_shuffled_order_reads_every_image_once(image_folder):
    root = image_folder(classes=CLASSES, per_class=5, size=40)
    model = timm.create_model("resnet18", num_classes=CLASSES)
    data = create_eval_data(root, resolve_eval_data_config(model, {"img_size": IMG}), batch_size=4, workers=0)
    in_order = torch.cat([b.targets for b in data.loader()])
    shuffled = torch.cat([b.targets for b in data.shuffled(seed=0).loader()])
    assert in_order.tolist() == sorted(in_order.tolist())  # ImageFolder: class-sorted
    assert sorted(shuffled.tolist()) == in_order.tolist() and shuffled.tolist() != in_order.tolist()
    assert torch.equal(shuffled, torch.cat([b.targets for b in data.shuffled(seed=0).loader()]))


def test_esm_one_pass_matches_stats_estimation_shift(two_models, tmp_path):
    models, data, _ = two_models
    results = evaluate_esm(models, data, output_dir=tmp_path)
    for label, model in models.items():
        reference = estimation_shift(model, [b.images for b in data.loader()])
        layers = results["models"][label]["layers"]
        assert [r["name"] for r in layers] == [r.name for r in reference]
        for got, ref in zip(layers, reference):
            assert got["esm_sigma"] == pytest.approx(ref.esm_sigma, rel=1e-9)
            assert got["esm_mu"] == pytest.approx(ref.esm_mu, rel=1e-9, abs=1e-12)
        assert results["models"][label]["mean_esm_sigma"] == pytest.approx(sum(r.esm_sigma for r in reference) / len(reference))
    # the XBN model has one BN fewer per block (bn2 became GroupNorm)
    assert len(results["models"]["bn"]["layers"]) - len(results["models"]["xbn"]["layers"]) == 8
    assert (tmp_path / "esm_sigma.png").stat().st_size > 0
    assert len((tmp_path / "esm.csv").read_text().splitlines()) == 1 + 20 + 12


def test_clear_errors(image_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        create_eval_data(tmp_path / "missing", {"input_size": (3, IMG, IMG)})
    (tmp_path / "empty" / "class_0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images found in .*empty.*\.jpg"):
        create_eval_data(tmp_path / "empty", {"input_size": (3, IMG, IMG)})
    with pytest.raises(ValueError, match="did you mean: resnet18"):
        create_eval_model("resnet1_8")
    with pytest.raises(ValueError, match="unknown model"):
        build_model_specs(["resnet18", "not_a_model_at_all"])
    root = image_folder(classes=2, per_class=2, size=IMG)
    r18 = create_eval_model("resnet18", model_kwargs={"num_classes": 2})
    data = create_eval_data(root, resolve_eval_data_config(r18, {"img_size": IMG}), workers=0)
    with pytest.raises(ValueError, match="blocks=9 is out of range: ResNet has 8 residual blocks"):
        evaluate_robustness({"r18": r18}, data, deltas=[0.1], seeds=1, blocks=9)
    vit = create_eval_model("vit_tiny_patch16_224", model_kwargs={"num_classes": 2, "img_size": IMG})
    with pytest.raises(ValueError, match="no BatchNorm"):
        evaluate_robustness({"vit": vit}, data, deltas=[0.1], seeds=1)
    with pytest.raises(ValueError, match="no BatchNorm"):
        evaluate_esm({"vit": vit}, data)
    with pytest.raises(ValueError, match="interpolation"):
        resolve_eval_data_config({"r18": r18, "xbn": create_eval_model("xbn_resnet26")}, strict=True)
