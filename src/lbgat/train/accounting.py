"""Where training stands, and the sums of the loss terms it reports (per log interval and per epoch)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..runtime.collectives import all_reduce_sum


@dataclass
class Position:
    """Where training stands: the next batch to run (0-indexed epoch and batch) and steps done."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0


@dataclass
class EpochTotals:
    """Running sums of the loss terms within the current epoch (kept in checkpoints for exact resume)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

    def add(self, values: dict[str, float], steps: int, seconds: float) -> None:
        """A flushed log interval: its summed terms, optimiser steps and seconds."""
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += steps
        self.seconds += seconds

    def means(self) -> dict[str, float]:
        return {name: total / self.steps for name, total in self.sums.items()} if self.steps else {}


@dataclass
class LogInterval:
    """The loss terms of the steps since the last flush, summed on the device: they are read (one host
    sync, and under torchrun one all-reduce) once per log interval, since per-step reads would stall a
    GPU's pipeline."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0  # optimiser steps taken (skipped steps add nothing)
    started: float | None = None  # when the interval's first step began

    def begin_step(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], weight: float | None) -> None:
        """One step's terms; ``weight`` (under torchrun) is this rank's share of the global batch."""
        for name, value in terms.items():
            # float64 keeps the epoch means independent of where log intervals (or a resume) fall.
            total = value.detach().double()
            self.sums[name] = self.sums.get(name, 0.0) + (total * weight if weight is not None else total)
        self.steps += 1

    def read(self, sharded: bool) -> dict[str, float]:
        """The summed terms on the host; ``sharded`` (torchrun with a split batch): summed over the ranks."""
        pending = self.sums
        names = list(pending)
        if sharded and names:
            summed = all_reduce_sum(torch.stack([pending[name] for name in names]))
            pending = dict(zip(names, summed.unbind(), strict=True))
        return {name: float(total) for name, total in pending.items()}
