"""Run the official weight-averaging code of Wang et al. 2023, ReBAT and DA-Alone over lbgat's small trajectory
of weights and store what it produced (tests/fixtures/official_weight_averages.json). See README.md here.

    python tools/official_compare/weight_averages.py --dm DIR --rpat DIR --da-alone DIR [--check]

Each DIR is a git repository (bare or not) of the official code; its commit (default: the one below) is
extracted into a temporary folder and the averaging functions are read from there: DM-Improves-AT
``gowal21uncovering/utils/watrain.py`` ``ema_update`` and ``update_bn`` (the module's own imports need the
rest of that code base, so only the two definitions are compiled), RPAT ``RPAT_SOTAs/utils.py``
``moving_average`` (likewise), DA-Alone ``src/utils/swa.py`` (imported whole). Each scenario of
tests/helpers/averaging_trajectory.py is called step by step as the official training loop calls it
(``train-wa.py``/``watrain.py``, ``train_cifar_wa.py``, ``src/utils/train.py``), and the average is stored at
every epoch end (after the end-of-epoch BatchNorm step), each value exactly (float32 values as JSON numbers).
``--check`` also runs lbgat's average and prints the largest difference per scenario.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT / "src")]

from harness import checkout, functions_from_file, on_cpu  # noqa: E402

from helpers.averaging_trajectory import EPOCHS, SCENARIOS, STEPS_PER_EPOCH, TinyBN, images, raw_state  # noqa: E402

COMMITS = {
    "dm": ("https://github.com/wzekai99/DM-Improves-AT", "b390f25"),
    "rpat": ("https://github.com/FlaAI/RPAT", "17918b3968f0b94c02e6d77c51c45f0b8f0e1e54"),
    "da-alone": ("https://github.com/TreeLLi/DA-Alone-Improves-AT", "38b740a"),
}
OUTPUT = ROOT / "tests" / "fixtures" / "official_weight_averages.json"
Run = Callable[[], list[dict[str, torch.Tensor]]]


def trajectory() -> tuple[TinyBN, Callable[[int], None]]:
    model = TinyBN()

    def at(step: int) -> None:
        model.load_state_dict(raw_state(model, step))
    at(0)
    return model, at


def wang2023(dm: Path) -> Run:
    functions = functions_from_file(dm / "gowal21uncovering" / "utils" / "watrain.py", ("ema_update", "update_bn"),
                                    {"torch": torch})
    settings = SCENARIOS["wang2023"]

    def run() -> list[dict[str, torch.Tensor]]:
        model, at = trajectory()
        wa_model = deepcopy(model)  # WATrainer.__init__
        # watrain.py counts global_step after the step and starts at warmup_steps; lbgat averages the steps of the
        # epochs after `start`, so its start is warmup_steps = start * steps + 1.
        warmup_steps = settings["start"] * STEPS_PER_EPOCH + 1
        saved = []
        for epoch in range(1, EPOCHS + 1):
            for update_iter in range(1, STEPS_PER_EPOCH + 1):
                global_step = (epoch - 1) * STEPS_PER_EPOCH + update_iter
                at(global_step)
                functions["ema_update"](wa_model, model, global_step, decay_rate=settings["decay"],
                                        warmup_steps=warmup_steps, dynamic_decay=True)
            functions["update_bn"](wa_model, model)
            saved.append({key: value.clone() for key, value in wa_model.state_dict().items()})
        return saved
    return run


def rebat(rpat: Path) -> Run:
    moving_average = functions_from_file(rpat / "RPAT_SOTAs" / "utils.py", ("moving_average",),
                                         {"torch": torch})["moving_average"]
    settings = SCENARIOS["rebat"]

    def run() -> list[dict[str, torch.Tensor]]:
        model, at = trajectory()
        model_wa = deepcopy(model)  # train_cifar_wa.py
        saved = []
        for epoch in range(EPOCHS):
            decay_rate = settings["decay"] if epoch >= settings["start"] else 0.
            for i in range(STEPS_PER_EPOCH):
                at(epoch * STEPS_PER_EPOCH + i + 1)
                moving_average(model_wa, model, decay_rate, update_bn=True)
            saved.append({key: value.clone() for key, value in model_wa.state_dict().items()})
        return saved
    return run


def da_alone(root: Path, name: str) -> Run:
    spec = importlib.util.spec_from_file_location("official_swa", root / "src" / "utils" / "swa.py")
    assert spec is not None and spec.loader is not None
    swa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swa)
    settings = SCENARIOS[name]
    # --swa START DECAY FREQ: DECAY is its alpha (the new weights' share) or 'n' (the equal-weight mean).
    swa_start, swa_freq = settings["start"], settings["every"]
    swa_decay = "n" if settings["decay"] is None else 1 - settings["decay"]

    def run() -> list[dict[str, torch.Tensor]]:
        model, at = trajectory()
        torch.manual_seed(0)
        swa_model = TinyBN()  # fetch_model: a fresh network, overwritten before it is read
        swa_n = 0
        saved = []
        for epoch in range(EPOCHS):
            for i in range(1, STEPS_PER_EPOCH + 1):  # update(): enumerate(loader, 1), after optimizer.step()
                at(epoch * STEPS_PER_EPOCH + i)
                if swa_start <= epoch and i % swa_freq == 0:
                    if isinstance(swa_decay, str):
                        swa.moving_average(swa_model, model, 1.0 / (swa_n + 1))
                        swa_n += 1
                    else:
                        if epoch == swa_start and i // swa_freq == 1:
                            swa_model.load_state_dict(model.state_dict())
                        swa.moving_average(swa_model, model, swa_decay)
            if swa_start <= epoch:  # the epoch's end in train(): bn_update over the training loader
                with on_cpu():
                    swa.bn_update([(x, None) for x in images(epoch)], swa_model)
                swa_model.eval()
                saved.append({key: value.clone() for key, value in swa_model.state_dict().items()})
            else:
                saved.append({})  # nothing of the average is defined yet
        return saved
    return run


def lbgat_run(name: str) -> list[dict[str, torch.Tensor]]:
    from lbgat.config import AverageConfig
    from lbgat.train.averaging import WeightAverage

    model, at = trajectory()
    average = WeightAverage(AverageConfig(**SCENARIOS[name]), model, TinyBN())
    saved = []
    for epoch in range(EPOCHS):
        for i in range(1, STEPS_PER_EPOCH + 1):
            at(epoch * STEPS_PER_EPOCH + i)
            average.step(epoch, i)
        average.end_epoch(epoch, images(epoch))
        saved.append({key: value.clone() for key, value in average.model.state_dict().items()})
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dm", type=Path, required=True, help="a git repository of wzekai99/DM-Improves-AT")
    parser.add_argument("--rpat", type=Path, required=True, help="a git repository of FlaAI/RPAT")
    parser.add_argument("--da-alone", type=Path, required=True, help="a git repository of TreeLLi/DA-Alone-Improves-AT")
    parser.add_argument("--check", action="store_true", help="also print lbgat's largest difference per scenario")
    args = parser.parse_args()
    trees = {key: checkout(getattr(args, key.replace("-", "_")), COMMITS[key][1]) for key in COMMITS}
    runs: dict[str, Run] = {"wang2023": wang2023(trees["dm"][0]), "rebat": rebat(trees["rpat"][0]),
                            "da-alone-mean": da_alone(trees["da-alone"][0], "da-alone-mean"),
                            "da-alone-fixed": da_alone(trees["da-alone"][0], "da-alone-fixed")}
    stored: dict[str, Any] = {
        "about": "official weight averages over tests/helpers/averaging_trajectory.py, stored by "
                 "tools/official_compare/weight_averages.py; per scenario, the average's state at each epoch end",
        "torch": torch.__version__,
        "commits": {key: {"repository": COMMITS[key][0], "commit": full} for key, (_, full) in trees.items()},
        "scenarios": {},
    }
    for name, run in runs.items():
        epochs = run()
        stored["scenarios"][name] = {"settings": SCENARIOS[name], "epochs": [
            {key: value.double().tolist() for key, value in state.items()} for state in epochs]}
        if args.check:
            mine = lbgat_run(name)
            gap = max((float((mine[index][key].double() - value.double()).abs().max())
                       for index, state in enumerate(epochs) for key, value in state.items()
                       if value.is_floating_point()), default=0.0)
            print(f"{name}: largest difference {gap:.3g}")
    OUTPUT.write_text(json.dumps(stored) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
