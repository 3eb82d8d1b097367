"""xbn-hub: push, pull and inspect XBNBlock models on the Hugging Face Hub."""
from pathlib import Path
from typing import List, Optional

import typer

from .options import (
    CropPct, ImgSize, Interpolation, Mean, Std, check_checkpoint_file, check_eval_options, handle_errors,
    parse_json_kwargs,
)
from .vocabulary import renamed_flags


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


@handle_errors
def hub_push(
    model: str = typer.Option(..., "--model", help="Registered xbn_* name, plain timm name (BN baseline), or xbn_converted with --model-kwargs."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Weights of MODEL: .safetensors or weights-only torch checkpoint."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo ORG/NAME, e.g. timm-xbn/xbn_resnet50.in1k."),
    results: Optional[List[Path]] = typer.Option(None, "--results", help="Results JSON from xbn-train / xbn-eval (repeatable)."),
    results_name: Optional[List[str]] = typer.Option(None, "--results-name", help="Name the results files use for this model, if not MODEL / the repo name (repeatable)."),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", help="JSON object of create_model kwargs, e.g. '{\"num_classes\": 10}'."),
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    tag: Optional[str] = typer.Option(None, "--tag", help="Pretrained tag of the weights, only when they are that set (e.g. in1k: trained on ImageNet-1k); default the repo name's part after its last '.', else none."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created if missing); default main."),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Write the exact repo folder here and upload nothing."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Commit summary (default names the model and timm-xbn version)."),
    license: Optional[str] = typer.Option(None, "--license", help="Card license (default: the model's pretrained_cfg license, else apache-2.0)."),
) -> None:
    """Push weights (model.safetensors), timm config.json and a model card built from results files.

    Uses the token from HF_TOKEN or `hf auth login`. Everything is checked before any upload. The input
    settings (size, crop, mean, std, interpolation) written into config.json and the card are the options
    given, else those recorded beside the checkpoint (config.json of an xbn-convert / example-data export,
    args.yaml of xbn-train), else the model's defaults; no pretrained tag is written unless --tag (or a
    NAME.TAG repo name) says so.

    [bold]Examples[/bold]

      xbn-hub push --model xbn_resnet50 --checkpoint output/model_best.pth.tar --repo-id timm-xbn/xbn_resnet50.in1k --results train.json --results robustness.json --results imagenet_c.json

      xbn-hub push --model xbn_converted --model-kwargs '{"base_model": "resnet34", "position": 1, "every": 2}' --checkpoint r34_p1_d2.safetensors --repo-id me/xbn_resnet34_p1_d2 --dry-run hub_folder

      xbn-hub push --model resnet50 --checkpoint bn_baseline.safetensors --repo-id me/resnet50-bn --private --revision v1

      xbn-hub push --model resnet18 --model-kwargs '{"num_classes": 10}' --checkpoint r18/model.safetensors --img-size 32 --crop-pct 1 --mean 0.29 0.29 0.29 --std 0.35 0.35 0.35 --repo-id me/r18-fmnist --dry-run hub_folder
    """
    from contextlib import nullcontext

    from ..evaluation.results import claim_output_dir
    from ..hub import push

    check_checkpoint_file(checkpoint)
    check_eval_options(img_size, crop_pct, batch_size=1, workers=0)
    inputs = dict(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
    with claim_output_dir(dry_run, "--dry-run") if dry_run is not None else nullcontext():
        result = push(
            model, repo_id, checkpoint=checkpoint, results=results or [], model_kwargs=parse_json_kwargs(model_kwargs),
            results_name=results_name, private=private, revision=revision, dry_run=dry_run,
            commit_message=commit_message, license=license, input_settings=inputs, tag=tag,
        )
    if result.folder is not None:
        typer.echo(f"dry run: wrote {', '.join(result.files)} to {result.folder}; nothing uploaded")
    else:
        typer.echo(f"pushed {', '.join(result.files)} to {result.repo_id}: {result.commit_url}")


@renamed_flags("xbn-hub pull")
@handle_errors
def hub_pull(
    repo_id: str = typer.Argument(..., help="Hub repo ORG/NAME."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to download the repo into."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default main)."),
) -> None:
    """Download a Hub repo to a local folder and print its model card's results.

    [bold]Examples[/bold]

      xbn-hub pull timm-xbn/xbn_resnet50.in1k --output models/xbn_resnet50

      xbn-hub pull me/xbn_resnet34_p1_d2 --revision v1 -o r34
    """
    from ..evaluation.results import claim_output_dir
    from ..hub import check_repo_id, info, pull

    check_repo_id(repo_id)
    with claim_output_dir(output, "--output"):
        folder = pull(repo_id, output, revision=revision)
    typer.echo(f"downloaded {repo_id} to {folder}")
    _hub_print_info(info(folder))


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
    from ..hub import info

    _hub_print_info(info(source, revision=revision))
