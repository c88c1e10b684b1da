"""A speed setting for stage processes: glibc keeps freed memory for reuse.

By default glibc serves every block of 128 KB or more with a fresh mmap, unmapped again on
free, and trims the heap whenever 128 KB lie free at its top. A stage allocates its batches'
buffers over and over, so every page was faulted in anew: 2M page faults and 9 s of system
time in strip_html's main process at Kaggle size. Blocks under 32 MB now come from the heap,
and up to 1 GB may lie free there: 7x fewer faults, about 8% less CPU for the stage, the same
peak RSS (bench/results/README.md). It changes no output: only where memory comes from.
Test: tests/core/test_memory.py counts page faults with and without it.
"""
from __future__ import annotations

import ctypes


def keep_freed_memory() -> bool:
    """Returns whether both settings took; where the C library is not glibc nothing changes.
    Forked workers inherit them."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3        # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) & bool(mallopt(m_trim_threshold, 1 << 30))
