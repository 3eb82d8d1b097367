"""Pretrained weights of the ``xbn_*`` tags: a fast, one-line error when their Hub repo has none.

Every registered model advertises ``<name>.in1k`` (and ``.authors_in1k``) tags whose weights live
in ``timm-xbn/<name>.<tag>`` repos that may not be published. timm's own loader would then spend
about a minute in huggingface_hub's retries (offline) and end in a generic "cannot find the
requested files". Before timm loads, ``check_hub_weights`` asks once, without retries: is the
weights file in the local Hub cache, or on the Hub? When it is, timm's normal path runs unchanged.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from timm.models import load_state_dict, resolve_pretrained_cfg

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from ..utils.errors import UserError

__all__ = [
    "PretrainedWeightsUnavailable", "HUB_ERRORS", "check_hub_weights", "check_pretrained", "checkpoint_head_kwargs",
    "hub_problem", "unavailable",
]

#: huggingface_hub errors of a download that timm's loader lets through.
HUB_ERRORS = (EntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError)

_WEIGHTS_FILE = "model.safetensors"  # what xbn-hub push uploads
_HUB_WEIGHT_FILES = (_WEIGHTS_FILE, "pytorch_model.bin")  # what timm's Hub loader looks for


class PretrainedWeightsUnavailable(FileNotFoundError):
    """A pretrained tag's Hub repo holds no weights, or cannot be reached and is not in the local cache."""


def unavailable(tag: str, repo_id: str, why: str) -> PretrainedWeightsUnavailable:
    """The one-line error for ``tag``: the repo tried, why it failed, and how to get a model instead."""
    return PretrainedWeightsUnavailable(
        f"no pretrained weights for {tag}: Hub repo {repo_id} {why}. Get a model by training one "
        f"(xbn-train -c recipes/xbn_resnet50_standard.yaml --model {tag.split('.')[0]}), by importing the "
        "authors' weights (xbn-convert ARCH --authors CHECKPOINT -o DIR), or publish yours "
        f"(xbn-hub push --repo-id {repo_id} ...); then load it with pretrained_cfg_overlay=dict(file=...) or local-dir:DIR"
    )


def check_hub_weights(pretrained_cfg: Dict[str, Any]) -> None:
    """Raise ``PretrainedWeightsUnavailable`` unless timm can load ``pretrained_cfg``'s weights from
    the Hub or its local cache. Configs that load from a file, a state dict or ``local-dir:`` pass."""
    repo_id = pretrained_cfg.get("hf_hub_id")
    if not repo_id or pretrained_cfg.get("file") or pretrained_cfg.get("state_dict") is not None:
        return
    if pretrained_cfg.get("source") == "local-dir":
        return
    why = hub_problem(repo_id)
    if why:
        tag = f"{pretrained_cfg.get('architecture')}.{pretrained_cfg.get('tag')}"
        raise unavailable(tag, repo_id, why)


def check_pretrained(name: str) -> None:
    """Before timm's loader and its ~20 retries: ``PretrainedWeightsUnavailable`` in one line when the
    pretrained weights of timm model ``name`` (``resnet50``, ``resnet50.a1_in1k``, ``hf-hub:ORG/NAME``) are
    neither in the local Hub cache nor reachable (offline, ``HF_HUB_OFFLINE``), saying how to use local weights.
    Weights from a URL or a file pass; the ``xbn_*`` tags get ``check_hub_weights``."""
    from timm.models import get_pretrained_cfg

    if name.startswith(("hf-hub:", "hf_hub:")):
        repo_id, filenames = name.split(":", 1)[1].split("@")[0], _HUB_WEIGHT_FILES
    else:
        try:
            cfg = get_pretrained_cfg(name)
        except (RuntimeError, ValueError):  # an unknown tag: timm's own error says which exist
            return
        if cfg is not None and cfg.architecture and cfg.architecture.startswith("xbn_"):
            return check_hub_weights(cfg.to_dict())
        if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict is not None:
            return
        repo_id, filenames = cfg.hf_hub_id, tuple(filter(None, (cfg.hf_hub_filename,))) + _HUB_WEIGHT_FILES
    why = hub_problem(repo_id, filenames)
    if why:
        raise PretrainedWeightsUnavailable(
            f"no pretrained weights for {name}: Hub repo {repo_id} {why}. Use local weights instead: "
            "--checkpoint FILE (a .safetensors or weights-only .pth file) without --pretrained, or fill the "
            "Hub cache (HF_HOME) on a machine online")


def hub_problem(repo_id: str, filenames: Tuple[str, ...] = (_WEIGHTS_FILE,)) -> Optional[str]:
    """Why the weights of ``repo_id`` cannot be had, or None: one HEAD request without retries."""
    if any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames):
        return None
    if constants.HF_HUB_OFFLINE:
        return "is not in the local Hub cache and HF_HUB_OFFLINE is set"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filenames[0]), timeout=10)
    except EntryNotFoundError:
        return None  # the repo exists without a safetensors file: timm looks for its other weight files
    except RepositoryNotFoundError:
        return "is not published (no such repo, or it is private)"
    except HfHubHTTPError as err:
        return f"could not be reached (HTTP {err.response.status_code if err.response is not None else 'error'})"
    except Exception as err:  # network errors of the HTTP client: no connection, DNS, timeout
        return f"could not be reached and is not in the local Hub cache ({type(err).__name__}: offline or no network?)"
    return None


def _file_head_rows(path: str, classifier: Optional[str]) -> Optional[int]:
    """Rows (classes) of ``classifier``'s weight in the checkpoint file, or None when it has no such tensor."""
    if not classifier or not Path(path).is_file():
        return None
    key = f"{classifier}.weight"
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(key).get_shape()[0] if key in f.keys() else None
    tensor = load_state_dict(str(path), weights_only=True).get(key)
    return None if tensor is None else tensor.shape[0]


def checkpoint_head_kwargs(name: str, kwargs: Dict[str, Any], classifier: Optional[str] = None) -> Dict[str, Any]:
    """``kwargs`` for ``build_model_with_cfg(name, pretrained=True, ...)`` whose head has the checkpoint's classes.

    The checkpoint's classes are the rows of its classifier weight when the pretrained config names a
    ``file`` (``pretrained_cfg_overlay=dict(file=...)``), else the config's ``num_classes`` (a
    ``local-dir:`` / ``hf-hub:`` config.json). Without ``num_classes`` in ``kwargs`` the model gets the
    checkpoint's; a different one raises ``ValueError`` (timm would drop the trained head with an INFO
    line and leave a random one). ``num_classes=0`` and ``features_only`` (no head) pass unchanged.
    """
    if kwargs.get("features_only") or kwargs.get("num_classes") == 0:
        return kwargs
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")).to_dict()
    classes = cfg.get("num_classes")
    if cfg.get("file"):
        classes = _file_head_rows(cfg["file"], classifier or cfg.get("classifier")) or classes
    requested = kwargs.get("num_classes")
    if classes is None:
        return kwargs
    if requested is not None and requested != classes:
        source = cfg.get("file") or cfg.get("hf_hub_id") or name
        raise UserError(f"the checkpoint of {name} ({source}) has a {classes}-class head, but num_classes={requested} "
                        f"was requested: load it with num_classes={classes} (or without num_classes), then call "
                        f"model.reset_classifier({requested}) for a fresh {requested}-class head")
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {}, num_classes=classes)
    return dict(kwargs, num_classes=classes, pretrained_cfg_overlay=overlay)
