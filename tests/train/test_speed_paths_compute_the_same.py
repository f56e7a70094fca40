"""The attack under --compile takes input-only gradients, the training loop
avoids per-step host syncs without changing what it computes, loaders share one device copy of the
data, and the GPU settings (bf16 support, cudnn.benchmark, --sync-bn) are checked or warned about."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.benchmark_modules import load
from lbgat.attacks.input_only import FrozenWeights, input_only
from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method


class TinyNet(nn.Module):
    """A forward defined outside torch: dynamo skips torch.nn's own files (an nn.Sequential would stay eager)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny_networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return TinyNet(), TinyNet()


def tiny_batch() -> Batch:
    generator = torch.Generator().manual_seed(1)
    return Batch(torch.rand(4, 3, 8, 8, generator=generator), torch.randint(0, 10, (4,), generator=generator),
                 torch.arange(4), epoch=0, seed=0)


@contextmanager
def counting_compiled_calls(module: nn.Module) -> Iterator[list[str]]:
    """Records each call of ``module``'s compiled forward (run eagerly here: nothing is compiled)."""
    calls: list[str] = []

    def compiled_stand_in(*args, **kwargs):
        calls.append("compiled")
        return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = compiled_stand_in
    try:
        yield calls
    finally:
        module._compiled_call_impl = None


def lbgat_trades(student: nn.Module, teacher: nn.Module):
    attack = TrainAttack(eps=0.03, step_size=0.01, steps=3, start="normal")
    return create_method("lbgat-trades", student, teacher=teacher, params={"alpha": 6.0}, attack=attack)


def test_the_training_attack_runs_the_compiled_student_with_frozen_weights() -> None:
    """With the student compiled in place (nn.Module.compile(), as --compile does), the
    attack calls the compiled forward with no parameter requiring a gradient, the training forwards
    call it with every trainable parameter requiring one, and the flags are as they were afterwards."""
    student, teacher = tiny_networks()
    method = lbgat_trades(student, teacher)
    attack = method.adversarial
    in_attack: list[bool] = []

    def watched(batch):
        in_attack.append(True)
        try:
            return attack(batch)
        finally:
            in_attack.pop()

    method.adversarial = watched
    frozen_calls, training_calls = [], []
    with counting_compiled_calls(student) as calls:
        original = student._compiled_call_impl

        def recording(*args, **kwargs):
            grads = {parameter.requires_grad for parameter in student.parameters()}
            (frozen_calls if in_attack else training_calls).append(grads)
            return original(*args, **kwargs)

        student._compiled_call_impl = recording
        method(tiny_batch())["loss"].backward()
    assert frozen_calls == [{False}] * 4  # the KL target's clean forward, then one per attack step
    assert training_calls == [{True}] * 2  # the adversarial and the natural training forward
    assert len(calls) == 6
    assert all(parameter.requires_grad and parameter.grad is not None for parameter in student.parameters())


def test_the_attack_view_shares_modules_and_modes() -> None:
    student, _ = tiny_networks()
    assert input_only(student) is student  # not compiled: itself, bit for bit the old arithmetic
    with counting_compiled_calls(student) as calls:
        view = input_only(student)
        assert isinstance(view, FrozenWeights)
        view.eval()
        assert not student.training and not student.bn.training
        x = torch.rand(2, 3, 8, 8, requires_grad=True)
        assert torch.equal(view(x), student._call_impl(x)) and calls == ["compiled"]
        assert list(view.parameters()) == list(student.parameters())
        assert all(parameter.requires_grad for parameter in student.parameters())


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile does not run here")
def test_a_compiled_network_computes_weight_gradients_the_attack_view_does_not() -> None:
    """The cost itself: through a compiled network (aot_eager backend: AOTAutograd's
    joint graph without code generation) a gradient with respect to the input computes every weight
    gradient too; through input_only(network), the same compiled network with frozen weights, none, and
    the input's gradient is the same."""
    student, _ = tiny_networks()
    student.compile(backend="aot_eager")
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    counts, gradients = {}, {}
    for name, network in (("compiled", student), ("input_only", input_only(student))):
        loss = network(x).sum()
        with load("compile_attack").WeightGradientCount() as counter:
            (gradients[name],) = torch.autograd.grad(loss, x)
        counts[name] = counter.count
    assert counts == {"compiled": 1, "input_only": 0}
    torch.testing.assert_close(gradients["input_only"], gradients["compiled"])


