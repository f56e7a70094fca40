"""Natural (standard) training: cross-entropy on clean images."""

from __future__ import annotations

import torch.nn.functional as F

from ..data.loader import Batch
from .base import LossTerms, Method, NoParams
from .registry import register_method


@register_method
class Natural(Method[NoParams]):
    name = "natural"
    description = "standard training on clean images: CE(f(x), y)"

    def forward(self, batch: Batch) -> LossTerms:  # no training attack: the step is the loss
        ce = F.cross_entropy(self.student(batch.x), batch.y)
        return {"loss": ce, "ce": ce}
