"""A sender's route table: destination, park or fail, from what the broker published. No sockets."""

from __future__ import annotations

import random
from collections import Counter

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Data
from alto_bus.routing.choice import LoadView
from alto_bus.routing.keytable import KeyTable
from alto_bus.routing.route_table import GATEWAY, PARK, Fail, RouteTable, choose_instance


def table(epoch: int, ids: list[int], *, keyed: bool = True, dead: tuple[int, ...] = ()) -> dict:
    t = {"epoch": epoch, "stages": {"b": [[i, f"tcp://h:{i}"] for i in ids], "a": [[99, "tcp://h:99"]]},
         "dead": list(dead)}
    if keyed:
        t["keys"] = {"b": KeyTable.build(epoch, ids).to_dict()}
    return t


def data(path: list, epoch: int, seq: int = 0, final: bool = True) -> Data:
    return wire.data(path, seq, "x", final, epoch)


def keyed(depth: int = 2) -> RouteTable:
    return RouteTable("a", "b", depth, rng=random.Random(1))


def test_the_last_stage_sends_everything_to_the_gateway():
    routes = RouteTable("z", None)
    assert routes.route(data([1], 0), [1]) == GATEWAY
    assert routes.ready


def test_items_of_one_key_go_to_one_instance_per_epoch():
    routes = keyed()
    routes.apply(table(1, [1, 2, 3, 4]))
    for rid in range(50):
        owners = {routes.route(data([rid, g, i], 1), [rid, g, i]) for g in (0,) for i in range(20)}
        assert len(owners) == 1
    # every sender evaluating the same table agrees
    other = keyed()
    other.apply(table(1, [1, 2, 3, 4]))
    for rid in range(50):
        assert other.route(data([rid, 0], 1), [rid, 0]) == routes.route(data([rid, 0], 1), [rid, 0])


def test_an_older_epoch_still_resolves_with_its_own_table():
    routes = keyed()
    routes.apply(table(1, [1, 2]))
    routes.apply(table(2, [3, 4]))
    for rid in range(30):
        assert routes.route(data([rid, 0], 1), [rid, 0]) in (1, 2)
        assert routes.route(data([rid, 0], 2), [rid, 0]) in (3, 4)
    assert set(routes.addresses) == {1, 2, 3, 4}  # instances of both epochs stay reachable


def test_a_forgotten_epoch_fails_and_a_future_one_parks():
    routes = keyed()
    routes.apply(table(1, [1, 2]))
    routes.apply(table(2, [3]))
    routes.forget_epochs_before(2)
    gone = routes.route(data([7, 0], 1), [7, 0])
    assert isinstance(gone, Fail) and gone.path == [7] and "epoch 1" in gone.reason
    assert routes.route(data([7, 0], 5), [7, 0]) is PARK  # its table is on its way
    left = "left the routing table"
    links = {i: f"tcp://h:{i}" for i in (1, 2, 3)}
    assert routes.gone({**links, GATEWAY: "tcp://gw:1"}) == [(1, left), (2, left)]
    # A restarted broker numbers instances afresh: an id that names another address moved.
    assert routes.gone({3: "tcp://elsewhere:3"}) == [(3, "moved")]


def test_the_newest_epoch_is_never_forgotten():
    routes = keyed()
    routes.apply(table(3, [1]))
    routes.forget_epochs_before(10)
    assert routes.route(data([1, 0], 3), [1, 0]) == 1


def test_no_table_yet_parks():
    routes = keyed()
    assert routes.route(data([1, 0], 0), [1, 0]) is PARK
    assert routes.route(data([1], 0), [1]) is PARK  # not keyed yet (shorter than the key depth)
    assert not routes.ready


def test_no_instance_parks_a_stateless_item():
    routes = RouteTable("a", "b", None)
    routes.apply(table(1, [], keyed=False))
    assert routes.route(data([1], 1), [1]) is PARK
    routes.apply(table(2, [5], keyed=False))
    assert routes.ready and routes.route(data([1], 2), [1]) == 5


def test_a_dead_owner_fails_the_request_naming_the_instance():
    routes = keyed()
    routes.apply(table(1, [1, 2]))
    owner = routes.route(data([4, 0], 1), [4, 0])
    routes.apply(table(2, [x for x in (1, 2) if x != owner], dead=(owner,)))
    failed = routes.route(data([4, 0, 3], 1), [4, 0, 3])
    assert isinstance(failed, Fail) and failed.path == [4] and f"instance {owner}" in failed.reason
    assert routes.gone({owner: f"tcp://h:{owner}"}) == [(owner, "died")]


