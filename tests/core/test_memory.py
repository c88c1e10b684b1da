"""keep_freed_memory (stages/core/memory.py): freed batch buffers are reused, not faulted in anew."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

_FAULTS_SCRIPT = """
import random, resource, sys
from stages.core.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
rng = random.Random(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
held = []
for _ in range(300):                 # batch-sized buffers, a few alive at once, as in a stage
    held.append(bytearray(rng.randrange(1 << 18, 24 << 20)))
    if len(held) > 3:
        held.pop(0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in_again():
    """runner.run's malloc settings: freed buffers are reused, not unmapped and faulted in anew."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[2])
        return int(out.stdout)
    default, kept = faults("default"), faults("keep")
    assert kept * 3 < default, (kept, default)
