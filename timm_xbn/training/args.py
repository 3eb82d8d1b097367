"""The options of ``xbn-train``: timm train.py's argument names, defaults and recipe YAML keys.

``xbn-train`` reads the same keys as timm's ``train.py`` (``-c FILE.yaml`` sets defaults, flags
override them). This module is the one place that says which train.py keys it implements
(``SUPPORTED_KEYS``, with train.py's defaults), which train.py keys it deliberately rejects
(``UNSUPPORTED_KEYS``) and which keys are its own surgery options (``XBN_KEYS``). A key outside
these sets, or a rejected one, is a ``ValueError`` naming the key; nothing is silently ignored.
"""
import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import yaml

from ..utils.errors import UserError

__all__ = [
    "SUPPORTED_KEYS", "UNSUPPORTED_KEYS", "TRAIN_PY_KEYS", "XBN_KEYS",
    "create_parser", "load_recipe", "build_args", "check_values", "config_dict", "resolve_lr",
]


class _KwargsAction(argparse.Action):
    """``--model-kwargs '{"a": 1, "b": "x"}'`` (a JSON object, as in the other commands) or timm's
    ``--model-kwargs a=1 b=x`` (values parsed as YAML scalars, like timm's ParseKwargs) -> ``{"a": 1, "b": "x"}``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lstrip().startswith("{"):
            try:
                kwargs = json.loads(values[0])
            except json.JSONDecodeError as err:
                raise UserError(f"{option_string} must be a JSON object or key=value pairs: {err}") from None
            if not isinstance(kwargs, dict):
                raise UserError(f"{option_string} must be a JSON object or key=value pairs, got {values[0]!r}")
            setattr(namespace, self.dest, kwargs)
            return
        kwargs = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"{option_string} expects key=value pairs, got {item!r}")
            kwargs[key] = yaml.safe_load(value)
        setattr(namespace, self.dest, kwargs)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ``ValueError`` instead of exiting, so the API and CLI report it."""

    def error(self, message: str):
        raise UserError(message)


