"""One member of an LM pool: one engine, serving every LM stage (prompt) of the pool.

The process asks the broker for the pool's configuration, starts the engine once, and
runs one :class:`~alto_bus.runtime.worker.Worker` per stage of the pool in one event loop,
each an instance of its stage with its own inbox; the stages share the engine, so a
prompt's prefix stays cached where the broker keeps placing that prompt.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import zmq

from alto_bus.protocol import wire
from alto_bus.runtime.worker import Worker, WorkerError
from alto_bus.net.sockets import make_socket
from alto_bus.deploy.topology import POOL_KIND, PoolConfig, StageConfig
from alto_bus.runtime.kinds import stage_kind



def pool_info(broker: str, pool: str, timeout: float, **sock_opts: Any) -> dict:
    """The pool's configuration and its stages' configurations, from the broker."""
    sock = make_socket(zmq.Context.instance(), zmq.DEALER, connect=broker, **sock_opts)
    try:
        sock.send(wire.encode_control("pool_info", {"pool": pool}))
        if not sock.poll(timeout * 1000):
            raise WorkerError(f"the broker at {broker} did not answer within {timeout:g} s")
        op, body = wire.decode_control(sock.recv())
    finally:
        sock.close(linger=0)
    if op == "reject":
        raise WorkerError(f"the broker refused pool {pool!r}: {body.get('reason')}")
    if op != "pool_info":
        raise WorkerError(f"the broker answered {op!r} to a pool_info request")
    return body


class PoolMember:
    def __init__(self, pool: str, broker: str, *, connect_timeout: float = 30.0,
                 member_index: int | None = None, **worker_args: Any) -> None:
        self.pool = pool
        self.broker = broker
        self.connect_timeout = connect_timeout
        self.member_index = member_index   # which of the pool's remote ``members`` this one talks to
        self.worker_args = worker_args
        self.member = f"{worker_args.get('host') or socket.gethostname()}:{os.getpid()}"
        self.workers: list[Worker] = []
        self._stopping = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        curve = self.worker_args.get("curve")
        opts = {"curve": curve.to_broker("pool info")} if curve else {}
        info = await loop.run_in_executor(None, lambda: pool_info(self.broker, self.pool, self.connect_timeout,
                                                                  **opts))
        pool = PoolConfig.from_dict(info["pool"])
        kind = stage_kind(POOL_KIND)
        try:
            engine = kind.make_engine(engine_fields(pool, self.member_index))
        except WorkerError:
            raise
        except Exception as exc:   # e.g. its API key's variable is not set: one line, no traceback
            raise WorkerError(f"pool {pool.name!r}: cannot make its engine: {exc}") from None
        build = kind.build
        await engine.start()
        try:
            self.workers = [
                Worker(stage=name, broker=self.broker, connect_timeout=self.connect_timeout,
                       logic_factory=lambda cfg: build(cfg, engine),
                       labels={"pool": self.pool, "member": self.member}, **self.worker_args)
                for name in stage_names(info)
            ]
            if self._stopping:
                return
            await asyncio.gather(*(w.run() for w in self.workers))
        finally:
            await engine.shutdown()

    @property
    def failed(self) -> bool:
        return any(w.failed for w in self.workers)

    def request_stop(self, drain: bool = False) -> None:
        self._stopping = True
        for w in self.workers:
            w.request_stop(drain)


def engine_fields(pool: PoolConfig, member_index: int | None) -> dict[str, Any]:
    """The fields this member's engine is made from: the pool's, and for a pool of remote
    servers the index of the one this member talks to (member i: ``members[i]``)."""
    fields = pool.to_dict()
    if pool.members:
        if member_index is None or not 0 <= member_index < len(pool.members):
            raise WorkerError(f"pool {pool.name!r} lists {len(pool.members)} remote member(s) in field "
                              f"'members': give --member-index 0..{len(pool.members) - 1}, got {member_index}")
        fields["member_index"] = member_index
    return fields


def stage_names(info: dict) -> list[str]:
    return [StageConfig.from_dict(d).name for d in info["stages"].values()]
