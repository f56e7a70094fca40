"""Numbers that must not be wrong on a GPU, shown on CPU: fp16 attacks step, autocast trains every weight,
what float32 means is set (torch's own flags by default, IEEE or TF32 when asked) and recorded, GPU resume
settings, the batch check's tolerance per dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.method_formulas import make_batch, make_method
from lbgat.attacks import pgd
from lbgat.attacks.half import scaled_input_gradients
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.config import TrainConfig, build_config
from lbgat.errors import ConfigError
from lbgat.evaluate.checks import CheckInputs, batch_independence_check
from lbgat.evaluate.runner import AutocastModel
from lbgat.runtime.arithmetic import (
    CUBLAS_WORKSPACE,
    FLOAT32_MODES,
    describe_arithmetic,
    deterministic_algorithms,
    float32_mode,
)
from lbgat.runtime.precision import Precision
from lbgat.runtime.rng import ExampleRNG
from lbgat.train import train
from lbgat.train.setup import validate

CPU = torch.device("cpu")


def confident_model(margin: float = 20.0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN whose last layer is scaled until the median logit margin on its batch is about ``margin``;
    the labels are its own predictions, so every example starts correctly classified."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        logits = model(x)
        top2 = logits.topk(2, dim=1).values
        factor = margin / float((top2[:, 0] - top2[:, 1]).median())
        model[3].weight.mul_(factor)
        model[3].bias.mul_(factor)
        y = model(x).argmax(1)
    return model, x, y


def fp16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.float16)


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def test_cpu_autocast_runs_fp16_and_plain_fp16_backward_underflows() -> None:
    """fp16's underflow exists on CPU: without scaling, fp16 zeroes the input gradient of
    confidently classified examples (the defect the fix removes)."""
    model, x, y = confident_model()
    x = x.clone().requires_grad_(True)
    with fp16():
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
    assert logits.dtype == torch.float16
    (grad,) = torch.autograd.grad(loss, x)
    assert int((grad.flatten(1).abs().sum(1) == 0).sum()) > 10


def fp32_and_scaled_fp16_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                                         per_example: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed CE's input gradient in fp32, and through the scaling wrapper under fp16 autocast."""
    x32 = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(F.cross_entropy(model(x32), y, reduction="sum"), x32)
    x16 = x.clone().requires_grad_(True)
    with fp16():
        loss = F.cross_entropy(scaled_input_gradients(model, x16, per_example=per_example), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x16)
    return reference, grad


def test_fp16_input_gradients_are_scaled_back_and_never_zero() -> None:
    """Through the scaling wrapper every example has a non-zero fp16 input gradient with
    (nearly) the fp32 gradient's value and sign."""
    model, x, y = confident_model()
    reference, grad = fp32_and_scaled_fp16_input_gradients(model, x, y, per_example=True)
    assert grad.dtype == torch.float32
    assert int((grad.flatten(1).abs().sum(1) == 0).sum()) == 0
    assert float((grad.sign() == reference.sign()).float().mean()) > 0.95
    norm = reference.flatten(1).norm(dim=1)
    # fp16 rounds the logits, and the gradient of a margin-20 example is about exp(-margin): a few per cent.
    relative = (grad - reference).flatten(1).norm(dim=1)[norm > 0] / norm[norm > 0]
    assert float(relative.median()) < 0.05 and float(relative.max()) < 0.25


def test_the_fp16_attack_moves_as_the_fp32_one() -> None:
    """At a logit margin of about 20, CE-PGD under fp16 autocast steps every example and
    brings the accuracy down as fp32 does (before the fix: about half the examples never moved)."""
    model, x, y = confident_model()
    settings = {"eps": 0.1, "step_size": 0.02, "steps": 10, "start": "none"}
    reference = pgd(model, x, y, **settings)
    with fp16():
        x_adv = pgd(model, x, y, **settings)
    moved = (x_adv - x).flatten(1).abs().amax(1) > 0
    assert bool(moved.all())
    assert abs(robust_accuracy(model, x_adv, y) - robust_accuracy(model, reference, y)) <= 0.05


