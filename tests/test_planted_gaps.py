"""Issue 33: the gaps that planted bugs slipped through, each checked against an independent value (torch's own
defaults, a hand count, the formula from the raw counts, the other input dtype)."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn


def test_batch_free_norms_are_affine_as_the_torch_layers_they_stand_for():
    from timm_xbn.layers import create_bfn

    # the authors build GN and LN with nn.GroupNorm (affine by default) and IN with nn.InstanceNorm2d (not)
    reference = {"gn": nn.GroupNorm(4, 8).affine, "ln": nn.GroupNorm(1, 8).affine, "in": nn.InstanceNorm2d(8).affine}
    for kind, affine in reference.items():
        layer = create_bfn(kind, 8, groups=4)
        assert (layer.weight is not None) == affine, kind


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_non_finite_tensor_anywhere_in_a_checkpoint_is_named(position):
    from timm_xbn.models.checkpoints import check_finite
    from timm_xbn.utils.errors import UserError

    state = {name: torch.zeros(3) for name in ("a.weight", "b.weight", "c.weight")}
    bad = list(state)[position]
    state[bad][1] = float("nan")
    with pytest.raises(UserError, match=rf"NaN or infinite values in {bad}"):
        check_finite(state, "ckpt.safetensors")


def _ece_by_hand(logits, targets, bins=15):
    """ECE (%) with bins (b/15, (b+1)/15]: numpy's searchsorted on the edges, not the code's ceil."""
    p = torch.softmax(logits.double(), 1).numpy()
    confidence, correct = p.max(1), (p.argmax(1) == targets.numpy())
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    gap = sum(abs(correct[which == b].sum() - confidence[which == b].sum()) for b in range(bins))
    return 100 * gap / len(targets)


def test_ece_bins_are_closed_on_the_right_even_at_a_bin_edge():
    from timm_xbn.evaluation.metrics import calibration_from_scores, score_batch

    uniform = torch.zeros(6, 15)  # confidence exactly 1/15, the upper edge of bin 0
    sharper = torch.zeros(6, 15)
    sharper[:, 0] = 0.45  # confidence ~0.1: bin 1
    logits, targets = torch.cat([uniform, sharper]), torch.tensor([0] * 6 + [3] * 6)
    assert float(torch.softmax(uniform.double(), 1).max()) * 15 == 1.0
    got = calibration_from_scores(score_batch(logits, targets).tolist())["ece"]
    assert got == pytest.approx(_ece_by_hand(logits, targets), abs=1e-3)  # the code sums in fixed point


def test_robustbench_entry_is_its_formula_of_the_cells():
    from timm_xbn.corruptions.names import CORRUPTIONS, SEVERITIES
    from timm_xbn.grid.robustbench import robustbench_entry

    rng = np.random.default_rng(0)
    errors = {c: {str(s): float(rng.uniform(0, 100)) for s in SEVERITIES} for c in CORRUPTIONS}
    cells = [{"pair": f"{c}/{s}", "count": int(rng.integers(10, 50)), "forward": None} for c in CORRUPTIONS for s in SEVERITIES]
    for cell in cells:
        cell["forward"] = cell["count"] * 3 + int(rng.integers(0, 2))  # 3 passes per image, a few more here and there
    document = {"results": {"errors": errors, "clean_error": 23.25}, "run": {"source": "imagenet-c"},
                "cells": [{"pair": "clean", "count": 1000, "forward": 1000}, *cells]}
    entry = robustbench_entry("m", document)
    assert entry["number_forward_passes"] == round(sum(c["forward"] for c in cells) / sum(c["count"] for c in cells)) == 3
    assert entry["clean_acc"] == "76.75"
    assert float(entry["corruptions_acc"]) == pytest.approx(np.mean([100 - e for v in errors.values() for e in v.values()]),
                                                            abs=0.005)


def test_impulse_noise_on_float_input_equals_it_on_uint8_input():
    from timm_xbn.corruptions import corrupt_batch

    batch = torch.randint(0, 256, (2, 3, 40, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for severity in (1, 5):
        as_uint8 = corrupt_batch(batch, "impulse_noise", severity, torch.Generator().manual_seed(3)).float() / 255
        as_float = corrupt_batch(batch.float() / 255, "impulse_noise", severity, torch.Generator().manual_seed(3))
        torch.testing.assert_close(as_float, as_uint8, atol=1e-6, rtol=0)
        assert int((as_uint8 == 1).sum()) > int((batch == 255).sum())  # salt is white: added ones


def _results_with(tmp_path, value):
    data = {"kind": "corruption", "model": "m", "dataset": "d", "clean_error": value,
            "errors": {"fog": {"1": value}}, "ce": {}, "mce": None, "relative_mce": None, "complete": False, "missing": []}
    path = tmp_path / "corruption.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("value", [0.0, 100.0])
def test_the_ends_of_0_100_are_percentages_too(tmp_path, value):
    from timm_xbn.hub.results import load_results

    assert load_results([_results_with(tmp_path, value)])[0].data["clean_error"] == value


def test_a_card_without_license_gets_the_one_the_push_help_names(tmp_path):
    import re

    import timm

    from timm_xbn.cli import hub_app
    from timm_xbn.hub.card import render_card
    from typer.main import get_command

    push = get_command(hub_app).commands["push"]
    stated = re.search(r"else ([\w.+-]+)\)", next(p.help for p in push.params if p.name == "license")).group(1)
    model = timm.create_model("resnet10t", num_classes=3)
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "license"}
    card = render_card(model, "someone/tiny", {"architecture": "resnet10t", "num_classes": 3})
    assert f"\nlicense: {stated}\n" in card


@pytest.mark.parametrize("opt, scale, expected", [
    ("sgd", "", 0.1 * 384 / 256),  # train.py: linear for SGD-like optimizers
    ("adamw", "", 0.1 * (384 / 256) ** 0.5),  # sqrt for ada* / lamb
    ("sgd", "sqrt", 0.1 * (384 / 256) ** 0.5),
    ("lamb", "linear", 0.1 * 384 / 256),
])
def test_the_learning_rate_scales_with_the_global_batch_as_train_py(opt, scale, expected):
    import argparse

    from timm_xbn.training.args import resolve_lr

    args = argparse.Namespace(lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale=scale, opt=opt, batch_size=64,
                              grad_accum_steps=3)
    assert resolve_lr(args, world_size=2) == pytest.approx(expected)  # global batch 64 x 2 x 3 = 384


def test_result_files_get_the_mode_of_any_new_file(tmp_path):
    import os
    import stat

    from timm_xbn.evaluation.results import write_csv, write_json_atomic
    from timm_xbn.utils.files import write_text_atomic

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").write_text("x")  # what open() makes under this umask
        write_text_atomic(tmp_path / "t.txt", "x")
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        write_csv(tmp_path / "r.csv", [{"a": 1}])
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o644
    for name in ("t.txt", "r.json", "r.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ('"resnet"', "str"), ("3", "int")])
def test_model_kwargs_that_are_not_a_json_object_are_refused(text, kind):
    from timm_xbn.commands.options import parse_json_kwargs
    from timm_xbn.utils.errors import UserError

    with pytest.raises(UserError, match=f"--model-kwargs must be a JSON object, got {kind}"):
        parse_json_kwargs(text)
    assert parse_json_kwargs('{"num_classes": 3}') == {"num_classes": 3}
