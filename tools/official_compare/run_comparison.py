"""Run the official MART, AWP, ISEAT and RPAT training steps on lbgat's setting and store what they produced
(issue 15 item 7). See README.md in this folder.

    python tools/official_compare/run_comparison.py --mart DIR --awp DIR --iseat DIR --rpat DIR \
        --deps /tmp/offdeps

Each DIR is a git repository of the official code (bare or not); the commit (default: the one the spec
names) is extracted into a temporary folder and imported from there. Each scenario runs in each setting of
tests/helpers/official_settings.py, each in its own Python process (the repositories reuse module names such as
``utils``, and patch modules they import). The outputs are stored for this machine (default
``tests/fixtures/official_plugins.<machine key>.pt.xz``, tests/helpers/official_machines.py; the first setting whole,
the others sketched, tests/helpers/official_plugin_storage.py) and entered in tests/fixtures/official_machines.json.
``--compare`` prints, per scenario, setting and group of tensors, the largest difference between the
official step (the exact one kept with ``--parts``, or the stored one) and lbgat's step.
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPOSITORIES = {  # scenario family: (option, repository, commit named in shared/spec/methods.md §0)
    "mart": ("mart", "https://github.com/YisenWang/MART", "2d83e17b381dd2ee52223695e517bf6d5ff09c2c"),
    "awp": ("awp", "https://github.com/csdongxian/AWP", "a7acf5d842fccf1bbb4b91644352ce157d370a26"),
    "iseat": ("iseat", "https://github.com/TreeLLi/ISEAT", "2a68c8e39569cef390d62ac126c360521e350f96"),
    "rpat": ("rpat", "https://github.com/FlaAI/RPAT", "17918b3968f0b94c02e6d77c51c45f0b8f0e1e54"),
}


def child_environment(deps: list[str]) -> dict[str, str]:
    paths = [str(HERE), str(ROOT / "src"), str(ROOT / "tests"), *deps]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def part_name(scenario: str, setting_key: str) -> str:
    return f"{scenario}.{setting_key}.pt"


def run_one(scenario: str, setting_key: str, tree: Path, part: Path) -> None:
    """In the child process: one official step in one setting, saved to ``part``."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from official_steps import STEPS

    from helpers.official_settings import BY_KEY

    _, step = STEPS[scenario]
    with tempfile.TemporaryDirectory(prefix="official-run-") as folder:
        os.chdir(folder)  # scripts that write logs write them there
        produced = step(tree, BY_KEY[setting_key])
        torch.save(produced, part)


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def store(parts: dict[str, dict[str, dict[str, Any]]], sources: dict[str, dict[str, str]], out: Path) -> None:
    """``parts``: scenario -> setting key -> what the official step produced."""
    from helpers.official_machines import this_machine
    from helpers.official_plugin_setting import MODEL, SCENARIOS
    from helpers.official_plugin_storage import encode
    from helpers.official_settings import BY_KEY, SETTINGS

    stored = {
        "what": "tensors one official training step produced per scenario and setting (float32, CPU, one thread): "
                "x_adv, term/* (the loss and its terms), grad/* (each parameter's gradient), after/* (each parameter "
                "and buffer after the step and any weight-perturbation restore); the first setting whole, the others "
                "sketched (tests/helpers/official_plugin_storage.py); checked by "
                "tests/methods/test_official_plugins.py",
        "produced": {**this_machine(), "threads": 1, "python": platform.python_version()},
        "setting": f"{MODEL}; settings {', '.join(s.key for s in SETTINGS)} "
                   "(tests/helpers/official_settings.py: the batch's "
                   "seed and label rotation, deterministic_inputs of the batch size, deterministic_state weights "
                   "plain or perturbed); lbgat's start draw given to the official code "
                   "(tests/helpers/official_plugin_setting.py)",
        "scenarios": {},
    }
    for name, by_setting in parts.items():
        scenario = SCENARIOS[name]
        first = next(iter(by_setting.values()))
        stored["scenarios"][name] = {
            "official": scenario.official, "source": sources[_family(name)], "notes": first["notes"],
            "settings": {key: {"forwards": part["forwards"],
                               "tensors": encode(part["tensors"], scenario, BY_KEY[key])}
                         for key, part in by_setting.items()},
        }
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    write_atomically(out, lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def _family(scenario: str) -> str:
    from official_steps import STEPS

    return STEPS[scenario][0]


def compare(scenarios: list[str], setting_keys: list[str], stored_path: Path | None, parts: Path | None) -> bool:
    """Per scenario, setting and group, the largest |official - lbgat|: against the exact official tensors kept
    with --parts when given (then 0 means bit-identical), otherwise against the stored ones (quantised, and
    sketched beyond the first setting: groups grad~ and after~ give the largest gap as a fraction of the
    bound). True where every tensor is within the tolerance."""
    from helpers.official_plugin_setting import lbgat_step
    from helpers.official_plugin_storage import decode, differences, load_stored
    from helpers.official_settings import BY_KEY

    torch.set_num_threads(1)
    stored = load_stored(stored_path) if stored_path is not None else None
    same = True
    for name in scenarios:
        print(f"{name}:")
        for key in setting_keys:
            if parts:
                official: Any = torch.load(parts / part_name(name, key), weights_only=True)["tensors"]
            else:
                official = decode(stored, name, BY_KEY[key])
            groups = differences(official, lbgat_step(name, BY_KEY[key]))
            failing = sum(len(failed) for _, _, failed in groups.values())
            same = same and not failing
            print(f"  {key}: {failing} tensors beyond 1e-6 + 1e-6 |official|")
            for group, (largest, where, failed) in groups.items():
                print(f"    {group:6s} max {largest:.3e} at {where}"
                      f"{'; beyond: ' + ', '.join(failed[:4]) if failed else ''}")
    return same


def main() -> None:
    sys.path[:0] = [str(HERE), str(ROOT / "src"), str(ROOT / "tests")]
    from official_steps import STEPS

    from helpers.official_machines import DATA, machine_key, stored_for_this_machine, this_machine
    from helpers.official_settings import SETTINGS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for family, (option, _, _) in REPOSITORIES.items():
        parser.add_argument(f"--{option}", type=Path, help=f"git repository of the official {family} code")
        parser.add_argument(f"--{option}-commit", default=None, help="commit to extract (default: the spec's)")
    parser.add_argument("--deps", action="append", default=[], help="folder with the official code's imports "
                        "(advertorch for RPAT), added to the child's PYTHONPATH; repeatable")
    parser.add_argument("--scenario", action="append", choices=sorted(STEPS), help="default: all")
    parser.add_argument("--setting", action="append", choices=[setting.key for setting in SETTINGS],
                        help="default: all (a file of some settings only does not pass the tests)")
    parser.add_argument("--out", type=Path, help="default: tests/fixtures/official_plugins.<this machine>.pt.xz "
                        "(entered in tests/fixtures/official_machines.json); with --compare: this machine's "
                        "stored file")
    parser.add_argument("--compare", action="store_true", help="only compare lbgat with the stored file")
    parser.add_argument("--parts", type=Path, help="keep each official step's exact tensors in this folder "
                        "(and, with --compare, compare against them instead of the stored file)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-setting", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        run_one(options.one, options.one_setting, options.tree, options.part)
        return
    scenarios = options.scenario or list(STEPS)
    setting_keys = options.setting or [setting.key for setting in SETTINGS]
    if options.compare:
        if options.out is None and options.parts is None:
            options.out, machine = stored_for_this_machine("plugins")
            if options.out is None:
                parser.error(machine)
            print(f"stored official outputs of {machine}: {options.out}")
        if not compare(scenarios, setting_keys, options.out, options.parts):
            sys.exit(1)
        return
    if options.out is None:
        options.out = DATA / f"official_plugins.{machine_key(this_machine())}.pt.xz"
    from harness import checkout

    sources, trees = {}, {}
    for family in sorted({STEPS[name][0] for name in scenarios}):
        option, url, spec_commit = REPOSITORIES[family]
        repository = getattr(options, option)
        if repository is None:
            parser.error(f"--{option} is needed for {', '.join(n for n in scenarios if STEPS[n][0] == family)}")
        tree, commit = checkout(repository, getattr(options, f"{option}_commit") or spec_commit)
        trees[family], sources[family] = tree, {"repo": url, "commit": commit}
    try:
        run_all(scenarios, setting_keys, trees, sources, options)
    finally:
        for tree in trees.values():
            shutil.rmtree(tree, ignore_errors=True)


def run_all(scenarios: list[str], setting_keys: list[str], trees: dict[str, Path],
            sources: dict[str, dict[str, str]], options: argparse.Namespace) -> None:
    from official_steps import STEPS

    parts: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="official-parts-") as folder:
        for name in scenarios:
            parts[name] = {}
            for key in setting_keys:
                part = (options.parts or Path(folder)) / part_name(name, key)
                part.parent.mkdir(parents=True, exist_ok=True)
                command = [sys.executable, __file__, "--one", name, "--one-setting", key,
                           "--tree", str(trees[STEPS[name][0]]), "--part", str(part)]
                subprocess.run(command, check=True, env=child_environment(options.deps))
                parts[name][key] = torch.load(part, weights_only=True)
            print(f"{name}: official step recorded in {len(setting_keys)} settings "
                  f"({len(parts[name][setting_keys[0]]['tensors'])} tensors each)")
    store(parts, sources, options.out)
    print(f"stored {options.out} ({options.out.stat().st_size} bytes)")
    from helpers.official_machines import DATA, register, this_machine

    if options.out.parent.resolve() == DATA.resolve():
        register("plugins", options.out, this_machine())


if __name__ == "__main__":
    main()
