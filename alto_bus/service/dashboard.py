"""The live dashboard of the HTTP front door.

    GET /                 the page (static/dashboard.html; works offline: no CDN, no library)
    GET /dashboard.js     its script, which polls the endpoint below once a second and
    GET /dashboard.css    draws with SVG and canvas
    GET /v1/dashboard     JSON: the graph's layout, the instances, the pools and the
                          window of samples (alto_bus.service.dashboard_series);
                          ?since=T: only the samples after T (the page asks for the new ones)

A sampler on the front door's event loop asks the broker for its status once a
``tick`` (the query itself runs in a thread: it blocks) and adds a point to the
series, so the plots have a history when the page is opened. A failing sample is
logged and the sampler goes on; the front door's requests never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alto_bus.service.dashboard_graph import layout
from alto_bus.service.dashboard_series import DashboardSeries

log = logging.getLogger("alto.http")
TICK = 1.0
STATIC = {  # path -> (file under static/, media type)
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def static_file(name: str) -> bytes:
    """A file of the package's static/ folder (installed as package data)."""
    return resources.files("alto_bus.service").joinpath("static", name).read_bytes()


class Dashboard:
    """The series, its sampler, and the routes that serve them."""

    def __init__(self, status: Any, series: DashboardSeries, tick: float = TICK) -> None:
        self.status = status          # () -> the broker's status or None (blocking)
        self.series = series
        self.tick = tick
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._sample_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                status = await run_in_threadpool(self.status)
                self.series.sample(status, time.monotonic())
            except Exception:  # a sample that fails is one gap in the plots, never the end of them
                log.exception("dashboard sample failed")
            await asyncio.sleep(max(0.05, self.tick - (time.monotonic() - started)))

    def view(self, since: float | None = None) -> dict[str, Any]:
        out = self.series.view(since)
        out["graph"] = layout(out["stages"])
        out["tick"] = self.tick
        return out

    def routes(self, dumps: Any) -> list[Route]:
        pages = {path: (static_file(name), media) for path, (name, media) in STATIC.items()}

        async def page(request: Request) -> Response:
            body, media = pages[request.url.path]
            return Response(body, media_type=media, headers={"cache-control": "no-cache"})

        async def data(request: Request) -> Response:
            raw = request.query_params.get("since")
            try:
                since = None if raw is None else float(raw)
            except ValueError:
                return Response(dumps({"error": {"stage": "http", "message": f"since={raw!r:.40} is not a number "
                                                 "(the t of the last point the page has)"}}),
                                status_code=422, media_type="application/json")
            return Response(dumps(self.view(since)), media_type="application/json",
                            headers={"cache-control": "no-store"})

        return [*(Route(path, page, methods=["GET"]) for path in pages),
                Route("/v1/dashboard", data, methods=["GET"])]
