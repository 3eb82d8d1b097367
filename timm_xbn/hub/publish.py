"""Push a model to the Hugging Face Hub in timm's layout, pull it back, and read its card.

A pushed repo holds ``model.safetensors``, timm's ``config.json`` (architecture, num_classes,
num_features, pretrained_cfg and model_args, written by ``timm.models.save_for_hf``) and a
``README.md`` model card, so ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` rebuilds
it, converted models included (``import timm_xbn`` first).
"""
import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch.nn as nn
from huggingface_hub import CommitOperationAdd, HfApi, get_token, hf_hub_download, snapshot_download
from huggingface_hub.utils import validate_repo_id

from ..evaluation import input_data_config
from ..models import create_model, export_model, load_weights
from ..models.pretrained import hub_problem
from ..utils.errors import UserError
from ..version import __version__
from .card import card_results, check_license, render_card
from .results import for_weights, load_results, select_entry

__all__ = ["REPO_FILES", "WEIGHTS_KEYS", "PushResult", "HubInfo", "check_repo_id", "resolve_token", "build_model",
           "recorded_input_settings", "describe_weights", "write_repo_folder", "upload_folder", "push", "pull", "info"]

REPO_FILES = ("model.safetensors", "config.json", "README.md")
# pretrained_cfg keys that describe one set of released weights (not the architecture): wrong for any other weights
WEIGHTS_KEYS = ("tag", "hf_hub_id", "hf_hub_filename", "url", "file", "origin_url", "paper_ids", "paper_name", "notes",
                "source")


@dataclass(frozen=True)
class PushResult:
    """What ``push`` did: the repo, the files of the commit, the folder kept by a dry run, the commit URL."""

    repo_id: str
    files: List[str]
    folder: Optional[Path]
    commit_url: Optional[str]


@dataclass(frozen=True)
class HubInfo:
    """A repo's (or a downloaded folder's) ``config.json`` and its card's ``model-index`` results."""

    source: str
    config: Dict[str, Any]
    results: List[Dict[str, Any]]


def check_repo_id(repo_id: str) -> str:
    """Raise ``ValueError`` unless ``repo_id`` is a valid ``ORG/NAME`` Hub model id."""
    if repo_id.count("/") != 1:
        raise UserError(f"invalid repo id {repo_id!r}: expected ORG/NAME, e.g. timm-xbn/xbn_resnet50.in1k")
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise UserError(f"invalid repo id {repo_id!r}: {err}") from None
    return repo_id


def resolve_token(token: Optional[str] = None) -> str:
    """``token``, else the ``HF_TOKEN`` environment variable or the token saved by ``hf auth login``."""
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or `huggingface-cli login`)")
    return token


