"""From a config to the parts of a run: checked settings, data split, loaders, networks, optimiser."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.checkpoint import check_checkpoint_path
from ..checkpoints.loading import LoadedModel, PlainStateDictError, load_for_eval
from ..checkpoints.model_spec import ModelSpec
from ..config import (
    ONECYCLE_PCT_START,
    AutoFacts,
    AverageConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    threat_profile,
)
from ..data import Dataset, get_dataset_info, load_dataset
from ..data.extra import ExtraData, load_extra
from ..data.loader import CROP_FLIP, Augment, DeviceLoader
from ..data.mixed_loader import MixedLoader
from ..errors import ConfigError
from ..methods import Method, TrainAttack
from ..methods.factory import MethodChoice, choose_method
from ..methods.lifecycle import RunFacts
from ..methods.teachers import FrozenEnsemble
from ..models import get_model_entry
from ..runtime.compilation import compile_options
from ..runtime.precision import Precision
from ..runtime.rng import Stream, permutation
from ..runtime.world import World, device_for, resolve_device
from ..settings import check_ranges, resolve_auto
from . import parallel
from .gpu import sync_bn_warnings
from .schedule import check_one_cycle


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def choose(config: TrainConfig, world: World | None = None) -> MethodChoice:
    """The config's method and plug-ins, typed and checked once (what :func:`validate` returns, carried on to
    :func:`resolve` and :func:`build_parts`)."""
    processes = world.size if world is not None else 1
    method = config.method
    return choose_method(method.name, method.params, method.plugins, method.plugin_params,
                         RunFacts(compiled=config.compile, processes=processes))


def validate(config: TrainConfig, *, dataset_given: bool = False, world: World | None = None) -> MethodChoice:
    """Reject impossible or inconsistent settings before any data is read or network built; the method
    and its plug-ins, typed and checked, are returned to be carried on."""
    method = choose(config, world)
    if not dataset_given:
        get_dataset_info(config.data.name)
    for name in (config.model, config.teacher):
        if name is not None:
            get_model_entry(name)
    # The choices and ranges declared at each setting (lbgat.config, lbgat.settings.setting); the
    # cross-field and special checks follow.
    check_ranges(config)
    _validate_teacher(config, method)
    _validate_augment(config)
    _validate_average(config)
    _validate_schedule(config)
    _require(all(epoch >= 1 for epoch in config.schedule.decay_epochs or []), "schedule.decay_epochs must be >= 1")
    _require(config.out != "", "out must name a folder, not an empty string")
    _require(config.data.extra_fraction is None or config.data.extra is not None,
             "data.extra_fraction is the share of each batch drawn from data.extra, which is not set")
    _require(config.data.extra != "", "data.extra must name a file, not an empty string")
    device = resolve_device(config.device)
    if config.compile:
        check_compile_toolchain(device)
    _require(not config.sync_bn or device.type == "cuda",
             "sync_bn needs GPUs: PyTorch's SyncBatchNorm runs only on CUDA (drop --sync-bn on CPU)")
    return method


def _validate_teacher(config: TrainConfig, method: MethodChoice) -> None:
    method_cls = method.cls
    checkpoints = config.teacher_checkpoints
    if method_cls.frozen_teacher:
        _require(bool(checkpoints), f"{method_cls.name} trains against a frozen natural teacher: give its "
                                    "checkpoint(s) in teacher_checkpoints (e.g. --set teacher_checkpoints=[PATH])")
        _require(config.teacher is None, f"{method_cls.name}'s teacher comes from teacher_checkpoints; drop teacher")
    elif method_cls.uses_teacher:
        _require(len(checkpoints) <= 1, f"{method_cls.name} trains its teacher: teacher_checkpoints may hold "
                                        f"at most one checkpoint to start it from, got {len(checkpoints)}")
    else:
        _require(not checkpoints, f"{method_cls.name} has no teacher, but teacher_checkpoints is set")
        _require(config.teacher is None, f"{method_cls.name} has no teacher, but teacher is set "
                                         f"({config.teacher}); drop --teacher")
    if method_cls.shares_student_weights(method.params):
        _require(config.teacher is None or config.teacher == config.model,
                 f"separate_bn shares the student's weights with the teacher, so teacher must equal model "
                 f"({config.teacher} != {config.model})")


def _validate_augment(config: TrainConfig) -> None:
    data = config.data
    _require(data.augment == CROP_FLIP or (not data.crop_padding and not data.flip),
             f"data.crop_padding and data.flip set the crop-flip augmentation; data.augment={data.augment} flips "
             "and crop-shifts by itself (leave them unset)")


def _check_augment_fits(config: TrainConfig, image_shape: tuple[int, int, int], flips_allowed: bool) -> None:
    augment = config.data.augment
    if augment == CROP_FLIP:
        return
    _require(flips_allowed, f"data.augment={augment} flips images horizontally, which {config.data.name} does not "
                            "allow (digits); use data.augment=crop-flip")
    _require(image_shape[0] in (1, 3), f"data.augment={augment} works on grey or RGB images; {config.data.name} has "
                                       f"{image_shape[0]} channels")


def _validate_average(config: TrainConfig) -> None:
    average = config.average
    if average.kind == "none":
        given = _first_given(average, AverageConfig(), ("decay", "warmup", "start", "every", "bn"))
        _require(given is None, f"average.{given} is set, but average.kind is none: choose --average ema or swa, "
                                "or drop it")
    _require(average.kind == "none" or average.start < config.schedule.epochs,
             f"average.start is {average.start}, but the run trains {config.schedule.epochs} epochs: the average "
             "would never start")
    _require(not (average.kind == "swa" and average.warmup and average.decay is None),
             "average.warmup ramps a decay, but swa with average.decay null is the equal-weight mean: set "
             "average.decay, or drop average.warmup")


def _first_given(section: object, defaults: object, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` set away from its default in a config section, or None."""
    return next((name for name in names if getattr(section, name) != getattr(defaults, name)), None)


