"""The training attack through a compiled network, three ways, on the same weights and input.

``torch.autograd.grad(loss, x_adv)`` through an eager network skips every weight gradient; through a
compiled one (one backward for all inputs of the compiled region) it computes them all and throws
them away. The ways: the compiled network as it is; its uncompiled (eager) forward; and the compiled
network with its weights frozen during the forward (``lbgat.attacks.input_only``, what lbgat's
attacks do under ``--compile``), which keeps compile's fusion and the input-only backward. Measured:
the time of a 10-step KL attack (TRADES/LBGAT's, student in eval mode) and the number of convolution
backwards that computed a weight gradient (counted in one extra run; 0 is what an input-only
gradient needs).

    python benchmarks/compile_attack.py                                   # CPU, wrn-10-1, batch 32
    python benchmarks/compile_attack.py --device cuda --model wrn-34-10 --batch-size 128

The first attack of each way is its warm-up (for the compiled one, the compilation) and is not timed;
then the two alternate (the order flips every repeat) and the medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lbgat.attacks import pgd  # noqa: E402
from lbgat.attacks.input_only import FrozenWeights  # noqa: E402
from train_step import EPS, STEP_SIZE, add_step_arguments, step_setup, synchronize  # noqa: E402


class WeightGradientCount(TorchDispatchMode):
    """Convolution backwards asked for the weight's gradient (``output_mask[1]``) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default and args[-1][1]:
            self.count += 1
        return func(*args, **(kwargs or {}))


class EagerForward(nn.Module):
    """Runs ``network`` without the compiled wrapper that ``nn.Module.compile()`` put in place (what
    lbgat's attacks did under --compile before they froze the weights instead)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # _call_impl is what nn.Module.__call__ runs when no compiled version is set: hooks, then forward.
        return self.network._call_impl(x)


def count_weight_gradients(network: nn.Module, x: torch.Tensor, steps: int) -> WeightGradientCount:
    """One attack, counting in its backwards only (a dispatch mode active around a compiled forward
    would make torch.compile fall back to eager)."""
    counter, gradient = WeightGradientCount(), torch.autograd.grad

    def counted(*args, **kwargs):
        with counter:
            return gradient(*args, **kwargs)

    with patch.object(torch.autograd, "grad", counted):
        attack(network, x, steps)
    return counter


def attack(network: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    return pgd(network, x, None, eps=EPS, step_size=STEP_SIZE, steps=steps, objective="kl", start="normal")


def timed_attack(network: nn.Module, x: torch.Tensor, steps: int) -> float:
    synchronize()
    started = time.perf_counter()
    attack(network, x, steps)
    synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, model="wrn-10-1", teacher="wrn-10-1", batch_size=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generation)")
    args = parser.parse_args(argv)
    device, batch, source, student, _ = step_setup(args)
    student.compile(backend=args.backend)  # in place, as lbgat train --compile does
    ways = {"through the compiled network": student, "through its eager forward": EagerForward(student),
            "through the compiled network, weights frozen (lbgat)": FrozenWeights(student)}
    print(f"{args.attack_steps}-step KL attack on {args.model}, batch {args.batch_size}, {args.backend} backend, "
          f"{device}, torch {torch.__version__}; data: {source}")

    counts, times = {}, {name: [] for name in ways}
    for name, network in ways.items():
        warm_up = timed_attack(network, batch.x, args.attack_steps)
        counts[name] = count_weight_gradients(network, batch.x, args.attack_steps).count
        print(f"  {name}: first attack {warm_up:.1f} s, {counts[name]} weight-gradient convolution backwards",
              flush=True)
    for repeat in range(args.repeats):  # alternating, the order flipped every repeat
        for name in list(ways) if repeat % 2 == 0 else list(ways)[::-1]:
            times[name].append(timed_attack(ways[name], batch.x, args.attack_steps))
    medians = {name: statistics.median(times[name]) for name in ways}
    compiled = medians["through the compiled network"]
    print()
    print("| attack | s per attack | speed vs the compiled network | weight-gradient conv backwards per attack |")
    print("|---|---:|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {compiled / seconds:.2f}x | {counts[name]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