def build_model(model: Union[str, nn.Module], checkpoint: Optional[Union[str, Path]] = None,
                model_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The model to publish: a timm / ``xbn_*`` name (or ``local-dir:FOLDER`` of an ``xbn-convert`` output)
    built with ``model_kwargs`` and the weights of ``checkpoint`` (required), or a model object
    (``checkpoint`` optionally loaded into a copy)."""
    if isinstance(model, str):
        if checkpoint is None:
            raise UserError(f"a checkpoint is required to publish {model!r}: a freshly built model has random weights")
        return create_model(model, checkpoint=checkpoint, **(model_kwargs or {}))  # local-dir: builds from config.json
    if model_kwargs:
        raise UserError("model_kwargs only apply when the model is given by name")
    if not getattr(model, "pretrained_cfg", None):
        raise UserError(f"{type(model).__name__} is not a timm model (no pretrained_cfg): build it with timm.create_model")
    if checkpoint is None:
        return model
    return load_weights(copy.deepcopy(model), checkpoint)


def recorded_input_settings(checkpoint: Union[str, Path, None]) -> Dict[str, Any]:
    """The input settings (``img_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation``) recorded beside a
    checkpoint file or in an export folder: timm's ``config.json`` (its pretrained_cfg, as written by
    ``xbn-convert`` / ``export_model``) or ``args.yaml`` (written by ``xbn-train`` and timm's train.py); empty when
    neither is there."""
    import yaml

    if checkpoint is None:
        return {}
    path = Path(str(checkpoint).removeprefix("local-dir:"))
    folder = path if path.is_dir() else path.parent
    settings: Dict[str, Any] = {}
    if (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text()).get("pretrained_cfg", {})
        settings = dict(cfg, img_size=cfg["input_size"][-1] if cfg.get("input_size") else None)
    elif (folder / "args.yaml").is_file():
        args = yaml.safe_load((folder / "args.yaml").read_text()) or {}
        size = args.get("input_size") or [None]
        settings = dict(args, img_size=args.get("img_size") or size[-1])
    keys = ("img_size", "crop_pct", "mean", "std", "interpolation")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in keys and v not in (None, "")}


def describe_weights(model: nn.Module, tag: Optional[str] = None) -> nn.Module:
    """Make ``model.pretrained_cfg`` describe the weights it holds: the keys of a released weight set
    (``WEIGHTS_KEYS``: ``tag`` like ``in1k``, its URL, origin, paper) are dropped, and ``tag`` is set only when
    given (the weights really are that set, e.g. trained on ImageNet-1k). Changes ``model`` in place."""
    cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k not in WEIGHTS_KEYS}
    if tag:
        cfg["tag"] = tag
    model.pretrained_cfg = cfg
    return model


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--dry-run folder {folder} is a file")
    if folder.is_dir():
        extra = sorted(p.name for p in folder.iterdir() if p.name not in REPO_FILES)
        if extra:
            raise UserError(f"dry-run folder {folder} must be new or hold only {', '.join(REPO_FILES)}; found {', '.join(extra)}")


def write_repo_folder(
    model: nn.Module,
    folder: Union[str, Path],
    repo_id: str,
    results: Sequence[Union[str, Path]] = (),
    names: Sequence[str] = (),
    license: Optional[str] = None,
    template: Optional[Union[str, Path]] = None,
    data_config: Optional[Dict[str, Any]] = None,
) -> List[str]:
    """Write the files of the Hub repo (``REPO_FILES``) to ``folder``; returns their names. ``data_config``
    (input_size, mean, std, crop_pct, interpolation) replaces the model's own in config.json and the card."""
    from ..evaluation.models import weights_sha1

    sha1 = weights_sha1(model)
    loaded = [for_weights(r, sha1) for r in load_results(results)]
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:  # folder is untouched unless all succeed
        staging = Path(tmp)
        export_model(model, staging, data_config=data_config)
        config = json.loads((staging / "config.json").read_text())
        card = render_card(model, repo_id, config, loaded, names=names, license=license, template=template)
        (staging / "README.md").write_text(card, encoding="utf-8")
        folder.mkdir(exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    return sorted(p.name for p in folder.iterdir())


def upload_folder(folder: Union[str, Path], repo_id: str, token: str, commit_message: str, private: bool = False,
                  revision: Optional[str] = None, api: Optional[HfApi] = None):
    """Create ``repo_id`` if needed and commit every file of ``folder`` in one commit; returns the ``CommitInfo``."""
    folder = Path(folder)
    api = api or HfApi(token=token, library_name="timm-xbn", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(folder.iterdir())]
        return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision, token=token)
    except Exception as err:
        why = _upload_problem(err)
        if why is None:
            raise
        raise UserError(f"cannot push {repo_id} to the Hugging Face Hub ({api.endpoint}): {why}; nothing was "
                        "uploaded (check the connection, or write the repo folder with --dry-run DIR)") from None


def _upload_problem(err: BaseException) -> Optional[str]:
    """Why an upload failed, for errors of the network or the Hub rather than of timm-xbn; else None."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if getattr(err, "response", None) is not None else "error"
        return f"HTTP {status}: {str(err).splitlines()[0]}"
    network = {"TransportError", "ConnectionError", "TimeoutException", "TimeoutError"}  # of whichever HTTP client
    if any(cls.__name__ in network for cls in type(err).__mro__):
        return f"no connection ({type(err).__name__}: offline or no network?)"
    return None


def push(
    model: Union[str, nn.Module],
    repo_id: str,
    checkpoint: Optional[Union[str, Path]] = None,
    results: Sequence[Union[str, Path]] = (),
    model_kwargs: Optional[Dict[str, Any]] = None,
    results_name: Union[str, Sequence[str], None] = None,
    private: bool = False,
    revision: Optional[str] = None,
    dry_run: Optional[Union[str, Path]] = None,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
    license: Optional[str] = None,
    api: Optional[HfApi] = None,
    input_settings: Optional[Dict[str, Any]] = None,
    tag: Optional[str] = None,
) -> PushResult:
    """Publish a model with its weights, timm ``config.json`` and a model card built from ``results``.

    Everything is checked before anything is uploaded, in this order: the repo id, the checkpoint
    against the model (missing / unexpected keys, shapes), the results files, the token. With
    ``dry_run=DIR`` the exact repo folder is written to ``DIR`` and nothing is uploaded.

    Args:
        model: a timm or ``xbn_*`` model name (then ``checkpoint`` is required), or a model object.
        repo_id: ``ORG/NAME``; the project's repos live under ``timm_xbn.models.HUB_ORG``.
        results: results JSON files from ``xbn-train`` / ``xbn-eval`` (train, robustness, adabn, esm, corruption).
        results_name: the name(s) the results files use for this model, when not the model or repo name
            (e.g. an evaluation's ``local-dir:`` name or label).
        api: an ``HfApi`` to upload with (default: one for the Hub endpoint and ``token``).
        input_settings: ``img_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation`` the weights were trained
            with, over those recorded beside ``checkpoint`` (``recorded_input_settings``), over the model's defaults.
        tag: the pretrained tag of the weights (``in1k``: trained on ImageNet-1k), default the part of the repo
            name after its last ``.`` (timm's ``arch.tag``), else none: a checkpoint's weights are never labelled
            with the tag of timm's released weights.
    """
    check_repo_id(repo_id)
    check_license(license)
    if dry_run is not None:
        _check_folder(Path(dry_run))
    built = build_model(model, checkpoint, model_kwargs)
    repo_name = repo_id.split("/")[1]
    describe_weights(built, tag if tag is not None else repo_name.rpartition(".")[2] if "." in repo_name else None)
    given = {k: v for k, v in (input_settings or {}).items() if v is not None}
    data_config = input_data_config(built, **{**recorded_input_settings(checkpoint), **given})
    architecture = built.pretrained_cfg.get("architecture", type(built).__name__)
    aliases = [results_name] if isinstance(results_name, str) else list(results_name or ())
    names = [n for n in (*aliases, model if isinstance(model, str) else None, architecture, repo_id.split("/")[1]) if n]
    for loaded in load_results(results):
        select_entry(loaded, names)
    if dry_run is not None:
        folder = Path(dry_run)
        files = write_repo_folder(built, folder, repo_id, results, names=names, license=license, data_config=data_config)
        return PushResult(repo_id=repo_id, files=files, folder=folder, commit_url=None)
    token = resolve_token(token)
    message = commit_message or f"Add {architecture} weights, config.json and model card (timm-xbn {__version__})"
    with tempfile.TemporaryDirectory() as tmp:
        files = write_repo_folder(built, tmp, repo_id, results, names=names, license=license, data_config=data_config)
        commit = upload_folder(tmp, repo_id, token, message, private=private, revision=revision, api=api)
    return PushResult(repo_id=repo_id, files=files, folder=None, commit_url=commit.commit_url)


def pull(repo_id: str, out: Union[str, Path], revision: Optional[str] = None, token: Optional[str] = None) -> Path:
    """Download a Hub repo to ``out``; returns the folder."""
    check_repo_id(repo_id)
    _check_reachable(repo_id, f"try again online, or give {out} the files of a copy (model.safetensors, config.json)")
    return Path(snapshot_download(repo_id, revision=revision, local_dir=str(out), token=token))


def _check_reachable(repo_id: str, instead: str) -> None:
    """One line, before huggingface_hub's retries, when ``repo_id`` is neither cached nor reachable."""
    why = hub_problem(repo_id, ("config.json",))
    if why:
        raise FileNotFoundError(f"cannot read {repo_id} from the Hub: the repo {why}; {instead}")


def info(source: Union[str, Path], revision: Optional[str] = None) -> HubInfo:
    """``config.json`` and model-card results of a local repo folder, or of a Hub repo ``ORG/NAME``."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        try:
            check_repo_id(str(source))
        except ValueError:
            raise FileNotFoundError(f"no local folder {source}, and it is not a Hub repo id ORG/NAME either") from None
    if folder.is_dir():
        files = {name: folder / name for name in ("config.json", "README.md")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a Hub model folder: {', '.join(missing)} not found")
    else:
        _check_reachable(str(source), f"pull it once online (xbn-hub pull {source} -o DIR) and run xbn-hub info DIR")
        files = {name: Path(hf_hub_download(str(source), name, revision=revision)) for name in ("config.json", "README.md")}
    config = json.loads(files["config.json"].read_text())
    return HubInfo(source=str(source), config=config, results=card_results(files["README.md"]))
