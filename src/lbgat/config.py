"""The one source of truth for a training run's settings.

A run's settings are built in layers: the defaults below, then a YAML recipe (``--config``),
then the command-line flags, then ``--set key=value`` overrides (type-checked; unknown keys are
errors). Settings left at ``None``/``"auto"`` are then resolved from the dataset's threat model
and the method's conventions, and the fully resolved config is saved in the run directory.
"""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .attacks import BN_MODES, ITERATES, OBJECTIVES, STARTS
from .checkpoints.averaged_weights import AVERAGES
from .data import get_dataset_info, list_datasets
from .data.loader import AUGMENTS, CROP_FLIP
from .errors import ConfigError
from .methods import get_method
from .methods.plugin import plugin_names
from .models import default_teacher
from .runtime.arithmetic import FLOAT32_MODES, FLOAT32_SWITCHES
from .runtime.compilation import COMPILE_MODES
from .runtime.precision import PRECISIONS
from .settings import folder_name, resumable_keys, setting
from .storage import yaml_loader
from .structured import coerce, field_annotation, from_mapping, to_mapping

if TYPE_CHECKING:
    from .methods import Method, MethodParams

# What a non-finite loss does (on_nan): stop the run, or skip that step.
ON_NAN_ACTIONS: tuple[str, ...] = ("stop", "skip")
# Weight averaging (average.kind) and what the average's BatchNorm statistics are (average.bn): copied from the
# raw weights (Wang et al. 2023), averaged with the weights (ReBAT) or recomputed over the epoch's training
# images (DA-Alone's SWA).
AVERAGE_KINDS: tuple[str, ...] = ("none", *AVERAGES)
AVERAGE_BN: tuple[str, ...] = ("copy", "ema", "recompute")
# The lr schedule (schedule.kind): step decays (LBGAT, TRADES) or torch's OneCycleLR stepped once an epoch
# (the "cosinew" of Wang et al. 2023 and the Gowal/Rebuffi recipes), docs/training.md "Schedule".
SCHEDULE_KINDS: tuple[str, ...] = ("step", "onecycle")
ONECYCLE_PCT_START = 0.025  # the cosinew ramp: 10 of 400 epochs (torch's own default is 0.3)
# How torch.optim.SGD updates the weights (optim.kernel): auto is torch's own choice (a loop over the
# tensors on CPU, one foreach kernel per operation on CUDA); fused is one kernel for the whole update.
SGD_KERNELS: tuple[str, ...] = ("auto", "for-loop", "foreach", "fused")
SEED_LIMIT = 2**63  # torch.manual_seed takes a signed 64-bit integer
# Each setting is declared once, at its field (lbgat.settings.setting): default, flag and help text,
# choices, range (the refusal's wording where it is not the default one), whether it may change on resume,
# and where it is left at None or "auto", its resolver: auto(facts, resolved), facts an AutoFacts (below).
_IN_UNIT = "{key} must be in [0, 1] (images are in [0, 1]), got {value}"
_SEED_RANGE = "{key} must be in [0, 2**63), got {value}"


