"""What the CLI commands share: the user-error mapping, small parsers, the xbn-eval options and set-up."""
import functools
import json
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, TypeVar

import typer

from ..utils.errors import UserError, command_errors

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: Optional[F] = None, *, resumes: bool = False) -> Any:
    """Run a command under ``timm_xbn.utils.errors.command_errors``: a user error is one red line and exit 2,
    Ctrl-C one line and exit 130, a bug its traceback. ``@handle_errors``, or ``@handle_errors(resumes=True)``
    for a command whose rerun resumes (its Ctrl-C line says so)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with command_errors(resumes):
                return command(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def parse_json_kwargs(text: Optional[str], option: str = "--model-kwargs") -> Dict[str, Any]:
    """Parse a JSON object given on the command line, e.g. ``'{"num_classes": 10}'``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{option} must be a JSON object, e.g. '{{\"num_classes\": 10}}': {err}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def check_checkpoint_file(path: Path, option: str = "--checkpoint") -> None:
    """Fail early, naming the file, unless ``path`` looks like a safetensors file or a torch checkpoint
    (zip archive or pickle), so that e.g. a text file is not reported by torch's loader as "101"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(16)
    safetensors = len(head) > 8 and head[8:9] == b"{"  # little-endian header size, then the JSON header
    torch_file = head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")  # torch.save zip / legacy pickle
    if not (safetensors or torch_file):
        raise UserError(f"{option} {path} is neither a .safetensors file nor a torch checkpoint "
                        f"(it starts with {head[:12]!r})")


@contextmanager
def reword(replacements: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ``ValueError`` from the Python API with its argument names replaced by the CLI's flags,
    e.g. ``{"blocks=": "--blocks "}``."""
    try:
        yield
    except UserError as err:
        message = str(err)
        for old, new in replacements.items():
            message = message.replace(old, new)
        raise UserError(message) from None


# ---- choices: typer validates them and lists them in --help ------------------------------------


class Order(str, Enum):
    """Order in which the images are read (``evaluation.data.ORDERS``)."""
    shuffle = "shuffle"
    folder = "folder"


class RecalibMode(str, Enum):
    """How ``xbn-eval adabn`` re-estimates the BN statistics (``stats.RECALIBRATION_MODES``, ``full`` named ``norm``)."""
    norm = "norm"
    prior = "prior"
    mix = "mix"
    batch = "batch"


class Protocol(str, Enum):
    """Test-time adaptation protocol (``adapt.PROTOCOLS``)."""
    episodic = "episodic"
    continual = "continual"


class Stream(str, Enum):
    """Test stream of ``xbn-eval adapt`` (``adapt.streams.STREAMS``)."""
    iid = "iid"
    label_shift = "label-shift"
    mixed = "mixed"


class Corrupt(str, Enum):
    """Implementation of the on-the-fly corruptions."""
    torch = "torch"
    reference = "reference"


class Position(str, Enum):
    """Which BN of a residual block becomes batch-free."""
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class Bfn(str, Enum):
    """Batch-free norm (``layers``): GroupNorm, InstanceNorm, one-group LayerNorm."""
    gn = "gn"
    in_ = "in"
    ln = "ln"


class Reestimate(str, Enum):
    """After BFN calibration, the other BNs' statistics (``calibration.REESTIMATE_CHOICES``, ``full`` named ``norm``)."""
    none = "none"
    norm = "norm"
    mix = "mix"


class StudyPart(str, Enum):
    """Parts of the study (``study.config.JOB_KINDS`` with dashes)."""
    mlp = "mlp"
    network = "network"
    small_batch = "small-batch"
    tta = "tta"


def api_method(name: str) -> str:
    """The statistics-method name the Python API takes: the CLI's ``norm`` is the API's ``full`` (AdaBN)."""
    return "full" if name == "norm" else name


def cli_method(name: str) -> str:
    """The CLI's name of an API statistics method: ``full`` (AdaBN) is ``norm``."""
    return "norm" if name == "full" else name


# ---- options shared by the commands, declared once ---------------------------------------------

