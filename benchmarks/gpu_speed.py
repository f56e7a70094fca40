"""Training images/s of the LBGAT+TRADES step on a GPU, one setting after another, on identical weights.

Variants (each a fresh copy of the same initial networks, stepping on the same batch):

    fp32                    IEEE fp32: TF32 off for matmuls and cuDNN convolutions (--ieee-fp32)
    default                 PyTorch's own flags, lbgat's default: TF32 convolutions, IEEE fp32 matmuls
    tf32                    TF32 on for both (--tf32; 10-bit mantissa in the tensor cores)
    bf16                    --precision bf16 (autocast; the attack's arithmetic stays fp32)
    bf16+cl                 bf16 with --channels-last
    bf16+cl+compile-frozen  bf16, channels-last, --compile: compiled networks for the training forwards,
                            the attack through the compiled networks with their weights frozen during
                            its forwards: fused kernels and input-only gradients (lbgat's --compile)
    bf16+cl+compile-eager   the same with the attack through the networks' uncompiled forward
    bf16+cl+compile-attack  the same with the attack through the compiled networks as they are, which
                            computes every weight gradient at every attack step (lbgat before issue 13)

and, on request (--graphs, or by name in --variants):

    bf16+cl+fused                 bf16+cl with --sgd-kernel fused (one kernel for the SGD update)
    bf16+cl+compile-fused         bf16+cl+compile-frozen with --sgd-kernel fused
    bf16+cl+compile-graphs        bf16+cl+compile-frozen with --compile-mode reduce-overhead: CUDA graphs
                                  of every compiled graph (networks, attack step), replayed at each step
    bf16+cl+compile-graphs-fused  both
    bf16+cl+compile-autotune      --compile-mode max-autotune (CUDA graphs, autotuned kernels; long compile)
                                  with --sgd-kernel fused

TF32 is off in every variant but default and tf32 (the bf16 ones run their convolutions in bf16 anyway);
cudnn.benchmark is on, as in training. Each variant takes --warmup untimed steps (the first includes
compilation, reported separately) and then --steps timed ones between two device synchronisations;
then one more step under CUDA's sync debug mode counts the host synchronisations inside a step.
The first step's total loss is compared with the first variant's (same weights, batch and attack start).

    python benchmarks/gpu_speed.py                     # CUDA: wrn-34-10 + resnet18-lbgat, batch 128, 10 steps
    python benchmarks/gpu_speed.py --skip-compile      # without the three compiled variants
    python benchmarks/gpu_speed.py --graphs            # CUDA graphs and the fused SGD step against --compile
    python benchmarks/gpu_speed.py --device cpu --model tiny-cnn --teacher tiny-cnn --batch-size 4 \\
        --attack-steps 1 --steps 1 --warmup 1 --skip-compile    # a smoke run on CPU

On an H200 expect roughly 15-25 s for the four eager variants and 60-120 s of compilation for the
first compiled one (estimates, not measurements); the later ones reuse inductor's on-disk cache
for the graphs they share (the training forwards) and compile only their attack's graphs.
--variants picks a subset.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_features import EPOCH_IMAGES, Variant, relative_gap  # noqa: E402
from train_step import add_step_arguments, step_setup, synchronize  # noqa: E402

COMPILED = frozenset({"bf16", "channels_last", "compile"})


class Setup(NamedTuple):
    features: frozenset[str]
    float32: str  # lbgat's float32 setting during the step (ieee, default, tf32)
    attack: str  # which forward the attack calls under compile: speed_features.ATTACK_FORWARDS
    compile_mode: str = "default"  # --compile-mode
    sgd_kernel: str = "auto"  # --sgd-kernel


VARIANTS: dict[str, Setup] = {
    "fp32": Setup(frozenset(), "ieee", "eager"),
    "default": Setup(frozenset(), "default", "eager"),
    "tf32": Setup(frozenset(), "tf32", "eager"),
    "bf16": Setup(frozenset({"bf16"}), "ieee", "eager"),
    "bf16+cl": Setup(frozenset({"bf16", "channels_last"}), "ieee", "eager"),
    "bf16+cl+fused": Setup(frozenset({"bf16", "channels_last"}), "ieee", "eager", sgd_kernel="fused"),
    "bf16+cl+compile-frozen": Setup(COMPILED, "ieee", "frozen"),
    "bf16+cl+compile-eager": Setup(COMPILED, "ieee", "eager"),
    "bf16+cl+compile-attack": Setup(COMPILED, "ieee", "compiled"),
    "bf16+cl+compile-fused": Setup(COMPILED, "ieee", "frozen", sgd_kernel="fused"),
    "bf16+cl+compile-graphs": Setup(COMPILED, "ieee", "frozen", compile_mode="reduce-overhead"),
    "bf16+cl+compile-graphs-fused": Setup(COMPILED, "ieee", "frozen", compile_mode="reduce-overhead",
                                          sgd_kernel="fused"),
    "bf16+cl+compile-autotune": Setup(COMPILED, "ieee", "frozen", compile_mode="max-autotune", sgd_kernel="fused"),
}
DEFAULT_VARIANTS = ("fp32", "default", "tf32", "bf16", "bf16+cl", "bf16+cl+compile-frozen", "bf16+cl+compile-eager",
                    "bf16+cl+compile-attack")
# CUDA graphs and the fused SGD step (--graphs), against lbgat's --compile without them.
GRAPH_VARIANTS = ("bf16+cl+compile-frozen", "bf16+cl+compile-fused", "bf16+cl+compile-graphs",
                  "bf16+cl+compile-graphs-fused")


def measure(variant: Variant, batch, warmup: int, steps: int) -> tuple[float, float, dict[str, float]]:
    """(seconds of the first step, seconds per timed step, the first step's loss terms)."""
    synchronize()
    started = time.perf_counter()
    first = variant(batch)  # returns floats: the step has finished
    first_seconds = time.perf_counter() - started
    for _ in range(warmup - 1):
        variant(batch)
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        variant(batch)
    synchronize()
    return first_seconds, (time.perf_counter() - started) / steps, first


def host_syncs(variant: Variant, batch) -> int | None:
    """The host synchronisations CUDA reports during one step (its sync debug mode warns at each; the
    step's own reading of its loss terms, after the step, is not counted). None on CPU."""
    if next(variant.method.parameters()).device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            variant.step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, model="wrn-34-10", teacher="resnet18-lbgat", batch_size=128)
    parser.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (>= 1)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled variants")
    parser.add_argument("--graphs", action="store_true", help="the CUDA-graph and fused-SGD variants only: "
                        f"{', '.join(GRAPH_VARIANTS)}")
    args = parser.parse_args(argv)
    names = list(GRAPH_VARIANTS) if args.graphs else [name for name in args.variants.split(",") if name]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.skip_compile:
        names = [name for name in names if "compile" not in VARIANTS[name].features]
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")

    device, batch, source, student, teacher = step_setup(args)
    torch.backends.cudnn.benchmark = True
    where = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device.type == "cuda"
             else f"{torch.get_num_threads()} CPU threads")
    print(f"LBGAT+TRADES step, {args.model} student + {args.teacher} teacher, batch {args.batch_size}, "
          f"{args.attack_steps}-step attack, {where}, torch {torch.__version__}")
    print(f"data: {source}; {args.warmup} warm-up + {args.steps} timed steps per variant")

    rows: list[tuple[str, float, float, float | None, int | None]] = []
    reference: dict[str, float] | None = None
    for name in names:
        setup = VARIANTS[name]
        variant = Variant(copy.deepcopy(student), copy.deepcopy(teacher), setup.features, device, args.attack_steps,
                          attack=setup.attack, float32=setup.float32, compile_mode=setup.compile_mode,
                          sgd_kernel=setup.sgd_kernel)
        first, per_step, terms = measure(variant, batch, args.warmup, args.steps)
        syncs = host_syncs(variant, batch)
        if reference is None:  # fp32, or the first variant run
            reference = terms
        gap = relative_gap(terms, reference)
        rows.append((name, first, per_step, gap, syncs))
        print(f"  {name:>28}: {per_step:.3f} s/step, {args.batch_size / per_step:8.1f} images/s "
              f"(first step {first:.1f} s)", flush=True)
        del variant
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()

    first_name = rows[0][0] if rows else ""
    baseline = next((per_step for name, _, per_step, _, _ in rows if name == "fp32"), rows[0][2] if rows else None)
    print()
    print(f"| variant | s/step | images/s | vs {first_name} | vs row above | epoch (50k) | 100 epochs | first step s | "
          f"loss gap vs {first_name} | host syncs/step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    previous = None
    for name, first, per_step, gap, syncs in rows:
        rate = args.batch_size / per_step
        above = f"{previous / per_step:.2f}x" if previous is not None else ""
        shown_syncs = "n/a" if syncs is None else str(syncs)
        print(f"| {name} | {per_step:.3f} | {rate:.1f} | {baseline / per_step:.2f}x | {above} | "
              f"{EPOCH_IMAGES / rate / 60:.1f} min | {100 * EPOCH_IMAGES / rate / 60:.0f} min | {first:.1f} | "
              f"{gap:.1e} | {shown_syncs} |")
        previous = per_step
    compiled = {name: per_step for name, _, per_step, _, _ in rows if "compile" in name}
    if "bf16+cl+compile-attack" in compiled:
        through_compiled = compiled["bf16+cl+compile-attack"]
        for name in ("bf16+cl+compile-frozen", "bf16+cl+compile-eager"):
            if name in compiled:
                print(f"{name}: {through_compiled / compiled[name]:.2f}x the speed of bf16+cl+compile-attack")
    print("compile time = first step s of a compiled variant minus its s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