def _validate_schedule(config: TrainConfig) -> None:
    schedule = config.schedule
    if schedule.kind == "step":
        given = _first_given(schedule, ScheduleConfig(), ("pct_start", "cycle_momentum"))
        _require(given is None, f"schedule.{given} is a setting of the onecycle schedule, but schedule.kind is "
                                "step: choose --schedule onecycle, or drop it")
        return
    _require(schedule.warmup is None, "schedule.warmup is set, but schedule.kind onecycle ramps the lr up itself "
                                      "(over schedule.pct_start of the epochs): drop schedule.warmup")
    given = _first_given(schedule, ScheduleConfig(), ("decay_epochs", "decay_factor", "warmup_factor"))
    _require(given is None, f"schedule.{given} is a setting of the step schedule, but schedule.kind is onecycle: "
                            "drop it")
    check_one_cycle(schedule, ONECYCLE_PCT_START if schedule.pct_start is None else schedule.pct_start)
    momentum = config.optim.momentum
    _require(schedule.cycle_momentum is False or momentum == OptimConfig().momentum,
             f"optim.momentum is {momentum}, but schedule.cycle_momentum sets the momentum every epoch (0.95 -> "
             "0.85 -> 0.95, OneCycleLR's): set schedule.cycle_momentum=false to keep optim.momentum")


def sgd_kernel(kernel: str) -> dict[str, bool]:
    """torch.optim.SGD's arguments for ``optim.kernel`` (config.SGD_KERNELS); auto leaves torch's choice."""
    return {"auto": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
            "fused": {"fused": True}}[kernel]


def check_compile_toolchain(device: torch.device) -> None:
    """torch.compile generates C++ on CPU and Triton kernels on GPU; without them it fails only at the
    first step, deep inside the compiler."""
    if device.type == "cpu":
        _require(any(shutil.which(name) for name in ("g++", "c++", "clang++")),
                 "--compile on CPU needs a C++ compiler (g++ or clang++) on the PATH; install one or drop --compile")
    elif device.type == "cuda":
        _require(importlib.util.find_spec("triton") is not None,
                 "--compile on GPU needs the triton package (it comes with CUDA builds of PyTorch); "
                 "install it or drop --compile")