def _add_train_py_arguments(parser: argparse.ArgumentParser) -> None:
    """The train.py arguments xbn-train implements, with train.py's names, types and defaults."""
    group = parser.add_argument_group("Dataset parameters")
    parser.add_argument("data", nargs="?", metavar="DIR", default=None, help="path to dataset (deprecated positional, use --data-dir)")
    group.add_argument("--data-dir", metavar="DIR", default=None, help="path to dataset (root dir)")
    group.add_argument("--dataset", metavar="NAME", default="", help="dataset type + name ('<type>/<name>'), ImageFolder/ImageTar if empty")
    group.add_argument("--train-split", metavar="NAME", default="train", help="dataset train split")
    group.add_argument("--val-split", metavar="NAME", default="validation", help="dataset validation split ('' = no validation)")
    group.add_argument("--train-num-samples", type=int, default=None, metavar="N", help="samples in the train split (iterable datasets)")
    group.add_argument("--val-num-samples", type=int, default=None, metavar="N", help="samples in the validation split (iterable datasets)")
    group.add_argument("--dataset-download", action="store_true", default=False, help="allow download of torch/ and tfds/ datasets")
    group.add_argument("--class-map", default="", metavar="FILENAME", help="path to class to idx mapping file")
    group.add_argument("--input-img-mode", default=None, help="dataset image conversion mode")
    group.add_argument("--input-key", default=None, help="dataset key for input images")
    group.add_argument("--target-key", default=None, help="dataset key for target labels")

    group = parser.add_argument_group("Model parameters")
    group.add_argument("--model", default="resnet50", metavar="MODEL", help="name of the timm model to train")
    group.add_argument("--pretrained", action="store_true", default=False, help="start from pretrained weights (the base model's with --convert-from)")
    group.add_argument("--initial-checkpoint", default="", metavar="PATH", help="load these weights (safetensors / weights-only) after creating the model")
    group.add_argument("--resume", default="", metavar="PATH", help="resume model, optimizer, scheduler, EMA and RNG state from a checkpoint; 'auto' = the newest state in the experiment folder")
    group.add_argument("--no-resume-opt", action="store_true", default=False, help="do not resume optimizer, AMP scaler and scheduler state")
    group.add_argument("--num-classes", type=int, default=None, metavar="N", help="number of label classes (model default if None)")
    group.add_argument("--gp", default=None, metavar="POOL", help="global pool type (model default if None)")
    group.add_argument("--img-size", type=int, default=None, metavar="N", help="image size (model default if None)")
    group.add_argument("--in-chans", type=int, default=None, metavar="N", help="image input channels (default 3)")
    group.add_argument("--input-size", type=int, nargs=3, default=None, metavar="N", help="input dimensions (d h w)")
    group.add_argument("--crop-pct", type=float, default=None, metavar="N", help="validation center crop percent")
    group.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN", help="override dataset mean")
    group.add_argument("--std", type=float, nargs="+", default=None, metavar="STD", help="override dataset std")
    group.add_argument("--interpolation", default="", metavar="NAME", help="image resize interpolation (overrides model)")
    group.add_argument("-b", "--batch-size", type=int, default=128, metavar="N", help="training batch size PER PROCESS (GPU)")
    group.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N", help="validation batch size override")
    group.add_argument("--channels-last", action="store_true", default=False, help="channels_last memory layout (CUDA only)")
    group.add_argument("--grad-accum-steps", type=int, default=1, metavar="N", help="accumulate gradients over N batches")
    group.add_argument("--grad-checkpointing", action="store_true", default=False, help="gradient checkpointing through stages")
    group.add_argument("--model-kwargs", nargs="*", default={}, action=_KwargsAction, help="extra timm.create_model kwargs: a JSON object, or key=value pairs (timm's form)")
    group.add_argument("--head-init-scale", type=float, default=None, help="head initialization scale")
    group.add_argument("--head-init-bias", type=float, default=None, help="head initialization bias value")

    group = parser.add_argument_group("Device parameters")
    group.add_argument("--device", default=None, help="device (default: cuda when available, else cpu)")
    group.add_argument("--amp", action="store_true", default=False, help="mixed precision with torch.autocast (CUDA only)")
    group.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"), help="AMP dtype")
    group.add_argument("--no-ddp-bb", action="store_true", default=False, help="turn off DDP buffer broadcast")
    group.add_argument("--local_rank", type=int, default=0, help="set by the launcher (torchrun uses LOCAL_RANK)")
    group.add_argument("--device-modules", nargs="+", default=None, help="Python modules to import before the model is built")

    group = parser.add_argument_group("Optimizer parameters")
    group.add_argument("--opt", default="sgd", metavar="OPTIMIZER", help="optimizer (timm.optim.create_optimizer_v2 name)")
    group.add_argument("--opt-eps", type=float, default=None, metavar="EPSILON", help="optimizer epsilon")
    group.add_argument("--opt-betas", type=float, nargs="+", default=None, metavar="BETA", help="optimizer betas")
    group.add_argument("--momentum", type=float, default=0.9, metavar="M", help="optimizer momentum")
    group.add_argument("--weight-decay", type=float, default=2e-5, help="weight decay")
    group.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip gradient norm")
    group.add_argument("--clip-mode", default="norm", help="gradient clipping mode: norm, value or agc")
    group.add_argument("--layer-decay", type=float, default=None, help="layer-wise learning rate decay")
    group.add_argument("--opt-kwargs", nargs="*", default={}, action=_KwargsAction, help="extra optimizer kwargs (key=value)")

    group = parser.add_argument_group("Learning rate schedule parameters")
    group.add_argument("--sched", default="cosine", metavar="SCHEDULER", help="LR scheduler (timm.scheduler.create_scheduler_v2 name)")
    group.add_argument("--sched-on-updates", action="store_true", default=False, help="step the scheduler per update, not per epoch")
    group.add_argument("--lr", type=float, default=None, metavar="LR", help="learning rate; overrides --lr-base when set")
    group.add_argument("--lr-base", type=float, default=0.1, metavar="LR", help="base lr: lr = lr_base * global_batch / lr_base_size")
    group.add_argument("--lr-base-size", type=int, default=256, metavar="DIV", help="global batch size of --lr-base")
    group.add_argument("--lr-base-scale", default="", metavar="SCALE", help="'linear' or 'sqrt' batch scaling (by optimizer if empty)")
    group.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="pct, pct", help="lr noise on/off epoch fractions")
    group.add_argument("--lr-noise-pct", type=float, default=0.67, metavar="PERCENT", help="lr noise limit percent")
    group.add_argument("--lr-noise-std", type=float, default=1.0, metavar="STDDEV", help="lr noise std-dev")
    group.add_argument("--lr-cycle-mul", type=float, default=1.0, metavar="MULT", help="lr cycle length multiplier")
    group.add_argument("--lr-cycle-decay", type=float, default=0.5, metavar="MULT", help="lr decay per cycle")
    group.add_argument("--lr-cycle-limit", type=int, default=1, metavar="N", help="lr cycle limit")
    group.add_argument("--lr-k-decay", type=float, default=1.0, help="lr k-decay for cosine/poly")
    group.add_argument("--warmup-lr", type=float, default=1e-5, metavar="LR", help="warmup learning rate")
    group.add_argument("--min-lr", type=float, default=0, metavar="LR", help="lower lr bound for cyclic schedulers")
    group.add_argument("--epochs", type=int, default=300, metavar="N", help="number of epochs to train")
    group.add_argument("--start-epoch", type=int, default=None, metavar="N", help="manual epoch number (restarts)")
    group.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270], metavar="MILESTONES", help="multistep decay epochs")
    group.add_argument("--decay-epochs", type=float, default=90, metavar="N", help="epoch interval to decay LR (step)")
    group.add_argument("--warmup-epochs", type=int, default=5, metavar="N", help="epochs to warm up LR")
    group.add_argument("--warmup-prefix", action="store_true", default=False, help="exclude warmup from the decay schedule")
    group.add_argument("--cooldown-epochs", type=int, default=0, metavar="N", help="epochs at min_lr after a cyclic schedule")
    group.add_argument("--patience-epochs", type=int, default=10, metavar="N", help="patience epochs (plateau)")
    group.add_argument("--decay-rate", "--dr", type=float, default=0.1, metavar="RATE", help="LR decay rate")

    group = parser.add_argument_group("Augmentation and regularization parameters")
    group.add_argument("--no-aug", action="store_true", default=False, help="disable all training augmentation")
    group.add_argument("--train-crop-mode", default=None, help="training crop mode")
    group.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0], metavar="PCT", help="random resize scale")
    group.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO", help="random resize aspect ratio")
    group.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    group.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    group.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT", help="color jitter factor")
    group.add_argument("--color-jitter-prob", type=float, default=None, metavar="PCT", help="probability of color jitter")
    group.add_argument("--grayscale-prob", type=float, default=None, metavar="PCT", help="probability of grayscale conversion")
    group.add_argument("--gaussian-blur-prob", type=float, default=None, metavar="PCT", help="probability of gaussian blur")
    group.add_argument("--aa", default=None, metavar="NAME", help="AutoAugment / RandAugment policy")
    group.add_argument("--bce-loss", action="store_true", default=False, help="binary cross-entropy loss")
    group.add_argument("--bce-target-thresh", type=float, default=None, help="binarize soft BCE targets above this")
    group.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erase probability")
    group.add_argument("--remode", default="pixel", help="random erase mode")
    group.add_argument("--recount", type=int, default=1, help="random erase count")
    group.add_argument("--resplit", action="store_true", default=False, help="do not random erase the first split")
    group.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (enabled if > 0)")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (enabled if > 0)")
    group.add_argument("--cutmix-minmax", type=float, nargs="+", default=None, help="cutmix min/max ratio")
    group.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    group.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix when both are enabled")
    group.add_argument("--mixup-mode", default="batch", help="mixup mode: batch, pair or elem")
    group.add_argument("--mixup-off-epoch", type=int, default=0, metavar="N", help="turn mixup off after this epoch (0 = never)")
    group.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    group.add_argument("--train-interpolation", default="random", help="training interpolation")
    group.add_argument("--drop", type=float, default=0.0, metavar="PCT", help="dropout rate")
    group.add_argument("--drop-path", type=float, default=None, metavar="PCT", help="drop path rate")
    group.add_argument("--drop-block", type=float, default=None, metavar="PCT", help="drop block rate")

    group = parser.add_argument_group("Batch norm parameters")
    group.add_argument("--bn-momentum", type=float, default=None, help="BatchNorm momentum override")
    group.add_argument("--bn-eps", type=float, default=None, help="BatchNorm epsilon override")
    group.add_argument("--sync-bn", action="store_true", default=False, help="synchronized BatchNorm (batch-free norms stay as they are)")
    group.add_argument("--dist-bn", default="reduce", help="share BN running stats across ranks each epoch: broadcast, reduce or ''")

    group = parser.add_argument_group("Model exponential moving average parameters")
    group.add_argument("--model-ema", action="store_true", default=False, help="track an EMA of the weights (timm ModelEmaV3)")
    group.add_argument("--model-ema-force-cpu", action="store_true", default=False, help="keep the EMA on CPU (not validated)")
    group.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay")
    group.add_argument("--model-ema-warmup", action="store_true", default=False, help="EMA decay warmup")

    group = parser.add_argument_group("Miscellaneous parameters")
    group.add_argument("--seed", type=int, default=42, metavar="S", help="random seed")
    group.add_argument("--worker-seeding", default="all", help="worker seed mode: all or part")
    group.add_argument("--log-interval", type=int, default=50, metavar="N", help="batches between progress updates")
    group.add_argument("--recovery-interval", type=int, default=0, metavar="N", help="batches between recovery checkpoints (0 = none)")
    group.add_argument("--checkpoint-hist", type=int, default=10, metavar="N", help="number of ranked checkpoints to keep")
    group.add_argument("-j", "--workers", type=int, default=4, metavar="N", help="data loader processes per rank")
    group.add_argument("--pin-mem", action="store_true", default=False, help="pin CPU memory in the DataLoader")
    group.add_argument("--no-prefetcher", action="store_true", default=False, help="disable timm's CUDA prefetcher")
    group.add_argument("-o", "--output", default="", metavar="PATH", help="output folder (default ./output/train)")
    group.add_argument("--experiment", default="", metavar="NAME", help="experiment sub-folder name (needed for --resume auto)")
    group.add_argument("--eval-metric", default="top1", metavar="EVAL_METRIC", help="metric ranking checkpoints: top1, top5 or loss")


