"""Run the official LBGAT+TRADES (beta 6 and 0) and TRADES training steps on lbgat's setting and store the
sha256 of every tensor they produced (tests/fixtures/official_steps*.json, checked by
tests/methods/test_official_steps.py). See README.md in this folder and docs/reproduction.md.

    OMP_NUM_THREADS=1 python tools/official_compare/lbgat_trades_steps.py \
        --lbgat PATH/TO/dvlab-research/LBGAT --trades PATH/TO/yaodongyu/TRADES

Each PATH is a git repository (bare or not); the commit (default: the one shared/spec/methods.md §0 names)
is extracted into a temporary folder and its files are imported from there: LBGAT ``lbgat.py``
``lbgat_loss``, ``models/wideresnet.py`` ``WideResNet(depth=16, widen_factor=2)`` (the student),
``models/resnetcifar.py`` ``ResNet18_cifar()`` (the teacher); TRADES ``trades.py`` ``trades_loss``. Each
step is the training scripts' ``loss = ..._loss(...)``, ``loss.backward()``, ``optimizer.step()`` on the
weights, batch and start draw of tests/helpers/official_step_setting.py, with ``torch.randn`` returning lbgat's
start draw and ``.cuda()`` a no-op, in every setting of tests/helpers/official_settings.py (the first with a hash
per tensor, the others per group of tensors). The file is written for this machine
(tests/helpers/official_machines.py) and entered in tests/fixtures/official_machines.json; ``--check`` then runs
lbgat's step and lists what differs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from harness import OfficialStep

    from helpers.official_settings import Setting

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPOSITORIES = {  # option: (repository, commit named in shared/spec/methods.md §0)
    "lbgat": ("https://github.com/dvlab-research/LBGAT", "f7f33f0ea7d2b1ee89741144604b29624057f44a"),
    "trades": ("https://github.com/yaodongyu/TRADES", "6e8e11b7c281371c2f027ffadfbaea80361f09de"),
}
FILES = {"lbgat": ["lbgat.py", "models/wideresnet.py", "models/resnetcifar.py"], "trades": ["trades.py"]}


def prepare_step(scenario: str, setting: Setting, lbgat_tree: Path, trades_tree: Path,
                 record: bool = False) -> OfficialStep:
    """One official step of ``scenario`` (tests/helpers/official_step_setting.py SCENARIOS) in ``setting``, set up:
    ``run()`` returns the loss and, with ``record``, each gradient before the optimiser's step."""
    from harness import OfficialStep, StartDraw, on_cpu
    from official_steps import module_from_file  # its name "lbgat" is lbgat's package: loaded by path

    from helpers.official_settings import initial_state
    from helpers.official_step_setting import (
        EPS,
        NUM_CLASSES,
        SCENARIOS,
        STEP_SIZE,
        STEPS,
        batch,
        gradients_of,
        optimizer,
        start_noise,
    )

    _, _, function, beta = SCENARIOS[scenario]
    wideresnet = module_from_file(lbgat_tree / "models" / "wideresnet.py", "official_wideresnet")
    nets: dict[str, nn.Module] = {"student": wideresnet.WideResNet(depth=16, num_classes=NUM_CLASSES, widen_factor=2)}
    if function == "lbgat_loss":
        resnet = module_from_file(lbgat_tree / "models" / "resnetcifar.py", "official_resnetcifar")
        nets["teacher"] = resnet.ResNet18_cifar(num_classes=NUM_CLASSES)
        loss_module = module_from_file(lbgat_tree / "lbgat.py", "official_lbgat")
    else:
        loss_module = module_from_file(trades_tree / "trades.py", "official_trades")
    for net in nets.values():
        net.load_state_dict(initial_state(net, setting))
        net.train()
    step_batch = batch(setting)
    sgd = optimizer(nets)  # the scripts' SGD: one group per network, student first
    arguments = {"x_natural": step_batch.x, "y": step_batch.y, "optimizer": sgd, "step_size": STEP_SIZE,
                 "epsilon": EPS, "perturb_steps": STEPS, "beta": beta}
    noise = start_noise(step_batch)

    def run() -> dict[str, torch.Tensor]:
        with on_cpu(), StartDraw("normal", noise).installed():
            sgd.zero_grad()  # train(): optimizer.zero_grad(); loss = ...; loss.backward(); optimizer.step()
            if function == "lbgat_loss":
                loss = loss_module.lbgat_loss(model=nets["student"], model_teacher=nets["teacher"], **arguments)
            else:
                loss = loss_module.trades_loss(model=nets["student"], **arguments)
            loss.backward()
            gradients = gradients_of(nets) if record else {}
            sgd.step()
        return {"loss": loss.detach(), **{f"grad/{name}": value for name, value in gradients.items()}}

    return OfficialStep(nets, [sgd], run, step_batch.x)


