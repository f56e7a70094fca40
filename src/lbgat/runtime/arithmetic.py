"""What "float32" means in a run, and whether its kernels are deterministic (issue 13 items 3 and 4).

TF32: on NVIDIA GPUs from Ampere on, cuDNN convolutions and cuBLAS matmuls may compute "float32"
with a 10-bit mantissa (TF32). PyTorch lets convolutions do so by default and keeps matmuls in IEEE
fp32 (torch 2.13: ``torch.backends.cudnn.conv.fp32_precision == "tf32"``; older releases:
``cudnn.allow_tf32`` on, ``cuda.matmul.allow_tf32`` off). lbgat's default (``default``) leaves those
backend flags exactly as it finds them, so a run computes what any PyTorch program (the official
LBGAT, TRADES and AWP code included) computes on the same GPU. ``ieee`` (``--ieee-fp32``) sets IEEE fp32
for both, for bit-for-bit work; ``tf32`` (``--tf32``) sets TF32 for both; either puts back what was
there when done. They are set with the per-backend ``fp32_precision`` API (the legacy ``allow_tf32``
flags are neither read nor written: torch refuses to read them once the two APIs are mixed; torch <
2.9, which has only those flags, gets them instead). On CPU there is no TF32, and the three compute
the same.

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


# The float32 settings (the ``float32`` setting of lbgat train, and lbgat eval): torch's flags as they are, or set.
FLOAT32_MODES: tuple[str, ...] = ("default", "ieee", "tf32")
# The flags that choose them (one at most; without either, "default").
FLOAT32_SWITCHES: dict[str, tuple[str, str]] = {
    "--ieee-fp32": ("ieee", "IEEE fp32 convolutions and matmuls on the GPU, for bit-for-bit work (default: "
                            "PyTorch's own, TF32 convolutions and IEEE matmuls on Ampere+ GPUs)"),
    "--tf32": ("tf32", "TF32 convolutions and matmuls on Ampere+ GPUs (faster matmuls, 10-bit mantissa)"),
}
# What torch sets when nothing has changed it (convolutions, matmuls), in every release lbgat supports.
TORCH_DEFAULT = ("tf32", "ieee")


def _fp32_precisions() -> tuple[str, str]:
    """(convolutions, matmuls) on CUDA: "tf32" or "ieee" ("none", all the way up the new API's hierarchy of
    backends, is IEEE: what torch computes for a matmul nobody set)."""
    if _has_fp32_precision_api():
        conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
        return (conv if conv != "none" else "ieee"), (matmul if matmul != "none" else "ieee")
    return ("tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
            "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


def _set_fp32_precisions(conv: str, matmul: str) -> None:
    if _has_fp32_precision_api():
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv == "tf32", matmul == "tf32"


def _raw_fp32_precisions() -> tuple[str, str]:
    """The flags as torch holds them, to be put back as they were ("none" included)."""
    if _has_fp32_precision_api():
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return _fp32_precisions()


def check_float32(mode: str) -> None:
    if mode not in FLOAT32_MODES:
        raise ConfigError(f"float32 must be one of {', '.join(FLOAT32_MODES)}, got {mode!r}")


@contextmanager
def float32_mode(mode: str) -> Iterator[None]:
    """Within the block, fp32 convolutions and matmuls on CUDA as ``mode`` says: torch's flags untouched
    ("default"), or all IEEE fp32 ("ieee") or all TF32 ("tf32"), then put back."""
    check_float32(mode)
    if mode == "default":
        yield
        return
    saved = _raw_fp32_precisions()
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


def describe_arithmetic(precision: str, device: torch.device, *, float32: str, deterministic: bool) -> dict[str, Any]:
    """What the current settings compute, for provenance.json and reports: read back from torch, not
    from the request, so it says what ran (``float32``: the setting asked for, recorded beside it)."""
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
        tf32 = _tf32_text(float32, conv, matmul, torch.cuda.get_device_capability(device) >= (8, 0))
    workspace = os.environ.get(CUBLAS_WORKSPACE) if device.type == "cuda" else None
    return {
        "dtype": dtype, "float32": float32, "tf32": tf32, "conv": conv, "matmul": matmul,
        "deterministic": ("yes: deterministic algorithms, cuDNN deterministic, no cuDNN benchmark"
                          + (f", {CUBLAS_WORKSPACE}={workspace}" if workspace else "")) if deterministic
        else "no (GPU kernels may differ in the last bits from run to run)" if device.type == "cuda"
        else "no (not needed on CPU for lbgat's bit-exact resume, which is tested without it)",
    }


def _tf32_text(float32: str, conv: str, matmul: str, capable: bool) -> str:
    """What the (read back) CUDA flags mean, and whose they are: torch's default, or the setting's."""
    words = {"tf32": "TF32", "ieee": "IEEE fp32"}
    conv_word, matmul_word = words.get(conv, conv), words.get(matmul, matmul)
    what = (f"{conv_word} convolutions and matmuls" if conv == matmul
            else f"{conv_word} convolutions, {matmul_word} matmuls")
    if float32 != "default":
        whose = "IEEE fp32 asked for (--ieee-fp32)" if float32 == "ieee" else "TF32 asked for (--tf32)"
    elif (conv, matmul) == TORCH_DEFAULT:
        whose = "torch's default"
    else:
        whose = "torch's flags as this process had set them (lbgat's default leaves them as they are)"
    if not capable and "tf32" in (conv, matmul):
        what += " (but this GPU, before Ampere, has no TF32: IEEE fp32)"
    return f"{whose}: {what}"