def test_the_fp16_kl_attack_moves_from_the_trades_start() -> None:
    """The TRADES attack (KL objective, x + 0.001 N(0, I)) under fp16 leaves its start
    for every example (before the fix its gradient was all zeros)."""
    model, x, y = confident_model()
    rng = ExampleRNG(0, 0, torch.arange(len(x)))
    with fp16():
        x_adv = pgd(model, x, None, eps=0.1, step_size=0.02, steps=3, objective="kl", start="normal", rng=rng)
    assert bool(((x_adv - x).flatten(1).abs().amax(1) > 0.01).all())


def test_fp16_attack_with_train_mode_batchnorm_follows_the_fp32_gradient() -> None:
    """With BatchNorm in train mode (examples interact) one scale serves the batch, and the
    gradient still points where fp32's does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10)).train()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    reference, grad = fp32_and_scaled_fp16_input_gradients(model, x, y, per_example=False)
    assert float((grad.sign() == reference.sign()).float().mean()) > 0.9


def test_fp16_evaluation_model_gives_every_example_a_gradient() -> None:
    """`lbgat eval --precision fp16`: the AutocastModel's input gradients do not underflow
    (so PGD, CW and AutoAttack all see them)."""
    model, x, y = confident_model()
    wrapped = AutocastModel(model, CPU, "fp16")
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(wrapped(x), y, reduction="sum"), x)
    assert int((grad.flatten(1).abs().sum(1) == 0).sum()) == 0
    assert wrapped.autocast_dtype == torch.float16


def test_the_training_step_autocast_region_has_no_weight_cache() -> None:
    """The step's autocast region does not cache weight casts (a cast made under the
    attack's no_grad would be reused without gradient history on torch < 2.10)."""
    for name in ("bf16", "fp16"):
        with Precision(name, CPU).autocast():
            assert torch.is_autocast_enabled("cpu")
            assert not torch.is_autocast_cache_enabled()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["trades", "lbgat-trades", "bgat-trades"])
def test_every_student_weight_trained_in_fp32_gets_a_gradient_under_autocast(name: str, precision: str) -> None:
    """After one step under autocast, every student weight that gets a gradient in fp32
    also gets a non-zero one."""
    def gradients(autocast) -> dict[str, torch.Tensor | None]:
        method = make_method(name)
        with autocast:
            loss = method(make_batch())["loss"]
        loss.float().backward()
        return {key: parameter.grad for key, parameter in method.student.named_parameters()}

    full = gradients(Precision("fp32", CPU).autocast())
    half = gradients(Precision(precision, CPU).autocast())
    trained = [key for key, grad in full.items() if grad is not None and bool(grad.abs().sum() > 0)]
    assert trained
    for key in trained:
        assert half[key] is not None and bool(half[key].abs().sum() > 0), key


def tiny_run(tmp_path: Path, name: str, *overrides: str, resume: bool = False, **flags) -> Path:
    out = tmp_path / name
    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 32, "out": str(out),
                                 "schedule.epochs": 1, "max_steps": 2, **flags},
                          ["data.train_size=64", "data.val_size=0", "attack.steps=2", *overrides])
    train(config, resume=resume, progress=False)
    return out


BACKENDS = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
# Neither torch's default (TF32 convolutions, IEEE matmuls) nor what --ieee-fp32 or --tf32 set.
UNUSUAL = ("ieee", "tf32")


def flags() -> tuple[str, ...]:
    return tuple(backend.fp32_precision for backend in BACKENDS)


@pytest.fixture
def unusual_flags():
    """The CUDA fp32 flags set to values nobody's default holds, and torch's own put back afterwards."""
    saved = flags()
    for backend, value in zip(BACKENDS, UNUSUAL, strict=True):
        backend.fp32_precision = value
    yield UNUSUAL
    for backend, value in zip(BACKENDS, saved, strict=True):
        backend.fp32_precision = value


