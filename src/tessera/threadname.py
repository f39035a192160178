"""OS-level names for Tessera's own threads.

Python before 3.14 gives a thread's name to Python only; the OS (`top -H`, `ps -L`,
`/proc/<pid>/task/<tid>/comm`, py-spy, perf) sees every thread as "python". Naming the
committer and the jobs thread lets an operator, and `bench/`, tell their CPU apart from the
event loop's.
"""

from __future__ import annotations

import ctypes
import sys

_PR_SET_NAME = 15  # linux/prctl.h: names the calling thread, at most 15 bytes
_libc: ctypes.CDLL | None = None


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the OS (cut to 15 bytes); a no-op off Linux, and
    where the C library cannot be reached: a name must never stop the thread it names."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except Exception:  # noqa: BLE001, S110 - cosmetic: the thread runs unnamed
        pass
