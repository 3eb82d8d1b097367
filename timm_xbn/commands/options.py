"""What the CLI commands share: the user-error mapping, small parsers, the xbn-eval options and set-up."""
import functools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, TypeVar

import typer

from ..utils.errors import command_errors

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
        raise ValueError(f"{option} must be a JSON object, e.g. '{{\"num_classes\": 10}}': {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
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
        raise ValueError(f"{option} {path} is neither a .safetensors file nor a torch checkpoint "
                         f"(it starts with {head[:12]!r})")


@contextmanager
def reword(replacements: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ``ValueError`` from the Python API with its argument names replaced by the CLI's flags,
    e.g. ``{"blocks=": "--blocks "}``."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        for old, new in replacements.items():
            message = message.replace(old, new)
        raise ValueError(message) from None


# ---- xbn-eval options and set-up ----------------------------------------------------------------

EVAL_MODEL = typer.Option(..., "--model", "-m", help="timm or xbn_* model name (repeat to compare models side by side).")
EVAL_CHECKPOINT = typer.Option(None, "--checkpoint", help="Weights for the i-th --model (.safetensors or weights-only torch file); repeat in --model order.")
EVAL_PRETRAINED = typer.Option(False, "--pretrained", help="Load timm's pretrained weights (needs the Hub).")
EVAL_MODEL_KWARGS = typer.Option(None, "--model-kwargs", help="JSON dict of create_model kwargs for all models, e.g. '{\"num_classes\": 10}'.")
EVAL_DATA_DIR = typer.Option(..., "--data-dir", help="ImageFolder tree (class/img.jpg, or its val/ child), a .tar, or the root for --dataset.")
EVAL_DATASET = typer.Option("", "--dataset", help="timm dataset name: empty for folders/tar, or hfds/NAME, torch/NAME.")
EVAL_SPLIT = typer.Option("validation", "--split", help="Dataset split (folders: a val/validation child is used when present).")
EVAL_IMG_SIZE = typer.Option(None, "--img-size", help="Override the input size of the models' data config.")
EVAL_CROP_PCT = typer.Option(None, "--crop-pct", help="Override the center-crop fraction.")
EVAL_INTERP = typer.Option(None, "--interpolation", help="Override the resize interpolation (bilinear, bicubic).")
EVAL_MEAN = typer.Option(None, "--mean", help="Override the normalization mean (3 values).")
EVAL_STD = typer.Option(None, "--std", help="Override the normalization std (3 values).")
EVAL_BATCH = typer.Option(64, "--batch-size", "-b", help="Images per batch.")
EVAL_WORKERS = typer.Option(2, "--workers", "-j", help="Data loading processes.")
EVAL_DEVICE = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda, cuda:K.")
EVAL_OUTPUT = typer.Option(None, "--output", "-o", help="Results folder (default xbn_results/COMMAND-MODELS); rerunning with the same folder resumes; one run at a time.")
EVAL_CLASS_MAP = typer.Option(None, "--class-map", help="Text file, one class folder name per line in model index order (like timm's --class-map); integer folder names are used as indices without it.")
EVAL_ORDER = typer.Option("shuffle", "--order", help="Order in which the images are read (batch-dependent methods see different batches): shuffle (seeded by --seed; every command batches the same images together) or folder (class by class: one-class batches).")
BLOCKS_FLAGS = {"use blocks=None or scope='all'": "use --blocks all", "blocks=None": "--blocks all", "blocks=": "--blocks "}


def check_eval_options(img_size: Optional[int], crop_pct: Optional[float], batch_size: int, workers: int) -> None:
    """Reject option values that would otherwise fail (or evaluate nothing) only after the models and data are built."""
    for bad, message in (
        (img_size is not None and img_size < 1, f"--img-size must be a positive number of pixels, got {img_size}"),
        (crop_pct is not None and crop_pct <= 0, f"--crop-pct must be a fraction > 0 (e.g. 0.875), got {crop_pct}"),
        (batch_size < 1, f"--batch-size must be >= 1, got {batch_size}"),
        (workers < 0, f"--workers (-j) must be >= 0 (0 loads in the main process), got {workers}"),
    ):
        if bad:
            raise ValueError(message)


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


def checked_specs(models, checkpoints, pretrained, model_kwargs, img_size, crop_pct, batch_size, workers, device):
    """Check the eval options and checkpoint files, join torchrun's process group; returns (device, model specs)."""
    from ..evaluation import build_model_specs, init_distributed

    check_eval_options(img_size, crop_pct, batch_size, workers)
    for path in checkpoints or []:
        check_checkpoint_file(path)
    dev = init_distributed(device)
    return dev, build_model_specs(models, checkpoints or [], pretrained, parse_json_kwargs(model_kwargs))


@contextmanager
def eval_setup(command, models, checkpoints, pretrained, model_kwargs, data_dir, dataset, split, img_size,
                crop_pct, interpolation, mean, std, batch_size, workers, device, output,
                class_map: Optional[Path] = None) -> Iterator[tuple]:
    """Check the options and the output folder, join torchrun's process group, build the models and
    the shared eval data; yields (models, specs, data, out) with the output folder locked."""
    from ..evaluation import (create_eval_data, create_models, data_config_conflicts, is_main_process,
                             resolve_eval_data_config, validate_data_dir)

    dev, specs = checked_specs(models, checkpoints, pretrained, model_kwargs, img_size, crop_pct, batch_size, workers,
                                device)
    validate_data_dir(data_dir, dataset)
    with claimed_output(command, specs, output) as out:
        built = create_models(specs, dev)
        overrides = dict(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
        conflicts = data_config_conflicts(built, overrides)
        if conflicts and is_main_process():
            typer.secho(f"note: all models use {specs[0].label}'s data config ({'; '.join(conflicts)})", fg="yellow", err=True)
        data = create_eval_data(data_dir, resolve_eval_data_config(built, overrides), dataset=dataset, split=split,
                                batch_size=batch_size, workers=workers, class_map=class_map,
                                num_classes=model_num_classes(built))
        warn(data.info.get("class_warning"))
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
