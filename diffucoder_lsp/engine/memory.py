"""Handing freed memory back to the system between requests.

A fill allocates and frees tens of megabytes per pass (a 1k-token context pass of the bundled model: a 38 MB
lookahead buffer, 48 MB of keys/values, the layers' activations). glibc's allocator keeps what was freed in its
heap for reuse, and after a large block is freed it raises its own threshold for serving big blocks with
``mmap``, so most later allocations come from that heap too. A long-running server's resident memory then
holds every request's high-water mark of freed-but-kept memory on top of what it actually uses: measured
in-process over 16 fills of ~1k-token contexts with the bundled model (2-core CPU), 1051 MB resident between
requests and a 1094 MB peak; returning free heap pages after each request (``malloc_trim``), 830 MB between
requests and a 1015 MB peak, at the same fill times (the next pass faults the pages back in: tens of
milliseconds against seconds).

Only glibc has ``malloc_trim``; elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Give the allocator's free heap pages back to the system; True if that was possible here."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
