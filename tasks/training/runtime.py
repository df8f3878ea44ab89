"""Process settings for training on CPUs: threads per rank, and glibc keeping freed memory."""

from __future__ import annotations

import os


def threads_per_rank() -> int:
    """Cores / local ranks: oversubscribed threads make DDP on CPU several times slower.

    `FRESHET_THREADS_PER_RANK=auto` (set in containers, where the launcher cannot see the cores)
    divides the cores this process may use among the ranks on this node.
    """
    requested = os.environ.get("FRESHET_THREADS_PER_RANK") or os.environ.get("OMP_NUM_THREADS")
    if requested and requested != "auto":
        return max(1, int(requested))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of returning large blocks to the OS.

    By default a block over the mmap threshold (128 KB, rising to at most 32 MB) is unmapped when
    freed, so the next allocation page-faults its way back: the 47 MB word-embedding gradient that
    every MiniLM step allocates took 19 ms to zero that way and 5 ms from reused memory (GPU
    allocators cache for the same reason). Process-wide and idempotent; False where the C library
    is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


