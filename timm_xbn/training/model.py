"""Build the model to train: a timm model by name, or a timm BN model converted by surgery."""
import argparse
from typing import Any, Dict, Tuple

import timm
import torch.nn as nn
from timm.data import resolve_data_config

from ..calibration import calibrate, calibration_batches
from ..layers import paper_affine
from ..models import SURGERY_KWARGS, check_model_name, create_base_model, load_weights
from ..models.pretrained import check_pretrained
from ..surgery import convert
from ..utils.errors import UserError

__all__ = ["surgery_settings", "create_train_model", "model_label"]

# xbn-train option -> timm_xbn.convert argument
_SURGERY_OPTIONS = {
    "position": "position", "every": "every", "bfn": "bfn", "groups": "groups",
    "channels_per_group": "channels_per_group", "bfn_affine": "affine", "stem": "stem",
}


def surgery_settings(args: argparse.Namespace) -> Tuple[str, Dict[str, Any]]:
    """``(model name, create kwargs)`` after applying ``--convert-from`` and its surgery options.

    ``--convert-from NAME`` is shorthand for ``--model xbn_converted`` with ``base_model=NAME`` and
    the surgery options in ``model_kwargs``; surgery options without it are an error (not ignored).
    """
    given = {opt: getattr(args, opt) for opt in _SURGERY_OPTIONS if getattr(args, opt) is not None}
    kwargs = dict(args.model_kwargs or {})
    if not args.convert_from:
        if given:
            raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in given)} only apply with --convert-from MODEL")
        return args.model, kwargs
    if args.model not in ("resnet50", "xbn_converted"):  # resnet50 = train.py's default model
        raise UserError(f"--convert-from {args.convert_from} builds the model; remove model={args.model!r} from the recipe/flags")
    check_model_name(args.convert_from)
    kwargs["base_model"] = args.convert_from
    kwargs.update({_SURGERY_OPTIONS[opt]: value for opt, value in given.items()})
    return "xbn_converted", kwargs


def create_train_model(args: argparse.Namespace, in_chans: int) -> nn.Module:
    """Create the model like train.py (drop rates, BN overrides, head init), then load ``initial_checkpoint``.

    For ``xbn_converted`` the ``pretrained`` flag applies to the base BN model, whose ImageNet weights
    are then kept through the surgery (the converted architecture has no weights of its own).
    """
    name, kwargs = surgery_settings(args)
    common = dict(
        in_chans=in_chans,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        drop_block_rate=args.drop_block,
        global_pool=args.gp,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
    )
    if args.num_classes is not None:
        common["num_classes"] = args.num_classes
    common = {k: v for k, v in common.items() if v is not None}
    surgery = {k: kwargs.pop(k) for k in SURGERY_KWARGS if k in kwargs} if name == "xbn_converted" else None
    if surgery is not None:
        name = kwargs.pop("base_model", None)
        if name is None:
            raise UserError("model xbn_converted needs model_kwargs base_model=NAME (or --convert-from NAME)")
    if args.force and surgery is None:
        raise UserError("--force only applies to a conversion: --convert-from MODEL (or model xbn_converted)")
    if args.calibrate and (surgery is None or args.initial_checkpoint):
        raise UserError("--calibrate fits a fresh conversion to its BN model: it needs --convert-from MODEL "
                        "(or model xbn_converted) and no --initial-checkpoint")
    check_model_name(name)
    create = create_base_model if surgery is not None else timm.create_model
    if args.pretrained:
        check_pretrained(name)
    try:
        model = create(name, pretrained=args.pretrained, **common, **kwargs)
    except TypeError as err:  # a model kwarg the constructor does not take: an option error, not a crash
        raise UserError(f"cannot create {name} with model kwargs {kwargs}: {err}") from None
    if surgery is not None:
        if surgery.get("affine") is None and not (args.pretrained or args.calibrate):  # from scratch: the authors' BFN
            surgery["affine"] = paper_affine(surgery.get("bfn", "gn"))
        data_config = resolve_data_config(vars(args), model=model, verbose=False)  # the images the trainer feeds it
        # a copy: the BN model is what calibration fits to
        converted = convert(model, **surgery, input_size=data_config["input_size"], force=args.force).model
        if args.calibrate:
            images = calibration_batches(args.calibrate, model, args.calib_images, workers=args.workers,
                                         data_config=data_config)
            calibrate(converted, model, images, inplace=True, progress=getattr(args, "rank", 0) == 0)
        model = converted
    if args.initial_checkpoint:
        load_weights(model, args.initial_checkpoint)
    if args.head_init_scale is not None or args.head_init_bias is not None:
        head = model.get_classifier()
        if args.head_init_scale is not None:
            head.weight.data.mul_(args.head_init_scale)
            head.bias.data.mul_(args.head_init_scale)
        if args.head_init_bias is not None:
            nn.init.constant_(head.bias, args.head_init_bias)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def model_label(args: argparse.Namespace) -> str:
    """The model's name for people (logs, output folder, results' ``model_label``): the timm name, or e.g.
    ``xbn_converted(resnet50,P2,every=1,gn)``. Results' ``model`` is the timm name alone, which other tools match."""
    name, kwargs = surgery_settings(args)
    if name != "xbn_converted":
        return name
    position = str(kwargs.get("position", 2)).upper().removeprefix("P")
    return f"xbn_converted({kwargs.get('base_model')},P{position},every={kwargs.get('every', 1)},{kwargs.get('bfn', 'gn')})"
