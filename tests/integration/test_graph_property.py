"""Random graphs as real processes with replicas give what the reference interpreter gives.

Each case launches a random valid graph (tests/graph_strategies.py: chains, fan-outs,
filters, aggregates, forks with joins or merges, routes, loops; 1-3 replicas a stage,
at most 14 instances), sends it concurrent requests with the client, and compares every
result or error with alto_bus/graph/reference.py. The graphs come from fixed seeds, so CI
runs the same varied graphs every time (hypothesis's derandomized examples are
mutations of a few graphs), and the file stays within a couple of minutes on two cores.
The same builder under hypothesis, with many more graphs and random message orders,
runs without processes in tests/unit/test_graph_simulation.py.
"""

from __future__ import annotations

import pytest

from alto_bus import Client, RequestError
from alto_bus.deploy.topology import parse
from alto_bus.graph.reference import Reference
from tests.graph_sim import mismatch
from tests.graph_strategies import seeded_graph, seeded_payloads
from tests.support import running

REQUESTS = 30
SEEDS = range(30)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_graph_with_replicas_gives_what_the_reference_gives(seed):
    graph = seeded_graph(seed, max_stages=9, max_replicas=3, max_instances=14)
    requests = seeded_payloads(seed, REQUESTS)
    ref = Reference(parse(graph))
    with running(graph) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit(p, timeout=30) for p in requests]
        got = []
        for f in futures:
            try:
                got.append(("result", f.result(timeout=40)))
            except RequestError as exc:
                got.append(("error", exc.stage, exc.message))
    wrong = [m for p, g in zip(requests, got, strict=True) if (m := mismatch(ref, p, 0, g)) is not None]
    assert not wrong, f"graph {graph}\n{len(wrong)} of {len(requests)} wrong:\n" + "\n".join(wrong[:10])
