"""Training keeps the memory it frees, instead of handing it back to the system after every step.

A training step allocates activations of tens to hundreds of MB and frees them again. glibc
serves allocations above 32 MB with mmap and unmaps them on free, so the next step's pages are
faulted in and zeroed afresh by the kernel: about a quarter of all CPU time of `ichdet cv` on 2
cores went to the system (785 of 3273 s, 462 million page faults). With mmap off for malloc and
a high trim threshold, freed blocks stay in the heap and are reused: 14.5 instead of 12.0
slices/s for one training thread of the slice CNN (benchmarks/bench_train.py, AVX2). The cost
is that a training process keeps its peak heap until it exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc mallopt parameters (malloc.h)
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept before any is returned (mallopt takes an int)
TOP_PAD = 512 << 20  # bytes the heap grows by beyond a request, so growth is rare
OPT_OUT = "ICHDET_SYSTEM_MALLOC"  # set to 1 to leave the C library's malloc settings alone


def keep_freed_memory() -> bool:
    """Tune glibc's malloc of this process so freed memory is reused (see the module docstring);
    True when it did, False where the C library is not glibc or `ICHDET_SYSTEM_MALLOC=1`."""
    if os.environ.get(OPT_OUT) == "1" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(p, v) == 1 for p, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                    (M_TOP_PAD, TOP_PAD)))
