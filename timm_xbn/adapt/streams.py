"""Test streams for adaptation: the order in which a (corruption, severity) pair's images arrive.

``iid``: the seeded shuffle of ``EvalData.ordered("shuffle", seed)`` (the project's default order).
``label-shift``: class-imbalanced, temporally correlated labels, the Dirichlet protocol of NOTE (Gong
et al. 2022) as RoTTA's ``LabelDirichletDomainSequence`` (Yuan et al. 2023) builds it: the stream is
cut into ``slots`` time slots (default: one per class, at most 100, RoTTA's cap); each class's images
(in a seeded shuffled order) are split over the slots with proportions drawn from Dirichlet(alpha, ...,
alpha); each slot holds its classes' pieces one after another, in a random class order. Small alpha:
each class sits in few slots, so a batch holds one or two classes; alpha -> infinity: every class spread
evenly, each slot still class by class. Every image is read exactly once. By default every pair gets
the same draw (the stream seed's); ``domain`` (the pair's name) gives each pair its own draw, as RoTTA
draws once per domain.
``mixed``: SAR's "mixed distribution shifts" (Niu et al. 2023): every pair's images shuffled together
into one stream (``timm_xbn.adapt.mixed``), read once, never reset inside it.

The stream seed is the one of the order only; the on-the-fly corruptions have their own (the
``CorruptionSource``'s), so a stream can be redrawn over the same corrupted images.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..evaluation.data import EvalData, order_label
from ..utils.errors import UserError

__all__ = ["MAX_SLOTS", "STREAMS", "check_stream", "dataset_labels", "dirichlet_order", "stream_data", "stream_label",
           "stream_order_name", "stream_record", "stream_slots"]

STREAMS = ("iid", "label-shift", "mixed")
MAX_SLOTS = 100  # RoTTA's cap on the number of time slots of a label-shift stream


def check_stream(stream: str, dirichlet: Optional[float], protocol: Optional[str] = None, order: str = "shuffle",
                 per_domain: bool = False) -> None:
    """``ValueError`` for an unknown stream, a Dirichlet alpha missing / not > 0 / given to another
    stream, ``order`` other than the shuffle for a stream that sets its own order, a ``protocol``
    given to ``mixed`` (one stream through every pair: nothing to reset between pairs), or a draw
    per domain asked of a stream other than label-shift."""
    if stream not in STREAMS:
        raise UserError(f"--stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if stream == "label-shift" and not (dirichlet is not None and dirichlet > 0):
        raise UserError(f"--stream label-shift needs --dirichlet ALPHA > 0 (e.g. 0.1), got {dirichlet}")
    if stream != "label-shift" and dirichlet is not None:
        raise UserError("--dirichlet only applies to --stream label-shift")
    if stream != "iid" and order != "shuffle":
        raise UserError(f"--order {order} only applies to --stream iid; --stream {stream} sets its own order, seeded by --seed")
    if stream == "mixed" and protocol is not None:
        raise UserError("--protocol does not apply to --stream mixed: it is one stream through every corruption x "
                        "severity, and the adapters are never reset inside it")
    if per_domain and stream != "label-shift":
        raise UserError("--per-domain (a Dirichlet draw per corruption x severity) only applies to --stream label-shift")


def stream_slots(num_classes: int, slots: Optional[int] = None) -> int:
    """The number of time slots of a label-shift stream: ``slots`` if given, else one per class,
    capped at ``MAX_SLOTS`` (RoTTA: ``num_class if num_class <= 100 else 100``)."""
    if slots is not None and slots < 1:
        raise UserError(f"slots must be >= 1, got {slots}")
    return slots or min(num_classes, MAX_SLOTS)


def dirichlet_order(labels: Sequence[int], alpha: float, seed: int, slots: Optional[int] = None,
                    domain: Optional[str] = None) -> list[int]:
    """A permutation of ``range(len(labels))``: the label-shift stream (module docstring) for ``seed``;
    with ``domain`` (e.g. ``"fog/5"``), that domain's own draw, seeded by ``seed`` and the name."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    slots = stream_slots(len(classes), slots)
    rng = np.random.default_rng(seed if domain is None else [seed, zlib.crc32(domain.encode())])
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


def stream_data(data: EvalData, stream: str, stream_seed: int, dirichlet: Optional[float] = None, order: str = "shuffle",
                domain: Optional[str] = None) -> EvalData:
    """``data`` in the order of ``stream``, seeded by ``stream_seed``; ``iid`` is ``data.ordered(order,
    stream_seed)`` exactly. ``domain``: the pair's name, for a label-shift draw of its own (``per_domain``)."""
    check_stream(stream, dirichlet, per_domain=domain is not None)
    if stream == "iid":
        return data.ordered(order, stream_seed)
    permutation = dirichlet_order(dataset_labels(data.dataset), dirichlet, stream_seed, domain=domain)
    return dataclasses.replace(data, order=permutation, info={**data.info, "order_seed": stream_seed})


def stream_order_name(stream: str, per_domain: bool = False) -> Optional[str]:
    """The read order a stream imposes, as results files name it (``None``: the i.i.d. stream's own
    ``order``, shuffle or folder): ``"dirichlet"`` / ``"dirichlet-per-domain"`` for label-shift, ``"mixed"``."""
    if stream == "label-shift":
        return "dirichlet-per-domain" if per_domain else "dirichlet"
    return "mixed" if stream == "mixed" else None


def stream_record(stream: str, dirichlet: Optional[float], per_domain: bool = False) -> dict[str, Any]:
    """How the stream was built, as the results file records it; for a stream that sets its own
    order, ``order`` names it (it replaces ``order_record``'s ``"shuffle"`` when merged after it), and
    a label-shift stream records its slot cap."""
    record: dict[str, Any] = {"stream": stream, "dirichlet": dirichlet}
    name = stream_order_name(stream, per_domain)
    if name is not None:
        record["order"] = name
    if stream == "label-shift":
        record["max_slots"] = MAX_SLOTS
    return record


def stream_label(results: Mapping[str, Any]) -> str:
    """For table titles: the stream, how it was ordered, its Dirichlet alpha and the batch size, e.g.
    ``"stream label-shift, order seed 0, Dirichlet alpha 0.1, batch size 64"``; an i.i.d. stream gives
    its read order as ``xbn-eval corruption`` and ``adabn`` do (``order_label``: ``"read shuffled (seed 0)"``).
    Results files written before streams were recorded are i.i.d."""
    stream, alpha, seed = results.get("stream", "iid"), results.get("dirichlet"), results.get("order_seed")
    order = order_label(results.get("order"), seed) if stream == "iid" else f"order seed {seed}"
    if results.get("order") == "dirichlet-per-domain":
        order += " (a draw per corruption x severity)"
    return (f"stream {stream}, {order}, Dirichlet alpha {'n/a' if alpha is None else f'{alpha:g}'}, "
            f"batch size {results.get('batch_size', 'not recorded')}")
