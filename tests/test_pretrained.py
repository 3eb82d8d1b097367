"""``timm.create_model("xbn_*", pretrained=True)``: a one-line error naming the repo when a tag has no
weights (at once: no retries, whose back-off sleeps add up to a minute), and timm's normal path when they are
in the Hub cache or a folder."""
import socket
import time

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

import timm_xbn  # noqa: F401  (registers the xbn_* models)
from timm_xbn.models import export_model, load_exported
from timm_xbn.models import PretrainedWeightsUnavailable

TINY = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8, num_classes=3)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache folder for this test (huggingface_hub reads the constant at call time)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _one_line_error(name: str, repo: str, why: str) -> list:
    """Load ``name``'s pretrained weights expecting the one-line error; returns the sleeps asked for meanwhile
    (huggingface_hub and urllib3 sleep between retries), counted instead of slept."""
    sleeps = []
    with pytest.MonkeyPatch.context() as patch, pytest.raises(PretrainedWeightsUnavailable) as raised:
        patch.setattr(time, "sleep", sleeps.append)
        timm.create_model(name, pretrained=True, **TINY)
    message = str(raised.value)
    assert "\n" not in message and f"Hub repo {repo} {why}" in message
    assert "xbn-train -c recipes/" in message and "xbn-convert ARCH --authors" in message and f"xbn-hub push --repo-id {repo}" in message
    assert isinstance(raised.value, FileNotFoundError)  # a user error for the CLIs: exit 2, one red line
    return sleeps


def test_offline_without_cached_weights_is_one_line_and_immediate(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    sleeps = _one_line_error("xbn_resnet26", "timm-xbn/xbn_resnet26.in1k", "is not in the local Hub cache and HF_HUB_OFFLINE is set")
    assert sleeps == []  # huggingface_hub's own path fails the same way, after its retries
    _one_line_error("xbn_resnet50.authors_in1k", "timm-xbn/xbn_resnet50.authors_in1k", "is not in the local Hub cache")


def test_unreachable_hub_fails_without_retries(hub_cache, monkeypatch):
    """A Hub endpoint that refuses connections: timm alone retries for ~50 s (5 backoffs per file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    sleeps = _one_line_error("xbn_resnet26", "timm-xbn/xbn_resnet26.in1k", "could not be reached and is not in the local Hub cache")
    assert sleeps == []


def test_cached_hub_weights_load_through_timm_offline(hub_cache, monkeypatch):
    """The layout huggingface_hub writes (refs/main -> snapshot) stands in for a published repo."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    imagenet = dict(TINY, num_classes=1000)  # the tag's classes: timm keeps the published head
    reference = timm.create_model("xbn_resnet26", **imagenet)
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--timm-xbn--xbn_resnet26.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(weights, str(repo / "snapshots" / commit / "model.safetensors"))
    model = timm.create_model("xbn_resnet26", pretrained=True, **imagenet)
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_local_dir_and_file_overlay_skip_the_hub(tmp_path, hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(1)
    model = timm.create_model("xbn_resnet26", **TINY)
    export_model(model, tmp_path / "folder")
    for loaded in (timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True),
                   timm.create_model("xbn_resnet26", pretrained=True, **TINY,
                                     pretrained_cfg_overlay=dict(file=str(tmp_path / "folder" / "model.safetensors"), num_classes=3))):
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def _exported_converted(tmp_path):
    """A 3-class timm resnet26 converted by surgery (P3-IN) and exported as xbn-convert does."""
    torch.manual_seed(2)
    model = timm_xbn.convert(timm.create_model("resnet26", **TINY), position="P3", bfn="in").model
    export_model(model, tmp_path / "folder")
    return model, tmp_path / "folder"


def test_exported_model_loads_with_its_head_through_every_documented_path(tmp_path, hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, folder = _exported_converted(tmp_path)
    settings = dict(base_model="resnet26", position=3, bfn="in", affine=True, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    file = str(folder / "model.safetensors")
    for loaded in (timm.create_model(f"local-dir:{folder}", pretrained=True), load_exported(folder),
                   timm.create_model("xbn_converted", pretrained=True, **settings, pretrained_cfg_overlay=dict(file=file)),
                   timm.create_model("xbn_converted", pretrained=True, **settings, num_classes=3,
                                     pretrained_cfg_overlay=dict(file=file))):
        assert loaded.num_classes == 3 and loaded.get_classifier().out_features == 3
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("how", ["overlay", "local_dir", "registered_overlay"])
def test_a_head_mismatch_is_a_clear_error(tmp_path, hub_cache, monkeypatch, how):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, folder = _exported_converted(tmp_path)
    file = str(folder / "model.safetensors")
    settings = dict(base_model="resnet26", position=3, bfn="in", affine=True, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    if how == "registered_overlay":
        export_model(timm.create_model("xbn_resnet26", **TINY), tmp_path / "registered")
        file = str(tmp_path / "registered" / "model.safetensors")
    create = {
        "overlay": lambda: timm.create_model("xbn_converted", pretrained=True, **settings, num_classes=10,
                                             pretrained_cfg_overlay=dict(file=file)),
        "local_dir": lambda: timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=10),
        "registered_overlay": lambda: timm.create_model("xbn_resnet26", pretrained=True, **dict(TINY, num_classes=10),
                                                        pretrained_cfg_overlay=dict(file=file)),
    }[how]
    with pytest.raises(ValueError, match=r"has a 3-class head, but num_classes=10 was requested: load it with "
                                         r"num_classes=3 .*reset_classifier\(10\)") as raised:
        create()
    assert "\n" not in str(raised.value)
