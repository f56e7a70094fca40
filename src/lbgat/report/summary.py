"""What the report says about each run: the robust attack the trade-off plots, attack names as people write
them, the protocol in words, and the rows of the table of runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evaluate.doubts import Doubt, doubts_of, mark_text
from ..evaluate.intervals import accuracy_text, interval_of
from ..methods.plugin import plugin_summaries
from .collect import GREEK, Evaluation, Run

# How strong an attack family is taken to be when one attack must stand for "robust accuracy".
STRENGTH = {"aa": 3, "cw": 2, "pgd": 1, "fgsm": 0}
NORM_SIGN = {"Linf": "L∞", "L2": "L2"}


def attack_kind(row: dict[str, Any]) -> str:
    return str(row.get("kind") or row.get("attack", ""))


def is_white_box_robust(row: dict[str, Any]) -> bool:
    return attack_kind(row) in STRENGTH


def attack_title(row: dict[str, Any]) -> str:
    """``PGD-20``, ``CW-20``, ``AutoAttack``, ``FGSM``, ``transfer PGD-20``, ``clean``."""
    kind, steps = attack_kind(row), row.get("steps")
    if kind == "aa":
        version = (row.get("autoattack") or {}).get("version")
        return "AutoAttack" + (f" ({version})" if version and version != "standard" else "")
    if kind == "pgd":
        return f"PGD-{steps}"
    if kind == "cw":
        return f"CW-{steps}"
    if kind == "transfer":
        return f"transfer PGD-{steps}"
    if kind == "fgsm":
        return "FGSM"
    return str(row.get("attack", kind))


def _rank(row: dict[str, Any]) -> tuple[int, int]:
    return STRENGTH.get(attack_kind(row), -1), int(row.get("steps") or 0)


def strongest(evaluation: Evaluation) -> dict[str, Any] | None:
    """The evaluation's strongest white-box attack (AutoAttack > CW > PGD > FGSM, then more steps)."""
    rows = [row for row in evaluation.results if is_white_box_robust(row)]
    return max(rows, key=_rank) if rows else None


def common_robust_attack(runs: list[Run]) -> str | None:
    """The strongest white-box attack every evaluated run has (so their points are comparable)."""
    evaluated = [run.evaluation for run in runs if run.evaluation is not None]
    if not evaluated:
        return None
    shared = set.intersection(*({row["attack"] for row in ev.results if is_white_box_robust(row)} for ev in evaluated))
    if not shared:
        return None
    rows = [row for row in evaluated[0].results if row["attack"] in shared]
    return max(rows, key=_rank)["attack"]


def eps_text(value: Any) -> str:
    """ε as a number, with enough digits that 0.031 and 8/255 (0.0313725) stay apart."""
    return "?" if value is None else f"{float(value):.6g}"


def attack_settings(row: dict[str, Any]) -> str:
    """``L∞ ε=0.031, 20 steps of 0.003, uniform random start``: the protocol of one attack."""
    norm = NORM_SIGN.get(str(row.get("norm")), str(row.get("norm")))
    parts = [f"{norm} ε={eps_text(row.get('eps'))}"]
    kind = attack_kind(row)
    if kind in ("pgd", "cw", "transfer"):
        parts.append(f"{row.get('steps')} steps of {eps_text(row.get('step_size'))}")
        parts.append("uniform random start" if row.get("random_start") else "no random start")
        if kind == "cw" and row.get("kappa") is not None:
            parts.append(f"κ={row['kappa']:g}")
    elif kind == "aa":
        version = (row.get("autoattack") or {}).get("version", "standard")
        parts.append(f"version {version}")
    return ", ".join(parts)


def data_text(evaluation: Evaluation) -> str:
    protocol = evaluation.protocol
    return f"{protocol.get('dataset', '?')} {protocol.get('split', 'test')} split, n = {protocol.get('n', '?')}"


def protocol_text(evaluation: Evaluation, attack: str | None = None) -> str:
    """The data and the named (default: strongest) attack's settings, with the model mode and seed."""
    row = evaluation.attack(attack) if attack else strongest(evaluation)
    protocol = evaluation.protocol
    text = data_text(evaluation)
    if row is not None:
        text += f"; {attack_title(row)}: {attack_settings(row)}"
    text += f"; model in {protocol.get('bn_mode', 'eval')} mode, seed {protocol.get('seed', '?')}"
    return text


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return str(value)


def hyperparameter_text(run: Run) -> str:
    own = ", ".join(f"{GREEK.get(key, key)}={format_value(value)}" for key, value in run.hyperparameters.items())
    # The plug-ins as every report names them: RPAT's lambda on both scales, VFD as a reconstruction.
    plugins = plugin_summaries({"plugins": run.plugins, "plugin_params": run.plugin_settings})
    text = own or "none"
    if plugins:
        text += "; plug-ins: " + ", ".join(plugins)
    return text


@dataclass(frozen=True)
class TableRow:
    """One run, as the table of runs shows it (every value already a string)."""

    label: str
    method: str
    hyperparameters: str
    models: str
    dataset: str
    epochs: str
    accuracies: dict[str, str]  # attack name -> "87.50% [84.3, 90.1]" (with its 95% interval)
    protocol: str
    checkpoint: str
    # attack name -> the sanity checks that doubt its number (lbgat.evaluate.doubts), and their marks
    doubts: dict[str, list[Doubt]] = field(default_factory=dict)
    marks: dict[str, str] = field(default_factory=dict)


def table_attacks(runs: list[Run]) -> list[str]:
    """Every attack any run was evaluated with, in the order they first appear (clean first)."""
    names: list[str] = []
    for run in runs:
        for row in run.evaluation.results if run.evaluation else []:
            if row["attack"] not in names:
                names.append(row["attack"])
    return sorted(names, key=lambda name: name != "clean")


def attack_headers(runs: list[Run], names: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in names:
        row = next(row for run in runs if run.evaluation for row in run.evaluation.results if row["attack"] == name)
        headers[name] = attack_title(row)
    return headers


def table_row(run: Run, attacks: list[str]) -> TableRow:
    models = run.model + (f" (teacher {run.teacher})" if run.teacher else "")
    planned, done = run.epochs_planned, run.epochs_done
    epochs = "?" if done is None and planned is None else (
        f"{done if done is not None else '?'}" + (f" of {planned}" if planned is not None and planned != done else ""))
    accuracies: dict[str, str] = {}
    protocol = "not evaluated"
    checkpoint = "–"
    doubts: dict[str, list[Doubt]] = {}
    if run.evaluation is not None:
        doubts = {name: found for name, found in doubts_of(run.evaluation.data).items() if name in attacks and found}
        for name in attacks:
            value, row = run.evaluation.accuracy(name), run.evaluation.attack(name)
            accuracies[name] = "–" if value is None or row is None else accuracy_text(value, interval_of(row))
        protocol = protocol_text(run.evaluation)
        sha = run.evaluation.checkpoint.get("sha256")
        checkpoint = f"{sha[:12]}" if sha else "–"
    return TableRow(run.label, "+".join([run.method_name, *run.plugins]), hyperparameter_text(run), models,
                    run.dataset, epochs, accuracies, protocol, checkpoint, doubts,
                    {name: mark_text(found) for name, found in doubts.items()})


def doubt_notes(rows: list[TableRow], headers: dict[str, str]) -> list[str]:
    """The footnote of the table of runs: each doubted number, the check that doubts it and what it found."""
    return [f"{row.label}, {headers.get(name, name)}: {doubt.note}" for row in rows
            for name, found in row.doubts.items() for doubt in found]
