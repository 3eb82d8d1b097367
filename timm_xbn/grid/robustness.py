"""The paper's Figure 8 as a view of the grid: each model's clean top-1 and its top-1 with Eq. 5's noise
in the first BN of its first N residual blocks (``select_perturbation_targets``), for every Delta x seed.

The grid: models x (``source`` + ``perturb:DELTA,SEED`` for every Delta and seed) on one unit, the clean
data. Every setting runs on each decoded batch (one data pass), sharing the model's weights.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch.nn as nn

from ..evaluation.data import EvalData
from ..evaluation.models import weights_sha1
from ..evaluation.plots import plot_robustness
from ..evaluation.results import jsonable_config, mean_std
from ..evaluation.store import ResultsStore
from ..stats import select_perturbation_targets
from ..utils.distributed import barrier
from ..utils.errors import UserError
from .methods import perturbation_spec
from .runner import GridRunner, Unit

__all__ = ["RESULTS_FILE", "evaluate_robustness"]

RESULTS_FILE = "robustness.json"
CLEAN = "clean"


def _summary(store: ResultsStore, label: str, deltas: Sequence[float], seeds: Sequence[int]) -> Dict[str, Any]:
    """The images scored (the data's files less the unreadable ones), clean top-1/top-5 and calibration (ECE %, NLL, Brier) of ``label``, and per Delta the mean and (sample)
    std of top-1 over the seeds, the per-seed top-1 values (seed order), the mean top-5 and the mean ECE."""
    clean = store.get(label, "source", CLEAN)
    entry: Dict[str, Any] = {"count": clean["count"], "clean_top1": clean["top1"], "clean_top5": clean["top5"],
                             **{f"clean_{k}": clean[k] for k in ("ece", "nll", "brier")}, "deltas": {}}
    for delta in deltas:
        cells = [store.get(label, perturbation_spec(delta, seed), CLEAN) for seed in seeds]
        top1 = [c["top1"] for c in cells]
        entry["deltas"][str(delta)] = {**mean_std(top1), "per_seed": top1, "seeds": list(seeds),
                                       "top5_mean": statistics.fmean(c["top5"] for c in cells),
                                       "ece_mean": statistics.fmean(c["ece"] for c in cells)}
    return entry


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
    """Clean and disturbed top-1/top-5 of each model; returns the ``robustness`` results document.

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
        raise UserError("give at least one noise magnitude delta")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise UserError("give at least one seed")
    deltas = [float(d) for d in dict.fromkeys(deltas)]
    targets = {}
    for label, model in models.items():
        try:
            targets[label] = select_perturbation_targets(model, blocks, scope)
        except UserError as err:
            raise UserError(f"{label}: {err}") from None
    run = {"dataset": data.source, "files": len(data), "data_config": jsonable_config(data.data_config),
           "blocks": blocks if blocks is None or isinstance(blocks, int) else list(blocks), "scope": scope}
    provenance = {label: {"weights_sha1": weights_sha1(m), "targets": targets[label],
                          **({"spec": dict(model_specs[label])} if model_specs and label in model_specs else {})}
                  for label, m in models.items()}
    store = ResultsStore("robustness", run, provenance, output_dir, RESULTS_FILE, identity_fields=("weights_sha1", "targets"))
    methods = ["source"] + [perturbation_spec(d, s) for d in deltas for s in seed_list]
    grid = {"methods": methods, "pairs": [CLEAN], "deltas": deltas, "seeds": seed_list}

    def document() -> Dict[str, Any]:
        return store.document(grid, {label: _summary(store, label, deltas, seed_list) for label in models},
                              skipped=store.skipped)

    runner = GridRunner(models, methods, store, targets=targets, progress=progress, checkpoint_every=checkpoint_every)
    runner.run([Unit(CLEAN, data)])
    results = document()
    store.write(results, csv_rows=[
        {"model": label, "delta": None if method == "source" else delta, "seed": None if method == "source" else seed,
         **{k: store.get(label, method, CLEAN)[k] for k in ("top1", "top5", "correct1", "correct5", "count", "ece", "nll",
                                                             "brier")}}
        for label in models for method, delta, seed in
        [("source", None, None)] + [(perturbation_spec(d, s), d, s) for d in deltas for s in seed_list]],
        plot=plot_robustness)
    barrier()  # every rank returns only once the files are complete
    return results
