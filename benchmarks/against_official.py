"""Each method's training step against its official counterpart: forwards, time and result on identical
weights, batch and start draw. Run through ``benchmarks/train_step.py`` (its ``--official-*`` options).

The official steps are those of tools/official_compare (README there): the official code imported from a
checkout of its repository, nothing of it copied here, on the setting the stored official outputs were made
in (tests/helpers/official_settings.py: wrn-10-1 for MART, AWP, ISEAT and RPAT; the official WideResNet-16-2
and ResNet-18 teacher for LBGAT+TRADES and TRADES; one of the 12 settings, by default seed 1, batch 16, plain
weights). Here the official step runs without recording anything (``prepare_*`` with no recorder), and pays
for the start draw it would make itself (``StartDraw.charge``: it draws torch's own noise of the same shape
and is then handed lbgat's). lbgat's step is the method's forward, the loss's backward, the SGD step and
``after_step`` (tests/helpers/official_settings.LbgatStep).

Each scenario runs in a process of its own (the official repositories reuse module names and patch what they
import): one step of each side from the same state, compared (the loss, and every parameter and buffer after
the step); one more of each counting the forwards of every network the step runs (the student, its copies:
AWP's proxy, ISEAT's tmp_model; the teacher) and those that moved the trained networks' BatchNorm statistics;
then ``repeats`` timed steps of each, interleaved (the order flips every repeat), each from the same state
(the networks' state loaded back and the optimisers' momentum cleared, untimed). Timed with this process's CPU
clock by default: on one thread it is the work itself, which other processes on a shared machine barely
disturb. The process keeps the memory a step frees, as ``lbgat train`` does on CPU (``--malloc keep``;
lbgat.runtime.host_memory): under glibc's defaults part of it goes back to the system and is faulted in
again at the next step, as many pages for one step as for the other or twice as many, depending on the
process; ``--malloc default`` times that too, and each step's page faults are printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOOLS = ROOT / "tools" / "official_compare"
# family: commit the spec names (shared/spec/methods.md section 0); as in tools/official_compare
COMMITS = {
    "lbgat": "f7f33f0ea7d2b1ee89741144604b29624057f44a",
    "trades": "6e8e11b7c281371c2f027ffadfbaea80361f09de",
    "mart": "2d83e17b381dd2ee52223695e517bf6d5ff09c2c",
    "awp": "a7acf5d842fccf1bbb4b91644352ce157d370a26",
    "iseat": "2a68c8e39569cef390d62ac126c360521e350f96",
    "rpat": "17918b3968f0b94c02e6d77c51c45f0b8f0e1e54",
}
# scenario: the official repositories it runs (the LBGAT one holds the official WideResNet and ResNet-18)
SCENARIOS: dict[str, tuple[str, ...]] = {
    "lbgat-trades-alpha6": ("lbgat",), "lbgat-trades-alpha0": ("lbgat",), "trades-beta6": ("lbgat", "trades"),
    "mart": ("mart",), "pgd-at+awp": ("awp",), "trades+awp": ("awp",), "iseat": ("iseat",),
    "iseat-no-awp": ("iseat",), "pgd-at+rpat": ("rpat",), "trades+rpat": ("rpat",), "mart+rpat": ("rpat",),
}
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
# keep: glibc's malloc keeps what a step frees, as lbgat's trainer has it on CPU (lbgat.runtime.host_memory), for
# both steps. default: glibc's defaults, under which part of each step's memory goes back to the system and is
# faulted in again at the next, as the order of the step's frees happens to fall.
MALLOC = ("keep", "default")


def add_official_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "against the official code", "with any --official-REPO: each method's step against its official step "
        "(tools/official_compare's setting: it fixes the networks, the batch and the attack)")
    for family in COMMITS:
        group.add_argument(f"--official-{family}", type=Path, metavar="REPO",
                           help=f"the official {family.upper()} repository (git, bare or not: the spec's commit is "
                                "extracted) or a folder of its files")
    group.add_argument("--official-deps", action="append", default=[], type=Path, metavar="DIR",
                       help="folder with the official code's imports (advertorch for RPAT); repeatable")
    group.add_argument("--scenarios", default="", help=f"comma-separated, from {', '.join(SCENARIOS)} "
                       "(default: every one whose repositories are given)")
    group.add_argument("--setting", default="seed1-batch16-plain",
                       help="one of tests/helpers/official_settings.py's settings")
    group.add_argument("--malloc", choices=MALLOC, default="keep",
                       help="keep (default): glibc's malloc keeps freed memory, as lbgat train on CPU has it, for "
                            "both steps; default: glibc's defaults, which give memory back between steps and fault "
                            "it in again (kernel time, differing from one process to the next)")


def wanted(args: argparse.Namespace) -> bool:
    return any(getattr(args, f"official_{family}") is not None for family in COMMITS)


def tree_of(source: Path, family: str, temporary: list[Path]) -> Path:
    """A plain tree of the official code: the spec's commit extracted from a git repository, or the folder
    itself where it is not one."""
    if not ((source / ".git").exists() or ((source / "HEAD").is_file() and (source / "objects").is_dir())):
        return source
    sys.path.insert(0, str(TOOLS))
    from harness import checkout

    tree, _ = checkout(source, COMMITS[family])
    temporary.append(tree)
    return tree


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    given = {family for family in COMMITS if getattr(args, f"official_{family}") is not None}
    names = [name for name in args.scenarios.split(",") if name] or [
        name for name, families in SCENARIOS.items() if set(families) <= given]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    missing = sorted({family for name in names for family in SCENARIOS[name]} - given)
    if missing:
        parser.error(f"{', '.join(names)} need {' '.join(f'--official-{family}' for family in missing)}")
    if not names:
        parser.error("no scenario has all its repositories given")
    threads = args.threads if args.threads is not None else 1
    clock = args.clock or "cpu"
    print(f"Each method's step against its official step (tools/official_compare), setting {args.setting}, "
          f"{threads} CPU thread(s), {clock} seconds, medians of {args.repeats} interleaved repeats, "
          f"malloc {args.malloc}, torch {torch.__version__}")
    temporary: list[Path] = []
    rows = []
    try:
        trees = {family: str(tree_of(getattr(args, f"official_{family}"), family, temporary)) for family in given}
        for name in names:
            rows.append(run_child(name, trees, args, threads, clock))
            print_progress(rows[-1])
    finally:
        for tree in temporary:
            shutil.rmtree(tree, ignore_errors=True)
    print_table(rows)
    return 0


def run_child(name: str, trees: dict[str, str], args: argparse.Namespace, threads: int, clock: str) -> dict[str, Any]:
    paths = [str(TOOLS), str(ROOT / "src"), str(ROOT / "tests"), *map(str, args.official_deps)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    with tempfile.TemporaryDirectory(prefix="against-official-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, __file__, name, json.dumps(trees), args.setting, str(args.repeats), clock,
                   str(threads), args.malloc, str(out)]
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)  # logs land there
        if done.returncode != 0:
            raise RuntimeError(f"{name}: the step's process failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def print_progress(row: dict[str, Any]) -> None:
    official, ours = row["official"], row["lbgat"]
    print(f"  {row['scenario']:>20}: official {official['median']:.3f} s ({official['forwards']} forwards, "
          f"{official['page_faults']} page faults), lbgat {ours['median']:.3f} s ({ours['forwards']} forwards, "
          f"{ours['page_faults']} page faults): {official['median'] / ours['median']:.3f}x; "
          f"loss difference {row['loss_difference']:.1e}, state after {row['state_difference']:.1e}", flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print("| scenario | networks | forwards official / lbgat | BN-updating official / lbgat | official s | lbgat s | "
          "official img/s | lbgat img/s | speed-up | page faults official / lbgat | loss diff | state diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        official, ours, size = row["official"], row["lbgat"], row["batch_size"]
        print(f"| {row['scenario']} | {row['networks']} | {official['forwards']} / {ours['forwards']} | "
              f"{official['bn_updating']} / {ours['bn_updating']} | {official['median']:.3f} | {ours['median']:.3f} | "
              f"{size / official['median']:.1f} | {size / ours['median']:.1f} | "
              f"{official['median'] / ours['median']:.3f}x | {official['page_faults']} / {ours['page_faults']} | "
              f"{row['loss_difference']:.1e} | {row['state_difference']:.1e} |")
    print("speed-up: the official step's median seconds over lbgat's (above 1: lbgat is faster); forwards: every "
          "network forward of one step (student, its copies, teacher); BN-updating: those that moved the trained "
          "networks' BatchNorm statistics; page faults: the median step's; diff: largest absolute difference after "
          "one step from the same state")


# --- in the scenario's own process ------------------------------------------------------------------------


class Side:
    """One side's step, and what puts it back to the state every timed step starts from."""

    def __init__(self, trained: dict[str, nn.Module], optimizers: list[torch.optim.Optimizer],
                 step: Callable[[], Any]) -> None:
        self.trained, self.optimizers, self.step = trained, optimizers, step
        self.initial = {role: copy.deepcopy(net.state_dict()) for role, net in trained.items()}

    def reset(self) -> None:
        for role, net in self.trained.items():
            net.load_state_dict(self.initial[role])
            for parameter in net.parameters():
                parameter.grad = None
        for optimizer in self.optimizers:
            optimizer.state.clear()

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{role}.{key}": value.detach().clone() for role, net in self.trained.items()
                for key, value in net.state_dict().items()}

    def batchnorm_steps(self) -> int:
        """Forwards so far that updated the trained networks' BatchNorm statistics (most of any one layer)."""
        def tracked(net: nn.Module) -> int:
            return max((int(module.num_batches_tracked) for module in net.modules()
                        if isinstance(module, nn.modules.batchnorm._BatchNorm)
                        and module.num_batches_tracked is not None), default=0)

        return sum(tracked(net) for net in self.trained.values())


