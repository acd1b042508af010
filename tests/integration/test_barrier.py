"""A barrier stage (aggregate, op = "barrier") in a real topology: no item of a request
passes before the request's last item upstream was made, every item passes exactly once
with its path, and without the barrier the same check fails (items stream through)."""

from __future__ import annotations

from alto_bus import Client
from tests.support import running

A = "tests.integration.agg_handlers"
TEXTS = [" ".join(f"w{i}x{k}" for k in range(2 + i % 5)) for i in range(30)]


def topology(barrier: bool) -> dict:
    stages = [{"name": "make", "kind": "function", "handler": f"{A}:staggered", "replicas": 2}]
    if barrier:
        stages.append({"name": "wait", "kind": "aggregate", "input": "make", "key": "request",
                       "op": "barrier", "replicas": 2})
    stages += [
        {"name": "seen", "kind": "function", "handler": f"{A}:seen", "input": stages[-1]["name"]},
        {"name": "all", "kind": "aggregate", "input": "seen", "key": "request", "op": "collect"},
    ]
    return {"stage": stages}


def run(barrier: bool) -> list[list[dict]]:
    with running(topology(barrier)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit(t) for t in TEXTS]
        return [f.result(timeout=60) for f in futures]


def test_a_barrier_holds_every_item_until_the_request_has_all_of_them():
    for text, items in zip(TEXTS, run(barrier=True)):
        assert [i["word"] for i in items] == text.split()       # all, once, in path order
        last_made = max(i["made"] for i in items)
        assert min(i["seen"] for i in items) >= last_made, text


def test_without_the_barrier_items_pass_on_before_the_last_is_made():
    # The check above can fail: without the barrier the first words move on at once.
    results = run(barrier=False)
    early = sum(min(i["seen"] for i in items) < max(i["made"] for i in items) for items in results)
    assert early == len(TEXTS)
