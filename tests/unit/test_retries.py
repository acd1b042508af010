"""``retries``, without sockets: the topology field, the broker's count of attempts, a
sender's kept copies, the filter of repeats, the gateway's book and keyed routing."""

from __future__ import annotations

import random

import pytest

from alto_bus.control.request_book import Gateway
from alto_bus.control.retry_book import RetryBook
from alto_bus.deploy import topology
from alto_bus.protocol import wire
from alto_bus.protocol.duplicates import Duplicates
from alto_bus.protocol.messages import Data
from alto_bus.routing.keytable import KeyTable
from alto_bus.routing.route_table import Fail, RouteTable
from alto_bus.runtime.resend import KeptItems


def stages(*extra: dict) -> dict:
    return {"stage": [{"name": "a", "kind": "function", "handler": "json:dumps"}, *extra]}


# -- topology ------------------------------------------------------------------------


def test_retries_defaults_to_zero_and_marks_the_stages_that_may_see_repeats():
    t = topology.parse(stages({"name": "b", "kind": "function", "handler": "json:dumps", "input": "a", "retries": 2},
                              {"name": "c", "kind": "function", "handler": "json:dumps", "input": "b"}))
    assert [(s.name, s.retries, s.dedupe) for s in t.stages] == [("a", 0, False), ("b", 2, True), ("c", 0, True)]
    plain = topology.parse(stages())
    assert plain.stages[0].retries == 0 and not plain.stages[0].dedupe


@pytest.mark.parametrize("value, needle", [(-1, "must be an int >= 0"), (True, "must be int"), ("2", "must be int")])
def test_a_bad_retries_names_the_file_stage_and_field(value, needle):
    with pytest.raises(topology.TopologyError) as err:
        topology.parse(stages({"name": "b", "kind": "function", "handler": "json:dumps", "input": "a",
                               "retries": value}), source="t.toml")
    assert "t.toml: stage 'b': field 'retries'" in str(err.value) and needle in str(err.value)


# -- the broker's count --------------------------------------------------------------


def test_each_departure_costs_a_request_one_attempt_whoever_reports_it():
    book = RetryBook({"mid": 2, "other": 0})
    assert book.limits == {"mid": 2}
    assert book.departed(7, "mid", [1, 2, 2]) == ([1, 2], [])
    assert book.departed(7, "mid", [2, 3]) == ([3], [])  # the same departure: 2 counted already
    assert book.departed(8, "mid", [1]) == ([1], [])      # a second departure: attempt 2 of 2
    assert book.departed(9, "mid", [1, 3]) == ([3], [1])  # a third: out of retries
    assert (1, "mid") not in book.attempts


def test_counts_are_forgotten_when_their_requests_end():
    book = RetryBook({"mid": 1})
    book.departed(1, "mid", [10, 11])
    book.prune(in_flight={11})
    assert list(book.attempts) == [(11, "mid")]
    assert book.departed(2, "mid", [10, 11]) == ([10], [11])  # 10 ended and came back: a fresh count


def test_the_record_of_departures_is_bounded():
    book = RetryBook({"mid": 5}, memory=3)
    for iid in range(10):
        book.departed(iid, "mid", [1])
    assert list(book.counted) == [7, 8, 9]


# -- a sender's kept copies ----------------------------------------------------------


def d(path: list, seq: int = 0, final: bool = True):
    return wire.data(path, seq, f"p{path}{seq}", final, 0)


def test_copies_are_kept_per_instance_in_send_order_and_taken_once():
    kept = KeptItems()
    kept.add(5, 0, d([1, 0]), False)
    kept.add(6, 0, d([1, 1]), False)
    kept.add(5, 0, d([2, 0], 0, False), True)
    kept.add(5, 0, d([2, 0], 1, True), True)
    kept.add(5, 0, wire.end([1], 2, 0), False)
    copies, rids, evicted = kept.take(5)
    assert [(m.path, type(m).__name__, s) for _, m, s in copies] == [
        ([1, 0], "Data", False), ([1], "End", False), ([2, 0], "Data", True), ([2, 0], "Data", True)]
    assert rids == [1, 2] and evicted == []
    assert kept.take(5) == ([], [], []) and kept.size == 1 and kept.has(6)


def test_copies_of_ended_requests_are_freed():
    kept = KeptItems()
    for dest in (5, 6):
        kept.add(dest, 0, d([1, dest]), False)
        kept.add(dest, 0, d([2, dest]), False)
    kept.forget([1, 3])
    assert kept.size == 2 and kept.take(5)[1] == [2] and kept.take(6)[1] == [2]
    assert kept.size == 0 and not kept.by_dest and not kept.where


def test_only_some_requests_can_be_taken():
    kept = KeptItems()
    kept.add(5, 0, d([1, 0]), False)
    kept.add(5, 1, d([2, 0]), False)
    copies, rids, _ = kept.take(5, {2, 9})
    assert rids == [2] and copies[0][0] == 1 and kept.take(5)[1] == [1]


