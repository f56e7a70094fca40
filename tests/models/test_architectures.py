"""Tests for lbgat.models: registry, architectures (key-compatible with the official code), FLOPs."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from functools import cache

import pytest
import torch
from torch import nn

from helpers.deterministic import deterministic_inputs, deterministic_state
from helpers.paths import FIXTURES
from lbgat.errors import ConfigError
from lbgat.models import (
    InputNormalization,
    ModelEntry,
    WideResNet,
    count_flops,
    create_model,
    default_teacher,
    get_model_entry,
    list_models,
    register_model,
)

DATA = FIXTURES
MODEL_NAMES = [entry.name for entry in list_models()]
REQUIRED_NAMES = {
    "wrn-34-10",
    "wrn-34-20",
    "wrn-28-10",
    "wrn-10-1",
    "resnet18",
    "resnet18-lbgat",
    "preact-resnet18",
    "small-cnn",
    "tiny-cnn",
}
# Models above this many parameters are built and run on the meta device only (shapes and keys, no
# compute): the WRN-28/34 family (38-193M parameters, 10-53 GFLOP per image) is too slow for the fast
# suite on 2 CPU cores. Their code, WideResNet, runs for real as wrn-10-1 and WRN-16-2 (official logits).
REAL_MAX_PARAMS = 20e6
# Models checked at the level of outputs with non-trivial weights (all at most 30 MFLOP per image).
SMALL_MODELS = ("small-cnn", "tiny-cnn", "wrn-10-1")
NUM_CLASSES = 7  # not 10, so a hard-coded class count shows up


def _primary_shape(name: str) -> tuple[int, int, int]:
    return get_model_entry(name).input_shape or (3, 32, 32)


@cache
def _runs_for_real(name: str) -> bool:
    shape = _primary_shape(name)
    with torch.device("meta"):  # construction only: cheap even for WRN-34-20
        model = create_model(name, num_classes=NUM_CLASSES, in_channels=shape[0], image_size=shape[1])
    return sum(p.numel() for p in model.parameters()) <= REAL_MAX_PARAMS


def _build(name: str, shape: tuple[int, int, int] | None = None, **kwargs: object) -> nn.Module:
    channels, size, _ = shape or _primary_shape(name)
    device = "cpu" if _runs_for_real(name) else "meta"
    with torch.device(device):
        return create_model(name, num_classes=NUM_CLASSES, in_channels=channels, image_size=size, **kwargs)


def _inputs(batch: int, shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, *shape, generator=generator).to(device)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _key_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def _official_key_shapes(filename: str) -> dict[str, list[int]]:
    return json.loads((DATA / filename).read_text())


# --- registry ---------------------------------------------------------------------------------


def test_required_architectures_are_registered() -> None:
    assert REQUIRED_NAMES <= set(MODEL_NAMES)
    assert MODEL_NAMES == sorted(MODEL_NAMES)
    for entry in list_models():
        assert isinstance(entry, ModelEntry) and entry.description
    assert get_model_entry("resnet18-lbgat").input_shape == (3, 32, 32)
    assert get_model_entry("wrn-34-10").input_shape is None


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError) as error:
        create_model("wrn-99-1", num_classes=10)
    message = str(error.value)
    assert "unknown model 'wrn-99-1'" in message and "\n" not in message
    assert all(name in message for name in MODEL_NAMES)


def test_registering_a_name_twice_fails() -> None:
    before = get_model_entry("tiny-cnn")
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny-cnn", description="duplicate")(lambda **_: nn.Identity())
    assert get_model_entry("tiny-cnn") is before


@pytest.mark.parametrize(
    ("name", "channels", "size", "expected"),
    [
        ("resnet18-lbgat", 1, 28, "resnet18-lbgat needs 3×32×32 inputs, got 1×28×28"),
        ("resnet18-lbgat", 3, 64, "resnet18-lbgat needs 3×32×32 inputs, got 3×64×64"),
        ("small-cnn", 1, 8, "small-cnn needs inputs of at least 16×16"),
        ("tiny-cnn", 1, 3, "tiny-cnn needs inputs of at least 4×4"),
    ],
)
def test_impossible_input_is_a_one_line_config_error(
    name: str, channels: int, size: int, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        create_model(name, num_classes=10, in_channels=channels, image_size=size)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_input_shape_error_suggests_a_model_that_fits() -> None:
    with pytest.raises(ConfigError, match="pick another model, e.g. small-cnn"):
        create_model("resnet18-lbgat", num_classes=10, in_channels=1, image_size=28)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"num_classes": 10, "in_channels": 0},
        {"num_classes": 10, "image_size": -1},
        {"num_classes": 10, "mean": (0.5, 0.5, 0.5)},
        {"num_classes": 10, "mean": (0.5,), "std": (0.5,)},
        {"num_classes": 10, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.0, 0.5)},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        create_model("tiny-cnn", **kwargs)


@pytest.mark.parametrize(
    ("channels", "size", "expected"),
    [(3, 32, "resnet18-lbgat"), (3, 64, "resnet18"), (1, 28, "small-cnn"), (1, 8, "tiny-cnn")],
)
def test_default_teacher(channels: int, size: int, expected: str) -> None:
    assert default_teacher(channels, size) == expected
    create_model(default_teacher(channels, size), num_classes=10, in_channels=channels, image_size=size)


# --- every registered model --------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_gives_one_logit_row_per_example(name: str) -> None:
    shape = _primary_shape(name)
    model = _build(name, shape)
    inputs = _inputs(2, shape, _device_of(model))
    with torch.no_grad():
        logits = model(inputs)  # train-mode batch norm, as in training
    assert logits.shape == (2, NUM_CLASSES)
    if _runs_for_real(name):
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if get_model_entry(n).input_shape is None])
def test_size_agnostic_models_take_other_input_sizes(name: str, shape: tuple[int, int, int]) -> None:
    # Shape inference only, on the meta device: what breaks here is pooling or flatten sizes.
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES, in_channels=shape[0], image_size=shape[1])
        assert model(torch.empty(2, *shape)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_round_trip_loads_strictly(name: str) -> None:
    original = _build(name)
    copy = _build(name)
    if not _runs_for_real(name):
        copy.load_state_dict(original.state_dict(), strict=True)  # names and shapes only
        return
    if name in SMALL_MODELS:
        original.load_state_dict(deterministic_state(original))  # small-cnn starts with all-zero logits
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    copy.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    for key, value in original.state_dict().items():
        assert torch.equal(value, copy.state_dict()[key]), key
    shape = _primary_shape(name)
    if name in SMALL_MODELS:
        original.eval()
        copy.eval()
        inputs = _inputs(2, shape)
        with torch.no_grad():
            assert torch.equal(original(inputs), copy(inputs))


# --- official key sets and numerics ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("wrn-34-10", "wrn34_10_official_keys.json"),
        ("wrn-34-20", "wrn34_20_official_keys.json"),
        ("resnet18-lbgat", "resnet18_lbgat_official_keys.json"),
    ],
)
def test_state_dict_keys_and_shapes_equal_the_official_ones(name: str, filename: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    official = _official_key_shapes(filename)
    ours = _key_shapes(model)
    assert list(ours) == list(official)  # same names, same order
    assert ours == official


def test_wrn_keeps_the_unused_sub_block1_and_the_first_shortcuts() -> None:
    with torch.device("meta"):
        keys = set(create_model("wrn-34-10", num_classes=10).state_dict())
        small_keys = set(create_model("wrn-10-1", num_classes=10).state_dict())
    assert {f"{stage}.layer.0.convShortcut.weight" for stage in ("block1", "block2", "block3")} <= keys
    assert "sub_block1.layer.0.convShortcut.weight" in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert {"bn1.weight", "fc.weight", "fc.bias"} <= keys
    assert not any(key.startswith("sub_block1.") for key in small_keys)


def test_wrn_sub_block1_never_runs_and_never_gets_a_gradient() -> None:
    model = WideResNet(depth=10, widen_factor=1, num_classes=3)
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is None for p in model.sub_block1.parameters())
    assert all(
        p.grad is not None for name, p in model.named_parameters() if not name.startswith("sub_block1")
    )


def test_wrn_initialisation_follows_the_official_rule() -> None:
    model = WideResNet(depth=10, widen_factor=10, num_classes=10)  # the widths of WRN-34-10, fewer blocks
    for conv in (model.block3.layer[0].conv2, model.block3.layer[0].convShortcut):
        expected_std = math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
        assert abs(conv.weight.mean().item()) < 0.05 * expected_std
    assert torch.equal(model.bn1.weight, torch.ones(640)) and torch.equal(model.bn1.bias, torch.zeros(640))
    assert torch.equal(model.fc.bias, torch.zeros(10))


@pytest.mark.parametrize(
    ("build", "filename"),
    [
        (lambda: WideResNet(depth=16, widen_factor=2, num_classes=10), "wrn16_2_official_logits.json"),
        # The same network by name: the wrn-D-W family builds the official layout.
        (lambda: create_model("wrn-16-2", num_classes=10), "wrn16_2_official_logits.json"),
        (lambda: create_model("resnet18-lbgat", num_classes=10), "resnet18_lbgat_official_logits.json"),
    ],
    ids=["wrn-16-2", "wrn-16-2-by-name", "resnet18-lbgat"],
)
def test_logits_equal_the_official_implementation(build: Callable[[], nn.Module], filename: str) -> None:
    # Reference logits come from the official classes (LBGAT models/wideresnet.py and
    # models/resnetcifar.py) loaded with deterministic_state; WRN-16-2 has both shortcut kinds.
    reference = json.loads((DATA / filename).read_text())
    model = build()
    model.load_state_dict(deterministic_state(model), strict=True)
    inputs = deterministic_inputs(2, (3, 32, 32))
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            logits = model(inputs)
        expected = torch.tensor(reference[mode])
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_resnet18_lbgat_ends_at_8x8_and_resnet18_at_4x4() -> None:
    final_maps = {}
    for name in ("resnet18-lbgat", "resnet18"):
        with torch.device("meta"):
            model = create_model(name, num_classes=10)
            model.layer4.register_forward_hook(
                lambda m, i, out, name=name: final_maps.__setitem__(name, out.shape)
            )
            model(torch.empty(1, 3, 32, 32))
    assert final_maps["resnet18-lbgat"][-2:] == (8, 8)
    assert final_maps["resnet18"][-2:] == (4, 4)


# --- FLOPs -------------------------------------------------------------------------------------


def test_count_flops_counts_conv_and_linear_multiply_accumulates_twice() -> None:
    model = create_model("tiny-cnn", num_classes=10, in_channels=1, image_size=28)
    conv1 = 16 * 1 * 16 * 14 * 14  # 4×4 kernels, stride 2
    conv2 = 32 * 16 * 16 * 7 * 7
    fc1 = 32 * 7 * 7 * 100
    fc2 = 100 * 10
    assert count_flops(model, (1, 28, 28)) == 2 * (conv1 + conv2 + fc1 + fc2)


def test_count_flops_restores_modes_and_leaves_batchnorm_statistics_alone() -> None:
    model = create_model("wrn-10-1", num_classes=10)
    model.train()
    model.fc.eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    count_flops(model, (3, 32, 32))
    assert model.training and not model.fc.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_small_wrn_is_at_most_50_mflop_per_cifar_image() -> None:
    assert count_flops(create_model("wrn-10-1", num_classes=10), (3, 32, 32)) <= 50e6


def test_flops_follow_the_architectures() -> None:
    flops = {}
    for name in ("resnet18", "resnet18-lbgat", "wrn-34-10", "wrn-34-20"):
        with torch.device("meta"):
            flops[name] = count_flops(create_model(name, num_classes=10), (3, 32, 32))
    # Stride 1 in layer2 makes the LBGAT teacher's last three stages run at twice the resolution.
    assert flops["resnet18-lbgat"] > 3 * flops["resnet18"]
    # The unused sub_block1 is never run, so it costs no FLOPs.
    assert 13e9 < flops["wrn-34-10"] < 13.5e9
    assert flops["wrn-34-20"] == pytest.approx(4 * flops["wrn-34-10"], rel=0.01)
    for name in SMALL_MODELS:
        assert count_flops(create_model(name, num_classes=10), (3, 32, 32)) <= 30e6, name


# --- input normalisation -----------------------------------------------------------------------


def test_input_normalization_normalises_and_adds_no_state() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    layer = InputNormalization(mean, std)
    inputs = _inputs(2, (3, 4, 4))
    expected = (inputs - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(layer(inputs), expected)
    assert layer.state_dict() == {}
    assert layer.mean == mean and layer.std == std
    assert layer.to(torch.float64)(inputs.double()).dtype == torch.float64


def test_identity_normalization_is_skipped() -> None:
    layer = InputNormalization()
    inputs = _inputs(2, (3, 4, 4))
    assert layer(inputs) is inputs
    assert layer.mean is None and layer.std is None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_feeds_its_normalization_to_the_first_layer(name: str) -> None:
    shape = _primary_shape(name)
    with torch.device("meta"):
        model = create_model(
            name,
            num_classes=NUM_CLASSES,
            in_channels=shape[0],
            image_size=shape[1],
            mean=(0.5,) * shape[0],
            std=(0.25,) * shape[0],
        )
        assert isinstance(model.normalize, InputNormalization) and model.normalize.mean == (0.5,) * shape[0]
        seen: dict[str, torch.Tensor] = {}

        def record_output(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen.setdefault("normalized", out)

        def record_first_layer_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen.setdefault("first_layer_input", args[0])

        model.normalize.register_forward_hook(record_output)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.register_forward_pre_hook(record_first_layer_input)
        model(torch.empty(2, *shape))
    assert seen["first_layer_input"] is seen["normalized"]


@pytest.mark.parametrize(
    ("name", "shape"), [("small-cnn", (1, 28, 28)), ("tiny-cnn", (1, 28, 28)), ("wrn-10-1", (3, 32, 32))]
)
def test_normalised_model_has_the_same_keys_and_normalises_its_input(
    name: str, shape: tuple[int, int, int]
) -> None:
    mean, std = (0.5, 0.4, 0.3)[: shape[0]], (0.2, 0.25, 0.3)[: shape[0]]
    plain = _build(name, shape)
    plain.load_state_dict(deterministic_state(plain))  # small-cnn starts with all-zero logits
    normalised = _build(name, shape, mean=mean, std=std)
    assert list(normalised.state_dict()) == list(plain.state_dict())
    normalised.load_state_dict(plain.state_dict(), strict=True)
    assert normalised.normalize.mean == mean and normalised.normalize.std == std
    assert plain.normalize.mean is None
    plain.eval()
    normalised.eval()
    inputs = _inputs(2, shape)
    by_hand = (inputs - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalised(inputs), plain(by_hand))
