"""xbn-train: train from a recipe with timm train.py's argument names."""
from pathlib import Path
from typing import Optional

import typer

from .options import handle_errors


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

    from ..training import SUPPORTED_KEYS, UNSUPPORTED_KEYS, XBN_KEYS, build_args, train
    from ..utils.interrupts import EXIT_CODE, Interrupted

    console = Console()
    if list_keys:
        for title, keys in (("supported train.py keys", SUPPORTED_KEYS), ("rejected train.py keys", UNSUPPORTED_KEYS),
                            ("xbn-train options", XBN_KEYS - {"stop_after_steps", "debug_rank_weights"})):
            console.print(f"[bold]{title}[/bold] ({len(keys)}): {' '.join(sorted(keys))}")
        return
    argv = (["--data-dir", str(data_dir)] if data_dir else []) + list(ctx.args)
    try:
        results = train(build_args(config=config, argv=argv))
    except Interrupted as stopped:  # the first Ctrl-C: saved, then stopped
        typer.secho(str(stopped), fg="yellow", err=True)
        raise typer.Exit(EXIT_CODE) from None
    if "output_dir" in results:  # rank 0
        top1 = "n/a" if results["val_top1"] is None else f"{results['val_top1']:.2f}"
        console.print(f"{results['model']}: val top-1 {top1} % after {results['epochs']} epochs; "
                      f"results in {results.get('output_dir', '(rank 0)')}")
