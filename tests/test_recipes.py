"""Recipes: only timm train.py keys, the paper's hyper-parameters, documented launch commands.

The train.py key list of ``timm_xbn.training`` is checked against timm's sources (the sdist of the
installed timm, from the ``timm_sdist`` fixture): against ``train.py``'s argparse parser when the
sdist ships it, else against the train.py flags timm's own test suite passes (the 1.0.x sdists
ship ``tests/`` but not ``train.py``).
"""
import ast
import math
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_xbn  # noqa: F401  (registers the xbn_* models)
from timm_xbn.training import SUPPORTED_KEYS, TRAIN_PY_KEYS, UNSUPPORTED_KEYS, XBN_KEYS, build_args, load_recipe
from timm_xbn.training.args import resolve_lr

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
ARCHS = ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")
EXPECTED = {f"{p}{a}_{v}.yaml" for p in ("", "xbn_") for a in ARCHS for v in ("standard", "advanced")} | {"finetune_converted.yaml"}


def _sdist_tests(sdist: Path):
    """timm's test folder in the unpacked sdist, or None."""
    return next((p.parent for p in sorted(sdist.glob("**/tests/test_train_resume.py"))), None)


def _train_py(sdist: Path):
    """A timm ``train.py`` placed anywhere under the sdist folder (not shipped in 1.0.x sdists), or None."""
    found = [p for p in sorted(sdist.rglob("train.py")) if "timm" not in p.relative_to(sdist).parts[:-1]]
    return found[0] if found else None


def _train_py_keys_from_parser(train_py: Path) -> set:
    """Destinations of every ``add_argument`` call in train.py (first long flag, or the positional name)."""
    keys = set()
    for node in ast.walk(ast.parse(train_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            dest = next((kw.value.value for kw in node.keywords if kw.arg == "dest"), None)
            flag = next((n for n in names if n.startswith("--")), names[0] if names else None)
            keys.add(dest or flag.lstrip("-").replace("-", "_"))
    return keys - {"config"}


def _train_py_keys_from_tests(tests: Path) -> set:
    """train.py keys timm's tests use: flags in ``['train.py', ...]`` argv lists, ``_train_args`` keywords
    and defaults, and the config dicts given to ``_parse_with_config`` (except the unknown-key test)."""
    keys = set()
    for path in tests.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(func):
                if isinstance(node, (ast.List, ast.Tuple)) and node.elts and getattr(node.elts[0], "value", None) == "train.py":
                    keys |= {e.value[2:].replace("-", "_") for e in node.elts
                             if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.startswith("--")}
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_train_args":
                    keys |= {kw.arg for kw in node.keywords if kw.arg}
                if func.name == "_train_args" and isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
                    keys |= {kw.arg for kw in node.keywords if kw.arg}
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_parse_with_config"
                        and "unknown" not in func.name and len(node.args) == 3 and isinstance(node.args[2], ast.Call)):
                    keys |= {kw.arg for kw in node.args[2].keywords if kw.arg}
    return keys - {"config"}


def test_recipe_set_is_complete():
    assert {p.name for p in RECIPES} == EXPECTED


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_uses_only_train_py_keys_and_documents_its_launch(path):
    recipe = load_recipe(path)  # also raises on any unknown / unsupported key
    assert set(recipe) <= TRAIN_PY_KEYS and not set(recipe) & XBN_KEYS
    assert set(recipe) <= SUPPORTED_KEYS  # xbn-train implements everything the recipes use
    assert recipe["device_modules"] == ["timm_xbn"]
    assert timm.is_model(recipe["model"]), recipe["model"]
    assert recipe["experiment"] == path.stem
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    rel = f"recipes/{path.name}"
    assert re.search(rf"distributed_train\.sh \d+ .*-c {re.escape(rel)}", header)
    assert re.search(rf"torchrun --nproc_per_node=\d+ \$\(which xbn-train\) -c {re.escape(rel)}", header)
    assert "PER GPU" in header and "lr_base" in header


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem != "finetune_converted"], ids=lambda p: p.stem)
def test_recipe_follows_the_paper(path):
    """Sec. 5.2.1: SGD, momentum 0.9, wd 1e-4, batch 256, lr 0.1, 100 epochs, /10 at 30/60/90;
    Table 3: cosine over 100 epochs, label smoothing 0.1, mixup 0.2. The lr per epoch is computed by
    timm's scheduler from the recipe and compared with the closed form."""
    args = build_args(path, data_dir="/data")
    assert (args.opt, args.momentum, args.weight_decay, args.epochs, args.warmup_epochs) == ("sgd", 0.9, 1e-4, 100, 0)
    assert args.batch_size * 8 == 256 and resolve_lr(args, world_size=8) == pytest.approx(0.1)
    assert resolve_lr(build_args(path, data_dir="/data", batch_size=64), world_size=4) == pytest.approx(0.1)
    assert resolve_lr(build_args(path, data_dir="/data", batch_size=64), world_size=8) == pytest.approx(0.2)
    args.lr = resolve_lr(args, world_size=8)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=10)
    assert num_epochs == 100
    if path.stem.endswith("_standard"):
        assert (args.smoothing, args.mixup) == (0.0, 0.0)
        expected = lambda e: 0.1 * 0.1 ** sum(e >= m for m in (30, 60, 90))  # noqa: E731
    else:
        assert (args.sched, args.smoothing, args.mixup, args.cutmix) == ("cosine", 0.1, 0.2, 0.0)
        expected = lambda e: 0.05 * (1 + math.cos(math.pi * e / 100))  # noqa: E731
    for epoch in (0, 1, 29, 30, 45, 59, 60, 89, 90, 99):
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected(epoch), rel=1e-6), epoch


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["standard", "advanced"])
def test_bn_baseline_differs_only_in_the_model(arch, variant):
    xbn = load_recipe(REPO / "recipes" / f"xbn_{arch}_{variant}.yaml")
    bn = load_recipe(REPO / "recipes" / f"{arch}_{variant}.yaml")
    assert (xbn.pop("model"), bn.pop("model")) == (f"xbn_{arch}", arch)
    assert bn.pop("model_kwargs") == {"zero_init_last": False}  # xbn_* models do not zero-init either
    assert (xbn.pop("experiment"), bn.pop("experiment")) == (f"xbn_{arch}_{variant}", f"{arch}_{variant}")
    assert xbn == bn


