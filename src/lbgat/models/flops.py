"""FLOPs of a model's convolutions and linear layers, measured by running it once."""

from __future__ import annotations

import math

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """2 × multiply-accumulates of the conv and linear layers for ONE ``input_shape`` (C, H, W) image.

    Runs one forward with forward hooks, so only layers actually used count (e.g. not
    the WideResNet's dead ``sub_block1``). Biases, BN, activations and pooling are not
    counted. Works on any device, including ``meta`` (no compute there). The model is
    run in eval mode and every submodule's mode is restored afterwards.
    """
    multiply_accumulates = 0

    def count_conv(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal multiply_accumulates
        assert isinstance(module, _CONVS)
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        multiply_accumulates += output[0].numel() * per_output

    def count_linear(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal multiply_accumulates
        assert isinstance(module, nn.Linear)
        multiply_accumulates += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, _CONVS):
            handles.append(module.register_forward_hook(count_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(count_linear))
    modes = {module: module.training for module in model.modules()}
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return 2 * multiply_accumulates
