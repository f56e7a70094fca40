"""What the official steps run under: the official code imported from a checkout, on CPU, with lbgat's
start draw in place of its own, and every tensor of the step recorded.

Nothing here changes what the official functions compute; each patch is a substitution the README lists
(``.cuda()`` as a no-op, the random draw, modules the step never calls replaced by empty stand-ins).
"""

from __future__ import annotations

import ast
import contextlib
import subprocess
import sys
import tarfile
import tempfile
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


def checkout(source: Path, commit: str | None) -> tuple[Path, str]:
    """A plain tree of ``source`` (a git repository, bare or not) at ``commit`` (default HEAD) in a new
    temporary folder, and the full commit id."""
    full = subprocess.run(["git", "-C", str(source), "rev-parse", commit or "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix="official-"))
    archive = subprocess.run(["git", "-C", str(source), "archive", "--format=tar", full], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target, full


def stub_modules(*names: str, **attributes: dict[str, Any]) -> None:
    """Empty stand-ins for modules the official files import but the step never calls (datasets,
    progress bars, loggers, other attacks), so importing them needs no extra packages."""
    for name in (*names, *attributes):
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:depth]), types.ModuleType(".".join(parts[:depth])))
        module = sys.modules[name]
        for attribute, value in attributes.get(name, {}).items():
            setattr(module, attribute, value)


def functions_from_file(path: Path, names: tuple[str, ...], namespace: dict[str, Any]) -> dict[str, Any]:
    """The named top-level functions of an official script whose module level cannot run here (it parses
    the command line and downloads data): only their definitions are compiled, in ``namespace``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {node.name for node in wanted}
    if missing:
        raise LookupError(f"{path} defines no {sorted(missing)}")
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {name: namespace[name] for name in names}


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """``tensor.cuda()`` and ``module.cuda()`` leave things where they are (the official code calls them)."""
    saved = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved  # type: ignore[method-assign]


class StartDraw:
    """The official attack's one random draw replaced by lbgat's (the same tensor for the same batch).

    ``normal``: ``torch.randn(shape)`` / ``torch.randn_like(x)`` return lbgat's standard normal n.
    ``uniform``: ``tensor.uniform_(low, high)`` fills the tensor with low + (high - low) * u from lbgat's
    unit draw u, computed as lbgat computes its start: ``(u * 2 - 1) * eps`` for (-eps, eps) and
    ``u * 2 - 1`` for (-1, 1) (advertorch multiplies by eps after).
    """

    # A timing (benchmarks/train_step.py) sets this: each draw also makes the official code's own draw of the
    # same shape, and throws it away, so that the official step pays for the draw it would have made.
    charge = False

    def __init__(self, kind: str, draw: torch.Tensor) -> None:
        self.kind, self.draw, self.uses = kind, draw.to(torch.float32), 0

    def _take(self, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(shape) != tuple(self.draw.shape):
            raise AssertionError(f"official draw of shape {tuple(shape)}, lbgat's is {tuple(self.draw.shape)}")
        self.uses += 1
        if self.charge:
            self._own(shape)
        return self.draw.clone()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StartDraw]:
        saved = torch.randn, torch.randn_like, torch.Tensor.uniform_
        draw = self
        self._own = (lambda shape: saved[0](shape)) if self.kind == "normal" else (
            lambda shape: saved[2](torch.empty(shape), -1.0, 1.0))

        def randn(*size: Any, **kwargs: Any) -> torch.Tensor:
            shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
            return draw._take(tuple(shape)).to(kwargs.get("dtype") or torch.float32)

        def randn_like(tensor: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return draw._take(tuple(tensor.shape)).to(tensor.dtype)

        def uniform_(tensor: torch.Tensor, low: float = 0.0, high: float = 1.0, **kwargs: Any) -> torch.Tensor:
            unit = draw._take(tuple(tensor.shape))
            if low == -high:
                scaled = unit * 2.0 - 1.0
                value = scaled if high == 1.0 else scaled * high
            else:
                raise AssertionError(f"uniform_({low}, {high}) is not a symmetric start draw")
            with torch.no_grad():
                return tensor.copy_(value)

        if self.kind == "normal":
            torch.randn, torch.randn_like = randn, randn_like  # type: ignore[assignment]
        else:
            torch.Tensor.uniform_ = uniform_  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            torch.randn, torch.randn_like, torch.Tensor.uniform_ = saved  # type: ignore[method-assign]
        if self.uses != 1:
            raise AssertionError(f"the official code drew its start {self.uses} times, expected once")


class ForwardLog:
    """Every forward of the model (its top-level call): the input, the mode (BatchNorm train or eval)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, bool]] = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.calls.append((args[0].detach().clone(), module.training))

    def describe(self, clean: torch.Tensor, adversarial: torch.Tensor | None) -> list[str]:
        """The forwards in order, as "train:x" / "eval:x_adv" / "train:other" (what BatchNorm saw)."""
        names = []
        for inputs, training in self.calls:
            if inputs.shape == clean.shape and torch.equal(inputs, clean):
                what = "x"
            elif adversarial is not None and torch.equal(inputs, adversarial):
                what = "x_adv"
            else:
                what = "other"
            names.append(f"{'train' if training else 'eval'}:{what}")
        return names


