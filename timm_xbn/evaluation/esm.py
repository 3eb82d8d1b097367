"""Per-layer estimation shift magnitude (ESM, Definition 2) of several models in one data pass.

The expected statistics of every BN are accumulated with ``timm_xbn.stats.capture_bn_inputs``
hooks on all models at once while each decoded test batch runs through each model, then
compared with the running statistics by ``timm_xbn.stats.esm_from_stats``.
"""
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
from rich.progress import Progress

from ..layers import check_one_value_norms
from ..stats import capture_bn_inputs, esm_from_stats, esm_records_to_rows, stats_from_moments
from ..utils.device import eval_mode, model_device
from ..utils.distributed import all_gather_objects, is_main_process
from ..utils.errors import UserError
from ..utils.norms import bn_modules
from .data import EvalData
from .plots import plot_esm
from .results import make_results, skipped_report, write_csv, write_json_atomic

__all__ = ["RESULTS_FILE", "evaluate_esm"]

RESULTS_FILE = "esm.json"


def evaluate_esm(
    models: Mapping[str, nn.Module],
    data: EvalData,
    max_batches: Optional[int] = None,
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """ESM_mu / ESM_sigma of every BN of each model on ``data`` (the test set); returns the ``esm`` results dict.

    ``max_batches`` limits the data (counted over all ranks). With ``output_dir``, writes
    ``esm.json``, ``esm.csv`` (one row per model and layer) and ``esm_sigma.png`` (ESM_sigma vs
    depth, all models on one plot). Under torch.distributed each rank reads its shard and the
    moments are merged over ranks.
    """
    for label, model in models.items():
        if not bn_modules(model):
            raise UserError(f"{label} ({type(model).__name__}) has no BatchNorm layers: there is no estimation shift to measure")
        check_one_value_norms(model, data.data_config["input_size"], "evaluate at a larger input size (--img-size)",
                              label=f"{label}: ")
    limit = None if max_batches is None else max_batches * data.batch_size
    loader = data.loader(limit=limit)
    skipped = []
    with ExitStack() as stack:
        stack.enter_context(eval_mode(models.values()))
        moments = {label: stack.enter_context(capture_bn_inputs(m, device=model_device(m))) for label, m in models.items()}
        bar = stack.enter_context(Progress(transient=True, disable=not (progress and is_main_process())))
        task = bar.add_task(f"expected BN statistics ({len(models)} models)", total=len(loader))
        with torch.no_grad():
            for batch in loader:
                skipped.extend(batch.skipped)
                if batch.images is not None:
                    for model in models.values():
                        model(batch.images.to(model_device(model), non_blocking=True))
                bar.advance(task)

    entries = {}
    for label, model in models.items():
        stats = stats_from_moments(moments[label])
        if not stats:
            raise UserError(f"no images were evaluated from {data.source}: cannot compute expected BN statistics")
        rows = esm_records_to_rows(esm_from_stats(model, stats))
        entries[label] = {"layers": rows, "mean_esm_sigma": sum(r["esm_sigma"] for r in rows) / max(1, len(rows))}
    all_skipped = sorted((s for chunk in all_gather_objects(skipped) for s in chunk), key=lambda s: s.index)
    results = make_results("esm", {
        "dataset": data.source,
        "models": entries,
        "max_batches": max_batches,
        "skipped_images": skipped_report(all_skipped),
    })
    if output_dir is not None and is_main_process():
        out = Path(output_dir)
        write_json_atomic(out / RESULTS_FILE, results)
        write_csv(out / "esm.csv", [{"model": label, **row} for label, e in entries.items() for row in e["layers"]])
        plot_esm(results, out / "esm_sigma.png")
    return results
