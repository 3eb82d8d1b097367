"""``write_example_data``: the files the README examples run on, checked against the files themselves."""
import json

import numpy as np
import pytest
from PIL import Image

from timm_xbn.corruptions import discover_imagenet_c
from timm_xbn.examples import write_example_data
from timm_xbn.models import create_model


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return write_example_data(tmp_path_factory.mktemp("ex"), train_per_class=3, val_per_class=2, steps=2,
                              batch_size=4, corruptions=("gaussian_noise",), severities=(1, 5))


def _pngs(folder):
    return sorted(folder.rglob("*.png"))


def test_layout_and_counts(made):
    classes = len((made.root / "labels.txt").read_text().splitlines())
    assert classes == 10
    assert sorted(p.name for p in made.train.iterdir()) == sorted(map(str, range(classes)))
    assert len(_pngs(made.train)) == 3 * classes and len(_pngs(made.validation)) == 2 * classes
    pairs = discover_imagenet_c(made.corrupted)
    assert sorted(pairs) == [("gaussian_noise", 1), ("gaussian_noise", 5)]
    clean = np.stack([np.asarray(Image.open(p)) for p in _pngs(made.validation)]).astype(float)
    for (_, severity), folder in pairs.items():
        noisy = np.stack([np.asarray(Image.open(p)) for p in _pngs(folder)]).astype(float)
        assert noisy.shape == clean.shape == (20, 32, 32, 3)
        assert np.abs(noisy - clean).mean() > 1.0, severity  # corrupted, not copied
    assert np.abs(np.stack([np.asarray(Image.open(p)) for p in _pngs(pairs[("gaussian_noise", 5)])]) - clean).mean() > \
        np.abs(np.stack([np.asarray(Image.open(p)) for p in _pngs(pairs[("gaussian_noise", 1)])]) - clean).mean()


def test_exports_carry_the_training_images_data_config_and_load(made):
    pixels = np.stack([np.asarray(Image.open(p)) for p in _pngs(made.train)]).astype(float) / 255
    for label, folder in made.checkpoints.items():
        cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
        assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0 and "tag" not in cfg
        np.testing.assert_allclose(cfg["mean"], pixels.mean(axis=(0, 1, 2)), atol=1e-4)
        np.testing.assert_allclose(cfg["std"], pixels.std(axis=(0, 1, 2), ddof=1), atol=1e-3)
        model = create_model(f"local-dir:{folder}")
        assert model.num_classes == 10 and model.pretrained_cfg["input_size"] == (3, 32, 32)