@contextlib.contextmanager
def batchnorm_untouched_on_calls(model: nn.Module, calls: set[int]) -> Iterator[None]:
    """The model's buffers (BatchNorm running statistics, batch counts) as they were before its forward
    number n, for n in ``calls`` (counting from 1 inside the block): a forward outside the method whose
    only lasting effect is on those statistics is kept from having it. Outputs are unchanged (train-mode
    BatchNorm normalises with the batch's own statistics)."""
    count = {"n": 0}
    saved: dict[str, torch.Tensor] = {}

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        count["n"] += 1
        if count["n"] in calls:
            saved.update({key: value.clone() for key, value in module.state_dict().items()
                          if key in dict(module.named_buffers())})

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if count["n"] in calls:
            buffers = dict(module.named_buffers())
            with torch.no_grad():
                for key, value in saved.items():
                    buffers[key].copy_(value)
            saved.clear()

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class BackwardLog:
    """Every ``tensor.backward()`` of the block, by the tensor (a detached copy): the official loss is the
    last one before the optimiser's step."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[BackwardLog]:
        original = torch.Tensor.backward
        log = self

        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            log.tensors.append(tensor.detach().clone())
            original(tensor, *args, **kwargs)

        torch.Tensor.backward = backward  # type: ignore[method-assign]
        try:
            yield self
        finally:
            torch.Tensor.backward = original  # type: ignore[method-assign]


class RecordingSGD(torch.optim.SGD):
    """torch.optim.SGD that keeps, at its (single) step, each parameter's gradient by name and the last
    loss a ``BackwardLog`` saw."""

    def __init__(self, model: nn.Module, backward_log: BackwardLog | None = None, **settings: Any) -> None:
        super().__init__(model.parameters(), **settings)
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.backward_log = backward_log
        self.gradients: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.steps = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        self.steps += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.gradients[self.names[id(p)]] = p.grad.detach().clone()
        if self.backward_log is not None and self.backward_log.tensors:
            self.loss = self.backward_log.tensors[-1]
        return super().step(closure)


class Recorder:
    """Named values returned by official functions during the step (the loss terms, x_adv), and every
    ``backward()`` of the step (``backward``: the official loss is the last one)."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.backward = BackwardLog()

    def wrap(self, name: str, function: Callable[..., Any],
             pick: Callable[[Any], torch.Tensor] = lambda value: value) -> Callable[..., Any]:
        """``function`` keeping ``pick`` of each result (the result itself by default) under ``name``."""
        def recorded(*args: Any, **kwargs: Any) -> Any:
            value = function(*args, **kwargs)
            self.values.setdefault(name, []).append(pick(value).detach().clone())
            return value

        return recorded

    def last(self, name: str) -> torch.Tensor:
        return self.values[name][-1]


def recorded(recorder: Recorder | None, name: str, function: Callable[..., Any],
             pick: Callable[[Any], torch.Tensor] = lambda value: value) -> Callable[..., Any]:
    """``function`` recorded under ``name``, or as it is where nothing is recorded (a timed step)."""
    return function if recorder is None else recorder.wrap(name, function, pick)


def module_with(module: types.ModuleType, recorder: Recorder | None, *names: str) -> types.ModuleType:
    """A stand-in for ``module`` (an official file's ``F``, ``torch`` or ``tc``) that is the module in
    everything but the named functions, whose results ``recorder`` keeps (the loss terms); the module
    itself where nothing is recorded."""
    if recorder is None:
        return module
    proxy = types.ModuleType(module.__name__)
    proxy.__dict__["__getattr__"] = lambda name: getattr(module, name)  # PEP 562: the rest is the module's
    for name in names:
        setattr(proxy, name, recorder.wrap(name, getattr(module, name)))
    return proxy


@dataclass
class OfficialStep:
    """One official training step set up on its objects, for a recorded run (official_steps.py,
    lbgat_trades_steps.py) or a timed one (benchmarks/train_step.py).

    ``run()`` takes the step from the trained networks' state as it is, as the official code takes it (under
    ``on_cpu`` and the start draw), and returns what a record needs of it that no recorder keeps (the
    attack's output where no official function returns it, the loss). Another first step from the same
    state: load the state back into ``trained`` and clear each optimiser's state (momentum)."""

    trained: dict[str, nn.Module]
    optimizers: list[torch.optim.Optimizer]
    run: Callable[[], dict[str, torch.Tensor]]
    inputs: torch.Tensor  # the clean batch
    notes: list[str] = field(default_factory=list)


def on_path(*folders: Path) -> None:
    for folder in reversed(folders):
        sys.path.insert(0, str(folder))
