"""How the cost of an LBGAT+TRADES training step scales with batch size, attack steps and model size.

One dimension varies at a time from a base point; each point is the median of ``--repeats`` timed
steps after one untimed warm-up step, reported as milliseconds per image.

    python benchmarks/scaling.py                    # CPU: base wrn-10-1 pair, batch 32, 10-step attack
    python benchmarks/scaling.py --device cuda --models wrn-10-1,resnet18,wrn-34-10 --batch-sizes 32,128,512
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lbgat.models import create_model  # noqa: E402
from lbgat.models.flops import count_flops  # noqa: E402
from speed_features import Variant, timed  # noqa: E402
from train_step import DEFAULT_DATA, load_batch  # noqa: E402


def milliseconds_per_image(model: str, teacher: str, batch_size: int, attack_steps: int, repeats: int,
                           device: torch.device, data_root: Path) -> float:
    batch, _ = load_batch(batch_size, data_root, device)
    torch.manual_seed(0)
    student = create_model(model, num_classes=10).to(device)
    teacher_net = create_model(teacher, num_classes=10).to(device)
    step = Variant(copy.deepcopy(student), copy.deepcopy(teacher_net), None, device, attack_steps)
    step(batch)
    return 1000 * statistics.median(timed(step, batch) for _ in range(repeats)) / batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-10-1", help="base student (the teacher is the same network)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--batch-sizes", default="8,32,128")
    parser.add_argument("--steps-grid", default="1,5,10,20")
    parser.add_argument("--models", default="tiny-cnn,wrn-10-1,small-cnn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    point = {"model": args.model, "batch_size": args.batch_size, "attack_steps": args.attack_steps}
    where = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"LBGAT+TRADES step, student = teacher, base {point}, {where}, torch {torch.__version__}")

    def measure(model: str, batch_size: int, attack_steps: int) -> float:
        return milliseconds_per_image(model, model, batch_size, attack_steps, args.repeats, device, args.data_root)

    print("\n| batch size | ms/image |\n|---:|---:|")
    for size in map(int, args.batch_sizes.split(",")):
        print(f"| {size} | {measure(args.model, size, args.attack_steps):.2f} |", flush=True)
    print("\n| attack steps | ms/image |\n|---:|---:|")
    for steps in map(int, args.steps_grid.split(",")):
        print(f"| {steps} | {measure(args.model, args.batch_size, steps):.2f} |", flush=True)
    print("\n| model | MFLOP/image (forward) | ms/image | ms per forward GFLOP |\n|---|---:|---:|---:|")
    for model in args.models.split(","):
        flops = count_flops(create_model(model, num_classes=10), (3, 32, 32)) / 1e6
        cost = measure(model, args.batch_size, args.attack_steps)
        print(f"| {model} | {flops:.1f} | {cost:.2f} | {cost / (flops / 1e3):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