def expected_image_shape(config: TrainConfig) -> tuple[int, int, int] | None:
    """The input shape known before loading (None for a user's folder, known only once read)."""
    info = get_dataset_info(config.data.name)
    if info.image_shape is None:
        return None
    channels, height, width = info.image_shape
    if config.data.image_size is not None:
        return channels, config.data.image_size, config.data.image_size
    return channels, height, width


def _dataset_allows_flips(name: str) -> bool:
    try:
        return get_dataset_info(name).flips
    except ConfigError:  # data passed from Python: the image shape decides (no flips for digits)
        return True


def resolve(config: TrainConfig, image_shape: tuple[int, int, int], method: MethodChoice | None = None) -> TrainConfig:
    """Every ``None``/``"auto"`` setting replaced by its concrete value for this data and ``method`` (the
    config's, as :func:`validate` returned it; each setting's resolver is declared with it in lbgat.config),
    every method and plug-in setting written out."""
    method = method or choose(config)
    flips_allowed = _dataset_allows_flips(config.data.name)
    _check_augment_fits(config, image_shape, flips_allowed)
    facts = AutoFacts(image_shape, threat_profile(image_shape[0]), flips_allowed, method.cls, method.params,
                      method.label)
    resolved = resolve_auto(config, facts)
    written = dataclasses.replace(config.method, params=method.params_mapping(), plugin_params=method.plugin_mappings())
    resolved = dataclasses.replace(resolved, method=written)
    channels, height, width = image_shape
    model, teacher = resolved.model, resolved.teacher
    for arch in filter(None, (model, teacher)):
        entry = get_model_entry(arch)
        if entry.input_shape is not None and tuple(entry.input_shape) != (channels, height, width):
            needed = "x".join(map(str, entry.input_shape))
            given = "x".join(map(str, image_shape))
            role = "--model" if arch == model else "--teacher"
            raise ConfigError(f"{arch} needs {needed} inputs but {config.data.name} has {given}; choose another {role}")
    return resolved


def train_attack(config: TrainConfig) -> TrainAttack:
    """The method's training attack from the resolved config, every field named: a renamed setting fails
    here instead of leaving the attack at a default."""
    attack = config.attack
    assert attack.eps is not None and attack.step_size is not None and attack.steps is not None, "not resolved"
    return TrainAttack(
        eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
        start=attack.start, start_std=attack.start_std,  # type: ignore[arg-type]  # checked against STARTS
        bn_mode=attack.bn_mode,  # type: ignore[arg-type]  # checked against BN_MODES
        objective=None if attack.objective == "auto" else attack.objective,  # type: ignore[arg-type]
        iterate=attack.iterate,  # type: ignore[arg-type]  # checked against ITERATES
        compiled=config.compile, compile_mode=config.compile_mode,
    )


