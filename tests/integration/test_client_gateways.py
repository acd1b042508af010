"""A client of several gateways, against fake gateways made here (ROUTER sockets on
loopback that speak the client protocol): requests spread over them, a cancel goes to
the one that admitted its request, and a gateway that goes silent or restarts fails
only its own requests while the others go on. Last, one client given the gateway line
of a real launch with two gateways."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from alto_bus import AsyncClient, Client, RequestError
from alto_bus.protocol import wire
from tests.integration.test_pipeline import three_stage
from tests.support import running, status, wait_for


class FakeGateway:
    """Answers SUBMIT with RESULT ``{"by": address, "i": payload["i"]}`` at once, or when
    ``release()`` is called for a payload with ``"hold"``; CANCEL with FAILED (as the real
    gateway does); PING with PONG naming ``boot``. While ``silent``, it notes what it is
    sent (``admitted``) and answers nothing."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.silent = False
        self.boot = "run-1"
        self.admitted: dict[int, dict] = {}    # cid -> payload, every SUBMIT it took
        self.cancelled: list[dict] = []        # the payloads of the requests it was told to cancel
        self.pings_seen = 0
        self._held: list[tuple[bytes, int]] = []
        self._release = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._release.set()

    def _answer(self, identity: bytes, *msgs: list) -> None:
        self.sock.send_multipart([identity, msgpack.packb([wire.VERSION, *msgs])])

    def _run(self) -> None:  # the socket is this thread's only
        while not self._stop.is_set():
            if self._release.is_set():
                self._release.clear()
                held, self._held = self._held, []
                for identity, cid in held:
                    self._answer(identity, [wire.RESULT, cid, {"by": self.address, "i": self.admitted[cid]["i"]}])
            if not self.sock.poll(20):
                continue
            identity, frame = self.sock.recv_multipart()
            for msg in msgpack.unpackb(frame)[1:]:
                if msg[0] == wire.SUBMIT:
                    self.admitted[msg[1]] = msg[2]
                if self.silent:
                    continue
                if msg[0] == wire.PING:
                    self._answer(identity, [wire.PONG, self.boot])
                    self.pings_seen += 1  # after the answer: a test that sees it may change boot
                elif msg[0] == wire.SUBMIT:
                    cid, payload = msg[1], msg[2]
                    if payload.get("hold"):
                        self._held.append((identity, cid))
                    else:
                        self._answer(identity, [wire.RESULT, cid, {"by": self.address, "i": payload["i"]}])
                elif msg[0] == wire.CANCEL and msg[1] in self.admitted:
                    self.cancelled.append(self.admitted[msg[1]])
                    self._held = [(who, c) for who, c in self._held if c != msg[1]]
                    self._answer(identity, [wire.FAILED, msg[1], "client", "cancelled by the client"])

    def took(self, indices: range | list[int]) -> set[int]:
        """Which of the requests numbered ``indices`` this gateway admitted."""
        return {p["i"] for p in list(self.admitted.values())} & set(indices)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)


@pytest.fixture
def two() -> Iterator[tuple[FakeGateway, FakeGateway]]:
    a, b = FakeGateway(), FakeGateway()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def held(client: Client, indices: range) -> list:
    return [client.submit({"i": i, "hold": True}) for i in indices]


def test_requests_spread_evenly_and_a_cancel_reaches_the_gateway_that_admitted_it(two):
    a, b = two
    with Client(f"{a.address},{b.address}", timeout=60) as client:
        futures = held(client, range(10))
        wait_for(lambda: len(a.admitted) + len(b.admitted) == 10, 10, "10 requests at the gateways")
        assert len(a.took(range(10))) == 5 and len(b.took(range(10))) == 5   # nothing ended: even
        k = min(b.took(range(10)))
        assert client.cancel(futures[k])
        with pytest.raises(RequestError, match="cancelled by the client"):
            futures[k].result(timeout=10)
        assert [p["i"] for p in b.cancelled] == [k] and a.cancelled == []
        a.release()
        b.release()
        for i, f in enumerate(futures):
            if i != k:
                assert f.result(timeout=10) == {"by": a.address if i in a.took([i]) else b.address, "i": i}
        # Requests that end at once: each gateway in turn.
        answers = [client.submit({"i": i}).result(timeout=10)["by"] for i in range(10, 20)]
        assert answers.count(a.address) == 5 and answers.count(b.address) == 5


