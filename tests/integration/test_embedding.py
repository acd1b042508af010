"""A worker embedded in an existing process: a background thread, or the host's asyncio loop."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from alto_bus import Client, Worker, WorkerError
from tests.support import running, status

H = "tests.integration.handlers"


def topology() -> dict:
    return {
        "broker": {},
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 1},
            {"name": "tag", "kind": "function", "handler": f"{H}:tag", "input": "split", "replicas": 1},
        ],
    }


def embedded_tag(word: str) -> dict:
    # Marks items this process served, so the test can see the embedded instance got work.
    return {"word": word, "pid": os.getpid(), "thread": threading.current_thread().name}


def served_here(results: list[list[dict]]) -> int:
    return sum(1 for res in results for r in res if r["pid"] == os.getpid())


def test_worker_in_a_background_thread_joins_serves_and_leaves():
    with running(topology()) as sup:
        control = sup.addresses["control"]
        worker = Worker(stage="tag", handler=embedded_tag, broker=control).start()
        try:
            assert len(status(sup)["stages"]["tag"]["instances"]) == 2
            with Client(sup.addresses["gateway"]) as client:
                results = [f.result(timeout=30) for f in [client.submit(f"a{i} b{i} c{i}") for i in range(300)]]
            assert [[r["word"] for r in res] for res in results] == [[f"a{i}", f"b{i}", f"c{i}"] for i in range(300)]
            assert served_here(results) > 0  # the embedded instance took its share
        finally:
            worker.stop()
        # It left the routing table; requests still complete on the launched instance.
        assert len(status(sup)["stages"]["tag"]["instances"]) == 1
        with Client(sup.addresses["gateway"]) as client:
            res = client.submit("after leaving").result(timeout=30)
        assert [r["word"] for r in res] == ["after", "leaving"] and served_here([res]) == 0


def test_worker_as_a_coroutine_in_the_hosts_event_loop():
    with running(topology()) as sup:
        control, gateway = sup.addresses["control"], sup.addresses["gateway"]

        async def host():
            worker = Worker(stage="tag", handler=embedded_tag, broker=control)
            task = asyncio.create_task(worker.run())
            await worker.wait_registered()
            async_client_results = []
            from alto_bus import AsyncClient
            async with AsyncClient(gateway) as client:
                async_client_results = await asyncio.gather(*(client.submit(f"x{i} y{i}") for i in range(200)))
            worker.request_stop()
            await asyncio.wait_for(task, 30)
            return async_client_results

        results = asyncio.run(host())
        assert [[r["word"] for r in res] for res in results] == [[f"x{i}", f"y{i}"] for i in range(200)]
        assert served_here(results) > 0
        # Served from the host loop's thread, not a thread of the worker's own.
        assert {r["thread"] for res in results for r in res if r["pid"] == os.getpid()} == {"MainThread"}


def test_joining_an_unknown_stage_is_refused_with_the_reason():
    with running(topology()) as sup:
        with pytest.raises(WorkerError, match="no stage named 'nope'"):
            Worker(stage="nope", handler=embedded_tag, broker=sup.addresses["control"]).start()


def test_a_broker_that_does_not_answer_is_reported():
    worker = Worker(stage="tag", handler=embedded_tag, broker="tcp://127.0.0.1:9", connect_timeout=1.0)
    with pytest.raises(WorkerError, match="did not answer within 1 s"):
        worker.start()
