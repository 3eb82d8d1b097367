"""XBNBlock ResNets / ResNeXts registered with timm, in the layout of the authors' code.

Naming: ``xbn_<timm base>[_p1|_p3][_in][_d2|_d4|_d8][_bnstem]``
  * no position suffix = XBNBlock-P2 (the paper's default); ``_p1`` / ``_p3`` = P1 / P3 (Table 1)
  * no norm suffix = GroupNorm with 64 groups (clamped to the channels); ``_in`` = InstanceNorm (Fig. 7/8)
  * no D suffix = every bottleneck; ``_d2`` / ``_d4`` / ``_d8`` = the 2n / 4n / 8n-th bottlenecks (Fig. 7, Table 2)
  * no stem suffix = the stem norm is the batch-free norm too, as in every XBNBlock network of the
    authors' code (``self.bn1 = my.Norm(64)`` in ``models/resnet_XBNBlock_P1/P2/P3.py`` and
    ``resnext_XBNBlock_P2.py``) and their released checkpoints; ``_bnstem`` = this project's variant
    with a BatchNorm stem. The former ``xbn_<base>_bfnstem`` names map to ``xbn_<base>`` (deprecated).

Every model is the timm ``ResNet`` of its base name with the surgery of ``timm_xbn.convert``
applied at construction, so ``convert(timm.create_model("resnet50"))`` and
``timm.create_model("xbn_resnet50")`` have identical state-dict keys and shapes. The surgery
settings can be overridden per call (``timm.create_model("xbn_resnet50", position="P1")``).
Unlike timm's ResNets, the last BN of each block is not zero-initialised by default
(``zero_init_last=False``), following the authors' code; ``xbn_converted`` built from scratch does
the same for every base model that has the option. Built from scratch, a BFN has the authors'
affine setting (``timm_xbn.layers.paper_affine``: GN affine, IN not) unless ``affine`` is given; an
``xbn_converted`` exported after surgery on trained weights records ``affine`` in its model args.
"""
from typing import Any, Callable, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model, register_model_deprecations,
    resolve_pretrained_cfg,
)
from timm.models.resnet import Bottleneck, ResNet

from ..layers import paper_affine
from ..surgery import convert
from ..utils.errors import UserError
from .factory import create_base_model
from .names import AUTHORS_LAYOUT, AUTHORS_TAG, BN_STEM_SUFFIX, HUB_ORG
from .pretrained import HUB_ERRORS, check_hub_weights, checkpoint_head_kwargs, unavailable

__all__ = ["XBN_VARIANTS", "XBNResNet", "SURGERY_KWARGS"]

SURGERY_KWARGS = ("position", "every", "bfn", "groups", "channels_per_group", "affine", "stem")

