"""torch's OneCycleLR driven as DM-Improves-AT's train-wa.py drives its "cosinew" schedule: what lbgat's onecycle
schedule is compared against."""

from __future__ import annotations

import torch


def torch_one_cycle(epochs: int, lr: float, pct_start: float, *,
                    cycle_momentum: bool = True) -> list[tuple[float, float]]:
    """(lr, momentum) each epoch trains at: the scheduler made with the optimiser (SGD momentum 0.9, Nesterov, as
    the official init_optimizer), read at the epoch's start, stepped at its end (watrain.py's train). The step
    after the last epoch is left out: it changes nothing trained (and with pct_start 1 torch divides by zero)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=pct_start, total_steps=epochs,
                                                    cycle_momentum=cycle_momentum)
    trained = []
    for epoch in range(1, epochs + 1):
        group = optimizer.param_groups[0]
        trained.append((group["lr"], group["momentum"]))
        optimizer.step()
        if epoch < epochs:
            scheduler.step()
    return trained
