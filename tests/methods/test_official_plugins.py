"""lbgat's MART, AWP, ISEAT and RPAT training steps against stored outputs of the official code, in
several settings.

tests/fixtures/official_plugins*.pt.xz hold, per machine, what one training step of the official code produced per
scenario (YisenWang/MART ``mart_loss``; csdongxian/AWP AT_AWP and trades_AWP; TreeLLi/ISEAT ``update()``; FlaAI/RPAT
``adv_train_ra`` / ``adv_trades_ra`` / ``adv_mart_ra``; repositories, commits and what was neutralised are
recorded there and in docs/reproduction.md): the attack's output, the loss and its terms, every gradient,
every parameter and BatchNorm buffer after the step (and after AWP's restore). The official code is not
needed here: the same weights, batch, attack start and optimiser are rebuilt with lbgat
(tests/helpers/official_plugin_setting.py), one lbgat step is run through the plug-in API (``create_method(...,
plugins=...)``, ``method(batch)``, backward, SGD step, ``method.after_step()``), and every tensor must match
to 1e-6 (absolute) + 1e-6 (relative) per element, in every setting of tests/helpers/official_settings.py (3 seeds x
batch 8 and 16 x plain and perturbed weights; the first setting stored whole, the others with x_adv per
element and the gradients and weights sketched, tests/helpers/official_plugin_storage.py).

The official outputs are of float32 CPU kernels (one thread), stored per machine (tests/helpers/official_machines.py,
tests/fixtures/official_machines.json): an attack's sign steps turn a rounding difference of another kernel (the
same torch and AVX512 on an Intel Xeon and an AMD EPYC already differ) into a different adversarial example,
so the test uses the outputs produced on a machine like this one and is skipped, naming the machines stored,
where there are none.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from helpers.official_machines import DATA, load_manifest, machine_key, stored_for_this_machine
from helpers.official_plugin_setting import SCENARIOS, lbgat_step
from helpers.official_plugin_storage import (
    attack_as_stored,
    decode,
    differences,
    load_stored,
    stored_forwards,
    stored_settings,
)
from helpers.official_settings import FIRST, SETTINGS, Setting
from lbgat.config import build_config, load_yaml
from lbgat.recipes import find_recipe

RELATIVE_TERM_TOLERANCE = 1e-5  # measured: at most 9e-7 (pgd-at+rpat, whose attack rounds differently)


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    """The official outputs produced on a machine like this one (skipped, saying why, where none is stored)."""
    path, machine = stored_for_this_machine("plugins")
    if path is None:
        pytest.skip(machine)
    return load_stored(path)


def report(groups: dict[str, tuple[float, str, list[str]]]) -> str:
    return "; ".join(f"{group}: max {largest:.3e} at {where}, beyond the tolerance: {failing[:4]}"
                     for group, (largest, where, failing) in groups.items() if failing)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.key)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_step_matches_the_official_step(scenario: str, setting: Setting, stored: dict[str, Any],
                                        one_thread: None) -> None:
    if setting not in stored_settings(stored, scenario):
        pytest.skip(f"this machine's file holds {FIRST.key} only (stored in the first layout): rerun "
                    "tools/official_compare/run_comparison.py here to store every setting")
    official = decode(stored, scenario, setting)
    ours = lbgat_step(scenario, setting, attack_as_stored(stored, scenario))
    assert sorted(ours) == sorted([*official.tensors, *official.sketches])
    groups = differences(official, ours)
    assert not any(failing for _, _, failing in groups.values()), (
        f"{scenario} in {setting.key} differs from the official step: {report(groups)}")
    # The RPAT and KL terms are 1e-4 to 1e-2: 1e-6 absolute alone would let a 1% error in them through.
    for key in (key for key in official.tensors if key.startswith("term/")):
        mine, theirs = float(ours[key]), float(official.tensors[key])
        assert abs(mine - theirs) <= RELATIVE_TERM_TOLERANCE * abs(theirs), (
            f"{scenario} {setting.key} {key}: lbgat {mine!r}, official {theirs!r}")


@pytest.mark.parametrize("entry", load_manifest()["machines"], ids=machine_key)
def test_stored_outputs_say_where_they_come_from(entry: dict[str, Any]) -> None:
    """Each machine's file (whichever machine runs the test) names the official repository and full commit
    of each scenario, the forwards it made (with their BatchNorm mode) and what was neutralised, and the
    torch version and CPU capability the manifest matches it on; the file loads without executing code."""
    stored = load_stored(DATA / entry["files"]["plugins"])
    produced = stored["produced"]
    assert (produced["torch"], produced["cpu_capability"]) == (entry["torch"], entry["cpu_capability"]), entry
    assert set(stored["scenarios"]) == set(SCENARIOS)
    for name, scenario in stored["scenarios"].items():
        assert scenario["source"]["repo"].startswith("https://github.com/"), name
        assert re.fullmatch(r"[0-9a-f]{40}", scenario["source"]["commit"]), name
        assert isinstance(scenario["notes"], list)
        # every setting, or (a file of the first layout) the first only
        assert stored_settings(stored, name) in ([FIRST], list(SETTINGS)), name
        for setting in stored_settings(stored, name):
            forwards = stored_forwards(stored, name, setting)
            assert forwards and all(re.fullmatch(r"(train|eval):(x|x_adv|other)", f) for f in forwards), name


# The shipped recipe that reproduces each compared official code (configs/recipes).
RECIPES = {"recipes/mart-cifar10-wrn34-10": "mart", "recipes/awp-at-cifar10-preact-resnet18": "pgd-at+awp",
           "recipes/awp-trades-cifar10-wrn34-10": "trades+awp", "recipes/iseat-cifar10-wrn34-10": "iseat",
           "recipes/iseat-idbh-cifar10-wrn34-10": "iseat",
           "recipes/rpat-pgd-at-cifar10-resnet18": "pgd-at+rpat", "recipes/rpat-trades-cifar10-resnet18": "trades+rpat",
           "recipes/rpat-mart-cifar10-resnet18": "mart+rpat"}


@pytest.mark.parametrize(("recipe", "scenario"), sorted(RECIPES.items()))
def test_each_recipe_runs_the_attack_its_official_comparison_verified(recipe: str, scenario: str) -> None:
    """A recipe reproduces its official code by default, so it carries the attack settings with which
    lbgat's step matched the official one (the clipped start and AT_AWP's delta iterate included)."""
    attack = build_config(load_yaml(find_recipe(recipe))).attack
    expected = SCENARIOS[scenario]
    assert (attack.start, attack.iterate, attack.bn_mode, attack.steps) == (
        expected.start, expected.iterate, expected.bn_mode, expected.steps)
    assert attack.eps == pytest.approx(expected.eps) and attack.step_size == pytest.approx(expected.step_size)
