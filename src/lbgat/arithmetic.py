"""What "float32" means in a run, and whether its kernels are deterministic (issue 13 items 3 and 4).

TF32: on NVIDIA GPUs from Ampere on, cuDNN convolutions and cuBLAS matmuls may compute "float32"
with a 10-bit mantissa (TF32). torch 2.13 lets convolutions do so by default
(``torch.backends.cudnn.conv.fp32_precision == "tf32"``) and keeps matmuls in IEEE fp32. lbgat sets
both explicitly, with the per-backend ``fp32_precision`` API (the legacy ``allow_tf32`` flags are
neither read nor written: torch refuses to read them once the two APIs are mixed): IEEE unless TF32
is asked for (``--tf32``), and puts back what was there when done.

Deterministic: ``--deterministic`` makes PyTorch use deterministic algorithms only (an error for an
op without one), cuDNN deterministic and not benchmarking, and cuBLAS a fixed workspace
(``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS reads when CUDA first creates its handle, so it
must be in the environment before that).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .errors import ConfigError

CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")  # the two settings NVIDIA documents as deterministic


def _fp32_backends() -> list[Any]:
    return [torch.backends.cudnn.conv, torch.backends.cuda.matmul]


@contextmanager
def float32_mode(tf32: bool) -> Iterator[None]:
    """Within the block, fp32 convolutions and matmuls on CUDA are TF32 when ``tf32``, else IEEE fp32."""
    backends = _fp32_backends()
    saved = [backend.fp32_precision for backend in backends]
    for backend in backends:
        backend.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, saved, strict=True):
            backend.fp32_precision = value


def check_cublas_workspace() -> None:
    """Put ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` into the environment, or say why it cannot be."""
    value = os.environ.get(CUBLAS_WORKSPACE)
    if value in DETERMINISTIC_WORKSPACES:
        return
    if value is not None:
        raise ConfigError(f"--deterministic needs {CUBLAS_WORKSPACE}=:4096:8 (or :16:8), but it is {value!r}; "
                          "unset it or set it to :4096:8")
    if torch.cuda.is_initialized():
        raise ConfigError(f"--deterministic needs {CUBLAS_WORKSPACE}=:4096:8 before CUDA starts, and CUDA is already "
                          f"running in this process: start it with `export {CUBLAS_WORKSPACE}=:4096:8`")
    os.environ[CUBLAS_WORKSPACE] = DETERMINISTIC_WORKSPACES[0]


@contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Within the block (when ``enabled``), deterministic kernels only; the previous settings afterwards."""
    if not enabled:
        yield
        return
    if device.type == "cuda":
        check_cublas_workspace()
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def describe_arithmetic(precision: str, device: torch.device, *, deterministic: bool) -> dict[str, Any]:
    """What the current settings compute, for provenance.json and reports: read back from torch, not
    from the request, so it says what ran."""
    dtype = "float32" if precision == "fp32" else f"{precision} autocast (fp32 where autocast keeps it)"
    if device.type != "cuda":
        tf32 = f"n/a on {device.type.upper()} (TF32 exists only on NVIDIA GPUs)"
        # oneDNN's own setting ("none": its default, IEEE fp32).
        conv, matmul = (value if value != "none" else "ieee" for value in (
            torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision))
    else:
        conv = torch.backends.cudnn.conv.fp32_precision
        matmul = torch.backends.cuda.matmul.fp32_precision
        capable = torch.cuda.get_device_capability(device) >= (8, 0)
        if "tf32" not in (conv, matmul):
            tf32 = "off: IEEE fp32 convolutions and matmuls"
        elif capable:
            tf32 = "on: fp32 convolutions and matmuls may use TF32 (10-bit mantissa)"
        else:
            tf32 = "allowed, but this GPU has no TF32 (before Ampere): IEEE fp32"
    workspace = os.environ.get(CUBLAS_WORKSPACE) if device.type == "cuda" else None
    return {
        "dtype": dtype, "tf32": tf32, "conv": conv, "matmul": matmul,
        "deterministic": ("yes: deterministic algorithms, cuDNN deterministic, no cuDNN benchmark"
                          + (f", {CUBLAS_WORKSPACE}={workspace}" if workspace else "")) if deterministic
        else "no (GPU kernels may differ in the last bits from run to run)" if device.type == "cuda"
        else "no (not needed on CPU for lbgat's bit-exact resume, which is tested without it)",
    }
