"""Test streams for adaptation: the order in which a (corruption, severity) pair's images arrive.

``iid``: the seeded shuffle of ``EvalData.ordered("shuffle", seed)`` (the project's default order).
``label-shift``: class-imbalanced, temporally correlated labels, the Dirichlet protocol of NOTE (Gong
et al. 2022) as RoTTA's ``LabelDirichletDomainSequence`` (Yuan et al. 2023) builds it: the stream is
cut into ``slots`` time slots (default: one per class); each class's images (in a seeded shuffled
order) are split over the slots with proportions drawn from Dirichlet(alpha, ..., alpha); each slot
holds its classes' pieces one after another, in a random class order. Small alpha: each class sits in
few slots, so a batch holds one or two classes; alpha -> infinity: every class spread evenly, each
slot still class by class. Every image is read exactly once.
``mixed``: SAR's "mixed distribution shifts" (Niu et al. 2023): every pair's images shuffled together
into one stream (``timm_xbn.adapt.mixed``), read once, never reset inside it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..evaluation.data import EvalData, order_label

__all__ = ["STREAMS", "check_stream", "dataset_labels", "dirichlet_order", "stream_data", "stream_label", "stream_record"]

STREAMS = ("iid", "label-shift", "mixed")


def check_stream(stream: str, dirichlet: Optional[float], protocol: Optional[str] = None, order: str = "shuffle") -> None:
    """``ValueError`` for an unknown stream, a Dirichlet alpha missing / not > 0 / given to another
    stream, ``order`` other than the shuffle for a stream that sets its own order, or a ``protocol``
    given to ``mixed`` (one stream through every pair: nothing to reset between pairs)."""
    if stream not in STREAMS:
        raise ValueError(f"--stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if stream == "label-shift" and not (dirichlet is not None and dirichlet > 0):
        raise ValueError(f"--stream label-shift needs --dirichlet ALPHA > 0 (e.g. 0.1), got {dirichlet}")
    if stream != "label-shift" and dirichlet is not None:
        raise ValueError("--dirichlet only applies to --stream label-shift")
    if stream != "iid" and order != "shuffle":
        raise ValueError(f"--order {order} only applies to --stream iid; --stream {stream} sets its own order, seeded by --seed")
    if stream == "mixed" and protocol is not None:
        raise ValueError("--protocol does not apply to --stream mixed: it is one stream through every corruption x "
                         "severity, and the adapters are never reset inside it")


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
    """For table titles: the stream, how it was ordered, its Dirichlet alpha and the batch size, e.g.
    ``"stream label-shift, order seed 0, Dirichlet alpha 0.1, batch size 64"``; an i.i.d. stream gives
    its read order as ``xbn-eval corruption`` and ``adabn`` do (``order_label``: ``"read shuffled (seed 0)"``).
    Results files written before streams were recorded are i.i.d."""
    stream, alpha, seed = results.get("stream", "iid"), results.get("dirichlet"), results.get("order_seed")
    order = order_label(results.get("order"), seed) if stream == "iid" else f"order seed {seed}"
    return (f"stream {stream}, {order}, Dirichlet alpha {'n/a' if alpha is None else f'{alpha:g}'}, "
            f"batch size {results.get('batch_size', 'not recorded')}")
