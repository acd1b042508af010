"""Run a supervisor or launcher in the foreground until SIGINT/SIGTERM; its exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from alto_bus.deploy import topology as topo_mod


def run_until_signal(runner: Any, failures: tuple[type[BaseException], ...], out: IO[str] = sys.stdout,
                     wake: Callable[[], None] | None = None) -> int:
    """Start ``runner`` and supervise it until SIGINT/SIGTERM or its own end; the exit code.

    ``runner`` has ``start()``, ``supervise(stop_flag) -> int`` and ``stop()`` (a
    :class:`~alto_bus.deploy.supervisor.Supervisor`, a cluster launcher). A topology error
    exits 2, one of ``failures`` 1, with the message on stderr; ``runner`` is stopped in
    every case. ``wake()`` is called from the signal handler for a runner that sleeps in a wait.
    """
    stop_flag = [False]

    def on_signal(signum: int, frame: Any) -> None:
        stop_flag[0] = True
        if wake is not None:
            wake()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        runner.start()
        code = runner.supervise(stop_flag)
        print("stopping", file=out, flush=True)
        return code
    except topo_mod.TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except failures as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        runner.stop()