def split_holdout(num_train: int, val_size: int, split_seed: int,
                  train_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices), both sorted and depending only on split_seed.

    ``train_size`` keeps only that many of the remaining examples (the next ones in the same
    permutation), for smoke runs and CPU benchmarks on a slice of a dataset.
    """
    if val_size >= num_train:
        raise ConfigError(f"data.val_size {val_size} leaves no training data (the training split has {num_train})")
    order = permutation(num_train, split_seed, Stream.SPLIT, 0)
    train = order[val_size:] if train_size is None else order[val_size:val_size + train_size]
    return train.sort().values, order[:val_size].sort().values


@dataclass
class RunParts:
    config: TrainConfig
    dataset: Dataset
    train_indices: torch.Tensor
    val_indices: torch.Tensor
    train_loader: DeviceLoader | MixedLoader
    val_loader: DeviceLoader | None
    method: Method
    optimizer: torch.optim.SGD
    student_spec: ModelSpec
    teacher_spec: ModelSpec | None
    device: torch.device
    world: World = dataclasses.field(default_factory=World)
    precision: Precision | None = None
    # What a training step calls: the method itself, or the DistributedDataParallel module around it.
    step_module: nn.Module | None = None
    extra: ExtraData | None = None  # data.extra, mixed into every training batch

    def __post_init__(self) -> None:
        if self.precision is None:
            self.precision = Precision("fp32", self.device)
        if self.step_module is None:
            self.step_module = self.method


def _teacher_source(entry: str) -> tuple[str | None, Path]:
    """``PATH`` (an lbgat checkpoint) or ``ARCH=PATH`` (a plain state dict)."""
    arch, separator, path = entry.partition("=")
    if separator and not Path(entry).exists():
        return arch, Path(path)
    return None, Path(entry)


def load_natural_model(entry: str, dataset: Dataset, what: str) -> LoadedModel:
    """A trained model from ``entry`` (an lbgat checkpoint, or ARCH=PATH for a plain state dict), checked
    against the dataset's classes and input shape; ``what`` names the setting in messages."""
    channels, height, _ = dataset.image_shape
    arch, path = _teacher_source(entry)
    check_checkpoint_path(path, what)
    try:
        model = load_for_eval(path, arch=arch, num_classes=dataset.num_classes, in_channels=channels,
                              image_size=height)
    except PlainStateDictError:
        flag = "--teacher-checkpoint " if what == "teacher checkpoint" else ""
        raise ConfigError(f"{what} {path} is a plain state dict: give its architecture as "
                          f"ARCH=PATH (e.g. {flag}resnet18={path})") from None
    if model.spec.num_classes != dataset.num_classes or (model.spec.in_channels, model.spec.image_size) != (
            channels, height):
        raise ConfigError(f"{what} {path} is a {model.spec.num_classes}-class model for "
                          f"{model.spec.in_channels}x{model.spec.image_size} inputs; {dataset.name} needs "
                          f"{dataset.num_classes} classes at {channels}x{height}")
    return model


def load_teacher(config: TrainConfig, dataset: Dataset, teacher: nn.Module | None, frozen: bool) -> nn.Module:
    """BGAT: the frozen ensemble of ``teacher_checkpoints``. LBGAT: ``teacher`` started from the one
    checkpoint given (same architecture; the optimiser state is not carried over)."""
    loaded = [load_natural_model(entry, dataset, "teacher checkpoint") for entry in config.teacher_checkpoints]
    if frozen:
        return FrozenEnsemble([model.model for model in loaded])
    (start,) = loaded
    if teacher is None or start.spec.arch != config.teacher:
        raise ConfigError(f"teacher checkpoint {start.path} holds a {start.spec.arch}, but teacher is {config.teacher}")
    teacher.load_state_dict(start.model.state_dict())
    return teacher


def load_data(config: TrainConfig) -> Dataset:
    return load_dataset(config.data.name, config.data.root, image_size=config.data.image_size)


def load_extra_data(config: TrainConfig, dataset: Dataset) -> ExtraData | None:
    """``data.extra``, checked against the dataset's image shape and classes; None without it."""
    if config.data.extra is None:
        return None
    extra = load_extra(config.data.extra)
    extra.check_fits(dataset)
    return extra


def _check_batches_fit(world: World, train_loader: DeviceLoader | MixedLoader,
                       val_loader: DeviceLoader | None) -> None:
    """Every rank needs at least one example of every batch (an empty share has no mean to take)."""
    for label, loader in (("batch_size", train_loader), ("val.batch_size", val_loader)):
        if loader is not None and loader.smallest_batch < world.size:
            raise ConfigError(
                f"with {world.size} processes every batch needs at least {world.size} examples, but a "
                f"{label} of {loader.batch_size} leaves a last batch of {loader.smallest_batch}; change the "
                "batch size or data.train_size / data.val_size")


