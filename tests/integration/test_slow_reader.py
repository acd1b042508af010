"""A client that stops reading its answers: the gateway keeps a bounded backlog for it,
then cuts it off (its requests fail with a clear error), counts it in status, and
serves every other client meanwhile; the broker does not spin while it waits."""

from __future__ import annotations

import time

import msgpack
import zmq

from alto_bus import Client
from alto_bus.protocol import wire
from tests.support import running, status, wait_for

H = "tests.integration.backlog_handlers"
CAP = 1024 * 1024
FRAME_SLACK = 64 * 1024 + 4096   # the backlog goes over its cap by at most one frame
TOPOLOGY = {"broker": {"client_backlog_bytes": CAP, "client_backlog_answers": 100_000, "request_timeout": 60.0},
            "stage": [{"name": "burst", "kind": "function", "handler": f"{H}:burst", "replicas": 1}]}
BIG = {"n": 50, "size": 2000}   # 100 KB of partials and as much again in the result


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def wakes(pid: int) -> int:
    """Voluntary context switches of the broker's main thread: one per sleep in its poll."""
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:"))


def submits(cids: range) -> bytes:
    return msgpack.packb([wire.VERSION, *([wire.SUBMIT, c, BIG, True, 60.0] for c in cids)])


def small_requests_finish(gateway: str, n: int = 20) -> None:
    with Client(gateway, timeout=30) as client:
        futures = [client.submit({"n": 2, "size": 3}) for _ in range(n)]
        assert [f.result(timeout=30) for f in futures] == [["000000xxx", "000001xxx"]] * n


def test_a_client_that_stops_reading_is_cut_off_and_the_others_are_served():
    with running(TOPOLOGY) as sup:
        gateway = sup.addresses["gateway"]
        (broker,) = [c.proc.pid for c in sup.children if c.role == "broker"]
        small_requests_finish(gateway)
        rss0 = rss(broker)
        ctx = zmq.Context.instance()
        reader = ctx.socket(zmq.DEALER)  # it submits and never reads (until the end)
        reader.setsockopt(zmq.RCVHWM, 1)
        reader.setsockopt(zmq.RCVBUF, 4096)
        reader.setsockopt(zmq.LINGER, 0)
        reader.connect(gateway)
        try:
            # 400 requests, 80 MB owed to it, far over the cap; in waves, as a client that
            # keeps submitting while it does not read (its later waves are refused).
            for wave in range(20):
                reader.send(submits(range(1 + 20 * wave, 21 + 20 * wave)))
                time.sleep(0.05)  # pacing the load, not waiting for anything
            largest = []

            def cut_off():
                g = status(sup)["gateway"]["backlog"]
                largest.append(g["largest_bytes"])
                return g["cut_off"] >= 1 and g

            small_requests_finish(gateway)         # served while the other one fills up
            g = wait_for(cut_off, 60, "the gateway to cut off the client that does not read")
            assert max(largest) <= CAP + FRAME_SLACK, largest
            assert g["dropped_answers"] > 0 and g["dropped_bytes"] > 0 and g["cut_off_now"] == 1
            wait_for(lambda: status(sup)["gateway"]["in_flight"] == 0, 30, "the cut-off client's requests to end")

            # Cut off, it is refused (counted) and costs the broker no busy wake while it waits.
            refused = status(sup)["gateway"]["backlog"]["refused"]  # its later waves, after the cut
            reader.send(submits(range(401, 451)))
            wait_for(lambda: status(sup)["gateway"]["backlog"]["refused"] == refused + 50, 30,
                     "50 more refusals counted")
            before, t0 = wakes(broker), time.monotonic()
            small_requests_finish(gateway)
            time.sleep(1.0)  # measuring a rate over a second of doing nothing
            rate = (wakes(broker) - before) / (time.monotonic() - t0)
            assert rate < 200, f"the broker woke {rate:.0f} times a second while a client did not read"
            grown = rss(broker) - rss0
            assert grown < 40 * 1024 * 1024, f"the broker grew by {grown >> 20} MiB with the unread answers"

            # It reads at last: every request it made has ended once, most with the clear error.
            finals: dict[int, list] = {}
            deadline = time.monotonic() + 30
            while len(finals) < 450 and time.monotonic() < deadline:
                if reader.poll(500):
                    for msg in msgpack.unpackb(reader.recv())[1:]:
                        if msg[0] in (wire.RESULT, wire.FAILED):
                            assert msg[1] not in finals, f"request {msg[1]} ended twice"
                            finals[msg[1]] = msg
            assert sorted(finals) == list(range(1, 451))
            failed = [m for m in finals.values() if m[0] == wire.FAILED]
            assert failed and all("not reading its answers" in m[3] for m in failed)
            assert all(finals[c][0] == wire.FAILED for c in range(401, 451))
            # Having read everything, it is served again.
            wait_for(lambda: status(sup)["gateway"]["backlog"]["clients"] == 0, 30, "the backlog to empty")
            reader.send(msgpack.packb([wire.VERSION, [wire.SUBMIT, 999, {"n": 1, "size": 1}, False, 30.0]]))
            assert reader.poll(30_000)
            assert msgpack.unpackb(reader.recv())[1:] == [[wire.RESULT, 999, ["000000x"]]]
        finally:
            reader.close(linger=0)
