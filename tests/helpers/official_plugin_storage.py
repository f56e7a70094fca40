"""How the official MART, AWP, ISEAT and RPAT steps are stored (tests/fixtures/official_plugins*.pt.xz) and compared.

A step produces about 180,000 numbers per scenario and setting, most of them gradients; stored whole at the
precision the comparison needs they take about 260 kB after xz, so a file holds one setting whole and the
others with what decides whether lbgat took the same step:

- **whole** (the first setting, tests/helpers/official_settings.py ``FIRST``): every tensor, decoded to within
  QUANTUM / 2 = 5e-9 and compared element by element;
- **sketched** (every other setting): x_adv element by element (to within SKETCH_X_QUANTUM / 2 = 5e-8), the
  loss terms and BatchNorm buffers as they are, and each gradient and parameter after the step as a
  sketch: its size, sum of |t|, L2 norm and PROJECTIONS sums against fixed +-1 vectors.

x_adv is where a difference of arithmetic shows (a flipped sign moves a pixel by a whole step), and it is
kept per element everywhere. A sketch is checked against the bound the per-element tolerance implies
(``sketch_gaps``), so a step that passes element by element passes its sketch; a different step (another
x_adv, a wrong term) moves the gradients of a whole layer and its projections far beyond the bound.

A file in the first layout holds the first setting only, in the old layout (``tensors`` and
``forwards`` directly under the scenario), and its official uniform starts were unclipped (lbgat had no
clipped start then): ``attack_as_stored`` gives the attack lbgat matched it with.
"""

from __future__ import annotations

import io
import lzma
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helpers.deterministic import integer_hash_uniform
from helpers.official_plugin_setting import SCENARIOS, Scenario, batch, network
from helpers.official_settings import BY_KEY, FIRST, Setting

# Whole settings: each tensor so that decoding gives it back to within QUANTUM / 2, far inside the 1e-6 the
# comparison allows:
#   "x_adv"     round((x_adv - x) / QUANTUM), x the batch's clean images;
#   "grad/*"    round(g / QUANTUM);
#   "after/*"   of a parameter: round((w' - w_sgd) / QUANTUM), w_sgd = w - lr (g + wd w) the plain first SGD
#               step from the setting's initial weights w with the stored g (what remains is rounding and,
#               with a weight perturbation, what the step at the perturbed point left behind);
#   the rest    (the loss terms, BatchNorm buffers) as they are.
# The integers are mostly small, so the xz compression of the file takes them to a few bits each.
QUANTUM = 1e-8
SKETCH_X_QUANTUM = 1e-7  # x_adv of a sketched setting: rounding noise below it compresses to nothing
PROJECTIONS = 4
SKETCH_SALT = 5_000  # the +-1 vectors' integer-hash salts, apart from the weights' (official_settings.py)
ATOL = RTOL = 1e-6


@dataclass
class Official:
    """One scenario's official step in one setting: tensors to compare element by element, and sketches."""

    tensors: dict[str, torch.Tensor]
    sketches: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_stored(path: Path) -> dict[str, Any]:
    """The stored official outputs: an xz-compressed torch file, loaded without executing code."""
    return torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), weights_only=True)


# The attack settings of a scenario in a file of the first layout, where they differ from SCENARIOS': the
# official clipping of the uniform start was taken out, and lbgat's x' iterate matched AT_AWP in that setting.
BEFORE_ISSUE_22: dict[str, dict[str, str]] = {"pgd-at+awp": {"start": "uniform", "iterate": "x"},
                                              "pgd-at+rpat": {"start": "uniform"}}


def attack_as_stored(stored: dict[str, Any], name: str) -> dict[str, str]:
    """What the file's official step of ``name`` was run with, where it is not SCENARIOS[name]'s attack."""
    return {} if "settings" in stored["scenarios"][name] else BEFORE_ISSUE_22.get(name, {})


def stored_forwards(stored: dict[str, Any], name: str, setting: Setting) -> list[str]:
    """The official step's forwards with their BatchNorm mode (``train:x_adv``, ...)."""
    return list(_entry(stored, name, setting)["forwards"])