def test_a_silent_gateway_fails_only_its_requests_naming_it_and_is_used_again_once_it_answers(two):
    a, b = two
    with Client([a.address, b.address], timeout=300, gateway_silence=1.0) as client:
        futures = held(client, range(10))
        wait_for(lambda: len(a.admitted) + len(b.admitted) == 10, 10, "10 requests at the gateways")
        b.silent = True
        on_b = b.took(range(10))
        for i in sorted(on_b):  # far before their own 300 s deadline
            with pytest.raises(RequestError) as err:
                futures[i].result(timeout=15)
            assert err.value.stage == "gateway" and b.address in err.value.message
            assert "has not answered" in err.value.message and a.address not in err.value.message
        assert not any(futures[i].done() for i in a.took(range(10)))   # A's go on
        a.release()
        for i in sorted(a.took(range(10))):
            assert futures[i].result(timeout=10) == {"by": a.address, "i": i}
        # New requests go to the live gateway only.
        seen_by_b = len(b.admitted)
        answers = [client.submit({"i": i}).result(timeout=10)["by"] for i in range(10, 20)]
        assert answers == [a.address] * 10 and len(b.admitted) == seen_by_b
        # B answers again: the client's pings find it, and it gets requests again.
        pings = b.pings_seen
        b.silent = False
        wait_for(lambda: b.pings_seen > pings, 15, "a ping to the silent gateway, answered")
        n = iter(range(100, 400))
        wait_for(lambda: client.submit({"i": next(n)}).result(timeout=10)["by"] == b.address, 10,
                 "a request answered by the gateway that came back")


def test_a_restarted_gateway_fails_only_its_requests_and_is_told_to_drop_them(two):
    a, b = two
    # A silence of 60 s: only B's new run, named in its PONG, can end its requests early.
    with Client(f"{a.address},{b.address}", timeout=300, gateway_silence=60.0) as client:
        futures = held(client, range(6))
        wait_for(lambda: a.pings_seen and b.pings_seen, 10, "a PONG from each gateway naming its run")
        b.boot = "run-2"
        on_b = b.took(range(6))
        for i in sorted(on_b):
            with pytest.raises(RequestError) as err:
                futures[i].result(timeout=15)
            assert err.value.stage == "gateway" and f"the gateway at {b.address} restarted" in err.value.message
        wait_for(lambda: on_b <= {p["i"] for p in b.cancelled}, 10, "CANCELs of its requests at the new run")
        a.release()
        for i in sorted(a.took(range(6))):
            assert futures[i].result(timeout=10) == {"by": a.address, "i": i}
        assert a.cancelled == []


def test_when_every_gateway_is_silent_a_new_request_fails_at_once_naming_them(two):
    a, b = two
    with Client(f"{a.address},{b.address}", timeout=300, gateway_silence=1.0) as client:
        a.silent = b.silent = True
        futures = held(client, range(4))
        for f in futures:
            with pytest.raises(RequestError, match="has not answered"):
                f.result(timeout=15)
        with pytest.raises(RequestError) as err:
            client.submit({"i": 9}).result(timeout=1)   # no silence to wait out again
        assert err.value.stage == "client" and err.value.message.startswith("no gateway answers")
        assert a.address in err.value.message and b.address in err.value.message
        a.silent = False
        n = iter(range(100, 400))

        def answered() -> bool:
            try:
                return client.submit({"i": next(n)}).result(timeout=10)["by"] == a.address
            except RequestError as exc:
                assert exc.message.startswith("no gateway answers"), exc
                return False
        wait_for(answered, 15, "a request answered once a gateway is back")


def test_an_async_client_spreads_over_the_gateways_too(two):
    a, b = two

    async def main() -> list:
        async with AsyncClient(f"{a.address},{b.address}", timeout=30) as client:
            return await asyncio.gather(*(client.submit({"i": i, "hold": True}) for i in range(8)))

    def release_when_all_in() -> None:
        wait_for(lambda: len(a.admitted) + len(b.admitted) == 8, 10, "8 requests at the gateways")
        a.release()
        b.release()

    releaser = threading.Thread(target=release_when_all_in)
    releaser.start()
    results = asyncio.run(main())
    releaser.join(10)
    assert sorted(r["i"] for r in results) == list(range(8))
    assert [r["by"] for r in results].count(a.address) == 4 and len(a.took(range(8))) == 4


def test_one_client_given_the_launch_line_of_two_gateways_uses_both():
    with running(three_stage(gateways=2, heartbeat_interval=0.2)) as sup:
        assert "," in sup.addresses["gateway"]
        with Client(sup.addresses["gateway"], timeout=30) as client:
            texts = [f"request {i}" for i in range(200)]
            futures = [client.submit(t) for t in texts]
            for text, f in zip(texts, futures, strict=True):
                assert [w["word"] for w in f.result(timeout=30)] == text.upper().split()

        def both_reported():
            gws = status(sup)["gateways"]
            return gws if sum(g.get("completed", 0) for g in gws) == 200 else None

        gws = wait_for(both_reported, 10, "the gateways to report the 200 requests")
        assert all(g["completed"] >= 50 for g in gws), gws   # spread, not all on one