def _add_xbn_arguments(parser: argparse.ArgumentParser) -> None:
    """xbn-train's own options: surgery before training, and hidden debug hooks used by the tests."""
    group = parser.add_argument_group("XBNBlock surgery (xbn-train only, not train.py keys)")
    group.add_argument("--convert-from", default=None, metavar="MODEL", help="create this timm BN model (with --pretrained weights) and convert it before training")
    group.add_argument("--position", default=None, help="BN replaced in each block: P1, P2 or P3 (default P2)")
    group.add_argument("--every", type=int, default=None, help="convert every N-th block: 1, 2, 4, 8 (default 1)")
    group.add_argument("--bfn", default=None, choices=("gn", "in", "ln"), help="batch-free norm (default gn)")
    group.add_argument("--groups", type=int, default=None, help="GroupNorm groups (default 64, clamped to channels)")
    group.add_argument("--channels-per-group", type=int, default=None, help="GroupNorm channels per group (instead of --groups)")
    group.add_argument("--bfn-affine", action=argparse.BooleanOptionalAction, default=None, help="affine BFN (default: kept from the BN with --pretrained / --calibrate, else the authors' choice: GN affine, IN not)")
    group.add_argument("--stem", action="store_const", const=True, default=None, help="also replace the stem BN")
    group.add_argument("--force", action="store_true", default=False, help="convert even where a batch-free norm normalizes one value per sample at the training input size (1x1 maps with InstanceNorm, or one channel per group): such a norm outputs a constant")
    group.add_argument("--calibrate", default=None, metavar="DIR", help="unlabeled images: fit each BFN to the BN it replaces before training (timm_xbn.calibrate)")
    group.add_argument("--calib-images", type=int, default=256, metavar="N", help="images of --calibrate to use (default 256)")
    # Debug hooks for the tests (hidden from --help): stop as if killed after N optimizer updates
    # (deterministic, unlike a timed SIGKILL), and write each rank's final weights to a folder.
    group.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    group.add_argument("--debug-rank-weights", default=None, help=argparse.SUPPRESS)


