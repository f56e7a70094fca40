"""The model card (README.md) of an export: the model, how it was trained, how it was evaluated and its
numbers, where it came from, and how to load it.

Everything the card quotes from the checkpoint, its settings, its evaluations or the command line (a setting
such as a teacher's path, a folder name, an attack's description) goes through :mod:`lbgat.storage.markdown`: the card
is read on model hubs that render it, and such text must not add a heading, a column, a link or HTML.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from ..checkpoints.export_folder import CONFIG, WEIGHTS
from ..checkpoints.model_spec import ModelSpec
from ..evaluate.doubts import LEGEND, doubts_of, footnotes, marked
from ..methods.plugin import plugin_summaries
from ..models import get_model_entry
from ..models.official import KeyLayout
from ..storage.markdown import code, fenced, join, text
from .evaluations import Evaluation


@dataclass(frozen=True)
class CardInputs:
    spec: ModelSpec
    layout: KeyLayout
    meta: dict[str, Any]  # the source checkpoint's metadata
    checkpoint_name: str
    checkpoint_sha256: str
    weights_sha256: str
    num_tensors: int
    num_parameters: int
    dtypes: str  # e.g. "float32, int64 (BatchNorm counters)"
    evaluations: list[Evaluation]
    folder_name: str  # the export folder as the user named it, for the snippets
    exported_with: dict[str, Any]  # lbgat.runtime.provenance.code_version() of the exporting code
    weights: str = "raw"  # which of the checkpoint's weights: raw, or the average the run kept (ema, swa)
    weights_description: str = "raw: the weights as trained"


def _table(rows: list[tuple[str, object]]) -> list[str]:
    """A two-column table; a value is escaped unless it is already :class:`lbgat.storage.markdown.Markdown`."""
    return ["| | |", "|---|---|", *(f"| {text(name)} | {join(value)} |" for name, value in rows)]


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parameters(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={_number(value)}" for name, value in params.items()) or "none"


def _code(version: dict[str, Any] | None) -> str:
    if not version:
        return "not recorded"
    commit = version.get("git_commit")
    return (f"lbgat {version.get('lbgat')}" + (f", commit {str(commit)[:12]}" if commit else "")
            + (" (modified)" if version.get("git_dirty") else ""))


def _model_section(inputs: CardInputs) -> list[str]:
    spec, layout = inputs.spec, inputs.layout
    try:
        description = get_model_entry(spec.arch).description
    except Exception:  # noqa: BLE001 - a name this version no longer knows: the card still says what it is
        description = "not known to this lbgat version"
    shape = f"{spec.in_channels}×{spec.image_size}×{spec.image_size}, pixel values in [0, 1]"
    if spec.mean is None:
        normalisation = "none: the network takes [0, 1] pixels directly"
    else:
        normalisation = (f"(x - mean) / std inside lbgat's model, mean {spec.mean}, std {spec.std}; the weights do "
                         "not include it, so code outside lbgat must normalise its inputs first")
    official = join(*[piece for index, cls in enumerate(layout.classes)
                      for piece in ("; " if index else "", f"{cls.project}: ", code(cls.constructor, in_table=True))]
                    ) or "none"
    rows: list[tuple[str, object]] = [
        ("architecture", f"{spec.arch}: {description}"),
        ("classes", spec.num_classes),
        ("input", shape),
        ("normalisation", normalisation),
        ("weights", f"{WEIGHTS}: {inputs.num_tensors} tensors ({inputs.dtypes}), {inputs.num_parameters:,} "
                    "parameters"),
        ("which weights", inputs.weights_description),
        ("key layout", f"{layout.name}: {layout.description}"),
        ("official classes that load it strictly", official),
    ]
    if layout.limitation:
        rows.append(("limitation", layout.limitation))
    if layout.adds_sub_block1:
        rows.append(("sub_block1", "lbgat builds this size without the official WideResNet's unused sub_block1; "
                                   "the file holds a copy of block1 under that name so the official classes load "
                                   "it strictly (their forward never runs it)"))
    return ["## Model", "", *_table(rows)]


def _schedule(config: dict[str, Any]) -> str:
    optim, schedule = config.get("optim", {}), config.get("schedule", {})
    onecycle = schedule.get("kind") == "onecycle"
    momentum = ("momentum cycled 0.95 → 0.85 → 0.95 against the lr" if onecycle and schedule.get("cycle_momentum")
                else f"momentum {_number(optim.get('momentum'))}")
    parts = [f"SGD lr {_number(optim.get('lr'))}, {momentum}, weight decay "
             f"{_number(optim.get('weight_decay'))}" + (", Nesterov" if optim.get("nesterov") else "")]
    if onecycle:
        parts.append(f"OneCycleLR stepped once an epoch: a cosine from lr/25 up to lr over a share "
                     f"{_number(schedule.get('pct_start'))} of the epochs, then down to lr/25/1e4")
        return "; ".join(parts)
    decays = schedule.get("decay_epochs") or []
    if not decays:
        parts.append("constant lr")
    else:
        parts.append(f"lr × {_number(schedule.get('decay_factor'))} after epoch{'s' if len(decays) > 1 else ''} "
                     + ", ".join(map(str, decays)))
    if schedule.get("warmup") and (schedule.get("epochs") or 0) >= 10:
        parts.append(f"epoch 1 at {_number(schedule.get('warmup_factor'))} × lr (warm-up)")
    return "; ".join(parts)


def _attack(attack: dict[str, Any]) -> str:
    start = attack.get("start")
    start_text = {"normal": f"normal start (std {_number(attack.get('start_std'))})", "uniform": "uniform start",
                  "uniform-clipped": "uniform start clipped to [0, 1]",
                  "none": "no random start"}.get(str(start), f"start {start}")
    if attack.get("iterate") == "delta":
        start_text += ", the perturbation kept between steps (AT_AWP's arithmetic)"
    steps = attack.get("steps")
    described = (f"L∞ PGD, {str(attack.get('objective', '?')).upper()} objective, eps {_number(attack.get('eps'))}, "
                 f"{steps} step{'' if steps == 1 else 's'} of {_number(attack.get('step_size'))}, {start_text}, "
                 f"BatchNorm in {attack.get('bn_mode')} mode while crafting")
    if attack.get("eps_warmup_epochs"):
        described += f"; eps ramped up over the first {attack['eps_warmup_epochs']} epochs"
    return described


def _training_section(inputs: CardInputs) -> list[str]:
    meta = inputs.meta
    config = meta.get("config", {})
    dataset = meta.get("dataset", {})
    position = meta.get("position", {})
    method = config.get("method", {})
    name, params = str(method.get("name")), dict(method.get("params") or {})
    epochs = config.get("schedule", {}).get("epochs")
    done, step = position.get("epoch"), position.get("global_step")
    progress = f"{done} of {epochs} epochs done ({step} optimiser step{'' if step == 1 else 's'})"
    if done is not None and epochs is not None and done < epochs:
        progress += "; training did not finish"
    # The data's content hash, not where it was read from (a path of the training machine).
    train_hash = (dataset.get("fingerprint") or {}).get("train")
    data_text = join(str(dataset.get("name")), *([" (training split sha256 ", code(str(train_hash)[:16], in_table=True),
                                                 "…)"] if train_hash else []))
    if config.get("data", {}).get("train_size"):
        data_text = join(data_text, f", a subset of {config['data']['train_size']} training images")
    rows: list[tuple[str, object]] = [
        ("dataset", data_text),
        ("method", f"{name} ({_parameters(params)})"),
        ("plug-ins", "; ".join(plugin_summaries(method)) or "none"),
    ]
    if meta.get("teacher"):
        rows.append(("teacher", f"{meta['teacher'].get('arch')} (the method's teacher; not exported)"))
    rows += [
        ("epochs", progress),
        ("batch size", config.get("batch_size")),
        ("optimiser and lr schedule", _schedule(config)),
        ("training attack", _attack(config.get("attack", {}))),
        ("augmentation", _augmentation(config.get("data", {}))),
        ("seed, arithmetic", f"seed {config.get('seed')}, {config.get('precision', 'fp32')}"),
        ("checkpoint", join(f"{inputs.checkpoint_name} ({meta.get('kind', 'kind not recorded')}), sha256 ",
                            code(inputs.checkpoint_sha256, in_table=True))),
    ]
    best = meta.get("best")
    if meta.get("kind") == "best" and isinstance(best, dict):
        rows.append(("selected by", f"held-out robust accuracy {best.get('robust_acc')} of the "
                                    f"{best.get('weights', 'raw')} weights at epoch {best.get('epoch')}"))
    return ["## Training", "", *_table(rows), "", f"All settings are in [{CONFIG}]({CONFIG})."]


def _augmentation(data: dict[str, Any]) -> str:
    augment = data.get("augment", "crop-flip")  # runs from before data.augment cropped and flipped
    if augment != "crop-flip":
        return f"IDBH ({augment}; Li & Spratling 2023)"
    return (f"random crop with padding {data.get('crop_padding')}, "
            f"horizontal flip {'on' if data.get('flip') else 'off'}")


def _evaluation_lines(evaluation: Evaluation) -> list[str]:
    report = evaluation.report
    protocol = report["protocol"]
    preset = f", preset {protocol['preset']}" if protocol.get("preset") else ""
    eps = protocol.get("eps")
    eps_text = f"{eps!r}" + (f" (= {255 * eps:.2f}/255)" if isinstance(eps, float) else "")
    lines = [
        f"### {text(f'{evaluation.folder.name}{preset}')}",
        "",
        "`lbgat eval` on " + text(
            f"{protocol.get('dataset')}, {protocol.get('examples', 'the test split')} "
            f"(n = {protocol.get('n')}); {protocol.get('norm')} eps = {eps_text}; "
            f"model in {protocol.get('bn_mode', 'eval')} mode, {protocol.get('dtype', 'fp32')}; seed "
            f"{protocol.get('seed')}; {_code(report.get('code_version'))}; {report.get('started', '')}."),
        "",
        "| attack | accuracy | correct / total | setting |",
        "|---|---:|---:|---|",
    ]
    doubts = doubts_of(report)
    for row in report["results"]:
        accuracy = f"{100 * row['correct'] / row['total']:.2f}%" if row["total"] else "n/a"
        accuracy = text(marked(accuracy, doubts.get(row["attack"], [])))
        setting = str(row.get("description", ""))
        if isinstance(row.get("autoattack"), dict):
            settings = row["autoattack"]
            setting += f"; version {settings.get('version')}: {', '.join(map(str, settings.get('attacks') or []))}"
        lines.append(f"| {text(row['attack'])} | {accuracy} | {text(row['correct'])} / {text(row['total'])} "
                     f"| {text(setting)} |")
    notes = footnotes(doubts)
    if notes:
        lines += ["", text(LEGEND), "", *(f"- {text(note)}" for note in notes)]
    checks = report.get("checks", [])
    if checks:
        passed = sum(check.get("verdict") == "pass" for check in checks)
        flagged = [f"{check.get('name')}: {check.get('verdict')}" for check in checks
                   if check.get("verdict") in ("warn", "fail")]
        lines += ["", text(f"Sanity checks: {passed} of {len(checks)} passed"
                           + (f"; flagged: {'; '.join(flagged)}" if flagged else "") + ".")]
    return lines


def _evaluation_section(inputs: CardInputs) -> list[str]:
    lines = ["## Evaluation", ""]
    if not inputs.evaluations:
        folder = shlex.quote(inputs.folder_name)
        commands = [f"lbgat eval {folder}"]
        if inputs.spec.in_channels == 3:
            commands += [f"lbgat eval {folder} --protocol lbgat        # LBGAT/TRADES: eps 0.031, PGD-20, CW-20, "
                         "AutoAttack", f"lbgat eval {folder} --protocol robustbench  # eps 8/255, AutoAttack, "
                         "10,000 points"]
        return [*lines, f"Not evaluated: no `lbgat eval` report of these weights ({text(inputs.weights)}) of this "
                "checkpoint (matched by sha256) was found beside it. Evaluate the exported folder (clean, FGSM, "
                "PGD-20 and CW-20 at the dataset's threat model; add --data-root where the data lives elsewhere):",
                "", fenced("\n".join(commands))]
    lines.append(f"Reports of `lbgat eval` on these weights ({text(inputs.weights)}) of this exact checkpoint "
                 "(matched by sha256), found beside it:")
    for evaluation in inputs.evaluations:
        lines += ["", *_evaluation_lines(evaluation)]
    return lines


def _loading_section(inputs: CardInputs) -> list[str]:
    folder = json.dumps(inputs.folder_name)
    weights = json.dumps(f"{inputs.folder_name}/{WEIGHTS}")
    spec = inputs.spec
    # The folder name is the user's: in a code block nothing is read as Markdown, and fenced() picks a fence
    # that no backticks in the name can close.
    lines = ["## Loading", "", "With lbgat (architecture, classes and normalisation come from the file; strict; "
             "no code in the file runs):", "",
             fenced(f"import lbgat\n\nmodel = lbgat.load_model({folder})  # eval mode; inputs in [0, 1], "
                    f"shape (N, {spec.in_channels}, {spec.image_size}, {spec.image_size})", "python")]
    if not inputs.layout.classes:
        return [*lines, "", f"No other code base defines {text(spec.arch)}; the file is in lbgat's own key layout, "
                            "readable with `safetensors.torch.load_file`."]
    normalise = ""
    if spec.mean is not None:
        normalise = (f"\n# the official class does not normalise: feed it (x - mean) / std with mean {spec.mean}, "
                     f"std {spec.std}")
    for cls in inputs.layout.classes:
        lines += ["", f"In {text(cls.project)} code, with plain PyTorch and safetensors:", "",
                  fenced(f"from safetensors.torch import load_file\n{cls.imports}\n\nmodel = {cls.constructor}\n"
                         f"model.load_state_dict(load_file({weights}), strict=True)\nmodel.eval(){normalise}",
                         "python")]
    if inputs.layout.limitation:
        lines += ["", f"Note: {text(inputs.layout.limitation)}."]
    return lines


def render_card(inputs: CardInputs) -> str:
    spec, meta = inputs.spec, inputs.meta
    method = meta.get("config", {}).get("method", {}).get("name")
    dataset = meta.get("dataset", {}).get("name")
    lines = [
        f"# {text(f'{spec.arch} trained with {method} on {dataset}')}",
        "",
        f"Exported by `lbgat export` from {code(inputs.checkpoint_name)} (sha256 {code(inputs.checkpoint_sha256)}), "
        f"its {text(inputs.weights)} weights. "
        f"Trained with {text(_code(meta.get('code_version')))}; exported with {text(_code(inputs.exported_with))}.",
        "",
        *_model_section(inputs), "",
        *_training_section(inputs), "",
        *_evaluation_section(inputs), "",
        *_loading_section(inputs), "",
        "## Files", "",
        f"- `{WEIGHTS}`: the weights (sha256 {code(inputs.weights_sha256)}); its metadata header holds the "
        "architecture, classes, input shape, normalisation, key layout, lbgat version, the source "
        "checkpoint's sha256 and which of its weights these are",
        f"- `{CONFIG}`: the run's resolved settings (paths in it are those of the training machine)",
        "- `README.md`: this card",
        "",
    ]
    return "\n".join(lines)
