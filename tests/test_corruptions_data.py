"""Corruption data sources and ``evaluate_corruptions``: layouts, class maps, errors checked against
a plain per-image evaluation, resume, BN adaptation on copies, and the ``xbn-eval corruption`` CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from typer.testing import CliRunner

from timm_xbn.cli import eval_app
from timm_xbn.corruptions import (
    CifarC, ImageNetCFolders, OnTheFly, corrupt_batch, corrupt_reference, discover_imagenet_c,
)
from timm_xbn.grid import evaluate_corruptions, results_path
from timm_xbn.corruptions.prep import BatchPrep
from timm_xbn.corruptions.seeding import pixel_seed
from timm_xbn.evaluation.classes import match_classes
from timm_xbn.stats import recalibrate

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
          "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}


def tiny_model(seed: int = 0, fit: Path = None) -> nn.Module:
    """conv-BN-ReLU-pool-linear; with ``fit`` (an ImageFolder) trained a few steps on it, so that its
    predictions depend on the image colours and any preprocessing mistake changes its errors."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3))
    if fit is not None:
        fit_to(model, fit)
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def fit_to(model: nn.Module, folder: Path) -> nn.Module:
    """``model`` trained 30 Adam steps on the 3-class ImageFolder ``folder`` (all images in one batch)."""
    images, targets = folder_samples(folder, {f"class_{i}": i for i in range(3)})
    x, y = normalize(images), torch.tensor(targets)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model.train()(x), y).backward()
        opt.step()
    return model.eval()


def make_imagenet_c(clean: Path, root: Path, corruptions=("fog", "contrast"), severities=(1, 2)) -> Path:
    for c in corruptions:
        for s in severities:
            for cls in sorted(p for p in clean.iterdir() if p.is_dir()):
                out = root / c / str(s) / cls.name
                out.mkdir(parents=True, exist_ok=True)
                for f in sorted(cls.iterdir()):
                    image = np.array(Image.open(f).convert("RGB"))
                    Image.fromarray(corrupt_reference(image, c, s, seed=1)).save(out / f.with_suffix(".png").name)
    return root


def normalize(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CONFIG["mean"]).view(1, 3, 1, 1)) / torch.tensor(CONFIG["std"]).view(1, 3, 1, 1)


@torch.no_grad()
def manual_error(model: nn.Module, images, targets) -> float:
    """Top-1 error (%) of ``model`` on RGB uint8 arrays, computed image by image."""
    wrong = sum(int(model(normalize([img])).argmax(1)) != t for img, t in zip(images, targets))
    return 100.0 * wrong / len(targets)


def folder_samples(folder: Path, class_map):
    """(image array, target) of an ImageFolder, read with PIL (any order: top-1 is order-free)."""
    samples = []
    for cls, index in class_map.items():
        for f in sorted((folder / cls).iterdir()):
            samples.append((np.array(Image.open(f).convert("RGB")), index))
    return [s[0] for s in samples], [s[1] for s in samples]


@pytest.fixture
def tree(image_folder, tmp_path):
    clean = image_folder("clean", classes=3, per_class=3, size=32, ext="PNG")
    return clean, make_imagenet_c(clean, tmp_path / "imagenet-c")