def create_parser() -> argparse.ArgumentParser:
    """The full ``xbn-train`` parser (train.py keys it supports + its own surgery options)."""
    parser = _Parser(
        prog="xbn-train",
        description="Train timm / XBNBlock models with timm train.py's keys; launch with torchrun for several GPUs.",
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE", help="YAML recipe whose keys set the defaults (train.py names)")
    _add_train_py_arguments(parser)
    _add_xbn_arguments(parser)
    return parser


def _dests(parser: argparse.ArgumentParser, groups: Iterable[str]) -> frozenset:
    return frozenset(a.dest for g in parser._action_groups if g.title in groups for a in g._group_actions)


_PARSER = create_parser()
_TRAIN_PY_GROUPS = (
    "Dataset parameters", "Model parameters", "Device parameters", "Optimizer parameters",
    "Learning rate schedule parameters", "Augmentation and regularization parameters",
    "Batch norm parameters", "Model exponential moving average parameters", "Miscellaneous parameters",
)
#: train.py keys that xbn-train implements (the positional ``data`` included).
SUPPORTED_KEYS: frozenset = _dests(_PARSER, _TRAIN_PY_GROUPS) | {"data"}
#: xbn-train's own keys (surgery and hidden debug options); not train.py keys.
XBN_KEYS: frozenset = _dests(_PARSER, ("XBNBlock surgery (xbn-train only, not train.py keys)",))

#: train.py keys that xbn-train rejects on purpose, by what they are for.
UNSUPPORTED_KEYS: frozenset = frozenset({
    # model building / compilation paths outside this trainer
    "pretrained_path", "pretrained_cfg_overlay", "fuser", "fast_norm", "torchscript", "torchcompile",
    "torchcompile_mode", "model_dtype", "amp_impl", "synchronize_step",
    # optimizer / schedule extensions
    "layer_decay_min_scale", "layer_decay_no_opt_scale", "opt_foreach", "lr_decay_fn", "lr_stable_timescale",
    # data pipeline variants
    "dataset_trust_remote_code", "epoch_repeats", "aug_repeats", "aug_splits", "jsd_loss", "split_bn",
    "use_multi_epochs_loader", "save_images", "tta", "drop_connect", "bce_sum", "bce_pos_weight",
    "train_size_schedule", "use_naflex", "naflex_train_seq_lens", "naflex_max_seq_len", "naflex_patch_sizes",
    "naflex_patch_size_probs", "naflex_loss_scale",
    # tasks and losses beyond single-label classification
    "task", "loss", "loss_class_weight", "loss_pos_weight", "poly_epsilon", "poly_gamma", "target_format",
    # run control and logging services
    "stop_epoch", "save_epochs", "val_interval", "sweep_locks", "sweep_attempt",
    "log_wandb", "wandb_project", "wandb_tags", "wandb_resume_id",
})
#: Every train.py key known to this module.
TRAIN_PY_KEYS: frozenset = SUPPORTED_KEYS | UNSUPPORTED_KEYS

_ACTIONS = {a.dest: a for a in _PARSER._actions}
_FLAG_TO_KEY = {opt: a.dest for a in _PARSER._actions for opt in a.option_strings}


def _check_key(key: str, source: str) -> None:
    if key in SUPPORTED_KEYS or key in XBN_KEYS:
        return
    if key in UNSUPPORTED_KEYS:
        raise UserError(
            f"{source}: train.py key {key!r} is not supported by xbn-train; remove it or train with timm's train.py"
        )
    raise UserError(f"{source}: unknown key {key!r}: not a timm train.py argument nor an xbn-train option")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a YAML value like the command line would (YAML 1.1 reads ``1e-4`` as a string)."""
    action = _ACTIONS[key]
    if value is None or isinstance(action, _KwargsAction):
        if isinstance(action, _KwargsAction) and value is not None and not isinstance(value, dict):
            raise UserError(f"{source}: {key} must be a mapping, got {value!r}")
        return value
    convert = action.type or (lambda v: v)
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    try:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise TypeError(f"expected true or false, got {value!r}")
            return value
        if many:
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {value!r}")
            if isinstance(action.nargs, int) and len(value) != action.nargs:
                raise TypeError(f"expected {action.nargs} values, got {len(value)}")
            return [convert(v) for v in value]
        if isinstance(value, (list, tuple, dict)):
            raise TypeError(f"expected a single value, got {value!r}")
        value = convert(value)
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: bad value for {key}: {err}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{source}: {key} must be one of {sorted(action.choices)}, got {value!r}")
    return value


def load_recipe(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a recipe YAML (train.py keys) and return its checked, type-converted values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # e.g. an unclosed bracket: name the file and the place, in one line
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping of train.py keys, found {type(cfg).__name__}")
    for key in cfg:
        _check_key(key, str(path))
    return {key: _coerce(key, value, str(path)) for key, value in cfg.items()}


def _check_flags(argv: Sequence[str]) -> None:
    """Name rejected train.py flags precisely (argparse alone would only say 'unrecognized')."""
    for token in argv:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        if flag not in _FLAG_TO_KEY:
            key = flag[2:].replace("-", "_")
            _check_key(key, "command line")


def build_args(config: Optional[Union[str, Path]] = None, argv: Sequence[str] = (), **overrides: Any) -> argparse.Namespace:
    """Resolve xbn-train's options: train.py defaults < recipe ``config`` < ``argv`` flags < ``overrides``.

    Usable from a notebook: ``build_args("recipes/xbn_resnet50_standard.yaml", data_dir="/data/imagenet",
    batch_size=64)``. Raises ``ValueError`` naming any unknown or unsupported key.
    """
    argv = list(argv)
    config_parser = _Parser(add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, argv = config_parser.parse_known_args(argv)
    config = known.config or config
    _check_flags(argv)
    parser = create_parser()
    recipe = load_recipe(config) if config else {}
    parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    for key, value in overrides.items():
        _check_key(key, "keyword argument")
        setattr(args, key, _coerce(key, value, "keyword argument"))
    args.config = str(config) if config else ""
    if args.data and not args.data_dir:
        args.data_dir = args.data
    check_values(args)
    return args


# Smallest value of the integer options whose out-of-range values would crash deep inside timm / torch
# (None = unset, allowed).
_MINIMUM = {
    "epochs": 1, "batch_size": 1, "validation_batch_size": 1, "grad_accum_steps": 1, "img_size": 1,
    "checkpoint_hist": 1, "log_interval": 1, "workers": 0, "recovery_interval": 0,
}


# Learning-rate options: finite and >= 0 (NaN passes every ``<`` test, and the warm-up would start from it).
_RATES = ("lr", "lr_base", "warmup_lr", "min_lr")


def check_values(args: argparse.Namespace) -> None:
    """Raise ``UserError`` naming the flag when an option is out of range (``--epochs 0``, ``-j -1``,
    ``--lr nan``, an ``--experiment`` that leaves ``--output``), before any model or data is built."""
    for key, minimum in _MINIMUM.items():
        value = getattr(args, key)
        if value is not None and value < minimum:
            raise UserError(f"{'/'.join(_ACTIONS[key].option_strings)} must be at least {minimum}, got {value}")
    for key in _RATES:
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"{'/'.join(_ACTIONS[key].option_strings)} must be a finite number >= 0, got {value}")
    experiment = Path(args.experiment) if args.experiment else None
    if experiment is not None and (experiment.is_absolute() or ".." in experiment.parts):
        raise UserError(f"--experiment {args.experiment} must be a folder name inside --output, not a path that leaves it")


def config_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """The resolved key -> value mapping (train.py + xbn-train keys), as plain JSON/YAML types."""
    keys = sorted(SUPPORTED_KEYS | XBN_KEYS | {"config"})
    return json.loads(json.dumps({k: getattr(args, k) for k in keys if hasattr(args, k)}))


def resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    """train.py's learning rate: ``lr`` when set, else ``lr_base`` scaled by the global batch
    (``world_size x batch_size x grad_accum_steps``) over ``lr_base_size``, linearly or by sqrt
    (sqrt by default for ada*/lamb optimizers)."""
    if args.lr:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    scale = args.lr_base_scale or ("sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear")
    if scale not in ("linear", "sqrt"):
        raise UserError(f"lr_base_scale must be 'linear' or 'sqrt', got {scale!r}")
    ratio = global_batch / args.lr_base_size
    return args.lr_base * (ratio ** 0.5 if scale == "sqrt" else ratio)
