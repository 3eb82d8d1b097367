"""Test streams for adaptation: the order in which a (corruption, severity) pair's images arrive.

``iid``: the seeded shuffle of ``EvalData.ordered("shuffle", seed)`` (the project's default order).
``label-shift``: class-imbalanced, temporally correlated labels, the Dirichlet protocol of NOTE (Gong
et al. 2022) as RoTTA's ``LabelDirichletDomainSequence`` (Yuan et al. 2023) builds it: the stream is
cut into ``slots`` time slots (default: one per class); each class's images (in a seeded shuffled
order) are split over the slots with proportions drawn from Dirichlet(alpha, ..., alpha); each slot
holds its classes' pieces one after another, in a random class order. Small alpha: each class sits in
few slots, so a batch holds one or two classes; alpha -> infinity: every class spread evenly, each
slot still class by class. Every image is read exactly once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..evaluation.data import EvalData, order_label

__all__ = ["STREAMS", "check_stream", "dataset_labels", "dirichlet_order", "stream_data", "stream_label", "stream_record"]

STREAMS = ("iid", "label-shift")


def check_stream(stream: str, dirichlet: Optional[float]) -> None:
    """``ValueError`` for an unknown stream, or a Dirichlet alpha missing / not > 0 / given to ``iid``."""
    if stream not in STREAMS:
        raise ValueError(f"--stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if stream == "label-shift" and not (dirichlet is not None and dirichlet > 0):
        raise ValueError(f"--stream label-shift needs --dirichlet ALPHA > 0 (e.g. 0.1), got {dirichlet}")
    if stream == "iid" and dirichlet is not None:
        raise ValueError("--dirichlet only applies to --stream label-shift")


def dirichlet_order(labels: Sequence[int], alpha: float, seed: int, slots: Optional[int] = None) -> list[int]:
    """A permutation of ``range(len(labels))``: the label-shift stream (module docstring) for ``seed``."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    slots = slots or len(classes)
    rng = np.random.default_rng(seed)
    pieces: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * slots))[:-1] * len(members)).astype(int)
        for slot, piece in zip(pieces, np.split(members, cuts)):
            slot.append(piece)
    order: list[int] = []
    for slot in pieces:
        for k in rng.permutation(len(slot)):
            order.extend(slot[k].tolist())
    return order


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every item of ``dataset``, read from its index where the wrapper chain allows
    (timm ImageDataset, CIFAR-C arrays), else by loading each item."""
    inner = dataset
    while hasattr(inner, "dataset") or hasattr(inner, "inner"):  # SkipUnreadable, ReferenceCorrupted
        inner = inner.dataset if hasattr(inner, "dataset") else inner.inner
    samples = getattr(getattr(inner, "reader", None), "samples", None)
    if samples is not None and len(samples) == len(dataset):
        transform = getattr(inner, "target_transform", None) or (lambda t: t)
        return [int(transform(t)) for _, t in samples]
    if hasattr(inner, "labels") and hasattr(inner, "start"):  # CifarCArray
        return [int(inner.labels[(inner.start + i) % len(inner.labels)]) for i in range(len(dataset))]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def stream_data(data: EvalData, stream: str, seed: int, dirichlet: Optional[float] = None, order: str = "shuffle") -> EvalData:
    """``data`` in the order of ``stream``; ``iid`` is ``data.ordered(order, seed)`` exactly."""
    check_stream(stream, dirichlet)
    if stream == "iid":
        return data.ordered(order, seed)
    permutation = dirichlet_order(dataset_labels(data.dataset), dirichlet, seed)
    return dataclasses.replace(data, order=permutation, info={**data.info, "order_seed": seed})


def stream_record(stream: str, dirichlet: Optional[float]) -> dict[str, Any]:
    """How the stream was built, as the results file records it."""
    return {"stream": stream, "dirichlet": dirichlet}


def stream_label(results: Mapping[str, Any]) -> str:
    """For table titles: the read order of an i.i.d. stream (``order_label``; also for results files
    written before streams were recorded), or ``"label-shift stream (Dirichlet alpha 0.1, seed 0)"``."""
    if results.get("stream", "iid") == "iid":
        return order_label(results.get("order"), results.get("order_seed"))
    return f"label-shift stream (Dirichlet alpha {results['dirichlet']:g}, seed {results['order_seed']})"
