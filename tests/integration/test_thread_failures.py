"""No thread dies silently: a failure injected at the top of each long-lived thread is
logged, and either the thread carries on or what depends on it learns it (the process
exits 1, its futures fail with a RequestError naming the cause)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import zmq

from alto_bus import Client, Worker
from alto_bus.net.curve import ZAP_ENDPOINT, Guard
from alto_bus.service import http_server
from tests.integration.test_client_failures import BrokenClient, FakeGateway
from tests.support import running, status, wait_for

ROOT = Path(__file__).resolve().parents[2]
H = "tests.integration.handlers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_http_front_door_that_cannot_start_exits_non_zero_saying_why():
    proc = subprocess.run([sys.executable, "-m", "alto_bus", "http", "--gateway", "http://127.0.0.1:1",
                           "--listen", "127.0.0.1:0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stderr
    assert "'http://127.0.0.1:1' is not tcp://host:port" in proc.stderr


def test_an_http_front_door_whose_gateway_client_dies_answers_then_exits_1(monkeypatch, caplog):
    monkeypatch.setattr("alto_bus.client.Client._on_message", BrokenClient._on_message)
    gw = FakeGateway(answer_pings=True)
    port = free_port()
    code: list[int] = []
    server = threading.Thread(target=lambda: code.append(http_server.serve(gw.address, None, f"127.0.0.1:{port}")),
                              daemon=True)
    try:
        server.start()
        wait_for(lambda: _healthy(port), 30, "the front door to listen")
        body = json.dumps({"input": "q", "timeout": 300}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/requests", data=body, method="POST")
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("the request succeeded")
        except urllib.error.HTTPError as exc:   # answered at once, not at the 300 s deadline
            err = json.loads(exc.read())["error"]
        assert err["stage"] == "client" and "I/O thread failed: RuntimeError: a bug in the client" in err["message"]
        server.join(30)
        assert code == [1]   # its supervisor sees it and says so
        assert any("http:" in r.getMessage() and "stopping" in r.getMessage() and r.levelno == logging.CRITICAL
                   for r in caplog.records)
    finally:
        gw.close()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class FailingWorker(Worker):
    """An embedded worker whose serving loop fails once it has registered."""

    async def _serve(self, inbox: zmq.Socket) -> None:
        raise RuntimeError("injected into the worker's loop")


def test_an_embedded_worker_whose_thread_fails_says_so_and_leaves_the_topology(caplog):
    topo = {"broker": {}, "stage": [{"name": "upper", "kind": "function", "handler": f"{H}:upper"}]}
    with running(topo) as sup:
        worker = FailingWorker(stage="upper", handler=str.upper, broker=sup.addresses["control"]).start()
        worker._thread.join(30)
        assert not worker._thread.is_alive()
        assert any("worker for stage upper stopped with an error" in r.getMessage()
                   and "injected into the worker's loop" in r.getMessage() for r in caplog.records)
        # It said goodbye: the broker does not route to it, and requests are served.
        wait_for(lambda: len(status(sup)["stages"]["upper"]["instances"]) == 1, 30, "the failed worker to leave")
        with Client(sup.addresses["gateway"]) as client:
            assert [client.submit(f"w{i}").result(timeout=30) for i in range(20)] == [f"W{i}" for i in range(20)]


class Exploding(dict):
    def get(self, *args):
        raise RuntimeError("injected into the ZAP guard")


def zap_request(sock: zmq.Socket, domain: bytes, mechanism: bytes, *credentials: bytes) -> list[bytes]:
    sock.send_multipart([b"1.0", b"7", domain, b"127.0.0.1", b"", mechanism, *credentials])
    assert sock.poll(10_000), "the ZAP guard did not answer"
    return sock.recv_multipart()


def test_the_zap_guard_refuses_a_request_it_fails_on_and_answers_the_next(caplog):
    ctx = zmq.Context()
    guard = Guard.of(ctx)
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(ZAP_ENDPOINT)
        domains, guard.domains = guard.domains, Exploding()
        reply = zap_request(req, b"alto-1", b"CURVE", b"k" * 32)
        assert reply[2] == b"500"          # refused, not left waiting
        assert any("ZAP guard failed" in r.getMessage() for r in caplog.records)
        guard.domains = domains
        assert guard.is_alive()
        assert zap_request(req, b"", b"NULL")[2] == b"200"   # it carries on
    finally:
        req.close()
        ctx.term()