def build_parts(config: TrainConfig, dataset: Dataset, world: World | None = None,
                method: MethodChoice | None = None, extra: ExtraData | None = None) -> RunParts:
    """Networks, method, optimiser and loaders for a resolved config and its ``method`` (as :func:`validate`
    returned it), with ``extra`` (``data.extra``, :func:`load_extra_data`) in every training batch; under
    ``torchrun`` (``world`` with several processes) this process's shard of the data and the DDP module around
    the method."""
    world = world or World()
    method_choice = method or choose(config, world)
    device = device_for(world, resolve_device(config.device))
    if world.is_main:
        for warning in sync_bn_warnings(config, world):
            print(warning, file=sys.stderr)
    precision = Precision(config.precision, device)
    channels, height, _ = dataset.image_shape
    student_spec = ModelSpec(config.model, dataset.num_classes, channels, height)
    teacher_spec = ModelSpec(config.teacher, dataset.num_classes, channels, height) if config.teacher else None
    # Networks are initialised from the run's seed, so a run is reproducible from its config alone.
    torch.manual_seed(config.seed)
    student = student_spec.build()
    teacher = teacher_spec.build() if teacher_spec is not None else None
    if config.teacher_checkpoints:
        teacher = load_teacher(config, dataset, teacher, method_choice.cls.frozen_teacher)
    attack = train_attack(config)

    def trained_model(entry: str, what: str) -> nn.Module:
        return load_natural_model(entry, dataset, what).model

    method = method_choice.build(student, attack, teacher, trained_model)
    method.to(device)
    if config.channels_last:
        method.to(memory_format=torch.channels_last)
    # One SGD optimiser over all trained networks (one parameter group each), as the official LBGAT code.
    # A parameter shared by two networks (separate_bn) is in the first network's group only.
    groups, seen = [], set()
    for network in method.trained_networks().values():
        own = [parameter for parameter in network.parameters() if id(parameter) not in seen]
        seen.update(id(parameter) for parameter in own)
        groups.append({"params": own})
    try:
        optimizer = torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum,
                                    weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov,
                                    **sgd_kernel(config.optim.kernel))
    except (RuntimeError, ValueError, TypeError) as error:  # a torch without that kernel for this device
        raise ConfigError(f"--sgd-kernel {config.optim.kernel} is not available with torch {torch.__version__} on "
                          f"{device}: {' '.join(str(error).split())[:160]}") from None
    train_indices, val_indices = split_holdout(len(dataset.train), config.data.val_size, config.data.split_seed,
                                               config.data.train_size)
    augment = Augment(crop_padding=config.data.crop_padding, flip=config.data.flip, kind=config.data.augment)
    shard = {"rank": world.rank, "world_size": world.size, "channels_last": config.channels_last}
    train_loader: DeviceLoader | MixedLoader = DeviceLoader(
        dataset.train, batch_size=config.batch_size, seed=config.seed, device=device, indices=train_indices,
        augment=augment, shuffle=True, **shard)
    if extra is not None:
        assert config.data.extra_fraction is not None, "resolved with data.extra"
        train_loader = MixedLoader(train_loader, extra, config.data.extra_fraction, first_key=len(dataset.train))
    val_loader = None
    if len(val_indices):
        val_loader = DeviceLoader(dataset.train, batch_size=config.val.batch_size, seed=config.seed, device=device,
                                  indices=val_indices, **shard)
    if world.sharded:
        _check_batches_fit(world, train_loader, val_loader)
        # The same two examples on every rank, so every rank freezes the same parameters.
        probe_loader = DeviceLoader(dataset.train, batch_size=2, seed=config.seed, device=device,
                                    indices=train_indices[:2], augment=augment, channels_last=config.channels_last)
        parallel.freeze(method, parallel.unused_parameters(method, next(probe_loader.batches(0))))
        if config.sync_bn:
            parallel.convert_sync_batchnorm(method, device)
    if config.compile:
        for network in filter(None, (method.student, method.teacher)):
            network.compile(**compile_options(config.compile_mode))
    step_module: nn.Module = parallel.data_parallel(method, device) if world.sharded else method
    return RunParts(config, dataset, train_indices, val_indices, train_loader, val_loader, method, optimizer,
                    student_spec, teacher_spec, device, world, precision, step_module, extra)

