"""Process memory settings for CPU training: freed tensor memory is reused, not returned."""

from __future__ import annotations

import ctypes
import functools
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache  # once a process: training and every predict() call it
def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse instead of unmapping them (True where it took).

    glibc serves each allocation above 32 MB with its own mmap and unmaps it on free, so a
    training step at batch 256 (activations of ~150 MB each) paid for fresh zeroed pages
    on every tensor, every step: ~20% of the step on this project's 2-core machines. With
    mmap off and trimming off, the heap keeps its peak size and the pages are reused.
    The process then holds its peak memory until it ends. A no-op off glibc (macOS,
    Windows, musl), where it returns False.
    """
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc, no library search
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
