"""The front door's process: bind HOST:PORT, serve the app with uvicorn, say where once listening.

``alto http --gateway G --control C --listen HOST:PORT`` runs it on its own;
``alto launch FILE --http HOST:PORT`` (or an ``[http]`` table) runs it under the
launcher's supervisor, which reads the ``--announce`` line and prints ``http http://...``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from alto_bus.deploy.http_config import parse_listen
from alto_bus.service.http_app import FrontDoor, create_app

log = logging.getLogger("alto.http")


class _Server(uvicorn.Server):
    """uvicorn that calls ``on_ready`` once it accepts connections (not merely bound)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready
        self.failure: str | None = None  # why the front door cannot serve any more

    def fail(self, why: str) -> None:
        """The gateway client died (any thread): stop serving; the process exits 1, so its
        supervisor sees it, rather than answering every request with the same error."""
        log.critical("http: %s; stopping", why)
        self.failure = why
        self.should_exit = True  # uvicorn's main loop checks it every 0.1 s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            # What was loaded to start (Starlette, prometheus_client, OpenTelemetry...) lives
            # as long as the process: out of the collector's way, its full passes stay short.
            gc.freeze()
            self.on_ready()


def bind(listen: str) -> tuple[socket.socket, str]:
    """A listening socket on ``listen`` (port 0: a free one) and the URL it is reached at."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    return sock, f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound_port}"


def serve(gateway: str, control: str | None, listen: str, *, timeout: float = 30.0, curve: Any = None,
          announce: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; the exit code: 1 when ``listen`` cannot be bound or the
    gateway client's I/O thread dies, 3 when the app cannot start (a bad gateway address)."""
    try:
        sock, url = bind(listen)
    except (OSError, ValueError) as exc:
        print(f"error: http: cannot listen on {listen}: {exc}", file=sys.stderr, flush=True)
        return 1

    def ready() -> None:
        print(json.dumps({"http": url}) if announce else f"http {url}", flush=True)
        if announce:  # nothing else may go to the supervisor's pipe (it is not read again)
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    door = FrontDoor(gateway, control, timeout=timeout, curve=curve)
    app = create_app(door)
    # log_config=None: our logging (stderr); no access log: one line per request is the
    # metrics' job, and it costs a third of the request rate.
    # proxy_headers=False: nothing here reads the caller's address, and the middleware that
    # rewrites it from X-Forwarded-For is one more coroutine per request.
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", proxy_headers=False,
                            timeout_graceful_shutdown=5, server_header=False)
    server = _Server(config, ready)
    door.on_client_failure = server.fail
    server.run(sockets=[sock])  # an app that cannot start ends the process with code 3 (uvicorn)
    return 1 if server.failure else 0
