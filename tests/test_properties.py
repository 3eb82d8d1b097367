"""Issue 33: the kinds of bug no test caught, written as properties over every instance rather than for one line.

* every documented default (docs/*.md, the `[default: X]` of each `--help`, numbers an option's help calls its default,
  the CLI against the Python API) is the code's;
* every limit option is counted in its documented unit (batches are batches, images are images);
* every derived metric equals its formula from the raw counts;
* the Dirichlet stream's within-slot class order is shuffled, for any seed;
* gradient accumulation divides the loss (k micro-batches update as one batch k times larger);
* every atomic writer leaves the old file intact (and no temporary file) when the write fails;
* the study's calibration images never share the test images' corruption draw.
"""
import inspect
import re
import resource
import signal
from pathlib import Path
from statistics import fmean

import numpy as np
import pytest
import torch
from typer.main import get_command

REPO = Path(__file__).resolve().parent.parent


# ---- documented defaults ---------------------------------------------------------------------------------------


def _commands():
    """``{"xbn-eval adabn": click command, ...}`` for every command line."""
    from timm_xbn.cli import convert_app, eval_app, hub_app

    out = {}
    for prefix, app in (("xbn-eval", eval_app), ("xbn-hub", hub_app), ("xbn-convert", convert_app)):
        group = get_command(app)
        subs = getattr(group, "commands", None) or {"": group}
        out.update({f"{prefix} {name}".strip(): sub for name, sub in subs.items()})
    return out


def _cli_default(command, name):
    import click

    param = next(p for p in command.params if p.name == name)
    value = param.get_default(click.Context(command))
    return getattr(value, "value", value)  # Enum choices -> their value


def _same(cli_value, api_value) -> bool:
    """Equal, reading old method names as the new ones (``full`` is the old name of ``norm``) and "6" as 6."""
    from timm_xbn.commands.vocabulary import VALUE_RENAMES

    renames = {old: new for values in VALUE_RENAMES.values() for old, new in values.items()}
    cli_value, api_value = (renames.get(v, v) if isinstance(v, str) else v for v in (cli_value, api_value))
    if isinstance(cli_value, str) and isinstance(api_value, (int, float)) and not isinstance(api_value, bool):
        return cli_value == str(api_value)
    return cli_value == api_value


def _api_functions():
    """command -> (Python API function, {CLI option name: API parameter name} where they differ)."""
    from timm_xbn import grid
    from timm_xbn.calibration import calibrate
    from timm_xbn.calibration.data import calibration_batches
    from timm_xbn.evaluation import evaluate_esm

    seed = {"seed": "order_seed"}
    return {
        "xbn-eval robustness": [(grid.evaluate_robustness, {})],
        "xbn-eval adabn": [(grid.evaluate_adabn, {"recalib_batches": "calib_batches", **seed})],
        "xbn-eval esm": [(evaluate_esm, {})],
        "xbn-eval corruption": [(grid.evaluate_corruptions, seed)],
        "xbn-eval adapt": [(grid.evaluate_adaptation, seed)],
        "xbn-eval shift": [(grid.evaluate_shift, seed)],
        "xbn-convert": [(calibrate, {}), (calibration_batches, {"calib_images": "num_images"})],
    }


def test_every_cli_default_equals_the_python_apis():
    commands, checked = _commands(), 0
    for name, functions in _api_functions().items():
        command = commands[name]
        options = {p.name for p in command.params}
        for function, aliases in functions:
            for param in inspect.signature(function).parameters.values():
                option = {v: k for k, v in aliases.items()}.get(param.name, param.name)
                if option not in options or param.default is inspect.Parameter.empty or param.name == "progress":
                    continue
                cli = _cli_default(command, option)
                assert _same(cli, param.default), f"{name} --{option} defaults to {cli!r}, {function.__name__}({param.name}=) to {param.default!r}"
                checked += 1
    assert checked >= 15  # the walk found the options


