"""One LBGAT+TRADES training step: lbgat's against a faithful reference of the official computation.

The reference is written here from the spec (methods.md 6.2): the official ``lbgat_loss`` attack
takes input-only gradients with ``torch.autograd.grad`` but recomputes the student's clean forward
(with gradients enabled) at every attack step; then one SGD optimiser updates both networks.
lbgat computes that clean prediction once per batch, and at alpha = 0 runs the student's clean
forward without a graph (the official code back-propagates through it with weight 0); at alpha = 0
that is also timed against lbgat's own step with the graph kept. All run in fp32 on identical weights
and tensors; the first step of each is checked for equal losses (and, against the step with the
graph, equal parameters after the step) before anything is timed.

    python benchmarks/train_step.py                      # resnet18 + resnet18-lbgat, batch 128, alpha 0 and 6
    python benchmarks/train_step.py --model wrn-10-1 --teacher wrn-10-1 --batch-size 32   # a quick look
    python benchmarks/train_step.py --alpha 6            # one setting only

Prints, per alpha, images/s of each, the whole-step and attack-phase ratios (medians of interleaved
repeats), the gain of the graph-free clean forward at alpha = 0, and the largest relative difference
between the implementations' loss terms.

Against the official code itself (benchmarks/against_official.py): every method with an official
counterpart in tools/official_compare, its step against the official step on the same weights, batch and
start draw, with each side's forwards, seconds, images/s, the ratio and the differences after the step:

    python benchmarks/train_step.py --repeats 9 --official-lbgat REPO --official-trades REPO \
        --official-mart REPO --official-awp REPO --official-iseat REPO --official-rpat REPO \
        --official-deps /tmp/offdeps          # one CPU thread, CPU clock; --scenarios picks some
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import against_official  # noqa: E402
from lbgat.data import load_dataset
from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method
from lbgat.methods.base import add_weighted
from lbgat.methods.trades import kl_batchmean
from lbgat.models import create_model
from lbgat.runtime.rng import Stream

EPS, STEP_SIZE, STEPS = 0.031, 0.007, 10
SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
DEFAULT_DATA = Path(os.environ.get("LBGAT_CIFAR10_MINI") or SHARED_MINI)
# wall: elapsed time. cpu: this process's CPU seconds (all its threads), which other processes on a
# shared machine barely disturb; on CPU with --threads 1 it measures the work itself.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = "wall"


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
        started = CLOCKS[clock]()
        try:
            return self.function(*args, **kwargs)
        finally:
            synchronize()
            self.seconds += CLOCKS[clock]() - started


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

    def parameters(self) -> list[torch.Tensor]:
        return [*self.student.parameters(), *self.teacher.parameters()]

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

    def parameters(self) -> list[torch.Tensor]:
        return list(self.method.parameters())

    def __call__(self, batch: Batch, start: torch.Tensor) -> dict[str, torch.Tensor]:
        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.method(batch)
        terms["loss"].backward()
        self.optimizer.step()
        return terms


class LbgatCleanGraphStep(LbgatStep):
    """lbgat's step through the general guided path: the student's clean forward with a graph even at
    alpha = 0 (what lbgat ran before it skipped that zero-weighted backward)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float) -> None:
        super().__init__(student, teacher, alpha)
        method = self.method

        def loss_terms_with_clean_graph(batch: Batch, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
            logits_adv = method.student(x_adv)
            logits_clean = method.student(batch.x)
            terms = method.guided(batch, logits_adv)
            return add_weighted(terms, "kl", kl_batchmean(logits_clean, logits_adv), method.params.alpha)

        method.loss_terms = loss_terms_with_clean_graph


Step = ReferenceStep | LbgatStep


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


def compare(name: str, ours: dict[str, torch.Tensor], ours_params: list[torch.Tensor],
            theirs: dict[str, torch.Tensor], their_params: list[torch.Tensor]) -> tuple[float, float]:
    """(max relative loss difference, max parameter difference after the step), printed."""
    difference = max_relative_difference(ours, theirs)
    parameters = max((a - b).abs().max().item() for a, b in zip(ours_params, their_params, strict=True))
    print(f"check {name}: max relative loss difference {difference:.2e}, max parameter difference after the step "
          f"{parameters:.2e}")
    return difference, parameters


def time_steps(steps: dict[str, Step], batch: Batch, start: torch.Tensor, repeats: int
               ) -> dict[str, tuple[float, float, float]]:
    """Medians of each step's seconds (whole step, attack phase, after the attack), the steps run
    interleaved, the order reversed every other repeat."""
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for repeat in range(repeats):
        order = list(steps.items())
        for name, step in order if repeat % 2 == 0 else order[::-1]:
            step.attack.seconds = 0.0
            synchronize()
            started = CLOCKS[clock]()
            step(batch, start)
            synchronize()
            timings[name].append((CLOCKS[clock]() - started, step.attack.seconds))
            total, attack = timings[name][-1]
            print(f"  repeat {repeat + 1} {name:>17}: step {total:7.2f} s (attack {attack:7.2f} s)", flush=True)
    return {name: (statistics.median(t for t, _ in runs), statistics.median(a for _, a in runs),
                   statistics.median(t - a for t, a in runs)) for name, runs in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, model="resnet18", teacher="resnet18-lbgat", batch_size=128)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 6.0],
                        help="TRADES KL weights to run, side by side (default 0 6: the paper's two settings)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative loss difference accepted")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                        help="wall time (the default; against the official code: cpu) or this process's CPU time "
                             "(steadier on a busy CPU machine)")
    parser.set_defaults(threads=None)  # 2, or 1 against the official code
    against_official.add_official_arguments(parser)
    args = parser.parse_args(argv)
    if against_official.wanted(args):
        return against_official.run(args, parser)
    args.threads = 2 if args.threads is None else args.threads
    args.clock = args.clock or "wall"
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; time a GPU with the wall clock")
    global clock
    clock = args.clock

    device, batch, source, student, teacher = step_setup(args)
    start = 0.001 * batch.rng.normal(Stream.TRAIN_ATTACK_START, tuple(batch.x.shape[1:]))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"LBGAT+TRADES step, {args.model} student + {args.teacher} teacher, batch {args.batch_size}, "
          f"alpha {' and '.join(f'{alpha:g}' for alpha in args.alpha)}, {STEPS}-step attack, fp32, {where}, "
          f"torch {torch.__version__}, {args.clock} seconds")
    print(f"data: {source}")

    rows = []
    for alpha in args.alpha:
        print(f"\nalpha {alpha:g}")
        steps: dict[str, Step] = {"lbgat": LbgatStep(copy.deepcopy(student), copy.deepcopy(teacher), alpha),
                                  "reference": ReferenceStep(copy.deepcopy(student), copy.deepcopy(teacher), alpha)}
        if alpha == 0:
            steps["lbgat clean graph"] = LbgatCleanGraphStep(copy.deepcopy(student), copy.deepcopy(teacher), alpha)
        # Check on identical weights and tensors (this first step also warms each up).
        first = {name: step(batch, start) for name, step in steps.items()}
        params = {name: list(step.parameters()) for name, step in steps.items()}
        difference, _ = compare("against the reference", first["lbgat"], params["lbgat"], first["reference"],
                                params["reference"])
        if difference > args.tolerance:
            print(f"FAILED: the two steps disagree by more than {args.tolerance:g}", file=sys.stderr)
            return 1
        if "lbgat clean graph" in steps:
            graph_difference, graph_parameters = compare(
                "against the clean forward with a graph", first["lbgat"], params["lbgat"],
                first["lbgat clean graph"], params["lbgat clean graph"])
            if graph_difference or graph_parameters:
                print("FAILED: the clean forward without a graph changed the step", file=sys.stderr)
                return 1
        medians = time_steps(steps, batch, start, args.repeats)
        rows.append((alpha, difference, medians))

    print()
    print(f"{'alpha':>5} {'':18} {'step s':>8} {'attack s':>9} {'after s':>8} {'images/s':>9}")
    for alpha, _, medians in rows:
        for name, (step_seconds, attack_seconds, after_seconds) in medians.items():
            images_per_second = args.batch_size / step_seconds
            print(f"{alpha:5g} {name:18} {step_seconds:8.2f} {attack_seconds:9.2f} {after_seconds:8.2f} "
                  f"{images_per_second:9.2f}")
    for alpha, difference, medians in rows:
        (ours_step, ours_attack, ours_after) = medians["lbgat"]
        (reference_step, reference_attack_seconds, _) = medians["reference"]
        line = (f"alpha {alpha:g}: whole-step speed-up {reference_step / ours_step:.2f}x, attack-phase speed-up "
                f"{reference_attack_seconds / ours_attack:.2f}x")
        if "lbgat clean graph" in medians:
            graph_step, _, graph_after = medians["lbgat clean graph"]
            line += (f", clean forward without a graph {graph_step / ours_step:.2f}x "
                     f"({graph_after / ours_after:.2f}x after the attack)")
        print(f"{line} (medians of {args.repeats}); max relative loss difference {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
