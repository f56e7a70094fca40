"""Each speed feature against its absence: one LBGAT+TRADES training step, side by side in one process.

For every feature asked for (channels_last, bf16, fp16, compile, tf32) two copies of the same networks,
IEEE fp32/contiguous/eager and with the feature, take a step on identical weights and tensors; the
relative difference of their loss terms is printed, then the two alternate (the order flips every
repeat) and the medians give the speed-up.

    python benchmarks/speed_features.py                                   # CPU: wrn-10-1 pair, batch 32
    python benchmarks/speed_features.py --device cuda --model wrn-34-10 --teacher resnet18-lbgat \\
        --batch-size 128 --features channels_last,bf16,fp16,compile,tf32  # the paper's setting on a GPU

Each feature's first step (its warm-up; for compile, the compilation) is not timed. The projected
epoch is 50,000 images / images per second, the CIFAR training set.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from unittest.mock import patch

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile_attack import EagerForward  # noqa: E402
from lbgat.attacks.input_only import FrozenWeights  # noqa: E402
from lbgat.data.loader import Batch  # noqa: E402
from lbgat.methods import Method, TrainAttack, create_method  # noqa: E402
from lbgat.runtime.arithmetic import float32_mode  # noqa: E402
from lbgat.runtime.compilation import compile_options, step_begins  # noqa: E402
from lbgat.runtime.precision import Precision  # noqa: E402
from lbgat.train.setup import sgd_kernel as sgd_kernel_options  # noqa: E402
from train_step import EPS, STEP_SIZE, add_step_arguments, step_setup, synchronize  # noqa: E402

FEATURES = ("channels_last", "bf16", "fp16", "compile", "tf32")
# Under compile, what the attack calls instead of the student (see Variant).
ATTACK_FORWARDS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "eager": EagerForward, "compiled": lambda network: network, "frozen": FrozenWeights}
EPOCH_IMAGES = 50_000


class Variant:
    """A method, its optimiser and how a step runs (precision, memory format, compiled or not).

    ``feature`` is one of FEATURES or a set of them. With compile, ``attack`` says which forward of
    the student the attack calls: "frozen" (lbgat's: the compiled one with the weights frozen during
    the forward, lbgat.attacks.input_only), "eager" (the uncompiled one) or "compiled" (the compiled
    one as it is, computing every weight gradient at every attack step). ``float32`` is the float32
    setting during the step (lbgat.runtime.arithmetic.FLOAT32_MODES; None: "tf32" for the "tf32"
    feature, else "ieee", the baseline every figure of docs/performance.md was measured against). ``compile_mode`` and
    ``sgd_kernel`` are lbgat's ``--compile-mode`` and ``--sgd-kernel``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, feature: str | Iterable[str] | None,
                 device: torch.device, steps: int, *, attack: str = "frozen", float32: str | None = None,
                 compile_mode: str = "default", sgd_kernel: str = "auto") -> None:
        features = {feature} if isinstance(feature, str) else set(feature or ())
        self.channels_last = "channels_last" in features
        self.precision = Precision(next((name for name in ("bf16", "fp16") if name in features), "fp32"), device)
        self.compiled = "compile" in features
        self.compile_mode = compile_mode
        self.method: Method = create_method(
            "lbgat-trades", student, teacher=teacher, params={"alpha": 6.0},
            attack=TrainAttack(eps=EPS, step_size=STEP_SIZE, steps=steps, start="normal", compiled=self.compiled,
                               compile_mode=compile_mode))
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if self.compiled:  # as lbgat train --compile --compile-mode does
            student.compile(**compile_options(compile_mode))
            teacher.compile(**compile_options(compile_mode))
        self.attack_forward = ATTACK_FORWARDS[attack] if self.compiled else None
        self.float32 = ("tf32" if "tf32" in features else "ieee") if float32 is None else float32
        self.optimizer = torch.optim.SGD(self.method.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4,
                                         **sgd_kernel_options(sgd_kernel))

    def __call__(self, batch: Batch) -> dict[str, float]:
        """One step; its loss terms read back (which waits for the device to finish the step)."""
        return {name: float(value.detach()) for name, value in self.step(batch).items()}

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One training step, as lbgat's trainer takes it; nothing read back."""
        if self.channels_last:
            batch = Batch(batch.x.contiguous(memory_format=torch.channels_last), batch.y, batch.index, batch.epoch,
                          batch.seed)
        if self.compiled:
            step_begins(self.compile_mode)
        with ExitStack() as settings:
            settings.enter_context(float32_mode(self.float32))
            if self.attack_forward is not None:
                settings.enter_context(patch("lbgat.methods.base.input_only", self.attack_forward))
            self.method.train()
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                terms = self.method(batch)
            self.precision.backward(terms["loss"])
            self.precision.step(self.optimizer)
        return terms


def timed(step: Variant, batch: Batch) -> float:
    synchronize()
    started = time.perf_counter()
    step(batch)
    synchronize()
    return time.perf_counter() - started


def relative_gap(left: dict[str, float], right: dict[str, float]) -> float:
    """Of the total loss: a single term (the TRADES KL at initialisation) can be close to zero."""
    return abs(left["loss"] - right["loss"]) / max(abs(right["loss"]), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, model="wrn-10-1", teacher="wrn-10-1", batch_size=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--features", default="channels_last,bf16,compile",
                        help=f"comma-separated, from {', '.join(FEATURES)}")
    args = parser.parse_args(argv)
    features = [name for name in args.features.split(",") if name]
    unknown = sorted(set(features) - set(FEATURES))
    if unknown:
        parser.error(f"unknown feature(s) {', '.join(unknown)}; choose from {', '.join(FEATURES)}")

    device, batch, source, student, teacher = step_setup(args)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"LBGAT+TRADES step, {args.model} student + {args.teacher} teacher, batch {args.batch_size}, "
          f"{args.attack_steps}-step attack, {where}, torch {torch.__version__}")
    print(f"data: {source}")

    rows = []
    for feature in features:
        base = Variant(copy.deepcopy(student), copy.deepcopy(teacher), None, device, args.attack_steps)
        fast = Variant(copy.deepcopy(student), copy.deepcopy(teacher), feature, device, args.attack_steps)
        warm_started = time.perf_counter()
        gap = relative_gap(fast(batch), base(batch))  # identical weights and tensors; also the warm-up
        warm_up = time.perf_counter() - warm_started
        times: dict[str, list[float]] = {"off": [], "on": []}
        for repeat in range(args.repeats):
            order = [("off", base), ("on", fast)]
            for name, variant in order if repeat % 2 == 0 else order[::-1]:
                times[name].append(timed(variant, batch))
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        rows.append((feature, off, on, gap))
        print(f"  {feature:>13}: off {off:7.3f} s, on {on:7.3f} s -> {off / on:5.2f}x; first-step relative loss gap "
              f"{gap:.2e} (warm-up incl. both first steps {warm_up:.1f} s)", flush=True)

    print()
    print("| feature | off s/step | on s/step | speed-up | images/s on | projected epoch on | loss gap |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for feature, off, on, gap in rows:
        rate = args.batch_size / on
        print(f"| {feature} | {off:.3f} | {on:.3f} | {off / on:.2f}x | {rate:.1f} | "
              f"{EPOCH_IMAGES / rate / 60:.1f} min | {gap:.1e} |")
    if rows:
        off = statistics.median(row[1] for row in rows)
        print(f"fp32 baseline: {args.batch_size / off:.1f} images/s, "
              f"projected epoch {EPOCH_IMAGES * off / args.batch_size / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
