"""The live dashboard as a user opens it: `alto launch FILE --http`, then a real browser on GET /.

The topology is a function stage feeding two LM stages on a pool of two sim engines
(``tests/integration/pool_script.py``), so the page has a graph, instances, a pool with
placements and demand. Requests flow over HTTP from a bounded background loop while
headless Chromium (Debian's ``chromium``) loads the page on loopback, with every way it
could phone home turned off. The page must draw every stage by name, poll and re-draw
by itself, and show a request count that grows between two loads; the screenshot is
kept as out/dashboard.png.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration import pool_script as ps
from tests.integration.test_http import ROOT, Launched
from tests.support import wait_for, write_topology

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh "
                                                         "installs it)")
W = "test"
STAGES = ("intake", "a", "b")
# Nothing but the page's own loopback URL: no updates, sync, metrics, safe browsing, DNS
# for any other name, and a dead proxy for anything that is not loopback.
QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-background-networking", "--disable-sync", "--disable-component-update",
         "--disable-default-apps", "--disable-extensions", "--disable-breakpad", "--disable-domain-reliability",
         "--disable-client-side-phishing-detection", "--metrics-recording-only", "--disable-crash-reporter",
         "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,"
         "CertificateTransparencyComponentUpdater",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9",
         "--proxy-bypass-list=127.0.0.1", "--window-size=1400,1800"]


class Traffic:
    """Requests over HTTP, one after another, until stopped (at most ``limit``, and ``seconds``)."""

    def __init__(self, url: str, limit: int = 3000, seconds: float = 120.0) -> None:
        self.url, self.limit, self.seconds = url, limit, seconds
        self.stop = threading.Event()
        self.sent = 0
        self.wrong: list[tuple[str, int, str]] = []
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        with httpx.Client(base_url=self.url, timeout=60.0) as http:
            while not self.stop.is_set() and self.sent < self.limit and time.monotonic() < end:
                rid = ps.rid(self.sent, 1)
                r = http.post("/v1/requests", json={"input": {"rid": rid}, "timeout": 30})
                self.sent += 1
                if r.status_code != 200 or r.json() != {"result": ps.expected(W, rid)}:
                    self.wrong.append((rid, r.status_code, r.text[:300]))
                self.stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(90)


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    topo = ps.topology(W, replicas=2, engine_args={"time_scale": 0.2},
                       broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 25})
    run = None
    try:
        run = Launched(write_topology(tmp_path_factory.mktemp("dash"), topo), "--http", "127.0.0.1:0")
        yield run
    finally:
        if run is not None:
            run.stop()


def browse(url: str, profile: Path, *what: str) -> subprocess.CompletedProcess:
    """Chromium on ``url`` with ``what`` (--dump-dom, --screenshot=...); 3 s of the page's
    own time (its polls), however fast the machine runs them."""
    assert url.startswith("http://127.0.0.1:")
    out = subprocess.run([CHROMIUM, *QUIET, f"--user-data-dir={profile}", "--virtual-time-budget=3000", *what, url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def shown(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"no #{element_id} in the page"
    return m.group(1)


def count(dom: str, element_id: str) -> int:
    text = shown(dom, element_id).replace(",", "").replace("\u202f", "").replace("\xa0", "")
    assert text.isdigit(), f"#{element_id} shows {text!r}"
    return int(text)


def completed(door: Launched) -> int:
    return door.status()["gateway"]["completed"]


def test_the_page_and_its_files_are_served_and_load_nothing_from_elsewhere(door):
    page = door.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = door.http.get("/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert door.http.get("/dashboard.css").status_code == 200
    assert not re.search(r'(src|href)="(https?:)?//', page.text), "the page must work offline"
    assert set(re.findall(r"https?://[^\s\"'`]+", script.text)) == {"http://www.w3.org/2000/svg"}  # a namespace name
    full = door.http.get("/v1/dashboard").json()
    t = full["points"][-1]["t"]
    assert door.http.get("/v1/dashboard", params={"since": t}).json()["points"] == []  # only what the page lacks
    bad = door.http.get("/v1/dashboard", params={"since": "yesterday"})
    assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]


def test_the_dashboard_draws_every_stage_and_updates(door, tmp_path):
    with Traffic(door.url) as traffic:
        # The series needs a few samples of traffic: rate, latency, pool placements.
        wait_for(lambda: completed(door) >= 20, 60, "20 requests to complete")
        data = wait_for(lambda: (d := door.http.get("/v1/dashboard").json())["points"][-1].get("completed_per_s")
                        and d, 30, "a sample with a request rate")
        first = browse(door.url, tmp_path / "profile", "--dump-dom").stdout
        before = completed(door)
        wait_for(lambda: completed(door) >= before + 10, 60, "10 more requests to complete")
        second = browse(door.url, tmp_path / "profile", "--dump-dom").stdout
        shot = ROOT / "out" / "dashboard.png"
        shot.parent.mkdir(exist_ok=True)
        shot.unlink(missing_ok=True)
        browse(door.url, tmp_path / "profile", f"--screenshot={shot}")
    assert not traffic.wrong, traffic.wrong[:3]

    for dom in (first, second):
        for stage in STAGES:  # a box per stage, named, and its instances
            assert re.search(rf'<g class="stage" data-stage="{stage}"[^>]*>.*?>{stage}</text>', dom, re.S), stage
        assert dom.count('class="health ok"') == 1 + 2 + 2  # intake's instance, the pool's two for a and b
        assert int(re.search(r'data-polls="(\d+)"', dom).group(1)) >= 2, "the page did not poll and re-draw"
        assert 'data-from="intake" data-to="a"' in dom and 'data-from="a" data-to="b"' in dom
        assert "broker up" in dom
        assert 'data-pool="llm"' in dom
    assert count(second, "completed") > count(first, "completed") >= 20
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one

    # What the plots are drawn from: a rate, percentiles, handler times, placements, demand.
    last = data["points"][-1]
    assert last["completed_per_s"] > 0 and last["p50"] is not None and last["p99"] >= last["p50"]
    for stage in STAGES:  # a function's call, an LM's generation
        assert last["stages"][stage]["handler_p50"] is not None, stage
    assert {n["name"] for n in data["graph"]["nodes"]} >= set(STAGES)
    pool = data["pools"]["llm"]
    assert set(pool["placement"]) == {"a", "b"} and set(pool["member_loads"]) <= set(pool["running"])
    assert any(p["pools"]["llm"]["demand"] for p in data["points"] if p.get("pools"))


def fake_status(iid_base: int = 1) -> dict:
    """A broker's status for a graph no topology on main has yet: a fan-out and a join
    (``join`` reads two stages, ``input`` a list), to check the drawing is not chain-shaped."""
    def stage(name: str, inputs, n: int) -> dict:
        return {"kind": "function", "input": inputs, "pool": None, "replicas": n,
                "instances": [{"iid": iid_base + k, "host": "h", "pid": 100 + k, "depth": k, "draining": k == 1,
                               "stalled": 0.0, "stats": {"messages_in": 0}, "bad": {}} for k in range(n)]}
    return {"epoch": 1, "gateway": {"completed": 7, "failed": 0, "in_flight": 0, "admitted": 7},
            "stages": {"src": stage("src", None, 1), "left": stage("left", "src", 2),
                       "right": stage("right", ["src"], 1), "join": stage("join", ["left", "right"], 1)},
            "pools": {}}


def test_a_join_is_drawn_with_an_edge_from_each_of_its_inputs(tmp_path):
    import uvicorn

    from alto_bus.service.http_app import FrontDoor, create_app
    from alto_bus.service.http_server import bind

    door = FrontDoor("tcp://127.0.0.1:9", None)   # no gateway is asked: the page only reads the status
    door.status = fake_status
    sock, url = bind("127.0.0.1:0")
    server = uvicorn.Server(uvicorn.Config(create_app(door), log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "the app to serve")
        dom = browse(url + "/", tmp_path / "profile", "--dump-dom").stdout
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
    for a, b in [("@clients", "src"), ("src", "left"), ("src", "right"), ("left", "join"), ("right", "join"),
                 ("join", "@results")]:
        assert f'data-from="{a}" data-to="{b}"' in dom, (a, b)
    assert dom.count('class="edge"') == 6
    for stage in ("src", "left", "right", "join"):
        assert f'data-stage="{stage}"' in dom
    assert dom.count('class="health draining"') == 1 and dom.count('class="health ok"') == 4


def test_metrics_have_handler_times_and_pool_sequences(door):
    assert door.http.post("/v1/requests", json={"input": {"rid": ps.rid(99_999, 1)}}).status_code == 200
    wait_for(lambda: any(k[0] == "alto_stage_handler_seconds_count" and v >= 1 for k, v in door.metrics().items()),
             10, "a heartbeat with the handler's times")
    m = door.metrics()
    intake = [k for k in m if k[0] == "alto_stage_handler_seconds_bucket" and ("stage", "intake") in k[1]]
    assert any(("le", "+Inf") in k[1] for k in intake) and len(intake) >= 10
    members = [k for k in m if k[0] == "alto_pool_num_requests_running"]
    assert len(members) == 2 and all(("pool", "llm") in k[1] for k in members)
    assert len([k for k in m if k[0] == "alto_pool_num_requests_waiting"]) == 2
    assert json.loads(json.dumps(door.status()))["stages"]["a"]["input"] == "intake"
