"""lbgat's LBGAT+TRADES (alpha 6 and 0) and TRADES training steps against stored official outputs.

tests/fixtures/official_steps*.json hold, per machine, the sha256 of every tensor one step of the official code
produced (LBGAT ``lbgat_loss``, TRADES ``trades_loss``, then backward and the official SGD step; repositories,
commits and setting recorded there and in docs/reproduction.md): the attack's output, the loss, each
gradient, each parameter and buffer after the step. The official code is not needed here: the same
weights, batch and attack start are rebuilt with lbgat (tests/helpers/official_step_setting.py), one lbgat step
is run, and every tensor must be bit-identical, in every setting of tests/helpers/official_settings.py
(3 seeds x batch 8 and 16 x plain and perturbed weights; the first setting with a hash per tensor, the others
per group of tensors).

The hashes are of float32 CPU kernels (torch 2.13, one thread), stored per machine: the same torch
version and CPU capability (AVX512) round differently on an Intel Xeon and an AMD EPYC, so the step was
run through the official code on each (tools/official_compare/lbgat_trades_steps.py) and
tests/fixtures/official_machines.json says which file belongs to which (tests/helpers/official_machines.py). Where
no stored machine matches this one the test is skipped, naming the machines stored; where one does, a
difference is a changed computation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers import official_machines
from helpers.official_machines import DATA, MATCHED, load_manifest, machine_key, stored_for_this_machine
from helpers.official_settings import FIRST, SETTINGS, Setting
from helpers.official_step_setting import SCENARIOS, group_hashes, lbgat_step, sha256


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    """The official hashes produced on a machine like this one (skipped, saying why, where none is stored)."""
    path, machine = stored_for_this_machine("steps")
    if path is None:
        pytest.skip(machine)
    return json.loads(path.read_text())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_step_is_bit_identical_to_the_official_step(scenario: str, stored: dict[str, Any], one_thread: None) -> None:
    official = stored["scenarios"][scenario]
    ours = lbgat_step(scenario)
    assert sorted(ours) == sorted(official["sha256"])
    differing = [name for name, tensor in ours.items() if sha256(tensor) != official["sha256"][name]]
    loss = ours["loss"].item()
    assert not differing, (
        f"{len(differing)} of {len(ours)} tensors differ from the official step (loss {loss!r}, official "
        f"{official['loss']!r}, difference {loss - official['loss']:.3e}); first: {differing[:5]}"
    )
    assert loss == official["loss"]


@pytest.mark.parametrize("setting", SETTINGS[1:], ids=lambda setting: setting.key)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_step_is_bit_identical_in_every_other_setting(scenario: str, setting: Setting, stored: dict[str, Any],
                                                      one_thread: None) -> None:
    official = stored["scenarios"][scenario].get("settings", {}).get(setting.key)
    if official is None:
        pytest.skip(f"this machine's file holds {FIRST.key} only (stored in the first layout): rerun "
                    "tools/official_compare/lbgat_trades_steps.py here to store every setting")
    ours = lbgat_step(scenario, setting)
    mine = group_hashes(ours)
    differing = sorted(group for group in set(mine) | set(official["groups"])
                       if mine.get(group) != official["groups"].get(group))
    loss = ours["loss"].item()
    assert not differing, (f"{scenario} in {setting.key}: {differing} differ from the official step (loss {loss!r}, "
                           f"official {official['loss']!r})")
    assert loss == official["loss"]


@pytest.mark.parametrize("entry", load_manifest()["machines"], ids=machine_key)
def test_every_stored_machine_says_where_its_hashes_come_from(entry: dict[str, Any]) -> None:
    """Each machine's file (whichever machine runs the test) names the official commits, holds every
    scenario with every tensor, and was produced with the torch version and CPU capability the manifest
    matches it on."""
    stored = json.loads((DATA / entry["files"]["steps"]).read_text())
    produced = stored["produced"]
    assert (produced["torch"], produced["cpu_capability"]) == (entry["torch"], entry["cpu_capability"]), entry
    assert {code["commit"] for code in stored["official_code"].values()} == {
        "f7f33f0ea7d2b1ee89741144604b29624057f44a", "6e8e11b7c281371c2f027ffadfbaea80361f09de"}
    counts = {name: len(scenario["sha256"]) for name, scenario in stored["scenarios"].items()}
    assert counts == {"lbgat-trades-alpha6": 338, "lbgat-trades-alpha0": 338, "trades-beta6": 154}
    for name, scenario in stored["scenarios"].items():  # every setting, or (the first layout) the first only
        assert sorted(scenario.get("settings", {})) in ([], sorted(setting.key for setting in SETTINGS[1:])), name
        assert all(set(entry["groups"]) == {"x_adv", "loss", "grad", "after"}
                   for entry in scenario.get("settings", {}).values()), name


def test_every_stored_file_belongs_to_one_machine() -> None:
    entries = load_manifest()["machines"]
    listed = [entry["files"][kind] for entry in entries for kind in ("steps", "plugins")]
    on_disk = {path.name for pattern in ("official_steps*.json", "official_plugins*.pt.xz")
               for path in DATA.glob(pattern)}
    assert sorted(listed) == sorted(on_disk)
    assert len({tuple(entry[field] for field in MATCHED) for entry in entries}) == len(entries)


def test_the_stored_outputs_are_chosen_by_cpu_and_a_machine_without_them_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    machine = {"torch": "2.13.0+cpu", "cpu_capability": "AVX512", "machine": "x86_64",
               "cpu_vendor": "GenuineIntel", "cpu_model": "Intel(R) Xeon(R) Platinum 8480+"}
    monkeypatch.setattr(official_machines, "this_machine", lambda: machine)
    assert stored_for_this_machine("steps")[0] == DATA / "official_steps.json"
    machine.update(cpu_vendor="AuthenticAMD", cpu_model="AMD EPYC")
    amd = "torch2.13.0-AVX512-AuthenticAMD-AMD-EPYC"
    assert stored_for_this_machine("plugins")[0] == DATA / f"official_plugins.{amd}.pt.xz"
    machine.update(cpu_model="AMD EPYC 9654 96-Core Processor")  # another model: its kernels are not known
    path, reason = stored_for_this_machine("steps")
    assert path is None
    assert "AMD EPYC 9654" in reason and "GenuineIntel any model" in reason and "AuthenticAMD AMD EPYC (" in reason
    machine.update(cpu_vendor="GenuineIntel", cpu_capability="AVX2")
    assert stored_for_this_machine("steps")[0] is None
    machine.update(cpu_capability="AVX512", cpu_model="Intel(R) Xeon(R) Platinum 8480+")
    exact = {**machine, "files": {"steps": "exact.json", "plugins": "exact.pt.xz"}}
    manifest = load_manifest()
    monkeypatch.setattr(official_machines, "load_manifest", lambda: {**manifest, "machines": [
        *manifest["machines"], exact]})
    assert stored_for_this_machine("steps")[0] == DATA / "exact.json"  # the model name before "any model"


def test_this_machine_is_described() -> None:
    machine = official_machines.this_machine()
    assert all(isinstance(machine[field], str) and machine[field] for field in MATCHED)
