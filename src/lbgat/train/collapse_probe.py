"""The trainer's collapse flag: at the end of every epoch, the share of the student's clean predictions that
go to its most predicted class (thresholds and why in :mod:`lbgat.evaluate.collapse`).

Measured on the held-out images when the run holds some out, else on the first ``PROBE_SIZE`` training
images (by dataset index, unaugmented): the same fixed images every epoch, so the share is comparable from
epoch to epoch. The training batches themselves would be a worse signal: most methods classify their
adversarial versions, not the clean images, and not every method computes clean logits at all. The cost is
one clean forward pass in eval mode over at most 1,000 images (the default held-out slice is 1,000), less than
one adversarial training step of PGD-10 on a batch of 128; it changes no weight, no BatchNorm statistic and
no random stream, so resumed runs stay bit-for-bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.loader import DeviceLoader
from ..evaluate.collapse import prediction_share, predictions_of
from .setup import RunParts

PROBE_SIZE = 1000


class CollapseProbe:
    def __init__(self, parts: RunParts) -> None:
        held_out = len(parts.val_indices) > 0
        indices = parts.val_indices if held_out else parts.train_indices[:PROBE_SIZE]
        self.where = "held-out images" if held_out else "training images"
        # One process, whatever the world size: only the main process logs the flag.
        self.loader = DeviceLoader(parts.dataset.train, batch_size=parts.config.val.batch_size,
                                   seed=parts.config.seed, device=parts.device, indices=indices,
                                   channels_last=parts.config.channels_last)

    def measure(self, model: nn.Module) -> dict[str, Any]:
        """The epoch's ``collapse`` record for metrics.jsonl."""
        batches = list(self.loader.batches(0))
        predictions, num_classes = predictions_of(model, [batch.x for batch in batches])
        labels = torch.cat([batch.y for batch in batches]) if batches else torch.zeros(0, dtype=torch.int64)
        share = prediction_share(predictions, labels, num_classes)
        return {"collapsed": share.collapsed, "verdict": share.verdict, "on": self.where, **share.to_dict()}


def collapse_warning(record: dict[str, Any] | None) -> str | None:
    """The words the epoch's log line adds when the predictions collapsed (fail) or lean on one class (warn)."""
    if not record or record.get("verdict") not in ("warn", "fail"):
        return None
    what = "COLLAPSED to one class" if record["verdict"] == "fail" else "leaning on one class"
    return (f"predictions {what}: {100 * record['share']:.1f}% of {record['n']} {record['on']} are class "
            f"{record['top_class']} ({100 * record['label_share']:.1f}% of their labels)")
