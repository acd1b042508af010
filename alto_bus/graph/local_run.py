"""A validated topology run in this process: the real broker on a thread, a real worker per replica.

For tests and notebooks (``Graph.run()``): the same Broker and Worker classes as ``alto
launch`` runs in processes, the same sockets on loopback, so what runs here behaves as it
does there. Stopping is always complete: the client, then the instances (at once, not
drained: the run is over), then the broker; a thread that does not end in time is an error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import zmq

from alto_bus.client import Client
from alto_bus.control.broker import Broker
from alto_bus.deploy.status_probe import StatusProbe
from alto_bus.deploy.topology import Topology, TopologyError
from alto_bus.runtime.pool_member import PoolMember
from alto_bus.runtime.worker import Worker, WorkerError

log = logging.getLogger("alto.graph")


class _PoolThread:
    """One member of an LM pool (its engine and a worker per stage of the pool) on a thread."""

    def __init__(self, pool: str, control: str) -> None:
        self.member = PoolMember(pool, control)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=f"alto-graph-pool-{pool}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self.member.run())
        except BaseException as exc:
            self.error = exc
            log.error("pool member of %s stopped with an error: %s", self.member.pool, exc)

    def stop(self) -> None:
        self.member.request_stop(drain=False)


class LocalRun:
    """``with LocalRun(topology) as run: run.client.submit(...)``; everything stops on exit."""

    def __init__(self, topology: Topology, *, ready_timeout: float = 30.0, client_timeout: float = 300.0,
                 stop_timeout: float = 10.0) -> None:
        if topology.security is not None:
            raise TopologyError(f"{topology.source}: [security]: Graph.run() runs the graph in this process, "
                                "without CURVE keys; launch it (Graph.launched()) to use [security]")
        self.topology = topology
        self.ready_timeout = ready_timeout
        self.client_timeout = client_timeout
        self.stop_timeout = stop_timeout
        self.ctx: zmq.Context | None = None
        self.broker: Broker | None = None
        self.broker_thread: threading.Thread | None = None
        self.broker_error: BaseException | None = None
        self.workers: list[Worker] = []
        self.pool_members: list[_PoolThread] = []
        self.client: Client | None = None

    @property
    def addresses(self) -> dict[str, str]:
        assert self.broker is not None
        return self.broker.addresses

    def __enter__(self) -> LocalRun:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        problems = self.stop()
        for problem in problems if exc_type is not None else ():
            log.error("while stopping after %s: %s", exc_type.__name__, problem)  # the body's error goes on
        if problems and exc_type is None:
            raise RuntimeError("the in-process graph did not stop cleanly: " + "; ".join(problems))

    def _start(self) -> None:
        topo = self.topology
        self.ctx = zmq.Context()
        self.broker = Broker(topo, ctx=self.ctx)   # binds its sockets here; the thread then owns them
        self.broker_thread = threading.Thread(target=self._serve_broker, name="alto-graph-broker", daemon=True)
        self.broker_thread.start()
        control = self.broker.addresses["control"]
        for stage in topo.stages:
            if stage.fields.get("pool") is not None:
                continue  # served by the pool's members
            for _ in range(stage.replicas):
                worker = Worker(stage.name, broker=control, connect_timeout=self.ready_timeout)
                self.workers.append(worker)
                worker.start()  # returns once registered; raises WorkerError naming the stage
        for pool in topo.pools:
            self.pool_members += [_PoolThread(pool.name, control) for _ in range(pool.replicas)]
        if self.pool_members:
            self._await_pools(control)
        self.client = Client(self.broker.addresses["gateway"], timeout=self.client_timeout)

    def _serve_broker(self) -> None:
        assert self.broker is not None
        try:
            self.broker.serve()
        except BaseException as exc:
            self.broker_error = exc
            log.error("the in-process broker stopped with an error: %r", exc)

    def _await_pools(self, control: str) -> None:
        """Every stage has its replicas (pool members register their stages themselves)."""
        deadline = time.monotonic() + self.ready_timeout
        with StatusProbe(control) as probe:
            while True:
                failed = [p for p in self.pool_members if p.error is not None]
                if failed:
                    raise WorkerError(f"pool {failed[0].member.pool!r}: {failed[0].error}")
                status = probe.query(timeout=1.0)
                if status is not None and all(len(status["stages"][s.name]["instances"]) >= s.replicas
                                              for s in self.topology.stages):
                    return
                if time.monotonic() > deadline:
                    raise WorkerError(f"the pools' instances did not register within {self.ready_timeout:g} s")
                time.sleep(0.05)

    def stop(self) -> list[str]:
        """Stop everything that was started; returns what did not stop in time (empty: all did)."""
        problems: list[str] = []
        if self.client is not None:
            self.client.close()
            self.client = None
        for w in self.workers:
            w.request_stop(drain=False)
        for p in self.pool_members:
            p.stop()
        for w in self.workers:
            try:
                w.stop(self.stop_timeout)
            except WorkerError as exc:
                problems.append(str(exc))
        for p in self.pool_members:
            p.thread.join(self.stop_timeout)
            if p.thread.is_alive():
                problems.append(f"a member of pool {p.member.pool!r} did not stop in time")
        self.workers, self.pool_members = [], []
        self._stop_broker(problems)
        return problems

    def _stop_broker(self, problems: list[str]) -> None:
        broker, thread = self.broker, self.broker_thread
        if broker is None:
            return
        if thread is not None and thread.is_alive():
            with StatusProbe(broker.addresses["control"]) as probe:
                probe.request("shutdown", timeout=self.stop_timeout)
            thread.join(self.stop_timeout)
            if thread.is_alive():
                problems.append("the in-process broker did not stop in time")
                return  # its sockets are still its thread's: leave them to it
        broker.close()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        self.broker = self.broker_thread = self.ctx = None
        if self.broker_error is not None:
            problems.append(f"the broker failed: {self.broker_error!r}")
