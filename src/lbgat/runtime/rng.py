"""Randomness that is a pure function of (seed, stream, epoch, example index).

Every random draw in training and evaluation (example order, crops, flips, attack starting
points) comes from here, so what an example sees never depends on the batch it lands in, on
how many processes share the work, or on whether the run was resumed. Draws are produced by
a counter-based hash evaluated on the device: no generator state to save or to keep in sync.

The hash works on 32-bit words held in int64 tensors, and the multiplications are split into
16-bit halves so that no intermediate exceeds 2**63: the results are bit-identical on every
device and backend.
"""

from __future__ import annotations

import enum
import math

import torch

_MASK32 = 0xFFFFFFFF


class Stream(enum.IntEnum):
    """Independent random streams; one per consumer so that draws never correlate."""

    ORDER = 1
    CROP = 2
    FLIP = 3
    TRAIN_ATTACK_START = 4
    EVAL_ATTACK_START = 5
    SPLIT = 6
    L2_START_RADIUS = 7
    CROP_SHIFT = 8  # IDBH: the crop-shift's strength, split and two placements
    COLOUR_SHAPE = 9  # IDBH: which colour-or-shape operation, its strength, sign and axis
    ERASE = 10  # IDBH: random erasing's roll, its ten tries of area and aspect, and the rectangle's place
    EXTRA_DRAW = 20  # which extra image fills each extra-data slot of a batch (lbgat.data.mixed_loader)
    EXTRA_MIX = 21  # where each example of a mixed batch stands in it
    CHECK_RESTARTS = 100  # restart r of the evaluation's sanity checks uses CHECK_RESTARTS + r


def _mul32_(words: torch.Tensor, constant: int, scratch: torch.Tensor) -> None:
    torch.mul(words, constant >> 16, out=scratch)
    scratch.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    words.mul_(constant & 0xFFFF).add_(scratch).bitwise_and_(_MASK32)


def _mix32_(words: torch.Tensor) -> torch.Tensor:
    """In place: the "lowbias32" integer finaliser (C. Wellons), a low-bias bijection on 32-bit words."""
    # In-place with one scratch buffer: these tensors hold one word per pixel, so allocation
    # would otherwise dominate the cost on CPU.
    scratch = torch.empty_like(words)
    for shift, constant in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        torch.bitwise_right_shift(words, shift, out=scratch)
        words.bitwise_xor_(scratch)
        _mul32_(words, constant, scratch)
    torch.bitwise_right_shift(words, 16, out=scratch)
    return words.bitwise_xor_(scratch)


def _absorb(state: torch.Tensor | int, value: torch.Tensor) -> torch.Tensor:
    mixed = (state ^ (value & _MASK32)).add_(0x9E3779B9)
    return _mix32_(mixed.bitwise_and_(_MASK32))


def _mix32(word: int) -> int:
    """``_mix32_`` on one word, in Python integers (exact: the same 32-bit function)."""
    for shift, constant in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        word ^= word >> shift
        word = (word * constant) & _MASK32
    return word ^ (word >> 16)


def _key_words(seed: int, stream: int, epoch: int) -> list[int]:
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch must be non-negative")
    return [seed & _MASK32, (seed >> 32) & _MASK32, int(stream), epoch & _MASK32]


def _key_state(seed: int, stream: int, epoch: int) -> int:
    """The state after absorbing the key words: the same for every element, so computed on the host (a
    few dozen device operations on one word each, otherwise, at every draw)."""
    state = 0
    for word in _key_words(seed, stream, epoch):
        state = _mix32(((state ^ word) + 0x9E3779B9) & _MASK32)
    return state


def hash_words(seed: int, stream: int, epoch: int, index: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """32-bit hash of (seed, stream, epoch, index, counter) in int64; index and counter broadcast."""
    # Absorbing the index first keeps the expensive full-size work to one round per element.
    state = _absorb(_key_state(seed, stream, epoch), index.to(torch.int64))
    return _absorb(state, counter.to(torch.int64))


def seed_for(seed: int, stream: int, epoch: int) -> int:
    """A 63-bit integer seed for CPU generators (used for permutations), from the same key."""
    zero = torch.zeros((), dtype=torch.int64)
    low = hash_words(seed, stream, epoch, zero, zero)
    high = hash_words(seed, stream, epoch, zero + 1, zero)
    return int(((high & 0x7FFFFFFF) << 32) | low)


class ExampleRNG:
    """Draws for a batch of examples, each row a function of (seed, stream, epoch, index) only.

    ``index`` holds the dataset index of every example in the batch (int64, any device); all
    outputs live on that device and have the batch dimension first.
    """

    def __init__(self, seed: int, epoch: int, index: torch.Tensor) -> None:
        self.seed = seed
        self.epoch = epoch
        self.index = index.to(torch.int64)

    def words(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Raw 32-bit words (in int64) of shape (B, *shape): counter j of the stream is element j. A consumer
        that needs several kinds of draw from one stream takes them from its columns (:func:`unit_floats`,
        :func:`integers_below`)."""
        numel = math.prod(shape)
        counter = torch.arange(numel, dtype=torch.int64, device=self.index.device)
        words = hash_words(self.seed, stream, self.epoch, self.index[:, None], counter[None, :])
        return words.reshape(self.index.shape[0], *shape)

    def uniform(self, stream: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Uniform float32 in [0, 1), 24-bit resolution, shape (B, *shape)."""
        return unit_floats(self.words(stream, shape))

    def normal(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float32 of shape (B, *shape), by the Box-Muller transform (in place on its own
        temporaries: the same operations in the same order)."""
        numel = math.prod(shape)
        pairs = self.words(stream, (2, numel))
        # Offset by half a step so that u1 is never 0 (log(0)).
        u1 = (pairs[:, 0] >> 8).to(torch.float32).add_(0.5).mul_(1.0 / (1 << 24))
        u2 = (pairs[:, 1] >> 8).to(torch.float32).mul_(1.0 / (1 << 24))
        radius = u1.log_().mul_(-2.0).sqrt_()
        return radius.mul_(u2.mul_(2.0 * math.pi).cos_()).reshape(self.index.shape[0], *shape)

    def integers(self, stream: int, high: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Integers uniform in [0, high) (int64), shape (B, *shape)."""
        if not 0 < high <= 1 << 16:
            raise ValueError("high must be in 1..65536")
        return integers_below(self.words(stream, shape), high)


def unit_floats(words: torch.Tensor) -> torch.Tensor:
    """Words to float32 in [0, 1) with 24-bit resolution: the multiples of 2**-24, as ``torch.rand`` draws."""
    return (words >> 8).to(torch.float32) * (1.0 / (1 << 24))


def integers_below(words: torch.Tensor, high: torch.Tensor | int) -> torch.Tensor:
    """Words to integers uniform in [0, high) (int64); ``high`` (1..65536) may differ per element (a tensor that
    broadcasts against ``words``)."""
    # Multiply-shift keeps the bias below 2**-16 for the small ranges used here.
    return (words * high) >> 32


def permutation(n: int, seed: int, stream: int, epoch: int) -> torch.Tensor:
    """A permutation of range(n) that depends only on (seed, stream, epoch)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed_for(seed, stream, epoch))
    return torch.randperm(n, generator=generator)
