"""keep_freed_memory: glibc reuses a freed 200 MB block instead of faulting in fresh pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="keep_freed_memory tunes glibc's malloc; this is not glibc")

PROBE = """
import ctypes, resource, sys
from vgkit.engine.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(200_000_000)
    libc.memset(p, 1, 200_000_000)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[1])
"""


def _second_block_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_a_freed_block_is_reused_without_page_faults():
    pages = 200_000_000 // 4096
    assert _second_block_faults("default") > pages // 2  # glibc unmaps it and faults anew
    assert _second_block_faults("keep") < pages // 100  # the same pages, reused