def test_torch_sets_tf32_convolutions_and_ieee_matmuls_by_default() -> None:
    """What lbgat's default leaves alone: torch's own flags (matmul "none": inherited, IEEE fp32)."""
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision in ("none", "ieee")


@pytest.mark.parametrize(("mode", "inside"), [("default", UNUSUAL), ("ieee", ("ieee", "ieee")),
                                              ("tf32", ("tf32", "tf32"))])
def test_float32_mode_leaves_the_flags_by_default_and_sets_them_when_asked(unusual_flags, mode: str,
                                                                            inside: tuple[str, str]) -> None:
    with float32_mode(mode):
        assert flags() == inside
    assert flags() == unusual_flags


@pytest.mark.parametrize(("flag", "mode", "inside"), [(None, "default", UNUSUAL),
                                                      ("--ieee-fp32", "ieee", ("ieee", "ieee")),
                                                      ("--tf32", "tf32", ("tf32", "tf32"))])
def test_training_and_evaluation_leave_or_set_the_flags_and_put_them_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unusual_flags, flag: str | None, mode: str,
        inside: tuple[str, str]) -> None:
    """`lbgat train` and `lbgat eval` read the flags back inside the run: untouched by default (set to unusual values
    first, they stay so), IEEE with --ieee-fp32, TF32 with --tf32; as they were afterwards; recorded."""
    from lbgat.cli import main
    from lbgat.evaluate import runner
    from lbgat.train import trainer

    seen: dict[str, tuple[str, ...]] = {}

    def reading(name: str, function):
        def read(*args, **kwargs):
            seen[name] = flags()
            return function(*args, **kwargs)
        return read

    monkeypatch.setattr(trainer, "_train", reading("train", trainer._train))
    monkeypatch.setattr(runner, "_load_models", reading("eval", runner._load_models))
    given = [flag] if flag else []
    run = tmp_path / "run"
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "32", "--max-steps", "1",
                 "--epochs", "1", "--set", "data.train_size=32", "--set", "data.val_size=0", *given,
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run / "last.pt"), "--attacks", "clean", "--num-examples", "8", "--check-n", "0",
                 "--no-progress", "--out", str(tmp_path / "eval"), *given]) == 0
    assert seen == {"train": inside, "eval": inside}
    assert flags() == unusual_flags
    assert load_checkpoint(run / "last.pt").meta["config"]["float32"] == mode
    assert json.loads((run / "provenance.json").read_text())["arithmetic"]["float32"] == mode
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["protocol"]["float32"] == mode