def test_loaders_of_the_same_data_share_one_device_copy() -> None:
    """The training and held-out loaders (and any other) of one dataset hold one copy
    of it per device, not one each. The meta device stands in for a GPU: a real copy, no memory."""
    from lbgat.data.base import ImageSet
    from lbgat.data.loader import DeviceLoader, shared_on_device

    images = ImageSet(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8), torch.arange(10))
    train = DeviceLoader(images, batch_size=4, seed=0, device="meta", indices=torch.arange(8), shuffle=True)
    held_out = DeviceLoader(images, batch_size=2, seed=0, device="meta", indices=torch.arange(8, 10))
    assert train.images.device.type == "meta"
    assert train.images is held_out.images and train.labels is held_out.labels
    other = ImageSet(images.images.clone(), images.labels.clone())
    assert shared_on_device(other.images, torch.device("meta")) is not train.images  # other data, its own copy
    assert shared_on_device(images.images, torch.device("cpu")) is images.images  # already there: no copy


def test_bf16_needs_it_in_hardware_on_the_requested_gpu(monkeypatch) -> None:
    """Torch.cuda.is_bf16_supported() says yes for a V100 (emulated bf16) and asks
    about the current GPU; the check asks about the GPU the run uses, for bf16 in hardware."""
    from lbgat.errors import ConfigError
    from lbgat.runtime.precision import check_precision

    capabilities = {0: (9, 0), 1: (7, 0)}  # an H100 as cuda:0 (the current device), a V100 as cuda:1
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[device.index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {device.index}")
    monkeypatch.setattr(torch.version, "hip", None)
    check_precision("bf16", torch.device("cuda:0"))
    with pytest.raises(ConfigError, match="GPU 1 has no bf16 support in hardware"):
        check_precision("bf16", torch.device("cuda:1"))
    check_precision("fp16", torch.device("cuda:1"))


def test_cudnn_autotuning_is_on_for_gpu_training_unless_deterministic() -> None:
    """Cudnn.benchmark for the fixed shapes of training, off with --deterministic,
    and the caller's setting back afterwards."""
    from lbgat.train.gpu import cudnn_autotune

    assert torch.backends.cudnn.benchmark is False
    with cudnn_autotune(torch.device("cuda:0"), deterministic=False):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False
    for device, deterministic in ((torch.device("cuda:0"), True), (torch.device("cpu"), False)):
        with cudnn_autotune(device, deterministic):
            assert torch.backends.cudnn.benchmark is False


def test_sync_bn_warns_where_it_does_nothing_or_costs_a_collective_per_attack_step() -> None:
    """One line each; nothing for the ordinary case (torchrun, eval-mode attack)."""
    import dataclasses

    from lbgat.config import TrainConfig
    from lbgat.runtime.world import World
    from lbgat.train.gpu import sync_bn_warnings

    config = TrainConfig(sync_bn=True)
    train_mode = dataclasses.replace(config, attack=dataclasses.replace(config.attack, bn_mode="train"))
    (alone,) = sync_bn_warnings(config, World())
    assert "does nothing in a single process" in alone and "\n" not in alone
    assert sync_bn_warnings(config, World(0, 2)) == []
    (costly,) = sync_bn_warnings(train_mode, World(0, 2))
    assert "at every attack step" in costly
    assert sync_bn_warnings(TrainConfig(), World()) == []


def test_a_loader_moves_each_epochs_order_to_the_device_once(monkeypatch) -> None:
    """No host-to-device copy per batch (on a GPU each one makes the host wait for the
    device); the meta device stands in for a GPU."""
    from lbgat.data.base import ImageSet
    from lbgat.data.loader import Augment, DeviceLoader

    images = ImageSet(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8), torch.arange(12))
    loader = DeviceLoader(images, batch_size=4, seed=0, device="meta", shuffle=True, augment=Augment(2, True))
    copies: list[tuple[str, str]] = []
    to = torch.Tensor.to

    def counted(self, *args, **kwargs):
        result = to(self, *args, **kwargs)
        if result.device != self.device:
            copies.append((self.device.type, result.device.type))
        return result

    monkeypatch.setattr(torch.Tensor, "to", counted)
    batches = list(loader.batches(0))
    assert len(batches) == 3 and all(batch.x.device.type == "meta" for batch in batches)
    assert copies == [("cpu", "meta")]


