"""Train a few hundred steps and log, per step, what decides whether a softmax underflows (issue 20).

    OMP_NUM_THREADS=1 PYTHONPATH=src python tools/underflow_probe.py --method trades --steps 100 \
        --log runs/probe-trades.jsonl

Builds the run exactly as ``lbgat train`` does (``build_config`` -> ``resolve`` -> ``build_parts``: the
method's defaults, the dataset's augmentation, the SGD optimiser and the epoch-1 learning rate of the
schedule, warm-up included where the method's defaults turn it on), then runs the trainer's step:
zero_grad, the method's forward, backward, optimiser step. Each step writes one JSON line:

- loss and its terms; whether every parameter gradient is finite;
- max |logit| of the student in eval mode (the attack's forwards) and in train mode (the loss's);
- the largest clean logit gap (max - min over classes) among the train-mode forwards on the clean
  batch, and how many of their softmax probabilities are exactly 0: where that count is > 0 the KL
  target underflows, which before issue 20 made the whole gradient NaN.

``--plain-softmax`` puts back ``F.softmax`` for the KL targets (the behaviour before issue 20), to show
where the old code stops.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lbgat.config import build_config
from lbgat.methods import mart, trades
from lbgat.train.schedule import lr_at
from lbgat.train.setup import build_parts, load_data, resolve

SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


class LogitWatch:
    """Records, for one step, the student's outputs by mode (eval: attack; train: loss) and input."""

    def __init__(self, student: nn.Module) -> None:
        self.records: list[tuple[bool, torch.Tensor, torch.Tensor]] = []
        student.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.records.append((module.training, inputs[0].detach(), output.detach()))

    def summary(self, clean: torch.Tensor) -> dict[str, Any]:
        eval_max = max((out.abs().max().item() for training, _, out in self.records if not training), default=0.0)
        train_max = max((out.abs().max().item() for training, _, out in self.records if training), default=0.0)
        gaps, zeros = [], 0
        for training, inputs, out in self.records:
            if training and inputs.shape == clean.shape and torch.equal(inputs, clean):
                gaps.append((out.max(dim=1).values - out.min(dim=1).values).max().item())
                zeros += int((F.softmax(out.float(), dim=1) == 0).sum())
        self.records.clear()
        return {"max_abs_logit_eval": eval_max, "max_abs_logit_train": train_max,
                "max_clean_gap": max(gaps, default=float("nan")), "zero_clean_probs": zeros}


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="trades")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--teacher", default=None, help="default: the model, for methods with a teacher")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=SHARED_MINI)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as lbgat train --set")
    parser.add_argument("--plain-softmax", action="store_true", help="the KL targets without the limit (before)")
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, one per step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.plain_softmax:
        trades.softmax_with_limit = mart.softmax_with_limit = F.softmax  # type: ignore[assignment]
    flags = {"method.name": args.method, "model": args.model, "data.name": "cifar10", "data.root": str(args.data_root),
             "batch_size": args.batch_size, "optim.lr": args.lr, "seed": args.seed, "device": "cpu",
             "out": "/tmp/underflow-probe-unused"}
    needs_teacher = args.method.startswith(("lbgat", "bgat"))
    if needs_teacher:
        flags["teacher"] = args.teacher or args.model
    config = build_config(flags=flags, overrides=args.set)
    dataset = load_data(config)
    config = resolve(config, dataset.image_shape)
    parts = build_parts(config, dataset)
    lr = lr_at(1, config.optim.lr, config.schedule)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    watch = LogitWatch(parts.method.student)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("w") as log:
        log.write(json.dumps({"event": "started", "method": args.method, "model": args.model, "lr_epoch1": lr,
                              "batch_size": args.batch_size, "seed": args.seed,
                              "plain_softmax": args.plain_softmax, "overrides": args.set}) + "\n")
        log.flush()
        step = 0
        epoch = 0
        while step < args.steps:
            parts.method.train()
            for batch in parts.train_loader.batches(epoch):
                started = time.perf_counter()
                parts.optimizer.zero_grad(set_to_none=True)
                terms = parts.method(batch)
                terms["loss"].backward()
                grads = [p.grad for p in parts.method.parameters() if p.grad is not None]
                finite = all(bool(torch.isfinite(g).all()) for g in grads)
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
                parts.optimizer.step()
                step += 1
                record = {"step": step, "epoch": epoch + 1, "lr": lr, "grads_finite": finite,
                          "grad_norm": finite_or_none(norm),
                          **{name: finite_or_none(float(value.detach())) for name, value in terms.items()},
                          **watch.summary(batch.x), "seconds": round(time.perf_counter() - started, 2)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                if step >= args.steps or record["loss"] is None:
                    break
            else:
                epoch += 1
                continue
            break


if __name__ == "__main__":
    main()