Models = Annotated[List[str], typer.Option("--model", "-m", help="timm or xbn_* model name (repeat to compare models side by side).")]
Checkpoints = Annotated[Optional[List[Path]], typer.Option("--checkpoint", help="Weights for the i-th --model (.safetensors or weights-only torch file); repeat in --model order.")]
Pretrained = Annotated[bool, typer.Option("--pretrained", help="Load timm's pretrained weights (needs the Hub).")]
ModelKwargs = Annotated[Optional[str], typer.Option("--model-kwargs", help="JSON object of create_model kwargs, e.g. '{\"num_classes\": 10}'.")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="ImageFolder tree (class/img.jpg, or its val/ child), a .tar, or the root for --dataset.")]
Dataset = Annotated[str, typer.Option("--dataset", help="timm dataset name: empty for folders/tar, or hfds/NAME, torch/NAME.")]
Split = Annotated[str, typer.Option("--split", help="Dataset split (folders: a val/validation child is used when present).")]
ImgSize = Annotated[Optional[int], typer.Option("--img-size", help="Input size in pixels (overrides the models' data config).")]
CropPct = Annotated[Optional[float], typer.Option("--crop-pct", help="Center-crop fraction (overrides the data config).")]
Interpolation = Annotated[Optional[str], typer.Option("--interpolation", help="Resize interpolation (bilinear, bicubic; overrides the data config).")]
Mean = Annotated[Optional[Tuple[float, float, float]], typer.Option("--mean", help="Normalization mean, 3 values (overrides the data config).")]
Std = Annotated[Optional[Tuple[float, float, float]], typer.Option("--std", help="Normalization std, 3 values (overrides the data config).")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")]
Workers = Annotated[int, typer.Option("--workers", "-j", help="Data-loading processes (0: in the main process).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda, cuda:K.")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Results folder (default xbn_results/COMMAND-MODELS); rerunning with the same folder resumes; one run at a time.")]
ClassMap = Annotated[Optional[Path], typer.Option("--class-map", help="Text file, one class folder name per line in model index order (like timm's --class-map); integer folder names are used as indices without it.")]
OrderOption = Annotated[Order, typer.Option("--order", help="Order in which the images are read (batch-dependent methods see different batches): shuffle (seeded by --seed; every command batches the same images together) or folder (class by class: one-class batches).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the shuffled order (and of on-the-fly corruptions).")]
BLOCKS_FLAGS = {"use blocks=None or scope='all'": "use --blocks all", "blocks=None": "--blocks all", "blocks=": "--blocks "}


@dataclass(frozen=True)
class EvalOptions:
    """The model, data and runtime options every xbn-eval command shares (one value per shared option)."""

    model: List[str]
    checkpoint: Optional[List[Path]]
    pretrained: bool
    model_kwargs: Optional[str]
    img_size: Optional[int]
    crop_pct: Optional[float]
    interpolation: Optional[str]
    mean: Optional[Tuple[float, float, float]]
    std: Optional[Tuple[float, float, float]]
    batch_size: int
    workers: int
    device: str
    output: Optional[Path]
    class_map: Optional[Path] = None
    dataset: str = ""
    split: str = "validation"

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> "EvalOptions":
        """The shared options out of a command's arguments (e.g. its ``locals()``)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    @property
    def overrides(self) -> Dict[str, Any]:
        """The data-config overrides (``None`` keeps the model's own)."""
        return dict(img_size=self.img_size, crop_pct=self.crop_pct, interpolation=self.interpolation,
                    mean=self.mean, std=self.std)


def check_eval_options(img_size: Optional[int], crop_pct: Optional[float], batch_size: int, workers: int) -> None:
    """Reject option values that would otherwise fail (or evaluate nothing) only after the models and data are built."""
    for bad, message in (
        (img_size is not None and img_size < 1, f"--img-size must be a positive number of pixels, got {img_size}"),
        (crop_pct is not None and crop_pct <= 0, f"--crop-pct must be a fraction > 0 (e.g. 0.875), got {crop_pct}"),
        (batch_size < 1, f"--batch-size must be >= 1, got {batch_size}"),
        (workers < 0, f"--workers (-j) must be >= 0 (0 loads in the main process), got {workers}"),
    ):
        if bad:
            raise UserError(message)


@contextmanager
def claimed_output(command: str, specs, output: Optional[Path]) -> Iterator[Path]:
    """The output folder, checked writable and locked against a second run (on rank 0) for the block."""
    from ..evaluation import is_main_process
    from ..evaluation.results import claim_output_dir

    out = _eval_output(command, specs, output)
    if not is_main_process():
        yield out
        return
    with claim_output_dir(out, "--output" if output else "the default output folder") as folder:
        yield folder


def warn(message: Optional[str]) -> None:
    """Print a yellow warning line on rank 0 (nothing for ``None``)."""
    from ..evaluation import is_main_process

    if message and is_main_process():
        typer.secho(f"warning: {message}", fg="yellow", err=True)


def checked_specs(opts: EvalOptions):
    """Check the eval options and checkpoint files, join torchrun's process group; returns (device, model specs)."""
    from ..evaluation import build_model_specs, init_distributed

    check_eval_options(opts.img_size, opts.crop_pct, opts.batch_size, opts.workers)
    for path in opts.checkpoint or []:
        check_checkpoint_file(path)
    dev = init_distributed(opts.device)
    return dev, build_model_specs(opts.model, opts.checkpoint or [], opts.pretrained, parse_json_kwargs(opts.model_kwargs))


@contextmanager
def eval_setup(command: str, opts: EvalOptions, data_dir: Path) -> Iterator[tuple]:
    """Check the options and the output folder, join torchrun's process group, build the models and
    the shared eval data; yields (models, specs, data, out) with the output folder locked."""
    from ..evaluation import (create_eval_data, create_models, data_config_conflicts, is_main_process,
                             resolve_eval_data_config, validate_data_dir)
    from ..layers import check_one_value_norms

    dev, specs = checked_specs(opts)
    validate_data_dir(data_dir, opts.dataset)
    with claimed_output(command, specs, opts.output) as out:
        built = create_models(specs, dev)
        conflicts = data_config_conflicts(built, opts.overrides)
        if conflicts and is_main_process():
            typer.secho(f"note: all models use {specs[0].label}'s data config ({'; '.join(conflicts)})", fg="yellow", err=True)
        data = create_eval_data(data_dir, resolve_eval_data_config(built, opts.overrides), dataset=opts.dataset,
                                split=opts.split, batch_size=opts.batch_size, workers=opts.workers,
                                class_map=opts.class_map, num_classes=model_num_classes(built))
        warn(data.info.get("class_warning"))
        for label, model in built.items():  # a BFN on one value per sample: torch's "when training" error otherwise
            check_one_value_norms(model, data.data_config["input_size"], "evaluate at a larger input size (--img-size)",
                                  label=f"{label}: ")
        yield built, specs, data, out


def model_num_classes(built) -> Optional[int]:
    """The number of outputs of the first model (all models are scored against the same labels)."""
    return getattr(next(iter(built.values())), "num_classes", None)


def _eval_output(command: str, specs, output: Optional[Path]) -> Path:
    """``output``, or the deterministic default ``xbn_results/COMMAND-MODELS`` (rerunning resumes there)."""
    import re

    return output or Path("xbn_results") / re.sub(r"[^A-Za-z0-9._+-]", "_", f"{command}-{'+'.join(s.label for s in specs)}")


def eval_report(tables, results, out: Path, files: List[str]) -> None:
    """Print tables, skipped images and written files on rank 0; leave the process group."""
    from rich.console import Console

    from ..evaluation import is_main_process, legacy_layout
    from ..evaluation.distributed import shutdown_distributed

    if is_main_process():
        console = Console()
        for table in tables:
            console.print(table)
        skipped = legacy_layout(results).get("skipped_images", {})
        if skipped.get("count"):
            shown = ", ".join(f["file"] for f in skipped["files"][:5])
            console.print(f"[yellow]skipped {skipped['count']} unreadable images[/yellow] (e.g. {shown}); listed in the JSON")
        console.print(f"wrote {', '.join(str(out / f) for f in files)}")
    shutdown_distributed()
