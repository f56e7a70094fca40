"""What "float32" means in a run, and whether its kernels are deterministic (issue 13 items 3 and 4).

TF32: on NVIDIA GPUs from Ampere on, cuDNN convolutions and cuBLAS matmuls may compute "float32"
with a 10-bit mantissa (TF32). torch 2.13 lets convolutions do so by default
(``torch.backends.cudnn.conv.fp32_precision == "tf32"``) and keeps matmuls in IEEE fp32. lbgat sets
both explicitly, with the per-backend ``fp32_precision`` API (the legacy ``allow_tf32`` flags are
neither read nor written: torch refuses to read them once the two APIs are mixed; torch < 2.9, which
has only those flags, gets them instead): IEEE unless TF32 is asked for (``--tf32``), and puts back
what was there when done.

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

from ..errors import ConfigError

CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")  # the two settings NVIDIA documents as deterministic


def _has_fp32_precision_api() -> bool:
    """torch >= 2.9 has the per-backend ``fp32_precision``; older releases only the ``allow_tf32`` flags."""
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def _fp32_precisions() -> tuple[str, str]:
    """(convolutions, matmuls) on CUDA: "tf32" or "ieee" (or "none": torch's default, for the new API)."""
    if _has_fp32_precision_api():
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return ("tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
            "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


def _set_fp32_precisions(conv: str, matmul: str) -> None:
    if _has_fp32_precision_api():
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv == "tf32", matmul == "tf32"


@contextmanager
def float32_mode(tf32: bool) -> Iterator[None]:
    """Within the block, fp32 convolutions and matmuls on CUDA are TF32 when ``tf32``, else IEEE fp32."""
    saved = _fp32_precisions()
    mode = "tf32" if tf32 else "ieee"
    _set_fp32_precisions(mode, mode)
    try:
        yield
    finally:
        _set_fp32_precisions(*saved)


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
        mkldnn = torch.backends.mkldnn
        conv, matmul = (value if value != "none" else "ieee" for value in (
            getattr(getattr(mkldnn, "conv", None), "fp32_precision", "none"),
            getattr(getattr(mkldnn, "matmul", None), "fp32_precision", "none")))
    else:
        conv, matmul = _fp32_precisions()
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
