"""A stage instance: inbox, handler loop, outboxes, backpressure; a thread or a coroutine.

One asyncio loop owns the data plane: it binds one PULL inbox, decodes each frame
(a batch of messages), hands the messages to the stage's logic, and coalesces what
the logic emits into one frame per (destination, stage), sent when the input runs dry,
when a batch reaches ``batch_bytes``, or ``flush_ms`` after the first message of a
batch produced by asynchronous work. What the first frame of a burst yields leaves
before more is read; the item of a lone message, at once in a frame of its own (the
low-load case: it waits for no batch). A send that would block parks the frame and stops
the inbox loop until the peer takes it: a slow stage slows its senders, and the chain
of full queues reaches the gateway, which refuses new requests as overloaded.

The worker ties the parts together; each has its own module, tested without sockets:
where an item goes (:mod:`alto_bus.routing.route_table`), the outboxes
(:mod:`alto_bus.runtime.outbox`), the inbox reader (:mod:`alto_bus.runtime.inbox`). The
control plane runs in its own thread (:mod:`alto_bus.runtime.control_link`); what each of
its messages does is :mod:`alto_bus.runtime.control_events`.
"""

from __future__ import annotations

import asyncio
import collections
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
from alto_bus.protocol.bad_frames import BadFrames
from alto_bus.protocol.messages import Data, Drop, End, Error, Message
from alto_bus.runtime.control_events import on_control
from alto_bus.runtime.control_link import ControlLink
from alto_bus.runtime.embedding import Embedded, WorkerError  # noqa: F401  (WorkerError: part of this module's interface)
from alto_bus.runtime.heartbeat import HeartbeatBoard, snapshot
from alto_bus.routing.consumer_routes import ConsumerRoutes
from alto_bus.routing.route_table import PARK, Fail, is_gateway
from alto_bus.runtime.graph_io import GraphIO, needs_graph_io
from alto_bus.runtime.inbox import Inbox, checked_messages
from alto_bus.runtime.outbox import Outbox, Outboxes
from alto_bus.runtime.parked_items import PARKED_MEMORY, ParkedItems
from alto_bus.runtime.request_deadlines import RequestDeadlines
from alto_bus.runtime.resend import Retrying
from alto_bus.net.sockets import advertised, bound_address, make_socket
from alto_bus.runtime.table_feed import TableFeed
from alto_bus.runtime.build_logic import build_logic
from alto_bus.runtime.stage import StageLogic, describe
from alto_bus.deploy.topology import StageConfig
from alto_bus.telemetry.stage_spans import traced

log = logging.getLogger("alto.worker")

# Ids of requests that ended early, remembered so their late items are skipped.
CANCELLED_MEMORY = 100_000


def _outbox_context() -> zmq.asyncio.Context:
    """The asyncio view of the process's one ZeroMQ context (made once: every outbox shares it)."""
    global _OUTBOX_CONTEXT
    if _OUTBOX_CONTEXT is None or _OUTBOX_CONTEXT.underlying != zmq.Context.instance().underlying:
        _OUTBOX_CONTEXT = zmq.asyncio.Context(shadow=zmq.Context.instance())
    return _OUTBOX_CONTEXT


_OUTBOX_CONTEXT: zmq.asyncio.Context | None = None


