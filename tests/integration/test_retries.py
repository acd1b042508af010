"""``retries = N``: the items an instance held when it died are sent again to another
instance, and every request still ends with its exact result; without retries it fails
at once naming the instance; past N departures it fails "after N retries".

Real processes. The kill is deterministic: a handler holds its item on a gate (a file)
and leaves a marker naming its pid and request; the test waits for the markers, kills
that pid with SIGKILL, then opens the gate (tests/integration/retries_handlers.py).
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from alto_bus import Client, RequestError
from tests.support import running, status, wait_for

H = "tests.integration.retries_handlers"
BROKER = {"heartbeat_interval": 0.1, "heartbeat_liveness": 5}  # a death is seen within 0.5 s
N = 4          # children per request
REQUESTS = 6


def markers(gate: Path) -> dict[str, set[int]]:
    """request tag -> pids holding one of its items on the gate."""
    out: dict[str, set[int]] = {}
    for p in gate.glob("held-*"):
        _, pid, tag = p.name.split("-", 2)
        out.setdefault(tag, set()).add(int(pid))
    return out


def fan_in(middle_retries: int, replicas: int = 2) -> dict:
    return {"broker": BROKER, "stage": [
        {"name": "fan", "kind": "function", "handler": f"{H}:fan"},
        {"name": "middle", "kind": "function", "handler": f"{H}:times_ten", "input": "fan",
         "replicas": replicas, "retries": middle_retries},
        {"name": "join", "kind": "aggregate", "input": "middle", "key": "request", "op": "collect"}]}


def submit_held(client: Client, gate: Path, hold: int = 2) -> dict:
    return {f"r{k}": client.submit({"n": N, "tag": f"r{k}", "gate": str(gate), "hold": hold}, timeout=60)
            for k in range(REQUESTS)}


def instance_of(sup, stage: str, pid: int) -> dict:
    return next(i for i in status(sup)["stages"][stage]["instances"] if i["pid"] == pid)


@pytest.fixture
def gate():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "gate").touch()
        yield path


def test_a_middle_stage_with_retries_loses_an_instance_and_every_request_ends_exact(gate):
    with running(fan_in(2)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = submit_held(client, gate)
        # Every request has its item 2 held by one of the two instances (items 0, 1, 3 went on).
        held = wait_for(lambda: len(m := markers(gate)) == REQUESTS and m, 30, "every request's item to be held")
        by_pid: dict[int, int] = {}
        for pids in held.values():
            for pid in pids:
                by_pid[pid] = by_pid.get(pid, 0) + 1
        victim = max(by_pid, key=by_pid.get)
        os.kill(victim, signal.SIGKILL)
        (gate / "gate").unlink()
        results = {tag: f.result(timeout=30) for tag, f in futures.items()}
        assert results == {f"r{k}": [i * 10 for i in range(N)] for k in range(REQUESTS)}
        st = status(sup)
        assert [i["pid"] for i in st["stages"]["middle"]["instances"]] != [victim]
        assert st["stages"]["middle"]["retries"] == 2
        assert st["gateway"]["failed"] == 0
        # It was the retry that saved them: the fan stage sent its kept items again.
        wait_for(lambda: status(sup)["stages"]["fan"]["instances"][0]["stats"].get("resent", 0) >= by_pid[victim],
                 10, "the fan stage's heartbeat to count what it sent again")
        print("join stats", status(sup)["stages"]["join"]["instances"][0]["stats"])


def test_without_retries_the_requests_an_instance_held_fail_fast_naming_it(gate):
    with running(fan_in(0)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = submit_held(client, gate)
        held = wait_for(lambda: len(m := markers(gate)) == REQUESTS and m, 30, "every request's item to be held")
        victim = next(iter(next(iter(held.values()))))
        victim_iid = instance_of(sup, "middle", victim)["iid"]
        os.kill(victim, signal.SIGKILL)
        (gate / "gate").unlink()
        for tag, f in futures.items():
            if victim in held[tag]:
                with pytest.raises(RequestError) as err:
                    f.result(timeout=15)
                assert err.value.stage == "middle", err.value
                assert f"instance {victim_iid} of stage 'middle' (pid {victim}" in err.value.message
                assert "died" in err.value.message and "retr" not in err.value.message
            else:
                assert f.result(timeout=15) == [i * 10 for i in range(N)]


def test_a_request_whose_items_outlive_its_retries_fails_after_n_retries(gate):
    with running(fan_in(1, replicas=3)) as sup, Client(sup.addresses["gateway"]) as client:
        f = client.submit({"n": N, "tag": "once", "gate": str(gate), "hold": 2}, timeout=60)
        first = wait_for(lambda: markers(gate).get("once"), 30, "the item to be held")
        (victim1,) = first
        os.kill(victim1, signal.SIGKILL)
        # Sent again (one retry): held again by another instance, which dies too.
        second = wait_for(lambda: markers(gate).get("once", set()) - first, 30, "the item to be held again")
        (victim2,) = second
        iid2 = instance_of(sup, "middle", victim2)["iid"]
        os.kill(victim2, signal.SIGKILL)
        with pytest.raises(RequestError) as err:
            f.result(timeout=15)
        assert err.value.stage == "middle", err.value
        assert f"instance {iid2} of stage 'middle' (pid {victim2}" in err.value.message, err.value
        assert "after 1 retry" in err.value.message, err.value
        (gate / "gate").unlink()
        # The stage still serves the requests that come after.
        assert client.submit({"n": N, "tag": "after", "gate": str(gate)}, timeout=30).result(timeout=30) == \
            [i * 10 for i in range(N)]


def test_a_keyed_aggregate_with_retries_loses_the_owner_of_open_groups_and_results_stay_exact(gate):
    topo = {"broker": BROKER, "stage": [
        {"name": "fan", "kind": "function", "handler": f"{H}:fan_then_hold"},
        {"name": "join", "kind": "aggregate", "input": "fan", "key": "request", "op": "collect",
         "replicas": 2, "retries": 1}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        futures = {f"r{k}": client.submit({"n": N, "tag": f"r{k}", "gate": str(gate)}, timeout=60)
                   for k in range(REQUESTS)}
        # The fan stage sent all children but the last of every request: the groups are open.
        wait_for(lambda: len(markers(gate)) == REQUESTS, 30, "every request to wait on the gate")
        owners = wait_for(lambda: (d := {i["pid"]: i["depth"] for i in status(sup)["stages"]["join"]["instances"]})
                          and sum(d.values()) == REQUESTS and d, 30, "the open groups at the join")
        victim = max(owners, key=owners.get)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in [i["pid"] for i in status(sup)["stages"]["join"]["instances"]], 30,
                 "the broker to see the owner die")
        (gate / "gate").unlink()
        results = {tag: f.result(timeout=30) for tag, f in futures.items()}
        assert results == {f"r{k}": [{"i": i, "tag": f"r{k}"} for i in range(N)] for k in range(REQUESTS)}


def test_an_entry_stage_with_retries_is_sent_the_request_again_by_the_gateway(gate):
    topo = {"broker": BROKER, "stage": [
        {"name": "entry", "kind": "function", "handler": f"{H}:held_echo", "replicas": 2, "retries": 1}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        futures = {f"r{k}": client.submit({"n": k, "tag": f"r{k}", "gate": str(gate)}, timeout=60)
                   for k in range(REQUESTS)}
        held = wait_for(lambda: len(m := markers(gate)) == REQUESTS and m, 30, "every request to be held")
        victim = next(iter(next(iter(held.values()))))
        os.kill(victim, signal.SIGKILL)
        (gate / "gate").unlink()
        results = {tag: f.result(timeout=30) for tag, f in futures.items()}
        assert results == {f"r{k}": {"tag": f"r{k}", "n": k} for k in range(REQUESTS)}


def test_an_lm_stage_with_a_fixed_seed_is_run_again_and_the_stream_reaches_the_client_once():
    question = {"question": "Tell me about the history of the lighthouse at the end of the bay."}
    topo = {"broker": BROKER, "stage": [
        {"name": "answer", "kind": "lm", "engine": "sim", "prompt": "Answer briefly: {question}",
         "emit": "sentences", "stream": True, "max_tokens": 400, "ignore_eos": True, "seed": 7,
         "replicas": 2, "retries": 1},
        {"name": "tag", "kind": "function", "handler": "tests.integration.handlers:upper", "input": "answer"}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        stream = client.stream(question, timeout=60)
        items = iter(stream)
        seen = [next(items)]  # the first sentence is out: the generation is under way
        busy = wait_for(lambda: [i for i in status(sup)["stages"]["answer"]["instances"] if i["depth"] > 0], 5,
                        "the generating instance to report it")
        assert len(busy) == 1 and not stream.future.done(), busy
        os.kill(busy[0]["pid"], signal.SIGKILL)
        seen += list(items)
        result = stream.result()
        # The same seed on the other instance: the same text, each sentence delivered once.
        assert result == client.submit(question, timeout=60).result(timeout=60)
        assert len(result) >= 3
        # The re-run's first sentences reached the next stage again, which dropped them.
        wait_for(lambda: status(sup)["stages"]["tag"]["instances"][0]["stats"].get("duplicates", 0) >= 1, 10,
                 "the tag stage to count the repeats it dropped")
        assert [p.data for p in sorted(seen, key=lambda p: p.path)] == result  # once each, none missing


def test_a_join_of_a_branch_with_retries_and_a_plain_branch_stays_exact(gate):
    # Both branches give the join the same paths: a repeat is one from the same input only.
    topo = fan_in(1)
    topo["stage"].insert(2, {"name": "plain", "kind": "function", "handler": f"{H}:index", "input": "fan"})
    topo["stage"][-1]["input"] = ["middle", "plain"]
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        futures = submit_held(client, gate)
        held = wait_for(lambda: len(m := markers(gate)) == REQUESTS and m, 30, "every request's item to be held")
        os.kill(next(iter(next(iter(held.values())))), signal.SIGKILL)
        (gate / "gate").unlink()
        results = {tag: f.result(timeout=30) for tag, f in futures.items()}
        assert results == {f"r{k}": {"middle": [i * 10 for i in range(N)], "plain": list(range(N))}
                           for k in range(REQUESTS)}
