"""Accuracy before and after adapting BN statistics to target data (AdaBN and its variants).

Each model is recalibrated with ``timm_xbn.stats.recalibrate`` on the calibration data (the
target data itself by default, as in AdaBN / Schneider et al.), then the original and the
adapted copies of all models are evaluated side by side in one shared pass over the target data.
"""
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..stats.recalibrate import DATA_FREE_MODES, recalibrate
from ..utils.distributed import is_main_process
from .data import EvalData, order_record
from .engine import run_pass
from .metrics import accuracy_from_counts
from .results import make_results, skipped_report, write_csv, write_json_atomic
from .sweep import Setting, SharedPass, eval_mode

__all__ = ["RESULTS_FILE", "calibration_inputs", "evaluate_adabn"]

RESULTS_FILE = "adabn.json"
ADAPTED_SUFFIX = " (adapted)"


def calibration_inputs(data: EvalData, max_batches: Optional[int] = None) -> Iterator[torch.Tensor]:
    """The image tensors of this rank's share of the first ``max_batches`` batches (all when None).

    The limit counts batches over all ranks, so a distributed run adapts on the same images as a
    single process; batches whose images were all unreadable are left out.
    """
    limit = None if max_batches is None else max_batches * data.batch_size
    for batch in data.loader(limit=limit):
        if batch.images is not None:
            yield batch.images


def evaluate_adabn(
    models: Mapping[str, nn.Module],
    data: EvalData,
    mode: str = "full",
    prior: float = 16.0,
    calib_data: Optional[EvalData] = None,
    calib_batches: Optional[int] = None,
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
    order: str = "shuffle",
    order_seed: int = 0,
) -> Dict[str, Any]:
    """Top-1/top-5 of each model before and after BN recalibration; returns the ``adabn`` results dict.

    Args:
        models: label -> model (on its device); they are not modified (adapted copies are made).
        data: target data to evaluate on.
        mode: ``"full"`` (AdaBN), ``"prior"`` (Schneider et al.: source statistics mixed with each
            test batch's, source strength ``prior``), ``"mix"`` (full statistics mixed once with
            the source ones) or ``"batch"`` (prediction-time BN: each test batch normalized with
            its own statistics). ``prior`` and ``batch`` depend on the batch size and need no
            calibration data.
        calib_data: data to recalibrate on (default: ``data``); ``calib_batches`` limits it.
        output_dir: write ``adabn.json`` and ``adabn.csv`` there.
        order, order_seed: the order in which ``data`` and ``calib_data`` are read
            (``EvalData.ordered``; every mode depends on how the images are batched, ``full``
            through the batch statistics of the earlier BNs in its calibration pass), recorded.

    The adaptation costs one pass over the calibration data per model (none for ``prior`` and ``batch``); the
    before/after evaluation of all models is a single pass over ``data``.
    """
    data = data.ordered(order, order_seed)
    calib = calib_data.ordered(order, order_seed) if calib_data is not None else data
    adapted = {}
    for label, model in models.items():
        try:
            adapted[label + ADAPTED_SUFFIX] = recalibrate(
                model, None if mode in DATA_FREE_MODES else calibration_inputs(calib, calib_batches),
                mode=mode, prior=prior, progress=progress)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
    everything = {**models, **adapted}
    settings = [Setting(label) for label in everything]
    with eval_mode(everything.values()):
        result = run_pass(SharedPass(everything, settings), data, progress=progress, description=f"adabn ({mode})")

    entries = {}
    for label in models:
        before = accuracy_from_counts(result.counts[Setting(label).key])
        after = accuracy_from_counts(result.counts[Setting(label + ADAPTED_SUFFIX).key])
        entries[label] = {"mode": mode, "before_top1": before["top1"], "after_top1": after["top1"],
                          "before_top5": before["top5"], "after_top5": after["top5"], "count": before["count"],
                          **({"prior": prior} if mode in ("prior", "mix") else {})}
    results = make_results("adabn", {
        "dataset": data.source,
        **order_record(order, order_seed),
        "calibration": {"dataset": calib.source, "max_batches": calib_batches, "batch_size": calib.batch_size},
        "models": entries,
        "skipped_images": skipped_report(result.skipped),
    })
    if output_dir is not None and is_main_process():
        out = Path(output_dir)
        write_json_atomic(out / RESULTS_FILE, results)
        write_csv(out / "adabn.csv", [{"model": label, **entry} for label, entry in entries.items()])
    return results