def test_the_two_float32_flags_exclude_each_other_and_say_nothing_when_absent() -> None:
    from lbgat.cli import build_parser
    from lbgat.settings import flag_values

    parser = build_parser()
    assert flag_values(parser.parse_args(["train"]), TrainConfig)["float32"] is None  # a recipe's value stays
    assert flag_values(parser.parse_args(["train", "--ieee-fp32"]), TrainConfig)["float32"] == "ieee"
    assert parser.parse_args(["eval", "x.pt"]).float32 == "default"
    for command in (["train"], ["eval", "x.pt"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--ieee-fp32", "--tf32"])
    with pytest.raises(ConfigError, match=r"^float32 must be one of default, ieee, tf32, got 'fast'$"):
        validate(build_config(None, None, ["float32=fast"]))
    assert FLOAT32_MODES == ("default", "ieee", "tf32")


@pytest.mark.parametrize(("float32", "conv", "matmul", "capability", "expected"), [
    ("default", "tf32", "none", (9, 0), "torch's default: TF32 convolutions, IEEE fp32 matmuls"),
    ("ieee", "ieee", "ieee", (9, 0), "IEEE fp32 asked for (--ieee-fp32): IEEE fp32 convolutions and matmuls"),
    ("tf32", "tf32", "tf32", (8, 0), "TF32 asked for (--tf32): TF32 convolutions and matmuls"),
    ("default", "ieee", "tf32", (9, 0), "torch's flags as this process had set them (lbgat's default leaves them as "
                                        "they are): IEEE fp32 convolutions, TF32 matmuls"),
    ("default", "tf32", "ieee", (7, 5), "torch's default: TF32 convolutions, IEEE fp32 matmuls (but this GPU, before "
                                        "Ampere, has no TF32: IEEE fp32)"),
])
def test_the_record_says_what_the_gpu_flags_compute_and_whose_they_are(
        monkeypatch: pytest.MonkeyPatch, unusual_flags, float32: str, conv: str, matmul: str,
        capability: tuple[int, int], expected: str) -> None:
    """On a GPU (its capability stubbed) the record reads the flags back and names the default as torch's."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    for backend, value in zip(BACKENDS, (conv, matmul), strict=True):
        backend.fp32_precision = value
    record = describe_arithmetic("fp32", torch.device("cuda"), float32=float32, deterministic=False)
    assert record["tf32"] == expected
    assert (record["conv"], record["matmul"], record["float32"]) == (conv, matmul.replace("none", "ieee"), float32)


def test_arithmetic_is_recorded_in_provenance_and_reports(tmp_path: Path) -> None:
    """Provenance.json and every report say what float32 was and whether kernels
    were deterministic; on CPU TF32 is recorded as n/a."""
    from lbgat.cli import main

    run = tiny_run(tmp_path, "run", deterministic=True)
    arithmetic = json.loads((run / "provenance.json").read_text())["arithmetic"]
    assert arithmetic["dtype"] == "float32" and arithmetic["float32"] == "default"
    assert arithmetic["tf32"].startswith("n/a on CPU")
    assert arithmetic["deterministic"].startswith("yes")
    assert load_checkpoint(run / "last.pt").meta["config"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # put back after the run
    assert main(["eval", str(run / "last.pt"), "--attacks", "clean", "--num-examples", "8", "--check-n", "0",
                 "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    protocol = json.loads((tmp_path / "eval" / "report.json").read_text())["protocol"]
    assert protocol["dtype"] == "float32" and protocol["tf32"].startswith("n/a on CPU")
    assert {"conv", "matmul", "float32"} <= protocol.keys()
    assert "float32 arithmetic, TF32: n/a on CPU" in (tmp_path / "eval" / "report.md").read_text()


@pytest.mark.parametrize(("setting", "value"), [("float32", "ieee"), ("deterministic", True)])
def test_arithmetic_settings_may_not_change_on_resume(tmp_path: Path, setting: str, value: object) -> None:
    """The float32 setting and deterministic kernels change what is computed, so a resume keeps them."""
    tiny_run(tmp_path, "run", max_steps=1)
    with pytest.raises(ConfigError, match=setting):
        tiny_run(tmp_path, "run", resume=True, **{setting: value})


def test_a_run_from_before_the_float32_setting_resumes_with_its_arithmetic(tmp_path: Path) -> None:
    """A checkpoint (or config.yaml) that says `tf32: false` was trained in IEEE fp32, lbgat's default then: it
    resumes with --ieee-fp32 and is refused, naming float32, with today's default."""
    from lbgat.checkpoints.checkpoint import save_checkpoint

    run = tiny_run(tmp_path, "run", max_steps=1, float32="ieee")
    checkpoint = load_checkpoint(run / "last.pt")
    old = {key: value for key, value in checkpoint.meta["config"].items() if key != "float32"}
    save_checkpoint(run / "last.pt", {**checkpoint.meta, "config": {**old, "tf32": False}}, checkpoint.state,
                    checkpoint.optimizer)
    with pytest.raises(ConfigError, match=r"float32 \('ieee' in the run, 'default' now\); resume with --ieee-fp32"):
        tiny_run(tmp_path, "run", resume=True)
    tiny_run(tmp_path, "run", resume=True, float32="ieee")
    assert load_checkpoint(run / "last.pt").meta["position"]["global_step"] == 2
    assert build_config({"tf32": True}).float32 == "tf32" and build_config({"tf32": False}).float32 == "ieee"


def test_cli_takes_the_float32_flag_and_deterministic(tmp_path: Path) -> None:
    """`lbgat train --tf32 --deterministic` reach the config."""
    from lbgat.cli import main

    out = tmp_path / "run"
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "32", "--max-steps", "1",
                 "--epochs", "1", "--set", "data.train_size=32", "--set", "data.val_size=0", "--tf32",
                 "--deterministic", "--out", str(out), "--no-progress"]) == 0
    config = load_checkpoint(out / "last.pt").meta["config"]
    assert config["float32"] == "tf32" and config["deterministic"] is True