def test_past_the_bound_the_oldest_requests_are_forgotten_and_reported_on_resend():
    kept = KeptItems(memory=3)
    kept.add(5, 0, d([1, 0]), False)
    kept.add(6, 0, d([1, 1]), False)
    kept.add(5, 0, d([2, 0]), False)
    kept.add(5, 0, d([3, 0]), False)  # over: request 1 goes, at both instances
    assert kept.size == 2
    copies, rids, evicted = kept.take(5)
    assert rids == [2, 3] and evicted == [1]
    assert kept.take(6) == ([], [], [1])


# -- repeats -------------------------------------------------------------------------


def test_exact_repeats_are_dropped_and_contradictions_pass():
    dup = Duplicates()
    first = [d([1, 0]), d([1, 1], 0, False), d([1, 1], 1, True), wire.end([1], 2, 0), wire.drop([1, 2], 0)]
    assert list(dup.filter(first)) == first
    assert list(dup.filter(first)) == []
    assert dup.dropped == 5
    other_count = wire.end([1], 3, 0)
    assert dup.fresh(other_count)  # a different END count: for ancestry to report
    assert dup.fresh(wire.error([1], "s", "boom", 0))
    assert dup.fresh(Data([1, 0], 0, "p[1, 0]0", True, 0, turns=1))  # a loop's next turn is new


def test_repeats_are_remembered_until_the_request_ends_within_a_bound():
    dup = Duplicates(memory=3)
    for m in (d([1, 0]), d([1, 1]), d([2, 0]), d([3, 0])):
        dup.fresh(m)
    assert list(dup.by_rid) == [2, 3] and dup.size == 2  # the oldest request was forgotten
    dup.forget([2])
    assert dup.fresh(d([2, 0])) and dup.size == 2


# -- the gateway's book --------------------------------------------------------------


def feed(g: Gateway, msgs) -> list:
    out = []
    for m in msgs:
        g.on_message(m, out)
    return out


def deduping() -> Gateway:
    g = Gateway(request_timeout=10.0, max_inflight=10)
    g.duplicates = Duplicates()
    return g


def test_the_gateway_drops_a_rerun_and_gives_the_exact_result_once():
    g = deduping()
    rid = g.admit(b"c", 1, False, None, 0.0)
    run = [wire.data([rid, 0], 0, "a", True, 0), wire.data([rid, 1], 0, "b", True, 0)]
    assert feed(g, run + run) == []
    out = feed(g, [wire.end([rid], 3, 0), wire.end([rid], 3, 0), wire.data([rid, 2], 0, "c", True, 0)])
    assert out == [(b"c", [wire.RESULT, 1, ["a", "b", "c"]])]
    assert g.stats.duplicates == 3


def test_a_streamed_partial_reaches_the_client_once():
    g = deduping()
    rid = g.admit(b"c", 1, True, None, 0.0)
    out = feed(g, [wire.data([rid], 0, "He", False, 0),          # the first run, cut short
                   wire.data([rid], 0, "He", False, 0), wire.data([rid], 1, "llo", True, 0)])  # the re-run
    assert out == [(b"c", [wire.PARTIAL, 1, [], 0, "He", False]), (b"c", [wire.PARTIAL, 1, [], 1, "llo", True]),
                   (b"c", [wire.RESULT, 1, "Hello"])]


def test_a_rerun_that_contradicts_the_first_fails_the_request():
    g = deduping()
    rid = g.admit(b"c", 1, False, None, 0.0)
    out = feed(g, [wire.end([rid], 2, 0), wire.data([rid, 0], 0, "a", True, 0), wire.end([rid], 3, 0)])
    assert out[0][1][0] == wire.FAILED and "second END" in out[0][1][3]
    rid = g.admit(b"c", 2, False, None, 0.0)
    out = feed(g, [wire.data([rid, 0], 0, "a", True, 0), wire.data([rid, 0], 0, "not a", True, 0)])
    assert out[0][1][0] == wire.FAILED and "another payload" in out[0][1][3]


def test_without_retries_a_repeat_is_still_an_error():
    g = Gateway(request_timeout=10.0, max_inflight=10)
    rid = g.admit(b"c", 1, False, None, 0.0)
    out = feed(g, [wire.data([rid, 0], 0, "a", True, 0), wire.data([rid, 0], 0, "a", True, 0)])
    assert out[0][1][0] == wire.FAILED and "arrived twice" in out[0][1][3]


# -- keyed routing to a stage with retries -------------------------------------------


def table(epoch: int, ids: list[int], dead: tuple[int, ...] = ()) -> dict:
    return {"epoch": epoch, "stages": {"b": [[i, f"tcp://h:{i}"] for i in ids]}, "dead": list(dead),
            "keys": {"b": KeyTable.build(epoch, ids).to_dict()}}


def test_a_dead_owner_of_a_stage_with_retries_is_replaced_by_its_owner_in_a_later_epoch():
    routes = RouteTable("a", "b", 2, rng=random.Random(1))
    routes.retries = 1
    routes.apply(table(1, [1, 2]))
    item = wire.data([4, 0, 3], 0, "x", True, 1)  # the request's epoch is 1
    owner = routes.route(item, item.path)
    survivor = 3 - owner
    routes.apply(table(2, [survivor], dead=(owner,)))
    assert routes.route(item, item.path) == survivor
    routes.retries = 0
    assert isinstance(routes.route(item, item.path), Fail)


