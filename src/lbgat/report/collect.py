"""Reading what a report shows: finished runs (their ``config.yaml``, ``metrics.jsonl`` and checkpoint)
and their evaluations (the ``report.json`` that ``lbgat eval`` writes).

A report input is a run folder (it holds ``config.yaml`` or ``last.pt``) or an evaluation folder (it
holds ``report.json``), or the ``report.json`` file itself. A run's evaluation is its ``eval-last``
folder when it has one, else its newest ``eval-*`` folder; an evaluation given on its own finds its
run through the checkpoint path it records. A run and its evaluation given both count once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_yaml
from ..errors import ConfigError
from ..train.run_dir import LAST
from .validate import check_evaluation

EVAL_REPORT = "report.json"
PREFERRED_EVAL = "eval-last"  # what `lbgat eval RUN/last.pt` writes by default
# Method settings that are not hyperparameters of the method's loss.
NOT_HYPERPARAMETERS = ("name", "plugins")
GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "lam": "λ"}


@dataclass(frozen=True)
class Evaluation:
    """One ``report.json`` of ``lbgat eval``."""

    folder: Path
    data: dict[str, Any]

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.data.get("results", []))

    @property
    def protocol(self) -> dict[str, Any]:
        return dict(self.data.get("protocol", {}))

    @property
    def checkpoint(self) -> dict[str, Any]:
        return dict(self.data.get("checkpoint", {}))

    def accuracy(self, attack: str) -> float | None:
        for row in self.results:
            if row.get("attack") == attack:
                return row.get("accuracy")
        return None

    def attack(self, name: str) -> dict[str, Any] | None:
        return next((row for row in self.results if row.get("attack") == name), None)


@dataclass
class Run:
    """A run and/or its evaluation, as one row of the report."""

    run_dir: Path | None
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml as written (method flattened)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl "epoch" records, in order
    evaluation: Evaluation | None = None
    label: str = ""

    @property
    def method(self) -> dict[str, Any]:
        return dict(self.config.get("method") or {})

    @property
    def method_name(self) -> str:
        return str(self.method.get("name") or (self.evaluation.checkpoint.get("method") if self.evaluation else None)
                   or "?")

    @property
    def plugins(self) -> list[str]:
        return [str(name) for name in self.method.get("plugins") or []]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The host method's own settings (plug-ins' settings are in :attr:`plugin_settings`)."""
        plugins = set(self.plugins)
        return {key: value for key, value in self.method.items()
                if key not in NOT_HYPERPARAMETERS and key not in plugins and not isinstance(value, dict)}

    @property
    def plugin_settings(self) -> dict[str, dict[str, Any]]:
        return {name: dict(self.method.get(name) or {}) for name in self.plugins}

    @property
    def dataset(self) -> str:
        if self.evaluation is not None and self.evaluation.protocol.get("dataset"):
            return str(self.evaluation.protocol["dataset"])
        return str((self.config.get("data") or {}).get("name") or "?")

    @property
    def model(self) -> str:
        if self.config.get("model"):
            return str(self.config["model"])
        return str(self.evaluation.checkpoint.get("arch")) if self.evaluation else "?"

    @property
    def teacher(self) -> str | None:
        return self.config.get("teacher")

    @property
    def epochs_planned(self) -> int | None:
        return (self.config.get("schedule") or {}).get("epochs")

    @property
    def epochs_done(self) -> int | None:
        if self.evaluation is not None and self.evaluation.checkpoint.get("epochs_done") is not None:
            return int(self.evaluation.checkpoint["epochs_done"])
        return self.epochs[-1]["epoch"] if self.epochs else None

    @property
    def short_label(self) -> str:
        """``trades (α=6)``, ``pgd-at+awp``: the method, its plug-ins and its α/β-like weights."""
        name = "+".join([self.method_name, *self.plugins])
        shown = [f"{GREEK[key]}={_number(value)}" for key, value in self.hyperparameters.items()
                 if key in GREEK and isinstance(value, int | float) and not isinstance(value, bool)]
        if self.method_name in ("lbgat", "lbgat-trades", "lbgat-alp"):
            shown = [item for item in shown if not item.startswith("β=1")]  # the paper's fixed β = 1
        if self.weights != "raw":
            shown.append(f"{self.weights} weights")  # an average is another model than the raw weights
        return f"{name} ({', '.join(shown)})" if shown else name

    @property
    def weights(self) -> str:
        """Which weights the evaluation measured: raw, ema or swa (reports from before averaging: raw)."""
        if self.evaluation is None:
            return "raw"
        return str(self.evaluation.checkpoint.get("weights") or "raw")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def collect(inputs: list[Path]) -> list[Run]:
    """One :class:`Run` per distinct run (or stand-alone evaluation) among ``inputs``, in the order given."""
    if not inputs:
        raise ConfigError("no runs or evaluations given")
    runs: list[Run] = []
    by_dir: dict[Path, Run] = {}
    for path in inputs:
        run = _read_input(path)
        key = (run.run_dir or run.evaluation.folder).resolve()  # type: ignore[union-attr]
        if key in by_dir:
            known = by_dir[key]
            if known.evaluation is None or (run.evaluation is not None and known.evaluation != run.evaluation
                                            and _is_explicit_eval(path)):
                known.evaluation = run.evaluation
            continue
        by_dir[key] = run
        runs.append(run)
    _assign_labels(runs)
    return runs