def test_ranks_agree_on_a_stop_every_few_steps_and_at_every_boundary(tmp_path, monkeypatch) -> None:
    """The stop flag's all-reduce (a host sync) runs every STOP_CHECK_EVERY steps and
    at log intervals, checkpoints and epoch ends, the same steps on every rank, not after every step.
    (A one-process run standing in for a distributed one: the all-reduce is recorded, not run.)"""
    import torch.distributed as dist

    from lbgat.config import build_config
    from lbgat.train import parallel, train
    from lbgat.train import trainer as trainer_module

    agreed_at: list[int] = []
    monkeypatch.setattr(parallel, "is_distributed", lambda: True)
    monkeypatch.setattr(trainer_module, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: None)
    original = trainer_module.Trainer._stop_agreed

    def recorded(self, boundary):
        monkeypatch.setattr(dist, "all_reduce", lambda *args, **kwargs: agreed_at.append(self.position.global_step))
        return original(self, boundary)

    monkeypatch.setattr(trainer_module.Trainer, "_stop_agreed", recorded)
    config = build_config(None, {"method.name": "natural", "model": "tiny-cnn", "batch_size": 4,
                                 "out": str(tmp_path / "run"), "schedule.epochs": 1, "log_every": 12},
                          ["data.train_size=100", "data.val_size=0"])
    train(config, progress=False)
    assert agreed_at == [10, 12, 20, 24, 25]  # every 10 steps, each log interval of 12, the epoch's end (25)


def test_a_network_wrapped_by_torch_compile_is_frozen_too() -> None:
    student, _ = tiny_networks()
    view = input_only(torch.compile(student, backend="aot_eager"))
    assert isinstance(view, FrozenWeights) and list(view.parameters()) == list(student.parameters())


def test_held_out_validation_attacks_the_student_with_frozen_weights(tmp_path) -> None:
    """The validation PGD under --compile runs the compiled forward with frozen weights too."""
    from lbgat.config import build_config
    from lbgat.train.setup import build_parts, load_data, resolve
    from lbgat.train.trainer import Trainer

    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 8, "compile": True,
                                 "out": str(tmp_path / "run")}, ["data.train_size=16", "data.val_size=8",
                                                                  "val.steps=2"])
    dataset = load_data(config)
    parts = build_parts(resolve(config, dataset.image_shape), dataset)
    student = parts.method.student
    requires_grad_seen: list[set[bool]] = []
    with counting_compiled_calls(student) as calls:
        stand_in = student._compiled_call_impl

        def recording(*args, **kwargs):
            requires_grad_seen.append({parameter.requires_grad for parameter in student.parameters()})
            return stand_in(*args, **kwargs)

        student._compiled_call_impl = recording
        metrics = Trainer(parts, tmp_path / "run", progress=False)._validate(student)
    assert metrics is not None and metrics["n"] == 8
    assert calls and requires_grad_seen == [{False}] * len(calls)
    assert all(parameter.requires_grad for parameter in student.parameters())


class HostReads(TorchDispatchMode):
    """Operations that hand a tensor's value to the host (on a GPU, each makes the host wait for the device):
    ``.item()``, ``bool()``, ``int()`` and ``float()`` of a tensor, data-dependent shapes, ``torch.equal``."""

    READS = {"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select", "equal", "unique_dim",
             "_unique2", "_unique", "unique_consecutive"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.READS or (name == "index" and any(  # a boolean mask: the result's size is data
                isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1])):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _every_method_and_pair() -> list:
    from helpers.method_formulas import METHOD_NAMES
    from lbgat.methods import list_methods
    from lbgat.methods.plugin import list_plugins

    pairs = [pytest.param(method.name, {plugin.name: {}}, id=f"{method.name}+{plugin.name}")
             for method in list_methods() for plugin in list_plugins() if plugin.refuses(method) is None]
    return [pytest.param(name, {}, id=name) for name in METHOD_NAMES] + pairs


