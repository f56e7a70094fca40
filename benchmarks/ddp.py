"""Two DDP processes against one: the same `lbgat train` job (same global batch, same steps), throughput
and how far apart the trained weights end.

    python benchmarks/ddp.py                                   # CPU, gloo: 1 process x 2 threads vs 2 x 1
    python benchmarks/ddp.py --device cuda --processes 2 --model wrn-34-10 --teacher resnet18-lbgat \\
        --batch-size 128 --steps 50                             # GPUs, NCCL: 1 GPU vs 2

Both runs train one epoch of ``--steps`` batches of cifar10 (cifar10-mini by default) with no held-out
set; the time is the epoch's training time from metrics.jsonl (data loading and setup excluded). On
CPU the two runs get the same cores: one process with all of them, or each process with its share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lbgat.checkpoints.checkpoint import load_checkpoint  # noqa: E402
from lbgat.methods import get_method  # noqa: E402
from train_step import DEFAULT_DATA  # noqa: E402


def train_command(args: argparse.Namespace, out: Path) -> list[str]:
    command = ["train", "--method", args.method, "--model", args.model, "--dataset", "cifar10",
               "--data-root", str(args.data_root), "--batch-size", str(args.batch_size), "--epochs", "1",
               "--device", args.device, "--out", str(out), "--no-progress",
               "--set", f"data.train_size={args.batch_size * args.steps}", "--set", "data.val_size=0",
               "--set", f"attack.steps={args.attack_steps}", "--set", f"optim.lr={args.lr}"]
    if args.teacher and get_method(args.method).uses_teacher and not get_method(args.method).frozen_teacher:
        command += ["--teacher", args.teacher]
    return command


def run(command: list[str], processes: int, threads: int) -> None:
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    launcher = [sys.executable, "-m", "lbgat"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "lbgat"]
    finished = subprocess.run([*launcher, *command], env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{processes}-process run failed:\n{finished.stderr[-3000:]}")


def epoch_seconds(out: Path) -> float:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(record["train_seconds"] for record in records if record["event"] == "epoch")


def weight_gap(left: Path, right: Path) -> tuple[float, float, str]:
    """||w1 - w2|| / ||w1|| over all weights and statistics, and the largest such ratio of one tensor."""
    one, two = load_checkpoint(left).state, load_checkpoint(right).state
    keys = [key for key in one if one[key].is_floating_point() and not key.startswith("rng.")]
    overall = float(torch.cat([(one[k] - two[k]).flatten() for k in keys]).norm()
                    / torch.cat([one[k].flatten() for k in keys]).norm())
    gaps = {key: float((one[key] - two[key]).norm() / one[key].norm().clamp_min(1e-12)) for key in keys}
    worst = max(gaps, key=gaps.get)
    return overall, gaps[worst], worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lbgat-trades")
    parser.add_argument("--model", default="wrn-10-1")
    parser.add_argument("--teacher", default="wrn-10-1")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores shared out (CPU runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        single, multi = Path(folder) / "one", Path(folder) / "many"
        run(train_command(args, single), 1, args.cores)
        run(train_command(args, multi), args.processes, max(1, args.cores // args.processes))
        one, many = epoch_seconds(single), epoch_seconds(multi)
        overall, gap, where = weight_gap(single / "last.pt", multi / "last.pt")
    images = args.batch_size * args.steps
    where_run = ("GPUs: " + torch.cuda.get_device_name(0)) if args.device.startswith("cuda") else \
        f"CPU, {args.cores} cores shared out"
    print(f"{args.method}, {args.model}" + (f" + {args.teacher}" if args.teacher else "") +
          f", global batch {args.batch_size}, {args.steps} steps, {args.attack_steps}-step attack, {where_run}")
    print("| processes | epoch s | images/s | speed-up |")
    print("|---:|---:|---:|---:|")
    print(f"| 1 | {one:.2f} | {images / one:.1f} | 1.00x |")
    print(f"| {args.processes} | {many:.2f} | {images / many:.1f} | {one / many:.2f}x |")
    print(f"relative weight difference after {args.steps} steps: {overall:.2e} over all weights, "
          f"at most {gap:.2e} in one tensor ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
