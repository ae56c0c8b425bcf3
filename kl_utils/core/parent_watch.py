"""Worker processes that die with their parent.

A ProcessPoolExecutor worker whose parent is killed (kill -9, OOM killer) is not told: it keeps
running its task, writes its record, then waits forever on the pool's queue. `die_with_parent`,
run as the pool's initializer, ends the worker as soon as the parent is gone: on Linux the kernel
sends it SIGKILL (prctl PR_SET_PDEATHSIG); everywhere, a daemon thread polls the parent pid as a
fallback (and covers the kernel's rule that the signal follows the parent *thread* that started
the worker). Checkpoints and records are written atomically, so a killed worker leaves nothing
half-written; rerunning resumes from the last checkpoint.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)  # the parent is gone (this process was re-parented): no cleanup, nothing to report to


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Pool initializer (initargs=(os.getpid(),) in the parent): end this process when the
    process `parent_pid` ends."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, poll_s), name="die-with-parent", daemon=True).start()