def count_forwards(side: Side, networks: tuple[type, ...]) -> tuple[int, int]:
    """(network forwards, BatchNorm-updating ones) of one step: a forward hook on every module (untimed)."""
    count = {"n": 0}

    def counted(module: nn.Module, args: Any, output: Any) -> None:
        if type(module) in networks:
            count["n"] += 1

    side.reset()
    before = side.batchnorm_steps()
    handle = nn.modules.module.register_module_forward_hook(counted)
    try:
        side.step()
    finally:
        handle.remove()
    return count["n"], side.batchnorm_steps() - before


def prepare(name: str, trees: dict[str, str], setting_key: str) -> tuple[Any, Any, str]:
    """The official step (not recorded) and lbgat's, set up, and the networks in words."""
    from helpers.official_settings import BY_KEY

    setting = BY_KEY[setting_key]
    if name in ("lbgat-trades-alpha6", "lbgat-trades-alpha0", "trades-beta6"):
        from lbgat_trades_steps import prepare_step

        from helpers.official_step_setting import STUDENT, TEACHER, prepare_lbgat_step

        official = prepare_step(name, setting, Path(trees["lbgat"]), Path(trees.get("trades", "")))
        words = f"{STUDENT} + {TEACHER} teacher" if "teacher" in official.trained else STUDENT
        return official, prepare_lbgat_step(name, setting), words
    from official_steps import PREPARED

    from helpers.official_plugin_setting import MODEL
    from helpers.official_plugin_setting import prepare_lbgat_step as prepare_plugin_step

    family, prepare_official = PREPARED[name]
    return prepare_official(Path(trees[family]), setting), prepare_plugin_step(name, setting), MODEL


