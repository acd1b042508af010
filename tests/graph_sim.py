"""The runtime's message flow in one process, without sockets: a test harness.

Each stage instance is the runtime's own stage logic (``stage_kind(kind).build``) behind
the runtime's own graph input/output (:class:`~alto_bus.runtime.graph_io.GraphIO`: merges,
forks, routes, turns), answering through an emitter that does what the worker does with
each call. Messages travel on FIFO links, one per (sender instance, receiver instance)
pair, as over a ZeroMQ PUSH socket; which link delivers next is drawn at random, so a
run is one random interleaving. Keyed stages get every message of a group at one
instance (a hash of the group), others any instance. The gateway is the runtime's
request book (:class:`~alto_bus.control.request_book.Gateway`).
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from typing import Any

from alto_bus.control.request_book import Gateway
from alto_bus.deploy.topology import StageConfig, Topology
from alto_bus.protocol import wire
from alto_bus.protocol.messages import Data, Drop, End, Error, Message
from alto_bus.runtime.graph_io import GraphIO, needs_graph_io
from alto_bus.runtime.kinds import stage_kind

GATEWAY = "@gateway"


class _Instance:
    """One stage instance: the runtime's stage logic, and the worker's side of it."""

    def __init__(self, sim: Simulation, config: StageConfig, index: int) -> None:
        self.sim = sim
        self.config = config
        self.stage = config.name
        self.id = (config.name, index)
        self.logic = stage_kind(config.kind).build(config)
        self.logic.bind(self)
        self.io = GraphIO(config, self._send, self.error) if needs_graph_io(config) else None

    # -- the Emitter the logic calls (the worker's data/end/drop/error) --

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int, trace: str | None = None) -> None:
        if self.io is None:
            self._send(0, Data(path, seq, payload, final, epoch, trace), False)
        else:
            self.io.data(path, seq, payload, final, epoch, trace)

    def end(self, path: list, n: int, epoch: int) -> None:
        if self.io is None:
            self._send(0, End(path, n, epoch), False)
        else:
            self.io.end(path, n, epoch)

    def drop(self, path: list, epoch: int) -> None:
        if self.io is None:
            self._send(0, Drop(path, epoch), False)
        else:
            self.io.drop(path, epoch)

    def error(self, path: list, message: str, epoch: int) -> None:
        self.sim.post(self.id, GATEWAY, Error(path, self.stage, message, epoch), 0)

    def spawn(self, rid: int, work: Any) -> None:
        raise AssertionError("the simulation runs sync handlers only")

    def _send(self, consumer: int, msg: Message, stream: bool) -> None:
        consumers = self.config.consumers
        if not consumers:
            self.sim.post(self.id, GATEWAY, msg, 0)
            return
        target = self.sim.stages[consumers[consumer]]
        self.sim.post(self.id, self.sim.instance_for(target, msg), msg, target.inputs.index(self.stage))

    # -- the worker's inbox --

    def receive(self, msg: Message, index: int) -> None:
        for m in (self.io.incoming([msg], index) if self.io is not None else (msg,)):
            kind = type(m)
            if kind is Data:
                self.logic.on_data(m.path, m.seq, m.payload, m.final, m.epoch)
            elif kind is End:
                self.logic.on_end(m.path, m.n, m.epoch)
            elif kind is Drop:
                self.logic.on_drop(m.path, m.epoch)
            else:
                self.sim.post(self.id, GATEWAY, m, 0)


class Simulation:
    """A topology's instances (``replicas`` each) and the links between them."""

    def __init__(self, topology: Topology, seed: int, max_messages: int = 2_000_000) -> None:
        self.rng = random.Random(seed)
        self.stages = {s.name: s for s in topology.stages}
        self.instances = {(s.name, i): _Instance(self, s, i) for s in topology.stages for i in range(s.replicas)}
        self.entry = topology.stages[0]
        self.links: dict[tuple, deque] = {}
        self.ready: list[tuple] = []   # links with messages (a list: random.choice needs one)
        self.gateway = Gateway(request_timeout=3600.0, max_inflight=1 << 20)
        self.answers: dict[int, list] = {}   # cid -> the client-plane answer
        self.max_messages = max_messages

    def instance_for(self, target: StageConfig, msg: Message) -> tuple:
        kd = target.key_depth
        if kd is not None and len(msg.path) >= kd:
            owner = zlib.crc32(repr(list(msg.path[:kd])).encode()) % target.replicas
        else:
            owner = self.rng.randrange(target.replicas)
        return (target.name, owner)

    def post(self, src: tuple | str, dst: tuple | str, msg: Message, index: int) -> None:
        link = (src, dst)
        q = self.links.get(link)
        if q is None:
            q = self.links[link] = deque()
        if not q:
            self.ready.append(link)
        q.append((msg, index))

    def submit(self, payloads: list[Any]) -> list[int]:
        """Admit the requests and send each its first item; returns their request ids."""
        rids = []
        for cid, payload in enumerate(payloads):
            rid = self.gateway.admit(b"client", cid, False, None, 0.0)
            assert isinstance(rid, int), rid
            rids.append(rid)
            self.post("client", self.instance_for(self.entry, Data([rid], 0, payload, True, 0)),
                      Data([rid], 0, payload, True, 0), 0)
        return rids

    def run(self) -> dict[int, list]:
        """Deliver every message, one link at a time in random order; the answers by cid."""
        sent = 0
        while self.ready:
            sent += 1
            if sent > self.max_messages:
                raise AssertionError(f"more than {self.max_messages} messages: a loop that never ends?")
            i = self.rng.randrange(len(self.ready))
            link = self.ready[i]
            q = self.links[link]
            msg, index = q.popleft()
            if not q:
                self.ready[i] = self.ready[-1]
                self.ready.pop()
            dst = link[1]
            if dst == GATEWAY:
                out: list = []
                self.gateway.on_message(msg, out)
                for _, answer in out:
                    self.answers[answer[1]] = answer
            else:
                self.instances[dst].receive(msg, index)
        return self.answers


def outcome(answer: list | None) -> tuple:
    """``("result", value)`` or ``("error", stage, message)`` of a client-plane answer."""
    if answer is None:
        return ("no answer",)
    if answer[0] == wire.RESULT:
        return ("result", answer[2])
    return ("error", answer[2], answer[3])


def mismatch(reference: Any, payload: Any, rid: int, got: tuple) -> str | None:
    """What is wrong with ``got`` (an :func:`outcome`) for ``payload``, by the reference
    interpreter (a :class:`~alto_bus.graph.reference.Reference`); None when it is right.
    An error must be one the request meets (which comes first depends on timing)."""
    from alto_bus.graph.reference import GraphRunError

    try:
        want = ("result", reference.run(payload, rid))
    except GraphRunError as exc:
        if got[0] == "error" and any(f.matches(got[1], got[2]) for f in exc.errors):
            return None
        return f"payload {payload!r}: expected an error among {list(exc.errors)}, got {got!r}"
    if got[0] == "result" and _plain(got[1]) == _plain(want[1]):
        return None
    return f"payload {payload!r}: expected {want!r}, got {got!r}"


def _plain(value: Any) -> Any:
    """As it arrives over the wire (tuples become lists)."""
    import msgpack

    return msgpack.unpackb(msgpack.packb(value), strict_map_key=False)
