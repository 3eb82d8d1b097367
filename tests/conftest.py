"""Shared fixtures: small on-disk data sets that the tests write themselves."""
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def write_image_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 4,
    size: int = 32,
    ext: str = "JPEG",
    seed: int = 0,
) -> Path:
    """Write an ImageFolder tree ``root/class_i/img_j.ext`` of class-dependent noise images.

    Each class has its own mean colour, so a model can learn to tell them apart.
    """
    rng = np.random.default_rng(seed)
    for c in range(classes):
        class_dir = root / f"class_{c}"
        class_dir.mkdir(parents=True, exist_ok=True)
        base = rng.integers(40, 216, size=3)
        for j in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(class_dir / f"img_{j}.{ext.lower()}", format="JPEG" if ext.upper() in ("JPEG", "JPG") else ext.upper())
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``image_folder(name="data", **write_image_folder kwargs)`` -> path of a fresh ImageFolder."""

    def make(name: str = "data", **kwargs) -> Path:
        return write_image_folder(tmp_path / name, **kwargs)

    return make


@pytest.fixture(scope="session")
def timm_sdist() -> Path:
    """timm's source distribution for the installed version (tests/test_models.py, and train.py if shipped).

    Looked for in ``timm-sdist/`` at the repo root and otherwise fetched with ``pip download``
    (one xdist worker downloads, the others wait on a lock). Skipped when it cannot be fetched,
    except in CI, where that fails.
    """
    import fcntl
    import importlib.metadata

    version = importlib.metadata.version("timm")
    root = Path(__file__).resolve().parent.parent / "timm-sdist"
    folder = root / f"timm-{version}"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():
            _fetch_timm_sdist(root, version)
    return folder


def _fetch_timm_sdist(root: Path, version: str) -> None:
    import subprocess
    import sys
    import tarfile

    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
         f"timm=={version}", "-d", str(root)], capture_output=True, text=True)
    archive = root / f"timm-{version}.tar.gz"
    if fetched.returncode != 0 or not archive.is_file():
        message = f"cannot download timm {version} sdist: {fetched.stderr[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
