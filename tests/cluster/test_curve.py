"""CURVE on every link across hosts: allowed keys work; a peer without one gets nowhere, logged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from alto_bus import Client
from alto_bus.net import curve as keys
from alto_bus.deploy.supervisor import StatusProbe
from tests.cluster.conftest import ROOT, H, host_tables, wait_for, write


def make_keys(folder):
    for name in ("broker", "worker", "h2", "stranger"):
        subprocess.run([sys.executable, "-m", "alto_bus", "keys", name, "--dir", str(folder / "keys")],
                       check=True, capture_output=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "alto_bus", "keys", "client", "--dir", str(folder / "keys/allowed")],
                   check=True, capture_output=True, cwd=ROOT)


def topology(hosts) -> dict:
    tables = host_tables(hosts)
    tables[1]["key"] = "keys/h2.key"   # a host with a key of its own
    return {
        "broker": {"heartbeat_interval": 0.2, "heartbeat_liveness": 4},
        "security": {"broker_key": "keys/broker.key", "worker_key": "keys/worker.key",
                     "allowed_keys": "keys/allowed"},
        "host": tables,
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 3},
            {"name": "where", "kind": "function", "handler": f"{H}:where", "input": "split", "replicas": 3},
        ],
    }


def test_with_curve_allowed_keys_are_served_and_a_keyless_peer_gets_nowhere(clean, launches, tmp_path):
    hosts = clean
    h1, h2, h3 = hosts.hosts
    make_keys(tmp_path)
    path = write(tmp_path, topology(hosts))
    run = launches(path, hosts)
    run.ready()
    gateway, control = run.value("gateway"), run.value("control")
    operator = keys.client_curve(tmp_path / "keys/broker.key_secret", tmp_path / "keys/broker.key")
    client_keys = keys.client_curve(tmp_path / "keys/allowed/client.key_secret", tmp_path / "keys/broker.key")

    texts = [f"a{i} b{i}" for i in range(200)]
    with Client(gateway, curve=client_keys) as client:
        results = [f.result(timeout=60) for f in [client.submit(t) for t in texts]]
    assert [[r["word"] for r in res] for res in results] == [t.upper().split() for t in texts]

    def status() -> dict:
        with StatusProbe(control, curve=operator) as probe:
            st = probe.query(timeout=5)
        assert st is not None
        return st

    messages = lambda st: sum(i["stats"].get("messages_in", 0)  # noqa: E731
                              for i in st["stages"]["where"]["instances"])
    before = wait_for(lambda: (st := status()) and messages(st) == 3 * len(texts) and st, 10,
                      "heartbeats that count every word and END")
    target = before["stages"]["where"]["instances"][0]
    assert keys.KEY_MARK in target["address"]  # senders learn each inbox's key with its address

    t0 = time.monotonic()
    outcomes = {}
    for label, extra in (("plain", []), ("stranger", [str(tmp_path / "keys/stranger.key_secret"),
                                                      str(tmp_path / "keys/broker.key")])):
        out = subprocess.run(["ip", "netns", "exec", h3.ns, sys.executable, "-m", "tests.cluster.intruder", gateway,
                              control, target["address"], h3.address, *extra], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        outcomes[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"intruders: {outcomes} ({time.monotonic() - t0:.1f} s)")
    for label, o in outcomes.items():
        assert o["submit"] == "no answer", (label, o)
        assert o["register"].startswith("refused: "), (label, o)

    # Nothing reached a worker and nobody joined. The instances' message counts (from their
    # heartbeats) move by exactly what allowed clients send after the intruders.
    with Client(gateway, curve=client_keys) as client:
        assert client.submit("x y z").result(timeout=30)
    expected = messages(before) + 4  # 3 words and the END of their fan-out
    after = wait_for(lambda: (st := status()) and messages(st) >= expected and st, 10, "fresh heartbeats")
    assert messages(after) == expected
    assert after["gateway"]["late_messages"] == before["gateway"]["late_messages"]
    assert after["gateway"]["admitted"] == before["gateway"]["admitted"] + 1
    assert [(i["iid"], i["pid"]) for s in after["stages"].values() for i in s["instances"]] == \
           [(i["iid"], i["pid"]) for s in before["stages"].values() for i in s["instances"]]

    # Every refusal was logged by the server that refused it.
    wait_for(lambda: "stage where inbox" in "\n".join(run.err), 10, "the inbox's refusal in the log")
    logged = "\n".join(run.err)
    stranger = keys.load_public(tmp_path / "keys/stranger.key").decode()
    for server in ("broker control", "gateway", "stage where inbox"):
        assert f"refused a connection: {server}" in logged, server
    assert f"key {stranger} is not allowed" in logged
    assert "not use CURVE" in logged, "\n".join(ln for ln in run.err if "refused" in ln)

    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0


def test_alto_launch_on_one_machine_with_curve(tmp_path):
    # The same [security] table without [[host]]: `alto launch` on this machine, every link CURVE.
    from tests.support import running

    make_keys(tmp_path)
    topo = {
        "security": {"broker_key": "keys/broker.key", "worker_key": "keys/worker.key", "allowed_keys": "keys/allowed"},
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2},
            {"name": "where", "kind": "function", "handler": f"{H}:where", "input": "split", "replicas": 2},
        ],
    }
    client_keys = keys.client_curve(tmp_path / "keys/allowed/client.key_secret", tmp_path / "keys/broker.key")
    with running(write(tmp_path, topo)) as sup:
        with Client(sup.addresses["gateway"], curve=client_keys) as client:
            assert [r["word"] for r in client.submit("one two").result(timeout=30)] == ["ONE", "TWO"]
        with Client(sup.addresses["gateway"], timeout=2.0) as plain:
            try:
                plain.submit("one two").result(timeout=2)
                raise AssertionError("a client without a key was answered")
            except TimeoutError:
                pass