def stored_settings(stored: dict[str, Any], name: str) -> list[Setting]:
    """The settings a file holds for scenario ``name`` (a file of the first layout: the first only)."""
    entry = stored["scenarios"][name]
    return [BY_KEY[key] for key in entry["settings"]] if "settings" in entry else [FIRST]


def _entry(stored: dict[str, Any], name: str, setting: Setting) -> dict[str, Any]:
    scenario = stored["scenarios"][name]
    if "settings" not in scenario:
        if setting != FIRST:
            raise KeyError(f"{name}: only {FIRST.key} is stored (a file of the first layout)")
        return {"tensors": scenario["tensors"], "forwards": scenario["forwards"]}
    return scenario["settings"][setting.key]


def _before(scenario: Scenario, setting: Setting) -> dict[str, torch.Tensor]:
    return {key: value.double() for key, value in network(scenario, setting).state_dict().items()}


def _sgd_prediction(scenario: Scenario, key: str, before: dict[str, torch.Tensor],
                    gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    weight = before[key]
    gradient = gradients.get(key)
    if gradient is None:
        return weight
    return weight - scenario.lr * (gradient + scenario.weight_decay * weight)


def _quantised(value: torch.Tensor, quantum: float = QUANTUM) -> torch.Tensor:
    return torch.round(value / quantum).to(torch.int64)


def _signs(count: int) -> torch.Tensor:
    """PROJECTIONS fixed +-1 vectors of length ``count`` (integer arithmetic: the same on every machine)."""
    return torch.stack([torch.where(integer_hash_uniform(count, salt=SKETCH_SALT + row) >= 0, 1.0, -1.0)
                        for row in range(PROJECTIONS)]).double()


def sketch(tensor: torch.Tensor) -> dict[str, Any]:
    values = tensor.detach().double().flatten()
    return {"shape": list(tensor.shape), "abs_sum": float(values.abs().sum()), "norm": float(values.norm()),
            "projections": _signs(values.numel()) @ values}


def sketch_gaps(theirs: dict[str, Any], mine: torch.Tensor, atol: float = ATOL,
                rtol: float = RTOL) -> float:
    """The largest gap of ``mine``'s sketch to the official one, as a fraction of the gap that the
    per-element tolerance |mine_i - theirs_i| <= atol + rtol |theirs_i| allows (above 1: not the same
    step): a projection or the sum of |t| by at most sum_i tol_i = n atol + rtol sum |t|, the norm by at
    most ||tol|| <= sqrt(n) atol + rtol ||t||. Another shape: infinity."""
    if list(mine.shape) != list(theirs["shape"]):
        return math.inf
    count = mine.numel()
    ours = sketch(mine)
    summed = count * atol + rtol * theirs["abs_sum"]
    normed = math.sqrt(count) * atol + rtol * theirs["norm"]
    slack = 1e-12 * (theirs["abs_sum"] + 1.0)  # float64 rounding of the sums themselves
    gaps = [float((ours["projections"] - theirs["projections"]).abs().max()) / (summed + slack),
            abs(ours["abs_sum"] - theirs["abs_sum"]) / (summed + slack),
            abs(ours["norm"] - theirs["norm"]) / (normed + slack)]
    return max(gaps)


def encode(tensors: dict[str, torch.Tensor], scenario: Scenario, setting: Setting) -> dict[str, dict[str, Any]]:
    """The official step's tensors in their stored form: whole for the first setting, sketched for the
    others (see the module's docstring); ``decode`` inverts it."""
    clean = batch(scenario, setting).x.double()
    parameters = set(dict(network(scenario, setting).named_parameters()))
    stored: dict[str, dict[str, Any]] = {}
    if setting != FIRST:
        for name, tensor in tensors.items():
            if name == "x_adv":
                stored[name] = {"as": "minus-x", "quantum": SKETCH_X_QUANTUM,
                                "q": _quantised(tensor.double() - clean, SKETCH_X_QUANTUM)}
            elif name.startswith("grad/") or (name.startswith("after/") and name.split("/", 1)[1] in parameters):
                stored[name] = {"as": "sketch", **sketch(tensor)}
            else:
                stored[name] = {"as": "value", "value": tensor.detach().clone()}
        return stored
    before = _before(scenario, setting)
    gradients = {name[len("grad/"):]: tensor.double() for name, tensor in tensors.items()
                 if name.startswith("grad/")}
    for name, tensor in tensors.items():
        key = name.split("/", 1)[-1]
        if name == "x_adv":
            stored[name] = {"as": "minus-x", "q": _quantised(tensor.double() - clean)}
        elif name.startswith("grad/"):
            stored[name] = {"as": "quantised", "q": _quantised(tensor.double())}
        elif name.startswith("after/") and key in parameters:
            residual = tensor.double() - _sgd_prediction(scenario, key, before, gradients)
            stored[name] = {"as": "sgd-residual", "q": _quantised(residual)}
        else:
            stored[name] = {"as": "value", "value": tensor.detach().clone()}
    return stored


def decode(stored: dict[str, Any], name: str, setting: Setting = FIRST) -> Official:
    """Scenario ``name``'s official step in ``setting``: its tensors (float64 where they were quantised)
    and the sketches of those stored as sketches."""
    scenario = SCENARIOS[name]
    entry = _entry(stored, name, setting)
    encoded = entry["tensors"]
    gradients = {key[len("grad/"):]: item["q"].double() * QUANTUM for key, item in encoded.items()
                 if item["as"] == "quantised"}
    before = _before(scenario, setting) if any(item["as"] == "sgd-residual" for item in encoded.values()) else {}
    official = Official({})
    for key, item in encoded.items():
        if item["as"] == "value":
            official.tensors[key] = item["value"]
        elif item["as"] == "minus-x":
            quantum = item.get("quantum", QUANTUM)
            official.tensors[key] = batch(scenario, setting).x.double() + item["q"].double() * quantum
        elif item["as"] == "quantised":
            official.tensors[key] = item["q"].double() * QUANTUM
        elif item["as"] == "sgd-residual":
            prediction = _sgd_prediction(scenario, key.split("/", 1)[1], before, gradients)
            official.tensors[key] = prediction + item["q"].double() * QUANTUM
        elif item["as"] == "sketch":
            official.sketches[key] = item
        else:
            raise ValueError(f"unknown stored form {item['as']!r} of {key}")
    return official


Groups = dict[str, tuple[float, str, list[str]]]


def differences(official: Official | dict[str, torch.Tensor], ours: dict[str, torch.Tensor], atol: float = ATOL,
                rtol: float = RTOL) -> Groups:
    """Per group of tensors (x_adv, term, grad, after): the largest |official - lbgat|, the tensor it is in,
    and the tensors with an element beyond atol + rtol |official| (missing or reshaped ones included). Sketched
    tensors form the groups ``grad~`` and ``after~``, whose "largest" is the largest gap as a fraction of the
    bound (``sketch_gaps``: above 1 fails)."""
    if not isinstance(official, Official):
        official = Official(official)
    groups: Groups = {}

    def note(group: str, key: str, worst: float, failed: bool) -> None:
        largest, where, failing = groups.get(group, (0.0, "", []))
        if worst > largest or not where:
            largest, where = worst, key
        groups[group] = (largest, where, [*failing, key] if failed else failing)

    for key, theirs in official.tensors.items():
        group = key.split("/", 1)[0]
        mine = ours.get(key)
        if mine is None or mine.shape != theirs.shape:
            note(group, key, math.inf, True)
            continue
        gap = (mine.double() - theirs.double()).abs()
        worst = float(gap.max()) if gap.numel() else 0.0
        note(group, key, worst, bool((gap > atol + rtol * theirs.double().abs()).any()))
    for key, theirs in official.sketches.items():
        group = key.split("/", 1)[0] + "~"
        mine = ours.get(key)
        ratio = math.inf if mine is None else sketch_gaps(theirs, mine, atol, rtol)
        note(group, key, ratio, ratio > 1.0)
    return groups
