"""xbn-convert: convert a timm BN model into an XBNBlock model and save it."""
from pathlib import Path
from typing import Optional

import typer

from ..calibration import DEFAULT_REESTIMATE
from ..layers import is_batch_free
from ..utils.errors import UserError
from .options import (
    Bfn, CropPct, ImgSize, Interpolation, Mean, Position, Reestimate, Std, api_method, check_checkpoint_file, cli_method,
    check_eval_options, handle_errors, parse_json_kwargs, reword,
)
from .vocabulary import renamed_flags

_REESTIMATE_FLAGS = {"reestimate='mix'": "--reestimate mix", "reestimate must": "--reestimate must",
                     "source_images": "--source-images"}


@renamed_flags("xbn-convert")
@handle_errors
def convert(
    model: str = typer.Argument(..., help="timm model to convert (e.g. resnet50), or the authors' arch with --authors."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder: model.safetensors + timm config.json."),
    position: Position = typer.Option(Position.P2, help="Which BN of each block becomes batch-free."),
    every: int = typer.Option(1, help="Convert every n-th residual block (1, or 2/4/8 for the D-variants)."),
    bfn: Bfn = typer.Option(Bfn.gn, help="Batch-free norm: gn (GroupNorm), in (InstanceNorm), ln (one group)."),
    groups: int = typer.Option(64, help="GroupNorm groups (clamped to the channel count)."),
    channels_per_group: Optional[int] = typer.Option(None, help="Fix the GroupNorm group size instead of the count."),
    stem: bool = typer.Option(False, "--stem/--no-stem", help="Also replace the stem BN."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from timm's pretrained weights (downloads)."),
    checkpoint: Optional[Path] = typer.Option(None, help="BN checkpoint of MODEL to convert (.safetensors or weights-only .pth)."),
    authors: Optional[Path] = typer.Option(None, help="Import a checkpoint in the authors' released layout (GN stem + P2) for arch MODEL."),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", help="JSON object of create_model kwargs, e.g. '{\"num_classes\": 10}'."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="After loading the weights, replace the classifier with a fresh one for K classes (fine-tuning on another dataset)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", metavar="DIR", help="Unlabeled images (any folder tree; a train/ child is used when present): fit each BFN to the BN it replaces, then re-estimate the other BNs."),
    calib_images: int = typer.Option(256, "--calib-images", help="How many images of --calibrate to use (a seeded random draw)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the export already in --output."),
    reestimate: Reestimate = typer.Option(Reestimate(cli_method(DEFAULT_REESTIMATE)), "--reestimate", help="After --calibrate, the other BNs' statistics: none (keep the trained ones), norm (the calibration images'), mix (both, weighted by image counts; needs --source-images)."),
    source_images: Optional[float] = typer.Option(None, "--source-images", help="For --reestimate mix: how many training images the BN statistics come from (e.g. 1281167 for ImageNet-1k)."),
    input_config: Optional[str] = typer.Option(None, "--input-config", metavar="MODEL", help="Take the input size, interpolation, mean, std and crop of this timm model's pretrained config (e.g. inception_v3, resnet50.a1_in1k)."),
    img_size: ImgSize = None,
    crop_pct: CropPct = None,
    interpolation: Interpolation = None,
    mean: Mean = None,
    std: Std = None,
    force: bool = typer.Option(False, "--force", help="Convert even where a batch-free norm would normalize one value per sample at the input size (1x1 maps with InstanceNorm, or one channel per group): such a norm outputs a constant."),
) -> None:
    """Convert a timm BN model into an XBNBlock model and save it in timm's Hub format.

    The batch-free norms start from the replaced BNs' weight and bias (affine, also for InstanceNorm).
    With [bold]--calibrate DIR[/bold] the converted network keeps the BN network's accuracy better: each
    batch-free norm's per-channel scale and shift are fitted (least squares) to the output of the BN it
    replaces, layer by layer, on a few hundred unlabeled images. The input options (else --input-config, else
    those recorded beside --checkpoint: its config.json or xbn-train's args.yaml) set the images' preprocessing
    for --calibrate and are written into the exported config.json. The export names a pretrained tag (e.g.
    a1_in1k) only for timm's --pretrained or the authors' weights, never for random or --checkpoint weights.

    [bold]Examples[/bold]

      xbn-convert resnet50 --position P2 --every 2 -o xbn_resnet50_d2
      xbn-convert resnet50 --pretrained --position P3 --bfn in --calibrate /data/imagenet/train --calib-images 512 -o xbn_resnet50_p3_in
      xbn-convert resnet50 --checkpoint my_resnet50.safetensors -o my_xbn_resnet50
      xbn-convert regnety_016 --groups 8 --model-kwargs '{"num_classes": 10}' -o xbn_regnety
      xbn-convert resnet50 --authors XBNBlock-GN-R50.pth -o xbn_resnet50.authors_in1k
      xbn-convert resnet50 --pretrained --num-classes 10 -o resnet50_p2_10cls  [dim](ImageNet weights, fresh 10-class head)[/dim]
      xbn-convert resnet26 --checkpoint fmnist.safetensors --model-kwargs '{"num_classes": 10}' --calibrate fmnist/ --img-size 32 --mean 0.29 0.29 0.29 --std 0.35 0.35 0.35 --crop-pct 1 -o r26_p2
    """
    from timm.data import resolve_model_data_config

    from ..calibration import calibrate as calibrate_bfns, calibration_batches
    from ..evaluation import input_data_config, validate_data_dir
    from ..evaluation.results import claim_output_dir
    from ..hub.publish import describe_weights, recorded_input_settings
    from ..models.checkpoints import export_model, import_authors_checkpoint
    from ..models.factory import create_model
    from ..surgery import convert as convert_model

    kwargs = parse_json_kwargs(model_kwargs)
    if calibrate is not None and authors is not None:
        raise UserError("--calibrate needs the BN model; the authors' checkpoint is already converted")
    for option, path in (("--checkpoint", checkpoint), ("--authors", authors)):
        if path is not None:
            check_checkpoint_file(path, option)
    check_eval_options(img_size, crop_pct, batch_size=1, workers=0)
    if calibrate is not None:
        validate_data_dir(calibrate)  # before a download of pretrained weights
    existing = [name for name in ("model.safetensors", "config.json") if (output / name).exists()]
    if existing and not overwrite:
        raise UserError(f"--output {output} already holds an export ({', '.join(existing)}); pass --overwrite to replace it, "
                        "or give another folder")
    given = dict(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
    recorded = checkpoint or (model if model.startswith("local-dir:") else None)
    inputs = {**(recorded_input_settings(recorded) if input_config is None else {}),
              **{k: v for k, v in given.items() if v is not None}}
    with claim_output_dir(output, "--output"), reword(_REESTIMATE_FLAGS):
        if authors is not None:
            converted = base = import_authors_checkpoint(authors, arch=model, bfn=bfn.value, **kwargs)
        else:
            base = create_model(model, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
            input_size = (input_data_config(base, input_config, **inputs) if input_config or inputs
                          else resolve_model_data_config(base))["input_size"]
            converted = convert_model(
                base, position=position.value, every=every, bfn=bfn.value, groups=groups, channels_per_group=channels_per_group,
                stem=stem, input_size=input_size, force=force,
            ).model
        data_config = input_data_config(base, input_config, **inputs) if input_config or inputs else None
        if calibrate is not None:
            images = calibration_batches(calibrate, base, calib_images, data_config=data_config)
            fit = calibrate_bfns(converted, base, images, reestimate=api_method(reestimate.value), source_images=source_images,
                                 inplace=True, progress=True)
            typer.echo(fit.summary())
        if num_classes is not None:
            converted.reset_classifier(num_classes)  # timm's fresh head; the checkpoint's classifier is dropped
        replaced = sum(is_batch_free(m) for m in converted.modules())
        if checkpoint is not None or not (pretrained or authors):  # random or the user's weights: no released tag
            describe_weights(converted)
        folder = export_model(converted, output, data_config=data_config)
    architecture = converted.pretrained_cfg["architecture"]
    typer.echo(f"{architecture}: {replaced} batch-free norms; wrote {folder / 'model.safetensors'} and {folder / 'config.json'}")
