"""Weight averaging: an average of the student's weights kept beside them during training (``average.*``
settings; docs/training.md, "Weight averaging").

Two kinds, each following one reference's code:

- ``ema`` follows Wang et al. 2023 (DM-Improves-AT, ``gowal21uncovering/utils/watrain.py``: ``ema_update``,
  ``update_bn``): after every optimiser step the average becomes ``decay * average + (1 - decay) * weights``,
  with the decay ramped as ``min(decay, (1 + n) / (10 + n))`` over the n-th update (0, 1, ...), and its
  BatchNorm statistics are the raw model's. ReBAT's (RPAT_SOTAs ``moving_average``) is the same update with a
  constant decay (``warmup: false``) and the statistics averaged with it (``bn: ema``).
- ``swa`` follows DA-Alone (``src/utils/swa.py``, ``src/utils/train.py``): after every ``every``-th step of an
  epoch the average moves by ``alpha`` towards the weights, ``alpha = 1 / (n + 1)`` (the equal-weight mean of
  the n + 1 weights sampled so far) or, with a decay, ``1 - decay`` after a first update that copies the
  weights; at the end of each epoch its BatchNorm statistics are recomputed over the training images.

Common to both, as in the three codes: until ``start`` epochs are done the average is a copy of the raw
weights (Wang et al. and ReBAT update it with decay 0; DA-Alone's first update copies them). The update comes
after the optimiser step and after a step's weight perturbation is removed, so only real weights are
averaged. Every process of a torchrun job keeps the same average: its parameters are a function of the same
weights, its BatchNorm statistics are rank 0's where they are copied or averaged (as the raw model's, which
validation and the checkpoint take from rank 0), and summed over the ranks where they are recomputed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..attacks import model_mode
from ..checkpoints.averaged_weights import PREFIX
from ..checkpoints.checkpoint import load_state_strict
from ..checkpoints.model_spec import ModelSpec
from ..config import AverageConfig
from . import parallel

RUNNING_STATISTICS = ("running_mean", "running_var")


def _norms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: module for name, module in model.named_modules() if isinstance(module, _BatchNorm)}


def build_average(settings: AverageConfig, student: nn.Module, spec: ModelSpec, device: torch.device,
                  channels_last: bool = False) -> WeightAverage:
    """The run's average of ``student`` (a network ``spec`` builds), on ``device``."""
    # Built aside from the run's random stream: its initial weights are replaced by the student's anyway.
    with torch.random.fork_rng(devices=[]):
        model = spec.build()
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return WeightAverage(settings, student, model)


class WeightAverage:
    """The average of ``student``'s weights, as ``settings`` (a resolved ``average`` section) say, held in
    ``model`` (a network of the student's architecture, whose own weights are replaced by the student's)."""

    def __init__(self, settings: AverageConfig, student: nn.Module, model: nn.Module) -> None:
        assert settings.kind in ("ema", "swa") and settings.bn is not None, "not resolved"
        self.settings = settings
        self.model = model.requires_grad_(False).eval()
        raw = dict(student.named_parameters())
        self._pairs = [(average, raw[name]) for name, average in self.model.named_parameters()]
        raw_norms = _norms(student)
        self._norm_pairs = [(module, raw_norms[name]) for name, module in _norms(self.model).items()]
        self.updates = 0  # averaged updates since the start (n)
        self._copy()

    # ----------------------------------------------------------------- updates
    def step(self, epoch: int, batch_number: int) -> None:
        """After the optimiser step that ended batch ``batch_number`` (1-based) of ``epoch`` (0-based)."""
        settings = self.settings
        if epoch < settings.start:
            self._copy()
            return
        if batch_number % settings.every:
            return
        keep, take = self._weights()
        if settings.kind == "swa" and settings.decay is not None and self.updates == 0:
            self._copy()  # DA-Alone's first update loads the weights, then averages them with themselves
        with torch.no_grad():
            averages = [average for average, _ in self._pairs]
            torch._foreach_mul_(averages, keep)
            torch._foreach_add_(averages, torch._foreach_mul([raw for _, raw in self._pairs], take))
            if settings.bn == "copy":
                self._copy_statistics()
            elif settings.bn == "ema":
                for average, raw in self._norm_pairs:
                    for name in RUNNING_STATISTICS:
                        getattr(average, name).mul_(keep).add_(getattr(raw, name) * take)
                    average.num_batches_tracked.copy_(raw.num_batches_tracked)
        self.updates += 1

    def _weights(self) -> tuple[float, float]:
        """(keep, take) of this update: new average = keep * average + take * weights, in the arithmetic of the
        code followed (Wang et al. and ReBAT take ``1 - decay``; DA-Alone keeps ``1 - alpha``)."""
        settings, n = self.settings, self.updates
        if settings.kind == "ema" or settings.decay is not None:
            decay = settings.decay
            assert decay is not None, "not resolved"
            if settings.warmup:
                decay = min(decay, (1.0 + n) / (10.0 + n))
            if settings.kind == "ema":
                return decay, 1 - decay
            alpha = 1 - decay
        else:
            alpha = 1.0 / (n + 1)
        return 1.0 - alpha, alpha

    def end_epoch(self, epoch: int, images: Iterable[torch.Tensor]) -> None:
        """At the end of epoch ``epoch`` (0-based), before the average is validated or saved: its BatchNorm
        statistics copied from the raw model (Wang et al.'s ``update_bn``) or recomputed over ``images``, the
        epoch's training images as augmented for it (DA-Alone's ``bn_update``)."""
        if epoch < self.settings.start or not self.updates:
            return
        if self.settings.bn == "copy":
            with torch.no_grad():
                self._copy_statistics()
        elif self.settings.bn == "recompute":
            recompute_statistics(self.model, images)

    def _copy(self) -> None:
        with torch.no_grad():
            for average, raw in self._pairs:
                average.copy_(raw)
            self._copy_statistics()

    def _copy_statistics(self) -> None:
        for average, raw in self._norm_pairs:
            for name in (*RUNNING_STATISTICS, "num_batches_tracked"):
                getattr(average, name).copy_(getattr(raw, name))

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}.{key}": value.detach().cpu() for key, value in self.model.state_dict().items()}

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``average`` metadata."""
        return {"kind": self.settings.kind, "updates": self.updates}

    def load(self, state: dict[str, torch.Tensor], record: dict[str, Any], source: Path) -> None:
        load_state_strict(self.model, state, source)
        self.updates = int(record["updates"])


@torch.no_grad()
def recompute_statistics(model: nn.Module, images: Iterable[torch.Tensor]) -> None:
    """BatchNorm running statistics recomputed from scratch over ``images`` in train mode, each batch weighted by
    its size (DA-Alone's ``bn_update``: momentum ``b / (n + b)`` at a batch of b after n images). Under torchrun
    each rank passes its share and the ranks' statistics are combined, weighted by their images."""
    norms = list(_norms(model).values())
    if not norms:
        return
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
    seen = 0
    with model_mode(model, "train"):
        for x in images:
            size = len(x)
            for module in norms:
                module.momentum = size / (seen + size)
            model(x)
            seen += size
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    if parallel.is_distributed():
        device = norms[0].running_mean.device
        total = parallel.all_reduce_sum(torch.tensor([float(seen)], dtype=torch.float64, device=device)).item()
        for module in norms:
            for name in RUNNING_STATISTICS:
                statistic = getattr(module, name)
                statistic.mul_(seen)
                dist.all_reduce(statistic, op=dist.ReduceOp.SUM)
                statistic.div_(total)
            dist.all_reduce(module.num_batches_tracked, op=dist.ReduceOp.SUM)
