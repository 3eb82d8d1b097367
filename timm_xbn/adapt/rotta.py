"""RoTTA (Yuan et al., CVPR 2023, "Robust Test-Time Adaptation in Dynamic Scenarios"), as its reference
code (BIT-DA/RoTTA, ``core/adapter/rotta.py``, ``core/utils/memory.py``, ``core/utils/bn_layers.py``).

Three parts:
  * robust BN (``RobustBN2d``): every BN with running statistics holds an EMA of test statistics
    (momentum ``alpha``, from the source ones). In eval mode it normalizes with the EMA as it is; in
    train mode it first folds the batch's (biased) statistics in, ``mu <- (1 - alpha) mu + alpha mu_batch``,
    and normalizes with the result, the gradient flowing through the batch statistics;
  * a category-balanced memory bank (``CSTU``): each test sample goes in with the teacher's pseudo label
    and prediction entropy as its uncertainty; when the bank (``capacity``) or the sample's class
    (``capacity / classes`` slots) is full, the item with the highest score
    ``lambda_t / (1 + exp(-age / capacity)) + lambda_u * uncertainty / ln C`` among the fullest classes
    (or the sample's own class) makes room if its score is above the newcomer's, else the newcomer is
    dropped; every item ages by one at each insertion;
  * a teacher-student pair: the teacher (an EMA of the student's parameters, ``nu``) predicts every
    batch in eval mode; every ``update_every`` samples the student takes one Adam step on the bank's
    images, strongly augmented, against the teacher's softmax on the bank's images (cross-entropy
    weighted by timeliness ``exp(-a) / (1 + exp(-a))``, ``a = age / capacity``), both in train mode
    (which also moves their robust-BN statistics), then the teacher moves towards the student.

Only the BN affine parameters are trained (as the reference). Defaults are the reference's
(``configs/adapter/rotta.yaml``). Departures: only the BNs switch to train mode during the update
(dropout and drop-path stay off, as in the project's other adapters); the strong augmentation works
on pixels recovered with the model's ``pretrained_cfg`` mean / std (the reference feeds [0, 1] images)
and is seeded by the adapter's own generator (``seed``), so a run is reproducible and resumable;
``augment="none"`` leaves it out (the student then sees the bank's images as the teacher does). A
network without BN running statistics (all-GN) has nothing to adapt: rotta predicts as the source.
"""
import copy
import functools
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from ..utils.errors import UserError
from ..utils.norms import bn_modules, bns_with_running_stats
from .base import Adapter, make_optimizer

