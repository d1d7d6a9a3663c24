"""`ichdet.engine.memory.keep_freed_memory`: glibc's malloc keeps what a training step frees, so
the next step reuses it instead of faulting in fresh pages (measured in a fresh interpreter)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import json, resource, sys
import torch
from ichdet.engine.memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tune" else False
x = torch.ones(64 << 20, dtype=torch.uint8)  # one 64 MB block, more than glibc's largest heap threshold
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # what a training step does: allocate, write, free
    y = torch.ones(64 << 20, dtype=torch.uint8)
    del y
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(mode: str, **env: str) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    system, tuned = _run("system"), _run("tune")
    pages = (64 << 20) // 4096
    assert not system["tuned"] and system["faults"] >= 5 * pages * 0.9  # every block mapped and zeroed afresh
    # at most the first block is new, the rest reuse it (+ 256 pages of slack: the interpreter's own
    # allocations between the two readings; one CI run counted 16385 for 16384)
    assert tuned["tuned"] and tuned["faults"] <= pages + 256
    assert not _run("tune", ICHDET_SYSTEM_MALLOC="1")["tuned"]  # the opt-out
