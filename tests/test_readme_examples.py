"""Every README code block runs as printed, in order, in a fresh folder: the first writes the example data
(``xbn-eval example-data``), the others use it (issue 36, "Examples that run"). The install and test commands at
the top are left out. Commands run in-process through the console scripts' typer apps; work is bounded by the
example data (a few hundred 32 px images, two tiny ResNets, a few training steps)."""
import re
import shlex
from pathlib import Path
from typing import List, Tuple

from typer.testing import CliRunner

from timm_xbn import cli

README = Path(__file__).resolve().parent.parent / "README.md"
APPS = {"xbn-eval": cli.eval_app, "xbn-train": cli.train_app, "xbn-convert": cli.convert_app, "xbn-hub": cli.hub_app}


def code_blocks(text: str) -> List[Tuple[str, str]]:
    """``(language, code)`` of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w+)\n(.*?)^```$", text, re.S | re.M)]


def example_blocks() -> List[Tuple[str, str]]:
    return [(lang, code) for lang, code in code_blocks(README.read_text()) if "pip install" not in code]


def shell_commands(code: str) -> List[List[str]]:
    """The command lines of a bash block (continuations joined, comments dropped) as argv lists."""
    return [argv for line in code.replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


def test_the_examples_start_with_the_example_data_and_use_only_the_console_scripts():
    blocks = example_blocks()
    assert shell_commands(blocks[0][1]) == [["xbn-eval", "example-data", "-o", "examples"]]
    assert {lang for lang, _ in blocks} == {"bash", "python"}
    programs = {argv[0] for lang, code in blocks if lang == "bash" for argv in shell_commands(code)}
    assert programs <= set(APPS), programs - set(APPS)
    assert len(blocks) >= 7  # data, model, surgery, robustness, adaptation, training, hub


def test_every_readme_example_runs_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = []
    for lang, code in example_blocks():
        if lang == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
            ran.append("python block")
            continue
        for argv in shell_commands(code):
            result = runner.invoke(APPS[argv[0]], argv[1:], catch_exceptions=False)
            assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
            ran.append(argv[1])
    # what the examples promise is on disk: the exports' 32 px data config, results, the dry-run repo
    import json

    for folder in ("examples/bn", "examples/xbn", "bn_to_xbn", "hub_folder"):
        cfg = json.loads((tmp_path / folder / "config.json").read_text())["pretrained_cfg"]
        assert cfg["input_size"] == [3, 32, 32], folder
        assert cfg.get("tag") in (None, "fmnist"), folder
    assert json.loads((tmp_path / "hub_folder" / "config.json").read_text())["pretrained_cfg"]["tag"] == "fmnist"
    robustness = json.loads((tmp_path / "out/robustness/robustness.json").read_text())
    assert len(robustness["models"]) == 2
    assert (tmp_path / "out/adapt/adapt.json").is_file() and (tmp_path / "out/train/xbn/model_best.safetensors").is_file()
    assert len(ran) >= 10
