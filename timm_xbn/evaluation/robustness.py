"""Robustness to disturbed BN statistics (the paper's Figure 8), as one shared, resumable data pass.

For each model the first BN of each of the first N residual blocks (``select_perturbation_targets``)
gets Eq. 5's noise of magnitude Delta for each seed; top-1/top-5 are measured for every
(model, Delta, seed) and for the clean model, all on the same decoded batches.
"""
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch.nn as nn

from ..stats import select_perturbation_targets
from ..utils.device import eval_mode
from ..utils.distributed import barrier, is_main_process
from .data import EvalData
from .engine import run_pass
from .models import weights_sha1
from .plots import plot_robustness
from .results import (
    NUMBER, OPTIONAL_NUMBER, jsonable_config, load_results, make_results, run_record, skipped_report, summarize_robustness,
    write_csv, write_json_atomic,
)
from .sweep import SharedPass, robustness_settings

__all__ = ["RESULTS_FILE", "evaluate_robustness"]

RESULTS_FILE = "robustness.json"
# the fields of a previous robustness.json that a resumed sweep reads back
RESUME_SHAPE = {
    "model_info": {"*": {"weights_sha1": str, "targets": [str]}},
    "runs": {"*": {"model": str, "delta": OPTIONAL_NUMBER, "seed": (int, type(None)), "correct1": int,
                   "correct5": int, "count": int, "top1": NUMBER, "top5": NUMBER}},
    "skipped_images": {"count": int, "files": [dict]},
}


def _check_same_run(previous: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume into results of other data, another perturbation rule or other weights."""
    for key in ("dataset", "num_images", "data_config", "blocks", "scope"):
        if previous.get(key) != meta[key]:
            raise ValueError(
                f"{path} holds results for {key}={previous.get(key)!r}, this run has {key}={meta[key]!r}; "
                "use another output folder"
            )
    for label, info in meta["model_info"].items():
        old = previous.get("model_info", {}).get(label)
        if old is not None and (old["weights_sha1"], old["targets"]) != (info["weights_sha1"], info["targets"]):
            raise ValueError(f"{path} holds results of {label!r} with other weights or targets; use another output folder")


def evaluate_robustness(
    models: Mapping[str, nn.Module],
    data: EvalData,
    deltas: Sequence[float],
    seeds: Union[int, Sequence[int]] = 5,
    blocks: Union[int, Sequence[str], None] = 6,
    scope: str = "first",
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
    checkpoint_every: int = 20,
    model_specs: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Clean and disturbed top-1/top-5 of each model; returns the ``robustness`` results dict.

    Args:
        models: label -> model (on its device). They share decoded batches (one data pass in all).
        data: the evaluation data (``create_eval_data``).
        deltas: noise magnitudes Delta (each in [0, 1)).
        seeds: the number of seeds (seeds 0..n-1) or the seeds themselves.
        blocks / scope: which BNs to disturb, see ``timm_xbn.stats.select_perturbation_targets``.
        output_dir: write ``robustness.json`` / ``.csv`` / ``.png`` there. Settings already in its
            JSON are not evaluated again, and a pass interrupted midway continues from its last
            checkpoint (every ``checkpoint_every`` batches).
        model_specs: optional label -> how the model was built (name, checkpoint, ...), recorded.

    Under torch.distributed every rank passes the same arguments; rank 0 writes the files and
    every rank returns the same (all-reduced) results.
    """
    if not deltas:
        raise ValueError("give at least one noise magnitude delta")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("give at least one seed")
    deltas = [float(d) for d in dict.fromkeys(deltas)]
    targets = {}
    for label, model in models.items():
        try:
            targets[label] = select_perturbation_targets(model, blocks, scope)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
    model_info = {label: {"weights_sha1": weights_sha1(m), "targets": targets[label],
                          **({"spec": dict(model_specs[label])} if model_specs and label in model_specs else {})}
                  for label, m in models.items()}
    meta = {"dataset": data.source, "num_images": len(data), "data_config": jsonable_config(data.data_config),
            "blocks": blocks if blocks is None or isinstance(blocks, int) else list(blocks), "scope": scope,
            "model_info": model_info}
    settings = robustness_settings(list(models), deltas, seed_list)

    out = Path(output_dir) if output_dir is not None else None
    previous = load_results(out / RESULTS_FILE, "robustness", RESUME_SHAPE) if out else None
    runs: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, Any] = skipped_report([])
    if previous:
        _check_same_run(previous, meta, out / RESULTS_FILE)
        runs = dict(previous.get("runs", {}))
        model_info = {**previous.get("model_info", {}), **model_info}
        skipped = previous.get("skipped_images", skipped)
    pending = [s for s in settings if s.key not in runs]

    if pending:
        with eval_mode(models.values()):
            evaluator = SharedPass(models, pending, targets)
            result = run_pass(evaluator, data, progress=progress,
                              state_file=out / "robustness.partial.json" if out else None,
                              meta=meta, checkpoint_every=checkpoint_every, description="robustness sweep")
        runs.update({s.key: run_record(s, result.counts[s.key]) for s in pending})
        skipped = skipped_report(result.skipped)

    results = make_results("robustness", {
        "dataset": data.source,
        "blocks": meta["blocks"],
        "seeds": seed_list,
        "deltas": deltas,
        "scope": scope,
        "models": summarize_robustness(runs, settings),
        "num_images": len(data),
        "data_config": meta["data_config"],
        "skipped_images": skipped,
        "model_info": model_info,
        "runs": runs,
    })
    if out is not None and is_main_process():
        write_json_atomic(out / RESULTS_FILE, results)
        write_csv(out / "robustness.csv", [
            {k: runs[s.key][k] for k in ("model", "delta", "seed", "top1", "top5", "correct1", "correct5", "count")}
            for s in settings
        ])
        plot_robustness(results, out / "robustness.png")
    barrier()  # every rank returns only once the files are complete
    return results