class Worker(Embedded):
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
        self.broker = broker
        self._handler = handler
        self._logic_factory = logic_factory  # builds the stage from its config (a pool's shared engine)
        self._labels = labels or {}          # sent with "ready": e.g. the pool and member it belongs to
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
        self.tracing: Any = None  # the spans of this stage's items (alto_bus.telemetry; None: off)
        self.stats = collections.Counter()
        self.routes = ConsumerRoutes.unbound(stage, self.rng)  # replaced when the broker names the consumers
        self._io: GraphIO | None = None  # forks, routes, merges, loops (None: a link of a chain)
        self._deadlines = RequestDeadlines()  # each request's deadline, from the messages that carry it
        self.outboxes = Outboxes(self._connect, self._resume, self.stats,
                                 budget=lambda rid: self._deadlines.left_ms(rid, self._loop.time()))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._control: ControlLink | None = None
        self._events: dict[str, asyncio.Future] = {}
        self._stop_now = False
        self._bad_frames = BadFrames(log)
        self._heartbeats = HeartbeatBoard(lambda: snapshot(self))
        self.failed = False  # ended because a thread of its own failed (the process exits 1)
        self._draining = False
        self._drained = False  # left after a clean drain: nothing of its own to send again (retries)
        self._left_epoch: int | None = None  # the epoch that took this instance out of routing
        self._oldest_epoch = 0                # oldest epoch a request in flight uses (broker's loads)
        self._wakeup: asyncio.Event | None = None
        self._inbox = Inbox(self._on_frame, self._may_read, self.outboxes.flush_all)
        self._cancelled: dict[int, None] = {}
        self._retrying: Retrying | None = None  # retries: copies kept for resends, repeats dropped
        self._parked = ParkedItems()  # items waiting for a routing table
        self._feed = TableFeed()  # the broker's table views and loads reports, in sequence
        self._inflight: dict[int, set[asyncio.Task]] = {}  # the handler tasks of each request
        self._inflight_total = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._lone = False  # the next item out may go at once, alone (see _send)

    async def run(self) -> None:
        """Join the topology and serve until stopped (``request_stop`` or the broker)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._control = ControlLink(zmq.Context.instance(), self.broker, self._deliver, self._heartbeats.latest,
                                    broker_timeout=self.broker_timeout,
                                    curve=self.curve.to_broker("control link") if self.curve else None)
        self._control.start()
        inbox = None
        try:
            self._control.send("hello", {"stage": self.stage, "pid": os.getpid(), "host": self.host})
            welcome = await self._expect("welcome", f"the broker at {self.broker} did not answer")
            self.config = StageConfig.from_dict(welcome["config"])
            self.routes = ConsumerRoutes.from_welcome(self.stage, welcome, self.rng)
            for table in self.routes.tables:
                table.avoid = self.outboxes.blocked  # the same set: kept up to date by the outboxes
                table.parked = self.outboxes.parked_frames
            self.outboxes.window = int(welcome.get("liveness", 4)) + 2
            self._retrying = Retrying.attach(self, welcome)
            self.logic, self.tracing = traced(build_logic(self.config, self._handler, self._logic_factory), self)
            if needs_graph_io(self.config):  # after the logic: its handler directory is known
                self._io = GraphIO(self.config, self._route_to, self.error)
            self.logic.bind(self)
            await self.logic.start()
            # "{instance}" in an ipc inbox keeps the paths of replicas apart.
            bind = (self._inbox_addr or self.config.inbox).replace("{instance}", f"{os.getpid()}-{id(self):x}")
            inbox = make_socket(zmq.Context.instance(), zmq.PULL, bind=bind,
                                hwm=self.config.queue, curve=self.curve.with_allowed(welcome.get("allowed", ())).server(
                                    f"stage {self.stage} inbox") if self.curve else None)
            self.address = advertised(bound_address(inbox), self._advertise or self.config.advertise)
            if self.curve:  # senders learn the inbox's public key with its address
                self.address = self.curve.advertise(self.address)
            self._heartbeats.start(self._loop, float(welcome.get("heartbeat_interval", 0.5)))
            self._expire_deadlines()
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

    # -- control events (delivered from the control thread) ----------------------------

    def _deliver(self, op: str, body: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(on_control, self, op, body)
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

    # -- routing tables ----------------------------------------------------------------

    def _apply_table(self, table: dict) -> None:
        self.routes.apply(table)
        self._drop_gone()
        if self._retrying is not None:
            self._retrying.table_applied()
        if self._parked and self.routes.ready:
            for consumer, msg, path in self._parked.take():
                self._route(msg, path, consumer=consumer)
            self.outboxes.flush_all()

    def _drop_gone(self) -> None:
        for dest, why in self.routes.gone({d: o.address for d, o in self.outboxes.outs.items()}):
            self._drop_outbox(dest, why)

    def _cancel(self, rids: list[int]) -> None:
        cancelled = self._cancelled
        for rid in rids:
            cancelled[rid] = None
        while len(cancelled) > CANCELLED_MEMORY:
            del cancelled[next(iter(cancelled))]
        if self.logic is not None:
            self.logic.cancel(set(rids))
        self._forget(rids)

    def _forget(self, rids: list[int]) -> None:
        """These requests are over (they ended, were cancelled, or their deadline passed)."""
        if self._retrying is not None:
            self._retrying.forget(rids)
        self.routes.forget_requests(rids)
        if self._io is not None:
            self._io.forget(rids)
        self._deadlines.forget(rids)

    def _expire_deadlines(self) -> None:
        # By itself, without the broker: past a request's deadline (and grace) the gateway
        # has answered it, so nothing here is of use any more.
        rids = self._deadlines.expired(self._loop.time())
        if rids:
            before = self.stats["deadlines_expired"]
            self.stats["deadlines_expired"] += len(rids)
            if not before or before // 1000 != (before + len(rids)) // 1000:  # bounded: each thousand
                log.warning("stage %s: freed %d request(s) past their deadline with no word from the broker "
                            "that they ended (%d so far)", self.stage, len(rids), before + len(rids))
            self._cancel(rids)
            self.outboxes.forget(rids)
            self._parked.drop_requests(rids)
            for task in [t for rid in rids for t in self._inflight.get(rid, ())]:
                task.cancel()  # a handler still at it holds a concurrency slot for nothing
        if not self._stop_now:
            self._loop.call_later(self._control.heartbeat_interval or 0.5, self._expire_deadlines)

    def _connect(self, dest: int) -> tuple[str, zmq.asyncio.Socket]:
        address = self.routes.address(dest)
        curve = None
        if self.curve is not None:
            curve = (self.curve.to_broker("results") if is_gateway(dest)
                     else self.curve.to_peer(f"instance {dest}"))
        # On the inbox's context: one I/O thread to wake per message passed on, not two.
        return address, make_socket(_outbox_context(), zmq.PUSH, connect=address,
                                    hwm=self.routes.queue_of(dest), immediate=True, curve=curve)

    def _drop_outbox(self, dest: int, why: str) -> None:
        out, frames, rids = self.outboxes.drop(dest)
        if self._retrying is not None and self._retrying.dropped(dest, why, rids):
            pass  # a stage with retries: its items are sent again, nothing is lost
        elif why == "died":
            # Unsent, and sent lately (maybe never read): the broker fails them, naming the
            # instance's stage and host. Sent earlier and not ended: the broker fails them
            # unless live work holds them. Never a hang.
            for report in out.lost_reports(rids):
                self._control.send("lost", report)
        else:
            for rid in rids:  # their items are lost with the peer: say so, never hang
                self.error([rid], f"instance {dest} of stage {self.routes.consumer_of(dest)!r} {why} "
                                  f"with {frames} unsent frame(s)", 0)
        self._resume()

    # -- Emitter: what stage logic calls -----------------------------------------------

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int, trace: str | None = None) -> None:
        if self._io is None:
            self._route(Data(path, seq, payload, final, epoch, trace), path, stream=not (final and seq == 0))
        else:
            self._io.data(path, seq, payload, final, epoch, trace)

    def end(self, path: list, n: int, epoch: int) -> None:
        if self._io is None:
            self._route(End(path, n, epoch), path)
        else:
            self._io.end(path, n, epoch)

    def drop(self, path: list, epoch: int) -> None:
        if self._io is None:
            self._route(Drop(path, epoch), path)
        else:
            self._io.drop(path, epoch)

    def error(self, path: list, message: str, epoch: int) -> None:
        self.stats["errors"] += 1
        self._send(self.outboxes.get(self.routes.gateway_of(path[0])), Error(path, self.stage, message, epoch),
                   wire.GATEWAY_STAGE)

    def spawn(self, rid: int, work: Awaitable[None]) -> None:
        self._inflight_total += 1
        task = self._loop.create_task(work)
        self._inflight.setdefault(rid, set()).add(task)
        task.add_done_callback(lambda t, rid=rid: self._work_done(t, rid))

    def _work_done(self, task: asyncio.Task, rid: int) -> None:
        self._inflight_total -= 1
        tasks = self._inflight.get(rid)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._inflight[rid]
        if not task.cancelled() and task.exception() is not None:
            self.error([rid], f"stage raised {describe(task.exception())}", 0)
        self._resume()
        if self._draining:
            self._wakeup.set()

    def _route_to(self, consumer: int, msg: Message, stream: bool) -> None:
        self._route(msg, msg.path, stream, consumer)

    def _route(self, msg: Message, path: list, stream: bool = False, consumer: int = 0) -> None:
        dest = self.routes.tables[consumer].route(msg, path, stream)
        if dest is PARK:
            self._park(consumer, msg, path)
        elif isinstance(dest, Fail):
            self.error(dest.path, dest.reason, dest.epoch)
        else:
            self._send(self.outboxes.get(dest), msg, self.routes.targets[consumer])

    def _park(self, consumer: int, msg: Message, path: list) -> None:
        for rid in self._parked.add(consumer, msg, path):  # too many waiting: their requests fail
            self.error([rid], f"stage {'/'.join(self.config.consumers)!r} has no instance or no routing table for this "
                              f"request ({PARKED_MEMORY} items waiting)", 0)

    def _send(self, out: Outbox, msg: Message, stage: str | tuple[str, int]) -> None:
        if self._lone:  # the first item out of a burst's first frame, itself one message
            self._lone = False
            if self.outboxes.send_lone(out, msg, stage):
                return
        if out.add(msg, stage) >= self.config.batch_bytes:
            self.outboxes.flush(out)
        elif not self._inbox.in_burst and self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self.config.flush_ms / 1000, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_handle = None
        self.outboxes.flush_all()

    # -- the inbox loop ----------------------------------------------------------------

    async def _serve(self, inbox: zmq.Socket) -> None:
        loop = self._loop
        self._inbox.open(inbox)
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
                    if self._idle() and loop.time() - self._inbox.last_input >= quiet:
                        self._drained = True
                        break  # drained: quiet for two heartbeats and nothing in hand
        finally:
            self._inbox.close()

    def _may_read(self) -> bool:
        # Backpressure: no input while a peer has all it may park, or the stage has enough in hand.
        return (not self._stop_now and not (self.outboxes.blocked and self.outboxes.over_budget(self.routes.choices()))
                and self._inflight_total < self.config.concurrency)

    def _resume(self) -> None:
        self._inbox.resume()

    def _idle(self) -> bool:
        # Stage state counts too: a draining aggregate keeps its open groups of older epochs.
        return (not self._inflight_total and not self.outboxes.blocked
                and not self.outboxes.has_backlog()
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
        index, msgs = checked_messages(frame, self.stage, self.stats, self._bad, len(self.config.inputs))
        self._lone = self._inbox.first and len(msgs) == 1
        if self._retrying is not None:
            msgs = self._retrying.incoming(msgs, index)
        if self._io is not None:
            msgs = self._io.incoming(msgs, index)
        logic, cancelled = self.logic, self._cancelled
        for msg in msgs:
            if cancelled and msg.path[0] in cancelled:
                continue
            if msg.left_ms is not None:
                self._deadlines.note(msg.path[0], msg.left_ms, self._loop.time())
            kind = type(msg)
            try:
                if kind is Data:
                    if msg.trace is not None and self.tracing is not None:
                        self.tracing.carried(msg)  # the request is traced: this item's span
                    logic.on_data(msg.path, msg.seq, msg.payload, msg.final, msg.epoch)
                elif kind is End:
                    logic.on_end(msg.path, msg.n, msg.epoch)
                elif kind is Drop:
                    logic.on_drop(msg.path, msg.epoch)
                else:  # an ERROR belongs to the gateway; pass it on
                    self._send(self.outboxes.get(self.routes.gateway_of(msg.path[0])), msg, wire.GATEWAY_STAGE)
            except Exception as exc:  # a bug in stage logic must not take the worker down
                log.exception("stage %s failed on a %s message", self.stage, wire.kind_name(msg))
                self.error([msg.path[0]], f"stage failed: {describe(exc)}", 0)
        self._lone = False

    def _bad(self, exc: wire.WireError) -> None:
        self.stats["bad_frames"] += 1
        self._bad_frames("inbox", exc.reason, str(exc))

    async def _close(self, inbox: zmq.Socket | None) -> None:
        self._heartbeats.stop()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        try:
            if self.logic is not None:
                await self.logic.close()
        except Exception as exc:
            log.warning("stage %s: close failed: %s", self.stage, describe(exc))
        try:
            await self.outboxes.close()
        finally:
            if inbox is not None:
                inbox.close(linger=0)
            if self._control is not None:
                if self.iid is not None:
                    self._control.send("bye", {"drained": self._drained})
                self._control.stop()
                await asyncio.get_running_loop().run_in_executor(None, self._control.join, 5)
