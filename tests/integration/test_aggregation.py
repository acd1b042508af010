"""Aggregate stages in real topologies (separate processes, real sockets): nested fan-out and
fan-in against a single-process reference, every operator end to end, keyed routing (one
instance per group), membership changes under load, and groups that can never complete.

Every fan-out, drop and score is a pure function of the request's text
(:mod:`tests.integration.agg_handlers`), so the reference computes the exact result of
each request in the test process.
"""

from __future__ import annotations

import os
import time

import pytest

from alto_bus import Client, RequestError, Worker
from tests.integration import agg_handlers as ah
from tests.support import wait_for, running, status
from alto_workers.aggregate_stage import AggregateStage

A = "tests.integration.agg_handlers"
VERDICT = f"{A}:verdict"


# -- topologies -----------------------------------------------------------------------


def fn(name: str, handler: str, input: str | None = None, replicas: int = 1) -> dict:
    stage = {"name": name, "kind": "function", "handler": f"{A}:{handler}", "replicas": replicas}
    if input is not None:
        stage["input"] = input
    return stage


def agg(name: str, input: str, key: str, op: str, replicas: int = 1, options: dict | None = None) -> dict:
    stage = {"name": name, "kind": "aggregate", "input": input, "key": key, "op": op, "replicas": replicas}
    if options:
        stage["options"] = options
    return stage


def verify_op(verify: str) -> str:
    return VERDICT if verify == "verdict" else verify


def fact3(fan: int = 1, verify_replicas: int = 1, report_replicas: int = 1, verify: str = "collect",
          search: str = "search", broker: dict | None = None) -> dict:
    """Three levels of fan-out: request -> sentences -> claims -> queries; fan-in per claim, per request."""
    return {
        "broker": broker or {},
        "stage": [
            fn("sentences", "sentences", replicas=fan),
            fn("claims", "claims", "sentences", replicas=fan),
            fn("checkworthy", "checkworthy", "claims", replicas=1),
            fn("queries", "queries", "checkworthy", replicas=fan),
            fn("search", search, "queries", replicas=fan),
            agg("verify", "search", "claims", verify_op(verify), replicas=verify_replicas),
            fn("judge", "judge", "verify", replicas=1),
            agg("report", "judge", "request", "collect", replicas=report_replicas),
        ],
    }


def fact2(fan: int = 1, verify_replicas: int = 1, report_replicas: int = 1, verify: str = "collect",
          search: str = "search", search_replicas: int | None = None, broker: dict | None = None,
          claims: str = "claims") -> dict:
    """Two levels of fan-out: request -> sentences -> claims; fan-in per sentence, per request."""
    return {
        "broker": broker or {},
        "stage": [
            fn("sentences", "sentences", replicas=fan),
            fn("claims", claims, "sentences", replicas=fan),
            fn("search", search, "claims", replicas=search_replicas or fan),
            agg("verify", "search", "sentences", verify_op(verify), replicas=verify_replicas),
            fn("judge", "judge", "verify", replicas=1),
            agg("report", "judge", "request", "collect", replicas=report_replicas),
        ],
    }


REFERENCE = {"fact3": ah.reference3, "fact2": ah.reference2}


def texts(n: int, tag: str) -> list[str]:
    return [f"r{i}-{tag}" for i in range(n)]


def submit_all(client: Client, payloads: list, timeout: float = 30.0) -> list:
    """Submit every payload at once (each with a deadline), then collect the results in order."""
    futures = [client.submit(p, timeout=timeout) for p in payloads]
    return [f.result(timeout=timeout + 10) for f in futures]


def check_against_reference(shape: str, verify: str, payloads: list[str], results: list) -> None:
    reference = REFERENCE[shape]
    wrong = [(t, r) for t, r in zip(payloads, results)
             if ah.strip_pids(r) != ah.strip_pids(reference(t, verify))]
    if wrong:
        text, got = wrong[0]
        pytest.fail(f"{len(wrong)} of {len(payloads)} results differ from the reference; first: {text!r}: "
                    f"got {got!r:.500}, want {reference(text, verify)!r:.500}")


def instance_pids(sup, stage: str) -> set[int]:
    return {i["pid"] for i in status(sup)["stages"][stage]["instances"]}


def all_settled(sup) -> dict:
    st = status(sup)
    return st if st["gateway"]["in_flight"] == 0 else None


# -- 1. nested fan-out and fan-in against the reference -----------------------------


def test_the_workload_has_the_edge_cases():
    """The pseudo-random trees include what the pipelines must get right (checked once, no sockets)."""
    ts = texts(1000, "a")
    refs = [ah.reference3(t) for t in ts]
    assert sum(r == [] for r in refs) > 50                        # requests with nothing left
    assert sum(1 for t in ts if not list(ah.sentences(t))) > 50   # zero children at the first level
    verdicts = [j["verdict"] for r in refs for j in r]
    assert sum(v == [] for v in verdicts) > 100                   # claims whose group is empty
    claims = [c for t in ts for s in ah.sentences(t) for c in ah.claims(s)]
    assert sum(ah.checkworthy(c) is None for c in claims) > 100   # dropped group roots
    queries = [q for c in claims for q in ah.queries(c)]
    assert sum(ah.search(q) is None for q in queries) > 500       # dropped leaves
    assert max(len(v) for v in verdicts) >= 4 and len(queries) > 5000


