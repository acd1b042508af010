"""The HTTP front door as a user meets it: `alto launch FILE --http 127.0.0.1:0`, then curl-like calls.

One topology (split a text into words -> upper-case each) runs for the whole module; every
test talks to it over HTTP with httpx, as any HTTP client would, and checks what comes back
against what the ZeroMQ client gets, the status codes of each kind of failure, cancellation
of an abandoned request, the metrics, and a real Prometheus server scraping them.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from alto_bus import Client
from tests.support import wait_for, write_topology

H = "tests.integration.http_handlers"
ROOT = Path(__file__).resolve().parents[2]
TEXT = "hello big world"


def topology(**extra: dict) -> dict:
    return {**extra, "stage": [
        {"name": "split", "kind": "function", "handler": f"{H}:words"},
        {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split"},
    ]}


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


class Launched:
    """`alto launch` as a subprocess; its printed addresses once it says ``ready``."""

    def __init__(self, path: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "alto_bus", "launch", str(path), *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        buf = b""
        deadline = time.monotonic() + 60
        while "ready" not in self.lines:
            if b"\n" not in buf:
                ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"no 'ready' within 60 s; got {self.lines}"
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"alto launch exited early: {self.proc.stderr.read().decode()}"
                buf += chunk
                continue
            line, buf = buf.split(b"\n", 1)
            self.lines.append(line.decode())
        self.printed = dict(line.split(" ", 1) for line in self.lines if line.split(" ")[0] in
                            ("gateway", "control", "http"))
        self.url = self.printed.get("http")  # None: launched without the front door
        self.http = httpx.Client(base_url=self.url or "", timeout=30.0)

    def status(self) -> dict:
        r = self.http.get("/v1/status")
        assert r.status_code == 200, r.text
        return r.json()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        r = self.http.get("/metrics")
        assert r.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.text) for s in family.samples}

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in children_of(self.proc.pid):
                    os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    run = None
    try:
        run = Launched(write_topology(tmp_path_factory.mktemp("http"), topology()), "--http", "127.0.0.1:0")
        yield run
    finally:
        if run is not None:
            run.stop()


def post(door: Launched, body: object, **kw) -> httpx.Response:
    return door.http.post("/v1/requests", content=body if isinstance(body, bytes) else json.dumps(body), **kw)


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data:"):]) for line in response.iter_lines() if line.startswith("data:")]


def test_launch_prints_the_http_line_and_the_result_is_the_clients(door):
    assert door.url.startswith("http://127.0.0.1:")
    assert door.lines.index(f"http {door.url}") < door.lines.index("ready")
    assert door.http.get("/healthz").json() == {"ok": True}
    with Client(door.printed["gateway"]) as client:
        expected = client.submit(TEXT, timeout=30).result(timeout=40)
    r = post(door, {"input": TEXT})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"result": expected} == {"result": ["HELLO", "BIG", "WORLD"]}


@pytest.mark.parametrize("how", ["field", "accept"])
def test_a_stream_gives_each_partial_then_the_result(door, how):
    body = {"input": TEXT, "stream": True} if how == "field" else {"input": TEXT}
    headers = {"accept": "text/event-stream"} if how == "accept" else {}
    with door.http.stream("POST", "/v1/requests", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
    *partials, last = got
    assert last == {"result": ["HELLO", "BIG", "WORLD"]}
    assert sorted((tuple(p["path"]), p["data"], p["final"]) for p in partials) == [
        ((0,), "HELLO", True), ((1,), "BIG", True), ((2,), "WORLD", True)]


@pytest.mark.parametrize("body, status, names", [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2, 3]", 422, "JSON object"),
    ({"text": TEXT}, 422, "'text'"),
    ({"stream": True}, 422, "'input'"),
    ({"input": TEXT, "stream": "yes"}, 422, "'stream'"),
    ({"input": TEXT, "timeout": 0}, 422, "'timeout'"),
    ({"input": 2 ** 70}, 422, "'input'"),   # JSON takes it; msgpack (the bus) cannot
])
def test_a_malformed_body_is_refused_with_an_error_naming_it(door, body, status, names):
    r = post(door, body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["stage"] == "http"
    assert names in err["message"]


def test_garbage_from_a_peer_does_not_hurt_the_front_door(door):
    host, port = door.url[len("http://"):].rsplit(":", 1)
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"POST /v1/requests HTTP/1.1\r\nContent-Length: 99\r\n\r\n{"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.recv(65536)  # an error page or EOF, whichever the server sends
    assert door.http.get("/healthz").status_code == 200
    assert post(door, {"input": "still fine"}).json() == {"result": ["STILL", "FINE"]}


def test_a_request_past_its_deadline_is_a_504(door):
    r = post(door, {"input": "sleep 5 too slow", "timeout": 0.5})
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["stage"] == "gateway"
    assert err["message"].startswith("deadline exceeded")


@pytest.mark.parametrize("stream", [False, True])
def test_a_handler_exception_is_a_500_naming_the_stage(door, stream):
    r = post(door, {"input": "boom now", "stream": stream})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["stage"] == "split"
    assert "ValueError" in err["message"] and "boom now" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_caller_that_disconnects_cancels_its_request(door, stream):
    before = door.status()["gateway"]
    cancelled = door.metrics().get(("alto_requests_failed_total", (("reason", "cancelled"),)), 0.0)
    host, port = door.url[len("http://"):].rsplit(":", 1)
    body = json.dumps({"input": "sleep 60 never answered", "stream": stream, "timeout": 120}).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: alto\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: door.status()["gateway"]["in_flight"] == 1, 10, "the request to be admitted")
    finally:
        s.close()
    # Well before the handler's 60 s and the request's 120 s, the gateway has ended it.
    wait_for(lambda: door.status()["gateway"]["in_flight"] == 0, 20, "the abandoned request to be cancelled")
    after = door.status()["gateway"]
    assert after["failed"] == before["failed"] + 1
    assert after["completed"] == before["completed"]
    assert door.metrics()[("alto_requests_failed_total", (("reason", "cancelled"),))] == cancelled + 1


def test_metrics_count_requests_and_show_every_stage_instance(door):
    before = door.metrics()
    assert post(door, {"input": "count me"}).status_code == 200
    assert post(door, {"input": "boom"}).status_code == 500
    with door.http.stream("POST", "/v1/requests", json={"input": "first partial", "stream": True}) as r:
        assert events(r)[-1] == {"result": ["FIRST", "PARTIAL"]}
    after = door.metrics()

    def grew(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("alto_requests_admitted_total") == 3
    assert grew("alto_requests_completed_total") == 2
    assert grew("alto_requests_failed_total", (("reason", "handler_error"),)) == 1
    assert grew("alto_e2e_request_latency_seconds_count") == 2
    assert grew("alto_time_to_first_partial_seconds_count") == 1
    assert grew("alto_gateway_requests_completed_total") == 2
    assert after[("alto_broker_up", ())] == 1
    assert after[("alto_requests_in_flight", ())] == 0
    for stage in ("split", "upper"):
        assert after[("alto_stage_instances", (("stage", stage),))] == 1
        depth = [k for k in after if k[0] == "alto_instance_queue_depth" and ("stage", stage) in k[1]]
        assert len(depth) == 1 and dict(depth[0][1])["instance"].endswith(":" + str(
            door.status()["stages"][stage]["instances"][0]["pid"]))


def test_alto_submit_and_status_over_http(door):
    def alto(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "alto_bus", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    out = alto("submit", "--http", door.url, "--compact", json.dumps("over http"))
    assert (out.returncode, out.stdout.strip()) == (0, '["OVER", "HTTP"]'), out.stderr
    out = alto("submit", "--http", door.url, "--stream", "--compact", json.dumps("a b"))
    assert out.returncode == 0, out.stderr
    *partials, result = out.stdout.strip().splitlines()
    assert result == '["A", "B"]' and len(partials) == 2
    out = alto("submit", "--http", door.url, json.dumps("boom"))
    assert out.returncode == 1 and "stage 'split'" in out.stderr and "ValueError" in out.stderr
    out = alto("status", "--http", door.url)
    assert out.returncode == 0, out.stderr
    assert "stage split: 1/1 instances" in out.stdout and "stage upper: 1/1 instances" in out.stdout
    out = alto("status", "--http", door.url, "--json")
    assert set(json.loads(out.stdout)["stages"]) == {"split", "upper"}


def test_an_http_table_starts_the_front_door(tmp_path):
    run = None
    try:
        run = Launched(write_topology(tmp_path, topology(http={"listen": "127.0.0.1:0", "timeout": 5})))
        assert run.url.startswith("http://127.0.0.1:")
        assert post(run, {"input": "from the table"}).json() == {"result": ["FROM", "THE", "TABLE"]}
    finally:
        if run is not None:
            run.stop()
    assert run.proc.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed "
                    "(scripts/setup.sh installs it)")
def test_a_real_prometheus_scrapes_the_topology(door, tmp_path):
    assert post(door, {"input": "scrape me"}).status_code == 200
    target = door.url[len("http://"):]
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: alto\n    static_configs:\n      - targets: ['{target}']\n")
    port = _free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)

    def query(q: str) -> list:
        try:
            r = api.get("/api/v1/query", params={"query": q})
        except httpx.HTTPError:
            return []  # not listening yet
        return r.json()["data"]["result"] if r.status_code == 200 else []

    try:
        completed = wait_for(lambda: query('alto_requests_completed_total{job="alto"}'), 60,
                             "Prometheus to scrape alto_requests_completed_total")
        assert float(completed[0]["value"][1]) >= 1
        depth = wait_for(lambda: query('alto_instance_queue_depth{job="alto"}'), 30,
                         "Prometheus to have the per-instance queue depths")
        assert {r["metric"]["stage"] for r in depth} == {"split", "upper"}
        assert query('up{job="alto"}')[0]["value"][1] == "1"
    finally:
        api.close()
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