def test_a_dead_peer_is_never_chosen_for_a_stateless_item():
    routes = RouteTable("a", "b", None, rng=random.Random(3))
    routes.apply(table(1, [1, 2, 3], keyed=False, dead=(2,)))  # even if a table still lists it
    picks = {routes.route(data([r], 1), [r]) for r in range(300)}
    assert picks == {1, 3}


def test_a_stateless_item_goes_to_the_less_loaded():
    routes = RouteTable("a", "b", None, rng=random.Random(4))
    routes.apply(table(1, [1, 2, 3], keyed=False))
    routes.apply_loads({"loads": {"1": 1000, "2": 0, "3": 0}})
    picks = Counter(routes.route(data([r], 1), [r]) for r in range(300))
    assert picks[1] == 0 and picks[2] and picks[3]


def test_every_chunk_of_a_streamed_item_goes_to_one_instance():
    routes = RouteTable("a", "b", None, rng=random.Random(5))
    routes.apply(table(1, [1, 2, 3, 4], keyed=False))
    for rid in range(20):
        dests = {routes.route(data([rid], 1, seq, final=False), [rid], stream=True)
                 for seq in range(10)}
        dests.add(routes.route(data([rid], 1, 10, final=True), [rid], stream=True))
        assert len(dests) == 1
    assert not routes._sticky  # forgotten after the last chunk


class FixedPool:
    """A pool route that always names one instance."""

    def __init__(self, iid: int | None) -> None:
        self.iid = iid

    def pick(self) -> int | None:
        return self.iid


def test_choose_instance_follows_the_pool_when_it_names_a_candidate():
    loads, rng = LoadView(), random.Random(0)
    assert {choose_instance([1, 2, 3], loads, rng, FixedPool(2)) for _ in range(20)} == {2}
    # a pool choice that is not a candidate (not writable, not in the table): power of two
    assert {choose_instance([1, 3], loads, rng, FixedPool(2)) for _ in range(50)} <= {1, 3}
    assert {choose_instance([1, 3], loads, rng, FixedPool(None)) for _ in range(50)} == {1, 3}


def test_streams_cut_short_are_forgotten_with_their_requests():
    routes = RouteTable("a", "b", rng=random.Random(1))
    routes.apply(table(1, [1, 2]))
    for rid in (5, 6):
        routes.route(data([rid, 0], 1, seq=0, final=False), [rid, 0], stream=True)  # no last chunk
    assert len(routes._sticky) == 2
    routes.forget_requests([5])          # request 5 ended by an error: its stream never finishes
    assert [key[0] for key in routes._sticky] == [6]


def test_senders_start_their_near_tie_rotations_out_of_step():
    # Every sender of a pool stage sees the same tied loads; if their rotations started in
    # step, request k of every sender would go to the same member (the herding measured
    # in BENCHMARKS.md). ConsumerRoutes starts each sender's policy at a random turn.
    import random

    from alto_bus.routing.consumer_routes import ConsumerRoutes
    from alto_bus.scheduling.base import Placement

    welcome = {"results": "tcp://127.0.0.1:1", "consumers": [
        {"config": {"name": "lm", "inputs": ["up"]}, "pool": {"name": "p", "policy": "least-loaded"}}]}
    senders = [ConsumerRoutes.from_welcome("up", welcome, random.Random(seed)) for seed in range(8)]
    placement = Placement(prompts={"q": ["a", "b", "c", "d"]})
    firsts = [s.tables[0].pool.policy.choose("q", placement, {}) for s in senders]
    assert len(set(firsts)) >= 3, firsts