def _one_of(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


# The choices a help text lists, read from their registries.
_PLUGINS = ", ".join(sorted(plugin_names()))
_DATASETS = _one_of([name if get_dataset_info(name).needs_root else f"{name} (embedded)" for name in list_datasets()])
DATA_ROOT_HELP = ("folder holding the dataset (not needed for "
                  f"{_one_of([name for name in list_datasets() if not get_dataset_info(name).needs_root])})")


@dataclass
class MethodConfig:
    name: str = setting("lbgat-trades", flag="--method", help="training method (see `lbgat methods`)")
    # The method's own hyperparameters (e.g. alpha, beta); checked against the method's Params.
    params: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = setting(default_factory=list, flag="--plugin", dest="plugins", metavar="NAME",
                                 help="add a plug-in to the method (repeat for several, in order): "
                                      f"{_PLUGINS} (see `lbgat methods`)")
    # Each plug-in's hyperparameters under its name (a recipe's method.rpat.lam, --set method.rpat.lam=2).
    plugin_params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = setting("mnist-5k", flag="--dataset", help=_DATASETS)
    # resumable: the data is identified by its content fingerprint instead (lbgat.data.identity).
    root: str | None = setting(None, flag="--data-root", resumable=True,
                               help=DATA_ROOT_HELP)
    image_size: int | None = None  # tiny-imagenet: 32 (the LBGAT paper) or 64; folder: resize to this
    val_size: int = setting(1000, minimum=0)  # held out of the training split for per-epoch robust validation; 0 = none
    # which examples are held out (independent of the training seed)
    split_seed: int = setting(0, minimum=0, below=SEED_LIMIT, message=_SEED_RANGE)
    # train on a fixed random subset of this many examples (smoke runs)
    train_size: int | None = setting(None, minimum=1)
    # crop-flip (crop_padding and flip below), or IDBH (Li & Spratling 2023): idbh-weak, idbh-strong, idbh-svhn
    # (the official cifar10-weak, cifar10-strong, svhn), which flips and crop-shifts by itself
    augment: str = setting(CROP_FLIP, choices=AUGMENTS)
    # auto: 4 for colour images, 0 for digits; 0 under IDBH
    crop_padding: int | None = setting(None, minimum=0, message="{key} must be >= 0",
                                       auto=lambda facts, resolved: facts.profile.crop_padding
                                       if resolved.data.augment == CROP_FLIP else 0)
    # auto: for colour images where the dataset allows it (not for digits); off under IDBH (its own flip)
    flip: bool | None = setting(None, auto=lambda facts, resolved: facts.profile.flip and facts.flips_allowed
                                and resolved.data.augment == CROP_FLIP)
    # Extra training images mixed into every batch: a pseudo-labelled pickle (Carmon et al. 2019) or a generated
    # .npz (Wang et al. 2023), docs/training.md "Extra and generated data". resumable: identified by its content.
    extra: str | None = setting(None, resumable=True)
    # The share of every batch drawn from data.extra; auto: 0.5 (RST's) with data.extra, else none.
    extra_fraction: float | None = setting(None, minimum=0, below=1, message="{key} must be in [0, 1), got {value}",
                                           auto=lambda _, resolved: 0.5 if resolved.data.extra else None)


@dataclass
class AttackConfig:
    """The training attack (L-infinity PGD; the objective belongs to the method)."""

    # auto: the dataset's threat model
    eps: float | None = setting(None, minimum=0, maximum=1, message=_IN_UNIT, auto=lambda facts, _: facts.profile.eps)
    step_size: float | None = setting(None, above=0, auto=lambda facts, _: facts.profile.train_step_size)
    steps: int | None = setting(None, minimum=1, auto=lambda facts, _: facts.profile.train_steps)
    # uniform | uniform-clipped (then clipped to [0, 1], as AT_AWP and advertorch) | normal | none;
    # auto: the method's convention
    start: str = setting("auto", choices=("auto", *STARTS), auto=lambda facts, _: facts.method.default_start)
    # ce | kl | cw; auto: the method's own (e.g. KL for TRADES, CE for PGD-AT; none without an attack)
    objective: str = setting("auto", choices=("auto", *OBJECTIVES),
                             auto=lambda facts, _: facts.method.attack_objective or "auto")
    start_std: float = setting(0.001, minimum=0)  # scale of the "normal" start (TRADES/LBGAT)
    # BatchNorm mode while crafting (eval: TRADES/LBGAT; train: Madry, ISEAT); auto: the method's convention
    bn_mode: str = setting("auto", choices=("auto", *BN_MODES), auto=lambda facts, _: facts.method.default_bn_mode)
    # What the attack keeps between steps: x (x', lbgat's PGD) or delta (the perturbation, AT_AWP's
    # arithmetic: one float32 rounding apart per step, which train-mode BatchNorm turns into other steps)
    iterate: str = setting("x", choices=ITERATES)
    # Ramp eps (and the step size with it) linearly from 0 over the first N epochs, step by step.
    # Off (0) in every paper recipe; small networks on MNIST at eps 0.3 need it to leave chance level.
    eps_warmup_epochs: int = setting(0, minimum=0)


@dataclass
class OptimConfig:
    lr: float = setting(0.1, above=0)
    momentum: float = setting(0.9, minimum=0)
    weight_decay: float = setting(2e-4, minimum=0)
    nesterov: bool = False
    kernel: str = setting(
        "auto", flag="--sgd-kernel", choices=SGD_KERNELS, resumable=True,
        help="how SGD updates the weights: auto (default: torch's choice, a loop on CPU and foreach on "
             "CUDA), for-loop, foreach, or fused (one kernel; see docs/performance.md)")


@dataclass
class ScheduleConfig:
    epochs: int = setting(100, flag="--epochs", minimum=1)
    kind: str = setting("step", flag="--schedule", choices=SCHEDULE_KINDS,
                        help="lr schedule: step (constant, divided at schedule.decay_epochs; the default) or "
                             "onecycle (torch's OneCycleLR stepped once an epoch, Wang et al. 2023's cosinew)")
    # step only. lr is multiplied by decay_factor after each of these epochs (1-indexed); auto: the paper's
    # {75, 90} scaled to the run, i.e. [floor(0.75 E), floor(0.9 E)].
    decay_epochs: list[int] | None = setting(None, auto=lambda _, resolved: default_decay_epochs(
        resolved.schedule.epochs) if resolved.schedule.kind == "step" else None)
    decay_factor: float = setting(0.1, above=0)  # step only
    # step only. Epoch 1 at warmup_factor * lr, as the official LBGAT script (0.02 at lr 0.1); auto: on for
    # the LBGAT methods. Only applied when epochs >= 10.
    warmup: bool | None = setting(None, auto=lambda facts, resolved: facts.method.default_warmup
                                  if resolved.schedule.kind == "step" else None)
    warmup_factor: float = setting(0.2, above=0)  # step only
    # onecycle only. The share of the epochs over which the lr rises from lr / 25 to lr (OneCycleLR's
    # pct_start); auto: 0.025, the cosinew's.
    pct_start: float | None = setting(None, minimum=0, maximum=1, auto=lambda _, resolved: ONECYCLE_PCT_START
                                      if resolved.schedule.kind == "onecycle" else None)
    # onecycle only. The momentum goes 0.95 -> 0.85 -> 0.95 against the lr, in place of optim.momentum
    # (OneCycleLR's cycle_momentum); auto: on, as torch's.
    cycle_momentum: bool | None = setting(None, auto=lambda _, resolved: True
                                          if resolved.schedule.kind == "onecycle" else None)


@dataclass
class ValConfig:
    """Per-epoch robust validation on the held-out slice (never on the test set)."""

    # auto: the dataset's evaluation threat model
    eps: float | None = setting(None, minimum=0, maximum=1, message=_IN_UNIT, auto=lambda facts, _: facts.profile.eps)
    step_size: float | None = setting(None, above=0, auto=lambda facts, _: facts.profile.eval_step_size)
    steps: int | None = setting(None, minimum=1, auto=lambda facts, _: facts.profile.eval_steps)
    batch_size: int = setting(200, minimum=1)
    every: int = setting(1, minimum=1)  # epochs between validations


def _for_average(ema: Any, swa: Any) -> Any:
    """The resolver of an average setting: its value for each kind (None without averaging)."""
    return lambda _, resolved: {"ema": ema, "swa": swa}.get(resolved.average.kind)


@dataclass
class AverageConfig:
    """Weight averaging (docs/training.md, "Weight averaging"): an average of the student's weights kept beside
    them, validated every epoch with them, saved in every checkpoint and loaded on request."""

    kind: str = setting("none", flag="--average", choices=AVERAGE_KINDS,
                        help="keep an average of the weights: ema (exponential moving average, as Wang et al. "
                             "2023) or swa (as DA-Alone's code); default none")
    # The share of the average kept at each update (new = decay * average + (1 - decay) * weights). auto: 0.995
    # for ema (Wang et al. 2023's tau); for swa the equal-weight mean of every update (null), or a number for
    # DA-Alone's fixed-weight average (its README's --swa 0 0.001 1 is decay 0.999).
    decay: float | None = setting(None, minimum=0, below=1, auto=_for_average(0.995, None))
    # The decay ramped as min(decay, (1 + n) / (10 + n)) at the n-th update (0, 1, ...): Wang et al.'s
    # dynamic decay. auto: on for ema, off for swa.
    warmup: bool | None = setting(None, auto=_for_average(True, False))
    # Epochs trained before averaging starts; until then the average is a copy of the raw weights.
    start: int = setting(0, minimum=0)
    # The average is updated after every `every`-th step of an epoch (DA-Alone's averaging frequency).
    every: int = setting(1, minimum=1)
    # The average's BatchNorm statistics. auto: copy for ema (Wang et al.), recompute for swa (DA-Alone).
    bn: str | None = setting(None, choices=AVERAGE_BN, auto=_for_average("copy", "recompute"))


@dataclass
class TrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    # auto: the dataset's default
    model: str | None = setting(None, flag="--model", help="student architecture (see `lbgat models`)",
                                auto=lambda facts, _: facts.profile.default_model)
    # teacher architecture for methods that train one; auto: fits the input (separate_bn: the model)
    teacher: str | None = setting(None, flag="--teacher", help="teacher architecture, for methods with a teacher",
                                  auto=lambda facts, resolved: _auto_teacher(facts, resolved))
    # LBGAT methods: at most one checkpoint to initialise the teacher from (default: random init).
    # BGAT methods: the frozen natural teacher, one or more checkpoints (ensemble = mean of logits);
    # a plain state dict is given as ARCH=PATH.
    teacher_checkpoints: list[str] = setting(
        default_factory=list, flag="--teacher-checkpoint", dest="teacher_checkpoints", metavar="PATH",
        help="BGAT methods: a frozen natural teacher (repeat for an ensemble); LBGAT methods: "
             "start the teacher from this checkpoint. ARCH=PATH for a plain state dict")
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    val: ValConfig = field(default_factory=ValConfig)
    average: AverageConfig = field(default_factory=AverageConfig)
    batch_size: int = setting(128, flag="--batch-size", minimum=1)
    # stop (with a checkpoint) after this many optimiser steps in all
    max_steps: int | None = setting(None, flag="--max-steps", minimum=1, resumable=True,
                                    help="stop after this many optimiser steps in all (smoke runs)")
    seed: int = setting(1, flag="--seed", minimum=0, below=SEED_LIMIT, message=_SEED_RANGE)
    out: str | None = setting(None, flag="--out", flag_type=folder_name, resumable=True,
                              help="run directory (default runs/<dataset>-<method>-<model>-s<seed>)",
                              auto=lambda facts, resolved: str(Path("runs") / (
                                  f"{resolved.data.name}-{facts.label}-{resolved.model}-s{resolved.seed}")))
    device: str = setting("auto", flag="--device", resumable=True, help="auto (default), cpu, cuda, cuda:N")
    log_every: int = setting(10, minimum=1, resumable=True)  # steps between progress-bar updates of the loss terms
    save_every: int = setting(0, minimum=0)  # also keep a numbered checkpoint every N epochs (0: only last and best)
    # also rewrite last.pt every N optimiser steps (pre-emptible machines); 0: per epoch
    checkpoint_every: int = setting(
        0, flag="--checkpoint-every", metavar="STEPS", minimum=0, resumable=True,
        help="also checkpoint every STEPS optimiser steps (pre-emptible machines; default per epoch)")
    on_nan: str = setting(
        "stop", flag="--on-nan", choices=ON_NAN_ACTIONS, resumable=True,
        message=f"{{key}} must be {' or '.join(ON_NAN_ACTIONS)}, got {{value!r}}",
        help="at a non-finite loss: stop the run (default) or skip the step (at most 10 in a row)")
    # Speed (docs/performance.md). precision: fp32, or bf16/fp16 autocast for training (fp16 with a
    # gradient scaler); attack steps, projections and validation stay in fp32.
    precision: str = setting(
        "fp32", flag="--precision", choices=PRECISIONS,
        help="training arithmetic: fp32 (default), or bf16/fp16 autocast (fp16 with a gradient "
             "scaler); attack steps, projections and validation stay in fp32")
    channels_last: bool = setting(
        False, flag="--channels-last", resumable=True,
        help="networks and inputs in channels-last memory format (see docs/performance.md)")
    compile: bool = setting(
        False, flag="--compile", resumable=True,
        help="torch.compile the networks and the attack step: compiles first, meant for GPUs "
             "(slower on CPU; see docs/performance.md)")
    compile_mode: str = setting(
        "default", flag="--compile-mode", choices=COMPILE_MODES, resumable=True,
        help="torch.compile's mode under --compile: default, reduce-overhead (CUDA graphs), max-autotune, "
             "max-autotune-no-cudagraphs (see docs/performance.md)")
    sync_bn: bool = setting(False, flag="--sync-bn", help="under torchrun on GPUs: BatchNorm statistics over "
                                                          "the global batch (SyncBatchNorm)")
    # Arithmetic (docs/performance.md, docs/reliability.md). float32: what fp32 convolutions and matmuls compute
    # on the GPU: default (PyTorch's flags left as they are: TF32 convolutions, IEEE matmuls on Ampere+), ieee
    # (--ieee-fp32, for bit-for-bit work) or tf32 (--tf32). deterministic: deterministic kernels only, for
    # bit-exact GPU resume. Neither may change on resume: both change what is computed.
    float32: str = setting("default", choices=FLOAT32_MODES, switches=FLOAT32_SWITCHES)
    deterministic: bool = setting(
        False, flag="--deterministic",
        help="deterministic GPU kernels only (bit-exact GPU resume with fp32; slower; sets "
             "CUBLAS_WORKSPACE_CONFIG=:4096:8)")


@dataclass(frozen=True)
class ThreatProfile:
    """Per-dataset defaults: the training attack, the evaluation attack, augmentation, models."""

    eps: float
    train_step_size: float
    train_steps: int
    eval_step_size: float
    eval_steps: int
    crop_padding: int
    flip: bool
    default_model: str


# CIFAR-style colour images: the pipeline of the official TRADES and LBGAT code. eps = 0.031, not 8/255.
COLOUR_PROFILE = ThreatProfile(0.031, 0.007, 10, 0.003, 20, crop_padding=4, flip=True, default_model="wrn-34-10")
# Digits: the standard MNIST threat model eps = 0.3 with the TRADES MNIST attack (40 steps of 0.01).
DIGITS_PROFILE = ThreatProfile(0.3, 0.01, 40, 0.01, 40, crop_padding=0, flip=False, default_model="small-cnn")


@dataclass(frozen=True)
class AutoFacts:
    """What the settings left at None or "auto" are resolved from (their ``auto`` resolvers above)."""

    image_shape: tuple[int, int, int]  # channels, height, width of the data
    profile: ThreatProfile  # the data's threat model and augmentation
    flips_allowed: bool  # the dataset may be flipped (not digits)
    method: type[Method]  # the method's conventions: its attack's start, objective, BN mode; warm-up; teacher
    method_params: MethodParams
    label: str  # the method and its plug-ins, as a run folder is named: trades+rpat


def _auto_teacher(facts: AutoFacts, resolved: TrainConfig) -> str | None:
    if not facts.method.uses_teacher or facts.method.frozen_teacher:
        return None  # no teacher, or one loaded from teacher_checkpoints
    if facts.method.shares_student_weights(facts.method_params):
        return resolved.model
    channels, height, _ = facts.image_shape
    return default_teacher(channels, height)


def resumable_settings(config_cls: type | None = None) -> frozenset[str]:
    """The settings a resumed run may change: they do not alter what is computed."""
    return resumable_keys(TrainConfig if config_cls is None else config_cls)


def threat_profile(image_channels: int) -> ThreatProfile:
    return COLOUR_PROFILE if image_channels == 3 else DIGITS_PROFILE


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping, read with the safe loader (no Python objects)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    if path.exists() and not path.is_file():  # a FIFO or device would block or never end
        raise ConfigError(f"config file {path} is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not a YAML text file (not UTF-8 at byte {error.start})") from None
    try:
        data = yaml_loader.load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {_first_line(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {_yaml_kind(data)}")
    odd_keys = [key for key in data if not isinstance(key, str)]
    if odd_keys:
        raise ConfigError(f"config file {path} has a setting named {odd_keys[0]!r}; setting names are words")
    return data


def _first_line(error: yaml.YAMLError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _yaml_kind(data: object) -> str:
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return kinds.get(type(data), type(data).__name__)


def parse_override(text: str) -> tuple[str, Any]:
    """``"schedule.epochs=10"`` -> ("schedule.epochs", 10), the value typed against its setting."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml_loader.load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if key.startswith("method.") and key.partition(".")[2].partition(".")[0] not in _METHOD_FIELDS:
        return key, value  # a method's or plug-in's hyperparameter, checked once the method is known
    annotation = field_annotation(TrainConfig, key)
    try:
        coerce(value, annotation, key)
    except ConfigError:
        # "--set data.root=2024" means the string "2024" when the setting is a string.
        if str not in (annotation, *typing.get_args(annotation)):
            raise
        value = raw.strip()
    return key, value


def build_config(
    recipe: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> TrainConfig:
    """Defaults < recipe < flags (dotted keys) < ``--set`` overrides; types checked at each key."""
    tree: dict[str, Any] = {}
    if recipe:
        tree = _merge(tree, _normalise_method(upgrade_retired_settings(recipe)))
    teacher_given = False  # on the command line: an error for a method without a teacher (see setup.validate)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
            teacher_given |= key == "teacher"
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("method.") and key.partition(".")[2].partition(".")[0] not in _METHOD_FIELDS:
            _set_dotted(tree, _method_key(key.removeprefix("method.")), value)
        else:
            _set_dotted(tree, key, value)
            teacher_given |= key == "teacher"
    if recipe and "teacher" in recipe and not teacher_given:
        _recipe_teacher_only_where_used(tree)
    return from_mapping(TrainConfig, tree)


def upgrade_retired_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """A config written by an older lbgat (a run's config.yaml or checkpoint) in today's settings: ``tf32:
    true/false`` (when IEEE fp32 was lbgat's default) is ``float32: tf32/ieee``, what that run computed."""
    value = tree.get("tf32")
    if not isinstance(value, bool) or "float32" in tree:
        return tree  # nothing retired (or a value no lbgat wrote: refused as an unknown setting)
    upgraded = {key: item for key, item in tree.items() if key != "tf32"}
    upgraded["float32"] = "tf32" if value else "ieee"
    return upgraded


def _recipe_teacher_only_where_used(tree: dict[str, Any]) -> None:
    """A recipe's ``teacher`` is for the methods that train one, so that one recipe serves several methods
    (the demo's trains natural, PGD-AT, TRADES and LBGAT+TRADES with it)."""
    method = tree.get("method")
    name = method.get("name", MethodConfig.name) if isinstance(method, dict) else MethodConfig.name
    if not isinstance(name, str):
        return  # reported as a bad setting by from_mapping
    try:
        uses_teacher = get_method(name).uses_teacher
    except ConfigError:
        return  # an unknown method is reported by validate
    if not uses_teacher:
        tree.pop("teacher", None)


_METHOD_FIELDS = ("name", "params", "plugins", "plugin_params")


def _method_key(dotted: str) -> str:
    """Where ``method.<dotted>`` goes: a plug-in's setting (``rpat.lam``) or the method's (``alpha``)."""
    head = dotted.partition(".")[0]
    return f"method.plugin_params.{dotted}" if head in plugin_names() else f"method.params.{dotted}"


def _normalise_method(recipe: dict[str, Any]) -> dict[str, Any]:
    """Recipes may write ``method: trades`` or ``method: {name: trades, alpha: 6, plugins: [rpat],
    rpat: {lam: 1}}``: a key that names a plug-in holds that plug-in's settings."""
    recipe = dict(recipe)
    method = recipe.get("method")
    if isinstance(method, str):
        recipe["method"] = {"name": method}
    elif isinstance(method, dict):
        params = {key: value for key, value in method.items()
                  if key not in _METHOD_FIELDS and key not in plugin_names()}
        given = method.get("params", {})
        if not isinstance(given, dict):
            raise ConfigError(f"setting 'method.params' must be a mapping, got {given!r}")
        normalised: dict[str, Any] = {"params": {**given, **params}}
        for key in ("name", "plugins"):
            if key in method:
                normalised[key] = method[key]
        plugin_params = {key: value for key, value in method.items() if key in plugin_names()}
        if plugin_params or "plugin_params" in method:
            normalised["plugin_params"] = {**method.get("plugin_params", {}), **plugin_params}
        recipe["method"] = normalised
    return recipe


def default_decay_epochs(epochs: int) -> list[int]:
    return sorted({math.floor(0.75 * epochs), math.floor(0.9 * epochs)} - {0})


def config_to_yaml(config: TrainConfig) -> str:
    tree = to_mapping(config)
    method = tree.pop("method")
    plugins = {"plugins": method["plugins"], **method["plugin_params"]} if method["plugins"] else {}
    tree = {"method": {"name": method["name"], **method["params"], **plugins}, **tree}
    return yaml.safe_dump(tree, sort_keys=False)
