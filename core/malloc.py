"""glibc malloc settings for the long-lived processes that run attacks and training (Ray workers).

In a Ray worker glibc hands every large tensor buffer (an activation of a batch: megabytes) back to the OS when it is
freed, and the next attack step page-faults it in again: a 64-example PGD-20 job on a width-16 ResNet took 48,000–
74,000 minor page faults and 1.4–1.7x its time in a Ray actor, against 7 faults in the calling process (2026-12-02;
README, "Evaluation engine"). Raising glibc's mmap and trim thresholds keeps freed buffers in the heap for reuse
(70 faults, 1.05x the in-process time). Memory use then stays near the process's peak instead of shrinking
between steps. `ADVSWEEP_MALLOC=default` leaves glibc's settings alone (for comparison).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 64 << 20   # allocations below come from the heap (glibc's dynamic ceiling is 32 MiB)
TRIM_THRESHOLD = 128 << 20  # free memory at the heap's top kept up to this much


def keep_freed_memory() -> bool:
    """Apply the thresholds above to this process; returns whether they are in force (glibc on Linux only)."""
    if not sys.platform.startswith("linux") or os.environ.get("ADVSWEEP_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def minor_faults() -> int:
    """Minor page faults of this process so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