# -- a worker's part, on a fake worker -----------------------------------------------


class FakeWorker:
    """What Retrying uses of a worker: its routes, and sends recorded instead of made."""

    def __init__(self, consumers: list[dict], dedupe: bool = False) -> None:
        from collections import Counter

        from alto_bus.routing.consumer_routes import ConsumerRoutes

        self.config = type("Config", (), {"dedupe": dedupe})()
        self.routes = ConsumerRoutes.from_welcome("a", {"consumers": consumers, "results": "tcp://gw:1"},
                                                  random.Random(3))
        self.sent: list[tuple[int, list, int]] = []   # (dest, path, seq)
        self.control: list[tuple[str, dict]] = []
        self.errors: list[tuple[list, str]] = []
        self._parked: list = []
        self._cancelled: dict[int, None] = {}
        self.stats = Counter()
        self.outboxes = self
        self._control = self

    def _route(self, msg, path, stream=False, consumer=0):  # the plain route, replaced when keeping
        raise AssertionError("a worker that feeds a stage with retries keeps copies")

    def get(self, dest):
        return dest

    def flush_all(self):
        pass

    def _send(self, dest, msg, stage):
        self.sent.append((dest, list(msg.path), getattr(msg, "seq", -1)))

    def send(self, op, body):
        self.control.append((op, body))

    def error(self, path, reason, epoch):
        self.errors.append((path, reason))

    def _park(self, consumer, msg, path):
        raise AssertionError("nothing parks here")


def consumer(name: str, retries: int) -> dict:
    return {"config": {"name": name, "retries": retries, "inputs": ["a"]}, "pool": None}


def two_instances(routes, ids=(1, 2), dead=()) -> None:
    routes.apply({"epoch": 1 + len(dead), "dead": list(dead),
                  "stages": {n: [[i, f"tcp://h:{i}"] for i in ids] for n in ("b", "c")}})


def test_only_what_goes_to_a_stage_with_retries_is_kept_and_a_dead_instances_items_go_again_in_order():
    from alto_bus.runtime.resend import Retrying

    w = FakeWorker([consumer("b", 2), consumer("c", 0)])
    r = Retrying.attach(w, {"consumers": [consumer("b", 2), consumer("c", 0)]})
    assert w._route == r.route and r.consumers == {0}
    two_instances(w.routes)
    chunks = [wire.data([7, 0], seq, f"c{seq}", seq == 2, 1) for seq in range(3)]
    for m in chunks:
        w._route(m, m.path, True, 0)    # a stream: one instance gets every chunk
        w._route(m, m.path, True, 1)
    victim = w.sent[0][0]
    assert r.kept.size == 3 and r.kept.has(victim)
    w.sent.clear()
    two_instances(w.routes, ids=(3 - victim,), dead=(victim,))
    assert r.dropped(victim, "died", set())      # sent again at once, with that table
    assert w.sent == [(3 - victim, [7, 0], 0), (3 - victim, [7, 0], 1), (3 - victim, [7, 0], 2)]
    assert w.control == [("resent", {"iid": victim, "rids": [7]})] and w.stats["resent"] == 3
    assert r.kept.has(3 - victim) and not r.kept.has(victim)  # kept again under the new instance
    r.resend(victim)                              # the broker's "resend" then finds nothing
    assert len(w.sent) == 3 and len(w.control) == 1


def test_a_resend_waits_for_a_table_without_the_instance_and_skips_cancelled_requests():
    from alto_bus.runtime.resend import Retrying

    w = FakeWorker([consumer("b", 1)])
    r = Retrying.attach(w, {"consumers": [consumer("b", 1)]})
    two_instances(w.routes)
    for rid in (1, 2):
        m = wire.data([rid], 0, "x", True, 1)
        w._route(m, m.path)
    (dest, _, _), = [s for s in w.sent if s[1] == [1]]
    w.sent.clear()
    w._cancelled[2] = None
    r.resend(dest)
    assert r.pending == {dest} and w.sent == []   # our table still routes there
    two_instances(w.routes, ids=(3 - dest,), dead=(dest,))
    r.table_applied()
    assert w.sent == [(3 - dest, [1], 0)]  # request 2 was cancelled: not sent again, wherever it was
    assert not r.pending


def test_a_stage_after_one_with_retries_drops_repeats_by_input():
    from alto_bus.runtime.resend import Retrying

    w = FakeWorker([], dedupe=True)
    r = Retrying.attach(w, {"consumers": []})
    assert r is not None and not r.consumers
    m = wire.data([1, 0], 0, "x", True, 0)
    assert r.incoming([m, m], 0) == [m] and r.incoming([m], 1) == [m] and w.stats["duplicates"] == 1
    assert Retrying.attach(FakeWorker([]), {"consumers": [consumer("b", 0)]}) is None  # nothing changes
