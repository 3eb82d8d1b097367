"""Command-line interface: a thin typer layer over the Python API.

Console scripts: ``xbn-eval``, ``xbn-train``, ``xbn-convert``, ``xbn-hub``.
Each app's commands live in ``timm_xbn.commands`` (one module per app); this module holds the root apps
the console scripts name and registers the commands on them.
"""
import typer

from .commands import convert as convert_commands
from .commands import eval as eval_commands
from .commands import hub as hub_commands
from .commands import study as study_commands
from .commands import train as train_commands
from .commands.vocabulary import XbnCommand

eval_app = typer.Typer(
    help="Evaluate BN robustness: perturbed statistics, AdaBN recalibration, ImageNet-C, estimation shift.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
train_app = typer.Typer(help="Train timm / XBNBlock models from a recipe (run under torchrun for several GPUs).", rich_markup_mode="rich")
convert_app = typer.Typer(help="Convert a timm BN model into an XBNBlock model and save it.", rich_markup_mode="rich")
hub_app = typer.Typer(help="Publish XBNBlock models to the Hugging Face Hub and pull them back.", no_args_is_help=True, rich_markup_mode="rich")

eval_app.command("robustness", cls=XbnCommand)(eval_commands.eval_robustness)
eval_app.command("adabn", cls=XbnCommand)(eval_commands.eval_adabn)
eval_app.command("esm", cls=XbnCommand)(eval_commands.eval_esm)
eval_app.command("corruption", cls=XbnCommand)(eval_commands.eval_corruption)
eval_app.command("adapt", cls=XbnCommand)(eval_commands.eval_adapt)
eval_app.command("shift", cls=XbnCommand)(eval_commands.eval_shift)
eval_app.command("study", cls=XbnCommand)(study_commands.eval_study)
eval_app.command("example-data", cls=XbnCommand)(eval_commands.eval_example_data)
eval_app.command("study-compare", cls=XbnCommand)(study_commands.eval_study_compare)

train_app.command(
    "train",
    cls=XbnCommand,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Exit codes: 0 trained, 2 bad options or data (one red line, no traceback).",
)(train_commands.xbn_train)

convert_app.command(cls=XbnCommand)(convert_commands.convert)

hub_app.command("push", cls=XbnCommand)(hub_commands.hub_push)
hub_app.command("pull", cls=XbnCommand)(hub_commands.hub_pull)
hub_app.command("info", cls=XbnCommand)(hub_commands.hub_info)
