"""kill -9 of the runner leaves no process behind: its pool workers die with it
(kl_utils.core.parent_watch: PR_SET_PDEATHSIG on Linux, and a watchdog thread polling the parent)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")

# The runner's own pool (kl_utils.protocol.run.worker_pool), with a trivial task in each worker.
POOL = """
import time
from kl_utils.protocol import run
pool = run.worker_pool(2)
for f in [pool.submit(time.sleep, 0.5) for _ in range(2)]:
    f.result()
print("ready", flush=True)
time.sleep(600)
"""
# One mechanism alone, in a forked child: the kernel's parent-death signal, or the watchdog thread.
ALONE = """
import multiprocessing, os, time
from kl_utils.core import parent_watch
def child(parent):
    if {mode!r} == "prctl":
        assert parent_watch._set_parent_death_signal()
    else:
        parent_watch._set_parent_death_signal = lambda: False
        parent_watch.die_with_parent(parent, poll_s=0.1)
    time.sleep(600)
p = multiprocessing.get_context("fork").Process(target=child, args=(os.getpid(),))
p.start()
time.sleep(1.0)
print("ready", flush=True)
time.sleep(600)
"""


def _stat(pid: int):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])  # state, parent pid


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and (_stat(int(p.name)) or ("", 0))[1] == pid]


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie has ended (its new parent reaps it)


@pytest.mark.parametrize("script,n", [(POOL, 2), (ALONE.format(mode="prctl"), 1), (ALONE.format(mode="watchdog"), 1)],
                         ids=["runner_pool", "prctl_alone", "watchdog_alone"])
def test_kill_9_of_the_parent_ends_its_workers(script, n):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    kids = []
    try:
        assert parent.stdout.readline().strip() == "ready"
        kids = _children(parent.pid)  # the workers (and, for the pool, multiprocessing's resource tracker)
        assert len(kids) >= n and all(_alive(k) for k in kids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "processes outlived their killed parent"
    finally:
        for pid in [parent.pid, *kids]:  # nothing outlives the test, even when it fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