__all__ = ["CategoryBalancedMemory", "RoTTA", "robust_bn_forward", "strong_augment", "timeliness_weights"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CategoryBalancedMemory:
    """RoTTA's memory bank (CSTU): ``capacity`` items, balanced over ``num_classes`` pseudo classes,
    evicting by uncertainty and age (module docstring). Items are ``(data, uncertainty, age)`` per class."""

    def __init__(self, capacity: int, num_classes: int, lambda_t: float = 1.0, lambda_u: float = 1.0):
        if capacity < 1 or num_classes < 2:
            raise UserError(f"the memory needs capacity >= 1 and >= 2 classes, got {capacity} and {num_classes}")
        self.capacity, self.num_classes = capacity, num_classes
        self.per_class = capacity / num_classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.items: List[List[list]] = [[] for _ in range(num_classes)]
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def score(self, age: int, uncertainty: float) -> float:
        """Eviction score: old and uncertain items go first."""
        return (self.lambda_t / (1 + math.exp(-age / self.capacity))
                + self.lambda_u * uncertainty / math.log(self.num_classes))

    def add(self, data: torch.Tensor, label: int, uncertainty: float) -> bool:
        """Insert a sample (``True``) or drop it (``False``); every item then ages by one."""
        added = self._make_room(label, self.score(0, uncertainty))
        if added:
            self.items[label].append([data, uncertainty, 0])
            self.size += 1
        for items in self.items:
            for item in items:
                item[2] += 1
        return added

    def _make_room(self, label: int, new_score: float) -> bool:
        if len(self.items[label]) >= self.per_class:
            return self._evict([label], new_score)
        if len(self) < self.capacity:
            return True
        sizes = [len(items) for items in self.items]
        return self._evict([c for c, n in enumerate(sizes) if n == max(sizes)], new_score)

    def _evict(self, classes: List[int], new_score: float) -> bool:
        """Remove the highest-scoring item of ``classes`` (the last one on ties) if it scores above
        ``new_score``; ``True`` when there is room for the newcomer."""
        worst: Optional[Tuple[float, int, int]] = None
        for c in classes:
            for i, (_, uncertainty, age) in enumerate(self.items[c]):
                score = self.score(age, uncertainty)
                if worst is None or score >= worst[0]:
                    worst = (score, c, i)
        if worst is None:
            return True
        if worst[0] > new_score:
            del self.items[worst[1]][worst[2]]
            self.size -= 1
            return True
        return False

    def contents(self) -> Tuple[List[torch.Tensor], List[int]]:
        """The stored images and their ages, class by class, in insertion order."""
        return [item[0] for items in self.items for item in items], [item[2] for items in self.items for item in items]

    def state(self) -> Dict[str, list]:
        flat = [(c, *item) for c, items in enumerate(self.items) for item in items]
        return {"label": [f[0] for f in flat], "data": [f[1] for f in flat],
                "uncertainty": [f[2] for f in flat], "age": [f[3] for f in flat]}

    def load_state(self, state: Dict[str, list]) -> None:
        self.items = [[] for _ in range(self.num_classes)]
        for label, data, uncertainty, age in zip(state["label"], state["data"], state["uncertainty"], state["age"]):
            self.items[label].append([data, uncertainty, age])
        self.size = len(state["label"])


def timeliness_weights(ages: List[int], capacity: int, device: torch.device) -> torch.Tensor:
    """RoTTA's ``timeliness_reweighting``: ``exp(-a) / (1 + exp(-a))`` with ``a = age / capacity`` (float32)."""
    a = torch.tensor([age / capacity for age in ages], dtype=torch.float32, device=device)
    return torch.exp(-a) / (1 + torch.exp(-a))


def robust_bn_forward(bn: nn.Module, alpha: float, x: torch.Tensor) -> torch.Tensor:
    """RoTTA's ``RobustBN2d.forward`` on a BN holding running statistics (replaces its ``forward``).

    Train mode: the running statistics become ``(1 - alpha) running + alpha batch`` (biased variance),
    and ``x`` is normalized with them, gradients flowing through the batch statistics. Eval mode:
    normalized with the running statistics. Then the affine step, and timm ``BatchNormAct2d``'s
    dropout and activation where the layer has them.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if bn.training:
        var, mean = torch.var_mean(x, [0] + list(range(2, x.dim())), unbiased=False)
        mean = (1 - alpha) * bn.running_mean + alpha * mean
        var = (1 - alpha) * bn.running_var + alpha * var
        with torch.no_grad():
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if hasattr(bn, "act"):
        y = bn.act(bn.drop(y))
    return y


def _color_jitter(x: torch.Tensor) -> torch.Tensor:
    """RoTTA's ``ColorJitterPro`` (strong setting): brightness, contrast, saturation, hue and gamma in a random order."""
    ops = [(TF.adjust_brightness, (0.6, 1.4)), (TF.adjust_contrast, (0.7, 1.3)), (TF.adjust_saturation, (0.5, 1.5)),
           (TF.adjust_hue, (-0.06, 0.06)), (lambda img, g: TF.adjust_gamma(img.clamp(1e-8, 1.0), g), (0.7, 1.3))]
    for k in torch.randperm(len(ops)).tolist():
        op, (low, high) = ops[k]
        x = op(x, torch.tensor(1.0).uniform_(low, high).item())
    return x


def strong_augment(x: torch.Tensor) -> torch.Tensor:
    """RoTTA's ``get_tta_transforms`` on a batch of [0, 1] images (one draw of every random parameter
    for the whole batch, from torch's global generator): clip, colour jitter, edge padding by half the
    size, a random affine map (+-15 deg, translation 1/16, scale 0.9-1.1, bilinear), a 5x5 Gaussian blur
    (sigma 0.001-0.5), centre crop back, a horizontal flip with p 0.5, Gaussian noise (std 0.005), clip."""
    height, width = x.shape[-2:]
    x = _color_jitter(x.clamp(0.0, 1.0))
    x = TF.pad(x, [int(height / 2)], padding_mode="edge")
    x = T.RandomAffine(degrees=(-15, 15), translate=(1 / 16, 1 / 16), scale=(0.9, 1.1),
                       interpolation=T.InterpolationMode.BILINEAR)(x)
    x = T.GaussianBlur(kernel_size=5, sigma=(0.001, 0.5))(x)
    x = TF.center_crop(x, [height, width])
    x = T.RandomHorizontalFlip(p=0.5)(x)
    x = x + (torch.randn(x.size()) * 0.005).to(x.device)
    return x.clamp(0.0, 1.0)


AUGMENTS = ("reference", "none")


class RoTTA(Adapter):
    """RoTTA (module docstring). ``forward(x)``: the teacher's logits of ``x``, then ``x`` goes into the
    memory bank sample by sample, with a student update every ``update_every`` samples.

    Defaults: the reference's (``alpha`` 0.05, ``capacity`` 64, ``update_every`` 64, ``nu`` 0.001,
    ``lambda_t`` = ``lambda_u`` = 1, Adam lr 1e-3, betas (0.9, 0.999)).
    """

    name = "rotta"
    stateful = True

    def __init__(self, model: nn.Module, lr: float = 1e-3, alpha: float = 0.05, nu: float = 0.001,
                 capacity: int = 64, update_every: int = 64, lambda_t: float = 1.0, lambda_u: float = 1.0,
                 augment: str = "reference", seed: int = 0):
        if not 0 < alpha <= 1 or not 0 <= nu <= 1:
            raise UserError(f"alpha must be in (0, 1] and nu in [0, 1], got {alpha} and {nu}")
        if capacity < 1 or update_every < 1:
            raise UserError(f"capacity and update_every must be >= 1, got {capacity} and {update_every}")
        if augment not in AUGMENTS:
            raise UserError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        teacher = copy.deepcopy(model).eval()  # before the base class hooks the student's BNs
        super().__init__(model)
        self.teacher = teacher
        for name, bn in bn_modules(self.teacher):
            bn.register_forward_pre_hook(functools.partial(self._check_values_per_channel, name))
        self.alpha, self.nu, self.augment = alpha, nu, augment
        self.capacity, self.update_every, self.lambda_t, self.lambda_u = capacity, update_every, lambda_t, lambda_u
        self.model.requires_grad_(False)
        self.teacher.requires_grad_(False)
        self.robust_bns = {"student": [bn for _, bn in bns_with_running_stats(self.model)],
                           "teacher": [bn for _, bn in bns_with_running_stats(self.teacher)]}
        for bn in self.robust_bns["student"] + self.robust_bns["teacher"]:
            bn.forward = functools.partial(robust_bn_forward, bn, alpha)
        self.params = [p for bn in self.robust_bns["student"] for p in (bn.weight, bn.bias) if p is not None]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = make_optimizer(self.params, "adam", lr, 0.0) if self.params else None
        data = getattr(model, "pretrained_cfg", None) or {}
        self.pixel_mean = torch.tensor(data.get("mean", IMAGENET_MEAN)).view(1, -1, 1, 1)
        self.pixel_std = torch.tensor(data.get("std", IMAGENET_STD)).view(1, -1, 1, 1)
        self.memory: Optional[CategoryBalancedMemory] = None  # built at the first batch (its class count)
        self.seen = 0
        self.updates = 0
        self.rng_state = torch.Generator().manual_seed(seed).get_state()
        self.snapshot()

    def state(self) -> Dict[str, Any]:
        memory = self.memory
        return {"model": self.model.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
                "memory": None if memory is None else memory.state(), "num_classes": 0 if memory is None else memory.num_classes,
                "seen": self.seen, "updates": self.updates, "rng_state": self.rng_state}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.teacher.load_state_dict(state["teacher"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.memory = None
        if state["memory"] is not None:
            self.memory = self._new_memory(state["num_classes"])
            self.memory.load_state(state["memory"])
        self.seen, self.updates, self.rng_state = state["seen"], state["updates"], state["rng_state"].cpu().clone()

    def _new_memory(self, num_classes: int) -> CategoryBalancedMemory:
        return CategoryBalancedMemory(self.capacity, num_classes, self.lambda_t, self.lambda_u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.teacher(x)
        self.passes.forward += x.shape[0]
        if not self.params:  # no BN to adapt: the source model
            return logits
        probs = logits.softmax(1)
        labels = probs.argmax(1).tolist()
        uncertainty = (-(probs * torch.log(probs + 1e-6)).sum(1)).tolist()
        if self.memory is None:
            self.memory = self._new_memory(logits.shape[1])
        for sample, label, u in zip(x, labels, uncertainty):
            self.memory.add(sample.detach().clone(), label, u)  # a copy: a view would keep the whole batch alive
            self.seen += 1
            if self.seen % self.update_every == 0:
                self._update()
        return logits

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's strong augmentation in pixel space, with this adapter's random stream."""
        if self.augment == "none":
            return x
        mean, std = self.pixel_mean.to(x), self.pixel_std.to(x)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            pixels = strong_augment(x * std + mean)
            self.rng_state = torch.get_rng_state()
        return (pixels - mean) / std

    def _update(self) -> None:
        """One student step on the memory bank, then the teacher's EMA step."""
        images, ages = self.memory.contents()
        x = torch.stack(images)
        augmented = self._augmented(x)
        for bn in self.robust_bns["student"] + self.robust_bns["teacher"]:
            bn.train()
        try:
            with torch.no_grad():
                target = self.teacher(x).softmax(1)
            with torch.enable_grad():
                log_probs = self.model(augmented).log_softmax(1)
                weights = timeliness_weights(ages, self.capacity, x.device)
                loss = (-(target * log_probs).sum(1) * weights).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        finally:
            for bn in self.robust_bns["student"] + self.robust_bns["teacher"]:
                bn.eval()
        self.passes.forward += 2 * x.shape[0]
        self.passes.backward += x.shape[0]
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.model.parameters()):
                t.copy_((1 - self.nu) * t + self.nu * s)
        self.updates += 1
