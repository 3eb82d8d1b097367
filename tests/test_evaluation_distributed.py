"""Two gloo processes under torchrun give exactly the single-process numbers.

The test runs this file as the torchrun worker (``__main__`` below): robustness sweep (with
checkpoints after every batch), the same sweep interrupted on both ranks and resumed from its
partial file, AdaBN (full and prediction-time BN) and ESM, on 41 files (one unreadable) in
batches of 6, so the two ranks get different numbers of batches.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import timm_xbn
from timm_xbn.evaluation import (
    SharedPass, create_eval_data, evaluate_esm, init_distributed, is_main_process, resolve_eval_data_config,
)
from timm_xbn.grid import evaluate_adabn, evaluate_robustness
from timm_xbn.evaluation.distributed import barrier, shutdown_distributed

CLASSES, IMG, BATCH = 8, 32, 6


def build_models(bn_file: Path, xbn_file: Path):
    bn = timm.create_model("resnet18", num_classes=CLASSES, zero_init_last=False)
    bn.load_state_dict(load_file(str(bn_file)))
    xbn = timm_xbn.convert(bn).model
    xbn.load_state_dict(load_file(str(xbn_file)))
    return {"bn": bn.eval(), "xbn": xbn.eval()}


def interrupted_then_resumed(models, data, out: Path, interrupt_at: int = 3):
    """The robustness sweep stopped on every rank at its ``interrupt_at``-th batch (after the checkpoint
    of the batch before), then run again: the next index of the partial file and the resumed runs."""
    real_update, calls = SharedPass.update, []

    def update(self, images, targets):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_update(self, images, targets)

    SharedPass.update = update
    try:
        evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2, output_dir=out, checkpoint_every=1)
    except KeyboardInterrupt:
        pass
    finally:
        SharedPass.update = real_update
    barrier()
    next_index = json.loads((out / "robustness.partial.json").read_text())["next_index"]
    resumed = evaluate_robustness(models, data, deltas=[0.5], seeds=2, blocks=2, output_dir=out, checkpoint_every=1)
    return {"next_index": next_index, "cells": resumed["cells"]}


def run_all(models, data_root: Path, out: Path):
    data = create_eval_data(data_root, resolve_eval_data_config(models, {"img_size": IMG}), batch_size=BATCH, workers=0)
    return {
        "robustness": evaluate_robustness(models, data, deltas=[0.5, 0.9], seeds=2, blocks=2, output_dir=out,
                                          checkpoint_every=1),
        "resumed": interrupted_then_resumed(models, data, out / "resumed"),
        "adabn_full": evaluate_adabn(models, data, mode="full"),
        "adabn_batch": evaluate_adabn(models, data, mode="batch"),
        "esm": evaluate_esm(models, data),
    }


@pytest.mark.distributed
def test_two_gloo_processes_equal_one_process(image_folder, tmp_path):
    from test_evaluation import fit_ncm_head, make_model

    root = image_folder(classes=CLASSES, per_class=5, size=40)
    bn, data = make_model(root, batch_size=BATCH)
    xbn = fit_ncm_head(timm_xbn.convert(bn).model, data)
    save_file(bn.state_dict(), str(tmp_path / "bn.safetensors"))
    save_file(xbn.state_dict(), str(tmp_path / "xbn.safetensors"))
    (root / "class_3" / "broken.jpg").write_bytes(b"\xff\xd8 broken")

    single = run_all(build_models(tmp_path / "bn.safetensors", tmp_path / "xbn.safetensors"), root, tmp_path / "single")
    here = Path(__file__).resolve().parent  # the workers import this checkout's timm_xbn and this file's helpers
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
         str(root), str(tmp_path / "bn.safetensors"), str(tmp_path / "xbn.safetensors"), str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "all.json").read_text())

    # every cell identical, calibration sums included (integer scores add up the same in any split)
    assert ddp["robustness"]["cells"] == single["robustness"]["cells"]
    assert ddp["robustness"]["results"] == single["robustness"]["results"]
    assert ddp["robustness"]["skipped_images"] == single["robustness"]["skipped_images"]
    assert ddp["robustness"]["skipped_images"]["clean"]["count"] == 1
    assert ddp["adabn_batch"]["results"] == single["adabn_batch"]["results"]
    # AdaBN's statistics are sums over the ranks' shards, added in another order: the adapted models agree to
    # rounding, so their predictions (counts) are identical and their calibration equal to 1e-5
    for label, entry in single["adabn_full"]["results"].items():
        got = ddp["adabn_full"]["results"][label]
        assert {k: v for k, v in got.items() if not k.endswith(("_ece", "_nll", "_brier"))} == \
            {k: v for k, v in entry.items() if not k.endswith(("_ece", "_nll", "_brier"))}
        assert {k: v for k, v in got.items() if k.endswith(("_ece", "_nll", "_brier"))} == \
            pytest.approx({k: v for k, v in entry.items() if k.endswith(("_ece", "_nll", "_brier"))}, rel=1e-5)
    assert not (tmp_path / "ddp" / "robustness.partial.json").exists()
    # interrupted at each rank's 3rd batch: 2 batches of 6 on each of the 2 ranks were done
    assert single["resumed"]["next_index"] == 2 * BATCH and ddp["resumed"]["next_index"] == 2 * 2 * BATCH
    assert ddp["resumed"]["cells"] == single["resumed"]["cells"]
    assert ddp["resumed"]["cells"] == [c for c in single["robustness"]["cells"]
                                       if c["method"] == "source" or c["method"].startswith("perturb:0.5,")]
    assert not (tmp_path / "ddp" / "resumed" / "robustness.partial.json").exists()
    for label in ("bn", "xbn"):
        got, ref = ddp["esm"]["models"][label]["layers"], single["esm"]["models"][label]["layers"]
        assert [r["name"] for r in got] == [r["name"] for r in ref]
        assert [r["esm_sigma"] for r in got] == pytest.approx([r["esm_sigma"] for r in ref], rel=1e-9)
        assert [r["esm_mu"] for r in got] == pytest.approx([r["esm_mu"] for r in ref], rel=1e-9)
    # not vacuous: the sweep and the recalibration change the numbers
    bn_runs = [c["correct1"] for c in single["robustness"]["cells"] if c["model"] == "bn"]
    assert len(set(bn_runs)) > 1
    assert single["adabn_full"]["results"]["bn"]["after_top1"] != single["adabn_full"]["results"]["bn"]["before_top1"]


if __name__ == "__main__":  # torchrun worker
    torch.set_num_threads(1)
    data_root, bn_file, xbn_file, out_dir = (Path(a) for a in sys.argv[1:5])
    init_distributed("cpu")
    results = run_all(build_models(bn_file, xbn_file), data_root, out_dir)
    if is_main_process():
        (out_dir / "all.json").write_text(json.dumps(results))
    shutdown_distributed()