def measure(name: str, trees: dict[str, str], setting_key: str, repeats: int, clock_name: str,
            threads: int, malloc: str) -> dict[str, Any]:
    from harness import BackwardLog, StartDraw

    from lbgat.runtime.host_memory import keep_freed_memory

    if malloc == "keep" and not keep_freed_memory():
        print("note: the C library is not glibc: --malloc keep changes nothing", file=sys.stderr)
    torch.set_num_threads(threads)
    StartDraw.charge = True
    clock = CLOCKS[clock_name]
    official_step, lbgat_step, words = prepare(name, trees, setting_key)
    sides = {"official": Side(official_step.trained, official_step.optimizers, official_step.run),
             "lbgat": Side(lbgat_step.trained, [lbgat_step.optimizer], lbgat_step.run)}
    # One step of each from the same state (also the warm-up): the loss, and the state after the step.
    losses, states = {}, {}
    for side_name, side in sides.items():
        side.reset()
        with BackwardLog().installed() as backward:
            side.step()
        losses[side_name] = backward.tensors[-1]  # the loss is the step's last backward
        states[side_name] = side.state()
    if sorted(states["official"]) != sorted(states["lbgat"]):
        raise AssertionError(f"the two steps train different tensors: {set(states['official']) ^ set(states['lbgat'])}")
    state_difference = max((states["official"][key].double() - states["lbgat"][key].double()).abs().max().item()
                           for key in states["official"])
    networks = tuple({type(net) for side in sides.values() for net in side.trained.values()})
    counts = {side_name: count_forwards(side, networks) for side_name, side in sides.items()}
    seconds: dict[str, list[float]] = {side_name: [] for side_name in sides}
    faults: dict[str, list[int]] = {side_name: [] for side_name in sides}
    for repeat in range(repeats):
        order = list(sides.items())
        for side_name, side in order if repeat % 2 == 0 else order[::-1]:
            side.reset()
            faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = clock()
            side.step()
            seconds[side_name].append(clock() - started)
            faults[side_name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted)
    return {
        "scenario": name, "networks": words, "batch_size": len(official_step.inputs), "setting": setting_key,
        "loss_difference": abs(losses["official"].item() - losses["lbgat"].item()),
        "losses": {side_name: loss.item() for side_name, loss in losses.items()},
        "state_difference": state_difference,
        **{side_name: {"forwards": counts[side_name][0], "bn_updating": counts[side_name][1],
                       "seconds": seconds[side_name], "median": statistics.median(seconds[side_name]),
                       "page_faults": int(statistics.median(faults[side_name]))}
           for side_name in sides},
    }


if __name__ == "__main__":
    scenario, trees_json, setting_key, repeats, clock_name, threads, malloc, out = sys.argv[1:9]
    measured = measure(scenario, json.loads(trees_json), setting_key, int(repeats), clock_name, int(threads), malloc)
    Path(out).write_text(json.dumps(measured))
