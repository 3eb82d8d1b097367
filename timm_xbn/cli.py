"""Command-line interface: a thin typer layer over the Python API.

Console scripts: ``xbn-eval``, ``xbn-train``, ``xbn-convert``, ``xbn-hub``.
"""
from pathlib import Path
from typing import Optional

import typer

from ._cli_utils import handle_errors, parse_json_kwargs
from .layers import is_batch_free

eval_app = typer.Typer(
    help="Evaluate BN robustness: perturbed statistics, AdaBN recalibration, ImageNet-C, estimation shift.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
train_app = typer.Typer(help="Train timm / XBNBlock models from a recipe (run under torchrun for several GPUs).", rich_markup_mode="rich")
convert_app = typer.Typer(help="Convert a timm BN model into an XBNBlock model and save it.", rich_markup_mode="rich")
hub_app = typer.Typer(help="Publish XBNBlock models to the Hugging Face Hub and pull them back.", no_args_is_help=True, rich_markup_mode="rich")

# ---- xbn-eval: robustness / adabn / esm -------------------------------------------------------

# ---- xbn-eval: corruption ---------------------------------------------------------------------

# ---- xbn-eval: study --------------------------------------------------------------------------

# ---- xbn-train --------------------------------------------------------------------------------

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
) -> None:
    """Convert a timm BN model into an XBNBlock model and save it in timm's Hub format.

    [bold]Examples[/bold]

      xbn-convert resnet50 --position P2 --every 2 --out xbn_resnet50_d2
      xbn-convert resnet50 --checkpoint my_resnet50.safetensors --out my_xbn_resnet50
      xbn-convert regnety_016 --groups 8 --model-kwargs '{"num_classes": 10}' --out xbn_regnety
      xbn-convert resnet50 --authors XBNBlock-GN-R50.pth --out xbn_resnet50_bfnstem.authors
    """
    from .models.checkpoints import convert_pretrained, export_model, import_authors_checkpoint

    kwargs = parse_json_kwargs(model_kwargs)
    if authors is not None:
        converted = import_authors_checkpoint(authors, arch=model, bfn=bfn, **kwargs)
    else:
        converted = convert_pretrained(
            model, pretrained=pretrained, checkpoint=checkpoint, model_kwargs=kwargs, position=position,
            every=every, bfn=bfn, groups=groups, channels_per_group=channels_per_group, stem=stem,
        )
    replaced = sum(is_batch_free(m) for m in converted.modules())
    folder = export_model(converted, out)
    architecture = converted.pretrained_cfg["architecture"]
    typer.echo(f"{architecture}: {replaced} batch-free norms; wrote {folder / 'model.safetensors'} and {folder / 'config.json'}")

# ---- xbn-hub ----------------------------------------------------------------------------------