def test_checkpoints_hold_no_cuda_generator_states(tmp_path: Path, monkeypatch) -> None:
    """CUDA RNG states were saved and never restored; training randomness is the counter
    hash, so they are no longer saved, and a checkpoint that holds them still resumes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)])
    run = tiny_run(tmp_path, "run", max_steps=1, device="cpu")
    checkpoint = load_checkpoint(run / "last.pt")
    assert not [key for key in checkpoint.state if key.startswith("rng.torch_cuda")]
    # An older checkpoint with a CUDA state: it is ignored on resume.
    from lbgat.checkpoints.checkpoint import save_checkpoint

    save_checkpoint(run / "last.pt", checkpoint.meta,
                    {**checkpoint.state, "rng.torch_cuda_0": torch.zeros(16, dtype=torch.uint8)}, checkpoint.optimizer)
    tiny_run(tmp_path, "run", resume=True, device="cpu")
    assert load_checkpoint(run / "last.pt").meta["position"]["global_step"] == 2


def test_deterministic_sets_the_cublas_workspace_before_cuda_starts(monkeypatch) -> None:
    """--deterministic puts CUBLAS_WORKSPACE_CONFIG=:4096:8 into the environment while CUDA
    has not started, and refuses in one line when CUDA already runs without it."""
    monkeypatch.delenv(CUBLAS_WORKSPACE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with deterministic_algorithms(True, torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert __import__("os").environ[CUBLAS_WORKSPACE] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.delenv(CUBLAS_WORKSPACE)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ConfigError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts"), \
            deterministic_algorithms(True, torch.device("cuda")):
        pass
    monkeypatch.setenv(CUBLAS_WORKSPACE, ":0:0")
    with pytest.raises(ConfigError, match="but it is ':0:0'"), deterministic_algorithms(True, torch.device("cuda")):
        pass


class BatchSizeRounding(nn.Module):
    """Logits that differ by about one bf16 rounding step between batch sizes, as a GPU kernel chosen per
    batch size does: harmless, and not a sign of train-mode BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1)) * 4
        return logits * (1 + 2.0 ** -8) if len(x) > 1 else logits


def check_inputs() -> CheckInputs:
    generator = torch.Generator().manual_seed(0)
    return CheckInputs(torch.rand(16, 3, 8, 8, generator=generator), torch.zeros(16, dtype=torch.long),
                       torch.arange(16), 0.03, 0.01, "Linf", 0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_batch_check_tolerates_low_precision_rounding(precision: str) -> None:
    """A bf16/fp16 rounding difference between batchings passes (it failed at 1e-4)."""
    result = batch_independence_check(AutocastModel(BatchSizeRounding(), CPU, precision), check_inputs())
    assert result.verdict == "pass", result.detail


def test_batch_check_still_catches_train_mode_batchnorm_in_bf16() -> None:
    """The wider tolerance still fails a model whose BatchNorm is in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))

    class AlwaysTrain(nn.Module):  # ignores eval(): what a broken model does
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.net.train()
            return self.net(x)

    result = batch_independence_check(AutocastModel(AlwaysTrain(), CPU, "bf16"), check_inputs())
    assert result.verdict == "fail"