def official_step(scenario: str, setting: Setting, lbgat_tree: Path, trades_tree: Path) -> dict[str, torch.Tensor]:
    """One official step of ``scenario`` (tests/helpers/official_step_setting.py SCENARIOS) in ``setting``, every
    tensor by the names lbgat's ``lbgat_step`` gives them."""
    from harness import ForwardLog

    from helpers.official_step_setting import record

    step = prepare_step(scenario, setting, lbgat_tree, trades_tree, record=True)
    forwards = ForwardLog(step.trained["student"])
    left = step.run()
    gradients = {name.removeprefix("grad/"): value for name, value in left.items() if name.startswith("grad/")}
    # x_adv: the input of the student's one train-mode forward that is not the clean batch
    adversarial = [inputs for inputs, training in forwards.calls
                   if training and not torch.equal(inputs, step.inputs)]
    if len(adversarial) != 1:
        raise AssertionError(f"expected one train-mode forward of x_adv, found {len(adversarial)}")
    return record(adversarial[0], left["loss"], step.trained, gradients)


def produce(lbgat_tree: Path, trades_tree: Path, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from helpers.official_machines import describe, this_machine
    from helpers.official_settings import FIRST, SETTINGS
    from helpers.official_step_setting import SCENARIOS, group_hashes, sha256

    machine = this_machine()
    scenarios: dict[str, Any] = {}
    for name in SCENARIOS:
        entry: dict[str, Any] = {"settings": {}}
        for setting in SETTINGS:
            tensors = official_step(name, setting, lbgat_tree, trades_tree)
            loss = tensors["loss"].item()
            if setting == FIRST:
                entry.update(loss=loss, sha256={key: sha256(value) for key, value in tensors.items()})
            else:
                entry["settings"][setting.key] = {"loss": loss, "groups": group_hashes(tensors)}
        scenarios[name] = entry
        print(f"{name}: official step recorded in {len(SETTINGS)} settings (loss in {FIRST.key} {entry['loss']!r})")
    previous = json.loads((ROOT / "tests" / "data" / "official_steps.json").read_text())
    return {
        "what": previous["what"].rstrip(".") + "; settings after the first (tests/helpers/official_settings.py): one "
                "sha256 per group of tensors (tests/helpers/official_step_setting.py group_hashes)",
        "official_code": {"lbgat_loss": {**sources["lbgat"], "files": FILES["lbgat"]},
                          "trades_loss": {**sources["trades"], "files": FILES["trades"]}},
        "setting": {**previous["setting"], "settings": (
            f"{', '.join(s.key for s in SETTINGS)} (tests/helpers/official_settings.py: the batch's seed and label "
            "rotation, batch size, deterministic_state weights plain or perturbed); "
            f"{FIRST.key} is the batch and weights above")},
        "produced": {"date": datetime.date.today().isoformat(), **machine, "threads": torch.get_num_threads(),
                     "float_dtype": "float32", "device": f"CPU, 1 thread, {describe(machine)}",
                     "by": "tools/official_compare/lbgat_trades_steps.py"},
        "scenarios": scenarios,
    }


def differing(stored: dict[str, Any], name: str, setting: Setting, ours: dict[str, torch.Tensor]) -> list[str]:
    """The tensors (first setting) or groups of tensors (the others) of lbgat's step that are not bit-identical
    to the official step's (missing ones included)."""
    from helpers.official_settings import FIRST
    from helpers.official_step_setting import group_hashes, sha256

    scenario = stored["scenarios"][name]
    if setting == FIRST:
        official = scenario["sha256"]
        return [key for key, tensor in ours.items() if sha256(tensor) != official.get(key)] + sorted(
            set(official) - set(ours))
    official = scenario["settings"][setting.key]["groups"]
    mine = group_hashes(ours)
    return sorted(group for group in set(official) | set(mine) if official.get(group) != mine.get(group))


def check(path: Path) -> bool:
    """lbgat's step against the stored hashes of ``path`` in every setting: True where all are bit-identical."""
    from helpers.official_settings import FIRST, SETTINGS
    from helpers.official_step_setting import SCENARIOS, lbgat_step

    stored = json.loads(path.read_text())
    same = True
    for name in SCENARIOS:
        for setting in SETTINGS:
            if setting != FIRST and setting.key not in stored["scenarios"][name].get("settings", {}):
                print(f"{name} {setting.key}: not stored (a file from before issue 22)")
                continue
            ours = lbgat_step(name, setting)
            different = differing(stored, name, setting, ours)
            official_loss = (stored["scenarios"][name] if setting == FIRST
                             else stored["scenarios"][name]["settings"][setting.key])["loss"]
            print(f"{name} {setting.key}: {len(different)} differ; loss lbgat {ours['loss'].item()!r}, official "
                  f"{official_loss!r}{': ' + ', '.join(different[:6]) if different else ''}")
            same = same and not different
    return same


def main() -> None:
    sys.path[:0] = [str(HERE), str(ROOT / "src"), str(ROOT / "tests")]
    from helpers.official_machines import DATA, machine_key, register, stored_for_this_machine, this_machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, (url, _) in REPOSITORIES.items():
        parser.add_argument(f"--{option}", type=Path, help=f"git repository of {url}")
        parser.add_argument(f"--{option}-commit", default=None, help="commit to extract (default: the spec's)")
    parser.add_argument("--out", type=Path, help="default: tests/fixtures/official_steps.<this machine>.json, "
                        "entered in tests/fixtures/official_machines.json")
    parser.add_argument("--check", action="store_true", help="after storing (or alone, without --lbgat): "
                        "compare lbgat's step with the stored hashes")
    options = parser.parse_args()
    torch.set_num_threads(1)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: OMP_NUM_THREADS is not 1 (the steps run on one torch thread regardless)", file=sys.stderr)
    machine = this_machine()
    out = options.out or DATA / f"official_steps.{machine_key(machine)}.json"
    if options.check and not (options.lbgat or options.trades or options.out):
        found, why = stored_for_this_machine("steps")
        if found is None:
            parser.error(why)
        print(f"stored official hashes of {why}: {found}")
        out = found
    if options.lbgat or options.trades:
        from harness import checkout

        trees, sources = {}, {}
        for option, (url, spec_commit) in REPOSITORIES.items():
            repository = getattr(options, option)
            if repository is None:
                parser.error(f"--{option} is needed")
            trees[option], commit = checkout(repository, getattr(options, f"{option}_commit") or spec_commit)
            sources[option] = {"repo": url, "commit": commit}
        try:
            stored = produce(trees["lbgat"], trees["trades"], sources)
        finally:
            for tree in trees.values():
                shutil.rmtree(tree, ignore_errors=True)
        out.write_text(json.dumps(stored, indent=1) + "\n")
        if out.parent == DATA:
            register("steps", out, machine)
        print(f"stored {out} ({out.stat().st_size} bytes)")
    elif not options.check:
        parser.error("--lbgat and --trades (to store the official steps) or --check")
    if options.check:
        if not check(out):
            sys.exit(1)
        if options.lbgat:  # just stored: say so in the file
            stored = json.loads(out.read_text())
            stored["lbgat_at_the_time"] = ("bit-identical to the official output in every stored tensor (338 per "
                                           "LBGAT scenario, 154 for TRADES) of every setting")
            out.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