# (shape, verify op, replicas of the stateless fan-out stages, per-claim/sentence aggregate, per-request aggregate)
PIPELINES = [
    ("fact3", "collect", 1, 1, 1),
    ("fact3", "verdict", 2, 4, 4),
    ("fact3", "collect", 3, 2, 3),
    ("fact2", "verdict", 1, 4, 1),
    ("fact2", "collect", 2, 1, 4),
]


@pytest.mark.parametrize("shape,verify,fan,r_verify,r_report", PIPELINES,
                         ids=[f"{s}-{v}-fan{f}-agg{a}x{b}" for s, v, f, a, b in PIPELINES])
def test_1000_concurrent_requests_through_nested_fan_out_and_fan_in(shape, verify, fan, r_verify, r_report):
    topo = (fact3 if shape == "fact3" else fact2)(fan=fan, verify_replicas=r_verify,
                                                  report_replicas=r_report, verify=verify)
    payloads = texts(1000, f"{shape}{fan}{r_verify}{r_report}")
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        results = submit_all(client, payloads)
        st = wait_for(lambda: all_settled(sup), 10, "the gateway to settle")
    check_against_reference(shape, verify, payloads, results)
    assert st["gateway"]["completed"] == 1000 and st["gateway"]["failed"] == 0
    if verify == "verdict":
        assert len({p for r in results for p in ah.pids(r)}) == r_verify  # every instance took groups


# -- 2. operators end to end ------------------------------------------------------------

# (filter, per-group operator, per-request operator, replicas of the per-group aggregate)
OPERATORS = [
    ("tag=keep", "count", "collect", 2),
    ("ok", "count", "sum", 1),
    ("where", "sum x", "top_k 2", 2),
    ("x>3", "all ok", "collect", 1),
    ("tag in", "any ok", "all", 2),
    ("tag!=skip", "summary", "top_k 2 total", 3),
]


@pytest.mark.parametrize("keep,per_group,per_request,replicas", OPERATORS,
                         ids=[f"filter[{k}]-{g}-{r}" for k, g, r, _ in OPERATORS])
def test_operators_end_to_end(keep, per_group, per_request, replicas):
    """groups -> items -> filter (per item) -> per-group operator -> per-request operator."""
    topo = {"stage": [
        fn("groups", "groups"),
        fn("items", "items", "groups", replicas=2),
        agg("keep", "items", "request", "filter", replicas=2, options=ah.FILTERS[keep][0]),
        agg("per_group", "keep", "groups", ah.op_name(per_group), replicas=replicas,
            options=ah.OPS[per_group][0]),
        agg("per_request", "per_group", "request", ah.op_name(per_request), options=ah.OPS[per_request][0]),
    ]}
    payloads = texts(300, "ops")
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        results = submit_all(client, payloads)
    want = [ah.reference_ops(t, keep, per_group, per_request) for t in payloads]
    wrong = [(t, r, w) for t, r, w in zip(payloads, results, want) if r != w]
    assert not wrong, f"{len(wrong)} wrong; first: {wrong[0]!r:.600}"
    # Not a constant: the reference tells requests apart (both truth values, for all/any).
    assert len({repr(w) for w in want}) >= 2


def test_a_filter_at_the_end_of_a_pipeline_drops_leaves_exactly():
    topo = {"stage": [
        fn("groups", "groups"),
        fn("items", "items", "groups", replicas=2),
        agg("keep", "items", "request", "filter", replicas=2, options={"field": "tag", "equals": "keep"}),
    ]}
    payloads = texts(300, "filter")
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        results = submit_all(client, payloads)
    for t, r in zip(payloads, results):
        assert r == [p for g in ah.groups(t) for p in ah.items(g) if p["tag"] == "keep"]


# -- 3. keyed routing: every item of a group meets at one instance --------------------


def test_every_group_is_reduced_whole_by_one_of_three_instances():
    topo = fact3(fan=2, verify_replicas=3, verify="verdict")
    payloads = texts(1000, "keyed")
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        results = submit_all(client, payloads)
        verify_pids = instance_pids(sup, "verify")
    # Each claim's verdict lists every query of the claim, in path order, exactly once. A group
    # split over instances would show as a verdict missing queries, as two verdicts for one claim
    # (the gateway fails a request whose item arrives twice), or as a group that never completes
    # on either instance (the request fails at its deadline).
    check_against_reference("fact3", "verdict", payloads, results)
    used = [p for r in results for p in ah.pids(r)]
    # One verdict per claim that survived the judge, each made by a verify instance.
    assert len(used) == sum(len(ah.reference3(t, "verdict")) for t in payloads)
    assert set(used) <= verify_pids
    assert len(set(used)) >= 2, "only one aggregate instance did any work"


# -- 4. membership changes under load ------------------------------------------------


