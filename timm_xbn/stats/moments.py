"""Exact per-channel moments of BatchNorm inputs, accumulated over a whole data set.

``ChannelMoments`` keeps the count, mean and sum of squared deviations (M2) of one BN's input
in float64 and merges each batch with Chan et al.'s parallel update, so the result equals the
mean / population variance of all samples seen, independent of how they were batched. Under
``torch.distributed`` the per-rank moments are merged with all-reduces, so every rank ends up
with the moments of the whole (sharded) data set.
"""
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn

from ..utils.device import eval_mode, model_device
from ..utils.distributed import is_distributed
from ..utils.errors import UserError
from ..utils.norms import bn_modules, bns_with_running_stats

__all__ = [
    "ChannelMoments", "bn_modules", "bns_with_running_stats", "capture_bn_inputs", "eval_mode", "iterate_inputs",
    "is_distributed", "model_device",
]


class ChannelMoments:
    """Running count, mean and M2 per channel of tensors shaped (N, C), (N, C, L) or (N, C, H, W)."""

    CHUNK_VALUES = 1 << 24  # float64 values converted at a time (128 MiB)

    def __init__(self, num_channels: int, device: Union[str, torch.device, None] = None):
        self.count = 0
        self.mean = torch.zeros(num_channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(num_channels, dtype=torch.float64, device=device)

    @property
    def var(self) -> torch.Tensor:
        """Population variance (M2 / count): the variance of every sample seen, not a batch estimate."""
        if self.count == 0:
            raise ValueError("no samples were accumulated")
        return self.m2 / self.count

    def update(self, x: torch.Tensor) -> None:
        """Merge one batch; all dims except dim 1 (channels) are reduced.

        The batch is processed in float64 chunks of at most ``CHUNK_VALUES`` values (two-pass
        mean and squared deviations per chunk, then a Chan merge), so memory stays bounded.
        """
        if x.dim() < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"expected a (N, {self.mean.numel()}, ...) tensor, got shape {tuple(x.shape)}")
        x = x.detach()
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        per_sample = max(1, x[0].numel())
        for chunk in x.split(max(1, self.CHUNK_VALUES // per_sample)):
            chunk = chunk.to(torch.float64)
            n = chunk.numel() // chunk.shape[1]
            if n == 0:
                continue
            mean = chunk.mean(dims)
            m2 = ((chunk - mean.view(shape)) ** 2).sum(dims)
            self._merge(n, mean.to(self.mean.device), m2.to(self.m2.device))

    def _merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def all_reduce_(self) -> "ChannelMoments":
        """Replace the local moments by those of all ranks together (no-op without distributed)."""
        if not is_distributed():
            return self
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.mean.device)
        dist.all_reduce(count)
        total = float(count.item())
        if total == 0:
            return self
        weighted = self.mean * self.count
        dist.all_reduce(weighted)
        mean = weighted / total
        m2 = self.m2 + self.count * (self.mean - mean) ** 2
        dist.all_reduce(m2)
        self.count, self.mean, self.m2 = int(round(total)), mean, m2
        return self


@contextmanager
def capture_bn_inputs(
    model: nn.Module,
    device: Union[str, torch.device, None] = None,
    names: Optional[Iterable[str]] = None,
) -> Iterator[Dict[str, ChannelMoments]]:
    """Accumulate the input moments of every BN of ``model`` (or of the BNs ``names``) inside the context.

    Uses forward pre-hooks (removed on exit, also on error). Yields ``{name: ChannelMoments}``
    in registration order; a BN that never runs keeps ``count == 0``.
    """
    wanted = None if names is None else set(names)
    moments: Dict[str, ChannelMoments] = {}
    handles = []
    try:
        for name, bn in bn_modules(model):
            if wanted is not None and name not in wanted:
                continue
            acc = ChannelMoments(bn.num_features, device=device)
            moments[name] = acc
            handles.append(bn.register_forward_pre_hook(lambda _m, args, acc=acc: acc.update(args[0])))
        yield moments
    finally:
        for handle in handles:
            handle.remove()


def _first_input(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise UserError("got an empty batch tuple/list; expected (input, ...) or a Tensor")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise UserError(
            f"a batch must be a Tensor or a tuple/list whose first element is one, got {type(batch).__name__}"
        )
    return batch


def iterate_inputs(
    batches: Iterable,
    device: Union[str, torch.device],
    max_batches: Optional[int] = None,
    progress: bool = False,
    description: str = "batches",
) -> Iterator[torch.Tensor]:
    """Yield the input tensor of each batch on ``device``, at most ``max_batches`` of them.

    A batch is a Tensor or a tuple/list whose first element is the input (as DataLoaders give).
    With ``progress`` a rich progress bar is shown (on rank 0 only under torch.distributed).
    """
    if max_batches is not None and max_batches < 1:
        raise UserError(f"max_batches must be a positive integer or None, got {max_batches}")
    try:
        total: Optional[int] = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    show = progress and (not is_distributed() or dist.get_rank() == 0)

    def _inputs() -> Iterator[torch.Tensor]:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            yield _first_input(batch).to(device, non_blocking=True)

    if not show:
        yield from _inputs()
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for x in _inputs():
            yield x
            bar.advance(task)