def test_a_stateless_hop_goes_round_a_peer_not_taking_input_but_keys_stay_with_their_owner():
    stateless = RouteTable("a", "b", None, rng=random.Random(1))
    stateless.apply(table(1, [1, 2, 3], keyed=False))
    stateless.avoid = {2}
    msg = wire.data([5], 0, "x", True, 1)
    assert {stateless.route(msg, [5]) for _ in range(200)} == {1, 3}
    stateless.avoid = {1, 2, 3}   # every peer full: they still get items (and park them)
    assert {stateless.route(msg, [5]) for _ in range(200)} == {1, 2, 3}
    # ... the ones with the fewest parked: a peer that stopped taking input gets no more
    parked = {1: 3, 2: 40, 3: 3}
    stateless.parked = parked.__getitem__
    assert {stateless.route(msg, [5]) for _ in range(200)} == {1, 3}
    parked[1] = 4
    assert {stateless.route(msg, [5]) for _ in range(20)} == {3}

    keyed = RouteTable("a", "b", 2, rng=random.Random(1))
    keyed.apply(table(1, [1, 2, 3]))
    owner = keyed.route(wire.data([5, 0], 0, "x", True, 1), [5, 0])
    keyed.avoid = {owner}
    assert keyed.route(wire.data([5, 0], 0, "x", True, 1), [5, 0]) == owner, "a group has one owner"


def test_the_instances_a_sender_picks_among_follow_each_new_table():
    # Backpressure asks for them on every frame read while a peer is full; they are kept
    # between tables, so a join, a death or a new gateway must show in the next answer.
    from alto_bus.routing.consumer_routes import ConsumerRoutes

    welcome = {"results": ["tcp://127.0.0.1:1"], "consumers": [{"config": {"name": "b", "inputs": ["a"]}}]}
    routes = ConsumerRoutes.from_welcome("a", welcome, random.Random(0))
    routes.apply(table(1, [1, 2], keyed=False))
    assert routes.choices() == [[1, 2]]
    routes.apply(table(2, [1, 2, 3], keyed=False))
    assert routes.choices() == [[1, 2, 3]]
    routes.apply(table(3, [1, 2, 3], keyed=False, dead=(2,)))
    assert routes.choices() == [[1, 3]]

    sink = ConsumerRoutes.from_welcome("b", {"results": ["tcp://127.0.0.1:1"]}, random.Random(0))
    sink.apply({**table(1, [1]), "results": ["tcp://127.0.0.1:1"]})
    assert sink.choices() == [[0]]
    sink.apply({**table(2, [1]), "results": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]})
    assert sink.choices() == [[0], [-1]]


def test_a_subsetted_sender_routes_only_among_its_group_and_falls_back_to_the_whole_stage():
    routes = RouteTable("a", "b", None, rng=random.Random(6))
    ids = list(range(1, 13))
    routes.apply(table(1, ids, keyed=False))
    everywhere = {routes.route(data([r], 1), [r]) for r in range(400)}
    assert everywhere == set(ids), "no group named yet: the whole stage"
    routes.apply_loads({"loads": {"4": 0, "5": 0, "6": 0}, "groups": {"b": [1, 4]}})
    assert {routes.route(data([r], 1), [r]) for r in range(400)} == {4, 5, 6}
    routes.apply_loads({"loads": {}, "groups": {"other": [0, 2]}})  # only its consumer's group counts
    assert {routes.route(data([r], 1), [r]) for r in range(400)} == set(ids)
    routes.apply_loads({"loads": {}, "groups": {"b": [1, 4]}})
    routes.apply(table(2, ids, keyed=False, dead=(5,)))  # the group is kept through tables
    assert {routes.route(data([r], 1), [r]) for r in range(400)} == {4, 6}
    # Every member blocked: any other instance that takes input, not a parked item.
    routes.avoid = {4, 6}
    assert {routes.route(data([r], 1), [r]) for r in range(400)} == set(ids) - {4, 5, 6}
    routes.avoid = set()
    routes.apply(table(3, ids, keyed=False, dead=(4, 5, 6)))  # the whole group died
    assert {routes.route(data([r], 1), [r]) for r in range(400)} == set(ids) - {4, 5, 6}
    # The stage shrank: the sender cuts its group from the table it has (the next report
    # names the broker's new count).
    routes.apply(table(4, ids[:9], keyed=False))
    assert routes.subset == [3, 4]


def test_the_group_named_by_the_broker_is_what_the_sender_cuts_from_its_table():
    # The broker's loads for group g and the sender's candidates are one slice of the listing.
    from alto_bus.routing.subsetting import block

    routes = RouteTable("a", "b", None)
    ids = list(range(10, 110, 2))
    routes.apply(table(1, ids, keyed=False))
    for g in range(5):
        routes.apply_loads({"loads": {}, "groups": {"b": [g, 5]}})
        assert routes.subset == list(block(ids, g, 5))
