"""Hub publishing, offline: push (dry run and a commit through huggingface_hub's real API object
with only the HTTP transport replaced), load back through timm's own ``hf-hub:`` code from a
populated cache, model-card metadata checked against the results files, and bad input."""
import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List

import httpx2
import huggingface_hub
import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi, constants as hf_constants
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils._http import default_client_factory
from safetensors.torch import save_file

import timm_xbn
from timm_xbn.hub import NO_RESULTS, REPO_FILES, card_results, info, push
from timm_xbn.models import HUB_ORG, export_model

ENDPOINT = "https://hub.test"
CONVERTED = ("xbn_converted", dict(base_model="resnet10t", position=1, every=2, groups=16, num_classes=3))


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float parameter and buffer seeded random values (positive running variances),
    so a weight or statistic that is not carried over shows up as a difference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def write_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    save_file(model.state_dict(), str(path))
    return path


def install_in_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> str:
    """Lay ``folder`` out as huggingface_hub's cache does after a download: blobs named by content hash,
    ``snapshots/<commit>/FILE`` symlinks to them and ``refs/<revision>`` naming the commit."""
    repo_dir = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(folder.iterdir())
    commit = hashlib.sha1(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for f in files:
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1 and an empty HF cache; huggingface_hub read both at import, so set its constants too."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


class FakeHub:
    """The Hub's HTTP side of create_repo / create_commit, recording every request it receives."""

    def __init__(self) -> None:
        self.requests: List[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        path = request.url.path
        if path == "/api/agent-harnesses":  # huggingface_hub's own once-per-process probe, not part of a push
            return httpx2.Response(404)
        self.requests.append(request)
        if path == "/api/repos/create":
            body = json.loads(request.content)
            return httpx2.Response(200, json={"url": f"{ENDPOINT}/{body['organization']}/{body['name']}"})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/branch/" in path:
            return httpx2.Response(200, json={})
        if "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            return httpx2.Response(200, json={"commitUrl": f"{ENDPOINT}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return httpx2.Response(404, json={"error": f"unexpected request {request.method} {path}"})

    @property
    def paths(self) -> List[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """Replace only huggingface_hub's HTTP transport (httpx2) with ``FakeHub``; no network."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    huggingface_hub.set_client_factory(
        lambda: httpx2.Client(transport=httpx2.MockTransport(hub), follow_redirects=True))
    yield hub
    huggingface_hub.set_client_factory(default_client_factory)


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def results_files(tmp_path: Path, model: str, other: str = "resnet10t") -> Dict[str, Path]:
    """One results file of every kind a card shows, in the project-wide schemas."""
    corruptions = ("gaussian_noise", "contrast")
    data: Dict[str, Dict[str, Any]] = {
        "train": {"model": model, "val_top1": 71.234, "val_top5": 93.5, "epochs": 3,
                  "recipe": "recipes/fmnist_tiny.yaml", "dataset": "/data/fashion-mnist"},
        "robustness": {"dataset": "fashion-mnist", "blocks": 6, "seeds": [0, 1, 2], "models": {
            other: {"clean_top1": 70.125, "deltas": {
                "0.1": {"mean": 61.5, "std": 1.25, "per_seed": [60.0, 61.5, 63.0]},
                "0.5": {"mean": 33.75, "std": 2.5, "per_seed": [31.25, 33.75, 36.25]}}},
            model: {"clean_top1": 71.375, "deltas": {
                "0.1": {"mean": 69.875, "std": 0.375, "per_seed": [69.5, 69.875, 70.25]},
                "0.5": {"mean": 58.625, "std": 1.125, "per_seed": [57.5, 58.625, 59.75]}}}}},
        "corruption": {"model": model, "dataset": "fashion-mnist-c", "clean_error": 28.766,
                       "errors": {c: {str(s): 30.0 + 2.5 * s + i for s in range(1, 6)} for i, c in enumerate(corruptions)},
                       "ce": {"gaussian_noise": 52.375, "contrast": 61.625}, "mce": 57.0, "relative_mce": 88.25,
                       "complete": True, "missing": []},
        "esm": {"dataset": "fashion-mnist", "models": {model: {"mean_esm_sigma": 0.3125, "layers": [
            {"name": "bn1", "depth": 1, "channels": 24, "esm_mu": 0.5, "esm_sigma": 0.125,
             "esm_mu_per_channel": 0.0625, "esm_sigma_per_channel": 0.03125},
            {"name": "layer1.0.bn2", "depth": 2, "channels": 64, "esm_mu": 0.75, "esm_sigma": 0.5,
             "esm_mu_per_channel": 0.09375, "esm_sigma_per_channel": 0.0625}]}}},
        "adabn": {"dataset": "fashion-mnist-c", "models": {model: {"mode": "full", "before_top1": 40.5, "after_top1": 55.25}}},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, body in data.items():
        paths[kind] = tmp_path / f"{kind}.json"
        paths[kind].write_text(json.dumps({"kind": kind, "timm_xbn_version": timm_xbn.__version__, **body}))
    return paths


def front_matter(readme: Path) -> Dict[str, Any]:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# ---- round trip through timm's hf-hub loading -------------------------------------------------


@pytest.mark.parametrize("case", ["converted", "bn_baseline", "converted_object", "xbn_convert_folder"])
def test_push_then_load_from_hub_cache_is_bit_exact(case: str, tmp_path: Path, offline_cache: Path) -> None:
    if case == "converted":
        name, kwargs = CONVERTED
        model = randomized(timm.create_model(name, **kwargs))
    elif case == "bn_baseline":
        name, kwargs = "resnet10t", dict(num_classes=3)
        model = randomized(timm.create_model(name, **kwargs))
    elif case == "converted_object":  # a notebook user's model object: surgery on a timm model, not built by name
        name, kwargs = None, {}
        base = timm.create_model("resnet10t", num_classes=4)
        model = randomized(timm_xbn.convert(base, position="P2", bfn="in", stem=True).model)
    else:  # the output folder of xbn-convert, named as local-dir:FOLDER
        model = randomized(timm_xbn.convert(timm.create_model("resnet10t", num_classes=2), every=4).model)
        export_model(model, tmp_path / "converted")
        name, kwargs = f"local-dir:{tmp_path / 'converted'}", {}
    checkpoint = write_checkpoint(model, tmp_path / "ckpt.safetensors")
    repo_id = f"someone/{case}"

    if name is None:
        result = push(model, repo_id, dry_run=tmp_path / "repo")
    else:
        result = push(name, repo_id, checkpoint=checkpoint, model_kwargs=kwargs, dry_run=tmp_path / "repo")
    assert result.files == sorted(REPO_FILES) and result.commit_url is None
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    if case == "bn_baseline":
        assert config["architecture"] == "resnet10t" and not hasattr(model, "xbn_cfg")
    else:
        assert config["architecture"] == "xbn_converted" and config["model_args"]["base_model"] == "resnet10t"

    install_in_cache(offline_cache, repo_id, tmp_path / "repo")
    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert loaded.pretrained_cfg["architecture"] == config["architecture"]
    assert getattr(loaded, "xbn_cfg", None) == getattr(model, "xbn_cfg", None)
    assert_same_model(model, loaded)


def test_registered_pretrained_tag_loads_the_pushed_layout(tmp_path: Path, offline_cache: Path) -> None:
    """``xbn_resnet26.in1k``'s pretrained cfg names a Hub repo of the project's org; a folder
    written by push for that repo is what ``pretrained=True`` loads."""
    tag = "xbn_resnet26.in1k"
    repo_id = timm.models.get_pretrained_cfg(tag).hf_hub_id
    assert repo_id == f"{HUB_ORG}/{tag}"
    model = randomized(timm.create_model("xbn_resnet26"), seed=3)
    checkpoint = write_checkpoint(model, tmp_path / "xbn_resnet26.safetensors")
    push("xbn_resnet26", repo_id, checkpoint=checkpoint, dry_run=tmp_path / "repo")
    install_in_cache(offline_cache, repo_id, tmp_path / "repo")

    assert_same_model(model, timm.create_model(tag, pretrained=True))
    hub = info(repo_id)  # read back through hf_hub_download from the same cache
    assert hub.config["architecture"] == "xbn_resnet26" and hub.results == []


# ---- upload through HfApi with the HTTP layer replaced ----------------------------------------


def test_upload_commits_the_dry_run_files_with_the_commit_message(tmp_path: Path, fake_hub: FakeHub) -> None:
    name, kwargs = CONVERTED
    model = randomized(timm.create_model(name, **kwargs))
    checkpoint = write_checkpoint(model, tmp_path / "ckpt.safetensors")
    results = list(results_files(tmp_path, model="xbn_converted").values())
    args = dict(checkpoint=checkpoint, model_kwargs=kwargs, results=results)

    push(name, "someone/tiny", dry_run=tmp_path / "dry", **args)
    assert fake_hub.requests == []
    result = push(name, "someone/tiny", token="hf_test_token", commit_message="Add tiny XBN model",
                  api=HfApi(endpoint=ENDPOINT), **args)

    assert fake_hub.paths == [
        "POST /api/repos/create",
        "POST /api/validate-yaml",
        "POST /api/models/someone/tiny/preupload/main",
        "POST /api/models/someone/tiny/commit/main",
    ]
    assert all(r.headers["authorization"] == "Bearer hf_test_token" for r in fake_hub.requests)
    create = json.loads(fake_hub.requests[0].content)
    assert (create["organization"], create["name"]) == ("someone", "tiny") and create.get("visibility") != "private"
    preupload = json.loads(fake_hub.requests[2].content)["files"]
    assert sorted(f["path"] for f in preupload) == sorted(REPO_FILES)

    lines = [json.loads(line) for line in fake_hub.requests[3].content.decode().splitlines()]
    assert lines[0] == {"key": "header", "value": {"summary": "Add tiny XBN model", "description": ""}}
    sent = {item["value"]["path"]: base64.b64decode(item["value"]["content"]) for item in lines[1:]}
    assert sorted(sent) == sorted(REPO_FILES)
    for filename, content in sent.items():  # the dry run wrote exactly what is uploaded
        assert content == (tmp_path / "dry" / filename).read_bytes(), filename
    assert result.commit_url == f"{ENDPOINT}/someone/tiny/commit/{'a' * 40}" and result.folder is None


def test_private_repo_and_revision_branch(tmp_path: Path, fake_hub: FakeHub) -> None:
    model = randomized(timm.create_model("resnet10t", num_classes=3))
    checkpoint = write_checkpoint(model, tmp_path / "ckpt.safetensors")
    push("resnet10t", "someone/bn", checkpoint=checkpoint, model_kwargs=dict(num_classes=3), token="t",
         private=True, revision="v1", api=HfApi(endpoint=ENDPOINT))
    assert json.loads(fake_hub.requests[0].content)["visibility"] == "private"
    assert fake_hub.paths[1] == "POST /api/models/someone/bn/branch/v1"
    assert fake_hub.paths[-1] == "POST /api/models/someone/bn/commit/v1"


# ---- bad input: clear errors before any request -----------------------------------------------


@pytest.fixture
def no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_bad_input_fails_before_any_request(tmp_path: Path, fake_hub: FakeHub, no_token: None) -> None:
    name, kwargs = CONVERTED
    model = randomized(timm.create_model(name, **kwargs))
    good = write_checkpoint(model, tmp_path / "good.safetensors")
    bn_weights = write_checkpoint(timm.create_model("resnet10t", num_classes=3), tmp_path / "bn.safetensors")
    paths = results_files(tmp_path, model="xbn_converted")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"kind": "benchmark", "models": {}}))
    other_model = results_files(tmp_path / "other", model="xbn_resnet50")

    def attempt(**overrides: Any) -> None:
        args = dict(model=name, repo_id="someone/tiny", checkpoint=good, model_kwargs=kwargs, api=HfApi(endpoint=ENDPOINT))
        push(**{**args, **overrides})

    with pytest.raises(ValueError, match="invalid repo id 'no-namespace'"):
        attempt(repo_id="no-namespace")
    with pytest.raises(ValueError, match="invalid repo id 'some one/tiny'"):
        attempt(repo_id="some one/tiny")
    # a BN checkpoint for the converted model: layer2.0.bn1 (block 2, P1) is a GroupNorm there
    with pytest.raises(ValueError, match=r"unexpected keys: .*layer2\.0\.bn1\.running_mean"):
        attempt(checkpoint=bn_weights)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        attempt(checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="results file not found: .*missing.json"):
        attempt(results=[paths["train"], tmp_path / "missing.json"])
    with pytest.raises(ValueError, match="kind 'benchmark'"):
        attempt(results=[unknown])
    with pytest.raises(ValueError, match="reports on 'xbn_resnet50'"):
        attempt(results=[other_model["train"]])
    with pytest.raises(ValueError, match="no Hugging Face token"):
        attempt(results=list(paths.values()))
    assert fake_hub.requests == []
    # the results of a model named differently are accepted when named explicitly; a dry run needs no token
    push(name, "someone/tiny", checkpoint=good, model_kwargs=kwargs, results=[other_model["train"]],
         results_name="xbn_resnet50", dry_run=tmp_path / "dry")
    with pytest.raises(ValueError, match="must be new or hold only"):
        push(name, "someone/tiny", checkpoint=good, model_kwargs=kwargs, dry_run=tmp_path)
    assert fake_hub.requests == []


# ---- model card -------------------------------------------------------------------------------


def expected_model_index(paths: Dict[str, Path], model: str) -> List[tuple]:
    """(dataset, metric name, value) the card must carry, computed from the results files directly."""
    d = {kind: json.loads(p.read_text()) for kind, p in paths.items()}
    rob = d["robustness"]["models"][model]
    rows = [("fashion-mnist", "Top 1 Accuracy", d["train"]["val_top1"]),
            ("fashion-mnist", "Top 5 Accuracy", d["train"]["val_top5"]),
            ("fashion-mnist", "Top 1 Accuracy (clean BN statistics)", rob["clean_top1"])]
    rows += [("fashion-mnist", f"Top 1 Accuracy (BN statistics perturbed, D={k})", v["mean"]) for k, v in rob["deltas"].items()]
    rows += [("fashion-mnist-c", "mCE", d["corruption"]["mce"]),
             ("fashion-mnist-c", "Relative mCE", d["corruption"]["relative_mce"]),
             ("fashion-mnist-c", "Top 1 Error (clean)", d["corruption"]["clean_error"]),
             ("fashion-mnist", "Mean ESM sigma", d["esm"]["models"][model]["mean_esm_sigma"]),
             ("fashion-mnist-c", "Top 1 Accuracy (before BN adaptation)", d["adabn"]["models"][model]["before_top1"]),
             ("fashion-mnist-c", "Top 1 Accuracy (after BN adaptation, full)", d["adabn"]["models"][model]["after_top1"])]
    return sorted(rows)


def json_numbers(obj: Any) -> List[float]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in [*json_numbers(v), *([float(k)] if re.fullmatch(r"[\d.]+", k) else [])]]
    if isinstance(obj, list):
        return [x for v in obj for x in json_numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_card_metadata_and_body_come_from_the_results(tmp_path: Path) -> None:
    name, kwargs = CONVERTED
    model = randomized(timm.create_model(name, **kwargs))
    checkpoint = write_checkpoint(model, tmp_path / "ckpt.safetensors")
    paths = results_files(tmp_path, model="xbn_converted")
    push(name, "someone/tiny", checkpoint=checkpoint, model_kwargs=kwargs, results=list(paths.values()),
         license="mit", dry_run=tmp_path / "repo")

    meta = front_matter(tmp_path / "repo" / "README.md")
    assert meta["library_name"] == "timm" and meta["license"] == "mit" and "timm" in meta["tags"]
    assert meta["pipeline_tag"] == "image-classification" and meta["datasets"] == ["fashion-mnist"]
    [index] = meta["model-index"]
    assert index["name"] == "tiny"
    got = sorted((r["dataset"]["name"], m["name"], m["value"]) for r in index["results"] for m in r["metrics"])
    assert got == expected_model_index(paths, "xbn_converted")
    assert sorted((r["dataset"], r["metric"], r["value"]) for r in card_results(tmp_path / "repo" / "README.md")) == got

    body = (tmp_path / "repo" / "README.md").read_text().split("\n## Results\n", 1)[1]
    assert NO_RESULTS not in body
    # every figure in the results sections is a value of the results files (as printed: 2 or 4 decimals)
    allowed = {f"{v:.{n}f}" for p in paths.values() for v in json_numbers(json.loads(p.read_text())) for n in (2, 4)}
    allowed |= {str(v) for p in paths.values() for v in json_numbers(json.loads(p.read_text()))}
    figures = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", body)
    assert figures and set(figures) <= allowed, set(figures) - allowed
    assert "| **xbn_converted** | 71.38 | 69.88 ± 0.38 | 58.62 ± 1.12 |" in body  # the pushed model, highlighted
    assert "| resnet10t | 70.12 | 61.50 ± 1.25 | 33.75 ± 2.50 |" in body


def test_card_without_results_says_so_and_partial_corruption_has_no_mce(tmp_path: Path) -> None:
    model = randomized(timm.create_model("resnet10t", num_classes=3))
    checkpoint = write_checkpoint(model, tmp_path / "ckpt.safetensors")
    push("resnet10t", "someone/bare", checkpoint=checkpoint, model_kwargs=dict(num_classes=3), dry_run=tmp_path / "bare")
    readme = (tmp_path / "bare" / "README.md").read_text()
    assert "model-index" not in front_matter(tmp_path / "bare" / "README.md")
    assert readme.count(NO_RESULTS) == 6  # recipe + five results sections
    assert "BatchNorm in every block (baseline)" in readme

    partial = json.loads(results_files(tmp_path, model="resnet10t")["corruption"].read_text())
    partial.update(complete=False, missing=["contrast/5"], mce=None, relative_mce=None)
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    push("resnet10t", "someone/partial", checkpoint=checkpoint, model_kwargs=dict(num_classes=3),
         results=[tmp_path / "partial.json"], dry_run=tmp_path / "partial")
    [index] = front_matter(tmp_path / "partial" / "README.md")["model-index"]
    assert [m["name"] for r in index["results"] for m in r["metrics"]] == ["Top 1 Error (clean)"]
    assert "**partial run**: missing contrast/5" in (tmp_path / "partial" / "README.md").read_text()


def test_card_esm_row_shows_the_largest_sigma_and_its_layer(tmp_path: Path) -> None:
    model = randomized(timm.create_model("resnet10t", num_classes=3))
    checkpoint = write_checkpoint(model, tmp_path / "ckpt.safetensors")
    esm = json.loads(results_files(tmp_path, model="resnet10t")["esm"].read_text())
    layer = esm["models"]["resnet10t"]["layers"][0]
    # the largest in the middle: neither the first, the last nor the smallest layer gives this row
    esm["models"]["resnet10t"]["layers"] = [dict(layer, name=name, esm_sigma=sigma) for name, sigma in
                                             (("bn1", 0.25), ("layer1.0.bn1", 0.75), ("layer1.0.bn2", 0.125))]
    (tmp_path / "esm3.json").write_text(json.dumps(esm))
    push("resnet10t", "someone/esm", checkpoint=checkpoint, model_kwargs=dict(num_classes=3),
         results=[tmp_path / "esm3.json"], dry_run=tmp_path / "repo")
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "| Model | Mean ESM σ | BN layers | Largest ESM σ (layer) |" in readme
    assert "| **resnet10t** | 0.3125 | 3 | 0.7500 (`layer1.0.bn1`) |" in readme
