"""Running a model in a given BatchNorm/dropout mode and putting every module back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

from torch import nn

BNMode = Literal["eval", "train"]
BN_MODES: tuple[str, ...] = get_args(BNMode)


@contextmanager
def model_mode(model: nn.Module, mode: BNMode) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` for the block, then restore each submodule's own flag.

    Restoring per submodule (not just ``model.train(previous)``) keeps models whose parts are
    deliberately in different modes, e.g. a frozen teacher inside a training wrapper, as they were.
    """
    if mode not in BN_MODES:
        raise ValueError(f"bn mode must be one of {BN_MODES}, got {mode!r}")
    saved = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training
