"""Child processes that die with their parent (Linux parent-death signal), and take what
they spawned with them (their process group)."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; False where it cannot."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig) == 0
    except OSError:
        return False  # not Linux: stdin EOF and signals still stop a child


def die_with(parent: int, sig: int, own_group: bool = False) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when ``parent`` dies, however it dies; with
    ``own_group``, it leads a process group of its own (``process_group=0`` of Python 3.11)."""
    def preexec() -> None:
        if own_group:
            os.setpgid(0, 0)
        set_parent_death_signal(sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a child's process group. Each instance is started as its
    own group (``die_with(own_group=True)``), and what it spawned stays in it: a vLLM engine
    core and its workers outlive an instance killed while it built its engine, and would
    hold the CPU and the GPU's memory with no one to stop them."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left (or a group no longer ours)


def exited(proc: subprocess.Popen) -> int | None:
    """``proc.poll()``, but what the child left in its process group is killed first, while
    the child is a zombie whose pid still names the group (once reaped, the pid may be
    another process's)."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere
        return proc.poll()
    if info is None:
        return None
    kill_group(proc.pid)
    return proc.poll()


def end(proc: subprocess.Popen, pidfd: int | None, timeout: float) -> int:
    """Wait up to ``timeout`` for a child asked to stop, then SIGKILL it and its process
    group; what it left there is killed before it is reaped. Its exit code."""
    deadline = time.monotonic() + timeout
    while exited(proc) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            kill_group(proc.pid)  # it outlived the grace: the leader and all it spawned
            break
        if pidfd is not None:
            select.select([pidfd], [], [], left)  # readable once it has exited
        else:
            time.sleep(min(left, 0.05))  # no pidfd (an old kernel): poll
    return proc.wait()


def kill_group_members() -> None:
    """SIGKILL the other processes of this process's group, when it leads its own group
    (an instance started by the supervisor): what it spawned dies with it even when no
    supervisor is left to do it (the launcher was SIGKILLed). A process started from a
    shell shares the shell job's group (a ``| tee``) and leaves it alone. For the end of
    a process: it ignores stop signals from here on (a second SIGTERM, as the launcher's
    death can bring, would otherwise end it halfway)."""
    me = os.getpid()
    if os.getpgrp() != me:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                pgrp = int(f.read().rsplit(")", 1)[1].split()[2])
            if pgrp == me:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