@pytest.mark.parametrize(("name", "plugins"), _every_method_and_pair())
def test_no_training_step_reads_a_value_back_to_the_host(name: str, plugins: dict) -> None:
    """A whole step (the attack, the loss, its backward, the SGD update, the weight perturbation's removal)
    of every method and every allowed pair with a plug-in hands no tensor value to the host: on a GPU the
    host queues the next step while the device still runs this one."""
    from helpers.method_formulas import make_batch, make_method
    from helpers.plugin_builds import build

    method = build(name, plugins) if plugins else make_method(name)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batch = make_batch(seed=1)
    reads = HostReads()
    with reads:
        optimizer.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        optimizer.step()
        method.after_step()
    assert reads.seen == []


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_sgd_kernels_update_the_weights_alike_on_cpu(nesterov: bool) -> None:
    """--sgd-kernel for-loop and foreach take the same SGD steps (momentum, weight decay, with and without
    Nesterov) bit for bit on CPU; the fused kernel rounds a few elements otherwise (those past its vector
    width's last multiple), by float precision."""
    from lbgat.train.setup import sgd_kernel

    torch.manual_seed(0)
    network = TinyNet()
    gradients = [[torch.randn_like(parameter) for parameter in network.parameters()] for _ in range(4)]
    after = {}
    for kernel in ("auto", "for-loop", "foreach", "fused"):
        copy_ = TinyNet()
        copy_.load_state_dict(network.state_dict())
        optimizer = torch.optim.SGD(copy_.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov,
                                    **sgd_kernel(kernel))
        for step in gradients:
            for parameter, gradient in zip(copy_.parameters(), step, strict=True):
                parameter.grad = gradient.clone()
            optimizer.step()
        after[kernel] = [parameter.detach().clone() for parameter in copy_.parameters()]
    for kernel in ("for-loop", "foreach", "fused"):
        pairs = list(zip(after["auto"], after[kernel], strict=True))
        if kernel == "fused":
            assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in pairs)
        else:
            assert all(torch.equal(a, b) for a, b in pairs), kernel


def test_the_run_compiles_in_its_mode_steps_with_its_sgd_kernel_and_keeps_freed_memory(tmp_path, monkeypatch) -> None:
    """--compile-mode compiles the networks and the attack's step in that mode, and each training step
    begins with the mark CUDA graphs need; --sgd-kernel builds the optimiser with it; on CPU the run keeps
    the memory a step frees (lbgat.runtime.host_memory). (Compilation stood in for: nothing is compiled.)"""
    import importlib

    from lbgat.config import build_config
    from lbgat.train import train
    from lbgat.train import trainer as trainer_module

    pgd_module = importlib.import_module("lbgat.attacks.pgd")  # the package's `pgd` is the function
    compiled_with: list[dict] = []
    attack_modes: list[str] = []
    step_marks: list[str] = []
    optimizers: list[torch.optim.Optimizer] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: compiled_with.append(kwargs))
    monkeypatch.setattr(pgd_module, "compiled_linf_update",
                        lambda mode="default": attack_modes.append(mode) or pgd_module._linf_update)
    monkeypatch.setattr(trainer_module, "step_begins", step_marks.append)
    kept: list[bool] = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: kept.append(True))
    step = torch.optim.SGD.step

    def recorded_step(self, *args, **kwargs):
        optimizers.append(self)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recorded_step)
    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 8, "compile": True,
                                 "compile_mode": "reduce-overhead", "out": str(tmp_path / "run"),
                                 "schedule.epochs": 1},
                          ["data.train_size=16", "data.val_size=0", "attack.steps=2", "optim.kernel=fused"])
    monkeypatch.setattr("lbgat.train.setup.check_compile_toolchain", lambda device: None)
    train(config, progress=False)
    assert compiled_with == [{"mode": "reduce-overhead"}]  # the student (pgd-at has no teacher)
    assert attack_modes == ["reduce-overhead"] * 2 and step_marks == ["reduce-overhead"] * 2
    assert len(optimizers) == 2 and all(optimizer.defaults["fused"] for optimizer in optimizers)
    assert kept == [True]


def test_keeping_freed_memory_takes_where_the_c_library_is_glibc() -> None:
    import ctypes
    import sys

    from lbgat.runtime.host_memory import keep_freed_memory

    glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert keep_freed_memory() is glibc


def test_an_sgd_kernel_torch_lacks_is_one_line(tmp_path, monkeypatch) -> None:
    """A torch (or device) without the fused kernel refuses it in torch's words; lbgat says so in one line."""
    from lbgat.config import build_config
    from lbgat.errors import ConfigError
    from lbgat.train.setup import build_parts, load_data, resolve

    sgd_init = torch.optim.SGD.__init__

    def without_fused(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               "devices")
        sgd_init(self, params, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "__init__", without_fused)
    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 8,
                                 "out": str(tmp_path / "run")}, ["data.train_size=16", "data.val_size=0",
                                                                  "optim.kernel=fused"])
    dataset = load_data(config)
    with pytest.raises(ConfigError, match=r"^--sgd-kernel fused is not available with torch .* on cpu: `fused=True`"):
        build_parts(resolve(config, dataset.image_shape), dataset)
