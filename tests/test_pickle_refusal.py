"""Every place that reads a user's file with torch or NumPy refuses a planted pickle without running it.

The planted object's ``__reduce__`` would create a marker file when unpickled (as any pickle can run
code): loading it with ``weights_only=False`` (or NumPy's ``allow_pickle=True``) would leave the
marker behind. Each reader must fail (or, for the resume-folder scan, skip the file) and the
marker must not exist afterwards.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from test_corruptions_data import CONFIG, make_imagenet_c, tiny_model


class Planted:
    """Unpickling this creates ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_torch(path: Path, marker: Path, entries: dict = None) -> Path:
    """A torch.save file whose tensors look right but which also holds a ``Planted`` object."""
    torch.save({**(entries or {}), "extra": Planted(marker)}, path)
    return path


def plant_numpy(path: Path, marker: Path) -> Path:
    np.save(path, np.array([Planted(marker), 1], dtype=object), allow_pickle=True)
    return path


def resume_training(tmp, marker):
    from timm_xbn.training import load_training_checkpoint

    load_training_checkpoint(plant_torch(tmp / "last.pth.tar", marker, {"state_dict": {}, "progress": {}}))


def scan_resume_folder(tmp, marker):
    from timm_xbn.training import find_resume_checkpoint

    plant_torch(tmp / "last.pth.tar", marker, {"progress": {"num_updates": 5}})
    if find_resume_checkpoint(tmp) is not None:  # the scan may only skip a file it cannot read weights-only
        raise AssertionError("the planted checkpoint was chosen for resuming")
    raise ValueError("skipped")


def model_weights(tmp, marker):
    from timm_xbn.models import load_weights

    model = torch.nn.Linear(2, 2)
    load_weights(model, plant_torch(tmp / "weights.pth", marker, dict(model.state_dict())))


def exported_folder(tmp, marker):
    from timm_xbn.models import export_model, load_exported

    import timm

    model = timm.create_model("resnet10t", num_classes=3)
    folder = export_model(model, tmp / "export")
    plant_torch(folder / "model.safetensors", marker, dict(model.state_dict()))
    load_exported(folder)


def continual_adaptation_resume(tmp, marker):
    from conftest import write_image_folder
    from timm_xbn.grid import evaluate_adaptation
    from timm_xbn.corruptions import ImageNetCFolders

    clean = write_image_folder(tmp / "clean", classes=3, per_class=2, size=32, ext="PNG")
    root = make_imagenet_c(clean, tmp / "imagenet-c", severities=(1,))
    model, out = tiny_model(), tmp / "out"
    first = ImageNetCFolders(root, CONFIG, num_classes=3, corruptions=["fog"], batch_size=4, workers=0)
    evaluate_adaptation({"bn": model}, ["tent"], first, protocol="continual", output_dir=out)  # "interrupted"
    (state,) = (out / "adapt-state").glob("*.pt")
    plant_torch(state, marker, torch.load(state, weights_only=True))
    everything = ImageNetCFolders(root, CONFIG, num_classes=3, batch_size=4, workers=0)
    evaluate_adaptation({"bn": model}, ["tent"], everything, protocol="continual", output_dir=out)


def cifar_c_labels(tmp, marker):
    from timm_xbn.corruptions import CifarC

    np.save(tmp / "fog.npy", np.zeros((5, 32, 32, 3), np.uint8))
    plant_numpy(tmp / "labels.npy", marker)
    CifarC(tmp, CONFIG, num_classes=3, workers=0)


def cifar_c_images(tmp, marker):
    from timm_xbn.corruptions import CifarC

    np.save(tmp / "labels.npy", np.zeros(1, np.int64))
    plant_numpy(tmp / "fog.npy", marker)
    CifarC(tmp, CONFIG, num_classes=3, workers=0)


READERS = [resume_training, scan_resume_folder, model_weights, exported_folder, continual_adaptation_resume,
           cifar_c_labels, cifar_c_images]


def test_the_planted_pickle_does_run_when_unpickled(tmp_path):
    """The check below means something: loading the planted file without weights_only creates the marker."""
    marker = tmp_path / "ran"
    torch.load(plant_torch(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    np.load(plant_numpy(tmp_path / "x.npy", marker), allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("unsafe", [False, True], ids=["as-shipped", "control-unsafe-loaders"])
@pytest.mark.parametrize("reader", READERS, ids=[r.__name__ for r in READERS])
def test_every_reader_refuses_a_planted_pickle(reader, unsafe, tmp_path, monkeypatch):
    """As shipped: refused, marker absent. Control: with torch.load / np.load made unsafe, the same
    reader does run the pickle (so the refusal above comes from the loader, not from an earlier check);
    the exported folder is read with safetensors, which cannot unpickle at all."""
    marker = tmp_path / "ran"
    if unsafe:
        torch_load, np_load = torch.load, np.load
        monkeypatch.setattr(torch, "load", lambda *a, **k: torch_load(*a, **{**k, "weights_only": False}))
        monkeypatch.setattr(np, "load", lambda *a, **k: np_load(*a, **{**k, "allow_pickle": True, "mmap_mode": None}))
    try:
        reader(tmp_path, marker)
    except Exception:  # each reader words its refusal its own way; the marker is what counts
        pass
    else:
        assert unsafe, f"{reader.__name__} accepted the planted file"
    assert marker.exists() == (unsafe and reader is not exported_folder), reader.__name__
