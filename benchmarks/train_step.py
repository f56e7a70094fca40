"""One LBGAT+TRADES training step: lbgat's against a faithful reference of the official computation.

The reference is written here from the spec (methods.md 6.2): the official ``lbgat_loss`` attack
takes input-only gradients with ``torch.autograd.grad`` but recomputes the student's clean forward
(with gradients enabled) at every attack step; then one SGD optimiser updates both networks.
lbgat computes that clean prediction once per batch. Both run in fp32 on identical weights and
tensors; the first step of each is checked for equal losses before anything is timed.

    python benchmarks/train_step.py                      # resnet18 + resnet18-lbgat, batch 128, 2 threads
    python benchmarks/train_step.py --model wrn-10-1 --teacher wrn-10-1 --batch-size 32   # a quick look

Prints images/s of each, the whole-step and attack-phase ratios (medians of interleaved repeats)
and the largest relative difference between the two implementations' loss terms.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lbgat.data import load_dataset
from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method
from lbgat.models import create_model
from lbgat.rng import Stream

EPS, STEP_SIZE, STEPS = 0.031, 0.007, 10
SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
DEFAULT_DATA = Path(os.environ.get("LBGAT_CIFAR10_MINI") or SHARED_MINI)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    """Accumulates the wall time of calls to a wrapped function (the attack phase)."""

    def __init__(self, function: Callable) -> None:
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        synchronize()
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            synchronize()
            self.seconds += time.perf_counter() - started


def reference_attack(student: nn.Module, x: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The official lbgat_loss attack: clean prediction recomputed at each step, with gradients on."""
    student.eval()
    x_adv = x.detach() + start
    for _ in range(STEPS):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = F.kl_div(F.log_softmax(student(x_adv), dim=1), F.softmax(student(x), dim=1), reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + STEP_SIZE * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    student.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


class ReferenceStep:
    """Official per-batch computation: attack, then three train-mode forwards and one SGD step."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float) -> None:
        self.student, self.teacher, self.alpha = student, teacher, alpha
        self.optimizer = make_optimizer(student, teacher)
        self.attack = Timer(reference_attack)

    def __call__(self, batch: Batch, start: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv = self.attack(self.student, batch.x, start)
        self.optimizer.zero_grad()
        out_adv = self.student(x_adv)
        out_natural = self.student(batch.x)
        out_teacher = self.teacher(batch.x)
        mse = F.mse_loss(out_adv, out_teacher)
        ce = F.cross_entropy(out_teacher, batch.y)
        kl = F.kl_div(F.log_softmax(out_adv, dim=1), F.softmax(out_natural, dim=1), reduction="sum") / len(batch)
        loss = mse + ce + self.alpha * kl
        loss.backward()
        self.optimizer.step()
        return {"loss": loss, "mse": mse, "ce_teacher": ce, "kl": kl}


class LbgatStep:
    """lbgat's own step: the library's method, optimiser over its trained networks."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float) -> None:
        attack = TrainAttack(eps=EPS, step_size=STEP_SIZE, steps=STEPS, start="normal")
        self.method = create_method("lbgat-trades", student, teacher=teacher, params={"alpha": alpha}, attack=attack)
        self.optimizer = make_optimizer(student, teacher)
        self.attack = Timer(self.method.adversarial)
        self.method.adversarial = self.attack  # time the attack phase inside the real forward

    def __call__(self, batch: Batch, start: torch.Tensor) -> dict[str, torch.Tensor]:
        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.method(batch)
        terms["loss"].backward()
        self.optimizer.step()
        return terms


def make_optimizer(student: nn.Module, teacher: nn.Module) -> torch.optim.SGD:
    groups = [{"params": list(student.parameters())}, {"params": list(teacher.parameters())}]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=2e-4)


def load_batch(batch_size: int, data_root: Path | None, device: torch.device) -> tuple[Batch, str]:
    if data_root is not None and data_root.exists():
        images = load_dataset("cifar10", data_root).train
        x = images.images[:batch_size].float() / 255
        y = images.labels[:batch_size]
        source = f"the first {batch_size} cifar10 training images in {data_root}"
    else:
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(batch_size, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch_size,), generator=generator)
        source = f"{batch_size} random 3x32x32 images (no --data-root found)"
    return Batch(x.to(device), y.to(device), torch.arange(batch_size, device=device), epoch=0, seed=1), source


