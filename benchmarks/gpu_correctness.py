"""Issue 13 items 1-4 checked on a device: fp16 attacks, weight gradients under autocast, TF32, GPU resume.

    python benchmarks/gpu_correctness.py                    # on the GPU (about a minute on one H200)
    python benchmarks/gpu_correctness.py --device cpu       # the same checks on CPU (CUDA-only parts noted)

1. fp16 attack: a small-cnn briefly trained on the embedded MNIST subset (and the same network with its
   last layer scaled to a median logit margin of 20): the fraction of examples whose input gradient is
   all zeros at the first step, and PGD-20 (CE) accuracy, for fp32, bf16, fp16 as lbgat runs it (scaled
   backward) and fp16 unscaled (the code before the fix); and the fraction of examples the TRADES KL
   attack moves from its start.
2. Weight gradients under autocast: one step of trades, lbgat-trades and bgat-trades (wrn-10-1, with
   BatchNorm) under bf16 and fp16; how many student weights that get a gradient in fp32 get a non-zero
   one, with lbgat's autocast (weight-cast cache off) and with torch's default (cache on).
3. TF32: logits of the trained network under --ieee-fp32, lbgat's default (torch's own flags) and --tf32
   (max relative difference from IEEE) and what a report records in each case.
4. Resume: `lbgat train` for N steps straight against N/2 + `--resume` N/2 in fresh processes, without and
   with --deterministic; the largest weight difference (0 = bit-exact).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SOURCE))  # this checkout's lbgat, installed or not
from lbgat.attacks import pgd  # noqa: E402
from lbgat.attacks.half import scaled_input_gradients, under_fp16_autocast  # noqa: E402
from lbgat.checkpoints.checkpoint import load_checkpoint  # noqa: E402
from lbgat.checkpoints.model_spec import ModelSpec  # noqa: E402
from lbgat.data import load_dataset  # noqa: E402
from lbgat.data.loader import Batch  # noqa: E402
from lbgat.methods import TrainAttack, create_method  # noqa: E402
from lbgat.methods.teachers import FrozenEnsemble  # noqa: E402
from lbgat.runtime.arithmetic import describe_arithmetic, float32_mode  # noqa: E402
from lbgat.runtime.precision import DTYPES, Precision  # noqa: E402
from lbgat.runtime.rng import ExampleRNG  # noqa: E402

EPS, STEP = 0.3, 0.01  # the MNIST threat model of the TRADES evaluation (PGD-20 by default here)
LR = 0.01  # natural SGD of the small-cnn: about 90 % test accuracy after 100 steps of 128


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


@contextmanager
def unscaled_fp16() -> Iterator[None]:
    """The attack as before issue 13 item 1: no scaling of its fp16 backward."""
    module = sys.modules["lbgat.attacks.pgd"]
    original = module.under_fp16_autocast
    module.under_fp16_autocast = lambda device_type: False
    try:
        yield
    finally:
        module.under_fp16_autocast = original


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    return Precision(precision, device).autocast()


def trained_small_cnn(device: torch.device, steps: int, examples: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """small-cnn after ``steps`` natural SGD steps on mnist-5k; and the first ``examples`` test images."""
    data = load_dataset("mnist-5k", None)
    torch.manual_seed(0)
    model = ModelSpec("small-cnn", 10, 1, 28).build().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    images = data.train.images.to(device).float().div_(255)
    labels = data.train.labels.to(device)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        chosen = torch.randint(0, len(images), (128,), generator=generator).to(device)
        optimizer.zero_grad()
        F.cross_entropy(model(images[chosen]), labels[chosen]).backward()
        optimizer.step()
    model.eval()
    return (model, data.test.images[:examples].to(device).float().div_(255),
            data.test.labels[:examples].to(device))


def with_margin(model: nn.Module, x: torch.Tensor, margin: float) -> nn.Module:
    """A copy whose last layer is scaled so that the median logit margin on ``x`` is ``margin``."""
    confident = copy.deepcopy(model)
    last = [module for module in confident.modules() if isinstance(module, nn.Linear)][-1]
    with torch.no_grad():
        top2 = confident(x).topk(2, dim=1).values
        factor = margin / float((top2[:, 0] - top2[:, 1]).median())
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return confident


def zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                           precision: str, scaled: bool) -> float:
    """Examples whose input gradient of CE (summed) at the clean input is all zeros, computed as the
    attack computes it (with lbgat's fp16 scaling, or without it as before the fix)."""
    x = x.clone().requires_grad_(True)
    with autocast(device, precision):
        if scaled and under_fp16_autocast(device.type):
            logits = scaled_input_gradients(model, x, per_example=True)
        else:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return float((grad.flatten(1).abs().amax(1) == 0).float().mean())


def check_fp16_attack(device: torch.device, train_steps: int, examples: int, attack_steps: int) -> None:
    print("## 1. fp16 attack (issue 13 item 1)\n")
    model, x, y = trained_small_cnn(device, train_steps, examples)
    rows = []
    for label, network in (("trained", model), ("margin 20", with_margin(model, x, 20.0))):
        with torch.no_grad():
            top2 = network(x).topk(2, dim=1).values
            margin = float((top2[:, 0] - top2[:, 1]).median())
            clean = float((network(x).argmax(1) == y).float().mean())
        rng = ExampleRNG(0, 0, torch.arange(len(x), device=device))
        for variant, precision, scaled in (("fp32", "fp32", True), ("bf16", "bf16", True),
                                           ("fp16 (lbgat)", "fp16", True), ("fp16 unscaled (old)", "fp16", False)):
            if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                continue
            with unscaled_fp16() if not scaled else nullcontext(), autocast(device, precision):
                x_adv = pgd(network, x, y, eps=EPS, step_size=STEP, steps=attack_steps, rng=rng)
                x_kl = pgd(network, x, None, eps=EPS, step_size=STEP, steps=1, objective="kl", start="normal",
                           rng=rng)
            with torch.no_grad():
                robust = float((network(x_adv).argmax(1) == y).float().mean())
            kl_moved = float(((x_kl - x).flatten(1).abs().amax(1) > STEP / 2).float().mean())
            zero = zero_gradient_fraction(network, x, y, device, precision, scaled)
            rows.append([label, f"{margin:.1f}", variant, f"{100 * clean:.1f}%", f"{100 * zero:.1f}%",
                         f"{100 * robust:.1f}%", f"{100 * kl_moved:.1f}%"])
    table(["network", "median margin", "arithmetic", "clean acc", "zero input grad", f"PGD-{attack_steps} acc",
           "KL step moved"], rows)


def method_batch(device: torch.device) -> Batch:
    data = load_dataset("mnist-5k", None)
    x = data.train.images[:64].to(device).float().div_(255)
    return Batch(x, data.train.labels[:64].to(device), torch.arange(64, device=device), epoch=0, seed=1)


def student_gradients(name: str, device: torch.device, precision: str, cache: bool) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)
    student = ModelSpec("wrn-10-1", 10, 1, 28).build()
    teacher: nn.Module | None = None
    if name == "lbgat-trades":
        teacher = ModelSpec("wrn-10-1", 10, 1, 28).build()
    elif name == "bgat-trades":
        teacher = FrozenEnsemble([ModelSpec("wrn-10-1", 10, 1, 28).build()])
    params = {"alpha": 6.0} if name != "bgat-trades" else {"alpha": 1.0}
    method = create_method(name, student, params=params, teacher=teacher,
                           attack=TrainAttack(eps=EPS, step_size=STEP, steps=3, start="normal")).to(device).train()
    if precision == "fp32":
        context = Precision("fp32", device).autocast()
    elif cache:
        context = torch.autocast(device.type, dtype=DTYPES[precision])  # torch's default: weight-cast cache on
    else:
        context = autocast(device, precision)
    with context:
        loss = method(method_batch(device))["loss"]
    loss.float().backward()
    return {key: parameter.grad for key, parameter in method.student.named_parameters()}


