"""An item that waited in an instance's inbox longer than its senders' recent window, then
died there with the instance: its request must fail promptly, naming the instance, not wait
for its deadline.

Under load this is an ordinary state: the instance is at its concurrency limit (or its
outboxes are blocked), so it stops reading; what was sent to it waits in its inbox, where no
heartbeat of it names it, while the senders' windows of "sent lately" roll past it. Here the
instance's concurrency is 1 and the first request holds it, so the second waits in the inbox
for as long as the test likes; the waits are on the broker's own tick count, not on sleeps.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from alto_bus import Client, RequestError
from tests.support import running, status, wait_for

H = "tests.integration.handlers"
BROKER = {"heartbeat_interval": 0.1, "heartbeat_liveness": 3}
# More ticks than any sender remembers "sent lately": the gateway two heartbeats of the
# instance, a worker liveness + 2 ticks.
WINDOW_TICKS = BROKER["heartbeat_liveness"] + 2 + 3


def instance(sup, stage: str) -> dict:
    (inst,) = status(sup)["stages"][stage]["instances"]
    return inst


def wait_ticks(sup, n: int) -> None:
    start = status(sup)["ticks"]
    wait_for(lambda: status(sup)["ticks"] >= start + n, 30, f"{n} broker ticks")


def hold_one_and_queue_one(sup, client: Client, stage: str, sent_on: str):
    """Request 1 occupies the only slot of ``stage``; request 2 waits in its inbox, unread,
    until the senders' windows have passed it. Returns (victim, held future, queued future)."""
    held = client.submit({"sleep": 120.0, "i": "held"}, timeout=120.0)
    victim = wait_for(lambda: (i := instance(sup, stage))["depth"] >= 1 and i, 30, "the first request to be held")
    queued = client.submit({"sleep": 0.0, "i": "queued"}, timeout=120.0)
    # The sender handed it on (its heartbeat counts it), the instance did not read it.
    if sent_on != stage:
        wait_for(lambda: instance(sup, sent_on)["stats"].get("messages_in", 0) >= 2, 30,
                 f"stage {sent_on!r} to pass the second request on")
    wait_ticks(sup, WINDOW_TICKS)
    inst = instance(sup, stage)
    assert inst["depth"] == 1 and inst["stats"].get("messages_in", 0) == 1, inst  # still unread
    assert not queued.done()
    return victim, held, queued


def check_fails_promptly(victim: dict, held, queued) -> None:
    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    for f in (held, queued):
        with pytest.raises(RequestError) as err:
            f.result(timeout=15)
        assert err.value.stage == "slow", err.value
        assert f"instance {victim['iid']} of stage 'slow' (pid {victim['pid']}" in err.value.message, err.value
        assert "died" in err.value.message, err.value
    assert time.monotonic() - t0 < 10  # a few heartbeats, never the 120 s deadline


def test_an_item_the_gateway_sent_long_ago_that_waited_in_the_dead_instances_inbox_fails_promptly():
    topo = {"broker": BROKER, "stage": [
        {"name": "slow", "kind": "function", "handler": f"{H}:slow_echo", "concurrency": 1}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        check_fails_promptly(*hold_one_and_queue_one(sup, client, "slow", "slow"))


def test_an_item_a_worker_sent_long_ago_that_waited_in_the_dead_instances_inbox_fails_promptly():
    topo = {"broker": BROKER, "stage": [
        {"name": "pass", "kind": "function", "handler": f"{H}:stamp"},
        {"name": "slow", "kind": "function", "handler": f"{H}:slow_echo", "input": "pass", "concurrency": 1}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        check_fails_promptly(*hold_one_and_queue_one(sup, client, "slow", "pass"))


def test_a_request_that_only_passed_through_a_dead_instance_is_not_failed():
    # The other side of the check: items that went through the instance long ago and are
    # held by a live one finish normally.
    topo = {"broker": BROKER, "stage": [
        {"name": "pass", "kind": "function", "handler": f"{H}:stamp"},
        {"name": "slow", "kind": "function", "handler": f"{H}:slow_echo", "input": "pass"}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        f = client.submit({"sleep": 5.0, "i": "through"}, timeout=60.0)
        wait_for(lambda: instance(sup, "slow")["depth"] >= 1, 30, "the request to reach stage 'slow'")
        wait_ticks(sup, WINDOW_TICKS)
        victim = instance(sup, "pass")
        os.kill(victim["pid"], signal.SIGKILL)
        result = f.result(timeout=30)
        assert result["i"] == "through"
