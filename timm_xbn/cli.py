"""Command-line interface: a thin typer layer over the Python API.

Console scripts: ``xbn-eval``, ``xbn-train``, ``xbn-convert``, ``xbn-hub``.
"""
import typer

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

# ---- xbn-hub ----------------------------------------------------------------------------------
