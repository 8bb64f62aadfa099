"""Process memory: give freed heap back to the OS, and read the resident set size.

glibc's malloc keeps memory freed by Python and numpy in its arenas (one per thread that
allocated) instead of returning it, so a process that once decoded a large image, or served
many uploads in parallel threads, stays at its peak RSS. :func:`release_memory` calls
``malloc_trim(0)``, which returns the free pages of every arena. Elsewhere (musl, macOS) it
does nothing and says so once in the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_malloc_trim: Callable[[int], int] | None = None
_resolved = False


def _trim_function() -> Callable[[int], int] | None:
    global _malloc_trim, _resolved
    with _lock:
        if not _resolved:
            _resolved = True
            name = ctypes.util.find_library("c")
            try:
                libc = ctypes.CDLL(name)
                function = libc.malloc_trim
            except (OSError, AttributeError, TypeError) as exc:
                logger.info("malloc_trim unavailable (%s: %s); freed memory stays with the allocator", name, type(exc).__name__)
            else:
                function.argtypes = [ctypes.c_size_t]
                function.restype = ctypes.c_int
                _malloc_trim = function
        return _malloc_trim


def release_memory() -> bool:
    """Return the allocator's free memory to the OS (glibc ``malloc_trim(0)``).

    True when memory was released. Safe to call from any thread; it takes the allocator's
    locks for a few milliseconds.
    """
    function = _trim_function()
    if function is None:
        return False
    return bool(function(0))


def rss_mb() -> float | None:
    """This process's resident set size in MB (Linux ``/proc``), or None elsewhere."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MB (Linux ``/proc``), or None elsewhere."""
    return _status_mb("VmHWM")


def _status_mb(key: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) / 1024.0
    return None