def check_weight_gradients(device: torch.device) -> None:
    print("## 2. Student weight gradients under autocast (issue 13 item 2)\n")
    print(f"torch {torch.__version__}; a weight 'gets a gradient' when its gradient is non-zero.\n")
    rows = []
    for name in ("trades", "lbgat-trades", "bgat-trades"):
        full = student_gradients(name, device, "fp32", cache=False)
        trained = [key for key, grad in full.items() if grad is not None and bool(grad.abs().sum() > 0)]
        for precision in ("bf16", "fp16"):
            if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                continue
            for cache in (False, True):
                half = student_gradients(name, device, precision, cache)
                got = sum(1 for key in trained if half[key] is not None and bool(half[key].abs().sum() > 0))
                missing = [key for key in trained if half[key] is None or not bool(half[key].abs().sum() > 0)]
                rows.append([name, precision, "on (torch default)" if cache else "off (lbgat)",
                             f"{got} / {len(trained)}", ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")])
    table(["method", "precision", "weight-cast cache", "student weights with a gradient", "missing"], rows)


FLOAT32_FLAGS = {"ieee": "--ieee-fp32", "default": "(none: lbgat's default)", "tf32": "--tf32"}


def check_tf32(device: torch.device, model: nn.Module, x: torch.Tensor) -> None:
    print("## 3. TF32 (issue 13 item 3; issue 23 item 1: the default is torch's own)\n")
    logits = {}
    recorded = {}
    for mode in FLOAT32_FLAGS:
        with float32_mode(mode), torch.no_grad():
            logits[mode] = model(x).double()
            recorded[mode] = describe_arithmetic("fp32", device, float32=mode, deterministic=False)
    ieee = logits["ieee"]
    differences = {mode: float(((logits[mode] - ieee).abs().amax(1) / ieee.abs().amax(1)).max()) for mode in logits}
    if device.type != "cuda":
        print("CPU: TF32 does not exist here; the three settings compute the same (largest difference "
              f"{max(differences.values()):.1e}).\n")
    rows = [[flag, recorded[mode]["tf32"], recorded[mode]["conv"], recorded[mode]["matmul"],
             f"{differences[mode]:.2e}"] for mode, flag in FLOAT32_FLAGS.items()]
    table(["flag", "report's tf32", "conv", "matmul", f"largest relative logit difference from IEEE, "
                                                         f"{len(x)} images"], rows)


def run_cli(*args: str, env: dict[str, str]) -> str | None:
    """None when `lbgat train` succeeded, else the last line it printed (the table shows it)."""
    result = subprocess.run([sys.executable, "-m", "lbgat", "train", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    if result.returncode == 0:
        return None
    print(result.stderr[-3000:], file=sys.stderr)
    return (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1][:200]


def check_resume(device: torch.device, steps: int, model: str, method: str) -> None:
    print("## 4. Resume (issue 13 item 4)\n")
    env = dict(os.environ, PYTHONPATH=f"{SOURCE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               PYTHONWARNINGS="ignore")
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)  # --deterministic sets it itself
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for deterministic in (False, True):
            extra = ["--deterministic"] if deterministic else []
            common = ["--method", method, "--model", model, "--dataset",
                      "mnist-5k", "--batch-size", "128", "--epochs", "1", "--device", str(device), "--no-progress",
                      "--set", "data.val_size=0", "--set", "attack.steps=5", *extra]
            if method in ("lbgat-trades", "lbgat"):
                common += ["--teacher", model]
            tag = "det" if deterministic else "default"
            started = time.perf_counter()
            straight, halves = Path(folder) / f"straight-{tag}", Path(folder) / f"halves-{tag}"
            failed = (run_cli(*common, "--max-steps", str(steps), "--out", str(straight), env=env)
                      or run_cli(*common, "--max-steps", str(steps // 2), "--out", str(halves), env=env)
                      or run_cli(*common, "--max-steps", str(steps), "--out", str(halves), "--resume", env=env))
            label = "--deterministic" if deterministic else "default (IEEE fp32, no --deterministic)"
            if failed:
                rows.append([label, f"failed: {failed}", "", "", f"{time.perf_counter() - started:.0f}"])
                continue
            one, two = load_checkpoint(straight / "last.pt"), load_checkpoint(halves / "last.pt")
            keys = [key for key in one.state if not key.startswith("rng.") and one.state[key].is_floating_point()]
            largest = max(float((one.state[key] - two.state[key]).abs().max()) for key in keys)
            relative = max(float((one.state[key] - two.state[key]).norm() / one.state[key].norm().clamp_min(1e-12))
                           for key in keys)
            identical = all(torch.equal(one.state[key], two.state[key]) for key in one.state)
            rows.append([label, "yes" if identical else "no", f"{largest:.2e}", f"{relative:.2e}",
                         f"{time.perf_counter() - started:.0f}"])
    print(f"{method}, {model}, mnist-5k, batch 128, 5-step attack: {steps} steps straight vs {steps // 2} + resume "
          f"{steps - steps // 2}, each in a fresh `lbgat train` process on {device}.\n")
    table(["run", "bit-identical", "max abs weight diff", "max relative tensor diff", "seconds (3 runs)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-steps", type=int, default=200, help="natural training steps of the small-cnn")
    parser.add_argument("--attack-steps", type=int, default=20, help="PGD steps of check 1")
    parser.add_argument("--examples", type=int, default=512, help="test images attacked in checks 1 and 3")
    parser.add_argument("--resume-steps", type=int, default=20, help="N of the resume check (0 skips it)")
    parser.add_argument("--resume-model", default="wrn-10-1")
    parser.add_argument("--resume-method", default="trades")
    parser.add_argument("--checks", default="1,2,3,4", help="which checks to run, e.g. 1,3")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: use --device cpu", file=sys.stderr)
        return 2
    checks = {int(part) for part in args.checks.split(",") if part}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# GPU correctness checks on {where}, torch {torch.__version__}\n")
    if device.type != "cuda":
        print("(CPU run: TF32 and cuDNN/cuBLAS nondeterminism do not exist here; those rows show what CPU computes.)\n")
    started = time.perf_counter()
    if 1 in checks:
        check_fp16_attack(device, args.train_steps, args.examples, args.attack_steps)
    if 2 in checks:
        check_weight_gradients(device)
    if 3 in checks:
        model, x, _ = trained_small_cnn(device, args.train_steps, args.examples)
        check_tf32(device, model, x)
    if 4 in checks and args.resume_steps >= 2:
        check_resume(device, args.resume_steps, args.resume_model, args.resume_method)
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
