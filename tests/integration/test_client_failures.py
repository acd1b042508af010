"""Every request a Client holds ends with a clear error when what it talks to fails: a
bad address, its own I/O thread, a silent gateway, a broker killed under load; never
at the request's own deadline when the client knows better."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import msgpack
import pytest
import zmq

from alto_bus import Client, RequestError
from alto_bus.protocol import wire
from tests.support import running, wait_exit

H = "tests.integration.handlers"


class FakeGateway:
    """A ROUTER that reads client frames and answers PING with PONG (or nothing)."""

    def __init__(self, answer_pings: bool) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.answer_pings = answer_pings
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, frame = self.sock.recv_multipart()
            self.frames += 1
            msgs = msgpack.unpackb(frame)[1:]
            if self.answer_pings and [wire.PING] in msgs:
                self.sock.send_multipart([identity, msgpack.packb([wire.VERSION, [wire.PONG]])])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)


def test_a_bad_gateway_address_is_refused_at_once_naming_it():
    with pytest.raises(ValueError, match="Client gateway.*'http://127.0.0.1:1'"):
        Client("http://127.0.0.1:1")


def test_a_silent_gateway_fails_every_pending_request_naming_it():
    gw = FakeGateway(answer_pings=False)
    try:
        with Client(gw.address, timeout=300, gateway_silence=1.5) as client:
            futures = [client.submit(f"q{i}") for i in range(20)]
            for f in futures:  # far before the requests' own 300 s deadline
                with pytest.raises(RequestError) as err:
                    f.result(timeout=30)
                assert err.value.stage == "gateway" and gw.address in err.value.message
                assert "has not answered" in err.value.message
    finally:
        gw.close()


def test_a_gateway_that_answers_pings_is_not_taken_for_gone():
    gw = FakeGateway(answer_pings=True)
    try:
        with Client(gw.address, timeout=300, gateway_silence=1.0) as client:
            fut = client.submit("q")
            # Four times the silence: the pings' answers keep the request alive.
            with pytest.raises(TimeoutError):
                fut.result(timeout=4.0)
            assert not fut.done() and gw.frames >= 3
    finally:
        gw.close()


class BrokenClient(Client):
    def _on_message(self, msg: list) -> None:
        raise RuntimeError("a bug in the client")


def test_a_client_whose_io_thread_dies_fails_its_requests_and_refuses_new_ones():
    gw = FakeGateway(answer_pings=True)
    try:
        client = BrokenClient(gw.address, timeout=300)
        futures = [client.submit(f"q{i}") for i in range(5)]
        for f in futures:
            with pytest.raises(RequestError, match="I/O thread failed: RuntimeError: a bug in the client"):
                f.result(timeout=30)
        with pytest.raises(RequestError, match="I/O thread failed"):
            client.submit("again")
        client.close()
    finally:
        gw.close()


def test_a_broker_killed_under_load_ends_every_pending_request_promptly(tmp_path: Path):
    gate = tmp_path / "never"
    topo = {"broker": {"heartbeat_interval": 0.2}, "stage": [
        {"name": "work", "kind": "function", "handler": f"{H}:block_until", "replicas": 2, "threads": 4}]}
    with running(topo) as sup, Client(sup.addresses["gateway"], timeout=300, gateway_silence=3.0) as client:
        futures = [client.submit({"text": f"t{i}", "wait_for": str(gate)}) for i in range(200)]
        (broker,) = [c for c in sup.children if c.role == "broker"]
        os.kill(broker.proc.pid, signal.SIGKILL)
        assert wait_exit(broker.proc.pid, 10)
        for f in futures:
            with pytest.raises(RequestError) as err:
                f.result(timeout=30)   # the client's own deadline is 300 s
            assert err.value.stage == "gateway" and "has not answered" in err.value.message
        gate.touch()  # let the blocked handlers end, so that the workers stop cleanly
