"""CPU training keeps the memory one step frees for the next (glibc's malloc).

A training step frees its activations at its end and takes as much again at the next. Under glibc's
defaults, memory freed at the top of the heap beyond a threshold goes back to the operating system, and
blocks above another threshold are mapped and unmapped one by one: every page taken again is a page fault,
paid in kernel time. How much of a step's memory goes back depends on the order its tensors happen to be
freed in, so two programs doing the same arithmetic can differ: on the 2-core EPYC (wrn-10-1, batch 16, one
thread) the ISEAT step made 7,000 to 19,000 page faults per step, 4-12 % of its CPU time in the kernel,
depending on the process, and none with freed memory kept (docs/performance.md). ``keep_freed_memory``
sets glibc's thresholds (``mallopt``) so that the process keeps what it frees: its resident memory stays at
the step's peak, which it reaches at every step anyway. With another C library it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): the heap's top is never given back
MMAP_BLOCKS_ABOVE = 32 * 2**20  # glibc's largest mmap threshold on 64-bit: blocks up to it from the heap
HEADROOM = 64 * 2**20  # reserved (not touched) each time the heap grows


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory in this process; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process runs on
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_BLOCKS_ABOVE), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, HEADROOM))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
