"""How ``--compile`` compiles: torch.compile's mode, and what a training step does under CUDA graphs.

The mode is torch.compile's own (``--compile-mode``):

- ``default``: what ``--compile`` did before there was a choice; the only one CPU runs need.
- ``reduce-overhead``: CUDA graphs. Each compiled graph (the networks' forwards and backwards, the
  attack's fused step) is recorded once per input shape and then replayed, which removes the launch
  overhead of the many small kernels of a 10-step attack. The attack's loop has fixed shapes (a last,
  smaller batch records its own graphs once). There are no CUDA graphs on CPU: torch compiles as for
  ``default`` there.
- ``max-autotune``: CUDA graphs, and kernel choices benchmarked while compiling (a much longer first
  step); ``max-autotune-no-cudagraphs`` without the graphs.

A CUDA graph writes its outputs into the same memory at every replay. The training loop therefore marks
where each step begins (:func:`step_begins`): no tensor of one step is read after the next has begun
(the loss terms summed for the log are new tensors of each step's own).
"""

from __future__ import annotations

from typing import Any

import torch

COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


def compile_options(mode: str) -> dict[str, Any]:
    """torch.compile's keyword arguments for ``mode`` (none for ``default``: the compiled code of before)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return {} if mode == "default" else {"mode": mode}


def step_begins(mode: str) -> None:
    """Before each training step: under CUDA graphs, a new step's replays may reuse the last one's memory.
    (A torch without the marker guesses where steps begin by itself.)"""
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if mode in CUDA_GRAPH_MODES and mark is not None:
        mark()
