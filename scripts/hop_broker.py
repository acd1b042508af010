"""The fake broker of the one-hop benchmarks (bench_hop.py, bench_cluster.py, tests/bench).

It answers a worker's hello/ready with a stage config whose results address is the
benchmark's sink, so the worker joins and nothing but the hop is measured; it ignores
everything else the worker sends."""

from __future__ import annotations

import threading

import zmq

from alto_bus.net.curve import Curve
from alto_bus.net.sockets import bound_address, make_socket
from alto_bus.protocol import wire

# The hop stage: an entry stage (no input) whose items go straight to the results inbox.
HOP_STAGE = {"name": "hop", "kind": "function", "input": None, "replicas": 1, "inbox": "tcp://127.0.0.1:0",
             "advertise": None, "queue": 1000, "concurrency": 256, "flush_ms": 1.0, "batch_bytes": 65536,
             "fields": {}, "next": None, "fans_out": False, "out_depth": 1, "key_depth": None}


class FakeBroker(threading.Thread):
    """Register one worker of the hop stage; ``results`` is where its items go."""

    def __init__(self, results: str = "", host: str = "127.0.0.1", curve: Curve | None = None,
                 allowed: list[bytes] | None = None) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context.instance()
        self.sock = make_socket(self.ctx, zmq.ROUTER, bind=f"tcp://{host}:0",
                                curve=curve and curve.server("bench broker"))
        self.address = bound_address(self.sock)
        self.results = results
        self.allowed = allowed
        self.inbox: str | None = None
        self.identity: bytes | None = None
        self.registered = threading.Event()
        self.stopping = False

    def run(self) -> None:
        welcome = {"config": HOP_STAGE, "heartbeat_interval": 1.0, "liveness": 5}
        while not self.stopping:
            if not self.sock.poll(100):
                continue
            ident, frame = self.sock.recv_multipart()
            op, body = wire.decode_control(frame)
            if op == "hello":
                extra = {"allowed": self.allowed} if self.allowed is not None else {}
                self.sock.send_multipart([ident, wire.encode_control("welcome", {
                    **welcome, "results": self.results, **extra})])
            elif op == "ready":
                self.inbox, self.identity = body["address"], ident
                self.sock.send_multipart([ident, wire.encode_control("registered", {"iid": 1})])
                self.registered.set()

    def shutdown(self) -> None:
        if self.identity is not None:
            self.sock.send_multipart([self.identity, wire.encode_control("shutdown", {})])
        self.stopping = True
