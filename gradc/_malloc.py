"""Keep freed kernel temporaries in the process heap (glibc only).

Contract
--------
Generated kernels allocate their intermediate arrays on every call (numba's allocator is
``malloc``).  With glibc's default, large freed blocks go back to the system and the next
call page-faults them in again (about 4 us per page here: more than a whole gradient of
a small MLP).  :func:`tune` raises glibc's mmap and trim thresholds once, at import of
gradc, so those blocks stay in the heap and are reused.  It is a process-wide setting of
the C allocator: set ``GRADC_MALLOC_TUNING=0`` before importing gradc to leave it alone.
It does nothing on other C libraries.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_DONE = False


def tune() -> bool:
    """Apply the setting (once); returns whether glibc accepted it."""
    global _DONE
    if _DONE or os.environ.get("GRADC_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    _DONE = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
    ok &= mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024)
    return bool(ok)