def _help_defaults(name):
    """``{option name: "X"}`` for every option whose ``--help`` line shows ``[default: X]`` (read from the help text)."""
    from typer.testing import CliRunner

    from timm_xbn.cli import convert_app, eval_app, hub_app

    prefix, _, sub = name.partition(" ")
    app = {"xbn-eval": eval_app, "xbn-hub": hub_app, "xbn-convert": convert_app}[prefix]
    result = CliRunner().invoke(app, [*sub.split(), "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
    assert result.exit_code == 0, result.output
    flags = {opt: p.name for p in _commands()[name].params for opt in getattr(p, "opts", [])}
    shown = {}
    for line in result.output.splitlines():
        match = re.match(r"\W*(--[\w-]+).*\[default: ([^\]]+)\]", line)
        if match and match.group(1) in flags:
            shown[flags[match.group(1)]] = match.group(2).strip()
    return shown


@pytest.mark.parametrize("name", sorted(_API_COMMANDS := ("xbn-eval robustness", "xbn-eval adabn", "xbn-eval esm",
                                                           "xbn-eval corruption", "xbn-eval adapt", "xbn-eval shift",
                                                           "xbn-convert")))
def test_every_default_the_help_shows_is_the_one_the_code_and_the_api_use(name):
    command, shown = _commands()[name], _help_defaults(name)
    assert len(shown) >= 4, shown  # the help was read
    for option, text in shown.items():
        value = _cli_default(command, option)
        if not isinstance(value, (list, tuple, bool)):  # a flag shows --x / --no-x
            assert _same(text, value) or text == str(value), f"{name} --help shows {option} [default: {text}], the code uses {value!r}"
    for function, aliases in _api_functions()[name]:
        for param in inspect.signature(function).parameters.values():
            option = {v: k for k, v in aliases.items()}.get(param.name, param.name)
            if option in shown and param.default not in (inspect.Parameter.empty, None) and not isinstance(param.default, bool):
                assert _same(shown[option], param.default), \
                    f"{name} --help shows {option} [default: {shown[option]}], {function.__name__} uses {param.default!r}"


def _resolved_default(command_name, option):
    """The value an option left unset (None) takes, for the options whose help states it."""
    from timm_xbn.study import StudyConfig

    preset = StudyConfig.preset("default")
    return {("xbn-eval study", "seeds"): len(preset.train_seeds),
            ("xbn-eval study", "epochs"): preset.resnet.epochs}[(command_name, option)]


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_number_an_options_help_calls_its_default_is_the_code_default(name):
    command = _commands()[name]
    for param in command.params:
        for stated in re.findall(r"default:? (\d+(?:\.\d+)?)\b", getattr(param, "help", None) or ""):
            value = _cli_default(command, param.name)
            if value is None:
                value = _resolved_default(name, param.name)
            assert float(stated) == float(value), f"{name} --{param.name}: help says default {stated}, the code uses {value}"


def test_the_study_presets_match_their_help():
    from timm_xbn.study import StudyConfig

    help_text = next(p.help for p in _commands()["xbn-eval study"].params if p.name == "seeds")
    full = int(re.search(r"--full (\d+)", help_text).group(1))
    assert len(StudyConfig.preset("full").train_seeds) == full


def _doc(name):
    return (REPO / "docs" / name).read_text()


def test_every_default_the_docs_state_is_the_codes():
    from timm_xbn.adapt.methods import METHODS
    from timm_xbn.calibration.fit import DEFAULT_REESTIMATE

    def default(cls, key):
        return inspect.signature(cls.__init__).parameters[key].default

    claims = [  # (what, stated in the docs, the code's value)
        ("surgery.md reestimate", re.search(r"The default is `(\w+)`", _doc("surgery.md")).group(1), DEFAULT_REESTIMATE),
        ("calibration.md reestimate", re.search(r"Default chosen by the rule.*\*\*(\w+)\*\*", _doc("calibration.md")).group(1),
         DEFAULT_REESTIMATE),
        ("tta.md rbn momentum", float(re.search(r"momentum M, default ([\d.]+)", _doc("tta.md")).group(1)),
         default(METHODS["rbn"], "momentum")),
        ("tta.md tent lr", float(re.search(r"\| `tent` \|[^|]*SGD \(lr ([\d.]+)", _doc("tta.md")).group(1)),
         default(METHODS["tent"], "lr")),
        ("tta.md rotta alpha", float(re.search(r"\| `rotta` \|[^|]*α ([\d.]+)", _doc("tta.md")).group(1)),
         default(METHODS["rotta"], "alpha")),
    ]
    for what, stated, code in claims:
        assert stated == code, f"{what}: the docs say {stated!r}, the code uses {code!r}"
    from timm_xbn.commands.convert import convert  # the CLI's reestimate default names the same method

    assert _same(inspect.signature(convert).parameters["reestimate"].default.default.value, DEFAULT_REESTIMATE)


# ---- limits are counted in their unit ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    from conftest import write_image_folder
    from timm_xbn.evaluation import create_eval_data, resolve_eval_data_config

    import timm

    root = write_image_folder(tmp_path_factory.mktemp("limits") / "d", classes=3, per_class=10, size=32)
    model = timm.create_model("resnet10t", num_classes=3)
    config = {**resolve_eval_data_config(model), "input_size": (3, 32, 32), "crop_pct": 1.0}
    return model.eval(), create_eval_data(root, config, batch_size=4, workers=0)


class _Seen:
    """Images through ``module``'s forward while its BNs are in training mode (recalibration) or not."""

    def __init__(self, model):
        self.train, self.eval = [], []
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.register_forward_pre_hook(lambda m, args: (self.train if m.training else self.eval).append(args[0].shape[0]))


@pytest.mark.parametrize("batches", [1, 2, 3])
def test_batch_limits_count_batches(batches, folder_data):
    from timm_xbn.evaluation import evaluate_esm
    from timm_xbn.grid import evaluate_adabn
    from timm_xbn.grid.runner import unit_inputs

    model, data = folder_data
    sizes = [len(x) for x in unit_inputs(data, max_batches=batches)]
    assert sizes == [data.batch_size] * batches
    seen = _Seen(model)  # the hook stays on a model the other checks deep-copy: fine, each copy has its own
    evaluate_esm({"m": model}, data, max_batches=batches)
    assert sum(seen.eval) == batches * data.batch_size and not seen.train
    results = evaluate_adabn({"m": model}, data, mode="norm", calib_batches=batches)
    assert results["run"]["calibration"]["max_batches"] == batches


@pytest.mark.parametrize("batches", [1, 3])
def test_recalib_batches_adapts_on_exactly_that_many_batches(batches, folder_data, monkeypatch):
    import timm_xbn.adapt.statistics as statistics
    from timm_xbn.grid import evaluate_adabn

    model, data = folder_data
    seen, real = [], statistics.recalibrate

    def counting(model, batches_iter=None, *args, **kwargs):
        if batches_iter is not None:
            batches_iter = list(batches_iter)
            seen.append([len(b) for b in batches_iter])
        return real(model, batches_iter, *args, **kwargs)

    monkeypatch.setattr(statistics, "recalibrate", counting)
    evaluate_adabn({"m": model}, data, mode="norm", calib_batches=batches)
    assert seen == [[data.batch_size] * batches]


@pytest.mark.parametrize("images", [1, 5, 12])
def test_calibration_image_limits_count_images(images, folder_data):
    from timm_xbn.calibration.data import calibration_batches

    model, data = folder_data
    batches = calibration_batches(Path(data.source), model, num_images=images, batch_size=4, workers=0,
                                  data_config=data.data_config)
    assert sum(len(b) for b in batches) == images


# ---- derived metrics equal their formulas --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_ce_relative_ce_mce_and_mean_error_equal_their_formulas(seed):
    from timm_xbn.corruptions.metrics import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, summarize

    rng = np.random.default_rng(seed)
    clean = float(rng.uniform(5, 40))
    errors = {c: {str(s): float(rng.uniform(clean, 100)) for s in range(1, 6)} for c in ALEXNET_ERRORS}
    got = summarize(errors, clean)
    ce = {c: 100 * sum(e.values()) / sum(ALEXNET_ERRORS[c]) for c, e in errors.items()}
    rel = {c: 100 * sum(v - clean for v in e.values()) / sum(a - ALEXNET_CLEAN_ERROR for a in ALEXNET_ERRORS[c])
           for c, e in errors.items()}
    assert got["ce"] == pytest.approx(ce) and got["relative_ce"] == pytest.approx(rel)
    assert got["mce"] == pytest.approx(np.mean(list(ce.values())))
    assert got["relative_mce"] == pytest.approx(np.mean(list(rel.values())))
    assert got["mean_error"] == pytest.approx(np.mean([v for e in errors.values() for v in e.values()]))


@pytest.mark.parametrize("seed", range(5))
def test_top1_top5_and_their_errors_equal_the_counts(seed):
    from timm_xbn.evaluation.metrics import accuracy_from_counts, scores_of_counts, topk_correct
    from timm_xbn.evaluation.store import Cell, cell_record
    from timm_xbn.grid.adapt import _with_errors

    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(50, 10, generator=g), torch.randint(0, 10, (50,), generator=g)
    counts = topk_correct(logits, target)
    rank = (logits > logits.gather(1, target[:, None])).sum(1)  # how many classes score above the target
    correct1, correct5 = int((rank < 1).sum()), int((rank < 5).sum())
    acc = accuracy_from_counts(counts)
    assert (acc["top1"], acc["top5"], acc["count"]) == (100 * correct1 / 50, 100 * correct5 / 50, 50)
    cell = cell_record(Cell("m", "norm", "fog/1"), scores_of_counts(counts), 1, 0)  # a stored cell of these counts
    run = _with_errors(cell)
    assert run["top1_error"] == pytest.approx(100 * (1 - correct1 / 50))
    assert run["top5_error"] == pytest.approx(100 * (1 - correct5 / 50))


def test_the_adapt_tables_means_are_the_means_of_the_errors():
    from timm_xbn.adapt.report import adaptation_rows

    rng = np.random.default_rng(0)
    errors = {c: {str(s): float(rng.uniform(0, 100)) for s in (3, 5)} for c in ("fog", "snow", "contrast")}
    entry = {"model": "m", "method": "norm", "clean_error": 10.0, "errors": errors, "mce": None, "relative_mce": None,
             "passes_per_image": {"forward": 1.0, "backward": 0.0}}
    results = {"kind": "adapt", "dataset": "d", "pairs": [f"{c}/{s}" for c in errors for s in (3, 5)],
               "entries": {"m | norm": entry}}
    row = adaptation_rows(results, 5)[0]
    assert row["mean@5"] == pytest.approx(fmean(e["5"] for e in errors.values()))
    assert row["mean"] == pytest.approx(fmean(v for e in errors.values() for v in e.values()))
    assert [row[c] for c in ("fog", "snow", "contrast")] == [errors[c]["5"] for c in ("fog", "snow", "contrast")]


# ---- the Dirichlet stream shuffles the class order within each slot --------------------------------------------


def _slot_class_orders(labels, order, slots):
    """The classes of each slot in the order they arrive (slot boundaries: one slot per len/slots images)."""
    classes = [labels[i] for i in order]
    return [tuple(dict.fromkeys(classes[k * len(classes) // slots:(k + 1) * len(classes) // slots])) for k in range(slots)]


def test_every_slot_holds_its_classes_in_a_seeded_random_order():
    from timm_xbn.adapt.streams import dirichlet_order

    labels = [c for c in range(4) for _ in range(40)]
    firsts, orders = [], set()
    for seed in range(60):
        order = dirichlet_order(labels, alpha=1e6, seed=seed, slots=2)  # every class evenly in every slot
        assert sorted(order) == list(range(len(labels)))  # every image exactly once
        for classes in _slot_class_orders(labels, order, 2):
            assert sorted(classes) == [0, 1, 2, 3]
            firsts.append(classes[0])
            orders.add(classes)
    assert set(firsts) == {0, 1, 2, 3} and max(np.bincount(firsts)) < 0.5 * len(firsts)  # not always class 0 first
    assert len(orders) >= 12  # of the 24 orders of 4 classes


# ---- gradient accumulation divides the loss --------------------------------------------------------------------


def test_k_accumulated_micro_batches_update_as_one_batch_k_times_larger(image_folder, tmp_path):
    from safetensors.torch import load_file

    from timm_xbn.training import build_args, train

    image_folder("d/validation", classes=3, per_class=2, size=32, seed=1)
    root = image_folder("d/train", classes=3, per_class=8, size=32).parent
    common = ["--data-dir", str(root), "--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=32", "patch_size=8",
              "depth=1", "embed_dim=16", "num_heads=2", "--num-classes", "3", "--img-size", "32", "--workers", "0",
              "--device", "cpu", "--no-aug", "--opt", "momentum", "--momentum", "0", "--weight-decay", "0", "--lr", "0.5",
              "--warmup-epochs", "0", "--stop-after-steps", "1", "--val-split", "", "--epochs", "1"]
    weights = {}
    for name, extra in (("one", ["-b", "8"]), ("two", ["-b", "4", "--grad-accum-steps", "2"]),
                        ("four", ["-b", "2", "--grad-accum-steps", "4"]), ("start", ["-b", "8", "--lr", "1e-30"])):
        train(build_args(argv=common + extra + ["-o", str(tmp_path / name), "--debug-rank-weights", str(tmp_path / f"w{name}")]))
        weights[name] = load_file(str(tmp_path / f"w{name}" / "rank0.safetensors"))
    step = {k: weights["one"][k] - weights["start"][k] for k in weights["one"]}
    assert max(float(s.abs().max()) for s in step.values()) > 1e-3  # the update is measurable
    for name in ("two", "four"):
        for key, value in weights[name].items():
            torch.testing.assert_close(value - weights["start"][key], step[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


# ---- atomic writers keep the old file when the write fails -------------------------------------------------------


def _writers(tmp_path):
    """(name, path, write(version)) for every writer of result, checkpoint and figure files."""
    import matplotlib.pyplot as plt
    import torch.nn as nn
    from timm.task import ClassificationTask

    from timm_xbn.evaluation.plots import save_figure
    from timm_xbn.evaluation.results import write_csv, write_json_atomic
    from timm_xbn.training.checkpoint import TrainCheckpointSaver, save_safetensors_atomic
    from timm_xbn.utils.files import write_text_atomic

    def figure(version):
        fig, ax = plt.subplots()
        ax.plot(np.arange(200), np.sin(np.arange(200) * version))
        save_figure(fig, tmp_path / "f.png")
        plt.close(fig)

    def checkpoint(version):
        linear = nn.Linear(40, 30)
        nn.init.constant_(linear.weight, float(version))
        task = ClassificationTask(linear, verbose=False)
        saver = TrainCheckpointSaver(task, torch.optim.SGD(task.parameters(), lr=0.1), {"model": "linear"},
                                     lambda: {"progress": {"num_updates": version}}, checkpoint_dir=str(tmp_path / "ckpt"))
        saver._save(str(tmp_path / "ckpt" / "last.pth.tar"), version)

    def study_state(version):
        from timm_xbn.study.resnet import save_training_state

        model = nn.Linear(40, 30)
        nn.init.constant_(model.weight, float(version))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        save_training_state(tmp_path / "state.safetensors", model, optimizer, torch.Generator().manual_seed(version),
                            version, 10, 2, [{"loss": float(version)}])

    return [
        ("write_text_atomic", tmp_path / "t.txt", lambda v: write_text_atomic(tmp_path / "t.txt", f"{v}" * 800)),
        ("write_json_atomic", tmp_path / "r.json", lambda v: write_json_atomic(tmp_path / "r.json", {"v": [v] * 400})),
        ("write_csv", tmp_path / "r.csv", lambda v: write_csv(tmp_path / "r.csv", [{"a": v, "b": "x" * 40}] * 40)),
        ("save_figure", tmp_path / "f.png", figure),
        ("save_safetensors_atomic", tmp_path / "w.safetensors",
         lambda v: save_safetensors_atomic({"w": torch.full((40, 40), float(v))}, tmp_path / "w.safetensors")),
        ("TrainCheckpointSaver", tmp_path / "ckpt" / "last.pth.tar", checkpoint),
        ("save_training_state", tmp_path / "state.safetensors", study_state),
    ]


def _with_file_size_limit(limit, fn):
    """Run ``fn`` with writes past ``limit`` bytes of any file failing (EFBIG), as a full disk fails them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        fn()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_every_atomic_writer_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    from timm_xbn.utils.errors import user_message

    for name, path, write in _writers(tmp_path):
        write(1)
        before = sorted(p.name for p in path.parent.iterdir())
        old = path.read_bytes()
        assert len(old) > 600, name
        with pytest.raises(Exception) as failed:
            _with_file_size_limit(512, lambda: write(2))
        assert user_message(failed.value) is not None, f"{name}: {failed.value!r} is not a one-line error"
        assert path.read_bytes() == old, f"{name} damaged the old file"
        assert sorted(p.name for p in path.parent.iterdir()) == before, f"{name} left a temporary file"
        write(3)  # and the next write succeeds
        assert path.read_bytes() != old, name


# ---- the study's calibration images never share the test images' corruption draw ---------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_study_calibration_and_test_images_get_different_corruption_draws(seed):
    from timm_xbn.study import StudyConfig
    from timm_xbn.study.data import StudyData
    from timm_xbn.study.jobs import _Context

    cfg = StudyConfig.preset("quick", dataset="digits", image_size=32, seed=seed, threads=1, device=torch.device("cpu"))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    same = image.repeat(40, 1, 1, 1)  # every image the same: a shared draw would corrupt them identically
    labels = torch.arange(40) % 2
    cfg.resnet = type(cfg.resnet)(**{**cfg.resnet.__dict__, "train_samples": 40, "eval_samples": 20, "calib_samples": 20})
    context = _Context(cfg, StudyData("same", "test", same, labels, same[:20], labels[:20], ["a", "b"]))
    for corruption in sorted({*cfg.resnet.corruptions, cfg.resnet.esm_corruption}):
        test, calib = context.corrupted("test", corruption), context.corrupted("calib", corruption)
        assert test.shape == calib.shape
        assert not torch.equal(test[0], calib[0]), f"{corruption}: the calibration images share the test images' draw"