def max_relative_difference(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    return max(
        abs(ours[name].item() - value.item()) / max(abs(value.item()), 1e-12) for name, value in reference.items()
    )


def add_step_arguments(parser: argparse.ArgumentParser, *, model: str, teacher: str, batch_size: int) -> None:
    """The flags every step benchmark shares: networks, batch, repeats, threads, data, device."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--teacher", default=teacher)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="cifar10 folder (default cifar10-mini)")
    parser.add_argument("--device", default="cpu", help="cpu (the default) or cuda")


def step_setup(args: argparse.Namespace) -> tuple[torch.device, Batch, str, nn.Module, nn.Module]:
    """Threads, device, the batch, and the student and teacher initialised from seed 0."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch, source = load_batch(args.batch_size, args.data_root, device)
    torch.manual_seed(0)
    student = create_model(args.model, num_classes=10).to(device)
    teacher = create_model(args.teacher, num_classes=10).to(device)
    return device, batch, source, student, teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, model="resnet18", teacher="resnet18-lbgat", batch_size=128)
    parser.add_argument("--alpha", type=float, default=6.0)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative loss difference accepted")
    args = parser.parse_args(argv)

    device, batch, source, student, teacher = step_setup(args)
    ours = LbgatStep(copy.deepcopy(student), copy.deepcopy(teacher), args.alpha)
    reference = ReferenceStep(copy.deepcopy(student), copy.deepcopy(teacher), args.alpha)
    start = 0.001 * batch.rng.normal(Stream.TRAIN_ATTACK_START, tuple(batch.x.shape[1:]))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"LBGAT+TRADES step, {args.model} student + {args.teacher} teacher, batch {args.batch_size}, "
          f"alpha {args.alpha:g}, {STEPS}-step attack, fp32, {where}, torch {torch.__version__}")
    print(f"data: {source}")
    # Check on identical weights and tensors (this first step also warms both up).
    difference = max_relative_difference(ours(batch, start), reference(batch, start))
    parameters = max((a - b).abs().max().item() for a, b in zip(
        ours.method.parameters(), [*reference.student.parameters(), *reference.teacher.parameters()], strict=True))
    print(f"check: max relative loss difference {difference:.2e}, max parameter difference after the step "
          f"{parameters:.2e}")
    if difference > args.tolerance:
        print(f"FAILED: the two steps disagree by more than {args.tolerance:g}", file=sys.stderr)
        return 1

    timings: dict[str, list[tuple[float, float]]] = {"lbgat": [], "reference": []}
    for repeat in range(args.repeats):
        order = [("lbgat", ours), ("reference", reference)]
        for name, step in order if repeat % 2 == 0 else order[::-1]:
            step.attack.seconds = 0.0
            synchronize()
            started = time.perf_counter()
            step(batch, start)
            synchronize()
            timings[name].append((time.perf_counter() - started, step.attack.seconds))
            total, attack = timings[name][-1]
            print(f"  repeat {repeat + 1} {name:>9}: step {total:7.2f} s (attack {attack:7.2f} s)", flush=True)

    def medians(name: str) -> tuple[float, float]:
        return (statistics.median(t for t, _ in timings[name]), statistics.median(a for _, a in timings[name]))

    ours_step, ours_attack = medians("lbgat")
    reference_step, reference_attack_seconds = medians("reference")
    print()
    print(f"{'':10} {'step s':>8} {'attack s':>9} {'images/s':>9}")
    for name, (step_seconds, attack_seconds) in (("reference", (reference_step, reference_attack_seconds)),
                                                 ("lbgat", (ours_step, ours_attack))):
        print(f"{name:10} {step_seconds:8.2f} {attack_seconds:9.2f} {args.batch_size / step_seconds:9.2f}")
    print(f"whole-step speed-up {reference_step / ours_step:.2f}x, attack-phase speed-up "
          f"{reference_attack_seconds / ours_attack:.2f}x (medians of {args.repeats}); "
          f"max relative loss difference {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