def test_instances_join_and_drain_while_requests_flow():
    """Two embedded aggregate instances join; one drains while requests of its epochs are in flight.

    Slow searches keep some of its groups open past the drain's quiet period (two heartbeats);
    slow claims hold back the first item of some of its groups, so the instance has not even seen
    them when it starts to drain. It must stay until both are done: every result exact.
    """
    topo = fact2(fan=1, search_replicas=2, verify_replicas=2, verify="verdict", search="slow_search",
                 claims="slow_claims", broker={"heartbeat_interval": 0.2})
    waves = [texts(200, f"wave{w}") for w in range(5)]
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        control = sup.addresses["control"]
        epoch0 = status(sup)["epoch"]
        futures = []

        def wave(i: int) -> None:
            futures.extend(client.submit(t, timeout=20) for t in waves[i])

        def draining() -> bool:
            return any(i["draining"] for i in status(sup)["stages"]["verify"]["instances"])

        wave(0)
        joined = Worker(stage="verify", broker=control).start()   # handler=None: built from the topology
        try:
            assert isinstance(joined.logic, AggregateStage)
            wave(1)
            leaving = Worker(stage="verify", broker=control).start()
            try:
                wave(2)
                wave(3)
                wait_for(lambda: leaving.logic.depth() > 0, 10, "the second instance to hold open groups")
                leaving.request_stop()   # drain: leave the table (new epoch), finish the older keys
                wait_for(draining, 5, "the broker to list the instance as draining")
                wave(4)
                results = [f.result(timeout=40) for f in futures]
            finally:
                leaving.stop()
            st = status(sup)
        finally:
            joined.stop()
    payloads = [t for w in waves for t in w]
    check_against_reference("fact2", "verdict", payloads, results)
    assert st["gateway"]["failed"] == 0 and st["gateway"]["completed"] == 1000
    # join, join, drain: three new epochs (the goodbye of a drained instance needs none)
    assert st["epoch"] >= epoch0 + 3
    verify_pids = [i["pid"] for i in st["stages"]["verify"]["instances"]]
    assert len(verify_pids) == 3 and verify_pids.count(os.getpid()) == 1  # the drained one is gone
    assert joined.stats["messages_in"] > 0 and leaving.stats["messages_in"] > 0
    assert any(p == os.getpid() for r in results for p in ah.pids(r)), "the embedded instances made no verdict"


# -- 5. a group that can never complete ------------------------------------------------


def kill_text() -> str:
    """A request whose sentence 0 has at least three claims; its claim .s0.c1 kills a search instance."""
    for i in range(1000):
        t = f"kill{i}"
        ss = list(ah.sentences(t))
        if ss and len(list(ah.claims(ss[0]))) >= 3:
            return t
    raise AssertionError("no such text")


def test_a_group_that_cannot_complete_ends_in_an_error_never_a_partial_result():
    """An instance upstream of a 2-replica aggregate dies holding one item of an open group.

    The group can never complete: its request ends in an error (the dead instance, or its
    deadline), never a hang and never a partial aggregate. Requests in flight beside it end
    exact or in an error; once the dead instance is out of the table, every request succeeds.
    """
    topo = fact2(fan=1, search_replicas=2, verify_replicas=2, verify="verdict", search="die_on",
                 broker={"heartbeat_interval": 0.1, "heartbeat_liveness": 3})
    victim = kill_text()
    before, during, after = texts(200, "before"), texts(100, "during"), texts(300, "after")
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        check_against_reference("fact2", "verdict", before, submit_all(client, before))
        t0 = time.monotonic()
        doomed = client.submit(victim, timeout=4.0)
        # Its siblings reach an aggregate instance, which holds the group open (partial).
        wait_for(lambda: any(i["depth"] for i in status(sup)["stages"]["verify"]["instances"]), 1.4,
                 "an aggregate instance to hold the doomed request's partial group")
        beside = [client.submit(t, timeout=4.0) for t in during]
        with pytest.raises(RequestError) as err:
            doomed.result(timeout=20)
        assert time.monotonic() - t0 < 4.0 + 2.0  # by the deadline at the latest: never a hang
        assert "died" in err.value.message or "deadline exceeded" in err.value.message, err.value
        # Beside it: the exact result, or an error; never a partial or duplicated aggregate.
        for t, f in zip(during, beside):
            try:
                result = f.result(timeout=20)
            except RequestError as exc:
                assert "died" in exc.message or "deadline exceeded" in exc.message, exc
            else:
                assert ah.strip_pids(result) == ah.strip_pids(ah.reference2(t, "verdict")), t
        assert time.monotonic() - t0 < 4.0 + 2.0
        st = wait_for(lambda: (s := status(sup)) and len(s["stages"]["search"]["instances"]) == 1 and s,
                      10, "the dead instance to leave the table")
        assert st["gateway"]["failed"] >= 1
        # Everything after runs on the surviving instance, exactly.
        check_against_reference("fact2", "verdict", after, submit_all(client, after))
        # The aggregate instances freed the partial groups of the failed requests.
        wait_for(lambda: all(i["depth"] == 0 for i in status(sup)["stages"]["verify"]["instances"]),
                 5, "the aggregate instances to free every open group")
        assert status(sup)["gateway"]["in_flight"] == 0