def test_batch_prep_normalizes_and_corrupts_on_the_device():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = (torch.tensor(CONFIG[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(BatchPrep(CONFIG, torch.device("cpu"))(images), expected)
    fog = BatchPrep(CONFIG, torch.device("cpu"), ("fog", 3), seed=1)
    # each image alone, with one generator seeded by (seed, corruption, severity, its pixels)
    alone = torch.stack([corrupt_batch(image, "fog", 3, torch.Generator().manual_seed(pixel_seed(1, "fog", 3, image)))
                         for image in images])
    torch.testing.assert_close(fog(images), (alone.float() / 255 - mean) / std)
    assert not torch.allclose(fog(images), expected)
    assert not torch.allclose(fog(images), BatchPrep(CONFIG, torch.device("cpu"), ("fog", 3), seed=2)(images))


def test_imagenet_c_layout_errors(tree, tmp_path):
    clean, root = tree
    assert sorted(discover_imagenet_c(root)) == [("contrast", 1), ("contrast", 2), ("fog", 1), ("fog", 2)]
    with pytest.raises(FileNotFoundError, match="ImageNet-C folder not found"):
        discover_imagenet_c(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds severity folders .* point at its parent"):
        discover_imagenet_c(root / "fog")
    with pytest.raises(ValueError, match=r"unknown corruption folders \['class_0', 'class_1', 'class_2'\] \(valid: gaussian_noise"):
        discover_imagenet_c(clean)
    (root / "fog" / "heavy").mkdir()
    with pytest.raises(ValueError, match=r"should hold severity folders 1-5 .* found 1/, 2/, heavy/"):
        discover_imagenet_c(root)
    (root / "fog" / "heavy").rmdir()
    (root / "fog" / "3").mkdir()
    (root / "fog" / "3" / "x.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match=r"fog/3 should hold one folder per class .* found x.JPEG"):
        discover_imagenet_c(root)


def test_class_maps(tmp_path):
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo("imagenet-1k").label_names()
    subset = [synsets[999], synsets[5], synsets[0]]
    # a 1000-class model: wnids keep their ImageNet indices even when only some are present
    assert match_classes(subset, 1000).mapping == {synsets[0]: 0, synsets[5]: 5, synsets[999]: 999}
    # otherwise timm's rule: natural sort of the folder names
    assert match_classes(["b10", "b9", "a"], 3).mapping == {"a": 0, "b9": 1, "b10": 2}
    path = tmp_path / "map.txt"
    path.write_text("b10\nb9\na\n")
    assert match_classes(["a", "b9"], 3, path).mapping == {"a": 2, "b9": 1}
    with pytest.raises(ValueError, match=r"not in the class map, e.g. \['zz'\]"):
        match_classes(["a", "zz"], 3, path)
    with pytest.raises(ValueError, match="has only 2 outputs"):
        match_classes(["a", "b", "c"], 2)
    with pytest.raises(FileNotFoundError, match="class map file not found"):
        match_classes(["a"], 3, tmp_path / "missing.txt")


def test_imagenet_c_errors_match_a_per_image_evaluation(tree, tmp_path):
    clean, root = tree
    model = tiny_model(fit=clean)
    source = ImageNetCFolders(root, CONFIG, num_classes=3, clean_dir=clean, batch_size=4, workers=0)
    assert source.pairs == [("fog", 1), ("fog", 2), ("contrast", 1), ("contrast", 2)]
    assert source.missing[:2] == ["gaussian_noise", "shot_noise"] and "fog/3" in source.missing
    results = evaluate_corruptions({"tiny": model}, source, output_dir=tmp_path / "out")["tiny"]
    for c, s in source.pairs:
        images, targets = folder_samples(root / c / str(s), source.class_map)
        assert results["results"]["errors"][c][str(s)] == pytest.approx(manual_error(model, images, targets))
    assert results["results"]["clean_error"] == pytest.approx(manual_error(model, *folder_samples(clean, source.class_map)))
    assert results["results"]["complete"] is False and results["results"]["mce"] is None and results["results"]["ce"] == {}
    assert results["results"]["missing"][0] == "gaussian_noise" and "fog/5" in results["results"]["missing"]
    on_disk = json.loads(results_path(tmp_path / "out", "tiny").read_text())
    assert on_disk["kind"] == "corruption" and on_disk["model"] == "tiny" and on_disk["results"]["errors"] == results["results"]["errors"]
    assert on_disk["schema"] == 2 and on_disk["run"]["dataset"] == str(root) and "timm_xbn_version" in on_disk
    for key in ("clean_error", "ce", "mce", "relative_mce", "complete", "missing"):
        assert key in on_disk["results"]
    assert len(results_path(tmp_path / "out", "tiny", ".csv").read_text().splitlines()) == 1 + 4
    assert results_path(tmp_path / "out", "tiny", ".png").stat().st_size > 1000


def test_resume_evaluates_only_new_pairs(tree, tmp_path):
    clean, root = tree
    model = tiny_model()
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    first = ImageNetCFolders(root, CONFIG, num_classes=3, severities=[1], batch_size=4, workers=0)
    evaluate_corruptions({"tiny": model}, first, output_dir=tmp_path / "out")
    assert sum(seen) == 2 * 9  # fog/1 and contrast/1, 9 images each
    seen.clear()
    both = ImageNetCFolders(root, CONFIG, num_classes=3, batch_size=4, workers=0)
    resumed = evaluate_corruptions({"tiny": model}, both, output_dir=tmp_path / "out")["tiny"]
    assert sum(seen) == 2 * 9  # only the two severity-2 pairs
    fresh = evaluate_corruptions({"tiny": model}, both, output_dir=tmp_path / "fresh")["tiny"]
    assert resumed["results"]["errors"] == fresh["results"]["errors"]
    with pytest.raises(ValueError, match="other weights_sha1; use another output folder"):
        evaluate_corruptions({"tiny": tiny_model(seed=1)}, both, output_dir=tmp_path / "out")


def test_adaptation_works_on_copies(tree, tmp_path):
    clean, root = tree
    model = tiny_model(fit=clean)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = ImageNetCFolders(root, CONFIG, num_classes=3, corruptions=["fog"], severities=[2], batch_size=4, workers=0)
    adapted = evaluate_corruptions({"tiny": model}, source, adapt="full")["tiny"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    images, targets = folder_samples(root / "fog" / "2", source.class_map)
    manual = recalibrate(model, [normalize(images)], mode="full")
    assert adapted["results"]["errors"]["fog"]["2"] == pytest.approx(manual_error(manual, images, targets))
    assert adapted["run"]["adapt"] == "norm"  # 0.1's "full" is AdaBN's one name now
    plain = evaluate_corruptions({"tiny": model}, source)["tiny"]
    assert plain["results"]["errors"]["fog"]["2"] == pytest.approx(manual_error(model, images, targets))


def test_on_the_fly_reference_matches_per_image_corruption(image_folder):
    clean = image_folder("clean", classes=3, per_class=2, size=32, ext="PNG")
    model = tiny_model(fit=clean)
    source = OnTheFly(clean, CONFIG, num_classes=3, corruptions=["gaussian_noise", "spatter"], severities=[4],
                      mode="reference", seed=5, batch_size=4, workers=0)
    results = evaluate_corruptions({"tiny": model}, source)["tiny"]
    from timm.data import ImageDataset

    samples = ImageDataset(str(clean), class_map=source.class_map).reader.samples  # timm's order = the indices
    for name in ("gaussian_noise", "spatter"):
        pixels = [np.array(Image.open(p).convert("RGB")) for p, _ in samples]
        # seeded by the image's (3, H, W) pixels, as the torch mode
        images = [corrupt_reference(image, name, 4, seed=pixel_seed(5, name, 4, image.transpose(2, 0, 1)) & 0xFFFFFFFF)
                  for image in pixels]
        assert results["results"]["errors"][name]["4"] == pytest.approx(manual_error(model, images, [t for _, t in samples]))
    assert results["results"]["clean_error"] == pytest.approx(manual_error(model, *folder_samples(clean, source.class_map)))


def test_on_the_fly_torch_is_seeded(image_folder):
    clean = image_folder("clean", classes=3, per_class=4, size=32, ext="PNG")
    model = tiny_model()
    make = lambda seed, bs: OnTheFly(clean, CONFIG, num_classes=3, corruptions=["shot_noise", "glass_blur"],  # noqa: E731
                                     severities=[5], seed=seed, batch_size=bs, workers=0)
    a = evaluate_corruptions({"tiny": model}, make(0, 4))["tiny"]
    b = evaluate_corruptions({"tiny": model}, make(0, 4))["tiny"]
    assert a["results"]["errors"] == b["results"]["errors"] and a["cells"] == b["cells"]
    with pytest.raises(ValueError, match="torch implementation covers the 15 benchmark corruptions"):
        OnTheFly(clean, CONFIG, corruptions=["spatter"])


def test_cifar_c_arrays(tmp_path):
    rng = np.random.default_rng(0)
    per = 6
    labels = rng.integers(0, 3, per).astype(np.uint8)
    np.save(tmp_path / "labels.npy", np.tile(labels, 5))
    fog = rng.integers(0, 256, (5 * per, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "fog.npy", fog)
    model = tiny_model()
    source = CifarC(tmp_path, CONFIG, num_classes=3, batch_size=4, workers=0)
    assert source.pairs == [("fog", s) for s in range(1, 6)] and "gaussian_noise" in source.missing
    item, target = source.pair_data("fog", 3).dataset[2]
    np.testing.assert_array_equal(item.permute(1, 2, 0).numpy(), fog[2 * per + 2])
    assert target == labels[2]
    results = evaluate_corruptions({"tiny": model}, source)["tiny"]
    for s in range(1, 6):
        expected = manual_error(model, list(fog[(s - 1) * per:s * per]), labels.tolist())
        assert results["results"]["errors"]["fog"][str(s)] == pytest.approx(expected)
    (tmp_path / "smog.npy").write_bytes((tmp_path / "fog.npy").read_bytes())
    with pytest.raises(ValueError, match=r"unknown corruption files \['smog'\]"):
        CifarC(tmp_path, CONFIG)
    (tmp_path / "smog.npy").unlink()
    np.save(tmp_path / "snow.npy", fog[:, :, :, :2])
    with pytest.raises(ValueError, match=r"expected \(5\*N, H, W, 3\) uint8 images"):
        CifarC(tmp_path, CONFIG)
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="has no labels.npy"):
        CifarC(tmp_path, CONFIG)


def test_cli_runs_and_reports_errors(tree, tmp_path):
    clean, root = tree
    runner = CliRunner()
    base = ["corruption", "--model", "resnet18", "--model-kwargs", '{"num_classes": 3}', "--img-size", "32",
            "--crop-pct", "1.0", "-b", "8", "-j", "0", "--device", "cpu"]
    result = runner.invoke(eval_app, base + ["--imagenet-c", str(root), "--clean-dir", str(clean), "--severities", "1",
                                             "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "mCE (incomplete)" in result.output and "not found in" in result.output
    saved = json.loads((tmp_path / "out" / "corruption-resnet18.json").read_text())
    assert set(saved["results"]["errors"]) == {"fog", "contrast"} and saved["results"]["clean_error"] is not None
    for extra, message in ((["--imagenet-c", str(root / "fog")], "point at its parent"),
                           (["--imagenet-c", str(root), "--corruptions", "smog"], "unknown corruption 'smog'"),
                           (["--imagenet-c", str(root), "--severities", "7"], "severity must be an integer in 1..5"),
                           (["--imagenet-c", str(root), "--adapt", "sometimes"], "--adapt must be"),
                           ([], "give exactly one of --imagenet-c, --cifar-c, --data-dir")):
        result = runner.invoke(eval_app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
