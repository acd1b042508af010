"""Topology validation: every refusal names the file, the stage and the field."""

from __future__ import annotations

import pytest

from alto_bus.deploy.topology import TopologyError, load, parse
from tests.support import write_topology

H = "tests.integration.handlers"


def chain(*stages: dict, broker: dict | None = None) -> dict:
    return {"broker": broker or {}, "stage": list(stages)}


def fn(name: str, handler: str = "upper", **kw) -> dict:
    return {"name": name, "kind": "function", "handler": f"{H}:{handler}", **kw}


def test_a_chain_is_ordered_and_path_depths_follow_the_fan_outs():
    topo = parse(chain(fn("c", input="b"), fn("a", "split"), fn("b", "letters", input="a")))
    assert [s.name for s in topo.stages] == ["a", "b", "c"]
    assert [s.next for s in topo.stages] == ["b", "c", None]
    assert [s.fans_out for s in topo.stages] == [True, True, False]
    assert [s.out_depth for s in topo.stages] == [2, 3, 3]


@pytest.mark.parametrize("topo, words", [
    (chain(fn("a", colour=1)), ["stage 'a'", "unknown field 'colour'"]),
    (chain(fn("a"), fn("b", input="zz")), ["stage 'b'", "field 'input'", "no stage named 'zz'"]),
    (chain(fn("a", replicas=0)), ["stage 'a'", "field 'replicas'", ">= 1"]),
    (chain(fn("a", replicas=True)), ["stage 'a'", "field 'replicas'", "must be int"]),
    (chain(fn("a", threads=-1)), ["stage 'a'", "field 'threads'", "0 (on the event loop)"]),
    (chain(fn("a", "nope")), ["stage 'a'", "field 'handler'", "no attribute 'nope'"]),
    (chain({"name": "a", "kind": "function", "handler": "nomodule_xyz:f"}), ["field 'handler'", "cannot import"]),
    (chain({"name": "a", "kind": "teleport"}), ["stage 'a'", "field 'kind'", "known kinds"]),
    (chain({"kind": "function", "handler": f"{H}:upper"}), ["missing required field 'name'"]),
    (chain(fn("a"), fn("b")), ["exactly one stage takes client requests"]),
    (chain(fn("a", input="b"), fn("b", input="a")), ["cycle"]),
    (chain(fn("e"), fn("a", input="b"), fn("b", input="a")), ["stage 'a'", "not reachable from the entry"]),
    (chain(fn("a", input="a")), ["cycle (a)", "the entry stage has no 'input'"]),
    (chain(fn("a"), fn("b", input="a"), fn("c", input="a")), ["stages ['b', 'c'] feed no stage", "exactly one"]),
    (chain(fn("a"), fn("a", input="a")), ["two stages are named 'a'"]),
    (chain(fn("@gateway")), ["stage '@gateway'", "field 'name'", "letters, digits"]),
    (chain(fn("")), ["field 'name'", "got ''"]),
    (chain(fn("two words")), ["field 'name'", "metrics, logs and URLs"]),
    (chain(fn("a"), broker={"gateway": "http://x"}), ["[broker] field 'gateway'", "tcp://host:port"]),
    (chain(fn("a", inbox="tcp://127.0.0.1")), ["stage 'a'", "field 'inbox'"]),
    (chain(fn("a"), broker={"tls": True}), ["[broker]", "unknown field 'tls'"]),
    (chain(fn("a"), broker={"load_subset": -1}), ["[broker]", "load_subset must be >= 0", "got -1"]),
    (chain(fn("a"), broker={"load_subset": "32"}), ["[broker]", "field 'load_subset'", "must be int"]),
    ({"stage": []}, ["no [[stage]] tables"]),
    ({"stages": [fn("a")]}, ["unknown top-level table"]),
])
def test_bad_topologies_are_refused_naming_what_is_wrong(tmp_path, topo, words):
    path = write_topology(tmp_path, topo)
    with pytest.raises(TopologyError) as err:
        load(path)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_a_file_that_is_not_toml_or_missing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stage]\nname=")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load(bad)
    with pytest.raises(TopologyError, match="no such topology file"):
        load(tmp_path / "missing.toml")


def test_addresses_may_be_tcp_or_ipc(tmp_path):
    topo = parse(chain(fn("a", inbox=f"ipc://{tmp_path}/a"), broker={"control": "tcp://[::1]:0"}))
    assert topo.stages[0].inbox.startswith("ipc://")


def test_load_subset_defaults_to_32_and_zero_turns_it_off():
    assert parse(chain(fn("a"))).broker.load_subset == 32
    assert parse(chain(fn("a"), broker={"load_subset": 0})).broker.load_subset == 0
