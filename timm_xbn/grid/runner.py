"""The grid runner: models x methods x units of data, resumable, one shared data pass per unit.

A *unit* is one piece of data the grid is evaluated on: the clean images, one (corruption, severity) pair,
the target data of an AdaBN run. For each unit the runner takes the cells the store does not hold yet,
gets each (model, method) its predictor (``method_predictor``; adapters are kept across units, so the
continual protocol carries their state on, the episodic one resets them before each unit), lets the
methods that must see the data first (AdaBN) prepare on the unit's calibration batches, then runs every
cell in one ``run_pass`` over the unit's batches and records the counts. ``on_unit`` is called after each
unit (the views write their files there), so an interruption loses at most the running unit, and
``run_pass``'s partial-pass file keeps even that within ``checkpoint_every`` batches.

Under torchrun the statistics methods shard (each rank reads its batches, counts are all-reduced, AdaBN's
moments too); the stateful adapters (TENT, EATA, SAR, rbn) adapt in stream order and are refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..evaluation.data import EvalData
from ..evaluation.engine import PassResult, run_pass
from ..evaluation.metrics import score_batch
from ..evaluation.store import Cell, ResultsStore
from ..evaluation.sweep import SharedPass
from ..utils.device import eval_mode, model_device
from ..utils.distributed import all_reduce_sum, is_main_process, world_info
from ..adapt.protocol import check_protocol
from ..utils.errors import UserError
from .methods import is_stateful, method_predictor

__all__ = ["GridRunner", "Scorer", "Unit", "adapter_passes", "unit_inputs"]

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Prep = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Unit:
    """One unit of data: its name in the results (``pair``), its batches in reading order, the function
    that turns a loaded batch into the models' input (corruption, normalisation; ``None``: as loaded), the
    batches the methods that see the data first (AdaBN) prepare on (default: the unit's own), the methods and models evaluated on
    it (default: every one of the grid), and how a batch is scored (default ``score_batch``; a shift set's
    subset or ReaL scorer, ``timm_xbn.evaluation.shift``)."""

    pair: str
    data: EvalData
    prep: Optional[Prep] = None
    adaptation_batches: Optional[Callable[[], Iterable[torch.Tensor]]] = None
    methods: Optional[Sequence[str]] = None
    models: Optional[Sequence[str]] = None
    scorer: Scorer = score_batch

    def adaptation_inputs(self) -> Iterable[torch.Tensor]:
        if self.adaptation_batches is not None:
            return self.adaptation_batches()
        return unit_inputs(self.data, self.prep)


def unit_inputs(data: EvalData, prep: Optional[Prep] = None, max_batches: Optional[int] = None) -> Iterator[torch.Tensor]:
    """The model inputs of this rank's share of the first ``max_batches`` batches of ``data`` (all when
    ``None``; the limit counts batches over all ranks); batches whose images were all unreadable are left out."""
    limit = None if max_batches is None else max_batches * data.batch_size
    for batch in data.loader(limit=limit):
        if batch.images is not None:
            yield prep(batch.images) if prep is not None else batch.images


class GridRunner:
    """Evaluate ``models`` x ``methods`` on units of data into ``store``.

    Args:
        models: label -> model (on its device); never changed.
        methods: method specs (``timm_xbn.grid.methods``), e.g. ``["source", "norm", "perturb:0.5,0"]``.
        store: where the cells go (and come from, when resuming).
        protocol: ``"episodic"`` (adapters reset before each unit) or ``"continual"`` (one stream through the
            units in order; stateful adapters' states are saved after each unit and loaded on resume).
        targets: label -> the BNs that ``perturb`` methods disturb.
        on_unit: called after each unit that ran (write the files there).
    """

    def __init__(self, models: Mapping[str, nn.Module], methods: Sequence[str], store: ResultsStore,
                 protocol: str = "episodic", targets: Optional[Mapping[str, Sequence[str]]] = None,
                 progress: bool = False, checkpoint_every: int = 20, on_unit: Optional[Callable[[str], None]] = None):
        check_protocol(protocol)
        if not models or not methods:
            raise UserError("give at least one model and one method")
        if len(set(methods)) != len(methods):
            raise UserError(f"methods given twice: {sorted(m for m in set(methods) if list(methods).count(m) > 1)}")
        _, world = world_info()
        stateful = [m for m in methods if is_stateful(m)]
        if world > 1 and stateful:
            raise UserError(f"{', '.join(stateful)} update the model after every batch, in stream order; under torchrun "
                            f"each of the {world} ranks would adapt its own copy on its shard (independent, shorter "
                            "streams: another method). Run them in one process")
        self.models, self.methods, self.store = dict(models), list(methods), store
        self.protocol, self.targets, self.progress = protocol, dict(targets or {}), progress
        self.checkpoint_every, self.on_unit = checkpoint_every, on_unit
        self._predictors: Dict[Tuple[str, str], nn.Module] = {}

    def predictor(self, model: str, method: str) -> nn.Module:
        """The (model, method)'s predictor, made once and kept across units; a continual stream resumed
        mid-way gets its adapter's saved state back."""
        key = (model, method)
        if key not in self._predictors:
            predictor = method_predictor(self.models[model], method, self.targets.get(model))
            self._predictors[key] = predictor
            if self.protocol == "continual" and getattr(predictor, "stateful", False):
                self._load_state(model, method, predictor)
        return self._predictors[key]

    def _load_state(self, model: str, method: str, adapter: nn.Module) -> None:
        started = any(c.model == model and c.method == method for c in self.store.cells)
        path = self.store.state_path(model, method)
        if not started:
            return
        if path is None or not path.is_file():
            raise UserError(f"cannot resume the continual stream of {model!r} | {method!r}: {path} is missing; "
                            "use another output folder")
        adapter.load_state(torch.load(path, map_location=model_device(adapter), weights_only=True))

    def _save_state(self, model: str, method: str, adapter: nn.Module) -> None:
        path = self.store.state_path(model, method)
        if path is None or not is_main_process():
            return
        from ..utils.files import atomic_write

        with atomic_write(path) as tmp:
            torch.save(adapter.state(), tmp)

    def pending(self, unit: Unit) -> list[Cell]:
        return [cell for label in (unit.models or self.models) for method in (unit.methods or self.methods)
                if not self.store.done(cell := Cell(label, method, unit.pair))]

    def run(self, units: Iterable[Unit]) -> ResultsStore:
        """Every unit in order; returns the store. A continual stream that started in an earlier run gets its
        adapters' saved states back first (or stops, naming the missing state file)."""
        if self.protocol == "continual":
            started = {(c.model, c.method) for c in self.store.cells if c.model in self.models and c.method in self.methods}
            for model, method in sorted(started):
                if is_stateful(method):
                    self.predictor(model, method)
        for unit in units:
            cells = self.pending(unit)
            if cells:
                self.run_unit(unit, cells)
                if self.on_unit is not None:
                    self.on_unit(unit.pair)
        return self.store

    def run_unit(self, unit: Unit, cells: Sequence[Cell]) -> PassResult:
        """``cells`` of ``unit`` in one pass; their records go into the store."""
        predictors = {cell.key: self.predictor(cell.model, cell.method) for cell in cells}
        adapters = {key: p for key, p in predictors.items() if hasattr(p, "passes")}
        start = {key: a.passes.as_dict() for key, a in adapters.items()}
        for adapter in adapters.values():
            if self.protocol == "episodic":
                adapter.reset()
            if adapter.needs_data:
                adapter.prepare(unit.adaptation_inputs())
        meta = {"kind": self.store.kind, "pair": unit.pair, "cells": [c.key for c in cells], "run": self.store.run,
                "models": {label: self.store.models[label]["weights_sha1"] for label in {c.model for c in cells}}}
        with eval_mode(self.models.values()):
            result = run_pass(SharedPass(predictors, unit.prep, unit.scorer), unit.data, progress=self.progress,
                              state_file=self.store.partial_path, meta=meta, checkpoint_every=self.checkpoint_every,
                              description=unit.pair)
        passes = adapter_passes(adapters, start)
        for cell in cells:
            counts = result.counts[cell.key]
            forward, backward = passes.get(cell.key, (int(counts[2]), 0))
            self.store.record(cell, counts, forward, backward)
            predictor = predictors[cell.key]
            if self.protocol == "continual" and getattr(predictor, "stateful", False):
                self._save_state(cell.model, cell.method, predictor)
        self.store.record_skipped(unit.pair, result.skipped)
        return result


def adapter_passes(adapters: Mapping[str, Any], start: Mapping[str, Mapping[str, int]]) -> Dict[str, Tuple[int, int]]:
    """(forward, backward) samples of each adapter since ``start``, summed over ranks."""
    if not adapters:
        return {}
    totals = all_reduce_sum(torch.tensor(
        [[a.passes.forward - start[k]["forward"], a.passes.backward - start[k]["backward"]] for k, a in adapters.items()],
        dtype=torch.int64)).tolist()
    return {key: (int(f), int(b)) for key, (f, b) in zip(adapters, totals)}
