"""A stage instance: inbox, handler loop, outboxes, backpressure; a thread or a coroutine.

One asyncio loop owns the data plane: it binds one PULL inbox, decodes each frame
(a batch of messages), hands the messages to the stage's logic, and coalesces what
the logic emits into one frame per (destination, stage), sent when the input runs dry,
when a batch reaches ``batch_bytes``, or ``flush_ms`` after the first message of a
batch produced by asynchronous work. A send that would block parks the frame and stops
the inbox loop until the peer takes it: a slow stage slows its senders, and the chain
of full queues reaches the gateway, which refuses new requests as overloaded.

The control plane runs in its own thread (:mod:`alto_bus.runtime.control_link`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import random
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from alto_bus.protocol import wire
from alto_bus.runtime.control_link import ControlLink
from alto_bus.routing.keytable import KeyTable
from alto_bus.routing.choice import LoadView, pow2_choice
from alto_bus.routing.pool_route import PoolRoute
from alto_bus.net.sockets import advertised, bound_address, make_socket
from alto_bus.runtime.stage import FunctionStage, StageLogic, describe
from alto_bus.deploy.topology import StageConfig, add_handler_dir
from alto_bus.runtime.kinds import stage_kind

log = logging.getLogger("alto.worker")

GATEWAY = 0  # destination id of the gateway's results inbox


# Ids of requests that ended early, remembered so their late items are skipped.
CANCELLED_MEMORY = 100_000

# Request ids an outbox remembers beyond its recent window (until the broker says they
# ended): a bound for when "ended" notices go missing. A request in flight stays in memory.
OLDER_MEMORY = 200_000


class WorkerError(RuntimeError):
    """The worker could not join or keep its place in the topology."""


class Outbox:
    """One PUSH to one destination, its coalescing batches and its parked frames."""

    __slots__ = ("dest", "address", "asock", "sock", "batches", "backlog", "sender", "recent", "older")

    def __init__(self, dest: int, address: str, asock: zmq.asyncio.Socket) -> None:
        self.dest = dest
        self.address = address
        self.asock = asock
        self.sock = zmq.Socket.shadow(asock.underlying)  # sync sends on the hot path
        self.batches: dict[str, wire.FrameBuilder] = {}
        self.backlog: collections.deque[bytes] = collections.deque()
        self.sender: asyncio.Task | None = None
        # Request ids sent here, one set per heartbeat interval (newest last): if the peer
        # dies, these may have died with it, unreported (the broker fails them).
        self.recent: collections.deque[set[int]] = collections.deque([set()])
        # Sent here before that window and not ended yet. Having sent them long ago proves
        # nothing: under load they wait in the peer's inbox, in no "held" report, for as long
        # as its queue is. The broker checks these when the peer dies (ended, or held by a
        # live instance: fine; else failed).
        self.older: dict[int, None] = {}

    def rotate(self, keep: int, ended: list[int]) -> None:
        """A heartbeat interval passed: a new generation of sent ids; forget ended requests."""
        older = self.older
        recent = self.recent
        if ended:
            for gen in recent:
                gen.difference_update(ended)
            for rid in ended:
                older.pop(rid, None)
        recent.append(set())
        while len(recent) > keep:
            older.update(dict.fromkeys(recent.popleft()))
        if len(older) > OLDER_MEMORY:
            log.warning("instance %d: %d requests sent there without word that they ended; forgetting "
                        "the oldest", self.dest, len(older))
            for rid in list(itertools.islice(older, len(older) - OLDER_MEMORY)):
                del older[rid]


class Worker:
    """One instance of a stage. Embed it in a process, or let ``alto worker`` run it.

    ``handler`` is a callable (see :class:`~alto_bus.runtime.stage.FunctionStage`) or a
    :class:`~alto_bus.runtime.stage.StageLogic`; when omitted, the stage's kind and fields from
    the topology the broker serves decide it.
    """

    def __init__(
        self,
        stage: str,
        handler: Callable[..., Any] | StageLogic | None = None,
        broker: str = "tcp://127.0.0.1:5555",
        *,
        inbox: str | None = None,
        advertise: str | None = None,
        connect_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        broker_timeout: float | None = None,
        seed: int | None = None,
        logic_factory: Callable[[StageConfig], StageLogic] | None = None,
        labels: dict[str, Any] | None = None,
        curve: Any = None,
        host: str | None = None,
    ) -> None:
        self.stage = stage
        self.curve = curve  # alto_bus.net.curve.Curve: CURVE on every link (the broker says whom the inbox lets in)
        self.host = host or socket.gethostname()  # the name the broker reports (a [[host]] name in a cluster)
        self._recent_keep = 6  # heartbeat intervals of request ids kept per outbox (liveness + 2)
        self.broker = broker
        self._handler = handler
        self._logic_factory = logic_factory  # builds the stage from its config (a pool's shared engine)
        self._labels = labels or {}          # sent with "ready": e.g. the pool and member it belongs to
        self._pool_route: PoolRoute | None = None
        self._inbox_addr = inbox
        self._advertise = advertise
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self.broker_timeout = broker_timeout
        self.rng = random.Random(seed if seed is not None else os.getpid() ^ id(self))
        self.iid: int | None = None
        self.address: str | None = None
        self.config: StageConfig | None = None
        self.logic: StageLogic | None = None
        self.loads = LoadView()
        self.stats = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._control: ControlLink | None = None
        self._events: dict[str, asyncio.Future] = {}
        self._stop_now = False
        self._draining = False
        self._left_epoch: int | None = None  # the epoch that took this instance out of routing
        self._oldest_epoch = 0                # oldest epoch a request in flight uses (broker's loads)
        self._wakeup: asyncio.Event | None = None
        self._inbox: zmq.Socket | None = None
        self._paused = False
        self._last_input = 0.0
        self._outs: dict[int, Outbox] = {}
        self._blocked: set[int] = set()
        self._next_ids: list[int] = []
        self._table: dict[str, Any] = {"epoch": 0, "stages": {}}
        self._tables: dict[int, dict[str, Any]] = {}     # epoch -> table, epochs still in flight
        self._keys: dict[int, KeyTable] = {}              # epoch -> key table of the next stage
        self._addresses: dict[int, str] = {}              # every next-stage instance of a live epoch
        self._dead: set[int] = set()
        self._next_key_depth: int | None = None
        self._cancelled: dict[int, None] = {}
        self._results_addr: str | None = None
        self._parked: list[tuple[list, list]] = []
        self._sticky: dict[tuple, int] = {}
        self._inflight: collections.Counter[int] = collections.Counter()
        self._inflight_total = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._in_burst = False

    # -- embedding API -----------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Worker:
        """Run in a background thread; returns once registered (raises WorkerError if not)."""
        self._thread = threading.Thread(target=self._thread_main, name=f"alto-worker-{self.stage}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout or self.connect_timeout + 5):
            raise WorkerError(f"worker for stage {self.stage!r} did not register within the timeout")
        if self._start_error is not None:
            self._thread.join(5)
            raise self._start_error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Leave the topology gracefully (drain), then return. For ``start()`` workers."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout or self.drain_timeout + 5)
            if self._thread.is_alive():
                raise WorkerError(f"worker for stage {self.stage!r} did not stop in time")

    def request_stop(self, drain: bool = True) -> None:
        """Ask the worker to stop (thread-safe): drain first, or stop now."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._begin_stop, drain)
        except RuntimeError:
            pass  # the loop already stopped

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.run())
        except BaseException as exc:  # before registration run() reports it to start()
            if self._start_error is None:
                log.error("worker for stage %s stopped with an error: %s", self.stage, describe(exc))

    async def run(self) -> None:
        """Join the topology and serve until stopped (``request_stop`` or the broker)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._control = ControlLink(zmq.Context.instance(), self.broker, self._deliver, self._snapshot,
                                    broker_timeout=self.broker_timeout,
                                    curve=self.curve.to_broker("control link") if self.curve else None)
        self._control.start()
        inbox = None
        try:
            self._control.send("hello", {"stage": self.stage, "pid": os.getpid(), "host": self.host})
            welcome = await self._expect("welcome", f"the broker at {self.broker} did not answer")
            self.config = StageConfig.from_dict(welcome["config"])
            if welcome.get("next"):
                self._next_key_depth = StageConfig.from_dict(welcome["next"]).key_depth
            if welcome.get("next_pool"):
                from alto_bus.scheduling import make_policy

                np = welcome["next_pool"]
                self._pool_route_pool = np["name"]
                self._pool_route = PoolRoute(welcome["next"]["name"],
                                             make_policy(np["policy"], **(np.get("policy_args") or {})),
                                             own=self.stage)
            self._results_addr = welcome["results"]
            self._recent_keep = int(welcome.get("liveness", 4)) + 2
            self.logic = self._build_logic(self.config)
            self.logic.bind(self)
            await self.logic.start()
            # "{instance}" in an ipc inbox keeps the paths of replicas apart.
            bind = (self._inbox_addr or self.config.inbox).replace("{instance}", f"{os.getpid()}-{id(self):x}")
            inbox = make_socket(zmq.Context.instance(), zmq.PULL, bind=bind,
                                hwm=1000, curve=self.curve.with_allowed(welcome.get("allowed", ())).server(
                                    f"stage {self.stage} inbox") if self.curve else None)
            self.address = advertised(bound_address(inbox), self._advertise or self.config.advertise)
            if self.curve:  # senders learn the inbox's public key with its address
                self.address = self.curve.advertise(self.address)
            self._control.send("ready", {"stage": self.stage, "address": self.address,
                                         "pid": os.getpid(), "host": self.host, **self._labels})
            registered = await self._expect("registered", "the broker did not confirm the registration")
            self.iid = int(registered["iid"])
            log.info("stage %s: instance %d serving on %s", self.stage, self.iid, self.address)
            self._started.set()
            await self._serve(inbox)
        except BaseException as exc:
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            raise
        finally:
            await self._close(inbox)

    async def wait_registered(self, timeout: float | None = None) -> None:
        """For ``run()`` in the host's loop: returns once registered, raises if joining failed."""
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, self._started.wait, timeout or self.connect_timeout + 5)
        if not ok:
            raise WorkerError(f"worker for stage {self.stage!r} did not register in time")
        if self._start_error is not None:
            raise self._start_error

    # -- control events (delivered from the control thread) ----------------------------

    def _deliver(self, op: str, body: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._on_control, op, body)
            except RuntimeError:
                pass

    async def _expect(self, op: str, why: str) -> dict:
        fut = self._loop.create_future()
        self._events[op] = fut
        reject = self._loop.create_future()
        self._events["reject"] = reject
        done, _ = await asyncio.wait({fut, reject}, timeout=self.connect_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if reject in done:
            raise WorkerError(f"the broker refused stage {self.stage!r}: {reject.result().get('reason')}")
        if fut not in done:
            raise WorkerError(f"{why} within {self.connect_timeout:g} s")
        return fut.result()

    def _on_control(self, op: str, body: dict) -> None:
        fut = self._events.pop(op, None)
        if fut is not None and not fut.done():
            fut.set_result(body)
        if op == "table":
            self._apply_table(body)
        elif op == "loads":
            self.loads.update({int(k): int(v) for k, v in body.get("loads", {}).items()})
            ended = body.get("ended", [])
            for out in self._outs.values():  # one heartbeat interval: a new generation of sent ids
                out.rotate(self._recent_keep, ended)
            self._oldest_epoch = int(body.get("oldest", 0))
            self._forget_epochs_before(self._oldest_epoch)
            route = self._pool_route
            if route is not None:
                pool = self._pool_route_pool
                route.update(body.get("placements", {}).get(pool), body.get("member_loads", {}).get(pool))
        elif op == "left":
            self._left_epoch = int(self._table["epoch"])  # that table came just before "left"
        elif op == "cancel":
            self._cancel(body.get("rids", []))
        elif op == "shutdown":
            self._begin_stop(drain=False)
        elif op == "broker_lost":
            log.error("stage %s: the broker has been silent for %.0f s; stopping", self.stage, body["silent"])
            self._begin_stop(drain=False)
        elif op == "registered" and self.iid is not None:
            self.iid = int(body["iid"])  # re-registered after a broker restart
        elif op == "error":
            log.warning("the broker says: %s", body.get("reason"))

    def _begin_stop(self, drain: bool = True) -> None:
        if drain and not self._draining and self.iid is not None and not self._stop_now:
            self._draining = True
            self._control.send("leave", {})
            self._loop.call_later(self.drain_timeout, self._drain_expired)
        else:
            self._stop_now = True
        self._wakeup.set()

    def _drain_expired(self) -> None:
        if not self._stop_now:
            log.warning("stage %s: not drained after %g s; leaving (the broker fails what it holds)",
                        self.stage, self.drain_timeout)
            self._stop_now = True
            self._wakeup.set()

    def _snapshot(self) -> dict[str, Any]:
        """Heartbeat body (called from the control thread: copies only)."""
        logic = self.logic
        held = set(self._inflight)
        depth = self._inflight_total
        body: dict[str, Any] = {"depth": depth, "stats": dict(self.stats)}
        if logic is not None:
            held.update(logic.held())
            body["depth"] = depth + logic.depth()
            prompt_stats = getattr(logic, "prompt_stats", None)
            if prompt_stats is not None:
                body["prompt"] = prompt_stats()
        if self._pool_route is not None:
            body["spills"] = self._pool_route.policy.drain_spills()
        body["held"] = list(held)[:100_000]
        return body

    # -- routing tables ----------------------------------------------------------------

    def _apply_table(self, table: dict) -> None:
        epoch = int(table["epoch"])
        self._table = table
        self._tables[epoch] = table
        self._results_addr = table.get("results", self._results_addr)
        self._dead.update(int(i) for i in table.get("dead", ()))
        nxt = self.config.next if self.config else None
        self._next_ids = [int(iid) for iid, _ in table["stages"].get(nxt, [])] if nxt else []
        if self._pool_route is not None:
            self._pool_route.members({int(k): v for k, v in table.get("members", {}).items()}, self._next_ids,
                                     len(table["stages"].get(self.stage, ())))
        keys = table.get("keys", {}).get(nxt) if nxt else None
        if keys is not None:
            self._keys[epoch] = KeyTable.from_dict(keys)
        self._refresh_addresses()
        if self._parked and (self._next_ids or nxt is None):
            parked, self._parked = self._parked, []
            for msg, path in parked:
                self._route(msg, path)
            self._flush_all()

    def _forget_epochs_before(self, oldest: int) -> None:
        """Tables of epochs no request in flight uses any more are dropped."""
        current = int(self._table["epoch"])
        stale = [e for e in self._tables if e < oldest and e != current]
        if stale:
            for e in stale:
                del self._tables[e]
                self._keys.pop(e, None)
            self._refresh_addresses()

    def _refresh_addresses(self) -> None:
        nxt = self.config.next if self.config else None
        live: dict[int, str] = {}
        for table in self._tables.values():
            for iid, addr in table["stages"].get(nxt, []) if nxt else []:
                if int(iid) not in self._dead:
                    live[int(iid)] = addr
        self._addresses = live
        for dest in [d for d in self._outs if d != GATEWAY and d not in live]:
            self._drop_outbox(dest, "died" if dest in self._dead else "left the routing table")
        self._sticky = {p: d for p, d in self._sticky.items() if d in live or d == GATEWAY}

    def _address_of(self, dest: int) -> str:
        return self._results_addr if dest == GATEWAY else self._addresses[dest]

    def _cancel(self, rids: list[int]) -> None:
        cancelled = self._cancelled
        for rid in rids:
            cancelled[rid] = None
        while len(cancelled) > CANCELLED_MEMORY:
            del cancelled[next(iter(cancelled))]
        if self.logic is not None:
            self.logic.cancel(set(rids))

    def _outbox(self, dest: int) -> Outbox:
        out = self._outs.get(dest)
        if out is None:
            address = self._address_of(dest)
            curve = None if self.curve is None else (
                self.curve.to_broker("results") if dest == GATEWAY else self.curve.to_peer(f"instance {dest}"))
            asock = make_socket(zmq.asyncio.Context.instance(), zmq.PUSH, connect=address, immediate=True,
                                curve=curve)
            out = self._outs[dest] = Outbox(dest, address, asock)
        return out

    def _drop_outbox(self, dest: int, why: str) -> None:
        out = self._outs.pop(dest)
        if out.sender is not None:
            out.sender.cancel()
        frames = list(out.backlog) + [b.take() for b in out.batches.values() if len(b)]
        rids: set[int] = set()
        for frame in frames:
            try:
                _, msgs = wire.decode_frame(frame)
                rids.update(m[1][0] for m in msgs)
            except (wire.WireError, IndexError, TypeError):
                continue
        if why == "died":
            # Unsent, and sent lately (maybe never read): the broker fails them, naming the
            # instance's stage and host. Sent earlier and not ended: the broker fails them
            # unless live work holds them. Never a hang.
            rids.update(*out.recent)
            ordered = sorted(rids)
            older = sorted(r for r in out.older if r not in rids)
            for i in range(0, max(len(ordered), len(older)), 50_000):  # bounded control frames
                self._control.send("lost", {"iid": dest, "rids": ordered[i:i + 50_000],
                                            "older": older[i:i + 50_000]})
            rids = set()
        for rid in rids:  # their items are lost with the peer: say so, never hang
            self.error([rid], f"instance {dest} of stage {self.config.next!r} {why} "
                              f"with {len(frames)} unsent frame(s)", 0)
        out.asock.close(linger=0)
        self._blocked.discard(dest)
        self._resume()

    # -- Emitter: what stage logic calls -----------------------------------------------

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        self._route([wire.DATA, path, seq, payload, final, epoch], path, stream=not (final and seq == 0))

    def end(self, path: list, n: int, epoch: int) -> None:
        self._route([wire.END, path, n, epoch], path)

    def drop(self, path: list, epoch: int) -> None:
        self._route([wire.DROP, path, epoch], path)

    def error(self, path: list, message: str, epoch: int) -> None:
        self.stats["errors"] += 1
        self._send(self._outbox(GATEWAY), [wire.ERROR, path, self.stage, message, epoch], self.stage)

    def spawn(self, rid: int, work: Awaitable[None]) -> None:
        self._inflight[rid] += 1
        self._inflight_total += 1
        task = self._loop.create_task(work)
        task.add_done_callback(lambda t, rid=rid: self._work_done(t, rid))

    def _work_done(self, task: asyncio.Task, rid: int) -> None:
        self._inflight_total -= 1
        left = self._inflight[rid] - 1
        if left:
            self._inflight[rid] = left
        else:
            del self._inflight[rid]
        if not task.cancelled() and task.exception() is not None:
            self.error([rid], f"stage raised {describe(task.exception())}", 0)
        self._resume()
        if self._draining:
            self._wakeup.set()

    def _route(self, msg: list, path: list, stream: bool = False) -> None:
        nxt = self.config.next
        if nxt is None:
            dest = GATEWAY
        else:
            kd = self._next_key_depth
            if kd is not None and len(path) >= kd:
                dest = self._key_owner(msg, path, kd)
                if dest is None:
                    return
                self._send(self._outbox(dest), msg, nxt)
                return
            ids = self._next_ids
            if not ids:
                self._parked.append((msg, path))
                return
            if stream:  # every chunk of one streamed item goes to the same instance
                key = tuple(path)
                dest = self._sticky.get(key)
                if dest is None:
                    dest = self._sticky[key] = self._pick(ids)
                if msg[4]:
                    del self._sticky[key]
            elif msg[0] == wire.DATA:
                dest = self._pick(ids)
            else:  # END/DROP markers are not LM requests: keep them out of a pool's policy
                dest = pow2_choice(ids, self.loads, self.rng)
            self.loads.note_sent(dest)
        self._send(self._outbox(dest), msg, nxt or self.stage)

    def _pick(self, ids: list[int]) -> int:
        route = self._pool_route
        if route is not None:
            dest = route.pick()
            if dest is not None and dest in self._addresses:
                return dest
        return pow2_choice(ids, self.loads, self.rng)

    def _key_owner(self, msg: list, path: list, kd: int) -> int | None:
        """The owner of this item's group in the request's epoch (None: parked or failed)."""
        epoch = msg[-1]
        table = self._keys.get(epoch)
        if table is None:
            if epoch > self._table["epoch"] or not self._keys:
                self._parked.append((msg, path))  # that epoch's table is on its way
                if len(self._parked) > 100_000:
                    self._fail_parked()
            else:
                self.error(path[:1], f"no key table for epoch {epoch} of stage {self.config.next!r}", epoch)
            return None
        dest = table.owner(tuple(path[:kd]))
        if dest in self._dead:
            self.error(path[:1], f"instance {dest} of stage {self.config.next!r}, owner of group "
                                 f"{path[1:kd]} in epoch {epoch}, died", epoch)
            return None
        return dest

    def _fail_parked(self) -> None:
        parked, self._parked = self._parked, []
        for rid in {p[0] for _, p in parked}:
            self.error([rid], f"stage {self.config.next!r} has no routing table for this request", 0)

    def _send(self, out: Outbox, msg: list, stage: str) -> None:
        if out.dest:  # not the gateway
            out.recent[-1].add(msg[1][0])
        batch = out.batches.get(stage)
        if batch is None:
            batch = out.batches[stage] = wire.FrameBuilder(stage)
        if batch.add(msg) >= self.config.batch_bytes:
            self._flush_out(out)
        elif not self._in_burst and self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self.config.flush_ms / 1000, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_handle = None
        self._flush_all()

    def _flush_all(self) -> None:
        for out in list(self._outs.values()):
            self._flush_out(out)

    def _flush_out(self, out: Outbox) -> None:
        for batch in out.batches.values():
            if len(batch):
                out.backlog.append(batch.take())
        if out.sender is not None:
            return  # the sender task owns the order of what is parked
        backlog = out.backlog
        while backlog:
            try:
                out.sock.send(backlog[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._blocked.add(out.dest)
                out.sender = self._loop.create_task(self._send_parked(out))
                return
            backlog.popleft()
            self.stats["frames_out"] += 1

    async def _send_parked(self, out: Outbox) -> None:
        try:
            while out.backlog:
                await out.asock.send(out.backlog[0], copy=False)
                out.backlog.popleft()
                self.stats["frames_out"] += 1
        finally:
            out.sender = None
            self._blocked.discard(out.dest)
            self._resume()

    # -- the inbox loop ----------------------------------------------------------------

    async def _serve(self, inbox: zmq.Socket) -> None:
        # The inbox is read from a reader callback, not a coroutine: a frame costs no
        # future, no task switch. ZeroMQ's FD is edge-triggered, so every read drains
        # until EAGAIN (or hands the rest to the next turn of the loop).
        loop = self._loop
        self._inbox = inbox
        fd = inbox.getsockopt(zmq.FD)
        loop.add_reader(fd, self._on_readable)
        self._on_readable()
        quiet = 2 * (self._control.heartbeat_interval or 0.5)
        try:
            while not self._stop_now:
                self._wakeup.clear()
                if not self._draining:
                    await self._wakeup.wait()
                    continue
                try:
                    await asyncio.wait_for(self._wakeup.wait(), quiet)
                except asyncio.TimeoutError:
                    if self._idle() and loop.time() - self._last_input >= quiet:
                        break  # drained: quiet for two heartbeats and nothing in hand
        finally:
            loop.remove_reader(fd)

    def _resume(self) -> None:
        if self._paused and not self._blocked and self._inflight_total < self.config.concurrency:
            self._paused = False
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        if self._stop_now:
            return
        if self._blocked or self._inflight_total >= self.config.concurrency:
            self._paused = True  # backpressure: stop reading until _resume()
            return
        sock = self._inbox
        n = 0
        more = False
        self._in_burst = True
        try:
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    more = bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
                    break
                self._on_frame(frame)
                n += 1
                if n >= 256 or self._blocked or self._inflight_total >= self.config.concurrency:
                    more = True
                    break
        finally:
            self._in_burst = False
        if n:
            self._last_input = self._loop.time()
            self._flush_all()
        if more:
            self._loop.call_soon(self._on_readable)

    def _idle(self) -> bool:
        # Stage state counts too: a draining aggregate keeps its open groups of older epochs.
        return (not self._inflight_total and not self._blocked
                and not any(o.backlog for o in self._outs.values())
                and not (self.logic is not None and any(True for _ in self.logic.held()))
                and not self._owns_old_keys())

    def _owns_old_keys(self) -> bool:
        # Senders route a keyed hop by the request's epoch: a draining instance of a keyed
        # stage still owns keys until no request of an epoch it was routable in is in flight
        # (their items may not have reached it yet).
        if not self._draining or self.config is None or self.config.key_depth is None:
            return False
        return self._left_epoch is None or self._oldest_epoch < self._left_epoch

    def _on_frame(self, frame: bytes) -> None:
        self.stats["frames_in"] += 1
        try:
            stage, msgs = wire.decode_frame(frame)
        except wire.WireError as exc:
            self._bad(str(exc))
            return
        if stage != self.stage:
            self._bad(f"frame for stage {stage!r} reached an instance of {self.stage!r}")
            return
        logic = self.logic
        cancelled = self._cancelled
        for msg in msgs:
            try:
                kind = wire.check_message(msg)
            except wire.WireError as exc:
                self._bad(str(exc))
                continue
            if cancelled and msg[1][0] in cancelled:
                continue
            try:
                if kind == wire.DATA:
                    logic.on_data(msg[1], msg[2], msg[3], msg[4], msg[5])
                elif kind == wire.END:
                    logic.on_end(msg[1], msg[2], msg[3])
                elif kind == wire.DROP:
                    logic.on_drop(msg[1], msg[2])
                else:  # an ERROR belongs to the gateway; pass it on
                    self._send(self._outbox(GATEWAY), msg, self.stage)
            except Exception as exc:  # a bug in stage logic must not take the worker down
                log.exception("stage %s failed on a %s message", self.stage, wire.KIND_NAMES[kind])
                self.error([msg[1][0]], f"stage failed: {describe(exc)}", 0)
        self.stats["messages_in"] += len(msgs)

    def _bad(self, what: str) -> None:
        n = self.stats["bad_frames"] = self.stats["bad_frames"] + 1
        if n <= 20 or n % 1000 == 0:
            log.warning("stage %s: dropped a malformed message (%d so far): %s", self.stage, n, what)

    def _build_logic(self, config: StageConfig) -> StageLogic:
        add_handler_dir(config.base_dir)
        if self._logic_factory is not None:
            return self._logic_factory(config)
        handler = self._handler
        if isinstance(handler, StageLogic):
            return handler
        if handler is not None:
            return FunctionStage(handler)
        return stage_kind(config.kind).build(config)

    async def _close(self, inbox: zmq.Socket | None) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        try:
            if self.logic is not None:
                await self.logic.close()
        except Exception as exc:
            log.warning("stage %s: close failed: %s", self.stage, describe(exc))
        try:
            self._flush_all()
            pending = [o.sender for o in self._outs.values() if o.sender is not None]
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        finally:
            # Cancelled senders must run to their end before their sockets close, or a
            # sender is left pending on a dead future and destroyed with the loop.
            senders = [o.sender for o in self._outs.values() if o.sender is not None]
            for task in senders:
                task.cancel()
            if senders:
                await asyncio.wait(senders, timeout=1.0)
            for out in self._outs.values():
                out.asock.close(linger=500)
            self._outs.clear()
            if inbox is not None:
                inbox.close(linger=0)
            if self._control is not None:
                if self.iid is not None:
                    self._control.send("bye", {})
                self._control.stop()
                await asyncio.get_running_loop().run_in_executor(None, self._control.join, 5)
