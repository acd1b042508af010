"""Routing-table views per stage and their deltas: what each sender gets, and that the
changes rebuild exactly the view the broker would have sent whole."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from alto_bus.control.load_reports import LoadReports
from alto_bus.control.membership import Membership
from alto_bus.control.table_reports import TableReports
from alto_bus.protocol import wire
from alto_bus.routing.route_table import RouteTable
from alto_bus.routing.table_views import apply_delta, make_delta, view_for
from alto_bus.runtime.table_feed import TableFeed

STAGES = ["a", "b", "c"]
CONSUMERS = {"a": ("b",), "b": ("c",), "c": ()}


def members(keyed: bool = True) -> Membership:
    return Membership(STAGES, 0.5, 4, {"c": 0.25} if keyed else None)


def add(m: Membership, stage: str, n: int = 1) -> list[int]:
    out = []
    for _ in range(n):
        k = len(m.by_identity) + len(m.dead_ids) + 1000
        out.append(m.add(stage, b"w%d" % k, f"tcp://127.0.0.1:{k}", k, "h", 0.0).iid)
    return out


def decoded(frame: bytes) -> tuple[str, dict]:
    return wire.decode_control(frame)


def test_a_view_holds_only_the_consumers_instances_and_the_senders_count():
    m = members()
    add(m, "a", 2)
    b = add(m, "b", 3)
    add(m, "c", 4)
    view = view_for(m.table, "a", CONSUMERS["a"])
    assert set(view["stages"]) == {"b"}
    assert [iid for iid, _ in view["stages"]["b"]] == b
    assert view["peers"] == 2
    assert view["keys"] == {}                     # b is not keyed: c's key table is not a's business
    assert set(view_for(m.table, "b", CONSUMERS["b"])["keys"]) == {"c"}
    assert view_for(m.table, "c", ())["stages"] == {}


def test_registrations_between_two_reads_are_one_epoch():
    m = members()
    start = m.epoch
    add(m, "a")
    add(m, "b", 10)
    assert m.epoch == start + 1, "one burst of changes, one epoch"
    add(m, "c")
    assert m.epoch == start + 2
    assert m.complete


def test_delta_rebuilds_the_view_after_joins_drains_and_deaths():
    m = members()
    add(m, "a")
    add(m, "b", 3)
    c = add(m, "c", 3)
    old = view_for(m.published(0), "b", CONSUMERS["b"])
    add(m, "c", 2)
    m.drain(c[0])
    m.remove(c[1])
    new = view_for(m.published(0), "b", CONSUMERS["b"])
    delta = make_delta(old, new)
    assert len(delta["added"]["c"]) == 2 and delta["removed"]["c"] == c[:2]
    rebuilt = apply_delta(old, delta)
    assert {k: v for k, v in rebuilt.items() if k != "older"} == {k: v for k, v in new.items() if k != "older"}
    assert len(wire.encode_control("table_delta", delta)) < len(wire.encode_control("table", new))


def test_a_delta_made_from_another_epoch_is_refused():
    m = members()
    add(m, "b")
    v1 = view_for(m.table, "a", CONSUMERS["a"])
    add(m, "b")
    v2 = view_for(m.table, "a", CONSUMERS["a"])
    add(m, "b")
    v3 = view_for(m.table, "a", CONSUMERS["a"])
    assert apply_delta(v1, make_delta(v2, v3)) is None


def test_reports_send_whole_views_to_newcomers_and_deltas_to_the_others():
    m = members()
    reports = TableReports(CONSUMERS)
    add(m, "a")
    add(m, "b", 2)
    add(m, "c", 2)
    stage_of = {i: inst.stage for i, inst in m.instances.items()}
    first = reports.frames(m.table, stage_of)
    assert {iid for iid, _ in first} == set(stage_of)
    assert all(decoded(f)[0] == "table" for _, f in first)
    views = {iid: decoded(f)[1] for iid, f in first}

    newcomer = add(m, "c")[0]
    stage_of = {i: inst.stage for i, inst in m.instances.items()}
    second = dict(reports.frames(m.table, stage_of))
    assert decoded(second[newcomer])[0] == "table"
    for iid, view in views.items():
        op, body = decoded(second[iid])
        assert op == "table_delta"
        want = view_for(m.table, stage_of[iid], CONSUMERS[stage_of[iid]])
        got = apply_delta(view, body)
        assert got["stages"] == want["stages"] and got["keys"] == want["keys"] and got["epoch"] == m.epoch

    assert reports.frames(m.table, stage_of) == [], "the same epoch again: everyone has it"
    op, body = decoded(reports.resync(newcomer, "c"))
    assert op == "table" and body["epoch"] == m.epoch


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["join", "drain", "die"]), st.sampled_from(STAGES),
                          st.integers(0, 50)), min_size=1, max_size=25),
       st.booleans())
def test_a_router_fed_deltas_routes_like_one_fed_whole_tables(steps, keyed):
    """Whatever the changes, a sender that applies deltas knows the same instances,
    addresses and key owners as one given every view whole."""
    m = members(keyed)
    add(m, "a")
    sender = add(m, "b")[0]   # the sender watched: it stays
    add(m, "c")
    reports = TableReports(CONSUMERS)
    whole_rt = RouteTable("b", "c", 2 if keyed else None)
    delta_rt = RouteTable("b", "c", 2 if keyed else None)
    view = None
    for action, stage, pick in steps:
        live = [i for i, inst in m.instances.items() if inst.stage == stage and not inst.draining and i != sender]
        if action == "join" or not live:
            add(m, stage)
        elif action == "drain":
            m.drain(live[pick % len(live)])
        else:
            m.dead_ids.append(live[pick % len(live)])
            m.remove(live[pick % len(live)])
        table = m.published(0)
        frames = dict(reports.frames(table, {i: inst.stage for i, inst in m.instances.items()}))
        if sender not in frames:
            continue
        op, body = decoded(frames[sender])
        if op == "table" or view is None:
            view = body if op == "table" else decoded(reports.resync(sender, "b"))[1]
        else:
            view = apply_delta(view, body)
            assert view is not None, "a delta to the view this sender had"
        whole_rt.apply(decoded(wire.encode_control("table", view_for(table, "b", ("c",))))[1])
        delta_rt.apply(view)
        assert delta_rt.next_ids == whole_rt.next_ids
        assert delta_rt.addresses == whole_rt.addresses
        assert delta_rt.dead == whole_rt.dead
        if keyed and whole_rt.next_ids:
            rng = random.Random(len(steps))
            for _ in range(20):
                path = [1, rng.randrange(100)]
                assert delta_rt._key_owner(m.epoch, path, 2) == whole_rt._key_owner(m.epoch, path, 2)


def test_a_worker_asks_again_when_a_table_or_a_loads_report_went_missing():
    m = members()
    add(m, "b")
    add(m, "c")
    reports = TableReports(CONSUMERS)
    feed = TableFeed()
    sender = next(i for i, inst in m.instances.items() if inst.stage == "b")
    stage_of = lambda: {i: inst.stage for i, inst in m.instances.items()}  # noqa: E731
    op, body = decoded(dict(reports.frames(m.table, stage_of()))[sender])
    assert feed.table(op, body)["epoch"] == m.epoch
    add(m, "c")
    reports.frames(m.table, stage_of())          # this delta is lost on its way
    add(m, "c")
    op, body = decoded(dict(reports.frames(m.table, stage_of()))[sender])
    assert op == "table_delta" and feed.table(op, body) is None, "a delta to a view it never had"
    op, body = decoded(reports.resync(sender, "b"))
    assert feed.table(op, body)["stages"] == view_for(m.table, "b", ("c",))["stages"]

    loads = LoadReports(CONSUMERS, {})
    common = {"epoch": m.epoch, "ended": [], "oldest": 0}
    ticks = [dict(loads.frames(common, {i: 1 for i in m.instances}, stage_of()))[sender] for _ in range(3)]
    assert feed.loads_in_sequence(decoded(ticks[0])[1])
    assert not feed.loads_in_sequence(decoded(ticks[2])[1]), "tick 2 went missing"
    loads.resync(sender)
    op, body = decoded(dict(loads.frames(common, {i: 1 for i in m.instances}, stage_of()))[sender])
    assert body["whole"] and feed.loads_in_sequence(body)
    assert not feed.loads_in_sequence({**body, "tick": body["tick"] + 1, "epoch": m.epoch + 1}), \
        "the broker names an epoch whose table never came"