def _decay_counts(optimizer: torch.optim.Optimizer) -> tuple:
    """(tensors with weight decay, tensors without) over the optimizer's parameter groups."""
    decayed = sum(len(g["params"]) for g in optimizer.param_groups if g["weight_decay"] > 0)
    return decayed, sum(len(g["params"]) for g in optimizer.param_groups) - decayed


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem != "finetune_converted"], ids=lambda p: p.stem)
def test_paper_recipes_use_the_authors_weight_decay(path):
    """The authors' extension/optimizer.py (add_grouped_weight_decay) decays every trainable parameter
    except those whose name contains 'WNScale' (none in these networks): norm weights and biases included."""
    assert load_recipe(path)["opt_kwargs"] == {"filter_bias_and_bn": False}


def test_xbn_resnet50_weight_decay_groups_are_the_authors():
    from timm.optim import create_optimizer_v2, optimizer_kwargs

    args = build_args(REPO / "recipes" / "xbn_resnet50_standard.yaml", data_dir="/data")
    args.lr = 0.1
    model = timm.create_model(args.model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    authors = (sum("WNScale" not in n for n, _ in named), sum("WNScale" in n for n, _ in named))
    # as timm's train.py and xbn-train build it
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    assert _decay_counts(optimizer) == authors == (161, 0)
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups if g["params"])
    # timm's default grouping exempts every tensor of at most one dimension (norm weights and biases, fc.bias)
    timm_default = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    exempt = sum(p.ndim <= 1 for _, p in named)
    assert _decay_counts(timm_default) == (len(named) - exempt, exempt) == (54, 107)


def test_finetune_recipe_builds_the_converted_model():
    recipe = load_recipe(REPO / "recipes" / "finetune_converted.yaml")
    assert recipe["model"] == "xbn_converted" and recipe["model_kwargs"]["base_model"] == "resnet50"
    args = build_args(REPO / "recipes" / "finetune_converted.yaml", argv=["--convert-from", "resnet26", "--every", "2"])
    from timm_xbn.training.model import surgery_settings

    name, kwargs = surgery_settings(args)  # the flags override the recipe's surgery settings
    assert name == "xbn_converted" and kwargs["base_model"] == "resnet26" and kwargs["every"] == 2 and kwargs["position"] == 2


def test_key_list_against_timm_sources(timm_sdist):
    tests, train_py = _sdist_tests(timm_sdist), _train_py(timm_sdist)
    assert tests is not None or train_py is not None, f"neither tests/ nor train.py in {timm_sdist}"
    if train_py is not None:
        real = _train_py_keys_from_parser(train_py)
        assert SUPPORTED_KEYS <= real, sorted(SUPPORTED_KEYS - real)
        assert UNSUPPORTED_KEYS <= real, sorted(UNSUPPORTED_KEYS - real)
        assert real <= TRAIN_PY_KEYS, f"train.py keys missing from timm_xbn.training.args: {sorted(real - TRAIN_PY_KEYS)}"
    if tests is None:
        return
    used = _train_py_keys_from_tests(tests)
    assert len(used) > 20  # the extraction found timm's train.py tests
    assert used <= TRAIN_PY_KEYS, f"train.py keys used by timm's tests but unknown here: {sorted(used - TRAIN_PY_KEYS)}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_gives_the_cpu_override_for_train_py(path):
    """``amp: true`` makes timm's train.py autocast to float16 on a CPU (slow); train.py has no --no-amp,
    so the recipe names --amp-dtype bfloat16 next to the key, with flags both trainers parse."""
    text = path.read_text()
    note = text[text.index("\namp: true"):text.index("\nchannels_last:")]
    assert "--device cpu --amp-dtype bfloat16" in note and "float16" in note and "no --no-amp" in note
    assert "no_amp" not in TRAIN_PY_KEYS and "amp_dtype" in SUPPORTED_KEYS
    args = build_args(path, argv=["--device", "cpu", "--amp-dtype", "bfloat16"])
    assert args.amp and (args.device, args.amp_dtype) == ("cpu", "bfloat16")


def test_finetune_recipe_says_how_to_change_the_class_count():
    header = (REPO / "recipes" / "finetune_converted.yaml").read_text()
    assert "xbn-convert resnet50 --pretrained --position P2 --every 1 --num-classes K" in header
    assert re.search(r"--initial-checkpoint converted/resnet50_p2_K/model.safetensors --num-classes K", header)