# timm ResNet constructor arguments of each base architecture.
_BASE_ARCHS: Dict[str, Dict[str, Any]] = {
    "resnet26": dict(block=Bottleneck, layers=(2, 2, 2, 2)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnet152": dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(block=Bottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4),
    "resnext101_32x8d": dict(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=8),
}
# The authors' XBNBlock: P2, GN with 64 groups (their run scripts' num_groups=64, clamped to the channels), BFN stem.
_DEFAULT_SURGERY = dict(position=2, every=1, bfn="gn", groups=64, channels_per_group=None, affine=None, stem=True)


def _variants() -> Dict[str, Dict[str, Any]]:
    """Registered name -> dict(base=..., **surgery settings)."""
    variants: Dict[str, Dict[str, Any]] = {}

    def add(base: str, suffix: str = "", **surgery: Any) -> None:
        variants[f"xbn_{base}{suffix}"] = dict(base=base, **dict(_DEFAULT_SURGERY, **surgery))
        variants[f"xbn_{base}{suffix}{BN_STEM_SUFFIX}"] = dict(base=base, **dict(_DEFAULT_SURGERY, **surgery, stem=False))

    for base in _BASE_ARCHS:
        add(base)
        if base != "resnet26":
            add(base, "_d2", every=2)  # Table 2
    add("resnet50", "_p1", position=1)  # Table 1
    add("resnet50", "_p3", position=3)
    for every in (4, 8):  # Figure 7
        add("resnet50", f"_d{every}", every=every)
    add("resnet50", "_in", bfn="in")  # Figures 7 and 8
    for every in (2, 4, 8):
        add("resnet50", f"_in_d{every}", bfn="in", every=every)
    return dict(sorted(variants.items()))


XBN_VARIANTS: Dict[str, Dict[str, Any]] = _variants()


class XBNResNet(ResNet):
    """A timm ``ResNet`` whose residual blocks are converted to XBNBlocks when it is built."""

    def __init__(self, position: Any = 2, every: int = 1, bfn: str = "gn", groups: int = 64,
                 channels_per_group: Any = None, affine: Any = None, stem: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        affine = paper_affine(bfn) if affine is None else affine  # trained from scratch: the authors' choice
        convert(self, position=position, every=every, bfn=bfn, groups=groups,
                channels_per_group=channels_per_group, affine=affine, stem=stem, inplace=True)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc",
        "license": "apache-2.0", "paper_ids": "arXiv:2203.10778",
        **kwargs,
    }


def _pretrained_tags(name: str) -> Dict[str, Dict[str, Any]]:
    """Pretrained tags of a variant: ``.in1k`` (trained by this project) and, for the networks whose
    ImageNet weights the authors released (``xbn_<base>`` of Table 2), ``.authors_in1k`` (their
    weights, imported with ``xbn-convert ARCH --authors CHECKPOINT``)."""
    tags = {f"{name}.in1k": _cfg(hf_hub_id=f"{HUB_ORG}/{name}.in1k")}
    if name in AUTHORS_LAYOUT.values():
        tags[f"{name}.{AUTHORS_TAG}"] = _cfg(hf_hub_id=f"{HUB_ORG}/{name}.{AUTHORS_TAG}")
    return tags


default_cfgs = generate_default_cfgs({
    **{tag: cfg for name in XBN_VARIANTS for tag, cfg in _pretrained_tags(name).items()},
    "xbn_converted": _cfg(),
})


def _recorded(model: XBNResNet, surgery: Dict[str, Any]) -> XBNResNet:
    """``model`` with its surgery settings among the model args timm exports to ``config.json``, so an
    exported model rebuilds with the same layout even if a name's defaults change."""
    model._model_args = {**getattr(model, "_model_args", {}), **surgery}
    return model


def _bn_stem_hint(name: str, err: Exception, stem: bool) -> str:
    """One line for a checkpoint with a BatchNorm stem loaded into a batch-free stem, else ''."""
    if not stem or '"bn1.running_mean"' not in str(err):
        return ""
    return (f"the checkpoint has a BatchNorm stem (bn1.running_mean), {name} a batch-free one: it was saved from a BN-stem "
            f"model (xbn_* names before the authors' stem became the default); load it as "
            f"{name}{BN_STEM_SUFFIX} or with stem=False")


def _create_xbn_resnet(name: str, pretrained: bool = False, **kwargs: Any) -> XBNResNet:
    variant = dict(XBN_VARIANTS[name])
    base = variant.pop("base")
    model_args = dict(_BASE_ARCHS[base], zero_init_last=False, **variant)
    surgery = {k: kwargs.get(k, variant[k]) for k in SURGERY_KWARGS}
    if not pretrained:
        return _recorded(build_model_with_cfg(XBNResNet, name, pretrained, **dict(model_args, **kwargs)), surgery)
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")).to_dict()
    check_hub_weights(cfg)  # fails in one line, without a minute of retries, when the tag has no weights
    if cfg.get("file"):  # the user's own weights: the model gets their head (a different num_classes is an error)
        kwargs = checkpoint_head_kwargs(name, kwargs)
    try:
        return _recorded(build_model_with_cfg(XBNResNet, name, pretrained, **dict(model_args, **kwargs)), surgery)
    except HUB_ERRORS as err:  # the repo exists but holds no weights file timm can load
        raise unavailable(f"{name}.{cfg.get('tag')}", cfg["hf_hub_id"], f"has no loadable weights ({type(err).__name__})") from None
    except RuntimeError as err:  # timm's strict load_state_dict
        hint = _bn_stem_hint(name, err, bool(surgery["stem"]))
        if hint:
            raise UserError(hint) from None
        raise


_STEM_TEXT = {True: "batch-free stem (the authors' layout)", False: "BatchNorm stem (this project's variant)"}


def _entrypoint(name: str) -> Callable[..., XBNResNet]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> XBNResNet:
        return _create_xbn_resnet(name, pretrained, **kwargs)

    settings = XBN_VARIANTS[name]
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"{settings['base']} with XBNBlock-P{settings['position']} ({settings['bfn'].upper()}) in every "
        f"{'' if settings['every'] == 1 else str(settings['every']) + '-th '}bottleneck"
        f", {_STEM_TEXT[settings['stem']]}."
    )
    return entrypoint


for _name in XBN_VARIANTS:
    globals()[_name] = register_model(_entrypoint(_name))
# the authors' layout was registered as xbn_<base>_bfnstem before it became xbn_<base>: same modules and keys
register_model_deprecations(__name__, {f"{name}_bfnstem": name for name in AUTHORS_LAYOUT.values()})


def _build_converted(base_model: str = "resnet26", **kwargs: Any):
    surgery = {k: kwargs.pop(k) for k in SURGERY_KWARGS if k in kwargs}
    if surgery.get("affine") is None:  # built from scratch (or to load weights whose config says): the authors' choice
        surgery["affine"] = paper_affine(surgery.get("bfn", "gn"))
    return convert(create_base_model(base_model, **kwargs), inplace=True, **surgery).model


@register_model
def xbn_converted(pretrained: bool = False, **kwargs: Any):
    """Any supported timm BN model converted by surgery: ``base_model`` plus ``convert`` settings
    (position, every, bfn, groups, channels_per_group, affine, stem) and the base's timm kwargs.
    Lets a Hub ``config.json`` (architecture + model_args) rebuild a converted model. With
    ``pretrained=True`` the model gets the checkpoint's number of classes (``checkpoint_head_kwargs``)."""
    if pretrained:
        base = get_pretrained_cfg(kwargs.get("base_model", "resnet26"))
        kwargs = checkpoint_head_kwargs("xbn_converted", kwargs, classifier=base.classifier if base else None)
    return build_model_with_cfg(_build_converted, "xbn_converted", pretrained, **kwargs)