def _is_explicit_eval(path: Path) -> bool:
    return path.name == EVAL_REPORT or (path / EVAL_REPORT).is_file()


def _read_input(path: Path) -> Run:
    if not path.exists():
        raise ConfigError(f"{path} does not exist (give a run folder or an evaluation folder)")
    if path.is_file():
        if path.name != EVAL_REPORT:
            raise ConfigError(f"{path} is a file but not an evaluation's {EVAL_REPORT}; give a run folder or an "
                              "evaluation folder")
        path = path.parent
    if (path / EVAL_REPORT).is_file():
        evaluation = read_evaluation(path)
        run_dir = _run_of(evaluation)
        run = read_run(run_dir) if run_dir is not None else Run(None)
        run.evaluation = evaluation
        return run
    if (path / "config.yaml").is_file() or (path / LAST).is_file():
        run = read_run(path)
        run.evaluation = find_evaluation(path)
        return run
    raise ConfigError(f"{path} is neither a run folder (config.yaml, {LAST}) nor an evaluation folder "
                      f"({EVAL_REPORT})")


def _run_of(evaluation: Evaluation) -> Path | None:
    """The run folder of an evaluation: the folder of the checkpoint it evaluated (as recorded, which may be
    relative to where `lbgat eval` ran), else the folder the evaluation sits in (RUN/eval-last)."""
    recorded = evaluation.checkpoint.get("path")
    for folder in ([Path(recorded).parent] if recorded else []) + [evaluation.folder.parent]:
        if (folder / "config.yaml").is_file():
            return folder
    return None


def read_evaluation(folder: Path) -> Evaluation:
    path = folder / EVAL_REPORT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the evaluation {path}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ConfigError(f"{path} is not a report.json written by `lbgat eval` (no results)")
    check_evaluation(path, data)
    return Evaluation(folder, data)


def find_evaluation(run_dir: Path) -> Evaluation | None:
    """The run's evaluation of last.pt if there is one, else its newest evaluation folder."""
    preferred = run_dir / PREFERRED_EVAL
    if (preferred / EVAL_REPORT).is_file():
        return read_evaluation(preferred)
    candidates = sorted((folder for folder in run_dir.glob("eval-*") if (folder / EVAL_REPORT).is_file()),
                        key=lambda folder: (folder / EVAL_REPORT).stat().st_mtime)
    return read_evaluation(candidates[-1]) if candidates else None


def read_run(run_dir: Path) -> Run:
    config_path = run_dir / "config.yaml"
    config = load_yaml(config_path) if config_path.is_file() else {}
    return Run(run_dir, config=config, epochs=read_epochs(run_dir / "metrics.jsonl"))


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl; a resumed run's repeated epochs count once (the latest)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    epochs: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        if isinstance(record, dict) and record.get("event") == "epoch" and isinstance(record.get("epoch"), int):
            epochs[record["epoch"]] = record
    return [epochs[epoch] for epoch in sorted(epochs)]


def _assign_labels(runs: list[Run]) -> None:
    """Each run's label: its method label, with its folder's name where two would read the same (and a
    number where even that does not tell them apart)."""
    for run in runs:
        if not run.label:
            run.label = run.short_label
    for attempt in (_folder_name, lambda run: str(runs.index(run) + 1)):
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.label] = counts.get(run.label, 0) + 1
        for run in runs:
            if counts[run.label] > 1:
                run.label = f"{run.label} [{attempt(run)}]"


def _folder_name(run: Run) -> str:
    """The run folder's name; for an evaluation without its run, the folder it sits in (RUN/eval-last)."""
    if run.run_dir is not None:
        return run.run_dir.name
    folder = run.evaluation.folder if run.evaluation else Path("?")
    return folder.parent.name if folder.name.startswith("eval") and folder.parent.name else folder.name
